"""The per-OA gauges' values: the refresh token's time left, and gauges an absent value removes."""

from __future__ import annotations

from datetime import UTC, datetime

from service.metrics import REGISTRY
from service.processor.oa_metrics import Figures, show, token_left
from service.processor.oa_metrics import remove as remove_oa
from service.zalo.vault import TokenStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def test_the_token_gauge_is_the_refresh_tokens_time_left() -> None:
    access_in_a_day = NOW_MS + 86_400_000
    status = TokenStatus("1", "app", "valid", access_in_a_day, NOW_MS + 6 * 86_400_000, NOW_MS)
    assert token_left(status, NOW) == 6 * 86_400.0
    expiring = TokenStatus("1", "app", "expiring", NOW_MS - 1, NOW_MS + 1_000, NOW_MS)
    assert token_left(expiring, NOW) == 1.0
    past = TokenStatus("1", "app", "valid", None, NOW_MS - 5_000, NOW_MS)
    assert token_left(past, NOW) == 0.0
    dead = TokenStatus("1", "app", "dead", None, NOW_MS + 86_400_000, NOW_MS)
    assert token_left(dead, NOW) == 0.0
    assert token_left(TokenStatus("1", None, "missing"), NOW) is None


def value(name: str, oa_id: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"oa_id": oa_id, **labels})


def test_an_unlimited_quota_removes_the_quota_gauges_and_a_partition_move_all() -> None:
    oa_id = "999000111"
    limited = Figures(20_000, 19_996, 400, 1, (1, 2), True)
    show(oa_id, limited, 3_600.0)
    assert value("zns_gate_oa_daily_quota", oa_id) == 20_000
    assert value("zns_gate_oa_remaining_today", oa_id) == 19_996
    assert value("zns_gate_oa_penalty_threshold", oa_id) == 400
    assert value("zns_gate_oa_negatives_today", oa_id) == 1
    assert value("zns_gate_oa_quality", oa_id, window="48h") == 1
    assert value("zns_gate_oa_quality", oa_id, window="7d") == 2
    assert value("zns_gate_oa_tier_down_likely", oa_id) == 1
    assert value("zns_gate_oa_token_expires_seconds", oa_id) == 3_600
    show(oa_id, Figures(None, None, None, 0, (3, 3), False), None)
    assert value("zns_gate_oa_daily_quota", oa_id) is None
    assert value("zns_gate_oa_remaining_today", oa_id) is None
    assert value("zns_gate_oa_penalty_threshold", oa_id) is None
    assert value("zns_gate_oa_token_expires_seconds", oa_id) is None
    assert value("zns_gate_oa_quality", oa_id, window="7d") == 3
    assert value("zns_gate_oa_tier_down_likely", oa_id) == 0
    remove_oa(oa_id)
    samples = [
        sample
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.labels.get("oa_id") == oa_id
    ]
    assert samples == []
