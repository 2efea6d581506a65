"""The fold reads every webhook of the stream through these models, so the ids' checks must
stay in pydantic's compiled core: the Python an id costs is the conversion of an id written
as a number. (A constraint placed after a Python validator is checked by a Python wrapper
instead, once per id.)"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import pytest
from pydantic import ValidationError

from service.domain import events
from service.domain.events import UserFeedback, UserReceivedMessage
from tests import feed

T = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)


def python_calls(work: Any) -> set[str]:
    """The Python functions `work()` calls (by name), those it calls included."""
    called: set[str] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            called.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return called


@pytest.mark.parametrize(
    ("model", "raw"),
    [
        (UserReceivedMessage, feed.receipt("m1", T, oa_id="900001")),
        (UserFeedback, feed.rating("m1", 1, T, oa_id="900001")),
    ],
)
def test_ids_are_checked_in_the_compiled_core(model: type[events.ZaloEvent], raw: feed.Raw) -> None:
    called = python_calls(lambda: model.model_validate_json(raw.value))
    assert "id_as_string" in called
    assert "min_length_validator" not in called


def test_ids_and_times_keep_their_constraints() -> None:
    receipt = feed.receipt("m1", T, oa_id="900001").value
    with pytest.raises(ValidationError):
        UserReceivedMessage.model_validate_json(receipt.replace(b'"900001"', b'""'))
    with pytest.raises(ValidationError):
        UserReceivedMessage.model_validate_json(
            receipt.replace(str(int(T.timestamp() * 1000)).encode(), b"12ab")
        )
