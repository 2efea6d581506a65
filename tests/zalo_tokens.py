"""A small real `AccessTokens` for tests: it holds a fake Zalo's known token pair per OA and,
after a -124, refreshes through the fake's real OAuth endpoint (`POST /v4/oa/access_token`
with the `secret_key` header), as the token keeper does, one refresh at a time per OA.

It also holds which OAs "this instance" may call, so that a test can take an OA away.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from service.zalo.fake.scenario import DEFAULT_APP_ID, DEFAULT_OA_ID

FAKE_APP_SECRET = "fake-app-secret"
FAKE_ACCESS = "fake-access-token"
FAKE_REFRESH = "fake-refresh-token"


@dataclass
class Pair:
    access: str | None
    refresh: str


@dataclass
class FakeTokens:
    """Tokens of a running fake Zalo at `oauth_url`."""

    oauth_url: str
    pairs: dict[str, Pair] = field(
        default_factory=lambda: {DEFAULT_OA_ID: Pair(FAKE_ACCESS, FAKE_REFRESH)}
    )
    app_id: str = DEFAULT_APP_ID
    app_secret: str = FAKE_APP_SECRET
    owned: set[str] | None = None
    """The OAs this instance owns (None: every OA with a pair)."""
    refreshes: int = 0
    refusals: int = 0
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def callable_oas(self) -> list[str]:
        return sorted(
            oa
            for oa, pair in self.pairs.items()
            if pair.access is not None and (self.owned is None or oa in self.owned)
        )

    async def access_token(self, oa_id: str) -> str | None:
        if oa_id not in self.callable_oas():
            return None
        return self.pairs[oa_id].access

    async def refused(self, oa_id: str, token: str) -> str | None:
        self.refusals += 1
        pair = self.pairs.get(oa_id)
        if pair is None:
            return None
        async with self._locks.setdefault(oa_id, asyncio.Lock()):
            if pair.access != token:
                return pair.access  # another call refreshed it meanwhile
            form = {
                "grant_type": "refresh_token",
                "refresh_token": pair.refresh,
                "app_id": self.app_id,
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{self.oauth_url}/v4/oa/access_token",
                    data=form,
                    headers={"secret_key": self.app_secret},
                ) as answer,
            ):
                body = await answer.json()
            self.refreshes += 1
            if "access_token" not in body:
                pair.access = None  # refused: dead
                return None
            pair.access, pair.refresh = body["access_token"], body["refresh_token"]
            return pair.access
