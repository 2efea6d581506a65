"""Zalo's signature: sha256(app_id + raw body + timestamp + secret), checked in constant time."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.receiver.signature import sign, signature_hex, verify

APP, TS, SECRET = "2074138120372622546", "1602560967477", "oa-secret"
BODY = b'{"sender":{"id":"2893352839501541173"},"timestamp":"1602560967477"}'


def test_formula_is_plain_sha256_of_the_concatenation() -> None:
    expected = hashlib.sha256((APP + BODY.decode() + TS + SECRET).encode()).hexdigest()
    assert signature_hex(APP, BODY, TS, SECRET) == expected
    assert sign(APP, BODY, TS, SECRET) == "mac=" + expected


@pytest.mark.parametrize(
    "header",
    [
        lambda h: "mac=" + h,
        lambda h: "MAC=" + h,
        lambda h: "Mac=" + h.upper(),
        lambda h: h,
        lambda h: "  mac=" + h + " ",
    ],
)
def test_accepted_forms(header: object) -> None:
    digest = signature_hex(APP, BODY, TS, SECRET)
    assert verify(header(digest), APP, BODY, TS, [SECRET])  # type: ignore[operator]


def test_any_configured_secret_verifies() -> None:
    old = sign(APP, BODY, TS, "old")
    assert verify(old, APP, BODY, TS, ["new", "old"])
    assert not verify(old, APP, BODY, TS, ["new"])
    assert not verify(old, APP, BODY, TS, [])


@pytest.mark.parametrize("header", [None, "", "mac=", "mac=zz", "mac=\u00e9\u00e9", "sha256=abc"])
def test_garbage_headers_fail(header: str | None) -> None:
    assert not verify(header, APP, BODY, TS, [SECRET])


@given(st.binary(max_size=200), st.text(max_size=20), st.text(max_size=20))
def test_changing_any_input_breaks_the_signature(body: bytes, app: str, ts: str) -> None:
    header = sign(app, body, ts, SECRET)
    assert verify(header, app, body, ts, [SECRET])
    assert not verify(header, app, body + b" ", ts, [SECRET])
    assert not verify(header, app + "1", body, ts, [SECRET])
    assert not verify(header, app, body, ts + "1", [SECRET])
    assert not verify(header, app, body, ts, [SECRET + "x"])
