"""`GET /metrics` after simulated traffic: every metric docs/operations.md lists moves as said."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from service.simulate import Plan, simulate
from tests import zalo
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import ready

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(service: RunningService) -> Samples:
    async with service.client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def test_metrics_follow_the_traffic(service_factory: ServiceFactory) -> None:
    service = await service_factory(processor={"checkpoint_interval_s": 0.2})
    await ready(service)
    before = await scrape(service)
    plan = Plan(11, 3, 0.2, zalo.APP_ID, zalo.SECRET)
    target = str(service.client.make_url("")).rstrip("/")
    await simulate(target, plan, rate=50, duration_s=3)
    await asyncio.sleep(1.0)  # a checkpoint or two after the last request
    after = await scrape(service)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("zns_gate_webhooks_total", outcome="accepted") > 0
    assert grew("zns_gate_webhooks_total", event_name="user_received_message") > 0
    assert grew("zns_gate_publish_seconds_count") > 0
    assert grew("zns_gate_records_folded_total") > 0
    assert grew("zns_gate_fold_delay_seconds_count") > 0
    assert grew("zns_gate_checkpoint_seconds_count") > 0
    assert grew("zns_gate_admission_units_total", outcome="granted") > 0
    assert total(after, "zns_gate_restore_seconds_count") > 0
    lags = {ls: v for (n, ls), v in after.items() if n == "zns_gate_consumer_lag_records"}
    assert {dict(ls)["partition"] for ls in lags} == {"0", "1", "2"}
    assert all(v >= 0 for v in lags.values())
    checkpoints = [
        v for (n, _), v in after.items() if n == "zns_gate_last_checkpoint_timestamp_seconds"
    ]
    assert checkpoints
    assert all(time.time() - v < 30 for v in checkpoints)
