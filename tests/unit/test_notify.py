"""The notifier's pure parts: its settings, the signature, the bodies, the back-off."""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path
from typing import get_args

import orjson
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.config import NOTIFY_KINDS, ConfigError, NotifierSettings, Settings, load_settings
from service.domain.records import DecisionRecord, Source
from service.notify import payloads
from service.notify.notifier import backoff

SECRET = "whsec_" + base64.b64encode(b"a-signing-key-of-32-bytes-000000").decode()

DECISION = DecisionRecord(
    decision_id="2-41-0-penalty",
    oa_id="388613280878808645",
    kind="penalty",
    rule="penalty",
    before=20_000,
    after=10_000,
    inputs={"negatives_today": 401, "threshold": 400},
    at="2026-03-02T10:00:00+07:00",
    source=Source(topic="zns.events", partition=2, offset=41),
)


def test_the_kinds_a_target_may_name_are_the_decisions_kinds() -> None:
    kind = DecisionRecord.model_fields["kind"].annotation
    assert set(get_args(kind)) == set(NOTIFY_KINDS)


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ({"url": "ftp://x", "secret": SECRET}, "http:// or https://"),
        ({"url": "https://x", "secret": "not-whsec"}, "whsec_"),
        ({"url": "https://x", "secret": "whsec_!!"}, "base64"),
        ({"url": "https://x", "secret": "whsec_c2hvcnQ="}, "16 bytes"),
        ({"url": "https://x", "secret": SECRET, "kinds": ["tier", "nope"]}, "nope"),
        ({"url": "https://x", "secret": SECRET, "format": "teams"}, "format"),
    ],
)
def test_an_invalid_target_is_refused_saying_why(target: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(notify=[target])


def test_two_targets_with_one_label_are_refused() -> None:
    one = {"url": "https://hooks.example/a", "secret": SECRET}
    two = {"url": "https://hooks.example/b", "secret": SECRET}
    with pytest.raises(ValidationError, match=r"listed more than once: hooks\.example"):
        Settings(notify=[one, two])
    Settings(notify=[one, {**two, "name": "b"}])


def test_a_file_with_a_bad_target_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[notify]]\nurl = "https://x"\nsecret = "plain"\n')
    with pytest.raises(ConfigError, match=r"invalid setting notify\.0\.secret"):
        load_settings(path)


def test_a_target_wants_its_kinds_and_rules_and_everything_by_default() -> None:
    everything, some = Settings(
        notify=[
            {"name": "all", "url": "https://x", "secret": SECRET},
            {"name": "some", "url": "https://y", "secret": SECRET, "kinds": ["tier", "token_dead"]},
        ]
    ).notify
    assert everything.wants("quality", "proxy_quality_7d")
    assert some.wants("tier", "evaluation_down")
    assert some.wants("token", "token_dead")
    assert not some.wants("penalty", "penalty")


def test_the_signature_verifies_with_the_reference_library() -> None:
    body = payloads.body(DECISION, "standard")
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    headers = payloads.headers(key, DECISION.decision_id, int(time.time()), body)
    verified = Webhook(SECRET).verify(body, headers)
    assert verified["data"] == DECISION.model_dump(mode="json")
    assert verified["type"] == "decision.penalty"
    tampered = body.replace(b"10000", b"20000")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)


def test_the_slack_body_is_the_explanation() -> None:
    text = orjson.loads(payloads.body(DECISION, "slack"))["text"]
    assert text == (
        "OA 388613280878808645 at 2026-03-02T10:00:00+07:00: 401 negatives today went "
        "beyond the threshold of 400: the daily quota dropped one step, from 20,000 to 10,000."
    )


def test_backoff_doubles_is_capped_and_jittered() -> None:
    options = NotifierSettings(backoff_first_s=1, backoff_most_s=60)
    assert [backoff(n, options, lambda: 1.0) for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]
    assert [backoff(n, options, lambda: 0.0) for n in (1, 2, 7)] == [0.5, 1, 30]
    waits = {backoff(3, options, random.random) for _ in range(50)}
    assert all(2 <= w <= 4 for w in waits)
    assert len(waits) > 1


def test_a_long_outage_never_overflows_the_backoff() -> None:
    options = NotifierSettings(backoff_first_s=1, backoff_most_s=60)
    assert backoff(5_000, options, lambda: 1.0) == 60


def test_a_targets_label_and_origin_keep_no_credential() -> None:
    (slack,) = Settings(
        notify=[
            {"url": "https://user:pw@hooks.slack.com:8443/services/T0/B0/XX?t=1", "secret": SECRET}
        ]
    ).notify
    assert slack.label == "hooks.slack.com:8443"
    assert slack.origin == "https://hooks.slack.com:8443"


def test_warning_takes_token_dead_and_an_empty_kinds_is_refused() -> None:
    (warnings,) = Settings(
        notify=[{"url": "https://x", "secret": SECRET, "kinds": ["warning"]}]
    ).notify
    assert warnings.wants("token", "token_dead")
    assert warnings.wants("warning", "penalty_near")
    assert not warnings.wants("tier", "evaluation_down")
    with pytest.raises(ValidationError, match="empty list"):
        Settings(notify=[{"url": "https://x", "secret": SECRET, "kinds": []}])
