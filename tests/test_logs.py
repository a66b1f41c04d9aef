"""Library messages (standard-library logging) come out like the daemon's own lines."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time

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


class _CharByChar(io.StringIO):
    """A stream that lets other threads in between any two characters of a write()."""

    def write(self, s: str) -> int:
        for ch in s:
            super().write(ch)
            time.sleep(0)
        return len(s)


def test_lines_from_threads_never_share_a_line() -> None:
    """The daemon's own lines (structlog) and the libraries' (stdlib logging, e.g. watchdog's
    observer thread) are written from different threads into the same stream."""
    buf = _CharByChar()
    logs.configure("json", "debug", buf)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def ours() -> None:
            for i in range(150):
                logs.get().info("reloaded", i=i)

        def library() -> None:
            for i in range(150):
                logging.getLogger("watchdog.observers").debug("in-event %d", i)

        threads = [threading.Thread(target=ours), threading.Thread(target=library)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 300
    events = [json.loads(line)["event"] for line in lines]
    assert events.count("reloaded") == 150
