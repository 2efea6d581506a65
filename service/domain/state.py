"""The state of one OA, its templates and its recipients: what the fold of its records builds.

Windows are bucketed counters (`windows.py`); beside them an OA keeps bounded
indexes (docs/rules.md#expiry-windows): dedup keys, messages for 8 days (so that ratings and
quick replies, which carry no template id, find their template), recipients
for 6 months (by the sha256 of the phone), and its grants. Days are kept as
ordinals of the local calendar day and months as `month_index` values, so the
state is plain numbers and strings and serialises to JSON as it is. The
questions every reader asks (remaining today, the levels, the penalty
threshold) are methods here; the changes are made by `fold/`. No I/O.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson

from service.domain.index import Index
from service.domain.promotion import PromotionQuota, promotion_quota
from service.domain.rules import RULE_SETS, Quota, RuleSet, Thresholds
from service.domain.scoring import Level, quality_level, worse
from service.domain.windows import Buckets, DailyCounts, HourlyCounts, local_day, month_index

SCHEMA_VERSION = 2
"""The version of the state document; a snapshot of another version is rebuilt from the log.
Version 2: a snapshot holds the core only, each index as its expiry limits; the entries are
in the partition's index store."""

WINDOW_48H = timedelta(hours=48)
WINDOW_7D = timedelta(days=7)
MESSAGE_DAYS = 8
"""Messages are remembered this many days (ratings and quick replies find their template)."""
RECIPIENT_DAYS = 186
"""Recipients are remembered about 6 months (promotion eligibility)."""
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules one OA is judged by: its rule set, zns-gate's thresholds, the zone."""

    rules: RuleSet
    thresholds: Thresholds
    zone: ZoneInfo
    negative_replies: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per template: the quick-reply labels that count as a negative signal."""
    dedup_ttl: timedelta = timedelta(hours=48)
    """How long a delivery's dedup key is kept (at least 24 h; Zalo retries for about 1 h)."""

    def day(self, moment: datetime) -> int:
        """The ordinal of the local calendar day of `moment`."""
        return _day_of_minute(int(moment.timestamp()) // 60, self.zone)


@dataclass(slots=True)
class Change:
    """One change the fold made that a decision record reports (docs/architecture.md#topics)."""

    kind: str
    rule: str
    before: Any
    after: Any
    at: datetime
    inputs: dict[str, Any] = field(default_factory=dict)
    template_id: str | None = None


@dataclass(slots=True)
class Message:
    """What the OA knows of one message, by `msg_id`, for 8 days."""

    day: int
    template_id: str | None = None
    tag: int | None = None
    recipient: str | None = None
    sent: bool = False
    """A send record names it."""
    sent_ok: bool = False
    """Counted as sent OK, by its send or by its receipt."""
    delivered: bool = False
    """Counted in `delivered` (by its receipt, or by a negative that came first)."""
    receipt: bool = False
    """Its delivery receipt has been folded."""
    negative: bool = False
    rated: bool = False
    settled: str | None = None
    """The admission whose unit this message settled."""
    consumed: bool = False
    """The message took a unit of the daily quota itself (no grant covered it)."""
    delivered_at: int | None = None
    negative_at: int | None = None
    """When it was counted delivered and negative (ms) while its template was not known:
    the send record naming the template adds them to the template's counts."""
    reply: str | None = None
    reply_at: int | None = None
    """A quick reply that came before the template was known and that may be negative (its
    label is negative for some template): the sha256 of the label, and when (ms)."""
    pending: str | None = None
    """Under `tracking:<id>`, a send zns-gate made whose outcome is unknown: the
    admission whose unit it holds, until its receipt settles it."""


@dataclass(slots=True)
class Grant:
    """Units an admission granted; they count as consumed until a send or its TTL settles them."""

    day: int
    tag: int
    template_id: str
    units: int
    at_ms: int
    settled: int = 0
    returned: int = 0

    @property
    def open(self) -> int:
        return self.units - self.settled - self.returned


@dataclass(slots=True)
class Recipient:
    """One recipient of the OA, known by the sha256 of the phone."""

    last_seen_day: int
    last_tag12_day: int | None = None
    """The last day a tag 1 or 2 message to them was sent OK (promotion eligibility)."""
    promo_day: int = 0
    promo_day_count: int = 0
    promo_month: int = 0
    promo_month_count: int = 0
    opted_out: bool = False
    """-141 or -139, until a later send to them succeeds."""
    not_eligible: bool = False
    """-140, until a tag 1/2 send to them succeeds."""
    limit_month: int | None = None
    """-1471: the month (index) they are at Zalo's promotion limit."""
    limit_day: int | None = None
    """-1472: the day they are at Zalo's promotion limit."""

    def promotions_today(self, day: int) -> int:
        return self.promo_day_count if self.promo_day == day else 0

    def promotions_this_month(self, month: int) -> int:
        return self.promo_month_count if self.promo_month == month else 0


@dataclass(slots=True)
class Template:
    template_id: str
    tag: int | None = None
    status: str | None = None
    """Zalo's status: ENABLE, PENDING_REVIEW, REJECT, DISABLE, DELETE; None while unknown."""
    status_at: int = 0
    zalo_quality: str | None = None
    zalo_quality_at: int = 0
    zalo_disabled: bool = False
    """A send met -146: disabled as by Zalo's LOW, until Zalo says otherwise."""
    exhausted_day: int | None = None
    """-147: the template's own quota is used up on this day."""
    night_restricted: bool = False
    """-133: no sends 22:00-06:00."""
    delivered: HourlyCounts = field(default_factory=HourlyCounts)
    negatives: HourlyCounts = field(default_factory=HourlyCounts)
    sent_ok: DailyCounts = field(default_factory=DailyCounts)
    proxy_7d: str = Level.UNDEFINED.value
    """The proxy level last computed (a change is a decision)."""
    paused_until: int | None = None
    """zns-gate's pause ends at this time (ms)."""
    pauses: list[int] = field(default_factory=list)
    """When zns-gate paused it (ms), for the ladder's 30-day look-back."""
    gate_disabled: bool = False
    """zns-gate disabled it (the third pause within 30 days) until an operator resumes it."""
    zalo_tag: bool = False
    """`tag` was read from Zalo (a sync), not learned from a sender's admission or send."""
    seen_day: int = 0
    """The last day a record named it (an idle template without Zalo's state is forgotten)."""
    params: list[dict[str, Any]] | None = None
    """Zalo's `listParams` from the last sync that read them (`name`, `require`, `type`,
    `min_length`, `max_length`, `accept_null`), for checking a message's `template_data`;
    None while not read. Replaced whole, never changed in place."""

    def proxy_level(self, now: datetime, thresholds: Thresholds) -> Level:
        return quality_level(
            self.negatives.within(now, WINDOW_7D), self.delivered.within(now, WINDOW_7D), thresholds
        )

    def paused(self, now_ms: int) -> bool:
        return self.gate_disabled or (self.paused_until is not None and now_ms < self.paused_until)


ENTRY_AT, ENTRY_HASH, ENTRY_ANSWER, ENTRY_MESSAGES, ENTRY_OUTCOMES = range(5)
"""The places in an idempotency entry (a list, as the store keeps it): when, the request's
hash, the answer; and for a send through zns-gate (`POST /messages`) its messages as the
admission left them, and the outcome of each recorded so far, by its place (a string)."""

_PLAIN = (int, str, float, bool, type(None))
"""Values that are never changed in place: a copy may share them."""


@dataclass(slots=True)
class OAState:
    """Everything zns-gate knows about one OA: a fold over its records."""

    oa_id: str
    rules: str
    position: int = -1
    """The offset in its `zns.events` partition of the last record folded in."""
    today: int | None = None
    """The local day the state has been brought to (day changes are applied lazily)."""
    first_send_day: int | None = None
    daily_quota: Quota = None
    quota_at: int = 0
    """Event time (ms) of the last authoritative quota value; a later one wins."""
    day_start_quota: Quota = None
    """The daily quota at the start of today (the penalty threshold is 2 % of it)."""
    tier_changed_day: int | None = None
    penalty_day: int | None = None
    warned_penalty_day: int | None = None
    """The day `penalty_near` last warned of (once per OA and day)."""
    warned_tier_down: bool = False
    """`tier_down_likely` has warned, and the projection is still a step down."""
    exhausted_day: int | None = None
    """-144: today's remaining is 0 (until a later value from Zalo for that day)."""
    exhausted_at: int = 0
    """Event time (ms) of that -144."""
    zalo_remaining: int | None = None
    zalo_remaining_day: int | None = None
    zalo_remaining_base: int = 0
    """What was consumed that day when Zalo reported `zalo_remaining`."""
    zalo_remaining_at: int = 0
    zalo_quality_48h: str | None = None
    zalo_quality_7d: str | None = None
    zalo_quality_at: int = 0
    allowed_tags: list[int] | None = None
    """From a sync; None while unknown."""
    tag_blocked: dict[str, int] = field(default_factory=dict)
    """-145: tag -> the day it is blocked (until the next sync or day)."""
    suspended: bool = False
    suspended_reason: str | None = None
    first_tag3_month: int | None = None
    zalo_promo_month: int | None = None
    zalo_promo_quota: int | None = None
    zalo_promo_remaining: int | None = None
    zalo_promo_base: int = 0
    """Promotion units used that month when Zalo reported `zalo_promo_remaining`."""
    promo_exhausted_month: int | None = None
    delivered: HourlyCounts = field(default_factory=HourlyCounts)
    negatives: HourlyCounts = field(default_factory=HourlyCounts)
    positives: HourlyCounts = field(default_factory=HourlyCounts)
    negatives_by_day: DailyCounts = field(default_factory=DailyCounts)
    sent_ok: DailyCounts = field(default_factory=DailyCounts)
    consumed: DailyCounts = field(default_factory=DailyCounts)
    granted: dict[str, DailyCounts] = field(default_factory=dict)
    """Per tag ("1", "2", "3"): units granted per day, less those returned."""
    tag12_ok_month: Buckets = field(default_factory=Buckets)
    promo_used_month: Buckets = field(default_factory=Buckets)
    proxy_48h: str = Level.UNDEFINED.value
    proxy_7d: str = Level.UNDEFINED.value
    levels_hour: int = -1
    """The hour (`hour_index`) the proxy levels were last checked in."""
    templates: dict[str, Template] = field(default_factory=dict)
    paused_templates: list[str] = field(default_factory=list)
    """Ids of the templates zns-gate paused or disabled (and perhaps a few resumed since):
    pause ends visit these, not every template."""
    messages: Index[Message] = field(default_factory=lambda: new_index("messages"))
    recipients: Index[Recipient] = field(default_factory=lambda: new_index("recipients"))
    grants: dict[str, Grant] = field(default_factory=dict)
    open_grants: list[str] = field(default_factory=list)
    """Admission ids of grants that may still have open units, oldest first."""
    dedup: Index[int] = field(default_factory=lambda: new_index("dedup"))
    """Dedup key -> event time (ms); kept `dedup_ttl` at least."""
    idempotency: Index[list[Any]] = field(default_factory=lambda: new_index("idempotency"))
    """Admission idempotency key -> [time (ms), request hash, answer], kept `dedup_ttl`;
    for a send through zns-gate also [..., its messages, their outcomes by place] (the
    `ENTRY_*` places)."""
    event_ms: int = 0
    """The newest event time (ms) of a record folded in; it never goes back. Keys are
    kept until they are `dedup_ttl` older than it, whatever the clock says."""

    @classmethod
    def new(cls, oa_id: str, rules: RuleSet) -> OAState:
        return cls(
            oa_id=oa_id,
            rules=rules.name,
            daily_quota=rules.start_quota,
            day_start_quota=rules.start_quota,
        )

    # --- questions ----------------------------------------------------------------------

    def template(self, template_id: str) -> Template:
        found = self.templates.get(template_id)
        if found is None:
            found = self.templates[template_id] = Template(template_id)
        found.seen_day = max(found.seen_day, self.today or 0)
        return found

    def recipient(self, key: str, day: int) -> Recipient:
        found = self.recipients.get(key)
        if found is None:
            found = self.recipients[key] = Recipient(last_seen_day=day)
        else:
            found.last_seen_day = max(found.last_seen_day, day)
        return found

    def granted_on(self, tag: int, day: int) -> int:
        counts = self.granted.get(str(tag))
        return counts.get(day) if counts is not None else 0

    def penalty_threshold(self, policy: Policy) -> int | None:
        """T of docs/rules.md#penalty, from the quota at the start of today."""
        return policy.thresholds.penalty_threshold(self.day_start_quota)

    def remaining_today(self, day: int) -> int | None:
        """What may still be consumed on `day` (None: unlimited), after Zalo's own figure."""
        if self.exhausted_day == day:
            return 0
        consumed = self.consumed.get(day)
        computed = None if self.daily_quota is None else max(0, self.daily_quota - consumed)
        if self.zalo_remaining is not None and self.zalo_remaining_day == day:
            reported = max(0, self.zalo_remaining - (consumed - self.zalo_remaining_base))
            return reported if computed is None else min(reported, computed)
        return computed

    def proxy_levels(self, now: datetime, thresholds: Thresholds) -> tuple[Level, Level]:
        """The proxy quality over 48 h and over 7 days."""
        return (
            quality_level(
                self.negatives.within(now, WINDOW_48H),
                self.delivered.within(now, WINDOW_48H),
                thresholds,
            ),
            quality_level(
                self.negatives.within(now, WINDOW_7D),
                self.delivered.within(now, WINDOW_7D),
                thresholds,
            ),
        )

    def zalo_levels(self, now: datetime, thresholds: Thresholds) -> tuple[Level, Level] | None:
        """Zalo's own levels while they are fresher than `zalo_quality_ttl`, else None."""
        if self.zalo_quality_at == 0:
            return None
        age_ms = now.timestamp() * 1000 - self.zalo_quality_at
        if age_ms > thresholds.zalo_quality_ttl.total_seconds() * 1000:
            return None
        return (_level(self.zalo_quality_48h), _level(self.zalo_quality_7d))

    def effective_levels(self, now: datetime, thresholds: Thresholds) -> tuple[Level, Level]:
        """What the governor and pauses go by: the worse of Zalo's (while fresh) and the proxy."""
        proxy = self.proxy_levels(now, thresholds)
        zalo = self.zalo_levels(now, thresholds)
        if zalo is None:
            return proxy
        return worse(proxy[0], zalo[0]), worse(proxy[1], zalo[1])

    def tier_level(self, now: datetime, thresholds: Thresholds) -> tuple[str, Level]:
        """What tier evaluation goes by: Zalo's 7-day level while it is fresh and known
        (Zalo moves the tier by it), else the proxy's; with which of the two it was."""
        zalo = self.zalo_levels(now, thresholds)
        if zalo is not None and zalo[1] is not Level.UNDEFINED:
            return "zalo", zalo[1]
        return "proxy", self.proxy_levels(now, thresholds)[1]

    def tier_move(
        self, level: Level, sent_ok_7d: int, thresholds: Thresholds
    ) -> tuple[Quota, str] | None:
        """The evaluation rule (docs/rules.md#tier-daily-quota): one step up when the level is HIGH
        and sent-OK reached twice the quota, one step down when it is LOW; else None."""
        quota, rules = self.daily_quota, self.rule_set()
        needed = None if quota is None else thresholds.upgrade_volume_factor * quota
        if level is Level.HIGH and needed is not None and sent_ok_7d >= needed:
            return rules.step_up(quota), "evaluation_up"
        if level is Level.LOW:
            return rules.step_down(quota), "evaluation_down"
        return None

    def tag_allowed(self, tag: int, day: int) -> bool:
        """Whether Zalo lets the OA send `tag` on `day`: its allowed tags, a -145 that day,
        and the rule set's tier for tag 3."""
        if self.allowed_tags is not None and tag not in self.allowed_tags:
            return False
        if self.tag_blocked.get(str(tag)) == day:
            return False
        return tag != 3 or self.rule_set().allows_tag3(self.daily_quota)

    def promotion(self, today: date, thresholds: Thresholds) -> PromotionQuota:
        """This month's promotion quota (Zalo's value wins for its month) and the estimate."""
        computed = promotion_quota(
            self.tag12_ok_month,
            None if self.first_tag3_month is None else _month_date(self.first_tag3_month),
            today,
            thresholds,
        )
        if self.zalo_promo_quota is not None and self.zalo_promo_month == month_index(today):
            return dataclasses.replace(computed, monthly_quota=self.zalo_promo_quota)
        return computed

    def promotion_remaining(self, today: date, thresholds: Thresholds) -> int:
        month = month_index(today)
        if self.promo_exhausted_month == month:
            return 0
        used = self.promo_used_month.get(month)
        computed = max(0, self.promotion(today, thresholds).monthly_quota - used)
        if self.zalo_promo_remaining is not None and self.zalo_promo_month == month:
            reported = max(0, self.zalo_promo_remaining - (used - self.zalo_promo_base))
            return min(reported, computed)
        return computed

    def rule_set(self) -> RuleSet:
        return RULE_SETS[self.rules]

    # --- copies -------------------------------------------------------------------------

    SHARED_INDEXES = ("dedup", "idempotency", "messages", "recipients")
    """Large indexes that `fold.advance` only expires and that the admission decision only
    reads: a copy holds read-only views of them."""

    def served_copy(self, *, layered: bool = False) -> OAState:
        """A copy that `fold.advance` and `admission.decide` may change freely, at a fraction
        of a deep copy's cost: plain values are not copied, the indexes are shared read-only
        (what a day change expires in the copy reads as absent there and stays in the live
        state, so a copy costs the same whatever their size), or with `layered` written
        in layers of their own (so that records can be folded into the copy), nor are
        the grants (the dict is; advancing replaces an expiring grant, never changes it),
        nor the templates but those zns-gate holds (advancing ends their pauses; a day
        change replaces a template whose windows it prunes). So a copy costs the same
        with 10 or 10,000 templates."""
        clone = copy.copy(self)
        for name in _FIELDS:
            value = getattr(self, name)
            if name in self.SHARED_INDEXES:
                setattr(clone, name, value.layered() if layered else value.shared())
                continue
            if isinstance(value, _PLAIN):
                continue
            if name in ("grants", "templates"):
                setattr(clone, name, dict(value))
            else:
                setattr(clone, name, copy.deepcopy(value))
        for template_id in self.paused_templates:
            held = self.templates.get(template_id)
            if held is not None:
                clone.templates[template_id] = copy.deepcopy(held)
        return clone

    # --- snapshots ----------------------------------------------------------------------

    def clear_touched(self) -> None:
        """A whole snapshot was taken: no index entry is left to write."""
        for name in self.SHARED_INDEXES:
            index: Index[Any] = getattr(self, name)
            index.clear_touched()

    def to_json(self) -> bytes:
        """The whole state as a JSON document, its index entries included (an OA whose
        indexes are in a store has no whole document in memory: see `core_json`)."""
        return orjson.dumps(self._documented(), default=_counts_as_pairs)

    def to_document(self) -> dict[str, Any]:
        """The whole state as plain JSON values."""
        document: dict[str, Any] = orjson.loads(self.to_json())
        return document

    def core_json(self) -> bytes:
        """The state without its index entries, each index as `[limit, keep_from]`: what a
        snapshot holds beside the index store. Its size does not grow with the indexes."""
        return orjson.dumps(self._documented(), default=_core_value)

    def _documented(self) -> OAState:
        """This state as its documents hold it: `open_grants` without the grants closed
        since they were made, which leave the list only from its front (see
        `fold.grants.expire_grants`), so that the same records make the same document
        whatever order the grants were applied and closed in."""
        grants = self.grants
        waiting = [
            key for key in self.open_grants if (g := grants.get(key)) is not None and g.open > 0
        ]
        if len(waiting) == len(self.open_grants):
            return self
        documented = copy.copy(self)
        documented.open_grants = waiting
        return documented

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> OAState:
        state = _decode(cls, document)
        if "paused_templates" not in document:  # written before the index existed
            state.paused_templates = [
                t.template_id
                for t in state.templates.values()
                if t.paused_until is not None or t.gate_disabled
            ]
        return state

    # --- the index store ----------------------------------------------------------------

    def bound(self, today: Callable[[], int], dedup_ttl_ms: int) -> None:
        """Entries whose store expiry day (`_STORE_DAY`) is before `today()` (the local day
        of the partition's clock) read as absent: the store drops them by its day ranges
        at a checkpoint, whichever OA they belong to, so a fold in memory must not see
        them either, or it would not equal one that reads the store. An OA's own day is
        never past the partition's, so for messages and recipients this only says what
        the OA's next day change would; dedup and idempotency keys are kept their TTL by
        the OA's own records, and never past `STORE_MARGIN_DAYS` beyond it by the
        partition's clock."""
        for name in self.SHARED_INDEXES:
            index: Index[Any] = getattr(self, name)
            index.horizon = functools.partial(_within, _STORE_DAY[name], dedup_ttl_ms, today)

    def attach(self, read: Callable[[bytes], bytes | None]) -> None:
        """Read the index entries not in memory through `read` (the partition's store)."""
        for name in self.SHARED_INDEXES:
            index: Index[Any] = getattr(self, name)
            index.source = functools.partial(_read_entry, read, self.oa_id, name)

    def index_changes(self, dedup_ttl_ms: int) -> dict[bytes, tuple[bytes | None, int]]:
        """The index entries changed since the last call, as store key -> (value or None
        when absent, expiry day), for a checkpoint to write."""
        return encode_changes(self.take_changes(), dedup_ttl_ms)

    def take_changes(self) -> IndexChanges:
        """The index entries changed since the last call, as they are (cheap: no
        encoding). They must not change until `encode_changes` has encoded them."""
        return (
            self.oa_id,
            [(name, getattr(self, name).take_changes()) for name in self.SHARED_INDEXES],
        )

    def offer(self, name: str, found: Mapping[bytes, bytes | None], releases: int) -> None:
        """Hold index entries read from the store off the loop (store key -> value) when
        the index's `releases` was `releases` (see `Index.offer`)."""
        index: Index[Any] = getattr(self, name)
        start = len(index_key(self.oa_id, name, ""))
        for raw_key, raw in found.items():
            value = None if raw is None else _decode_entry(name, raw)
            index.offer(raw_key[start:].decode(), value, releases)

    def with_entries(self, stored: Mapping[bytes, bytes]) -> OAState:
        """A copy whose indexes hold, in memory, `stored` (the OA's entries as the store
        holds them) and what this state holds in memory: a whole state, to inspect or
        compare. Not for serving: it reads every entry."""
        clone = copy.copy(self)
        names = {code: name for name, code in _INDEX_CODES.items()}
        whole: dict[str, Index[Any]] = {}
        for name in self.SHARED_INDEXES:
            live: Index[Any] = getattr(self, name)
            index = new_index(name)
            index.limit, index.keep_from = live.limit, live.keep_from
            index.horizon = live.horizon
            whole[name] = index
        prefix = len(self.oa_id) + 1
        for raw_key, raw in stored.items():
            code, key = raw_key[prefix:].decode().split("\x00", 1)
            if code == _CORE_CODE:
                continue
            name = names[code]
            whole[name][key] = _decode_entry(name, raw)
        for name, index in whole.items():
            live = getattr(self, name)
            for key in live.resident():
                value = live.peek(key)
                if value is None:
                    index.pop(key, None)
                else:
                    index[key] = value
            index.clear_touched()
            setattr(clone, name, index)
        return clone

    def changed(self) -> bool:
        """Whether an index entry changed since the last `index_changes`."""
        return any(getattr(self, name).touched for name in self.SHARED_INDEXES)

    def release(self) -> None:
        """Everything changed before the last `index_changes` is in the store now."""
        for name in self.SHARED_INDEXES:
            index: Index[Any] = getattr(self, name)
            index.release()


_INDEX_CODES = {"messages": "m", "recipients": "r", "dedup": "d", "idempotency": "i"}
_CORE_CODE = "c"


def core_key(oa_id: str) -> bytes:
    """The store key of an OA's core document (an OA out of memory is read back from it)."""
    return f"{oa_id}\x00{_CORE_CODE}\x00".encode()


def core_entry(oa_id: str, core: bytes) -> tuple[bytes, tuple[bytes, int]]:
    """The store entry of an OA's core document (`core_json`): key, (value, expiry day)."""
    return core_key(oa_id), (core, CORE_DAY)


IndexChanges = tuple[str, list[tuple[str, dict[str, Any]]]]
"""(OA id, [(index name, key -> value or None)]): what `take_changes` took."""


def encode_changes(taken: IndexChanges, dedup_ttl_ms: int) -> dict[bytes, tuple[bytes | None, int]]:
    """Store key -> (encoded value or None, expiry day) of changes taken; it costs a few
    microseconds an entry, so a checkpoint runs it off the loop."""
    oa_id, indexes = taken
    changes: dict[bytes, tuple[bytes | None, int]] = {}
    for name, values in indexes:
        for key, value in values.items():
            entry = (None, 0) if value is None else store_entry(name, value, dedup_ttl_ms)
            changes[index_key(oa_id, name, key)] = entry
    return changes


def index_key(oa_id: str, name: str, key: str) -> bytes:
    """The store key of an index entry: the OA first, so one prefix holds all of an OA's."""
    return f"{oa_id}\x00{_INDEX_CODES[name]}\x00{key}".encode()


def _read_entry(read: Callable[[bytes], bytes | None], oa_id: str, name: str, key: str) -> Any:
    raw = read(index_key(oa_id, name, key))
    return None if raw is None else _decode_entry(name, raw)


def _decode_entry(name: str, raw: bytes) -> Any:
    value = orjson.loads(raw)
    nested = _NESTED.get(name)
    return nested(**value) if nested is not None else value


CORE_DAY = 2**31 - 2
"""The expiry day of an OA's core in the store: after every other (only `clear` drops it)."""

STORE_MARGIN_DAYS = 2
"""Dedup and idempotency keys stay in the store this many days past their TTL by the
partition's clock: an OA whose own records lag that clock by less still finds them."""

_UNIX_DAY = date(1970, 1, 1).toordinal()


def _within(
    store_day: Callable[[Any, int], int], ttl_ms: int, today: Callable[[], int], value: Any
) -> bool:
    return store_day(value, ttl_ms) >= today()


def _key_store_day(at_ms: int, dedup_ttl_ms: int) -> int:
    return _UNIX_DAY + (at_ms + dedup_ttl_ms) // 86_400_000 + STORE_MARGIN_DAYS


_STORE_DAY: dict[str, Callable[[Any, int], int]] = {
    "messages": lambda message, _: _message_expiry(message),
    "recipients": lambda recipient, _: _recipient_expiry(recipient),
    "dedup": lambda at_ms, ttl: _key_store_day(int(at_ms), ttl),
    "idempotency": lambda entry, ttl: _key_store_day(int(entry[0]), ttl),
}
"""The day ordinal before which the store may drop an entry: expired for every OA by then."""


def store_entry(name: str, value: Any, dedup_ttl_ms: int) -> tuple[bytes, int]:
    """An entry of the index `name` as the store holds it: its JSON and the day ordinal
    before which the store may drop it. A bulk load writes entries through this too, so
    that they read back and expire as those a checkpoint writes."""
    return exact(orjson.dumps(value)), _STORE_DAY[name](value, dedup_ttl_ms)


def exact(raw: bytes) -> bytes:
    """`raw` in an object of its own size. orjson's output keeps the few KiB buffer it was
    written in; a cache of many small values held as they come would use many times the
    memory it counts."""
    return bytes(memoryview(raw))


@functools.lru_cache(maxsize=65_536)
def _day_of_minute(minute: int, zone: ZoneInfo) -> int:
    # Every zone's offset is a whole number of minutes, so a minute lies in one local day.
    return local_day(datetime.fromtimestamp(minute * 60, zone), zone).toordinal()


_FIELDS = tuple(f.name for f in dataclasses.fields(OAState))


# The expiry of each index (see `fold.prune`): the last day a message or a recipient is kept,
# and the hour of a key's time (how long a key is kept depends on the policy and on the OA's
# newest event, so the prune decides it).


def _message_expiry(message: Message) -> int:
    return message.day + MESSAGE_DAYS - 1


def _recipient_expiry(recipient: Recipient) -> int:
    return recipient.last_seen_day + RECIPIENT_DAYS - 1


def _dedup_expiry(at_ms: int) -> int:
    return at_ms // HOUR_MS


def _idempotency_expiry(entry: list[Any]) -> int:
    return int(entry[0]) // HOUR_MS


def _dedup_time(at_ms: int) -> int:
    return at_ms


def _idempotency_time(entry: list[Any]) -> int:
    return int(entry[0])


_INDEXES: dict[str, Callable[[Any], int]] = {
    "messages": _message_expiry,
    "recipients": _recipient_expiry,
    "dedup": _dedup_expiry,
    "idempotency": _idempotency_expiry,
}


_TIMES: dict[str, Callable[[Any], int]] = {"dedup": _dedup_time, "idempotency": _idempotency_time}


def new_index(name: str, entries: Mapping[str, Any] | None = None) -> Index[Any]:
    """The index `name` of an OA's state, with its expiry and (for keys) its time."""
    return Index(_INDEXES[name], entries, time=_TIMES.get(name))


def _level(value: str | None) -> Level:
    try:
        return Level(value) if value is not None else Level.UNDEFINED
    except ValueError:
        return Level.UNDEFINED


def _month_date(index: int) -> date:
    return date(index // 12, index % 12 + 1, 1)


# --- the state as a JSON document ---------------------------------------------------------
#
# orjson writes the dataclasses as objects by itself; counters become [[key, count], ...].
# The decoder reads the field types back from the classes, so a new field needs no code here.

_NESTED: dict[str, type] = {
    "templates": Template,
    "messages": Message,
    "recipients": Recipient,
    "grants": Grant,
}


_T = TypeVar("_T")


def _counts_as_pairs(value: object) -> list[list[int]] | dict[str, Any]:
    if isinstance(value, Buckets):
        return [list(item) for item in value.items()]
    if isinstance(value, Index):
        return value.entries()  # an object of its entries, as when the indexes were dicts
    raise TypeError(f"{type(value).__name__} is not part of a state document")


def _core_value(value: object) -> list[Any]:
    if isinstance(value, Index):
        return [value.limit, value.keep_from]
    return _counts_as_pairs(value)  # type: ignore[return-value]


def _counts(kind: type[Buckets], pairs: list[list[int]]) -> Buckets:
    return kind({int(k): int(v) for k, v in pairs})


def _decode(cls: type[_T], document: Mapping[str, Any]) -> _T:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in document:
            continue  # an older document: the field's default applies
        raw = document[f.name]
        annotation = str(f.type)
        if annotation in ("HourlyCounts", "DailyCounts", "Buckets"):
            kinds: dict[str, type[Buckets]] = {
                "HourlyCounts": HourlyCounts,
                "DailyCounts": DailyCounts,
                "Buckets": Buckets,
            }
            values[f.name] = _counts(kinds[annotation], raw)
        elif annotation == "dict[str, DailyCounts]":
            values[f.name] = {k: _counts(DailyCounts, v) for k, v in raw.items()}
        elif f.name in _INDEXES and cls is OAState and isinstance(raw, list):
            index = new_index(f.name)
            index.limit, index.keep_from = raw
            values[f.name] = index
            continue
        elif f.name in _NESTED and cls is OAState:
            nested = _NESTED[f.name]
            values[f.name] = {k: _decode(nested, v) for k, v in raw.items()}
        else:
            values[f.name] = raw
        if cls is OAState and f.name in _INDEXES:
            values[f.name] = new_index(f.name, values[f.name])
    return cls(**values)
