"""Where module load/unload events come from.

* :class:`UeventListener` -- the design: kernel uevents on NETLINK_KOBJECT_UEVENT (group 1),
  parsed with pyroute2's uevent marshal, read from the daemon's event loop.  The socket is a
  plain non-blocking datagram socket so that a receive-queue overflow (ENOBUFS) surfaces as
  exactly that and the caller can rescan; pyroute2 0.9's socket wrapper runs its own event
  loop and turns an overflow into a permanently failed socket, and 0.7 (Debian trixie) has a
  different API, while ``MarshalUevent`` parses the same in both.
* :func:`scan_sysfs` -- the full rescan of ``/sys/module`` (start-up, overflow, SIGHUP).
* :class:`FileWatcher` -- watchdog on the module trees and the config file.
* Polling of ``/sys/module`` is the fallback when netlink is unavailable; the daemon
  drives it with :func:`scan_sysfs` on a timer and reports it in ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..cache import normalize_module_name

# pyroute2 is imported when the listener is created, after the vmlinux index is built: its
# ~20 MB of modules then do not add to the start-up memory peak.

KERNEL_GROUP = 1  # MONITOR_GROUP_KERNEL: the kernel's own events (udev re-broadcasts on 2)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

ModuleEvent = Callable[[str, str, float], None]  # action, module name, receive time
Overflow = Callable[[], None]


def _marshal() -> Any:
    from pyroute2.netlink.uevent import MarshalUevent

    return MarshalUevent()


def parse_uevent(data: bytes, marshal: Any = None) -> list[tuple[str, str]]:
    """``add@/module/foo ACTION=add DEVPATH=/module/foo SUBSYSTEM=module`` -> [("add", "foo")].

    Only module add/remove events are returned; everything else is ignored.
    """
    marshal = marshal or _marshal()
    out: list[tuple[str, str]] = []
    try:
        msgs = list(marshal.parse(data))
    except (UnicodeDecodeError, ValueError, IndexError):
        return out
    for msg in msgs:
        action = msg.get("ACTION")
        devpath = msg.get("DEVPATH") or ""
        subsystem = msg.get("SUBSYSTEM")
        if action is None or not devpath:
            # Fall back to the "add@/module/foo" header line.
            head = str(msg.get("header", {}).get("message", ""))
            action, _, devpath = head.partition("@")
            subsystem = "module" if devpath.startswith("/module/") else subsystem
        if subsystem != "module" or action not in ("add", "remove"):
            continue
        parts = devpath.split("/")
        if len(parts) != 3 or parts[1] != "module" or not parts[2]:
            continue
        out.append((action, normalize_module_name(parts[2])))
    return out


class UeventListener:
    """NETLINK_KOBJECT_UEVENT reader integrated into an asyncio loop."""

    def __init__(self, on_event: ModuleEvent, on_overflow: Overflow, *,
                 rcvbuf: int = 4 * 1024 * 1024, accept_user: bool = False,
                 on_ignored: Callable[[int], None] | None = None) -> None:
        self.on_event = on_event
        self.on_overflow = on_overflow
        self.rcvbuf = rcvbuf
        # Multicast group 1 is not kernel-only: any process with CAP_NET_ADMIN in the
        # socket's network namespace (and udevd, which re-broadcasts there on some setups)
        # can send to it.  A forged `add@/module/x` costs a reconciliation and would make
        # us publish for a module that is not loaded, so only nl_pid 0 (the kernel) counts
        # unless a test bench explicitly asks for user-space senders.
        self.accept_user = accept_user
        self.on_ignored = on_ignored
        self.ignored = 0
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.marshal = _marshal()
        self.received = 0
        self.overflows = 0

    def open(self) -> None:
        """Create and bind the socket; raises OSError when netlink is unavailable."""
        from pyroute2.netlink import NETLINK_KOBJECT_UEVENT

        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             NETLINK_KOBJECT_UEVENT)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, KERNEL_GROUP))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.sock is not None
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        for _ in range(1024):  # bounded, so one flood cannot starve the control socket
            try:
                data, (sender, _groups) = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    self.on_overflow()
                    continue
                if e.errno == errno.EINTR:
                    continue
                raise
            if sender != 0 and not self.accept_user:
                self.ignored += 1
                if self.on_ignored is not None:
                    self.on_ignored(sender)
                continue
            now = _now()
            self.received += 1
            for action, name in parse_uevent(data, self.marshal):
                self.on_event(action, name, now)

    def close(self) -> None:
        if self.sock is not None:
            if self.loop is not None:
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


def _now() -> float:
    import time

    return time.monotonic()


def scan_sysfs(sysfs: Path) -> dict[str, str]:
    """The modules in ``<sysfs>/module``: name -> "loadable" | "builtin" | "going".

    A loadable module has ``initstate``; a built-in module with parameters has a directory
    without it.  A module being unloaded (``initstate`` = going) is reported as such.
    """
    out: dict[str, str] = {}
    try:
        entries = list(os.scandir(sysfs / "module"))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            with open(os.path.join(entry.path, "initstate")) as f:
                state = f.read().strip()
        except FileNotFoundError:
            out[normalize_module_name(entry.name)] = "builtin"
            continue
        except OSError:
            state = "live"
        out[normalize_module_name(entry.name)] = "going" if state == "going" else "loadable"
    return out


_TREE_FILES = ("modules.dep", "modules.dep.bin", "modules.builtin", "modules.order")


def _is_module_tree_file(path: str, ignored: tuple[str, ...]) -> bool:
    """A change that can alter module lookup: a module file or depmod's index, outside the
    daemon's own cache (which may sit below a watched directory)."""
    if path.startswith(ignored):
        return False
    base = os.path.basename(path)
    if base.startswith("."):
        return False  # editors' and our own temporary files
    return base in _TREE_FILES or bool(_KO_NAME.match(base))


_KO_NAME = re.compile(r"^.+\.ko(?:\.(?:xz|zst|gz))?$")


class FileWatcher:
    """watchdog observer on module directories and the config file.

    ``on_modules`` fires when a module tree changes (new build, depmod), ``on_config`` when
    the config file is written; both are called from the observer's thread, debounced.
    """

    def __init__(self, module_dirs: Iterable[tuple[Path, bool]], config: Path | None,
                 on_modules: Callable[[], None], on_config: Callable[[], None],
                 debounce: float = 0.3, ignore: Iterable[Path] = ()) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.observer: Any = Observer()
        self.observer.daemon = True
        self.watched: list[str] = []
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        self.debounce = debounce
        outer = self
        config_path = str(config) if config else None
        ignored = tuple(str(p).rstrip("/") + "/" for p in ignore)

        class Handler(FileSystemEventHandler):
            def __init__(self, kind: str) -> None:
                self.kind = kind

            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = {os.fsdecode(event.src_path),
                         os.fsdecode(getattr(event, "dest_path", "") or "")}
                if self.kind == "config":
                    if config_path in paths:
                        outer._fire("config", on_config)
                elif any(_is_module_tree_file(p, ignored) for p in paths if p):
                    outer._fire("modules", on_modules)

        for d, recursive in module_dirs:
            if d.is_dir():
                self.observer.schedule(Handler("modules"), str(d), recursive=recursive)
                self.watched.append(str(d))
        if config is not None and config.parent.is_dir():
            self.observer.schedule(Handler("config"), str(config.parent), recursive=False)
            self.watched.append(str(config))

    def _fire(self, key: str, fn: Callable[[], None]) -> None:
        with self._lock:
            old = self._timers.get(key)
            if old is not None:
                old.cancel()
            t = threading.Timer(self.debounce, fn)
            t.daemon = True
            self._timers[key] = t
            t.start()

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        with self._lock:
            for t in self._timers.values():
                t.cancel()
        with contextlib.suppress(Exception):
            self.observer.stop()
            self.observer.join(timeout=2)
