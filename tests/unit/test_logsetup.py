"""Log lines: JSON when not on a terminal, the component always named, secrets redacted."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from service.logsetup import configure_logging, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    yield out
    configure_logging("INFO", json=True)  # as the rest of the session has it


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_name_the_component_and_context(stream: io.StringIO) -> None:
    log = get_logger("receiver")
    log.info("accepted", oa_id="388613280878808645", event_name="user_feedback")
    [line] = lines(stream)
    assert line["component"] == "receiver"
    assert line["oa_id"] == "388613280878808645"
    assert line["event_name"] == "user_feedback"
    assert line["event"] == "accepted"
    assert line["level"] == "info"
    assert "timestamp" in line


def test_known_sensitive_fields_are_redacted(stream: io.StringIO) -> None:
    get_logger("receiver").warning(
        "oops", secret="oa-secret-key", note="my phone is 0901234567", feedbacks=["rude"]
    )
    text = stream.getvalue()
    assert "oa-secret-key" not in text
    assert "0901234567" not in text
    assert "rude" not in text
    [line] = lines(stream)
    assert line["secret"] == line["note"] == line["feedbacks"] == "[redacted]"


def test_library_lines_are_json_with_their_library_as_component(stream: io.StringIO) -> None:
    logging.getLogger("aiokafka.consumer").warning("rebalancing")
    [line] = lines(stream)
    assert line["component"] == "aiokafka"
    assert line["event"] == "rebalancing"


def test_a_terminal_gets_readable_lines() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    configure_logging("INFO", stream=out)
    try:
        get_logger("cli").info("starting", port=8080)
    finally:
        configure_logging("INFO", json=True)
    text = out.getvalue()
    assert "starting" in text
    assert "port" in text
    assert not text.lstrip().startswith("{")


def test_exception_text_in_log_lines_is_redacted(stream: io.StringIO) -> None:
    try:
        raise ValueError("while reading Authorization: Bearer abc-secret-789 from /x?key=qs-1")
    except ValueError:
        get_logger("http").exception("unhandled error")
    text = stream.getvalue()
    assert "abc-secret-789" not in text, text
    assert "qs-1" not in text, text
    [line] = [orjson.loads(line) for line in text.splitlines()]
    assert "ValueError" in str(line["exception"])
