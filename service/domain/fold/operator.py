"""Operator commands: resuming a suspended OA, and lifting a template's pause or the
disable zns-gate set. A command has no event time: it takes effect at the OA's "now".
"""

from __future__ import annotations

from datetime import datetime

from service.domain.fold.context import Run
from service.domain.records import CommandRecord


def command(run: Run, record: CommandRecord, at: datetime) -> None:
    state = run.state
    if record.action == "resume_oa":
        if state.suspended:
            state.suspended = False
            run.change("suspension", "resume_oa", True, False, at, reason=state.suspended_reason)
            state.suspended_reason = None
    elif record.template_id is not None:
        template = state.template(record.template_id)
        if template.gate_disabled or template.paused_until is not None:
            before = "disabled" if template.gate_disabled else "paused"
            template.paused_until = None
            template.gate_disabled = False
            run.change("pause", "resume_template", before, "sendable", at, record.template_id)
