"""The classification of Zalo's answers: the table of codes, the transport cases, unknown
codes, and the reading of Zalo's numbers as strings or numbers."""

from __future__ import annotations

import pytest

from service.metrics import ZALO_UNKNOWN_CODES
from service.zalo.client import MalformedAnswer, count
from service.zalo.outcomes import (
    TRANSPORT_OUTCOMES,
    UNKNOWN_CODE,
    ZALO_ERRORS,
    OutcomeClass,
    Transport,
    classify,
)

# What a sender must do about each code the send-error table names (4.7 of the project's
# rules and Zalo's table), written out once more here so that a change of the table is a
# deliberate change of this list too.
EXPECTED = {
    OutcomeClass.AUTH: {-124},
    OutcomeClass.NEEDS_HUMAN: {-115, -117, -126, -127, -135, -136, -137, -145, -1351},
    OutcomeClass.TRANSIENT: {-32},
    OutcomeClass.RESCHEDULE: {-133, -144, -147, -1441},
    OutcomeClass.PERMANENT_PAYLOAD: {
        -100, -131, -146, -148, -149, -150, -161, -162, -1121, -1122,
    },
    OutcomeClass.PERMANENT_RECIPIENT: {
        -108, -114, -118, -119, -139, -140, -141, -1471, -1472,
    },
}


@pytest.mark.parametrize("outcome", list(EXPECTED))
def test_each_code_has_its_class(outcome: OutcomeClass) -> None:
    for code in EXPECTED[outcome]:
        assert classify(code).outcome is outcome, code
    assert {c for c, e in ZALO_ERRORS.items() if e.outcome is outcome} == EXPECTED[outcome]


def test_every_code_of_the_send_error_rules_is_known() -> None:
    fed_back = {-144, -1441, -146, -147, -145, -141, -139, -140, -1471, -1472, -133, -1351, -135}
    assert fed_back <= ZALO_ERRORS.keys()
    assert all(entry.name for entry in ZALO_ERRORS.values())
    assert len({entry.name for entry in ZALO_ERRORS.values()}) == len(ZALO_ERRORS)


def test_zero_is_ok_and_an_unknown_code_is_transient_and_counted() -> None:
    assert classify(0).outcome is OutcomeClass.OK
    before = ZALO_UNKNOWN_CODES._value.get()
    assert classify(-424242) is UNKNOWN_CODE
    assert UNKNOWN_CODE.outcome is OutcomeClass.TRANSIENT
    assert ZALO_UNKNOWN_CODES._value.get() == before + 1
    classify(-144)
    assert ZALO_UNKNOWN_CODES._value.get() == before + 1  # a known code is not counted


def test_every_transport_case_has_a_class_and_only_no_answer_is_unknown() -> None:
    assert set(TRANSPORT_OUTCOMES) == set(Transport)
    unknown = {t for t, o in TRANSPORT_OUTCOMES.items() if o is OutcomeClass.UNKNOWN}
    assert unknown == {Transport.NO_ANSWER}
    # A request that never left may be made again; one that may have arrived may not.
    assert TRANSPORT_OUTCOMES[Transport.CONNECT].retriable
    assert TRANSPORT_OUTCOMES[Transport.TIMEOUT_BEFORE_SENT].retriable
    assert not OutcomeClass.UNKNOWN.retriable


def test_only_transient_and_reschedule_are_retriable() -> None:
    assert {o for o in OutcomeClass if o.retriable} == {
        OutcomeClass.TRANSIENT,
        OutcomeClass.RESCHEDULE,
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(500, 500), ("500", 500), (" 42 ", 42), (0, 0), ("0", 0), (None, None), ("", None), (7.0, 7)],
)
def test_counts_are_read_from_numbers_and_strings(raw: object, expected: int | None) -> None:
    assert count(raw) == expected


@pytest.mark.parametrize("raw", ["many", True, 1.5, [1], {"n": 1}])
def test_a_count_of_another_shape_is_malformed(raw: object) -> None:
    with pytest.raises(MalformedAnswer):
        count(raw)
