"""structlog set-up: JSON under systemd or when not on a terminal, key=value on a terminal.

Libraries log through the standard library instead (pyroute2, watchdog, asyncio): their
records go through the same processors and renderer, so under systemd every line the service
writes is one JSON object (a plain-text "Task exception was never retrieved" from asyncio
would otherwise land in the journal between the JSON lines).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def use_json(fmt: str, stream: TextIO, env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    if env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"):
        return True
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> bool:
    """Configure structlog for the daemon; returns True when logging JSON."""
    stream = stream or sys.stderr
    as_json = use_json(fmt, stream)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors += [structlog.processors.format_exc_info,
                       structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    # One lock for both writers: the daemon's lines and the libraries' come from different
    # threads (event loop, worker, watchdog's observer).  structlog's PrintLogger and
    # logging.StreamHandler each lock only themselves, and print() writes the line and its
    # newline separately: the VM test caught two JSON objects on one journal line.
    lock = threading.RLock()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *_args: _LineLogger(stream, lock),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(processors, level, stream, lock)
    return as_json


class _LineLogger:
    """structlog's final logger: each line in one write, under the lock shared with the
    standard-library handler."""

    def __init__(self, stream: TextIO, lock: threading.RLock) -> None:
        self.stream = stream
        self.lock = lock

    def msg(self, message: str) -> None:
        with self.lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = msg


class _StdlibHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a reconfigure replaces it."""


def _route_stdlib(processors: list[Any], level: str, stream: TextIO,
                  lock: threading.RLock) -> None:
    """Render standard-library log records with structlog's processors (JSON or key=value),
    with the library's logger name under "logger"."""
    *pre_chain, renderer = processors
    if isinstance(renderer, structlog.processors.JSONRenderer):
        pre_chain.pop()  # format_exc_info runs in the formatter chain below instead
        chain = [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                 structlog.processors.format_exc_info, renderer]
    else:
        chain = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=chain,
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *pre_chain,
                           structlog.stdlib.ExtraAdder()],
    )
    handler = _StdlibHandler(stream)
    handler.lock = lock  # emit() writes record + newline in one write() under this lock
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StdlibHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))


def get(name: str = "btfreconciled") -> Any:
    return structlog.get_logger(name)
