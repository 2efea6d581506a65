"""Renders the committed OpenAPI document (`schemas/openapi.json`) as `docs/api-reference.md`.

The reference is generated, never written by hand, so that it cannot drift from the
document the service serves at `GET /openapi.json`; a test fails when the committed
page differs from what this module renders. `python -m service.apidoc` rewrites the
page; `python -m service.apidoc --check` only says whether it is up to date (exit 1
when not). Rendering is deterministic: paths, methods and fields in sorted order.
It reads the JSON file, not the models, so it needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "schemas" / "openapi.json"
REFERENCE = ROOT / "docs" / "api-reference.md"

_METHODS = ("get", "put", "post", "delete", "patch", "head")
_REF = "#/components/schemas/"


def _cell(text: object) -> str:
    """One table cell: a single line, with the pipe escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _anchor(name: str) -> str:
    """The heading anchor of a schema section (GitHub's slug of a one-word heading)."""
    return name.lower()


def _type(schema: dict[str, Any]) -> str:
    """A short, readable type: `string`, `integer or null`, a link to a component schema."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_type(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "const" in schema:
        return f"`{json.dumps(schema['const'], ensure_ascii=False)}`"
    if "enum" in schema:
        return "one of " + ", ".join(
            f"`{json.dumps(v, ensure_ascii=False)}`" for v in schema["enum"]
        )
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    """The constraints a value must meet (lengths, bounds, pattern), from every branch."""
    parts: list[str] = []
    for branch in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
        for key, label in (
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
            ("minimum", "≥"),
            ("maximum", "≤"),
            ("exclusiveMinimum", ">"),
            ("minItems", "items ≥"),
            ("maxItems", "items ≤"),
        ):
            if key in branch:
                parts.append(f"{label} {branch[key]}")
        if "pattern" in branch:
            parts.append(f"pattern `{branch['pattern']}`")
    if "default" in schema and schema["default"] is not None:
        parts.append(f"default `{json.dumps(schema['default'], ensure_ascii=False)}`")
    return ", ".join(parts)


def _fields(schema: dict[str, Any]) -> list[str]:
    """A table of an object schema's fields: name, type, required, limits, description."""
    properties = schema.get("properties", {})
    if not properties:
        return []
    required = set(schema.get("required", []))
    lines = ["| field | type | required | limits | description |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for name in sorted(properties):
        prop = properties[name]
        lines.append(
            f"| `{name}` | {_cell(_type(prop))} | {'yes' if name in required else 'no'} "
            f"| {_cell(_limits(prop))} | {_cell(prop.get('description', ''))} |"
        )
    return lines


def _body_schema(content: dict[str, Any]) -> str:
    """The media types of a body and the type each carries."""
    kinds = (f"`{media}`: {_type(spec.get('schema', {}))}" for media, spec in content.items())
    return "; ".join(kinds)


def _scope(operation: dict[str, Any]) -> str:
    """The bearer scope an operation needs, or that it needs none."""
    scopes = [scope for req in operation.get("security", []) for s in req.values() for scope in s]
    return ", ".join(f"`{s}`" for s in scopes) if scopes else "none (no bearer token)"


def _body_fields(content: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    """The fields table of a JSON request body's schema, so an operation reads on its own."""
    schema = content.get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].removeprefix(_REF), {})
    return _fields(schema)


def _operation(
    method: str, path: str, operation: dict[str, Any], schemas: dict[str, Any]
) -> list[str]:
    """The section of one method on one path."""
    lines = [f"### {method.upper()} {path}", ""]
    if operation.get("summary"):
        lines += [operation["summary"] + ".", ""]
    if operation.get("description"):
        lines += [" ".join(operation["description"].split()), ""]
    scope = f"Scope: {_scope(operation)}."
    if scope not in operation.get("description", ""):
        lines += [scope, ""]
    params = operation.get("parameters", [])
    if params:
        lines += ["| parameter | in | required | type | limits | description |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for p in params:
            schema = p.get("schema", {})
            lines.append(
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                f"| {_cell(_type(schema))} | {_cell(_limits(schema))} "
                f"| {_cell(p.get('description', ''))} |"
            )
        lines.append("")
    body = operation.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        content = body.get("content", {})
        lines += [f"Request body ({required}): {_body_schema(content)}.", ""]
        table = _body_fields(content, schemas)
        lines += [*table, ""] if table else []
    lines += ["| status | when | body | headers |", "| --- | --- | --- | --- |"]
    for status in sorted(operation.get("responses", {})):
        answer = operation["responses"][status]
        headers = ", ".join(f"`{h}`" for h in sorted(answer.get("headers", {})))
        lines.append(
            f"| {status} | {_cell(answer.get('description', ''))} "
            f"| {_cell(_body_schema(answer.get('content', {})))} | {headers} |"
        )
    return [*lines, ""]


def _headers(document: dict[str, Any]) -> list[str]:
    """Every response header any operation sets, with its description, once."""
    seen: dict[str, str] = {}
    for ops in document["paths"].values():
        for operation in ops.values():
            for answer in operation.get("responses", {}).values():
                for name, spec in answer.get("headers", {}).items():
                    seen.setdefault(name, spec.get("description", ""))
    lines = ["| header | meaning |", "| --- | --- |"]
    return lines + [f"| `{name}` | {_cell(seen[name])} |" for name in sorted(seen)]


def render(document: dict[str, Any]) -> str:
    """The whole reference page for an OpenAPI document."""
    info = document.get("info", {})
    lines = [
        "# API reference",
        "",
        "<!-- Generated from schemas/openapi.json by `python -m service.apidoc`; do not edit. -->",
        "",
        f"{info.get('title', '')} {info.get('version', '')}, OpenAPI {document.get('openapi')}. "
        "Generated from [`schemas/openapi.json`](../schemas/openapi.json), which the service "
        "also serves at `GET /openapi.json`; the guide to it is [api.md](api.md). "
        "Every error answer has the body [ErrorBody](#errorbody), its `code` machine-readable.",
        "",
        "## Operations",
        "",
    ]
    schemas = document.get("components", {}).get("schemas", {})
    for path in sorted(document["paths"]):
        for method in _METHODS:
            operation = document["paths"][path].get(method)
            if operation is not None:
                lines += _operation(method, path, operation, schemas)
    lines += ["## Response headers", "", *_headers(document), "", "## Schemas", ""]
    for name, schema in sorted(schemas.items()):
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [" ".join(schema["description"].split()), ""]
        table = _fields(schema)
        lines += [*table, ""] if table else [f"Type: {_type(schema)}.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def current() -> str:
    """The reference as the committed OpenAPI document renders it now."""
    return render(json.loads(OPENAPI.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    """Write `docs/api-reference.md`, or with `--check` say whether it is up to date."""
    parser = argparse.ArgumentParser(prog="python -m service.apidoc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = current()
    if args.check:
        stale = not REFERENCE.exists() or REFERENCE.read_text(encoding="utf-8") != text
        print(f"{REFERENCE.relative_to(ROOT)}: {'out of date' if stale else 'up to date'}")
        return 1 if stale else 0
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
