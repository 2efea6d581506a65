"""A sync's `source` and its templates' `params`: kept in the template's state, replaced
whole by a later sync that read them, left alone by one that did not; records written
before these fields existed still read and fold the same."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.api.models import SyncBody
from service.domain.records import SyncRecord
from service.domain.state import OAState
from tests import feed
from tests.unit.test_fold import D, Oa, vn

OTP_PARAM = {
    "name": "otp",
    "require": True,
    "type": "STRING",
    "min_length": 4,
    "max_length": 8,
    "accept_null": False,
}


def test_params_are_kept_replaced_whole_and_survive_a_sync_without_them() -> None:
    oa = Oa()
    oa.apply(
        feed.sync(
            vn(D, 9),
            source="zalo",
            templates=[{"template_id": "231456", "status": "ENABLE", "params": [OTP_PARAM]}],
        )
    )
    assert oa.state.templates["231456"].params == [OTP_PARAM]
    oa.apply(feed.sync(vn(D, 10), templates=[{"template_id": "231456", "quality": "HIGH"}]))
    assert oa.state.templates["231456"].params == [OTP_PARAM]  # not read this time
    note = {"name": "note", "require": False, "accept_null": True}
    oa.apply(feed.sync(vn(D, 11), templates=[{"template_id": "231456", "params": [note]}]))
    assert oa.state.templates["231456"].params == [
        {**note, "type": None, "min_length": None, "max_length": None}
    ]
    restored = OAState.from_document(oa.state.to_document())
    assert restored.templates["231456"].params == oa.state.templates["231456"].params


def test_a_sync_written_before_source_and_params_reads_as_it_did() -> None:
    old = b'{"oa_id":"1","as_of":"1700000000000","templates":[{"template_id":"7","tag":2}]}'
    record = SyncRecord.model_validate_json(old)
    assert record.source is None
    assert record.templates[0].params is None
    oa = Oa()
    oa.apply(feed.sync(vn(D, 9), templates=[{"template_id": "7", "tag": 2}]))
    assert oa.state.templates["7"].params is None
    assert oa.state.templates["7"].tag == 2


def test_the_sync_body_bounds_params() -> None:
    ok = SyncBody.model_validate(
        {
            "oa_id": "1",
            "as_of": "1700000000000",
            "templates": [{"template_id": "7", "params": [OTP_PARAM]}],
        }
    )
    assert ok.templates[0].params is not None
    for bad in ({**OTP_PARAM, "name": ""}, {**OTP_PARAM, "max_length": -1}, {"require": True}):
        body = {"oa_id": "1", "as_of": "1700000000000"}
        with pytest.raises(ValidationError):
            SyncBody.model_validate({**body, "templates": [{"template_id": "7", "params": [bad]}]})
