"""Send errors fed back, walked from the fold's table of their effects: every error the
table holds does what docs/rules.md says it blocks, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.domain.fold.sends import SEND_ERROR_EFFECTS
from service.domain.records import recipient_hash
from service.domain.windows import month_index
from tests import feed
from tests.unit.test_fold import D, Oa, vn

DAY = D.toordinal()
PERSON = recipient_hash(feed.PHONE)

CHECKS: dict[str, Callable[[Oa], bool]] = {
    "remaining today 0": lambda oa: oa.state.remaining_today(DAY) == 0,
    "monthly promotion remaining 0": lambda oa: (
        oa.state.promotion_remaining(D, oa.policy.thresholds) == 0
    ),
    "template disabled as Zalo's quality LOW": lambda oa: oa.state.templates["t1"].zalo_disabled,
    "the template's remaining today 0": lambda oa: oa.state.templates["t1"].exhausted_day == DAY,
    "the tag not allowed": lambda oa: not oa.state.tag_allowed(3, DAY),
    "the recipient opted out, a negative": lambda oa: (
        oa.state.recipients[PERSON].opted_out and oa.state.negatives_by_day.get(DAY) == 1
    ),
    "the recipient not eligible for promotion": lambda oa: oa.state.recipients[PERSON].not_eligible,
    "the recipient at the month's promotion limit": lambda oa: (
        oa.state.recipients[PERSON].limit_month == month_index(D)
    ),
    "the recipient at the day's promotion limit": lambda oa: (
        oa.state.recipients[PERSON].limit_day == DAY
    ),
    "the template night-restricted": lambda oa: oa.state.templates["t1"].night_restricted,
    "the OA suspended": lambda oa: oa.state.suspended,
}

DOCUMENTED_EFFECTS = {
    -144: "remaining today 0",
    -1441: "monthly promotion remaining 0",
    -146: "template disabled as Zalo's quality LOW",
    -147: "the template's remaining today 0",
    -145: "the tag not allowed",
    -141: "the recipient opted out, a negative",
    -139: "the recipient opted out, a negative",
    -140: "the recipient not eligible for promotion",
    -1471: "the recipient at the month's promotion limit",
    -1472: "the recipient at the day's promotion limit",
    -133: "the template night-restricted",
    -1351: "the OA suspended",
    -135: "the OA suspended",
}
"""Each error of the documented table (docs/rules.md) and the effect it gives."""


def failed_with(error: int) -> Oa:
    oa = Oa()
    oa.apply(feed.send("t1", "x", vn(D, 10), error=error, tag=3, recipient=PERSON))
    return oa


def test_the_table_holds_exactly_the_errors_the_docs_give_an_effect() -> None:
    assert sorted(SEND_ERROR_EFFECTS) == sorted(DOCUMENTED_EFFECTS)


@pytest.mark.parametrize("error", sorted(SEND_ERROR_EFFECTS))
def test_each_error_in_the_table_has_its_effect_and_no_other(error: int) -> None:
    oa = failed_with(error)
    effects = {name for name, holds in CHECKS.items() if holds(oa)}
    assert effects == {DOCUMENTED_EFFECTS[error]}


def test_an_error_outside_the_table_blocks_nothing() -> None:
    oa = failed_with(-124)
    assert {name for name, holds in CHECKS.items() if holds(oa)} == set()
