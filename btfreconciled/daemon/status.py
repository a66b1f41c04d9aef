"""What the daemon reports (part of :class:`~.core.Daemon`): the answers of the control
socket (status, list, show, path, merged paths) and the manifest file, all read from the
in-memory module views under the daemon's lock.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cache import SERVED_VERDICTS, Cache, describe_os_error
from .config import Config
from .engine import Engine
from .merged import MergedWriter
from .modfind import ModuleIndex
from .policy import KERNEL_DROPPED, NO_BTF, PENDING
from .record import (
    DAEMON_VERDICTS,
    ENGINE_VERDICTS,
    IDENTITY_STATES,
    RECORD_FORMAT,
    SERVED_WORDS,
    VERSION,
    ModuleView,
)


@dataclass
class Stats:
    """Counters of the daemon's work, reported by `status` (every room adds to them)."""

    events: int = 0
    rescans: int = 0
    overflows: int = 0
    processed: int = 0
    reconciled: int = 0
    reused: int = 0
    publish_errors: int = 0
    worker_errors: int = 0
    timeouts: int = 0
    last_events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    # event received -> record renamed into place (seconds), for the last 1000 loads
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))


class StatusApi:
    """The control socket's answers and the manifest. The state below is made in
    ``Daemon.__init__``; ``lock`` guards the mutable parts."""

    cfg: Config
    engine: Engine
    clock: Callable[[], float]
    lock: threading.Lock
    cond: threading.Condition
    stats: Stats
    modules: dict[str, ModuleView]
    pending: collections.OrderedDict[str, tuple[float, bool]]
    force: set[str]
    busy: list[str]
    cache: Cache | None
    merged: MergedWriter | None
    modindex: ModuleIndex
    manifest_dirty: bool
    kernel_id: str
    release: str
    started: float
    started_wall: float
    index_seconds: float
    event_source: str
    event_source_detail: str
    watching: list[str]
    last_rescan: dict[str, Any] | None
    log: Any
    _enqueue: Callable[..., None]

    def counts(self) -> dict[str, int]:
        with self.lock:
            views = list(self.modules.values())
        out: dict[str, int] = {v: 0 for v in (*ENGINE_VERDICTS, *DAEMON_VERDICTS)}
        for v in views:
            out[v.verdict] = out.get(v.verdict, 0) + 1
        return out

    def identity_counts(self) -> dict[str, int]:
        """How many loaded modules' files were proven to be the loaded module, and how many
        not (the record's ``identity.state``)."""
        with self.lock:
            views = list(self.modules.values())
        out: dict[str, int] = dict.fromkeys(IDENTITY_STATES, 0)
        for v in views:
            state = _identity_state(v.record)
            out[state] = out.get(state, 0) + 1
        return out

    def flush_manifest(self) -> None:
        if self.cache is None:
            return
        with self.lock:
            if not self.manifest_dirty:
                return
            self.manifest_dirty = False
            modules = {n: {"verdict": v.verdict, "btf": v.btf_path}
                       for n, v in sorted(self.modules.items())}
        manifest = {
            "format": RECORD_FORMAT,
            "kernel_id": self.kernel_id,
            "release": self.release,
            "vmlinux": str(self.cfg.vmlinux),
            "daemon_version": VERSION,
            "updated": time.time(),
            "counts": self.counts(),
            "identity": self.identity_counts(),
            "served_verdicts": list(SERVED_VERDICTS),
            "modules": modules,
        }
        try:
            self.cache.write_manifest(manifest)
        except OSError as e:
            with self.lock:
                self.manifest_dirty = True
            self.log.error("cannot write manifest", error=describe_os_error(e))

    def status_line(self) -> str:
        c = self.counts()
        with self.lock:
            pending = len(self.pending) + len(self.busy)
        parts = [f"{c['ok']} ok", f"{c['incompatible']} incompatible", f"{c['no-base']} no-base"]
        for v in ("error", NO_BTF, KERNEL_DROPPED, PENDING):
            if c.get(v):
                parts.append(f"{c[v]} {v}")
        tail = f"; {pending} queued" if pending else ""
        return f"{', '.join(parts)} ({self.event_source}){tail}"

    def status(self) -> dict[str, Any]:
        with self.lock:
            pending = len(self.pending)
            busy = ", ".join(self.busy) or None
            last = list(self.stats.last_events)
            problems = list(self.modindex.problems)
            sources = list(self.modindex.sources)
        s = self.stats
        return {
            "daemon": {
                "pid": os.getpid(),
                "version": VERSION,
                "started": self.started_wall,
                "uptime": round(self.clock() - self.started, 3),
                "events": self.event_source,
                "events_detail": self.event_source_detail,
                "watching": self.watching,
                "config": str(self.cfg.source) if self.cfg.source else None,
                "socket": str(self.cfg.socket),
                "strict": self.cfg.strict,
                "engine": self.engine.name,
            },
            "kernel": {"id": self.kernel_id, "release": self.release,
                       "vmlinux": str(self.cfg.vmlinux)},
            "cache": {"dir": str(self.cfg.cache_dir),
                      "kernel_dir": str(self.cache.kernel_dir) if self.cache else None},
            "module_files": {"sources": sources, "problems": problems},
            "counts": self.counts(),
            "identity": self.identity_counts(),
            "served_verdicts": list(SERVED_VERDICTS),
            "queue": {"pending": pending, "busy": busy},
            "stats": {"events": s.events, "rescans": s.rescans, "overflows": s.overflows,
                      "processed": s.processed, "reconciled": s.reconciled, "reused": s.reused,
                      "publish_errors": s.publish_errors, "worker_errors": s.worker_errors,
                      "timeouts": s.timeouts},
            "latency": self.latency_summary(),
            "index_seconds": round(self.index_seconds, 3),
            "merged": self.merged.status() if self.merged is not None else None,
            "pre_reboot": self.pre_reboot_reports(),
            "last_rescan": self.last_rescan,
            "last_events": last,
        }

    def pre_reboot_reports(self) -> list[dict[str, Any]]:
        """What `kernel-check` (the kernel postinst hook) found for kernels not yet booted."""
        out = []
        d = self.cfg.cache_dir / "pre-reboot"
        with contextlib.suppress(OSError):
            for f in sorted(d.glob("*.json")):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    rep = json.loads(f.read_text())
                    if rep["version"] == self.release:
                        continue  # booted into it: the live verdicts say the rest
                    out.append({"version": rep["version"], "modules": rep["modules"],
                                "will_not_fit": [m["module"] for m in rep["will_not_fit"]],
                                # of those, the modules that kernel will refuse to load
                                "will_not_load": [m["module"] for m in rep["will_not_fit"]
                                                  if m.get("on_load") == "refused"],
                                "checked": rep["checked"]})
        return out

    def latency_summary(self) -> dict[str, Any]:
        """Event received -> published, over the last (up to) 1000 module loads."""
        with self.lock:
            lat = sorted(self.stats.latencies)
        if not lat:
            return {"n": 0}

        def p(q: float) -> float:
            return round(lat[min(len(lat) - 1, round(q * (len(lat) - 1)))] * 1000, 2)
        return {"n": len(lat), "p50_ms": p(0.5), "p99_ms": p(0.99), "max_ms": p(1.0)}

    def list_modules(self) -> list[dict[str, Any]]:
        with self.lock:
            views = sorted(self.modules.values(), key=lambda v: v.name)
        return [{"module": v.name, "verdict": v.verdict, "summary": v.summary,
                 "btf": v.btf_path if v.verdict in SERVED_VERDICTS else None,
                 "published": v.published, "identity": _identity_state(v.record)}
                for v in views]

    def show(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            v = self.modules.get(name)
            pending = name in self.pending or name in self.busy
        if v is None:
            return None
        rec = dict(v.record)
        rec["published"] = v.published
        if v.publish_error:
            rec["publish_error"] = v.publish_error
        # a pending verdict is published while the daemon waits for the kernel: not final
        rec["pending"] = pending or v.verdict == PENDING
        return rec

    def published_btf(self, name: str) -> str | None:
        """The module's .btf path when its verdict is served (SERVED_VERDICTS), it is
        published and still the file we wrote."""
        with self.lock:
            v = self.modules.get(name)
        if v is None or v.verdict not in SERVED_VERDICTS or not v.published or \
                not v.btf_path or self.cache is None:
            return None
        if not self.cache.published_btf_intact(name, v.record.get("btf_size")):
            with self.cond:
                self.force.add(name)
                self._enqueue(name, self.clock())
            return None
        return v.btf_path


    def merged_path(self, name: str) -> tuple[str | None, str]:
        """(merged/<name>.btf, "") when it is current, else (None, why not)."""
        with self.lock:
            v = self.modules.get(name)
        if v is None:
            return None, "not loaded"
        if v.verdict not in SERVED_VERDICTS or not v.record.get("btf"):
            return None, f"{v.verdict}: {v.summary}"
        if not v.published or not v.btf_path:
            return None, f"not published: {v.publish_error or 'see status'}"
        if self.merged is None or not self.merged.per_module:
            return None, (f"this daemon writes no per-module merged BTF (merged_btf = "
                          f"{self.cfg.merged_btf!r}); all.btf holds every module "
                          f"whose verdict is {SERVED_WORDS}")
        p = self.merged.lookup(name, v.record.get("btf_sha256"))
        if p is None:
            err = self.merged.status()["last_error"]
            why = "being written; try again in a moment"
            return None, why if not err else f"{why} (last error: {err})"
        return str(p), ""

    def all_merged_path(self) -> tuple[str | None, list[str], str]:
        """(merged/all.btf, the modules in it, "") or (None, [], why not)."""
        if self.merged is None:
            return None, [], "this daemon writes no merged BTF (merged_btf = \"off\")"
        info = self.merged.all_info()
        if info is None:
            if self.merged.pending():
                return None, [], "being written; try again in a moment"
            return None, [], f"no module whose verdict is {SERVED_WORDS} is loaded"
        return str(info[0]), info[1], ""


def _identity_state(record: dict[str, Any]) -> str:
    ident = record.get("identity")
    state = ident.get("state") if isinstance(ident, dict) else None
    return state if isinstance(state, str) else "unverified"
