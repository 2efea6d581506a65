"""The fake Zalo's scenario and in-memory world, without HTTP: rules checked by moving its clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.zalo.fake import ScenarioError, default_scenario, load_scenario
from service.zalo.fake.scenario import DEFAULT_APP_ID, DEFAULT_OA_ID, ScriptedError, parse_scenario
from service.zalo.fake.state import FakeClock, FakeZalo, Refusal, fingerprint, s256_challenge

APP = DEFAULT_APP_ID
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fake-zalo" / "scenario.toml"
OTP = {
    "phone": "+84987654321",
    "template_id": 231456,
    "template_data": {"otp": "1234"},
    "tracking_id": "t-1",
}


class StillClock(FakeClock):
    """The fake's clock on a fixed wall time (2026-12-02 12:00 in Vietnam)."""

    def __init__(self) -> None:
        super().__init__(lambda: 1_796_187_600.0)


def world(**changes: Any) -> FakeZalo:
    values = default_scenario().model_dump()
    values["oas"][0].update(changes.pop("oa", {}))
    values.update(changes)
    return FakeZalo(parse_scenario(values), StillClock())


def test_the_example_scenario_loads() -> None:
    scenario = load_scenario(EXAMPLE)
    assert [oa.oa_id for oa in scenario.oas] == [DEFAULT_OA_ID]
    assert {t.template_id for t in scenario.templates} >= {"231456", "231459"}
    assert FakeZalo(scenario).oas[DEFAULT_OA_ID].remaining_quota == 2000


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"oas": [{"oa_id": "1", "app_id": "9", "refresh_token": "r"}]}, "names app 9"),
        ({"numbers": "words"}, "invalid scenario numbers"),
        ({"rating_rate": 2}, "invalid scenario rating_rate"),
        ({"errors": [{"endpoint": "send", "error": -124, "times": 0}]}, "errors.0.times"),
        ({"surprise": 1}, "invalid scenario surprise"),
    ],
)
def test_an_invalid_scenario_says_where(change: dict[str, Any], where: str) -> None:
    values = default_scenario().model_dump()
    values.update(change)
    with pytest.raises(ScenarioError, match=where):
        parse_scenario(values)


def test_a_missing_or_broken_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("apps = [")
    with pytest.raises(ScenarioError, match="not TOML"):
        load_scenario(broken)


def test_s256_matches_rfc_7636() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_fingerprint_is_short_and_not_the_token() -> None:
    assert len(fingerprint("fake-access-token")) == 12
    assert "fake" not in fingerprint("fake-access-token")


def test_the_daily_quota_comes_back_at_vietnams_midnight_and_the_promotion_monthly() -> None:
    zalo = world(oa={"remaining_quota": 1, "remaining_monthly_promotion_quota": 0})
    oa = zalo.oa_of("fake-access-token")
    zalo.send(oa, OTP, hashed=False)
    with pytest.raises(Refusal) as refused:
        zalo.send(oa, OTP, hashed=False)
    assert refused.value.code == -144
    zalo.clock.advance(11 * 3600 + 59 * 60)  # 23:59 in Vietnam
    assert zalo.oa_of("fake-access-token").remaining_quota == 0
    zalo.clock.advance(60)  # 00:00 the next day
    assert getattr(zalo.oa_now(DEFAULT_OA_ID), "remaining_quota", None) == 500
    assert oa.remaining_monthly_promotion_quota == 0
    zalo.clock.advance(30 * 86400)  # January
    pair = zalo.access_token(
        {"grant_type": "refresh_token", "refresh_token": "fake-refresh-token", "app_id": APP},
        "fake-app-secret",
    )
    assert zalo.oa_of(pair.access_token).remaining_monthly_promotion_quota == 125


def test_scripted_errors_answer_in_order_then_stop() -> None:
    zalo = world(errors=[{"endpoint": "send", "error": -124, "times": 2}])
    zalo.script(ScriptedError(endpoint="send", error=-144))
    zalo.script(ScriptedError(endpoint="quota", error=-32))
    codes = [getattr(zalo.scripted_refusal("send"), "code", 0) for _ in range(4)]
    assert codes == [-124, -124, -144, 0]
    assert zalo.scripts() == [{"endpoint": "quota", "error": -32, "message": None, "times": 1}]


def test_an_oauth_code_is_set_by_the_scenario() -> None:
    zalo = world(oauth_errors={"invalid_refresh_token": -999})
    form = {"grant_type": "refresh_token", "refresh_token": "unknown", "app_id": APP}
    with pytest.raises(Refusal) as refused:
        zalo.access_token(form, "fake-app-secret")
    assert refused.value.code == -999
