"""The OpenAPI 3.1 document of the service, built from the models of `service/api/models.py`.

`zns-gate schemas` writes it to `schemas/openapi.json` and a test keeps that
file current; `GET /openapi.json` serves the same document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__
from service.api import models
from service.domain.records import DecisionRecord

REF = "#/components/schemas/{model}"
JSON = "application/json"


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post", "put", "delete"]
    path: str
    summary: str
    answer: type[BaseModel] | None
    body: type[BaseModel] | None = None
    scope: Literal["read", "send", "admin"] | None = "read"
    errors: tuple[int, ...] = (401, 403, 503)
    headers: tuple[str, ...] = ("X-Served-By", "X-Staleness-Ms")
    notes: str = ""
    raw_body: dict[str, Any] | None = None
    """A JSON Schema for a body no model describes."""
    content_type: str = JSON
    """Of the 200 answer."""
    redirect: bool = False
    """The answer is a 302 to the `Location` header, not a 200."""
    query: tuple[dict[str, Any], ...] = ()
    """The query parameters it takes, as OpenAPI parameter objects."""


_OA = "/v1/oas/{oa_id}"
OPERATIONS = (
    Operation(
        "get", "/v1/oas", "Every OA the group holds, one line each", models.OAList, headers=()
    ),
    Operation(
        "get",
        f"{_OA}/quota",
        "What the OA may send today and this month, and the limits in force",
        models.QuotaAnswer,
    ),
    Operation(
        "get",
        f"{_OA}/message/quota",
        "The quota in the shape of Zalo's own endpoint",
        models.ZaloQuotaAnswer,
    ),
    Operation(
        "get",
        f"{_OA}/quality",
        "Quality (effective, proxy and Zalo's), counts, explanation and forecast",
        models.QualityAnswer,
    ),
    Operation(
        "get",
        f"{_OA}/history",
        "The last 7 days hour by hour: delivered and negatives (the proxy), Zalo's levels",
        models.HistoryAnswer,
    ),
    Operation(
        "get",
        f"{_OA}/decisions",
        "The OA's last decisions (tier, penalty, quality, pauses...), each explained",
        models.DecisionsAnswer,
        errors=(401, 403, 422, 503),
        headers=(),
        notes=(
            "Query `limit` (1 to 200, default 20) and `kind` (comma-separated kinds of "
            "zns.decisions records); 422 invalid_request otherwise. Read from the last "
            "5,000 records of the OA's zns.decisions partition (`scanned`) by any instance."
        ),
        query=(
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
            },
            {
                "name": "kind",
                "in": "query",
                "required": False,
                "description": "Comma-separated, of: "
                + ", ".join(get_args(DecisionRecord.model_fields["kind"].annotation))
                + ".",
                "schema": {"type": "string"},
            },
        ),
    ),
    Operation("get", f"{_OA}/templates", "Every template of the OA", models.TemplatesAnswer),
    Operation(
        "get",
        f"{_OA}/templates/{{template_id}}",
        "One template",
        models.TemplateAnswer,
        errors=(401, 403, 404, 503),
    ),
    Operation(
        "post",
        f"{_OA}/admissions",
        "Ask how much may be sent now; a grant consumes quota",
        models.AdmissionAnswer,
        body=models.AdmissionBody,
        scope="send",
        errors=(400, 401, 403, 408, 409, 413, 415, 422, 503),
        headers=("X-Served-By", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
        notes=(
            "Denials answer 200 with each denied item's reason and Zalo code. The same "
            "idempotency_key with the same body returns the first answer; with another "
            "body, 409 idempotency_conflict. 422 tag_required when the template's tag is "
            "not known and none is given."
        ),
    ),
    Operation(
        "post",
        f"{_OA}/messages",
        "Send messages through Zalo: check, admit, send and record them in one call",
        models.MessagesAnswer,
        body=models.MessagesBody,
        scope="send",
        errors=(400, 401, 403, 404, 408, 409, 413, 415, 422, 503),
        headers=("X-Served-By", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
        notes=(
            "Needs zalo.enabled (else 404 zalo_disabled) and the OA's token. Each message "
            "is sent, denied, rejected, failed or unknown; the same idempotency_key with the "
            "same body answers the first answer again and calls Zalo for nothing (a repeat "
            "during the first waits for it); with another body, 409 idempotency_conflict. "
            "A message that may have been sent (unknown) is never sent again."
        ),
    ),
    Operation(
        "post",
        f"{_OA}/sends",
        "Report send outcomes (from Zalo's answers to the sender)",
        models.SendsAnswer,
        body=models.SendsBody,
        scope="send",
        errors=(400, 401, 403, 408, 413, 415, 422, 503),
        headers=(),
    ),
    Operation(
        "post",
        f"{_OA}/sync",
        "Record authoritative values read from Zalo",
        models.Accepted,
        body=models.SyncBody,
        scope="admin",
        errors=(400, 401, 403, 408, 413, 415, 422, 503),
        headers=(),
        notes="The OA is the one of the path; the body has no oa_id.",
    ),
    Operation(
        "post",
        f"{_OA}/resume",
        "Clear the OA's suspension",
        models.Accepted,
        scope="admin",
        errors=(401, 403, 415, 503),
        headers=(),
    ),
    Operation(
        "post",
        f"{_OA}/templates/{{template_id}}/resume",
        "Lift a template's pause",
        models.Accepted,
        scope="admin",
        errors=(401, 403, 415, 503),
        headers=(),
    ),
    Operation(
        "put",
        f"{_OA}/zalo/token",
        "Store the OA's Zalo token pair (refreshed at once without an access token)",
        models.TokenAnswer,
        body=models.TokenBody,
        scope="admin",
        errors=(400, 401, 403, 404, 408, 413, 415, 422, 503),
        headers=("X-Served-By",),
        notes=(
            "422 unknown_app, no_app_secret, token_refused (Zalo refused the refresh token: "
            "nothing is stored), invalid_request; 503 zalo_unavailable when Zalo did not "
            "answer; 404 zalo_disabled with zalo.enabled = false."
        ),
    ),
    Operation(
        "get",
        f"{_OA}/zalo/token",
        "The state of the OA's Zalo token (never the token)",
        models.TokenAnswer,
        errors=(401, 403, 404, 503),
        headers=("X-Served-By",),
    ),
    Operation(
        "delete",
        f"{_OA}/zalo/token",
        "Forget the OA's Zalo token",
        models.TokenAnswer,
        scope="admin",
        errors=(401, 403, 404, 503),
        headers=("X-Served-By",),
    ),
    Operation(
        "get",
        "/zalo/connect",
        "Send an OA admin to Zalo's permission page (PKCE, signed state)",
        None,
        scope="admin",
        errors=(400, 401, 403, 404, 422),
        headers=(),
        redirect=True,
        notes="Query `app_id`. 422 unknown_app, no_app_secret, no_callback_url.",
    ),
    Operation(
        "get",
        "/zalo/callback",
        "Where Zalo's permission page returns: the code is exchanged and the pair stored",
        None,
        scope=None,
        errors=(400, 404, 422, 503),
        headers=(),
        content_type="text/html",
        notes="Query `code`, `oa_id`, `state` (as signed by /zalo/connect); 400 invalid_state.",
    ),
    Operation(
        "post",
        "/webhooks/zalo",
        "Zalo's webhook: verified, then made durable in the event log",
        models.WebhookAccepted,
        scope=None,
        errors=(400, 401, 408, 413, 415, 503),
        headers=(),
        raw_body={
            "type": "object",
            "description": "A Zalo event as Zalo sends it (see schemas/webhooks/), signed "
            "in the X-ZEvent-Signature header.",
        },
        notes="Answers 200 only once the event is durable; 503 (Zalo retries) otherwise.",
    ),
    Operation("get", "/healthz", "Liveness", None, scope=None, errors=(), headers=()),
    Operation(
        "get",
        "/readyz",
        "Readiness: the log answers and the partitions are restored",
        None,
        scope=None,
        errors=(503,),
        headers=(),
    ),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics",
        None,
        scope=None,
        errors=(),
        headers=(),
        content_type="text/plain",
    ),
    Operation("get", "/openapi.json", "This document", None, scope=None, errors=(), headers=()),
    Operation(
        "get",
        "/ui",
        "The operators' dashboard, at /ui/",
        None,
        scope=None,
        errors=(),
        headers=(),
        redirect=True,
    ),
    Operation(
        "get",
        "/ui/",
        "The operators' dashboard (docs/dashboard.md); it reads this API with a read token",
        None,
        scope=None,
        errors=(),
        headers=(),
        content_type="text/html",
        notes="Served with Content-Security-Policy: default-src 'self'.",
    ),
    *(
        Operation(
            "get",
            f"/ui/{name}",
            f"The dashboard's {what}",
            None,
            scope=None,
            errors=(),
            headers=(),
            content_type=content_type,
        )
        for name, what, content_type in (
            ("app.js", "script", "text/javascript"),
            ("style.css", "style sheet", "text/css"),
            ("favicon.svg", "icon", "image/svg+xml"),
        )
    ),
)

_HEADERS: dict[str, dict[str, Any]] = {
    "X-Served-By": {
        "description": "The address of the instance that answered (the OA's owner).",
        "schema": {"type": "string"},
    },
    "X-Staleness-Ms": {
        "description": "Present when answered from a copy while partitions move: how much "
        "older than now its newest certain information may be, in milliseconds.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Remaining": {
        "description": "What the request's tag may still be granted today (absent: unlimited).",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "Seconds until the daily quota resets (local midnight).",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer", "minimum": 0},
    },
}

_ERRORS = {
    400: "Malformed JSON (`malformed_json`) or a bad id in the path (`bad_request`)",
    401: "No valid bearer token (`unauthenticated`)",
    403: "The token lacks the scope (`forbidden`)",
    404: "Not found (`unknown_template`; `zalo_disabled`: zalo.enabled is false)",
    408: "The body arrived too slowly (`request_timeout`)",
    409: "The idempotency_key was used with another body (`idempotency_conflict`)",
    413: "The body is too large",
    415: "Not of type application/json (`unsupported_media_type`)",
    422: "The body does not match its schema (`invalid_request`, `tag_required`), or names "
    "what is not configured (`unknown_app`, `no_app_secret`)",
    503: "Not answerable now (`restoring`, `not_owner`, `owner_unreachable`, "
    "`out_of_contact`, `log_unavailable`, `busy`, ...): ask again after Retry-After",
}


def _body_schema(model: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
    if model is models.SyncBody:  # the path names the OA
        schema = {
            **schema,
            "properties": {k: v for k, v in schema["properties"].items() if k != "oa_id"},
            "required": [name for name in schema.get("required", []) if name != "oa_id"],
        }
    return schema


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = []
    for op in OPERATIONS:
        if op.body is not None and op.body is not models.SyncBody:
            wanted.append((op.body, "validation"))
        if op.answer is not None:
            wanted.append((op.answer, "validation"))
    wanted.append((models.ErrorBody, "validation"))
    refs, definitions = models_json_schema(wanted, ref_template=REF)
    components: dict[str, Any] = dict(definitions.get("$defs", {}))
    sync_refs, sync_defs = models_json_schema([(models.SyncBody, "validation")], ref_template=REF)
    sync_defs_all = dict(sync_defs.get("$defs", {}))
    sync_name = sync_refs[(models.SyncBody, "validation")]["$ref"].rsplit("/", 1)[-1]
    components["SyncBody"] = _body_schema(models.SyncBody, sync_defs_all.pop(sync_name))
    components["SyncBody"]["title"] = "SyncBody"
    components.update(sync_defs_all)

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        if model is models.SyncBody:
            return {"$ref": REF.format(model="SyncBody")}
        return refs[(model, "validation")]

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK"}
        if op.answer is not None:
            ok["content"] = {JSON: {"schema": ref(op.answer)}}
        elif op.content_type == JSON:
            ok["content"] = {JSON: {"schema": {"type": "object"}}}
        else:
            ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
        if op.headers:
            ok["headers"] = {name: _HEADERS[name] for name in op.headers}
        if op.redirect:
            responses["302"] = {
                "description": "Found",
                "headers": {"Location": {"schema": {"type": "string", "format": "uri-reference"}}},
            }
        else:
            responses["200"] = ok
        for status in statuses(op):
            error: dict[str, Any] = {
                "description": _ERRORS[status],
                "content": {JSON: {"schema": ref(models.ErrorBody)}},
            }
            if status == 503:
                error["headers"] = {"Retry-After": _HEADERS["Retry-After"]}
            responses[str(status)] = error
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": _operation_id(op),
            "responses": responses,
        }
        if op.notes:
            operation["description"] = op.notes
        parameters = []
        for name in ("oa_id", "template_id"):
            if "{" + name + "}" in op.path:
                parameters.append(
                    {
                        "name": name,
                        "in": "path",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 64,
                            "pattern": "^[A-Za-z0-9_.-]+$",
                        },
                    }
                )
        parameters.extend(op.query)
        if parameters:
            operation["parameters"] = parameters
        body = ref(op.body) if op.body is not None else op.raw_body
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        if op.scope is not None:
            operation["security"] = [{"bearer": [op.scope]}]
            operation["description"] = (
                operation.get("description", "") + f" Scope: `{op.scope}`."
            ).strip()
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "zns-gate",
            "version": __version__,
            "description": "Quota, quality and admission answers for Zalo ZNS senders, "
            "and sends through Zalo in one call (POST /v1/oas/{oa_id}/messages; "
            "docs/send-proxy.md). With no tokens configured the API is open.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def statuses(op: Operation) -> list[int]:
    """The error statuses an operation may answer: its own, and 400 for a bad path."""
    extra = {400} if "{oa_id}" in op.path else set()
    return sorted(set(op.errors) | extra)


def _operation_id(op: Operation) -> str:
    words = [w for w in op.path.replace("{", "").replace("}", "").split("/") if w and w != "v1"]
    index = "_index" if op.path.endswith("/") else ""  # `/ui/` beside its redirect `/ui`
    return op.method + "_" + "_".join(words).replace("-", "_") + index
