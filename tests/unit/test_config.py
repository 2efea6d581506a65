"""Settings: the TOML file of docs/operations.md#settings, ZNS_GATE_* overrides, clear refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, load_settings

SETTINGS_EXAMPLE = """
[server]
host = "127.0.0.1"
port = 8080
[log]
backend = "embedded"
path = "var/zns-gate.db"
bootstrap_servers = "127.0.0.1:9092"
partitions = 12
topic_prefix = "zns"
retention_days = 200
[[apps]]
app_id = "2074138120372622546"
secrets = ["oa-secret-key"]
[rules]
default = "zbs-2026"
timezone = "Asia/Ho_Chi_Minh"
clock = "wall"
[[oas]]
oa_id = "388613280878808645"
rules = "zns-2024"
negative_replies = { "tpl-123" = ["Không quan tâm", "Ngừng nhận"] }
[[api.tokens]]
token = "a-long-enough-token-0123"
scopes = ["read", "send", "admin"]
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ZNS_GATE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zns-gate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.log.backend == "embedded"
    assert settings.log.path == Path("var/zns-gate.db")
    assert settings.log.partitions == 12
    assert settings.log.synchronous == "FULL"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.receiver.max_body_bytes == 256 * 1024
    assert settings.receiver.publish_deadline_s == 1.5
    assert settings.receiver.max_age_s is None
    assert settings.rules.default == "zbs-2026"
    assert settings.rules.timezone == "Asia/Ho_Chi_Minh"
    assert settings.rules.clock == "wall"
    assert settings.apps == []
    assert settings.oas == []
    assert settings.api.tokens == []


def test_the_documented_example_reads_as_written(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SETTINGS_EXAMPLE))
    assert settings.app_secrets("2074138120372622546") == ("oa-secret-key",)
    assert settings.app_secrets("someone-else") is None
    [oa] = settings.oas
    assert (oa.oa_id, oa.rules) == ("388613280878808645", "zns-2024")
    assert oa.negative_replies == {"tpl-123": ["Không quan tâm", "Ngừng nhận"]}
    [token] = settings.api.tokens
    assert token.scopes == ["read", "send", "admin"]
    assert "a-long-enough-token" not in repr(settings)  # secrets do not leak into reprs
    assert "oa-secret-key" not in repr(settings)


def test_file_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZNS_GATE_CONFIG", str(write(tmp_path, "[log]\npartitions = 5\n")))
    assert load_settings().log.partitions == 5


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, SETTINGS_EXAMPLE)
    monkeypatch.setenv("ZNS_GATE_LOG__BACKEND", "kafka")
    monkeypatch.setenv("ZNS_GATE_LOG__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("ZNS_GATE_SERVER__PORT", "9090")
    monkeypatch.setenv("ZNS_GATE_RULES__CLOCK", "stream")
    settings = load_settings(path)
    assert settings.log.backend == "kafka"
    assert settings.log.bootstrap_servers == "127.0.0.1:19092"
    assert settings.log.partitions == 12  # the file's value where nothing overrides it
    assert settings.server.port == 9090
    assert settings.rules.clock == "stream"
    assert settings.rules.timezone == "Asia/Ho_Chi_Minh"


def test_ids_given_as_numbers_stay_their_digits(tmp_path: Path) -> None:
    text = '[[apps]]\napp_id = 2074138120372622546\nsecrets = ["secret-8"]\n'
    [app] = load_settings(write(tmp_path, text)).apps
    assert app.app_id == "2074138120372622546"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[log]\npartitions = 0\n", "log.partitions"),
        ('[log]\nbackend = "redis"\n', "log.backend"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[rules]\ntimezone = "Mars/Olympus"\n', "rules.timezone"),
        ('[rules]\nclock = "sundial"\n', "rules.clock"),
        ('[rules]\ndefault = "zns-1999"\n', "rules.default"),
        ("[log]\npartitons = 3\n", "log.partitons"),
        ('[[apps]]\napp_id = "1"\nsecrets = []\n', "apps.0.secrets"),
        ('[[apps]]\napp_id = "1"\nsecrets = ["a", "b", "c"]\n', "apps.0.secrets"),
        ('[[api.tokens]]\ntoken = "short"\nscopes = ["read"]\n', "api.tokens.0.token"),
        (
            '[[api.tokens]]\ntoken = "0123456789abcdefgh"\nscopes = ["root"]\n',
            "api.tokens.0.scopes.0",
        ),
        (
            '[[apps]]\napp_id = "1"\nsecrets = ["secret-a"]\n'
            '[[apps]]\napp_id = "1"\nsecrets = ["secret-b"]\n',
            "apps",
        ),
        ('[[apps]]\napp_id = "1"\nsecrets = [""]\n', "apps.0.secrets"),
        ("[receiver]\nread_timeout_s = 1.0\n", "receiver"),
        ("[api]\nmax_admission_units = 10001\n", "api.max_admission_units"),
        ("[api]\nmax_future_s = -1\n", "api.max_future_s"),
        # Without a port the address could not be published to the group: never forwarded to.
        ('[api]\nadvertised_url = "http://10.0.0.7"\n', "api.advertised_url"),
        ('[api]\nadvertised_url = "http://10.0.0.7:8080/path"\n', "api.advertised_url"),
        ('[zalo]\ntoken_key = "not base64!"\n', "zalo.token_key"),
        ('[zalo]\ntoken_key = "c2hvcnQ="\n', "zalo.token_key"),
        ("[zalo]\nenabled = true\n", "zalo"),
        ('[zalo]\napi_url = "ftp://zalo"\n', "zalo.api_url"),
        ("[log\n", "config"),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid setting {re.escape(named)}:"):
        load_settings(write(tmp_path, text))


def test_invalid_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZNS_GATE_LOG__PARTITIONS", "many")
    with pytest.raises(ConfigError, match=r"invalid setting log\.partitions"):
        load_settings()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_serve_with_an_invalid_setting_exits_2_before_listening(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 8181\n[log]\npartitions = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid setting log.partitions" in result.stderr


def test_an_oa_listed_under_two_apps_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[apps]]\napp_id = "1"\nsecrets = ["secret-one-1"]\noa_ids = ["7"]\n'
        '[[apps]]\napp_id = "2"\nsecrets = ["secret-two-2"]\noa_ids = ["7"]\n',
    )
    with pytest.raises(ConfigError, match=r"apps.*oa_id.*7"):
        load_settings(path)


def test_a_short_cluster_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api.cluster_secret.*at least 16"):
        load_settings(write(tmp_path, '[api]\ncluster_secret = "short"\n'))
    settings = load_settings(write(tmp_path, '[api]\ncluster_secret = "long-enough-secret-01"\n'))
    assert settings.api.cluster_secret is not None
    assert "long-enough" not in repr(settings)
