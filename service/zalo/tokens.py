"""The token keeper: every OA's Zalo tokens kept alive, for the instance that owns the OA.

It reads `zns.tokens` at start and follows its tail (other instances write there
too), and on the owner of an OA's partition, in contact with its group, it
refreshes: when less than `zalo.refresh_margin_s` remains, after a -124, and at
least every `zalo.refresh_at_least_every_s` for an idle OA, one refresh at a
time per OA. A new pair is durable in `zns.tokens` before its access token is
used. A refusal that is neither a rate limit nor a transport failure makes the
token `dead` (a `token_dead` decision) until a new one is stored. It never logs,
answers or counts a token, a code or a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from service.config import Settings
from service.domain.records import DecisionRecord, Source
from service.log.base import EventLog, LogError, Position, Record, TopicPartition
from service.logsetup import get_logger
from service.metrics import ZALO_TOKEN_EXPIRES_SECONDS, ZALO_TOKEN_REFRESHES, ZALO_TOKEN_STATE
from service.zalo import oauth
from service.zalo.vault import DELETED, State, StoredToken, TokenStatus, Vault, VaultError

if TYPE_CHECKING:
    from service.processor.runner import Processor

_log = get_logger("zalo.tokens")

REFRESH_TOKEN_LIFETIME_S = 90 * 86_400
"""A refresh token dies 3 months after it was issued (Zalo's OAuth v4)."""
EXPIRING_WARNING_S = 7 * 86_400
"""`token_expiring` warns when the refresh token has less than this left."""
STATES: tuple[State, ...] = ("valid", "expiring", "dead", "missing")


class TokenUnavailable(Exception):
    """A token could not be stored or refreshed now; `retry` says whether a retry helps."""

    def __init__(self, code: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.code, self.retry = code, retry


@dataclass(frozen=True)
class KeeperOptions:
    tail_every_s: float = 1.0
    """How often the tail of `zns.tokens` is read and the owned OAs looked at."""
    backoff_first_s: float = 5.0
    backoff_most_s: float = 600.0
    append_timeout_s: float = 10.0


def _open_all(vault: Vault, records: list[Record]) -> dict[str, StoredToken | None]:
    """The tokens of `records`, in order (the newest of an OA last); a record that does not
    open is skipped and logged."""
    out: dict[str, StoredToken | None] = {}
    for record in records:
        if record.key is None:
            continue
        oa_id = record.key.decode("utf-8", "replace")
        try:
            out[oa_id] = vault.open(oa_id, record.value)
        except VaultError as exc:
            _log.error("token record skipped", oa_id=oa_id, error=str(exc))
    return out


async def read_tokens(
    log: EventLog, vault: Vault, since: dict[int, int] | None = None
) -> tuple[dict[str, StoredToken | None], dict[int, int]]:
    """Every OA's newest record in `zns.tokens` after `since` (partition -> next offset),
    and where to read on next time. A record that does not open is skipped and logged."""
    found: dict[str, StoredToken | None] = {}
    nexts = dict(since or {})
    # One question for every partition's end, then reads only where something is new: the
    # tail is followed every second, and it seldom changes.
    tps = [TopicPartition(log.topics.tokens, p) for p in range(log.partitions)]
    ends = await log.end_offsets(tps)
    for tp in tps:
        start = nexts.get(tp.partition, 0)
        end = ends.get(tp, 0)
        while start < end and (batch := await log.read(tp, start, 200)):
            if len(batch) > 20:  # a restart's whole topic: decrypting it would hold the loop
                found.update(await asyncio.to_thread(_open_all, vault, batch))
            else:
                found.update(_open_all(vault, batch))
            start = batch[-1].offset + 1
        nexts[tp.partition] = max(start, nexts.get(tp.partition, 0))
    return found, nexts


class TokenKeeper:
    """Implements `service.zalo.access.AccessTokens` over `zns.tokens`."""

    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        processor: Processor,
        options: KeeperOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.settings = settings
        self.zalo = settings.zalo
        self.processor = processor
        self.options = options or KeeperOptions()
        self.clock = clock
        self.vault = Vault(self.zalo.key())
        self._tokens: dict[str, StoredToken] = {}
        self._next: dict[int, int] = {}
        self._flights: dict[str, asyncio.Task[StoredToken | None]] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._shown: set[str] = set()
        self._read_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        await self._catch_up()
        self._task = asyncio.create_task(self._run(), name="zalo-token-keeper")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for flight in [*self._background, *self._flights.values()]:
            flight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flight
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- AccessTokens -------------------------------------------------------------------

    def callable_oas(self) -> list[str]:
        return sorted(
            oa_id
            for oa_id, token in self._tokens.items()
            if token.state != "dead" and self.owns(oa_id)
        )

    async def access_token(self, oa_id: str) -> str | None:
        token = self._tokens.get(oa_id)
        if token is None or token.state == "dead" or not self.owns(oa_id):
            return None
        expiring = token.state_at(self._now_ms(), self.zalo.refresh_margin_s) == "expiring"
        if expiring and not self._backing_off(oa_id):
            # A refresh put off (rate limit, Zalo or the log unreachable) leaves the current
            # access token, usable until it expires.
            with contextlib.suppress(TokenUnavailable, LogError):
                await self._refresh(oa_id)
            token = self._tokens.get(oa_id)
        return self._usable(token)

    async def refused(self, oa_id: str, token: str) -> str | None:
        current = self._tokens.get(oa_id)
        if current is None or current.state == "dead" or not self.owns(oa_id):
            return None
        if current.access_token == token:
            if self._backing_off(oa_id):
                return None  # Zalo asked us to wait (or did not answer): no call before then
            try:
                await self._refresh(oa_id, replacing=token)
            except (TokenUnavailable, LogError):
                return None
        after = self._tokens.get(oa_id)
        if after is None or after.access_token == token:
            return None
        return self._usable(after)

    # --- what the API asks --------------------------------------------------------------

    def owns(self, oa_id: str) -> bool:
        """Whether this instance may refresh and use the OA's token now."""
        partition = self.log.partition_for(oa_id.encode())
        return partition in self.processor.folders and self.processor.in_contact()

    def status(self, oa_id: str) -> TokenStatus:
        return TokenStatus.of(
            oa_id, self._tokens.get(oa_id), self._now_ms(), self.zalo.refresh_margin_s
        )

    async def store(
        self,
        oa_id: str,
        app_id: str,
        refresh_token: str,
        access_token: str | None = None,
        expires_in: int | None = None,
    ) -> TokenStatus:
        """Keep a pair given by an admin; without an access token, refresh it first (a
        refresh token Zalo refuses is not stored). Raises `TokenUnavailable`."""

        async def work() -> StoredToken | None:
            now_ms = self._now_ms()
            if access_token is not None:
                token = StoredToken(
                    oa_id=oa_id,
                    app_id=app_id,
                    access_token=access_token,
                    refresh_token=refresh_token,
                    access_expires_at=now_ms + (expires_in or 0) * 1000,
                    refresh_expires_at=now_ms + REFRESH_TOKEN_LIFETIME_S * 1000,
                    refreshed_at=now_ms,
                )
            else:
                pair = await self._call_zalo(
                    oa_id,
                    app_id,
                    lambda session, secret: oauth.refresh(
                        session,
                        self.zalo.oauth_url,
                        app_id,
                        secret,
                        refresh_token,
                        self.zalo.request_timeout_s,
                    ),
                )
                ZALO_TOKEN_REFRESHES.labels("refreshed").inc()
                token = self._token_of(oa_id, app_id, pair, now_ms)
            if access_token is None:
                await self._write_surely(token)  # Zalo rotated the pair: keep the new one
            else:
                await self._write(token)
            _log.info("token stored", oa_id=oa_id, app_id=app_id)
            return token

        await self._alone(oa_id, work)
        return self.status(oa_id)

    async def exchange(self, oa_id: str, app_id: str, code: str, verifier: str) -> TokenStatus:
        """Keep the pair a permission page's code gives (`GET /zalo/callback`)."""

        async def work() -> StoredToken | None:
            now_ms = self._now_ms()
            pair = await self._call_zalo(
                oa_id,
                app_id,
                lambda session, secret: oauth.exchange_code(
                    session,
                    self.zalo.oauth_url,
                    app_id,
                    secret,
                    code,
                    verifier,
                    self.zalo.request_timeout_s,
                ),
            )
            token = self._token_of(oa_id, app_id, pair, now_ms)
            await self._write_surely(token)
            _log.info("token connected", oa_id=oa_id, app_id=app_id)
            return token

        await self._alone(oa_id, work)
        return self.status(oa_id)

    async def forget(self, oa_id: str) -> TokenStatus:
        """Delete the OA's token (`DELETE`): later reads find none."""

        async def work() -> StoredToken | None:
            await self._append(oa_id, DELETED)
            self._tokens.pop(oa_id, None)
            self._show(oa_id)
            _log.info("token deleted", oa_id=oa_id)
            return None

        await self._alone(oa_id, work)
        return self.status(oa_id)

    # --- inside -------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _usable(self, token: StoredToken | None) -> str | None:
        if token is None or token.state == "dead" or token.access_token is None:
            return None
        if token.access_expires_at is not None and token.access_expires_at <= self._now_ms():
            return None
        return token.access_token

    @staticmethod
    def _token_of(oa_id: str, app_id: str, pair: oauth.Pair, now_ms: int) -> StoredToken:
        return StoredToken(
            oa_id=oa_id,
            app_id=app_id,
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            access_expires_at=now_ms + pair.expires_in * 1000,
            refresh_expires_at=now_ms + REFRESH_TOKEN_LIFETIME_S * 1000,
            refreshed_at=now_ms,
        )

    def app_secret(self, app_id: str) -> str | None:
        for app in self.settings.apps:
            if app.app_id == app_id and app.app_secret is not None:
                return app.app_secret.get_secret_value()
        return None

    async def _call_zalo(
        self,
        oa_id: str,
        app_id: str,
        call: Callable[[aiohttp.ClientSession, str], Coroutine[Any, Any, oauth.Pair]],
    ) -> oauth.Pair:
        secret = self.app_secret(app_id)
        if secret is None or self._session is None:
            raise TokenUnavailable("no_app_secret", f"app {app_id} has no app_secret", False)
        try:
            return await call(self._session, secret)
        except oauth.OAuthRefused as exc:
            _log.warning("zalo refused a token call", oa_id=oa_id, error=exc.code)
            raise TokenUnavailable(exc.code, f"Zalo refused: {exc}", exc.retry) from None

    async def _append(self, oa_id: str, value: bytes) -> Position:
        return await self.log.append(
            self.log.topics.tokens, oa_id.encode(), value, timeout_s=self.options.append_timeout_s
        )

    async def _write(self, token: StoredToken) -> Position:
        """Make `token` durable, then take it as the OA's (its access token may be used)."""
        position = await self._append(token.oa_id, self.vault.seal(token))
        self._tokens[token.oa_id] = token
        self._failures.pop(token.oa_id, None)
        self._retry_at.pop(token.oa_id, None)
        self._show(token.oa_id)
        return position

    async def _catch_up(self) -> None:
        """Take what was written to `zns.tokens` since the last read (by any instance)."""
        async with self._read_lock:
            found, self._next = await read_tokens(self.log, self.vault, self._next)
            for oa_id, token in found.items():
                if token is None:
                    self._tokens.pop(oa_id, None)
                else:
                    self._tokens[oa_id] = token
                self._show(oa_id)

    async def _refresh(self, oa_id: str, replacing: str | None = None) -> StoredToken | None:
        """One refresh of the OA's token at a time: a caller that comes while one runs (or
        while a new token is being stored) waits for it instead of starting another."""
        flight = self._flights.get(oa_id)
        if flight is None or flight.done():
            flight = self._fly(oa_id, lambda: self._refresh_now(oa_id, replacing))
        return await asyncio.shield(flight)

    async def _alone(
        self, oa_id: str, work: Callable[[], Coroutine[Any, Any, StoredToken | None]]
    ) -> StoredToken | None:
        """Run `work` as the OA's one change of its token in flight: after the one running,
        and before any refresh asked for meanwhile (which then waits for it). Shielded: a
        caller that goes away does not cut a change in half."""
        while (flight := self._flights.get(oa_id)) is not None and not flight.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(flight)
        return await asyncio.shield(self._fly(oa_id, work))

    def _fly(
        self, oa_id: str, work: Callable[[], Coroutine[Any, Any, StoredToken | None]]
    ) -> asyncio.Task[StoredToken | None]:
        flight = asyncio.create_task(work())
        self._flights[oa_id] = flight
        flight.add_done_callback(lambda done: self._landed(oa_id, done))
        return flight

    def _landed(self, oa_id: str, flight: asyncio.Task[StoredToken | None]) -> None:
        if self._flights.get(oa_id) is flight:
            del self._flights[oa_id]

    async def _refresh_now(self, oa_id: str, replacing: str | None) -> StoredToken | None:
        # Another instance may have refreshed before this one took the partition: its pair
        # is the one Zalo knows.
        await self._catch_up()
        token = self._tokens.get(oa_id)
        if token is None or token.state == "dead" or not self.owns(oa_id):
            return token
        if replacing is not None and token.access_token != replacing:
            return token  # already replaced
        secret = self.app_secret(token.app_id)
        if secret is None or self._session is None:
            self._back_off(oa_id, "no_app_secret")
            ZALO_TOKEN_REFRESHES.labels("no_app_secret").inc()
            raise TokenUnavailable("no_app_secret", f"app {token.app_id} has no app_secret", True)
        now_ms = self._now_ms()
        try:
            pair = await oauth.refresh(
                self._session,
                self.zalo.oauth_url,
                token.app_id,
                secret,
                token.refresh_token,
                self.zalo.request_timeout_s,
            )
        except oauth.OAuthRefused as exc:
            if exc.retry:
                ZALO_TOKEN_REFRESHES.labels(exc.code).inc()
                self._back_off(oa_id, exc.code)
                _log.warning("token refresh failed, retrying later", oa_id=oa_id, error=exc.code)
                raise TokenUnavailable(exc.code, str(exc), True) from None
            # The partition's former owner may have refreshed it just before it let go: then
            # its pair is in the topic by now, and Zalo refused only the superseded one.
            await self._catch_up()
            newer = self._tokens.get(oa_id)
            if newer is not None and newer.refresh_token != token.refresh_token:
                ZALO_TOKEN_REFRESHES.labels("superseded").inc()
                return newer
            ZALO_TOKEN_REFRESHES.labels("dead").inc()
            await self._die(token, exc.code)
            raise TokenUnavailable(exc.code, str(exc), False) from None
        fresh = self._token_of(oa_id, token.app_id, pair, now_ms)
        await self._write_surely(fresh)
        ZALO_TOKEN_REFRESHES.labels("refreshed").inc()
        _log.info("token refreshed", oa_id=oa_id, expires_in=pair.expires_in)
        return fresh

    async def _write_surely(self, token: StoredToken) -> None:
        """Zalo has rotated the pair: the old refresh token is gone, so the new one must
        reach the log; keep trying for a while before giving up on it."""
        delay = 0.2
        for attempt in range(8):
            try:
                await self._write(token)
                return
            except LogError as exc:
                _log.error(
                    "a refreshed token could not be stored yet", oa_id=token.oa_id, error=str(exc)
                )
                if attempt == 7:
                    raise TokenUnavailable("log_unavailable", str(exc), True) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _backing_off(self, oa_id: str) -> bool:
        return self.clock() < self._retry_at.get(oa_id, 0.0)

    def _back_off(self, oa_id: str, error: str) -> None:
        failures = self._failures.get(oa_id, 0) + 1
        self._failures[oa_id] = failures
        wait = min(self.options.backoff_first_s * 2 ** (failures - 1), self.options.backoff_most_s)
        self._retry_at[oa_id] = self.clock() + wait
        token = self._tokens.get(oa_id)
        if token is not None:
            self._tokens[oa_id] = replace(token, last_error=error)

    async def _die(self, token: StoredToken, error: str) -> None:
        """Zalo refused the refresh token: keep that (state `dead`) and say so in
        `zns.decisions`; the OA's calls stop until a new token is stored."""
        before = token.state_at(self._now_ms(), self.zalo.refresh_margin_s)
        position = await self._write(token.dead(error))
        decision = DecisionRecord(
            decision_id=f"{position.partition}-{position.offset}-0-token_dead",
            oa_id=token.oa_id,
            kind="token",
            rule="token_dead",
            before=before,
            after="dead",
            inputs={"app_id": token.app_id, "error": error},
            at=datetime.fromtimestamp(self.clock(), self.settings.rules.zone).isoformat(),
            source=Source(
                topic=position.topic, partition=position.partition, offset=position.offset
            ),
        )
        await self.log.append(
            self.log.topics.decisions,
            token.oa_id.encode(),
            orjson.dumps(decision.model_dump(mode="json")),
            timeout_s=self.options.append_timeout_s,
        )
        _log.error("token dead", oa_id=token.oa_id, app_id=token.app_id, error=error)

    def _expiring_unwarned(self, token: StoredToken | None, now_ms: int) -> bool:
        return (
            token is not None
            and token.state != "dead"
            and not token.expiring_warned
            and token.refresh_expires_at - now_ms < EXPIRING_WARNING_S * 1000
        )

    async def _warn_expiring(self, oa_id: str) -> StoredToken | None:
        """`token_expiring`, once per refresh token: the token's record says it was given
        (written first, so that another instance or a restart does not give it again),
        then the decision, whose id the refresh token's expiry makes the same on a repeat.
        Runs as the OA's one change of its token (`_alone`): a refresh is not overwritten."""
        token = self._tokens.get(oa_id)
        if not self._expiring_unwarned(token, self._now_ms()) or not self.owns(oa_id):
            return token
        assert token is not None
        warned = replace(token, expiring_warned=True)
        # Not `_write`: the same pair, so a refresh backing off keeps backing off.
        position = await self._append(oa_id, self.vault.seal(warned))
        self._tokens[oa_id] = warned
        expires = datetime.fromtimestamp(token.refresh_expires_at / 1000, self.settings.rules.zone)
        decision = DecisionRecord(
            decision_id=f"{position.partition}-r{token.refresh_expires_at}-0-token_expiring",
            oa_id=oa_id,
            kind="warning",
            rule="token_expiring",
            before=token.state_at(self._now_ms(), self.zalo.refresh_margin_s),
            after="expiring",
            inputs={
                "app_id": token.app_id,
                "refresh_expires_at": expires.isoformat(),
                "warn_within_s": EXPIRING_WARNING_S,
            },
            at=datetime.fromtimestamp(self.clock(), self.settings.rules.zone).isoformat(),
            source=Source(
                topic=position.topic, partition=position.partition, offset=position.offset
            ),
        )
        await self.log.append(
            self.log.topics.decisions,
            oa_id.encode(),
            orjson.dumps(decision.model_dump(mode="json")),
            timeout_s=self.options.append_timeout_s,
        )
        _log.warning("refresh token expiring", oa_id=oa_id, refresh_expires_at=expires.isoformat())
        return warned

    async def _quietly_warn(self, oa_id: str) -> None:
        with contextlib.suppress(TokenUnavailable, LogError):
            await self._alone(oa_id, lambda: self._warn_expiring(oa_id))

    def _due(self, token: StoredToken, now: float) -> bool:
        if token.state == "dead" or self._backing_off(token.oa_id):
            return False
        if token.state_at(int(now * 1000), self.zalo.refresh_margin_s) == "expiring":
            return True
        return now * 1000 - token.refreshed_at >= self.zalo.refresh_at_least_every_s * 1000

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.options.tail_every_s)
            try:
                await self._catch_up()
            except Exception as exc:  # the keeper must outlive one bad read; try next tick
                _log.warning("the tokens topic could not be read", error=repr(exc))
                continue
            now = self.clock()
            for n, (oa_id, token) in enumerate(list(self._tokens.items()), 1):
                if self._due(token, now) and self.owns(oa_id) and oa_id not in self._flights:
                    self._in_background(self._quietly(oa_id))
                elif self._expiring_unwarned(token, int(now * 1000)) and self.owns(oa_id):
                    self._in_background(self._quietly_warn(oa_id))
                self._show(oa_id)
                if n % 500 == 0:
                    await asyncio.sleep(0)  # many OAs: let requests in between
            for oa_id in self._shown - self._tokens.keys():
                self._show(oa_id)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, oa_id: str) -> None:
        with contextlib.suppress(TokenUnavailable, LogError):
            await self._refresh(oa_id)

    # --- metrics ------------------------------------------------------------------------

    def _show(self, oa_id: str) -> None:
        """The OA's state and time left in the metrics, while this instance owns it."""
        token = self._tokens.get(oa_id)
        if token is None or not self.owns(oa_id):
            if oa_id in self._shown:
                self._shown.discard(oa_id)
                with contextlib.suppress(KeyError):
                    ZALO_TOKEN_EXPIRES_SECONDS.remove(oa_id)
                for state in STATES:
                    with contextlib.suppress(KeyError):
                        ZALO_TOKEN_STATE.remove(oa_id, state)
            return
        self._shown.add(oa_id)
        now_ms = self._now_ms()
        current = token.state_at(now_ms, self.zalo.refresh_margin_s)
        for state in STATES:
            ZALO_TOKEN_STATE.labels(oa_id, state).set(1 if state == current else 0)
        left = 0.0 if token.access_expires_at is None else token.access_expires_at - now_ms
        ZALO_TOKEN_EXPIRES_SECONDS.labels(oa_id).set(max(left, 0.0) / 1000)
