"""Sealed token records, OAuth answers and refusals, and the connect state, without I/O."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest

from service.zalo import oauth
from service.zalo.connect import BadState, Connector
from service.zalo.vault import DELETED, StoredToken, TokenStatus, Vault, VaultError

KEY = bytes(range(32))
TOKEN = StoredToken(
    oa_id="388613280878808645",
    app_id="2074138120372622546",
    access_token="the-access-token",
    refresh_token="the-refresh-token",
    access_expires_at=1_000_000 + 90_000_000,
    refresh_expires_at=1_000_000 + 7_776_000_000,
    refreshed_at=1_000_000,
)


def test_a_sealed_record_opens_only_with_its_key_and_under_its_oa() -> None:
    vault = Vault(KEY)
    value = vault.seal(TOKEN)
    assert b"the-access-token" not in value
    assert b"the-refresh-token" not in value
    assert set(orjson.loads(value)) == {"version", "nonce", "ciphertext"}
    assert vault.open(TOKEN.oa_id, value) == TOKEN
    assert vault.seal(TOKEN) != value  # a fresh nonce each time
    with pytest.raises(VaultError):
        vault.open("388613280878808646", value)  # moved to another OA's key
    with pytest.raises(VaultError):
        Vault(bytes(32)).open(TOKEN.oa_id, value)
    with pytest.raises(VaultError):
        vault.open(TOKEN.oa_id, b"{}")
    assert vault.open(TOKEN.oa_id, DELETED) is None


def test_the_status_shows_no_token_and_names_the_state() -> None:
    margin = 18_000
    assert TokenStatus.of(TOKEN.oa_id, TOKEN, 1_000_000, margin).state == "valid"
    expiring = TOKEN.access_expires_at - margin * 1000 + 1  # type: ignore[operator]
    assert TokenStatus.of(TOKEN.oa_id, TOKEN, expiring, margin).state == "expiring"
    dead = TokenStatus.of(TOKEN.oa_id, TOKEN.dead("zalo_-14014"), 0, margin)
    assert (dead.state, dead.last_error) == ("dead", "zalo_-14014")
    assert TokenStatus.of("1", None, 0, margin).answer()["state"] == "missing"
    shown = orjson.dumps(TokenStatus.of(TOKEN.oa_id, TOKEN, 0, margin).answer())
    assert b"the-access-token" not in shown
    assert b"the-refresh-token" not in shown
    assert "the-" not in repr(TOKEN)


@pytest.mark.parametrize("expires_in", ["90000", 90000])
def test_an_answer_gives_a_pair_whether_expires_in_is_a_string_or_a_number(
    expires_in: Any,
) -> None:
    pair = oauth.parse_answer({"access_token": "a", "refresh_token": "r", "expires_in": expires_in})
    assert (pair.access_token, pair.refresh_token, pair.expires_in) == ("a", "r", 90_000)
    assert "a" not in repr(pair).replace("Pair", "").replace("expires_in", "")


@pytest.mark.parametrize(
    ("body", "code", "retry"),
    [
        ({"error": -14014, "error_name": "Invalid refresh token"}, "zalo_-14014", False),
        ({"error": "-14002", "error_description": "x"}, "zalo_-14002", False),
        ({"error": -32, "message": "too many requests"}, "rate_limited", True),
        ({"error": -124, "message": "Access token is invalid"}, "zalo_-124", False),
        ({"access_token": "a"}, "transport", True),
        ({"access_token": "a", "refresh_token": "r", "expires_in": "soon"}, "transport", True),
        ([], "transport", True),
    ],
)
def test_a_refusal_is_classified_by_the_table(body: Any, code: str, retry: bool) -> None:
    with pytest.raises(oauth.OAuthRefused) as refused:
        oauth.parse_answer(body)
    assert (refused.value.code, refused.value.retry) == (code, retry)


def test_the_connect_state_is_signed_expires_and_hides_the_verifier() -> None:
    connector = Connector(KEY)
    visit = connector.start("https://zalo.example/v4/oa/permission", "42", "https://g/cb", 1000)
    app_id, verifier = connector.check(visit.state, 1000)
    assert app_id == "42"
    assert verifier not in visit.url
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge.rstrip(b"=").decode() in visit.url
    assert len(verifier) >= 43
    with pytest.raises(BadState):
        connector.check(visit.state, 1000 + 601)
    with pytest.raises(BadState):
        Connector(bytes(32)).check(visit.state, 1000)
    payload, _, signature = visit.state.partition(".")
    forged = base64.urlsafe_b64encode(orjson.dumps({"app_id": "43", "nonce": "", "exp": 9e9}))
    with pytest.raises(BadState):
        connector.check(forged.decode().rstrip("=") + "." + signature, 1000)
    with pytest.raises(BadState):
        connector.check(payload, 1000)
