"""structlog set-up: JSON under systemd or when not on a terminal, key=value on a terminal."""

from __future__ import annotations

import logging
import os
import sys
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
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return as_json


def get(name: str = "btfreconciled") -> Any:
    return structlog.get_logger(name)
