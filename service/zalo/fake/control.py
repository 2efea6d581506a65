"""The fake's control API under `/_fake/...` (JSON): what tests read and script.

Read what was sent, refreshed and posted; script the next errors; set an OA's
numbers or a template's status and quality (optionally posting Zalo's webhook
for the change); move the fake's clock. Bad input is a 400 with a code and
changes nothing. It is not part of Zalo's API and must never be exposed
beyond a developer's machine.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.zalo.fake.scenario import Quality, ScriptedError, TemplateStatus
from service.zalo.fake.server import FakeZaloServer, json_answer
from service.zalo.fake.state import OaState, TemplateState, fingerprint


class _Patch(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OaPatch(_Patch):
    daily_quota: int | None = Field(default=None, ge=0)
    remaining_quota: int | None = Field(default=None, ge=0)
    monthly_promotion_quota: int | None = Field(default=None, ge=0)
    remaining_monthly_promotion_quota: int | None = Field(default=None, ge=0)
    estimated_next_month_promotion_quota: int | None = Field(default=None, ge=0)
    quality_48h: Quality | None = None
    quality_7d: Quality | None = None
    allowed_tags: list[str] | None = None
    notify: bool = False
    """Post `change_oa_daily_quota` to the gate when `daily_quota` changes."""


class TemplatePatch(_Patch):
    status: TemplateStatus | None = None
    quality: Quality | None = None
    reason: str = ""
    notify: bool = False
    """Post `change_template_status` / `change_template_quality` for what changed."""


class ClockMove(_Patch):
    advance_s: float = Field(ge=0)


class Drain(_Patch):
    timeout_s: float = Field(default=10.0, gt=0, le=300)


_SCRIPTS = TypeAdapter(ScriptedError | list[ScriptedError])


def _json_error(code: str, detail: str, status: int) -> web.HTTPException:
    error_class: type[web.HTTPException] = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return error_class(
        text=orjson.dumps({"error": code, "detail": detail}).decode(),
        content_type="application/json",
    )


READ_LIMIT = 1000
"""At most this many entries per read (`?limit=`, newest last), so one answer stays small."""


def _newest(request: web.Request, entries: list[Any]) -> list[Any]:
    raw = request.query.get("limit", str(READ_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= READ_LIMIT:
        raise _json_error("invalid_request", f"limit must be 1 to {READ_LIMIT}", 400)
    return entries[-int(raw) :]


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _json_error("invalid_json", "the body is not JSON", 400) from exc


def _oa_view(fake: FakeZaloServer, oa: OaState) -> dict[str, Any]:
    return {
        "oa_id": oa.oa_id,
        "app_id": oa.app_id,
        "daily_quota": oa.daily_quota,
        "remaining_quota": oa.remaining_quota,
        "monthly_promotion_quota": oa.monthly_promotion_quota,
        "remaining_monthly_promotion_quota": oa.remaining_monthly_promotion_quota,
        "estimated_next_month_promotion_quota": oa.estimated_next_month_promotion_quota,
        "quality_48h": oa.quality_48h,
        "quality_7d": oa.quality_7d,
        "allowed_tags": oa.allowed_tags,
        "templates": {
            t.template_id: {"status": t.status, "quality": t.quality, "tag": t.tag}
            for t in fake.zalo.templates[oa.oa_id].values()
        },
    }


def add_control_routes(app: web.Application, fake: FakeZaloServer) -> None:
    zalo = fake.zalo

    def oa_named(request: web.Request) -> OaState:
        oa = zalo.oa_now(request.match_info["oa_id"])
        if oa is None:
            raise _json_error("unknown_oa", "no such OA in the scenario", 404)
        return oa

    def template_named(request: web.Request, oa: OaState) -> TemplateState:
        template = zalo.templates[oa.oa_id].get(request.match_info["template_id"])
        if template is None:
            raise _json_error("unknown_template", "no such template for this OA", 404)
        return template

    async def state(_: web.Request) -> web.Response:
        return json_answer(
            {
                "now_ms": zalo.clock.now_ms(),
                "clock_offset_s": zalo.clock.offset_s,
                "oas": [_oa_view(fake, oa) for oa in map(zalo.oa_now, list(zalo.oas)) if oa],
                "scripted_errors": zalo.scripts(),
                "webhooks": fake.webhooks.counts(),
            }
        )

    async def sends(request: web.Request) -> web.Response:
        return json_answer(_newest(request, list(zalo.sends)))

    async def oauth(request: web.Request) -> web.Response:
        return json_answer(_newest(request, list(zalo.oauth)))

    async def tokens(request: web.Request) -> web.Response:
        now = zalo.clock.now()
        access = _newest(request, list(zalo.access_tokens.items()))
        refresh = _newest(request, list(zalo.refresh_tokens.items()))
        return json_answer(
            {
                "access_tokens": [
                    {
                        "token": fingerprint(token),
                        "oa_id": held.oa_id,
                        "expires_at_ms": int(held.expires_at * 1000),
                        "valid": held.expires_at > now,
                    }
                    for token, held in access
                ],
                "refresh_tokens": [
                    {
                        "token": fingerprint(token),
                        "oa_id": held.oa_id,
                        "expires_at_ms": int(held.expires_at * 1000),
                        "used": held.used_at is not None,
                    }
                    for token, held in refresh
                ],
            }
        )

    async def webhooks(request: web.Request) -> web.Response:
        newest = _newest(request, list(fake.webhooks.deliveries))
        return json_answer(
            {"counts": fake.webhooks.counts(), "deliveries": [d.summary() for d in newest]}
        )

    async def drain(request: web.Request) -> web.Response:
        try:
            wanted = Drain.model_validate(await _body(request))
        except ValidationError as exc:
            raise _json_error("invalid_request", str(exc), 400) from exc
        done = await fake.webhooks.drain(wanted.timeout_s)
        return json_answer({"drained": done, "counts": fake.webhooks.counts()})

    async def errors(request: web.Request) -> web.Response:
        try:
            scripted = _SCRIPTS.validate_python(await _body(request))
        except ValidationError as exc:
            raise _json_error("invalid_request", str(exc), 400) from exc
        for one in scripted if isinstance(scripted, list) else [scripted]:
            zalo.script(one)
        return json_answer({"scripted_errors": zalo.scripts()})

    async def set_oa(request: web.Request) -> web.Response:
        oa = oa_named(request)
        try:
            patch = OaPatch.model_validate(await _body(request))
        except ValidationError as exc:
            raise _json_error("invalid_request", str(exc), 400) from exc
        before = oa.daily_quota
        for name, value in patch.model_dump(exclude_unset=True, exclude={"notify"}).items():
            setattr(oa, name, value)
        if patch.notify and oa.daily_quota != before:
            fake.webhooks.post(
                zalo.apps[oa.app_id],
                {
                    "event_name": "change_oa_daily_quota",
                    "app_id": oa.app_id,
                    "oaId": oa.oa_id,
                    "quota": {"prev_value": before, "new_value": oa.daily_quota},
                    "timestamp": str(zalo.clock.now_ms()),
                },
                0.0,
                zns=False,
            )
        return json_answer(_oa_view(fake, oa))

    async def set_template(request: web.Request) -> web.Response:
        oa = oa_named(request)
        template = template_named(request, oa)
        try:
            patch = TemplatePatch.model_validate(await _body(request))
        except ValidationError as exc:
            raise _json_error("invalid_request", str(exc), 400) from exc
        app_of_oa = zalo.apps[oa.app_id]
        common = {"app_id": oa.app_id, "oa_id": oa.oa_id, "template_id": template.template_id}
        if patch.status is not None and patch.status != template.status:
            previous, template.status = template.status, patch.status
            if patch.notify:
                fake.webhooks.post(
                    app_of_oa,
                    {
                        "event_name": "change_template_status",
                        **common,
                        "status": {"prev_status": previous, "new_status": patch.status},
                        "reason": patch.reason,
                        "timestamp": str(zalo.clock.now_ms()),
                    },
                    0.0,
                    zns=False,
                )
        if patch.quality is not None and patch.quality != template.quality:
            template.quality = patch.quality
            if patch.notify:
                fake.webhooks.post(
                    app_of_oa,
                    {
                        "event_name": "change_template_quality",
                        **common,
                        "quality": patch.quality,
                        "timestamp": str(zalo.clock.now_ms()),
                    },
                    0.0,
                    zns=False,
                )
        return json_answer(_oa_view(fake, oa)["templates"][template.template_id])

    async def clock(request: web.Request) -> web.Response:
        try:
            move = ClockMove.model_validate(await _body(request))
        except ValidationError as exc:
            raise _json_error("invalid_request", str(exc), 400) from exc
        zalo.clock.advance(move.advance_s)
        return json_answer({"now_ms": zalo.clock.now_ms(), "offset_s": zalo.clock.offset_s})

    app.router.add_get("/_fake/state", state)
    app.router.add_get("/_fake/sends", sends)
    app.router.add_get("/_fake/oauth", oauth)
    app.router.add_get("/_fake/tokens", tokens)
    app.router.add_get("/_fake/webhooks", webhooks)
    app.router.add_post("/_fake/webhooks/drain", drain)
    app.router.add_post("/_fake/errors", errors)
    app.router.add_post("/_fake/oas/{oa_id}", set_oa)
    app.router.add_post("/_fake/oas/{oa_id}/templates/{template_id}", set_template)
    app.router.add_post("/_fake/clock", clock)
