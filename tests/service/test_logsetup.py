"""Log output: JSON lines, journald's priority prefixes, and when stderr counts as the journal."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

import pytest

from pymgr.service.logsetup import JournalFormatter, JsonFormatter, make_handler, stderr_is_journal


def _record(message: str, level: int = logging.INFO, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("pymgr.tasks", level, __file__, 1, message, (), exc_info)


def test_json_lines_carry_time_level_logger_message_pid() -> None:
    entry = json.loads(JsonFormatter().format(_record("task 1 → running")))
    assert set(entry) == {"time", "level", "logger", "message", "pid"}
    assert (
        entry["level"] == "info"
        and entry["logger"] == "pymgr.tasks"
        and entry["message"] == "task 1 → running"
    )
    assert entry["time"].endswith("+00:00") and entry["pid"] == os.getpid()
    with_exc = json.loads(JsonFormatter().format(_record("failed", logging.ERROR, exc=True)))
    assert with_exc["exc"].startswith("Traceback") and with_exc["exc"].endswith("ValueError: boom")


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"), (logging.ERROR, "<3>")],
)
def test_journal_lines_start_with_the_syslog_priority(level: int, prefix: str) -> None:
    assert (
        JournalFormatter().format(_record("a\nb", level))
        == f"{prefix}{logging.getLevelName(level)} pymgr.tasks: a\n{prefix}b"
    )


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "x"})
        assert not stderr_is_journal(stream, {})
    assert not stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_handlers_by_format_and_target(tmp_path: Path) -> None:
    assert isinstance(make_handler("json", None, io.StringIO()).formatter, JsonFormatter)
    text = make_handler("text", None, io.StringIO())
    assert (
        text.formatter is not None
        and text.formatter._fmt == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    file_handler = make_handler("text", tmp_path / "logs" / "pymgr.log")
    assert isinstance(file_handler, logging.handlers.WatchedFileHandler)  # follows logrotate's moves
    file_handler.close()
    with pytest.raises(ValueError, match=r"^log format must be one of text, json, not 'xml'$"):
        make_handler("xml", None)  # type: ignore[arg-type]


def test_json_lines_carry_the_extra_fields_under_their_own_names() -> None:
    logger = logging.getLogger("pymgr.test.extra")
    stream = io.StringIO()
    handler = make_handler("json", None, stream)
    logger.addHandler(handler)
    try:
        logger.warning("task %s stopped", 3, extra={"task_id": 3, "where": Path("/x"), "level_hint": None})
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "task 3 stopped" and entry["level"] == "warning"
    assert (entry["task_id"], entry["where"], entry["level_hint"]) == (3, "/x", None)  # not JSON: its str
    assert set(entry) == {"time", "level", "logger", "message", "pid", "task_id", "where", "level_hint"}


def test_text_lines_start_with_the_utc_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        record = _record("ready")
        record.created = 1700000000.25  # 2023-11-14T22:13:20.250Z
        line = make_handler("text", None, io.StringIO()).format(record)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line == "2023-11-14T22:13:20.250+00:00 INFO pymgr.tasks: ready"
