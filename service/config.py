"""Settings of one zns-gate process: a TOML file overridden by ZNS_GATE_* variables.

The shape is the contract of docs/operations.md#settings; tests and
operators write files against it, so names here are not renamed lightly. This
module only reads and validates: it opens no socket and touches no database.
An invalid value raises `ConfigError` naming the setting; the CLI turns that
into exit status 2 before anything listens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import tomllib
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.domain.events import id_as_string
from service.domain.records import MAX_ADMISSION_UNITS

CONFIG_ENV = "ZNS_GATE_CONFIG"
ENV_PREFIX = "ZNS_GATE_"

# The names of service.domain.rules.RULE_SETS (a test keeps the two the same).
RuleSetName = Literal["zbs-2026", "zns-2024"]


# Zalo ids are long integers kept as strings; a TOML or env number becomes its digits.
ZaloId = Annotated[str, BeforeValidator(id_as_string), Field(min_length=1, pattern=r"^\S+$")]


def _refuse_repeats(name: str, ids: list[str]) -> None:
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{name} listed more than once: {', '.join(repeated)}")


class _Section(BaseModel):
    # A typo in a file must not be silently ignored: unknown keys are errors.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    """How long running requests may finish after SIGTERM."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """uvloop (libuv) serves more requests per core; asyncio is the standard library's loop."""
    header_timeout_s: float = Field(default=5.0, gt=0, le=300)
    """A connection is closed when a request's headers have not all arrived this long after
    it opened or after its previous answer (so an idle kept-alive connection is closed
    then too): connections that never finish their headers would otherwise be held open
    until the process runs out of file descriptors."""


class ReceiverSettings(_Section):
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    """Webhook bodies over this size get 413 before they are read."""
    read_timeout_s: float = Field(default=0.4, gt=0)
    """A body that takes longer to arrive gets 408: slow senders would hold connections.
    Zalo sends small bodies at once; with the publish deadline it stays within 2 s."""
    publish_deadline_s: float = Field(default=1.5, gt=0, le=10)
    """How long a webhook may wait for the log to accept its record before 503.
    Zalo gives up after 2 s, so this stays well below it."""
    retry_after_s: int = Field(default=30, ge=1)
    """The Retry-After of a 503; Zalo retries on its own schedule in any case."""
    max_age_s: float | None = Field(default=None, gt=0)
    """Refuse bodies whose `timestamp` is older than this. None (the default) accepts
    any age, because Zalo retries with the original body for about an hour and
    duplicates are removed downstream."""

    @model_validator(mode="after")
    def _within_zalos_limit(self) -> ReceiverSettings:
        # Zalo gives up after 2 s; reading plus publishing must answer well before.
        if self.read_timeout_s + self.publish_deadline_s > 1.9:
            raise ValueError(
                "read_timeout_s + publish_deadline_s must stay within 1.9 s (Zalo waits 2 s)"
            )
        return self


class LogSettings(_Section):
    backend: Literal["embedded", "kafka"] = "embedded"
    path: Path = Path("var/zns-gate.db")
    """SQLite file of the embedded backend."""
    bootstrap_servers: str = "127.0.0.1:9092"
    partitions: int = Field(default=12, ge=1, le=1024)
    topic_prefix: str = Field(default="zns", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    retention_days: int = Field(default=200, ge=1)
    """Retention of the events topic; longer than the longest rule window (6 months)."""
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    """SQLite `synchronous` pragma. FULL: an acknowledged record survives a power loss."""
    group_commit_max: int = Field(default=1000, ge=1)
    """At most this many appends share one SQLite transaction."""
    replication_factor: int = Field(default=1, ge=1)
    """Replication factor of topics the Kafka backend creates (1 suits a one-node broker)."""
    client_id: str = "zns-gate"
    request_timeout_ms: int = Field(default=5000, ge=100)
    """Kafka client request timeout."""
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    """Kafka backend: a processor silent this long loses its partitions to the others;
    one that has not heard from its group for half of it stops granting admissions."""


class ProcessorSettings(_Section):
    enabled: bool = True
    """Fold zns.events into OA state in this process (a receiver-only process turns it off)."""
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
    """Snapshots are written and offsets committed at least this often while records come."""
    checkpoint_records: int = Field(default=20_000, ge=1)
    """... and after this many records, whichever comes first."""
    state_dir: Path = Path("var/state")
    """Kafka backend: the local index stores, one directory per topic prefix and partition.
    Disposable: a store missing or not matching its changelog is rebuilt from it."""
    cache_mb: int = Field(default=256, ge=1)
    """Memory for the index values read last, shared by every partition of the process."""
    idle_evict_s: float = Field(default=600.0, gt=0)
    """An OA without records or requests for this long leaves memory at the next
    checkpoint; it is read back from the index store when it is named again."""


class AppSettings(_Section):
    app_id: ZaloId
    secrets: list[SecretStr] = Field(min_length=1, max_length=2)
    """OA secret keys; the first is current, a second may stay valid during rotation."""
    oa_ids: list[ZaloId] | None = None
    """The OAs of this app; when given, a webhook for another OA signed by this app is
    refused (`unknown_app`). An OA listed here is refused for every other app."""
    app_secret: SecretStr | None = None
    """The app's secret key for Zalo's OAuth (sent as the `secret_key` header): needed
    to refresh the tokens of its OAs and to connect new ones (`[zalo]`)."""

    @field_validator("secrets")
    @classmethod
    def _not_guessable(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        # An empty secret would make the signature a plain hash anyone can compute.
        if any(len(s.get_secret_value()) < 8 for s in secrets):
            raise ValueError("a secret must have at least 8 characters")
        return secrets


_TEMPLATE_TAG_NAMES: dict[str, Literal[1, 2, 3]] = {
    "TRANSACTION": 1,
    "OTP": 1,
    "IN_TRANSACTION": 1,
    "CUSTOMER_CARE": 2,
    "POST_TRANSACTION": 2,
    "ACCOUNT_UPDATE": 2,
    "GENERAL_UPDATE": 2,
    "PROMOTION": 3,
    "FOLLOW_UP": 3,
}


class ZaloSettings(_Section):
    """The connection to Zalo: its tokens, poller and send proxy. Off unless `enabled`;
    the admission-only API works the same either way."""

    enabled: bool = False
    api_url: str = "https://business.openapi.zalo.me"
    """Zalo's business API (a local `zns-gate fake-zalo` in tests)."""
    oauth_url: str = "https://oauth.zaloapp.com"
    permission_url: str = "https://oauth.zaloapp.com/v4/oa/permission"
    """The page an OA admin grants the app access on (`GET /zalo/connect` sends them there)."""
    callback_url: str | None = None
    """This service's `/zalo/callback` as Zalo redirects to it (the app's registered
    callback URL); needed by `GET /zalo/connect`."""
    request_timeout_s: float = Field(default=10.0, gt=0, le=120)
    mode: Literal["development", "production"] = "development"
    """`development`: Zalo delivers sends only to the app's admins."""
    send_concurrency: int = Field(default=8, ge=1, le=256)
    """Zalo calls in flight per OA."""
    refresh_margin_s: int = Field(default=18_000, ge=60)
    """Refresh an access token when less than this remains."""
    refresh_at_least_every_s: int = Field(default=30 * 86_400, ge=3_600)
    """Refresh an idle OA's token at least this often, so its refresh token never dies
    unused (Zalo's lasts 3 months)."""
    poll_quota_s: int = Field(default=3_600, ge=10)
    poll_quality_s: int = Field(default=900, ge=10)
    poll_templates_s: int = Field(default=3_600, ge=10)
    template_tag_names: dict[str, Literal[1, 2, 3]] = Field(
        default_factory=lambda: dict(_TEMPLATE_TAG_NAMES)
    )
    """Zalo's content-type names (a template's `templateTag`, `/message/template-tag`) -> tag.
    The ZBS-era names are Zalo's; the legacy names' tags are inferred from their labels."""
    token_key: SecretStr | None = None
    """Base64 of 32 random bytes: encrypts the stored tokens (AES-GCM); set it with the
    environment (`ZNS_GATE_ZALO__TOKEN_KEY`) rather than in a file."""

    @field_validator("api_url", "oauth_url", "permission_url", "callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return None if value is None else value.rstrip("/")

    @field_validator("token_key")
    @classmethod
    def _key_of_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
        if len(raw) != 32:
            raise ValueError("must be base64 of 32 bytes (e.g. `openssl rand -base64 32`)")
        return value

    @model_validator(mode="after")
    def _key_when_enabled(self) -> ZaloSettings:
        if self.enabled and self.token_key is None:
            raise ValueError("zalo.enabled needs zalo.token_key to encrypt the stored tokens")
        return self

    def key(self) -> bytes:
        """The token key's 32 bytes."""
        if self.token_key is None:
            raise ConfigError("zalo.token_key is not set")
        return base64.b64decode(self.token_key.get_secret_value())


class RulesSettings(_Section):
    default: RuleSetName = "zbs-2026"
    timezone: str = "Asia/Ho_Chi_Minh"
    clock: Literal["wall", "stream"] = "wall"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class OaSettings(_Section):
    oa_id: ZaloId
    rules: RuleSetName | None = None
    """Rule set of this OA; the `[rules] default` when left out."""
    negative_replies: dict[str, list[str]] = Field(default_factory=dict)
    """Quick-reply labels that count as negative, per template id."""


class ApiToken(_Section):
    token: SecretStr
    scopes: list[Literal["read", "send", "admin"]] = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a token must have at least 16 characters")
        return value


class ApiSettings(_Section):
    tokens: list[ApiToken] = Field(default_factory=list)
    advertised_url: str | None = Field(
        default=None, pattern=r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"
    )
    """Where other instances reach this one (`http://host:port`), published to the
    processor group so that they forward requests for this instance's OAs here.
    Default: `http://<server.host>:<server.port>`, the machine's name for 0.0.0.0."""
    cluster_secret: SecretStr | None = Field(default=None, min_length=16)
    """Shared by every instance of one cluster: they sign the addresses they publish to
    the group, and each request forwarded to an OA's owner, with it. Without it an
    instance forwards nothing (a request for an OA another instance owns gets 503
    `forwarding_disabled`), so a single instance needs none."""
    forward_timeout_s: float = Field(default=10.0, gt=0, le=60)
    """How long a request forwarded to the owner of an OA may take."""
    read_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """A /v1 request body that has not arrived whole by then gets 408 `request_timeout`."""
    max_future_s: int = Field(default=300, ge=0, le=86_400)
    """How far past this instance's wall clock a reported time (`sent_time`, `as_of`) may
    be: clocks differ a little, never by more (422 `invalid_request` beyond)."""
    max_admission_units: int = Field(default=MAX_ADMISSION_UNITS, ge=1, le=MAX_ADMISSION_UNITS)
    """The most units (`count`, or recipients) one admission may ask for; more is 422. At
    most 10,000, which keeps an admission record within the broker's default limit."""


NOTIFY_KINDS = ("quality", "tier", "penalty", "pause", "suspension", "template", "token", "warning")
"""The kinds of `zns.decisions` (`DecisionRecord.kind`; a test keeps the two the same)."""
NOTIFY_WARNINGS = ("penalty_near", "tier_down_likely", "token_expiring", "token_dead")
"""The warnings (rules) a target may name in `kinds` beside the kinds themselves."""


class NotifyTarget(_Section):
    """One receiver of decisions (`[[notify]]`): each decision whose kind or rule is in
    `kinds` is posted to `url`, signed as Standard Webhooks do (docs/notifications.md)."""

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """The target's label in metrics and logs, and the name of its durable cursor;
    default: the URL's host and port. Renaming it starts its cursor from the log's end."""
    url: str
    secret: SecretStr
    """`whsec_` and the base64 of the signing key (Standard Webhooks)."""
    kinds: list[str] | None = None
    """Kinds (`tier`, `penalty`, ..., `warning`) or rules (`penalty_near`, `token_dead`,
    ...) to send; default all."""
    format: Literal["standard", "slack"] = "standard"
    """`standard`: the decision as JSON; `slack`: `{"text": <its explanation>}`."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.startswith("whsec_"):
            raise ValueError("must start with whsec_ (a Standard Webhooks secret)")
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ and base64") from None
        if len(key) < 16:
            raise ValueError("the key after whsec_ must be at least 16 bytes")
        return value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str] | None) -> list[str] | None:
        if kinds is None:
            return None
        if not kinds:
            raise ValueError("an empty list would send nothing; leave kinds out for every kind")
        unknown = sorted(set(kinds) - set(NOTIFY_KINDS) - set(NOTIFY_WARNINGS))
        if unknown:
            raise ValueError(f"unknown kinds: {', '.join(unknown)}")
        return kinds

    @property
    def label(self) -> str:
        """`name`, or the URL's host and port: never its path, query or user, which may
        hold a credential (a Slack webhook's path is one)."""
        if self.name is not None:
            return self.name
        return self.origin.split("://", 1)[1]

    @property
    def origin(self) -> str:
        """`scheme://host:port` of the URL, what logs and dead letters may show of it."""
        url = urllib.parse.urlsplit(self.url)
        host = url.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{url.scheme}://{host}" + (f":{url.port}" if url.port else "")

    def key(self) -> bytes:
        """The signing key: the secret's bytes after `whsec_`."""
        return base64.b64decode(self.secret.get_secret_value().removeprefix("whsec_"))

    def wants(self, kind: str, rule: str) -> bool:
        if self.kinds is None or kind in self.kinds or rule in self.kinds:
            return True
        # `token_dead` is a warning too, though its record is of kind `token`.
        return rule == "token_dead" and "warning" in self.kinds


class NotifierSettings(_Section):
    """How decisions are delivered to the `[[notify]]` targets."""

    retry_for_s: float = Field(default=86_400.0, gt=0)
    """A decision a target has not taken (2xx) this long after its first try goes to
    `zns.notify-dlq`."""
    backoff_first_s: float = Field(default=1.0, gt=0)
    backoff_most_s: float = Field(default=600.0, gt=0)
    """Retries wait first, doubling up to most (each wait jittered)."""
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    """One delivery attempt's limit."""
    concurrency: int = Field(default=8, ge=1, le=256)
    """Deliveries in flight per target and partition."""
    window: int = Field(default=256, ge=1, le=100_000)
    """Decisions read ahead of the oldest undelivered one, per target and partition."""
    poll_s: float = Field(default=0.2, gt=0, le=60)
    """How often the tail of `zns.decisions` is read when nothing is new."""


class Settings(BaseSettings):
    """Everything one `zns-gate` process is configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = ServerSettings()
    receiver: ReceiverSettings = ReceiverSettings()
    log: LogSettings = LogSettings()
    processor: ProcessorSettings = ProcessorSettings()
    apps: list[AppSettings] = Field(default_factory=list)
    rules: RulesSettings = RulesSettings()
    oas: list[OaSettings] = Field(default_factory=list)
    api: ApiSettings = ApiSettings()
    zalo: ZaloSettings = ZaloSettings()
    notify: list[NotifyTarget] = Field(default_factory=list)
    notifier: NotifierSettings = NotifierSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, apps: list[AppSettings]) -> list[AppSettings]:
        _refuse_repeats("app_id", [app.app_id for app in apps])
        # One OA belongs to one app: a second app listing it could sign for it too.
        _refuse_repeats("oa_id", [oa for app in apps for oa in app.oa_ids or ()])
        return apps

    @field_validator("oas")
    @classmethod
    def _unique_oas(cls, oas: list[OaSettings]) -> list[OaSettings]:
        _refuse_repeats("oa_id", [oa.oa_id for oa in oas])
        return oas

    @field_validator("notify")
    @classmethod
    def _unique_targets(cls, targets: list[NotifyTarget]) -> list[NotifyTarget]:
        # The label names the target's cursor: two targets must not share one.
        _refuse_repeats("notify target", [target.label for target in targets])
        return targets

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    def app_secrets(self, app_id: str) -> tuple[str, ...] | None:
        """The secrets configured for `app_id`, current first; None for an unknown app."""
        return self._secrets_by_app.get(app_id)

    def app_signs_for(self, app_id: str, oa_id: str) -> bool:
        """Whether `app_id` (a configured app) may sign webhooks for `oa_id`: the OA is in
        its `oa_ids` when it lists them, and is listed under no other app."""
        owner = self._app_by_oa.get(oa_id)
        if owner is not None:
            return owner == app_id
        return app_id not in self._apps_listing_oas

    @functools.cached_property
    def _app_by_oa(self) -> dict[str, str]:
        return {oa: app.app_id for app in self.apps for oa in app.oa_ids or ()}

    @functools.cached_property
    def _apps_listing_oas(self) -> frozenset[str]:
        return frozenset(app.app_id for app in self.apps if app.oa_ids is not None)

    @functools.cached_property
    def _secrets_by_app(self) -> dict[str, tuple[str, ...]]:
        # Looked up for every webhook; settings never change while the process runs.
        return {app.app_id: tuple(s.get_secret_value() for s in app.secrets) for app in self.apps}


class ConfigError(Exception):
    """A setting is missing, unreadable or invalid. `str()` names the setting."""


def describe(error: ValidationError, what: str = "setting", whole: str = "(settings)") -> str:
    """One line per invalid value: `invalid <what> <where>: <why>` (`whole`: where the
    error is in no one value)."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or whole
        lines.append(f"invalid {what} {where}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read settings from `path` (or $ZNS_GATE_CONFIG), then apply ZNS_GATE_* variables.

    With neither, defaults apply: the embedded backend on 127.0.0.1:8080.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            values = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"invalid setting config: file {str(file)!r} not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invalid setting config: cannot read {str(file)!r}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid setting config: {str(file)!r} is not TOML: {exc}") from exc
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc
