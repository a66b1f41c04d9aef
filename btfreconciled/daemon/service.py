"""The event loop of btfreconciled: uevents, control socket, signals, timers, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import CacheError
from ..errors import ErrorCode
from . import config as config_mod
from . import logs
from .config import Config, ConfigError
from .control import MAX_REQUEST, SocketInUse, answer_line, prepare_socket_path
from .core import Daemon
from .engine import Engine
from .events import FileWatcher, UeventListener
from .notify import Notifier

# Control socket limits (the socket is untrusted input).
# Open at once. At the limit a new connection evicts the oldest idle one (waiting for a
# request: an idle client holds nothing, and a flood of them must not lock out a real
# `status`); only when none is idle does the new one get _BUSY and is closed.
MAX_CONNECTIONS = 64
_BACKLOG = 128
_ACCEPT_BACKOFF_MIN, _ACCEPT_BACKOFF_MAX = 0.05, 1.0  # retrying accept() after EMFILE...
_ACCEPT_LOG_INTERVAL = 60.0  # ...and reporting it at most once per this many seconds
_BUSY = json.dumps({"ok": False, "error": "btfreconciled is busy: too many control "
                   f"connections ({MAX_CONNECTIONS} open); try again",
                   "code": ErrorCode.BUSY.value}).encode() + b"\n"
_EVICTED = json.dumps({"ok": False, "error": "closed while idle: the daemon needed the slot for "
                      "a new control connection", "code": ErrorCode.EVICTED.value}).encode() + b"\n"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# Settings that only take effect on restart (reload keeps the running value and says so).
_RESTART_ONLY = ("cache_dir", "socket", "socket_mode", "socket_group", "vmlinux", "sysfs",
                 "events", "release", "netlink_rcvbuf", "modules_root", "accept_user_uevents")


class StartupError(Exception):
    """The daemon cannot start; one-line message."""


class Service:
    def __init__(self, cfg: Config, engine: Engine, *,
                 reload_config: Callable[[], Config] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.reload_config = reload_config
        self.notifier = notifier or Notifier()
        self.log = logs.get()
        self.daemon = Daemon(cfg, engine, notifier=self.notifier)
        self.listener: UeventListener | None = None
        self.watcher: FileWatcher | None = None
        self._listen_sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # connections waiting for a request, oldest first (insertion order), with their
        # writer; evicted ones until their task has ended (they no longer hold a slot)
        self._idle: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._evicted: set[asyncio.Task[None]] = set()
        self.control_stats = {"refused": 0, "timeouts": 0, "accept_errors": 0, "evicted": 0}
        self._accept_logged = -_ACCEPT_LOG_INTERVAL
        self._accept_suppressed = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self._rescan_scheduled = False
        self._poll_handle: asyncio.TimerHandle | None = None
        self._wd_handle: asyncio.TimerHandle | None = None
        self._socket_ino: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        d = self.daemon
        try:
            d.load_kernel()
        except CacheError as e:
            raise StartupError(str(e)) from None
        except FileNotFoundError as e:
            raise StartupError(f"{e.filename}: not found (the running kernel's vmlinux BTF; "
                               "needs CONFIG_DEBUG_INFO_BTF)") from None
        except PermissionError as e:
            hint = ""
            if e.filename and str(e.filename).startswith(str(self.cfg.cache_dir)):
                hint = " (run as root, or give an instance of your own --cache-dir DIR)"
            raise StartupError(f"{e.filename or 'start-up'}: permission denied{hint}") from None
        except OSError as e:
            raise StartupError(f"{e.filename or 'start-up'}: {e.strerror or e}") from None
        except Exception as e:  # a corrupt vmlinux BTF, an engine failure
            raise StartupError(f"cannot index the running kernel's BTF {self.cfg.vmlinux}: "
                               f"{type(e).__name__}: {e}") from None
        self._open_events()
        await self._open_control()
        for sig, fn in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                        (signal.SIGHUP, self.reload)):
            self.loop.add_signal_handler(sig, fn)
        d.start_worker()
        d.rescan("start-up")
        self._start_watcher()
        if d.event_source == "poll":
            self._schedule_poll()
        self.notifier.ready(f"watching {d.event_source}; reconciling loaded modules")
        self._schedule_watchdog()
        self.log.info("ready", socket=str(self.cfg.socket), events=d.event_source,
                      detail=d.event_source_detail, cache=str(self.cfg.cache_dir),
                      pid=os.getpid())
        await self.stopping.wait()
        await self._shutdown()
        return 0

    def request_stop(self) -> None:
        if self.stopping is not None and not self.stopping.is_set():
            self.log.info("stopping")
            self.notifier.stopping()
            self.stopping.set()

    async def _shutdown(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(BaseException):
                await self._accept_task
        if self._listen_sock is not None:
            self._listen_sock.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)
        self._remove_socket()
        if self.listener is not None:
            self.listener.close()
        if self.watcher is not None:
            self.watcher.stop()
        for h in (self._poll_handle, self._wd_handle):
            if h is not None:
                h.cancel()
        assert self.loop is not None
        await self.loop.run_in_executor(None, self.daemon.stop)
        self.log.info("stopped")

    # ------------------------------------------------------------------ events

    def _open_events(self) -> None:
        d = self.daemon
        if self.cfg.events == "poll":
            d.event_source, d.event_source_detail = "poll", "configured (events = \"poll\")"
            return
        listener = UeventListener(self._on_uevent, self._on_overflow,
                                  rcvbuf=self.cfg.netlink_rcvbuf,
                                  accept_user=self.cfg.accept_user_uevents,
                                  on_ignored=self._on_user_uevent)
        try:
            listener.open()
        except OSError as e:
            reason = f"netlink uevent socket unavailable: {e.strerror or e}"
            if self.cfg.events == "netlink":
                raise StartupError(reason) from None
            d.event_source = "poll"
            d.event_source_detail = f"fallback: {reason}; polling /sys/module every " \
                                    f"{self.cfg.poll_interval:g} s"
            self.log.warning("falling back to polling", reason=reason,
                             interval=self.cfg.poll_interval)
            return
        assert self.loop is not None
        listener.attach(self.loop)
        self.listener = listener
        d.event_source, d.event_source_detail = "netlink", "kernel uevents (NETLINK_KOBJECT_UEVENT)"

    def _on_uevent(self, action: str, name: str, when: float) -> None:
        self.daemon.on_event(action, name, when)

    def _on_user_uevent(self, sender: int) -> None:
        # debug only: whoever can send these could otherwise flood the log too
        self.log.debug("ignored a uevent from user space", sender_port=sender)

    def _on_overflow(self) -> None:
        self.daemon.stats.overflows += 1
        self.log.warning("uevent queue overflowed (ENOBUFS); rescanning /sys/module")
        self._schedule_rescan("overflow")

    def _schedule_rescan(self, reason: str, delay: float = 0.0) -> None:
        if self._rescan_scheduled or self.loop is None:
            return
        self._rescan_scheduled = True

        def go() -> None:
            self._rescan_scheduled = False
            self.daemon.rescan(reason)

        self.loop.call_later(delay, go)

    def _schedule_poll(self) -> None:
        assert self.loop is not None

        def tick() -> None:
            try:
                self.daemon.poll_once()
            except Exception as e:  # never let polling kill the loop
                self.log.error("polling /sys/module failed", error=f"{type(e).__name__}: {e}")
            self._poll_handle = self.loop.call_later(self.cfg.poll_interval, tick)  # type: ignore[union-attr]

        self._poll_handle = self.loop.call_later(self.cfg.poll_interval, tick)

    def _schedule_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if not interval or self.loop is None:
            return

        def tick() -> None:
            w = self.daemon._worker
            if w is not None and w.is_alive():
                self.notifier.watchdog()
            else:
                self.log.error("worker thread died; withholding watchdog ping")
            self._wd_handle = self.loop.call_later(interval / 2, tick)  # type: ignore[union-attr]

        tick()

    def _start_watcher(self) -> None:
        if not self.cfg.watch_files:
            return
        dirs: list[tuple[Path, bool]] = [(self.cfg.modules_dir(), False)]
        dirs += [(p, True) for p in self.cfg.extra_module_dirs]
        assert self.loop is not None
        loop = self.loop
        def on_modules() -> None:
            loop.call_soon_threadsafe(self._modules_changed)

        def on_config() -> None:
            loop.call_soon_threadsafe(self.reload, "config file changed")

        try:
            self.watcher = FileWatcher(dirs, self.cfg.source, on_modules=on_modules,
                                       on_config=on_config,
                                       ignore=[self.cfg.cache_dir])
            self.watcher.start()
            self.daemon.watching = self.watcher.watched
        except Exception as e:  # inotify limits, unreadable dirs: events still work
            self.log.warning("cannot watch module directories", error=f"{type(e).__name__}: {e}")
            self.watcher = None

    def _modules_changed(self) -> None:
        assert self.loop is not None
        self.loop.run_in_executor(None, self.daemon.modules_changed)

    # ------------------------------------------------------------------ reload

    def reload(self, why: str = "SIGHUP") -> None:
        self.notifier.reloading()
        if self.reload_config is not None:
            try:
                new = self.reload_config()
            except ConfigError as e:
                self.log.error("configuration not reloaded", reason=why, error=str(e))
                self.notifier.send("READY=1", f"STATUS={self.daemon.status_line()}")
                return
            self._apply(new)
        self.log.info("reloaded", reason=why)
        self.daemon.repair_cache()
        self.daemon.refresh_module_index()
        if self.cfg.gc:
            self.daemon.gc()
        self.daemon.rescan(why)
        self.notifier.send("READY=1", f"STATUS={self.daemon.status_line()}")

    def _apply(self, new: Config) -> None:
        old = self.cfg
        for key in _RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                self.log.warning("setting changes only on restart", key=key,
                                 running=str(getattr(old, key)), configured=str(getattr(new, key)))
                setattr(new, key, getattr(old, key))
        watch_changed = (new.extra_module_dirs != old.extra_module_dirs
                         or new.watch_files != old.watch_files)
        self.cfg = new
        self.daemon.cfg = new
        logs.configure(new.log_format, new.log_level)
        self.log = logs.get()
        self.daemon.log = self.log
        if watch_changed:
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
            self._start_watcher()

    # ------------------------------------------------------------------ control socket

    async def _open_control(self) -> None:
        path = self.cfg.socket
        try:
            prepare_socket_path(path)
        except SocketInUse as e:
            raise StartupError(str(e)) from None
        except PermissionError:
            raise StartupError(f"{path}: permission denied (run as root, or give an instance "
                               "of your own --socket PATH)") from None
        except OSError as e:
            raise StartupError(f"{path.parent}: {e.strerror or e}") from None
        gid = self.cfg.socket_gid()
        # The socket is made under a private name and linked into place only once it
        # listens with its final group and mode: a client that sees `path` can connect
        # (no ECONNREFUSED while start-up is between bind and listen), and link(2), unlike
        # bind over a stale name, fails if another daemon took `path` meanwhile.
        staging = path.with_name(f".s{os.getpid()}")
        self._remove_socket_file(staging)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # no window in which the socket is more open than configured
        try:
            sock.bind(str(staging))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            self._remove_socket_file(staging)
            raise StartupError(f"{path}: cannot listen: {e.strerror or e}") from None
        finally:
            os.umask(old)
        try:
            try:
                if gid is not None:
                    os.chown(staging, -1, gid)
                os.chmod(staging, self.cfg.socket_mode)
            except OSError as e:
                raise StartupError(f"{path}: cannot set group {self.cfg.socket_group!r} / "
                                   f"mode {self.cfg.socket_mode:04o}: {e.strerror or e}"
                                   ) from None
            try:
                os.link(staging, path)
            except FileExistsError:
                raise StartupError(f"another btfreconciled is already listening on {path}"
                                   ) from None
            except OSError as e:
                raise StartupError(f"{path}: cannot listen: {e.strerror or e}") from None
        except StartupError:
            sock.close()
            raise
        finally:
            self._remove_socket_file(staging)
        self._socket_ino = os.stat(path).st_ino
        self._listen_sock = sock
        assert self.loop is not None
        self._accept_task = self.loop.create_task(self._accept_loop(sock))

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Our own accept loop rather than asyncio's server: asyncio logs every failed
        accept (EMFILE while fds are exhausted: a traceback per retry) and has neither a
        connection limit nor per-connection deadlines."""
        assert self.loop is not None
        loop = self.loop
        backoff = _ACCEPT_BACKOFF_MIN
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EINTR, errno.EAGAIN):
                    continue
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: the connection waits in the backlog; try
                # again later, slower and slower, and say so once per interval.
                self.control_stats["accept_errors"] += 1
                self._log_accept_error(e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _ACCEPT_BACKOFF_MAX)
                continue
            backoff = _ACCEPT_BACKOFF_MIN
            if len(self._connections) - len(self._evicted) >= MAX_CONNECTIONS \
                    and not self._evict_idle():
                self.control_stats["refused"] += 1
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(_BUSY)  # small: fits in an empty socket buffer at once
                conn.close()
                continue
            task = loop.create_task(self._client(conn))
            self._connections.add(task)
            task.add_done_callback(self._connection_done)
            # sock_accept returns without yielding while connections wait in the backlog:
            # let the new client read its request before the next accept, so that a burst
            # of idle connections never evicts one whose request has already arrived
            await asyncio.sleep(0)

    def _evict_idle(self) -> bool:
        """Close the oldest connection still waiting for a request; False if none is."""
        for task, writer in self._idle.items():
            del self._idle[task]
            self._evicted.add(task)
            self.control_stats["evicted"] += 1
            with contextlib.suppress(Exception):
                writer.write(_EVICTED)
                writer.close()  # the client's readline then ends: its task finishes
            return True
        return False

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._evicted.discard(task)
        self._idle.pop(task, None)

    def _log_accept_error(self, e: OSError) -> None:
        now = time.monotonic()
        self._accept_suppressed += 1
        if now - self._accept_logged < _ACCEPT_LOG_INTERVAL:
            return
        self.log.error("cannot accept control connections; retrying",
                       error=e.strerror or str(e), failures=self._accept_suppressed,
                       next_report_s=_ACCEPT_LOG_INTERVAL)
        self._accept_logged = now
        self._accept_suppressed = 0

    @staticmethod
    def _remove_socket_file(path: Path) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _remove_socket(self) -> None:
        try:
            if os.stat(self.cfg.socket).st_ino == self._socket_ino:
                os.unlink(self.cfg.socket)
        except OSError:
            pass

    def _loop_stats(self) -> dict[str, int]:
        """Counters kept by the event loop itself, merged into `status`'s stats."""
        lis = self.listener
        return {"user_uevents_ignored": lis.ignored if lis is not None else 0,
                "control_connections": len(self._connections),
                **{f"control_{k}": v for k, v in self.control_stats.items()}}

    async def _client(self, conn: socket.socket) -> None:
        peer_uid = _peer_uid(conn)
        # config key control_timeout (default 10 s): to send a whole request line, which is
        # also the idle limit between requests, and to take the answer
        timeout = self.cfg.control_timeout
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST)
        except OSError:
            conn.close()
            return
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                try:
                    # The whole line within the deadline: a silent or dripping client
                    # cannot hold one of the MAX_CONNECTIONS slots for longer; while it
                    # waits, it is the first to go when the slots run out.
                    if task not in self._evicted:
                        self._idle[task] = writer
                    try:
                        line = await asyncio.wait_for(reader.readline(), timeout)
                    finally:
                        self._idle.pop(task, None)
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(json.dumps({"ok": False, "error": "request too long",
                                             "code": ErrorCode.BAD_REQUEST.value}).encode()
                                 + b"\n")
                    break
                except TimeoutError:
                    self.control_stats["timeouts"] += 1
                    writer.write(json.dumps({
                        "ok": False, "error": f"no complete request within {timeout:g} s",
                        "code": ErrorCode.TIMEOUT.value}).encode() + b"\n")
                    break
                if not line or task in self._evicted:
                    break
                if not line.strip():
                    continue
                writer.write(answer_line(self.daemon, line, extra_stats=self._loop_stats,
                                         peer_uid=peer_uid))
                # a client that does not read its answer is cut off too
                await asyncio.wait_for(writer.drain(), timeout)
        except TimeoutError:
            self.control_stats["timeouts"] += 1
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's uid (SO_PEERCRED, set by the kernel at connect time)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return _UCRED.unpack(creds)[1]


def reload_from(path: Path | None, overrides: dict[str, Any], *, required: bool) -> Config:
    cfg = config_mod.load(path, required=required)
    for key, value in overrides.items():
        if key == "extra_module_dirs":
            cfg.extra_module_dirs = [*cfg.extra_module_dirs, *value]
        else:
            setattr(cfg, key, value)
    return cfg
