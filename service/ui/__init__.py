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

    def serve(name: str) -> web.Response:
        return web.Response(
            body=files[name], content_type=_TYPES[name], charset="utf-8", headers=_headers()
        )

    async def page(_: web.Request) -> web.Response:
        return serve("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound(reason="no such file of the dashboard")
        return serve(name)

    async def to_page(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    app.router.add_get("/ui", to_page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/{name}", asset)
