"""The forecast of `GET /v1/oas/{oa_id}/quality` (docs/api.md), from the domain alone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from service.api import views
from service.domain import admission, forecast, governor
from service.domain.fold import advance
from service.domain.forecast import Forecast
from service.domain.windows import day_start
from tests import feed
from tests.unit.test_fold import D, Oa, receipts, vn

NOON = vn(D, 12)


def test_an_oa_never_seen_keeps_its_quota_and_has_no_evaluation_due() -> None:
    oa = Oa()  # zbs-2026: 20,000 a day, T = 400
    assert forecast.forecast(oa.state, NOON, oa.policy) == Forecast(
        next_evaluation_at=None,
        projected_daily_quota=20_000,
        negatives_today=0,
        negatives_before_penalty=400,
    )


def test_a_low_week_projects_a_step_down_at_the_first_evaluation() -> None:
    oa = Oa()
    oa.apply(feed.admission("a", "t1", 2, 100, vn(D, 8)))  # the first send: day D
    oa.apply_all(receipts(100, vn(D, 9)))
    oa.apply_all(feed.rating(f"m{i}", 1, vn(D, 10)) for i in range(30))

    answer = forecast.forecast(oa.state, NOON, oa.policy)

    assert answer.next_evaluation_at == day_start(D + timedelta(days=8), oa.policy.zone)
    assert answer.projected_daily_quota == 10_000  # one step down the ladder
    assert (answer.negatives_today, answer.negatives_before_penalty) == (30, 370)


def test_an_unlimited_tier_has_no_penalty_to_forecast() -> None:
    oa = Oa()
    oa.apply(feed.sync(vn(D - timedelta(days=1), 9), daily_quota=None))
    advance(oa.state, NOON, oa.policy)  # today starts unlimited
    answer = forecast.forecast(oa.state, NOON, oa.policy)
    assert answer.projected_daily_quota is None
    assert answer.negatives_before_penalty is None


@pytest.mark.parametrize("view", [views.quota, views.zalo_quota])
def test_a_quota_read_asks_the_governor_once(
    view: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []
    real = governor.governor

    def counted(*args: object) -> object:
        asked.append(args)
        return real(*args)  # type: ignore[arg-type]

    for module in (views, admission):
        monkeypatch.setattr(module, "governor", counted)
    oa = Oa()
    oa.apply(feed.admission("a", "t1", 2, 100, vn(D, 8)))

    answer = view(oa.state, NOON, oa.policy)

    assert len(asked) == 1
    assert answer  # the view answered
