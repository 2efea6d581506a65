"""What the Zalo client and the poller need of the token keeper, and nothing more: an
OA's access token to call Zalo with, a fresh one after Zalo refused it, and which OAs
this instance may call Zalo for now. The keeper (`service.zalo.tokens`) implements it;
tests may give any object of this shape that holds real tokens of a running fake Zalo.
"""

from __future__ import annotations

from typing import Protocol


class AccessTokens(Protocol):
    def callable_oas(self) -> list[str]:
        """The OAs this instance may call Zalo for now: a token is stored and not dead, and
        this instance owns the OA's partition and is in contact with its group."""
        ...

    async def access_token(self, oa_id: str) -> str | None:
        """The OA's access token to use now (refreshed first when it is about to expire),
        or None when there is none to use (missing, dead, or not this instance's OA)."""
        ...

    async def refused(self, oa_id: str, token: str) -> str | None:
        """Zalo answered -124 (invalid or expired access token) to a call made with `token`:
        refresh once, unless a refresh has replaced `token` already, and return the access
        token to retry with, or None."""
        ...
