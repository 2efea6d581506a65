"""Structured logging: JSON lines for machines, readable lines on a terminal.

Every logger is made with `get_logger(component)`, so each line names the
component that wrote it; `oa_id` and `event_name` are bound where they are
known (`log.bind(oa_id=...)` or `bind_contextvars`). Secrets and users' free
text must never be passed to a logger: the redaction step below is a safety
net for known field names, not a licence.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from structlog.typing import EventDict, WrappedLogger

# Field names whose values never reach a log line, whoever passes them.
REDACTED_KEYS = frozenset(
    {"secret", "secrets", "token", "authorization", "note", "feedbacks", "phone", "signature"}
)


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


# Exception text quotes whatever the code was handling: header lines, URLs, values.
_SENSITIVE_TEXT = (
    (
        re.compile(r"(?i)\b(authorization|cookie|x-zevent-signature)(\s*[:=]\s*)[^\r\n'\"\\]*"),
        r"\1\2[redacted]",
    ),
    (re.compile(r"(?i)\bbearer\s+[^\s'\"\\]+"), "Bearer [redacted]"),
    (re.compile(r"(?i)\bmac=[0-9a-f]+"), "mac=[redacted]"),
    (re.compile(r"\?[^\s'\"\\]+"), "?[redacted]"),
)


def redact_text(text: str) -> str:
    """`text` without bearer tokens, signatures and query strings."""
    for pattern, replacement in _SENSITIVE_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _redact_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    exception = event_dict.get("exception")
    if isinstance(exception, str):
        event_dict["exception"] = redact_text(exception)
    return event_dict


class _RefusedRequests(logging.Filter):
    """aiohttp's server logs a request it could not parse (or whose body would not decode)
    at ERROR with a traceback that quotes the offending bytes: a header line with its
    bearer token, a request line with its query string. Such a request is the client's
    fault: one WARNING line, naming the kind of fault and not its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            # "Error handling request from %s" names the peer; other such lines do not.
            if isinstance(record.args, tuple) and record.args:
                record.remote = record.args[0]
            record.msg, record.args = "request refused", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.fault = type(exc).__name__
        return True


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Configure structlog and the standard library's logging (aiohttp, aiokafka) alike.

    `json=None` chooses by the stream: readable on a terminal, JSON lines otherwise.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        # Drop lines below the level first, before any work is done on them.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            _library_component,
            structlog.stdlib.ExtraAdder(allow=("remote", "fault")),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_exception,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our own request metrics; keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _RefusedRequests) for f in server.filters):
        server.addFilter(_RefusedRequests())


def _library_component(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Lines from aiohttp, aiokafka and others name their library as the component."""
    record = event_dict.get("_record")
    if "component" not in event_dict and record is not None:
        event_dict["component"] = record.name.split(".")[0]
    return event_dict


def get_logger(component: str, **context: Any) -> structlog.stdlib.BoundLogger:
    """A logger whose every line carries `component` (and any other context given)."""
    # Lazy: a module-level logger made before `configure_logging` still follows it.
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(
        component, component=component, **context
    )
    return logger
