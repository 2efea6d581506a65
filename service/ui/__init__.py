"""The operators' dashboard at `GET /ui/`: a static page that reads the `/v1` API.

The page, its script and its style sheet are files of this package
(`service/ui/static/`), read once when the routes are added and served from
memory, so a request never touches the disk. Every answer carries a strict
Content-Security-Policy (`default-src 'self'`): the page loads nothing from
another site, runs no inline script and no inline style. The page holds no
secret of its own; with API tokens configured it asks the operator for one
and keeps it in the tab's sessionStorage (docs/dashboard.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
"""Everything from this origin only; no framing (clickjacking), no base or form elsewhere."""

_TYPES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""The files served, by name, with their content types: nothing else under /ui/."""


def _load() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _TYPES}


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def add_routes(app: web.Application) -> None:
    files = _load()

    def serving(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(_: web.Request) -> web.Response:
            return web.Response(
                body=files[name], content_type=_TYPES[name], charset="utf-8", headers=_headers()
            )

        return serve

    async def to_page(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    app.router.add_get("/ui", to_page)
    app.router.add_get("/ui/", serving("index.html"))
    for name in _TYPES:
        if name != "index.html":
            app.router.add_get(f"/ui/{name}", serving(name))
