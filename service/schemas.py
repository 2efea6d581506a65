"""JSON Schemas of every payload that crosses a boundary, generated from the pydantic models.

`zns-gate schemas` writes them, and the OpenAPI document of the HTTP API
(`openapi.json`), under `schemas/`; the files are committed so
that consumers in any language can read them, and a test fails when they no
longer match the models. Generation is deterministic (sorted keys, fixed
indentation) so a diff shows only real changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from service.domain.events import EVENT_MODELS, GenericEvent
from service.domain.records import (
    AdmissionRecord,
    CommandRecord,
    DeadLetter,
    DecisionRecord,
    NotifyDeadLetter,
    SendRecord,
    SyncRecord,
)
from service.processor.snapshots import PartitionMark, SnapshotChunk


def _documents() -> dict[str, Any]:
    """Relative path -> the type whose schema the file holds, for every published schema."""
    docs: dict[str, Any] = {
        f"webhooks/{name}.json": model for name, model in sorted(EVENT_MODELS.items())
    }
    docs["webhooks/generic_event.json"] = GenericEvent
    # zns.events holds Zalo's bodies (kind `webhook`) and these records of zns-gate's own.
    docs["topics/events.send.json"] = SendRecord
    docs["topics/events.admission.json"] = AdmissionRecord
    docs["topics/events.sync.json"] = SyncRecord
    docs["topics/events.command.json"] = CommandRecord
    docs["topics/oa-state.json"] = SnapshotChunk | PartitionMark
    docs["topics/decisions.json"] = DecisionRecord
    docs["topics/dlq.json"] = DeadLetter
    docs["topics/notify-dlq.json"] = NotifyDeadLetter
    return docs


def render(kind: Any) -> str:
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **TypeAdapter(kind).json_schema(mode="validation"),
    }
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """Relative path -> file content of every schema, and of the OpenAPI document."""
    from service.api.openapi import document

    files = {path: render(model) for path, model in _documents().items()}
    files["openapi.json"] = (
        json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )
    return files


def write(root: Path) -> list[Path]:
    """Write every schema under `root`; returns the files written."""
    written = []
    for relative, text in generate().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def differences(root: Path) -> list[str]:
    """Schema files under `root` that are missing or differ from the models."""
    out = []
    for relative, text in generate().items():
        path = root / relative
        if not path.exists():
            out.append(f"{relative}: missing")
        elif path.read_text(encoding="utf-8") != text:
            out.append(f"{relative}: differs from the model")
    return out
