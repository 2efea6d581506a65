"""Templates and pauses: the status and quality Zalo reports for a template, and the
pauses zns-gate adds when a template's own proxy quality over 7 days turns LOW (3 h the
first time, 6 h the second, disabled the third within the ladder's lookback), with
their ends.
"""

from __future__ import annotations

from datetime import datetime

from service.domain.fold.context import Run, from_ms, iso, to_ms
from service.domain.scoring import Level
from service.domain.state import WINDOW_7D, Template


def set_status(
    run: Run, template: Template, status: str, at: datetime, rule: str, **inputs: object
) -> None:
    """Zalo's status of the template: the latest event time wins. A -146 stays: it is
    Zalo's quality, which a status does not report."""
    if to_ms(at) < template.status_at:
        return
    before = template.status
    template.status, template.status_at = status, to_ms(at)
    if before != status:
        run.change("template", rule, before, status, at, template.template_id, **inputs)


def set_quality(run: Run, template: Template, quality: str, at: datetime, rule: str) -> None:
    """Zalo's quality of the template: the latest event time wins; any level but LOW lifts
    a -146."""
    if to_ms(at) < template.zalo_quality_at:
        return
    before = template.zalo_quality
    template.zalo_quality, template.zalo_quality_at = quality, to_ms(at)
    if quality != "LOW":
        template.zalo_disabled = False
    if before != quality:
        run.change("template", rule, before, quality, at, template.template_id)


def check_template(run: Run, template: Template, at: datetime) -> None:
    """Its proxy level after its counts changed; a turn to LOW pauses it
    (docs/rules.md#templates)."""
    level = template.proxy_level(run.now, run.thresholds)
    before = template.proxy_7d
    if level.value == before:
        return
    template.proxy_7d = level.value
    run.change(
        "quality",
        "template_proxy_7d",
        before,
        level.value,
        at,
        template.template_id,
        delivered=template.delivered.within(run.now, WINDOW_7D),
        negatives=template.negatives.within(run.now, WINDOW_7D),
    )
    if level is Level.LOW and not template.paused(to_ms(at)):
        pause(run, template, at)


def pause(run: Run, template: Template, at: datetime) -> None:
    ladder = run.thresholds.pause_ladder
    start = to_ms(at)
    recent = [p for p in template.pauses if p > start - ladder.lookback.total_seconds() * 1000]
    length = ladder.next_pause(len(recent))
    template.pauses = [*recent, start]
    if template.template_id not in run.state.paused_templates:
        run.state.paused_templates.append(template.template_id)
    if length is None:
        template.gate_disabled = True
        run.change(
            "pause",
            "template_disabled",
            "sendable",
            "disabled",
            at,
            template.template_id,
            pauses_in_lookback=len(recent),
        )
    else:
        template.paused_until = start + int(length.total_seconds() * 1000)
        run.change(
            "pause",
            "template_paused",
            "sendable",
            "paused",
            at,
            template.template_id,
            pause_s=int(length.total_seconds()),
            until=iso(from_ms(template.paused_until)),
            pauses_in_lookback=len(recent),
        )


def end_pauses(run: Run) -> None:
    """Pauses that ended by now; one that ends while the proxy is still LOW starts the
    next, which may itself have ended by now. Only the templates zns-gate holds are
    visited, so that bringing an OA to now costs the same with any number of templates."""
    state = run.state
    if not state.paused_templates:
        return
    now_ms = to_ms(run.now)
    held: list[str] = []
    for template_id in list(state.paused_templates):
        template = state.templates.get(template_id)
        if template is None or (template.paused_until is None and not template.gate_disabled):
            continue  # resumed or forgotten since
        while template.paused_until is not None and template.paused_until <= now_ms:
            ended = from_ms(template.paused_until)
            template.paused_until = None
            run.change("pause", "pause_ended", "paused", "sendable", ended, template.template_id)
            if template.proxy_level(ended, run.thresholds) is Level.LOW:
                pause(run, template, ended)
        if template.gate_disabled or template.paused_until is not None:
            held.append(template_id)
    state.paused_templates = held
