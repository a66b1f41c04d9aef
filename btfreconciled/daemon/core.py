"""The daemon proper: module state, the reconciliation worker, publishing, requests.

Threads: the asyncio event loop (uevents, control socket, signals, timers) owns the *desired*
state (which modules are loaded) and never does heavy work; one worker thread takes module
names from a de-duplicating queue and makes the cache match the desired state of that module
*at the time it is processed*.  Coalescing on names means a burst of load/unload events can
never lose the final state of a module, however the events interleave with the work.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import Cache, CacheError, check_module_name, describe_os_error, lock_root
from ..elf import ElfError, sha256_file
from . import logs
from .config import Config
from .engine import Engine
from .events import scan_sysfs
from .merged import MergedWriter
from .modfind import ModuleIndex, build_index
from .notify import Notifier
from .policy import (
    STALE_FILE,
    compare,
    identity_note,
    identity_problem,
    kernel_btf,
    kernel_truth,
)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("btfreconciled")
    except Exception:
        return "0"


VERSION = _version()


def _engine_id() -> str:
    """VERSION plus a digest of this package's sources: results of another build of the
    engine (an upgrade, a development checkout) are never reused."""
    h = hashlib.sha256(VERSION.encode())
    root = Path(__file__).resolve().parent.parent
    for f in sorted(root.rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return f"{VERSION}+{h.hexdigest()[:12]}"


ENGINE_ID = _engine_id()
RECORD_FORMAT = 1
# Verdicts of the engine plus the daemon's own.
ENGINE_VERDICTS = ("ok", "incompatible", "no-base", "error")
BUILTIN, NO_FILE = "builtin", "no-file"
RESCUED = "rescued"  # classic split BTF, distilled against its build found on disk
DAEMON_VERDICTS = (RESCUED, BUILTIN, NO_FILE, STALE_FILE)
IN_KERNEL_RELOCATION = (6, 11)  # Linux reconciles .BTF.base modules itself from 6.11 on


def release_tuple(release: str) -> tuple[int, int]:
    parts = []
    for p in release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


# Engine results held for re-publication without reconciling again (LRU by BTF bytes).
MEMO_BYTES = 64 << 20
MANIFEST_QUIET = 0.1  # seconds without work before the manifest is rewritten
BATCH = 16  # modules evaluated, then published with one durability barrier
CROSS_CHECK_DELAY, CROSS_CHECK_TRIES = 0.05, 60  # wait up to 3 s for /sys/kernel/btf/<mod>


def release_memory() -> None:
    """Hand memory freed by a big transient (the vmlinux index build) back to the OS."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class ModuleView:
    """What the daemon knows about one loaded module (in memory, for the control socket)."""

    name: str
    verdict: str
    summary: str
    path: str | None
    btf_path: str | None
    record: dict[str, Any]
    published: bool = True
    publish_error: str | None = None


@dataclass
class _Job:
    name: str
    loaded: bool
    when: float
    by_event: bool
    force: bool


@dataclass
class _Memo:
    key: tuple[Any, ...]
    record: dict[str, Any]
    btf: bytes | None


@dataclass
class Stats:
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


class Daemon:
    """State and work of one btfreconciled instance (independent of how events arrive)."""

    def __init__(self, cfg: Config, engine: Engine, *, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.engine = engine
        self.notifier = notifier or Notifier(env={})
        self.clock = clock
        self.log = logs.get()
        self.started_wall = time.time()
        self.started = clock()
        self.release = cfg.kernel_release()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.desired: dict[str, bool] = {}  # name -> loaded, as the events last said
        # name -> (time of the first unserved trigger, triggered by an event (not a rescan))
        self.pending: collections.OrderedDict[str, tuple[float, bool]] = \
            collections.OrderedDict()
        self.force: set[str] = set()  # names to reconcile again even if unchanged
        self.modules: dict[str, ModuleView] = {}
        self.busy: list[str] = []
        self.stats = Stats()
        self.event_source = "none"
        self.event_source_detail = ""
        self.watching: list[str] = []
        self.manifest_dirty = False
        self._memo: collections.OrderedDict[str, _Memo] = collections.OrderedDict()
        self._memo_bytes = 0
        self._cc_tries: dict[str, int] = {}
        self._stop = False
        self._worker: threading.Thread | None = None
        self.index: Any = None
        self.kernel_id = ""
        self.cache: Cache | None = None
        self.merged: MergedWriter | None = None
        self.modindex = ModuleIndex()
        self.idle = threading.Event()
        self.idle.set()
        self.index_seconds = 0.0
        self._rescan: dict[str, Any] | None = None  # the rescan being worked off
        self.last_rescan: dict[str, Any] | None = None
        self._last_done = 0.0
        self._lock_fd: int | None = None
        self._rescued: dict[str, tuple[Any, str, bytes | None, str | None]] = {}
        self._cands: Any = None
        self._built_for: dict[str, tuple[Any, str]] = {}
        # The worker generation: a worker stuck past module_timeout is abandoned (Python
        # cannot stop a thread) and its late results are dropped; a new one takes over.
        self._gen = 0
        self._current: tuple[str, float, int] | None = None  # (module, since, generation)

    # ------------------------------------------------------------------ start-up

    def load_kernel(self) -> None:
        """Hash the running vmlinux BTF, build the index once, prepare the cache."""
        vmlinux = self.cfg.vmlinux
        if self._lock_fd is None:
            os.makedirs(self.cfg.cache_dir, mode=0o755, exist_ok=True)
            self._lock_fd = lock_root(self.cfg.cache_dir)
        self.kernel_id = sha256_file(vmlinux)
        t0 = time.perf_counter()
        self.index = self.engine.load_index(str(vmlinux))
        self.index_seconds = time.perf_counter() - t0
        release_memory()
        self.cache = Cache(self.cfg.cache_dir, self.kernel_id)
        leftovers = self.cache.prepare()
        if leftovers:
            self.log.warning("cleaned up the cache: temporary files of an interrupted write, "
                             "or something planted in place of a cache directory",
                             files=leftovers)
        if self.cfg.gc:
            self.gc()
        if self.cfg.merged_btf != "off":
            self.merged = MergedWriter(self.cache, self.index.btf, self.log,
                                       per_module=self.cfg.merged_btf == "modules")
            self.merged.prepare()
        self.refresh_module_index()
        self.log.info("kernel", kernel_id=self.kernel_id, release=self.release,
                      vmlinux=str(vmlinux), index_seconds=round(self.index_seconds, 3),
                      cache=str(self.cache.kernel_dir))

    def gc(self) -> None:
        assert self.cache is not None
        try:
            removed = self.cache.gc()
        except OSError as e:
            self.log.error("garbage collection failed", error=describe_os_error(e))
            return
        if removed:
            self.log.info("removed other kernels' cache entries", kernel_ids=removed)

    def refresh_module_index(self) -> None:
        idx = build_index(self.cfg.modules_dir(), self.cfg.extra_module_dirs)
        with self.lock:
            self.modindex = idx
        for p in idx.problems:
            self.log.info("module tree unavailable", problem=p)

    def start_worker(self) -> None:
        with self.cond:
            self._spawn_worker()
        threading.Thread(target=self._watch_worker, name="btfr-watch", daemon=True).start()
        if self.merged is not None:
            self.merged.start()

    def _spawn_worker(self) -> None:
        # lock held
        self._worker = threading.Thread(target=self._work, args=(self._gen,),
                                        name=f"btfr-worker-{self._gen}", daemon=True)
        self._worker.start()

    def _watch_worker(self) -> None:
        """One input never holds the worker: a module still being reconciled after
        module_timeout gets verdict error, the rest of its batch is queued again, and a new
        worker carries on (the old thread finishes in the background, its results dropped)."""
        limit = self.cfg.module_timeout
        while True:
            # not self.cond.wait(): a notify() meant for the worker must never wake us instead
            time.sleep(min(1.0, limit / 4))
            with self.cond:
                cur = self._current
                if (self._stop or cur is None or cur[2] != self._gen
                        or time.monotonic() - cur[1] < limit):
                    continue
                name = cur[0]
                self._gen += 1
                self._current = None
                now = self.clock()
                for other in reversed([n for n in self.busy if n != name]):
                    self.pending[other] = (now, False)
                    self.pending.move_to_end(other, last=False)
                self.busy = []
                self.stats.timeouts += 1
                self._spawn_worker()
            self.log.error("module reconciliation timed out; given up", module=name,
                           seconds=limit)
            self._publish_timeout(name, limit)

    def _publish_timeout(self, name: str, limit: float) -> None:
        assert self.cache is not None
        with self.lock:
            path = self.modindex.lookup(name)
        rec = self._daemon_record(
            name, "error", f"{name}: reconciliation did not finish within {limit:g} s "
            "(module_timeout); given up: the module file is pathological or far too large",
            path=str(path) if path else None)
        err = self.cache.publish_many([(name, rec, None)]).get(name)
        self._note_published(name, rec, None, err)
        self._update_merged()

    def stop(self, timeout: float = 10.0) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        if self.merged is not None:
            self.merged.stop(timeout)
        self.flush_manifest()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ events (loop thread)

    def on_event(self, action: str, name: str, when: float | None = None,
                 source: str = "uevent") -> None:
        """A module was loaded (``add``) or unloaded (``remove``)."""
        try:
            name = check_module_name(name)
        except CacheError:
            self.log.warning("ignoring event for an invalid module name", module=name)
            return
        when = self.clock() if when is None else when
        with self.cond:
            self.stats.events += 1
            self.stats.last_events.append({"time": time.time(), "action": action,
                                           "module": name, "source": source})
            self.desired[name] = action == "add"
            self._enqueue(name, when, event=True)

    def _enqueue(self, name: str, when: float, *, event: bool = False) -> None:
        # lock held
        if name not in self.pending:
            self.pending[name] = (when, event)
        self.idle.clear()
        self.cond.notify()

    def rescan(self, reason: str, *, force: bool = False) -> int:
        """Compare /sys/module with what we know; queue every module whose state may differ."""
        present = scan_sysfs(self.cfg.sysfs)
        now = self.clock()
        with self.cond:
            self.stats.rescans += 1
            queued = 0
            loaded = {n for n, s in present.items() if s != "going"}
            known = set(self.desired) | set(self.modules)
            for name in sorted(loaded | known):
                want = name in loaded
                self.desired[name] = want
                if force and want:
                    self.force.add(name)
                self._enqueue(name, now)
                queued += 1
            self.stats.last_events.append({"time": time.time(), "action": "rescan",
                                           "module": None, "source": reason})
            self._rescan = {"reason": reason, "modules": len(loaded), "started": now}
        self.log.info("rescan", reason=reason, modules=len(loaded), queued=queued)
        return queued

    def poll_once(self) -> int:
        """Polling fallback: diff /sys/module against the desired state."""
        present = scan_sysfs(self.cfg.sysfs)
        loaded = {n for n, s in present.items() if s != "going"}
        changes = 0
        with self.lock:
            current = {n for n, v in self.desired.items() if v}
        for name in sorted(loaded - current):
            self.on_event("add", name, source="poll")
            changes += 1
        for name in sorted(current - loaded):
            self.on_event("remove", name, source="poll")
            changes += 1
        return changes

    def modules_changed(self) -> None:
        """A module tree changed on disk: rebuild the index, re-check every loaded module."""
        self.refresh_module_index()
        now = self.clock()
        with self.cond:
            for name, want in self.desired.items():
                if want:
                    self._enqueue(name, now)
        self.log.info("module files changed; re-checking loaded modules")

    # ------------------------------------------------------------------ worker

    def _work(self, gen: int) -> None:
        quiet_until: float | None = None
        while True:
            with self.cond:
                if gen != self._gen:
                    return  # abandoned after a timeout
                while not self.pending and not self._stop:
                    if self.idle.is_set():
                        self.cond.wait()
                        continue
                    # Queue drained: after a short quiet period (so that a burst of events
                    # is not slowed down by manifest writes) flush the manifest, then idle.
                    now = time.monotonic()
                    if quiet_until is None:
                        quiet_until = now + MANIFEST_QUIET
                    if now < quiet_until:
                        self.cond.wait(quiet_until - now)
                        continue
                    quiet_until = None
                    self.cond.release()
                    try:
                        self._on_idle()
                    finally:
                        self.cond.acquire()
                    if not self.pending:
                        if self._rescan is not None:
                            r = self._rescan
                            self._rescan = None
                            self.last_rescan = {
                                "reason": r["reason"], "modules": r["modules"],
                                "seconds": round(max(0.0, self._last_done - r["started"]), 3)}
                        self.idle.set()
                if self._stop or gen != self._gen:
                    return
                quiet_until = None
                batch: list[_Job] = []
                while self.pending and len(batch) < BATCH:
                    name, (when, by_event) = self.pending.popitem(last=False)
                    batch.append(_Job(name, self.desired.get(name, False), when, by_event,
                                      name in self.force))
                    self.force.discard(name)
                self.busy = [j.name for j in batch]
            try:
                self.process_batch(batch, gen)
            except Exception as e:  # one bad module never stops the daemon
                self.stats.worker_errors += 1
                self.log.error("internal error while processing modules",
                               modules=[j.name for j in batch],
                               error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc(limit=8))
            finally:
                with self.lock:
                    if gen == self._gen:
                        self.busy = []
                        self.stats.processed += len(batch)
                        self._last_done = self.clock()

    def _on_idle(self) -> None:
        self.flush_manifest()
        self.notifier.status(self.status_line())

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """For tests and benchmarks: block until the queue is empty and the worker idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle.wait(max(0.0, deadline - time.monotonic())):
                with self.lock:
                    if not self.pending and not self.busy and self.idle.is_set():
                        return True
                time.sleep(0.005)
        return False

    # ------------------------------------------------------------------ modules

    def process(self, name: str, loaded: bool, when: float, *, force: bool = False,
                by_event: bool = False) -> None:
        """Make the cache match one module's state (see :meth:`process_batch`)."""
        self.process_batch([_Job(name, loaded, when, by_event, force)])

    def process_batch(self, jobs: list[_Job], gen: int | None = None) -> None:
        """Evaluate each module (reconcile, or reuse an earlier result), then publish the
        group with one durability barrier; loads get their latency recorded. A worker of an
        older generation (abandoned after a timeout) publishes nothing."""
        assert self.cache is not None
        if gen is None:
            gen = self._gen
        writes: list[tuple[str, dict[str, Any] | None, bytes | None]] = []
        done: list[tuple[_Job, dict[str, Any] | None, bytes | None, bool]] = []
        retry: list[str] = []
        for job in jobs:
            if not job.loaded:
                writes.append((job.name, None, None))
                done.append((job, None, None, True))
                continue
            with self.lock:
                if gen != self._gen:
                    return
                self._current = (job.name, time.monotonic(), gen)
            try:
                record, btf, on_disk = self._decide(job, retry)
                if not on_disk and self._same_as_published(job.name, record):
                    # re-checked, nothing changed (rescan, SIGHUP, module tree touched)
                    with self.lock:
                        record = self.modules[job.name].record
                    on_disk = True
                if not on_disk:
                    record["timings"]["event_to_write"] = round(self.clock() - job.when, 6)
                    record["published_at"] = time.time()
                    writes.append((job.name, record, btf))
                done.append((job, record, btf, not on_disk))
            except Exception as e:  # one bad module never stops the daemon
                self.stats.worker_errors += 1
                self.log.error("internal error while processing a module", module=job.name,
                               error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc(limit=8))
        with self.lock:
            if gen != self._gen:
                return
            self._current = None
        errors: dict[str, OSError] = {}
        if writes:
            try:
                errors = self.cache.publish_many(writes)
            except OSError as e:  # the directory itself is gone or unwritable
                errors = {name: e for name, _, _ in writes}
        now = self.clock()
        for job, rec, data, written in done:
            err = errors.get(job.name)
            if rec is None:
                self._forget(job.name, err)
                continue
            self._note_published(job.name, rec, data, err if written else None)
            if err is None and job.by_event:
                self.stats.latencies.append(now - job.when)
        self._update_merged()
        for name in retry:
            t = threading.Timer(CROSS_CHECK_DELAY, self._requeue, (name,))
            t.daemon = True
            t.start()

    def _update_merged(self) -> None:
        """Tell the merged-BTF writer which modules are ok and published now."""
        if self.merged is None:
            return
        with self.lock:
            wanted = {n: v.record["btf_sha256"] for n, v in self.modules.items()
                      if v.published and v.btf_path and v.record.get("btf_sha256")}
        self.merged.set_wanted(wanted)

    def merged_path(self, name: str) -> tuple[str | None, str]:
        """(merged/<name>.btf, "") when it is current, else (None, why not)."""
        with self.lock:
            v = self.modules.get(name)
        if v is None:
            return None, "not loaded"
        if not v.record.get("btf"):
            return None, f"{v.verdict}: {v.summary}"
        if not v.published or not v.btf_path:
            return None, f"not published: {v.publish_error or 'see status'}"
        if self.merged is None or not self.merged.per_module:
            return None, (f"this daemon writes no per-module merged BTF (merged_btf = "
                          f"{self.cfg.merged_btf!r}); all.btf holds every ok module")
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
            return None, [], "no module with verdict ok is loaded"
        return str(info[0]), info[1], ""

    def _decide(self, job: _Job, retry: list[str]
                ) -> tuple[dict[str, Any], bytes | None, bool]:
        """(record, btf, already_on_disk) for a loaded module: the engine's (or remembered)
        result, then the policy: the file must be the loaded module, and where the kernel
        registered the module's BTF, ours must equal it (policy.py)."""
        started = self.clock()
        record, btf, on_disk = self._evaluate(job.name, force=job.force)
        record["timings"] = dict(record.get("timings") or {})
        record["timings"]["queued"] = round(started - job.when, 6)  # event -> worker
        if record.get("build_id") or record.get("srcversion"):
            problem = identity_problem(self.cfg.sysfs, job.name, record)
            if problem is not None:
                stale = self._daemon_record(job.name, STALE_FILE, problem, path=record["path"])
                stale.update(build_id=record.get("build_id"), srcversion=record.get("srcversion"),
                             module_sha256=record.get("module_sha256"),
                             diagnostics=[{"code": STALE_FILE, "severity": "error",
                                           "summary": problem}])
                stale["timings"] = record["timings"]
                return stale, None, False
            record["identity"] = identity_note(self.cfg.sysfs, job.name, record)
        if record["verdict"] == "no-base" and record.get("path"):
            state, _ = kernel_btf(self.cfg.sysfs, job.name)
            if state == "coming":  # the kernel may still register it: look again shortly
                tries = self._cc_tries.get(job.name, 0)
                if tries < CROSS_CHECK_TRIES:
                    self._cc_tries[job.name] = tries + 1
                    retry.append(job.name)
                    return record, btf, on_disk
            self._cc_tries.pop(job.name, None)
            if state != "btf":  # loaded without BTF the kernel accepted: rescue it
                return (*self._rescue(job.name, record), False)
            wrong = self._registered_for_another_build(job.name, record)
            if wrong:  # the kernel took BTF made for another vmlinux: it binds wrong types
                return (*self._rescue(job.name, record, wrong_kernel_btf=wrong), False)
        if record["verdict"] != "ok" or btf is None:
            return record, btf, on_disk
        cc, kbytes = self._cross_check_now(job.name, btf)
        if cc is None:
            # The uevent precedes the kernel's BTF notifier: publish now, look again shortly
            # (without holding up the other modules).
            tries = self._cc_tries.get(job.name, 0)
            if tries < CROSS_CHECK_TRIES:
                self._cc_tries[job.name] = tries + 1
                retry.append(job.name)
                return record, btf, on_disk
            cc = {"result": "absent",
                  "kernel_file": str(self.cfg.sysfs / "kernel" / "btf" / job.name),
                  "detail": "the module was still initialising after "
                            f"{CROSS_CHECK_TRIES * CROSS_CHECK_DELAY:g} s"}
        self._cc_tries.pop(job.name, None)
        if cc.get("result") == "mismatch" and kbytes is not None:
            record = kernel_truth(job.name, record, cc)
            btf = kbytes
            record.update(btf_sha256=hashlib.sha256(btf).hexdigest(), btf_size=len(btf))
        if cc != record.get("cross_check", {}):
            if cc:
                record["cross_check"] = cc
            else:
                record.pop("cross_check", None)
            on_disk = False
        return record, btf, on_disk

    def _registered_for_another_build(self, name: str, record: dict[str, Any]) -> str:
        """Why the BTF the kernel registered for a classic-split module is not for this
        kernel ("" when it is, or when that cannot be told). Its validation can pass on
        another build by chance (e.g. a module built for the previous point release, loaded
        with insmod -f): /sys/kernel/btf/<m> then names the wrong vmlinux types."""
        key = (record.get("module_sha256"), self.kernel_id)
        hit = self._built_for.get(name)
        if hit is None or hit[0] != key:
            try:
                fits, why = self.engine.built_for(record["path"], self.index)
            except Exception:  # noqa: BLE001 - unreadable now: the reconciliation said why
                fits, why = True, ""
            hit = (key, "" if fits else why or "built for another vmlinux")
            self._built_for[name] = hit
        return hit[1]

    def _rescue(self, name: str, record: dict[str, Any], *, wrong_kernel_btf: str = ""
                ) -> tuple[dict[str, Any], bytes | None]:
        """A loaded module with classic split BTF the kernel did not register (or registered
        though it was built for another vmlinux): when its build is among the kernel files in
        search_dirs, distill against it in memory and reconcile onto the running kernel
        (verdict rescued); otherwise no-base with doctor's reason.
        Results are remembered per module file (sha256): the search costs decompressions."""
        key = (record.get("module_sha256"), self.kernel_id)
        hit = self._rescued.get(name)
        if hit is None or hit[0] != key:
            try:
                res = self.engine.rescue(record["path"], self.index, self._candidates(),
                                         module_name=name)
                hit = (key, res.summary, res.btf, res.build)
            except Exception as e:  # noqa: BLE001 - RescueError, or a file that went bad
                hit = (key, f"{name}: no .BTF.base, and the kernel did not register its "
                       f"BTF: {e}", None, None)
            self._rescued[name] = hit
        _, summary, btf, build = hit
        rec = dict(record)
        if wrong_kernel_btf:
            kfile = self.cfg.sysfs / "kernel" / "btf" / name
            note = (f"{kfile} was registered by the kernel, but the module's BTF was made for "
                    f"another vmlinux ({wrong_kernel_btf}): it binds the module's types to the "
                    "wrong kernel types; do not use it")
            summary = f"{summary}; {note}"
            rec["diagnostics"] = [*rec.get("diagnostics", []),
                                  {"code": "kernel-btf-wrong-base", "severity": "error",
                                   "summary": note}]
        if btf is None:
            rec["summary"] = summary
            return rec, None
        assert self.cache is not None
        rec.update(verdict=RESCUED, summary=summary, rescue_base=build,
                   btf=str(self.cache.btf_path(name)),
                   btf_sha256=hashlib.sha256(btf).hexdigest(), btf_size=len(btf))
        return rec, btf

    def _candidates(self) -> Any:
        """Kernel files that may be a module's build (doctor's search), read on demand."""
        if self._cands is None:
            from ..reconcile.doctor import Candidates, candidate_files

            self._cands = Candidates(candidate_files([str(d) for d in self.cfg.search_dirs]))
        return self._cands

    def _requeue(self, name: str) -> None:
        with self.cond:
            if self.desired.get(name, False) and not self._stop:
                self._enqueue(name, self.clock())

    def _same_as_published(self, name: str, record: dict[str, Any]) -> bool:
        with self.lock:
            view = self.modules.get(name)
        if view is None or not view.published or not self.desired.get(name, False):
            return False
        if record.get("btf") and self.cache is not None and not \
                self.cache.published_btf_intact(name, record.get("btf_size")):
            self.log.warning("published BTF was replaced or removed behind our back; "
                             "publishing it again", module=name)
            return False
        volatile = ("timings", "published_at")
        a = {k: v for k, v in record.items() if k not in volatile}
        b = {k: v for k, v in view.record.items() if k not in volatile}
        return a == b

    def _evaluate(self, name: str, *, force: bool) -> tuple[dict[str, Any], bytes | None, bool]:
        """(record, btf, already_on_disk) for a loaded module."""
        sysdir = self.cfg.sysfs / "module" / name
        with self.lock:
            idx = self.modindex
        path = idx.lookup(name)
        has_initstate = (sysdir / "initstate").exists()
        if sysdir.is_dir() and not has_initstate:
            return self._daemon_record(name, BUILTIN, "built into the kernel: its BTF is part of "
                                       "vmlinux", path=None), None, False
        if path is None:
            if idx.is_builtin(name):
                return self._daemon_record(name, BUILTIN, "built into the kernel "
                                           "(modules.builtin)", path=None), None, False
            where = ", ".join(idx.sources) or "no module tree is readable"
            return self._daemon_record(
                name, NO_FILE, f"module file not found (searched: {where})",
                path=None), None, False
        try:
            st = path.stat()
        except OSError as e:
            return self._daemon_record(name, "error", f"cannot stat module file: "
                                       f"{describe_os_error(e)}", path=str(path)), None, False
        # what makes a result reusable: the same file, policy, kernel and engine (an upgrade
        # of btfreconciled never republishes an older engine's results)
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, self.cfg.strict,
               self.kernel_id, self.engine.name, ENGINE_ID)
        memo = self._memo.get(name)
        if memo is not None and memo.key == key and not force:
            self.stats.reused += 1
            self._memo.move_to_end(name)
            return dict(memo.record), memo.btf, False
        if not force:
            reused = self._reuse_published(name, key)
            if reused is not None:
                self.stats.reused += 1
                self._remember(name, key, *reused)
                return dict(reused[0]), reused[1], True
        t0 = time.perf_counter()
        try:
            result = self.engine.reconcile(str(path), self.index, strict=self.cfg.strict,
                                           max_bytes=self.cfg.max_module_bytes,
                                           module_name=name)
        except Exception as e:  # the engine promises not to raise; be safe anyway
            self.log.error("reconciliation raised", module=name, path=str(path),
                           error=f"{type(e).__name__}: {e}")
            return self._daemon_record(name, "error", f"internal error: {type(e).__name__}: {e}",
                                       path=str(path)), None, False
        elapsed = time.perf_counter() - t0
        self.stats.reconciled += 1
        record = self._result_record(name, result, path, key, elapsed)
        btf = result.btf if record["verdict"] == "ok" else None
        if record["verdict"] == "ok" and btf is None:
            record["verdict"] = "error"
            record["summary"] = "engine reported ok without BTF"
        self._remember(name, key, record, btf)
        return dict(record), btf, False

    def _remember(self, name: str, key: tuple[Any, ...], record: dict[str, Any],
                  btf: bytes | None) -> None:
        """Keep a result for cheap re-publication; least recently used first out once the
        BTF held passes MEMO_BYTES (a re-check then reads the published file back)."""
        rec = {k: v for k, v in record.items() if k not in ("cross_check", "identity")}
        old = self._memo.pop(name, None)
        if old is not None:
            self._memo_bytes -= len(old.btf or b"")
        self._memo[name] = _Memo(key, rec, btf)
        self._memo_bytes += len(btf or b"")
        while self._memo_bytes > MEMO_BYTES and len(self._memo) > 1:
            _, gone = self._memo.popitem(last=False)
            self._memo_bytes -= len(gone.btf or b"")

    def _reuse_published(self, name: str, key: tuple[Any, ...]
                         ) -> tuple[dict[str, Any], bytes | None] | None:
        """A record already on disk for the same file, policy and kernel (daemon restart)."""
        assert self.cache is not None
        rec = self.cache.read_record(name)
        if not rec or rec.get("format") != RECORD_FORMAT or rec.get("key") != list(key):
            return None
        # the same stat is not the same bytes: the record must name this file's sha256
        try:
            if rec.get("module_sha256") != sha256_file(key[0]):
                return None
        except ElfError:
            return None
        if rec.get("verdict") == "ok":
            btf = self.cache.read_published_btf(name)
            if btf is None or hashlib.sha256(btf).hexdigest() != rec.get("btf_sha256"):
                return None
            return rec, btf
        if os.path.lexists(self.cache.btf_path(name)):
            return None  # a stale .btf next to a failed verdict: publish again to remove it
        return rec, None

    def _base_record(self, name: str, path: str | None) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "module": name,
            "path": path,
            "kernel_id": self.kernel_id,
            "release": self.release,
            "strict": self.cfg.strict,
            "daemon_version": VERSION,
        }

    def _daemon_record(self, name: str, verdict: str, summary: str, *,
                       path: str | None) -> dict[str, Any]:
        rec = self._base_record(name, path)
        rec.update(verdict=verdict, summary=summary, diagnostics=[], module_sha256=None,
                   btf=None, btf_sha256=None, btf_size=None, timings={}, key=None)
        return rec

    def _result_record(self, name: str, result: Any, path: Path, key: tuple[Any, ...],
                       elapsed: float) -> dict[str, Any]:
        try:
            body = dict(result.to_json())
        except Exception:
            body = {}
        verdict = getattr(result.verdict, "value", result.verdict)
        rec = self._base_record(name, str(path))
        for k, v in body.items():
            if k not in ("btf",) and not isinstance(v, bytes | bytearray):
                rec[k] = v
        btf = result.btf if verdict == "ok" else None
        timings = dict(getattr(result, "timings", None) or body.get("timings") or {})
        timings["reconcile"] = round(elapsed, 6)
        rec.update(
            module=name,
            path=str(path),
            verdict=str(verdict),
            summary=str(getattr(result, "summary", "") or body.get("summary", "")),
            diagnostics=list(getattr(result, "diagnostics", None) or []),
            module_sha256=getattr(result, "module_sha256", None),
            btf=str(self.cache.btf_path(name)) if btf is not None and self.cache else None,
            btf_sha256=hashlib.sha256(btf).hexdigest() if btf is not None else None,
            btf_size=len(btf) if btf is not None else None,
            timings=timings,
            key=list(key),
        )
        return rec

    def _note_published(self, name: str, record: dict[str, Any], btf: bytes | None,
                        err: OSError | None) -> None:
        """Update the in-memory view after a publish attempt."""
        assert self.cache is not None
        msg = None
        if err is not None:
            msg = describe_os_error(err)
            self.stats.publish_errors += 1
            self.log.error("cannot publish", module=name, error=msg)
            # Never leave a .btf that the record on disk does not vouch for.
            with contextlib.suppress(OSError):
                self.cache.btf_path(name).unlink(missing_ok=True)
        view = ModuleView(name=name, verdict=record["verdict"], summary=record["summary"],
                          path=record.get("path"),
                          btf_path=record.get("btf") if msg is None else None,
                          record=record, published=msg is None, publish_error=msg)
        with self.lock:
            if self.desired.get(name):
                self.modules[name] = view
            self.manifest_dirty = True
        if msg is None:
            log = self.log.info if record["verdict"] in ("ok", BUILTIN) else self.log.warning
            log("published", module=name, verdict=record["verdict"], summary=record["summary"])

    def _forget(self, name: str, err: OSError | None) -> None:
        if err is not None:
            self.stats.publish_errors += 1
            self.log.error("cannot remove published entry", module=name,
                           error=describe_os_error(err))
        with self.lock:
            had = self.modules.pop(name, None) is not None
            if not self.desired.get(name, False):
                self.desired.pop(name, None)
            self.manifest_dirty = True
        if had:
            self.log.info("unloaded", module=name)

    # ------------------------------------------------------------------ cross-check

    def _kernel_relocates(self) -> bool:
        return release_tuple(self.release) >= IN_KERNEL_RELOCATION

    def _cross_check_now(self, name: str, btf: bytes
                         ) -> tuple[dict[str, Any] | None, bytes | None]:
        """On kernels that relocate .BTF.base themselves, compare with /sys/kernel/btf/<mod>:
        (result, the kernel's bytes). ({}, None) when not applicable; (None, None) while the
        module is still initialising (the uevent precedes the kernel's BTF notifier)."""
        if not self._kernel_relocates():
            return {}, None
        kfile = self.cfg.sysfs / "kernel" / "btf" / name
        state, data = kernel_btf(self.cfg.sysfs, name)
        if state == "coming":
            return None, None
        if not isinstance(data, bytes):
            return {"result": state, "kernel_file": str(kfile), "detail": data}, None
        res = compare(name, btf, data, getattr(self.index, "btf", None))
        res["kernel_file"] = str(kfile)
        if res["result"] == "mismatch":
            self.log.error("our BTF differs from the kernel's: publishing the kernel's",
                           module=name, detail=res.get("detail"))
        return res, data

    # ------------------------------------------------------------------ manifest / status

    def counts(self) -> dict[str, int]:
        with self.lock:
            views = list(self.modules.values())
        out: dict[str, int] = {v: 0 for v in (*ENGINE_VERDICTS, *DAEMON_VERDICTS)}
        for v in views:
            out[v.verdict] = out.get(v.verdict, 0) + 1
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
        if c["error"]:
            parts.append(f"{c['error']} error")
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
                 "btf": v.btf_path, "published": v.published} for v in views]

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
        rec["pending"] = pending
        return rec

    def published_btf(self, name: str) -> str | None:
        """The module's .btf path when it is published and still the file we wrote."""
        with self.lock:
            v = self.modules.get(name)
        if v is None or not v.published or not v.btf_path or self.cache is None:
            return None
        if not self.cache.published_btf_intact(name, v.record.get("btf_size")):
            with self.cond:
                self.force.add(name)
                self._enqueue(name, self.clock())
            return None
        return v.btf_path

    def is_pending(self, name: str) -> bool:
        with self.lock:
            return name in self.pending or name in self.busy
