"""Prometheus metrics of the process, served at GET /metrics.

Labels never carry ids or user input that an unauthenticated caller controls:
an event name is a label only once the webhook's signature has been verified.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

FOLDED = Counter(
    "zns_gate_records_folded",
    "Records of zns.events the processor handled.",
    registry=REGISTRY,
)

DECISIONS = Counter(
    "zns_gate_decisions",
    "Decision records written to zns.decisions.",
    registry=REGISTRY,
)

PROCESSOR_ERRORS = Counter(
    "zns_gate_processor_errors",
    "Failures of the processor's loop other than the log's (a restore, fetch or checkpoint "
    "that raised); the loop tries again with a growing pause.",
    registry=REGISTRY,
)

DEAD_LETTERS = Counter(
    "zns_gate_dead_letters",
    "Records of zns.events sent to zns.dlq.",
    registry=REGISTRY,
)

RESTORE_SECONDS = Histogram(
    "zns_gate_restore_seconds",
    "Time to restore the snapshots of one partition when it is assigned.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)

CHECKPOINT_SECONDS = Histogram(
    "zns_gate_checkpoint_seconds",
    "Time to write the snapshots, decisions and dead letters of a checkpoint and commit.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

FORWARDED = Counter(
    "zns_gate_forwarded_requests",
    "Requests for an OA this instance does not own, forwarded to its owner, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)

CONSUMER_LAG = Gauge(
    "zns_gate_consumer_lag_records",
    "Records of zns.events not folded yet, per partition this instance owns (at each checkpoint).",
    ["partition"],
    registry=REGISTRY,
)

FOLD_DELAY_SECONDS = Histogram(
    "zns_gate_fold_delay_seconds",
    "Time from a record's append to the log to its folding (the last record of each fetch).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)

LAST_CHECKPOINT = Gauge(
    "zns_gate_last_checkpoint_timestamp_seconds",
    "When each owned partition's state was last made durable; time() minus this is the "
    "age of its newest snapshot.",
    ["partition"],
    registry=REGISTRY,
)

ADMISSION_UNITS = Counter(
    "zns_gate_admission_units",
    "Units asked for in admissions: granted, or denied with this reason.",
    ["outcome"],
    registry=REGISTRY,
)

ZALO_TOKEN_REFRESHES = Counter(
    "zns_gate_zalo_token_refreshes",
    "Refreshes of OAs' Zalo tokens by outcome: refreshed, dead (Zalo refused the refresh "
    "token), or what made it retry later (rate_limited, transport, no_app_secret, ...).",
    ["outcome"],
    registry=REGISTRY,
)

ZALO_TOKEN_EXPIRES_SECONDS = Gauge(
    "zns_gate_zalo_token_expires_seconds",
    "Seconds until the OA's Zalo access token expires, per OA this instance owns (OA ids "
    "come from tokens an admin stored).",
    ["oa_id"],
    registry=REGISTRY,
)

ZALO_TOKEN_STATE = Gauge(
    "zns_gate_zalo_token_state",
    "1 for the state of the OA's Zalo token (valid, expiring, dead), 0 for the others, per "
    "OA this instance owns.",
    ["oa_id", "state"],
    registry=REGISTRY,
)

ZALO_CALLS = Counter(
    "zns_gate_zalo_calls",
    "Calls of Zalo's business API by endpoint and outcome class (ok, auth, transient, ...).",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)

ZALO_CALL_SECONDS = Histogram(
    "zns_gate_zalo_call_seconds",
    "Time of one call of Zalo's business API, answered or not, by endpoint.",
    ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

ZALO_UNKNOWN_CODES = Counter(
    "zns_gate_zalo_unknown_codes",
    "Answers of Zalo with an error code the gate's table does not know (classed transient).",
    registry=REGISTRY,
)

ZALO_SYNCS = Counter(
    "zns_gate_zalo_syncs",
    "Sync records the poller appended, by what it read (quota, quality, templates, tags).",
    ["read"],
    registry=REGISTRY,
)

PROXY_MESSAGES = Counter(
    "zns_gate_proxy_messages",
    "Messages of POST /messages by status (sent, denied, rejected, failed, unknown).",
    ["status"],
    registry=REGISTRY,
)

# Per OA, for the OAs of the partitions this instance owns (service/processor/oa_metrics.py):
# set when a checkpoint writes an OA and at each sweep, removed when the partition moves.

OA_DAILY_QUOTA = Gauge(
    "zns_gate_oa_daily_quota",
    "The OA's daily ZNS quota (its tier); absent while the quota is unlimited.",
    ["oa_id"],
    registry=REGISTRY,
)

OA_REMAINING_TODAY = Gauge(
    "zns_gate_oa_remaining_today",
    "What the OA may still send today, as GET /quota's remaining_today; absent while unlimited.",
    ["oa_id"],
    registry=REGISTRY,
)

OA_NEGATIVES_TODAY = Gauge(
    "zns_gate_oa_negatives_today",
    "Negative signals (low ratings, negative replies) the OA drew today.",
    ["oa_id"],
    registry=REGISTRY,
)

OA_PENALTY_THRESHOLD = Gauge(
    "zns_gate_oa_penalty_threshold",
    "T: the tier drops one step on the first negative today beyond it (2% of the day's "
    "starting quota); absent while the quota is unlimited.",
    ["oa_id"],
    registry=REGISTRY,
)

OA_QUALITY = Gauge(
    "zns_gate_oa_quality",
    "The OA's quality level over the window as GET /quality gives it: 0 UNDEFINED, 1 LOW, "
    "2 MEDIUM, 3 HIGH.",
    ["oa_id", "window"],
    registry=REGISTRY,
)

OA_TIER_DOWN_LIKELY = Gauge(
    "zns_gate_oa_tier_down_likely",
    "1 when the forecast projects a step down of the daily quota at the next evaluation "
    "on today's numbers, else 0.",
    ["oa_id"],
    registry=REGISTRY,
)

OA_TOKEN_EXPIRES_SECONDS = Gauge(
    "zns_gate_oa_token_expires_seconds",
    "Seconds until the OA's Zalo refresh token expires (0 once dead); absent without a "
    "stored token. The access token's is zns_gate_zalo_token_expires_seconds.",
    ["oa_id"],
    registry=REGISTRY,
)

NOTIFY_DELIVERED = Counter(
    "zns_gate_notify_delivered",
    "Decisions a notification target took (2xx), per target label.",
    ["target"],
    registry=REGISTRY,
)

NOTIFY_FAILED = Counter(
    "zns_gate_notify_failed",
    "Delivery attempts that failed (not 2xx, timeout, unreachable) and will be retried or "
    "dead-lettered, per target label.",
    ["target"],
    registry=REGISTRY,
)

NOTIFY_DLQ = Counter(
    "zns_gate_notify_dlq",
    "Decisions moved to zns.notify-dlq after the retry window, per target label.",
    ["target"],
    registry=REGISTRY,
)

NOTIFY_DELAY_SECONDS = Histogram(
    "zns_gate_notify_delay_seconds",
    "Time from a decision's append to zns.decisions to the target's 2xx, per target label.",
    ["target"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86_400),
    registry=REGISTRY,
)
