"""The committed JSON Schemas are exactly what the models generate."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from service import schemas
from service.api.openapi import OPERATIONS
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_match_the_models() -> None:
    stale = schemas.differences(ROOT / "schemas")
    assert stale == [], "run `zns-gate schemas` and commit the result: " + "; ".join(stale)


def test_every_schema_is_valid_json_with_a_draft(tmp_path: Path) -> None:
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == len(schemas.generate())
    for path in files:
        document = json.loads(path.read_text(encoding="utf-8"))
        if path.name == "openapi.json":
            continue  # checked below
        assert document["$schema"].startswith("https://json-schema.org/")
        assert document.get("type") == "object" or "anyOf" in document, path


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    main(["schemas", "--out", str(tmp_path)])
    assert main(["schemas", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "webhooks" / "user_feedback.json").write_text("{}\n", encoding="utf-8")
    assert main(["schemas", "--out", str(tmp_path), "--check"]) == 1


def test_the_openapi_document_is_valid_openapi_3_1_and_names_every_route() -> None:
    document = json.loads((ROOT / "schemas" / "openapi.json").read_text(encoding="utf-8"))
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"] == "3.1.0"
    operations = {(m, p) for p, item in document["paths"].items() for m in item}
    assert operations == {(op.method, op.path) for op in OPERATIONS}
    admissions = document["paths"]["/v1/oas/{oa_id}/admissions"]["post"]
    body = admissions["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][body.rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"template_id", "idempotency_key"}
    sync = document["components"]["schemas"]["SyncBody"]
    assert "oa_id" not in sync["properties"]
