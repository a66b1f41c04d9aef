"""The control protocol: one JSON object per line each way over a unix stream socket.

Request:  ``{"cmd": "status" | "list" | "show" | "path" | "rescan", "module": NAME?}``;
          ``path`` also takes ``"merged": true`` (without a module: ``merged/all.btf``)
Response: ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line", "code": "..."}``
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import CacheError, check_module_name
from ..errors import ErrorCode

MAX_REQUEST = 64 * 1024
COMMANDS = ("status", "list", "show", "path", "rescan", "ping")
STATE_CHANGING = ("rescan",)


def _may_change_state(uid: int | None) -> bool:
    return uid is None or uid in (0, os.geteuid())


class ControlError(Exception):
    """A request cannot be answered (unknown command, unknown module, ...); `code` goes out
    as the answer's "code", the one thing a client decides on."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


StatsHook = Callable[[], dict[str, int]]


def handle_request(daemon: Any, req: Any, *, extra_stats: StatsHook | None = None,
                   peer_uid: int | None = None) -> dict[str, Any]:
    """Answer one decoded request from the daemon's state (thread-safe on the daemon side).

    ``extra_stats`` adds the event loop's own counters (ignored uevents, refused
    connections...) to ``status``'s ``stats``.  ``peer_uid`` is the client's uid from
    SO_PEERCRED (None: an in-process caller, trusted)."""
    if not isinstance(req, dict):
        raise ControlError("request must be a JSON object")
    cmd = req.get("cmd")
    if cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd!r} (expected one of: {', '.join(COMMANDS)})")
    if cmd == "ping":
        return {"ok": True}
    if cmd == "status":
        st = {"ok": True, **daemon.status()}
        if extra_stats is not None:
            st["stats"] = {**st.get("stats", {}), **extra_stats()}
        return st
    if cmd == "list":
        return {"ok": True, "modules": daemon.list_modules()}
    if cmd in STATE_CHANGING and not _may_change_state(peer_uid):
        # socket_mode/socket_group open the socket to a group for reading the state; what
        # costs the daemon work stays with root (and the daemon's own user).
        raise ControlError(f"{cmd}: permission denied (only root may ask for it)",
                           ErrorCode.PERMISSION_DENIED)
    if cmd == "rescan":
        return {"ok": True, "queued": daemon.rescan("request")}
    merged = req.get("merged", False)
    if not isinstance(merged, bool):
        raise ControlError("merged must be true or false")
    raw = req.get("module")
    if cmd == "path" and merged and raw is None:
        path, modules, why = daemon.all_merged_path()
        return {"ok": True, "module": None, "merged": path, "modules": modules,
                "reason": why or None}
    if not isinstance(raw, str) or not raw:
        raise ControlError(f"{cmd}: missing module name")
    try:
        name = check_module_name(raw.removesuffix(".ko"))
    except CacheError as e:
        raise ControlError(str(e)) from None
    rec = daemon.show(name)
    if rec is None:
        pending = daemon.is_pending(name)
        what = "is being processed" if pending else "is not loaded (not in /sys/module)"
        raise ControlError(f"module {name} {what}",
                           ErrorCode.PENDING if pending else ErrorCode.UNKNOWN_MODULE)
    if cmd == "show":
        return {"ok": True, "record": rec}
    # path
    resp = {"ok": True, "module": name, "verdict": rec["verdict"], "summary": rec["summary"],
            "btf": daemon.published_btf(name)}
    if merged:
        path, why = daemon.merged_path(name)
        resp.update(merged=path, reason=why or None)
    return resp


def answer_line(daemon: Any, line: bytes, *, extra_stats: StatsHook | None = None,
                peer_uid: int | None = None) -> bytes:
    try:
        req = json.loads(line)
        resp = handle_request(daemon, req, extra_stats=extra_stats, peer_uid=peer_uid)
    except ValueError as e:
        resp = {"ok": False, "error": f"invalid JSON request: {e}",
                "code": ErrorCode.BAD_REQUEST.value}
    except ControlError as e:
        resp = {"ok": False, "error": str(e), "code": e.code.value}
    except Exception as e:  # a bug answering one request never kills the daemon
        resp = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}",
                "code": ErrorCode.INTERNAL.value}
    return (json.dumps(resp, sort_keys=False) + "\n").encode()


# ---------------------------------------------------------------------- socket file handling


class SocketInUse(Exception):
    pass


def prepare_socket_path(path: Path) -> None:
    """Make the parent directory; remove a stale socket; refuse if a daemon answers there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: left by a daemon that died
            return
        raise SocketInUse(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    raise SocketInUse(f"another btfreconciled is already listening on {path}")


# ---------------------------------------------------------------------- client side


class ClientError(Exception):
    """The daemon could not be reached or answered with an error; one-line message."""


DEFAULT_TIMEOUT = 30.0
# The longest answer we read (a `list` of thousands of modules is a few MB): a peer that
# streams forever must not grow our memory without bound.
MAX_ANSWER = 64 * 1024 * 1024


def _connect(s: socket.socket, p: str, remaining: Callable[[], float]) -> None:
    """Connect, waiting while the daemon's listen backlog is full.

    A socket with a timeout is non-blocking underneath, and an AF_UNIX connect to a full
    backlog then fails at once with EAGAIN instead of waiting (as a blocking one would) for
    the daemon to accept: retry until the caller's deadline."""
    pause = 0.005
    while True:
        try:
            s.connect(p)
            return
        except BlockingIOError:
            time.sleep(min(pause, remaining()))
            pause = min(pause * 2, 0.1)
            s.settimeout(remaining())


def _connect_or_explain(s: socket.socket, p: str, remaining: Callable[[], float]) -> None:
    """Connect, or a ClientError that says what an operator can do about it."""
    try:
        _connect(s, p, remaining)
    except FileNotFoundError:
        raise ClientError(f"btfreconciled is not running (no control socket at {p})") from None
    except ConnectionRefusedError:
        raise ClientError(f"btfreconciled is not running (nothing listens on {p}; "
                          "stale socket)") from None
    except PermissionError:
        raise ClientError(f"permission denied connecting to {p}: the control socket is "
                          "root-only by default (run as root, or set socket_mode/"
                          "socket_group in the daemon's config)") from None
    except TimeoutError:
        remaining()
        raise ClientError(f"cannot connect to {p}: timed out") from None
    except OSError as e:
        raise ClientError(f"cannot connect to {p}: {e.strerror or e}") from None


def _read_line(s: socket.socket, p: str, remaining: Callable[[], float], max_answer: int
               ) -> tuple[bytearray, int]:
    """The bytes received up to the first newline, and where it is."""
    buf = bytearray()
    while True:
        if len(buf) > max_answer:
            raise ClientError(f"answer from {p} is longer than {max_answer} bytes")
        s.settimeout(remaining())
        chunk = s.recv(1 << 16)
        if not chunk:
            raise ClientError(f"btfreconciled closed the connection on {p} without "
                              "answering")
        if (pos := chunk.find(b"\n")) >= 0:  # only the new bytes: linear time
            end = len(buf) + pos
            buf += chunk
            return buf, end
        buf += chunk


def request(path: str | os.PathLike[str], req: dict[str, Any],
            timeout: float = DEFAULT_TIMEOUT, *,
            max_answer: int = MAX_ANSWER) -> dict[str, Any]:
    """Send one request and return the decoded response (``ok`` may be false).

    ``timeout`` bounds the whole exchange, not each read: a peer dripping one byte a second
    is given up on like a silent one."""
    p = str(path)
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientError(f"btfreconciled did not answer within {timeout:g} s on {p}")
        return left

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        _connect_or_explain(s, p, remaining)
        try:
            s.settimeout(remaining())
            s.sendall((json.dumps(req) + "\n").encode())
            buf, end = _read_line(s, p, remaining, max_answer)
        except TimeoutError:
            raise ClientError(f"btfreconciled did not answer within {timeout:g} s on "
                              f"{p}") from None
        except OSError as e:
            raise ClientError(f"lost connection to btfreconciled on {p}: "
                              f"{e.strerror or e}") from None
        try:
            resp = json.loads(bytes(buf[:end]))
        except (ValueError, RecursionError):
            raise ClientError(f"unreadable answer from {p}") from None
        if not isinstance(resp, dict):
            raise ClientError(f"unreadable answer from {p}")
        return resp
    finally:
        s.close()
