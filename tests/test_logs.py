"""Library messages (standard-library logging) come out like the daemon's own lines."""

from __future__ import annotations

import io
import json
import logging

from btfreconciled.daemon import logs


def test_stdlib_records_are_json_lines_under_systemd() -> None:
    buf = io.StringIO()
    logs.configure("json", "debug", buf)
    logging.getLogger("asyncio").debug("Using selector: %s", "EpollSelector")
    logging.getLogger("pyroute2.netlink").warning("odd message %d", 3, extra={"fd": 7})
    try:
        raise OSError(105, "No buffer space available")
    except OSError:
        logging.getLogger("watchdog.observers").exception("emitter failed")
    logs.get().info("ready", pid=1)
    recs = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(r["event"], r.get("logger"), r["level"]) for r in recs] == [
        ("Using selector: EpollSelector", "asyncio", "debug"),
        ("odd message 3", "pyroute2.netlink", "warning"),
        ("emitter failed", "watchdog.observers", "error"),
        ("ready", None, "info"),
    ]
    assert recs[1]["fd"] == 7 and all("timestamp" in r for r in recs)
    assert "No buffer space available" in recs[2]["exception"]


def test_reconfigure_replaces_the_handler_and_applies_the_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("json", "debug", first)
    logs.configure("json", "warning", second)
    logging.getLogger("pyroute2").info("not shown")
    logging.getLogger("pyroute2").error("shown")
    assert first.getvalue() == ""
    assert [json.loads(x)["event"] for x in second.getvalue().splitlines()] == ["shown"]


def test_console_format_is_key_value() -> None:
    buf = io.StringIO()
    logs.configure("console", "info", buf)
    logging.getLogger("watchdog").warning("inotify watch limit reached")
    line = buf.getvalue().strip()
    assert "inotify watch limit reached" in line and "[watchdog]" in line
    assert not line.startswith("{")
