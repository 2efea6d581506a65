"""Prometheus metrics of the process, served at GET /metrics.

Labels never carry ids or user input that an unauthenticated caller controls:
an event name is a label only once the webhook's signature has been verified.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter(
    "zns_gate_webhooks",
    "Webhook requests by outcome (accepted or the error code) and, once verified, event name.",
    ["outcome", "event_name"],
    registry=REGISTRY,
)

PUBLISH_SECONDS = Histogram(
    "zns_gate_publish_seconds",
    "Time for the event log to accept one record.",
    ["backend"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5),
    registry=REGISTRY,
)
