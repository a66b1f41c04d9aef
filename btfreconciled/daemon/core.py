"""The daemon proper: module state, the reconciliation worker, publishing, requests.

Threads: the asyncio event loop (uevents, control socket, signals, timers) owns the *desired*
state (which modules are loaded) and never does heavy work; one worker thread takes module
names from a de-duplicating queue and makes the cache match the desired state of that module
*at the time it is processed*.  Coalescing on names means a burst of load/unload events can
never lose the final state of a module, however the events interleave with the work.

The Daemon is put together from rooms, each a file:

- queue.py: the de-duplicating work queue, the worker thread and the module_timeout watchdog;
- results.py: a module's record from memory, from disk or from the engine;
- record.py: the record schema and the verdicts;
- policy.py: what may be published (identity of the file, the kernel's own BTF);
- status.py: the control socket's answers and the manifest.

This file holds the state and the orchestration: start-up, events, and for each batch the
decision (policy, rescue of classic split BTF) and the publishing.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..cache import (
    SERVED_VERDICTS,
    Cache,
    CacheError,
    check_module_name,
    describe_os_error,
    lock_root,
    sha256_hex,
)
from ..elf import sha256_file
from . import logs
from .config import Config
from .engine import Engine
from .events import scan_sysfs
from .merged import MergedWriter
from .modfind import ModuleIndex, build_index
from .notify import Notifier
from .policy import (
    STALE_FILE,
    UNDECIDED,
    absent_result,
    cross_check,
    identity,
    is_without_btf,
    kernel_btf,
    kernel_dropped,
    kernel_mismatch,
    kernel_relocates,
    no_btf,
    pending,
    registers_module_btf,
    undecided_note,
)
from .queue import Job, WorkQueue
from .record import BUILTIN, RESCUED, VOLATILE, ModuleView, daemon_record
from .results import Memo, Results
from .status import Stats, StatusApi

CROSS_CHECK_DELAY, CROSS_CHECK_TRIES = 0.05, 60  # wait up to 3 s for /sys/kernel/btf/<mod>
MERGED_YIELD = 2.0  # longest the merged writer waits for a busy worker, per module


def _kernel_log_lines(names: list[str]) -> dict[str, str]:
    from ..cli.doctor import _kernel_log_lines as read

    return read(names)


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


class Daemon(WorkQueue, Results, StatusApi):
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
        self._memo: collections.OrderedDict[str, Memo] = collections.OrderedDict()
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
        self._built_for: dict[str, tuple[Any, tuple[bool | None, str]]] = {}
        # module names -> the kernel's log line about each (cli/doctor.py reads /dev/kmsg)
        self.kernel_log: Callable[[list[str]], dict[str, str]] = _kernel_log_lines
        # The worker generation: a worker stuck past module_timeout is abandoned (Python
        # cannot stop a thread) and its late results are dropped; a new one takes over.
        self._gen = 0
        self._current: tuple[str, float, int] | None = None  # (module, since, generation)
        self._recheck: set[str] = set()  # published files to check before the next decision

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
                                       per_module=self.cfg.merged_btf == "modules",
                                       between=self._let_events_first)
            self.merged.prepare()
        self.refresh_module_index()
        self.log.info("kernel", kernel_id=self.kernel_id, release=self.release,
                      vmlinux=str(vmlinux), index_seconds=round(self.index_seconds, 3),
                      cache=str(self.cache.kernel_dir))

    def repair_cache(self) -> None:
        """SIGHUP: make the cache again what the daemon wrote (start-up does the same in
        load_kernel). Our directories and `current` as prepare() makes them, and nothing but
        regular files in modules/ (Cache.repair) and merged/ (its writer's repair, in its
        thread): anything else there is removed, never followed. The manifest is written
        again, and before its next decision the worker checks each module's published
        record and .btf against what it published (process_batch): a damaged one is
        published again. The rescan that follows a SIGHUP brings every module there."""
        assert self.cache is not None
        try:
            notes = self.cache.repair()
        except OSError as e:
            notes = []
            self.log.error("cannot repair the cache", error=describe_os_error(e))
        if notes:
            self.log.warning("repaired the cache: removed what was planted there",
                             files=notes)
        if self.merged is not None:
            self.merged.repair()
        with self.lock:
            self._recheck = set(self.modules)
            self.manifest_dirty = True

    def _check_published(self, name: str) -> None:
        """A module queued after repair_cache(): when its files on disk are not what was
        published, its view says so, and this batch publishes it again."""
        assert self.cache is not None
        with self.lock:
            if name not in self._recheck:
                return
            self._recheck.discard(name)
            view = self.modules.get(name)
        if view is None or not view.published:
            return
        why = self.cache.check_published(name, view.record, VOLATILE)
        if why is not None:
            self.log.warning("published files damaged; publishing again", module=name,
                             problem=why)
            with self.lock:
                view.published = False
                view.publish_error = f"damaged on disk, being published again: {why}"

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
        self.start_queue()
        if self.merged is not None:
            self.merged.start()

    def _publish_timeout(self, name: str, limit: float) -> None:
        assert self.cache is not None
        with self.lock:
            path = self.modindex.lookup(name)
        rec = daemon_record(
            name, "error", f"{name}: reconciliation did not finish within {limit:g} s "
            "(module_timeout); given up: the module file is pathological or far too large",
            path=str(path) if path else None, **self._stamp())
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

    def _on_idle(self) -> None:
        self.flush_manifest()
        self.notifier.status(self.status_line())

    def _stamp(self) -> dict[str, Any]:
        """The fields every record takes from this kernel and policy (record.base_record)."""
        return {"kernel_id": self.kernel_id, "release": self.release, "strict": self.cfg.strict}

    # ------------------------------------------------------------------ modules

    def process(self, name: str, loaded: bool, when: float, *, force: bool = False,
                by_event: bool = False) -> None:
        """Make the cache match one module's state (see :meth:`process_batch`)."""
        self.process_batch([Job(name, loaded, when, by_event, force)])

    def process_batch(self, jobs: list[Job], gen: int | None = None) -> None:
        """Evaluate each module (reconcile, or reuse an earlier result), then publish the
        group with one durability barrier; loads get their latency recorded. A worker of an
        older generation (abandoned after a timeout) publishes nothing."""
        assert self.cache is not None
        if gen is None:
            gen = self._gen
        writes: list[tuple[str, dict[str, Any] | None, bytes | None]] = []
        done: list[tuple[Job, dict[str, Any] | None, bytes | None, bool]] = []
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
                record, btf, write = self._outcome(job, retry)
            except Exception as e:  # one bad module never stops the daemon
                self.stats.worker_errors += 1
                self.log.error("internal error while processing a module", module=job.name,
                               error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc(limit=8))
                continue
            if write:
                writes.append((job.name, record, btf))
            done.append((job, record, btf, write))
        with self.lock:
            if gen != self._gen:
                return
            self._current = None
        self._publish(writes, done)
        self._update_merged()
        for name in retry:
            t = threading.Timer(CROSS_CHECK_DELAY, self._requeue, (name,))
            t.daemon = True
            t.start()

    def _outcome(self, job: Job, retry: list[str]
                  ) -> tuple[dict[str, Any], bytes | None, bool]:
        """(record, BTF, whether to write them) for a loaded module: decided afresh, or the
        published record when a re-check found nothing changed."""
        self._check_published(job.name)
        record, btf, on_disk = self._decide(job, retry)
        if not on_disk and self._same_as_published(job.name, record):
            # re-checked, nothing changed (rescan, SIGHUP, module tree touched)
            with self.lock:
                record = self.modules[job.name].record
            on_disk = True
        if not on_disk:
            record["timings"]["event_to_write"] = round(self.clock() - job.when, 6)
            record["published_at"] = time.time()
        return record, btf, not on_disk

    def _publish(self, writes: list[tuple[str, dict[str, Any] | None, bytes | None]],
                 done: list[tuple[Job, dict[str, Any] | None, bytes | None, bool]]) -> None:
        """Write the batch's files with one barrier, then record what each module now has
        (an unloaded module is forgotten) and the load latencies of the events."""
        assert self.cache is not None
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

    def _let_events_first(self) -> None:
        """The merged writer's pause between modules: while the worker has modules to
        decide, wait for it (at most MERGED_YIELD seconds, so merged files still follow a
        daemon that is never idle). Python runs one thread at a time: a writer renumbering
        amdgpu's types would otherwise add its time to a module load's event->publish."""
        deadline = time.monotonic() + MERGED_YIELD
        while not self._stop and not self.idle.wait(0.05) and time.monotonic() < deadline:
            pass  # short waits: a stopping daemon does not keep its writer here

    def _update_merged(self) -> None:
        """Tell the merged-BTF writer which modules are served and published now: exactly
        those whose verdict is in SERVED_VERDICTS (the same list the client and `path`
        answer from)."""
        if self.merged is None:
            return
        with self.lock:
            wanted = {n: v.record["btf_sha256"] for n, v in self.modules.items()
                      if v.verdict in SERVED_VERDICTS and v.published and v.btf_path
                      and v.record.get("btf_sha256")}
        self.merged.set_wanted(wanted)

    def _wait_for_kernel(self, name: str, retry: list[str]) -> bool:
        """While a module initialises, the kernel may still register its BTF: True (and a
        retry shortly) until CROSS_CHECK_TRIES looks have been spent."""
        tries = self._cc_tries.get(name, 0)
        if tries < CROSS_CHECK_TRIES:
            self._cc_tries[name] = tries + 1
            retry.append(name)
            return True
        return False

    def _pending(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        kfile = self.cfg.sysfs / "kernel" / "btf" / name
        return pending(name, record, str(kfile), CROSS_CHECK_TRIES * CROSS_CHECK_DELAY)

    def _dropped(self, name: str, record: dict[str, Any], detail: str) -> dict[str, Any]:
        try:
            log = self.kernel_log([name])
        except Exception as e:  # noqa: BLE001 - the log is a help, never a reason to fail
            self.log.warning("cannot read the kernel log", module=name,
                             error=f"{type(e).__name__}: {e}")
            log = {}
        rec = kernel_dropped(name, record, detail, log)
        self.log.warning("the kernel dropped a module's BTF that we accepted", module=name,
                         detail=detail)
        return rec

    def _gave_up_waiting(self) -> str:
        return (f"still initialising {CROSS_CHECK_TRIES * CROSS_CHECK_DELAY:g} s after the "
                "load, and the kernel registers a module's BTF before its init runs")

    def _decide(self, job: Job, retry: list[str]
                ) -> tuple[dict[str, Any], bytes | None, bool]:
        """(record, btf, already_on_disk) for a loaded module: the engine's (or remembered)
        result, then the policy (policy.py): the file must be the loaded module; where the
        kernel relocated the module's BTF itself, ours must equal it; where it registers
        such BTF itself, its absence is a refusal. Nothing is published as ok before that
        was decided: a module still initialising is published as pending and looked at
        again shortly."""
        started = self.clock()
        record, btf, on_disk = self._evaluate(job.name, force=job.force)
        record["timings"] = dict(record.get("timings") or {})
        record["timings"]["queued"] = round(started - job.when, 6)  # event -> worker
        if record.get("path") and record.get("key") is not None:
            stale, changed = self._check_identity(job.name, record)
            if stale is not None:
                return stale, None, False
            on_disk = on_disk and not changed
        if is_without_btf(record):
            # nothing the kernel could register, nothing to rescue: say how to get BTF
            self._cc_tries.pop(job.name, None)
            return no_btf(job.name, record, self.release), None, False
        if record["verdict"] == "no-base" and record.get("path"):
            return self._decide_classic(job.name, record, btf, on_disk, retry)
        if record["verdict"] != "ok" or btf is None:
            self._cc_tries.pop(job.name, None)
            return record, btf, on_disk
        cc = cross_check(self.cfg.sysfs, self.release, job.name, btf,
                         getattr(self.index, "btf", None), record)
        if cc is None:
            # The uevent precedes the kernel's BTF notifier: published as pending, decided
            # on a later look (without holding up the other modules).
            if self._wait_for_kernel(job.name, retry):
                return self._pending(job.name, record), None, False
            cc = absent_result(self.cfg.sysfs, job.name,
                               kernel_relocates(self.release, record), self._gave_up_waiting())
        self._cc_tries.pop(job.name, None)
        if _note_cross_check(record, cc):
            on_disk = False
        result = cc.get("result")
        if result == "mismatch":
            self.log.error("our BTF differs from the kernel's: nothing served", module=job.name,
                           detail=cc.get("detail"))
            return kernel_mismatch(job.name, record, cc), None, False
        if result == "dropped":
            return self._dropped(job.name, record, cc["detail"]), None, False
        return record, btf, on_disk

    def _check_identity(self, name: str, record: dict[str, Any]
                        ) -> tuple[dict[str, Any] | None, bool]:
        """(the stale-file record, _) when the file on disk is not the loaded module; else
        (None, whether `record`'s note of the loaded module's identity changed)."""
        ident, problem = identity(self.cfg.sysfs, name, record)
        if problem is not None:
            self._cc_tries.pop(name, None)
            stale = daemon_record(name, STALE_FILE, problem, path=record["path"],
                                  **self._stamp())
            stale.update(build_id=record.get("build_id"), srcversion=record.get("srcversion"),
                         module_sha256=record.get("module_sha256"), identity=ident,
                         diagnostics=[{"code": STALE_FILE, "severity": "error",
                                       "summary": problem}])
            stale["timings"] = record["timings"]
            return stale, False
        if ident == record.get("identity"):
            return None, False
        record["identity"] = ident
        return None, True

    def _decide_classic(self, name: str, record: dict[str, Any], btf: bytes | None,
                        on_disk: bool, retry: list[str]
                        ) -> tuple[dict[str, Any], bytes | None, bool]:
        """A module with classic split BTF: the kernel registers it itself on its own build.
        Registered: fine, unless it was built for another vmlinux (then the kernel bound it
        to the wrong types: rescue). Not registered: on its own build the kernel refused it
        (kernel-dropped); built for another, rescue it."""
        state, data = kernel_btf(self.cfg.sysfs, name)
        # still initialising: the kernel may still register it, look again shortly
        if state == "coming" and self._wait_for_kernel(name, retry):
            return self._pending(name, record), None, False
        self._cc_tries.pop(name, None)
        if state == "error":  # /sys/kernel/btf/<m> exists but cannot be read
            return self._unchecked(record, str(data), registered=True), btf, False
        fits, why = self._built_for_this_kernel(name, record)
        if state == "btf":
            if fits is False:  # the kernel took BTF made for another vmlinux: wrong types
                return (*self._rescue(name, record, wrong_kernel_btf=why), False)
            if fits is None:
                return self._unchecked(record, why, registered=True), btf, False
            return record, btf, on_disk
        if fits is True and state in ("absent", "coming") and \
                registers_module_btf(self.cfg.sysfs, name):
            detail = self._gave_up_waiting() if state == "coming" else \
                f"{self.cfg.sysfs / 'kernel' / 'btf' / name} does not exist, though the " \
                "module's classic split BTF was built for this kernel"
            return self._dropped(name, record, detail), None, False
        # loaded without BTF the kernel accepted: rescue it
        rec, data = self._rescue(name, record)
        if fits is None:
            rec = self._unchecked(rec, why, registered=False)
        return rec, data, False

    @staticmethod
    def _unchecked(record: dict[str, Any], why: str, *, registered: bool) -> dict[str, Any]:
        """`record` with a diagnostic: whether the module's BTF was built for this vmlinux
        could not be told (never taken as a yes)."""
        what = ("whether the BTF the kernel registered for it was made for this vmlinux"
                if registered else "whether its BTF was made for this vmlinux")
        rec = dict(record)
        rec["diagnostics"] = [*rec.get("diagnostics", []),
                              {"code": "built-for-unknown", "severity": "warning",
                               "summary": f"{rec['module']}: could not tell {what}: {why}"}]
        return rec

    def _built_for_this_kernel(self, name: str, record: dict[str, Any]
                               ) -> tuple[bool | None, str]:
        """(True, "") when the module's classic split BTF was built for this kernel's
        vmlinux, (False, why not), or (None, why it could not be told). The kernel's own
        validation can pass on another build by chance (e.g. a module built for the
        previous point release, loaded with insmod -f): /sys/kernel/btf/<m> then names the
        wrong vmlinux types."""
        key = (record.get("module_sha256"), self.kernel_id)
        hit = self._built_for.get(name)
        if hit is None or hit[0] != key:
            try:
                fits, why = self.engine.built_for(record["path"], self.index)
                answer: tuple[bool | None, str] = \
                    (True, "") if fits else (False, why or "built for another vmlinux")
            except Exception as e:  # noqa: BLE001 - unreadable now: say so, never "fits"
                answer = (None, f"{type(e).__name__}: {e}")
            hit = (key, answer)
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
                   btf_sha256=sha256_hex(btf), btf_size=len(btf))
        return rec, btf

    def _candidates(self) -> Any:
        """Kernel files that may be a module's build (doctor's search), read on demand."""
        if self._cands is None:
            from ..reconcile.doctor import Candidates, candidate_files

            self._cands = Candidates(candidate_files([str(d) for d in self.cfg.search_dirs]))
        return self._cands

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


def _note_cross_check(record: dict[str, Any], cc: dict[str, Any]) -> bool:
    """Put the cross-check's result (and, when undecided, its note) into `record`; True when
    the record changed."""
    changed = False
    if cc != record.get("cross_check", {}):
        if cc:
            record["cross_check"] = cc
        else:
            record.pop("cross_check", None)
        changed = True
    diags = [d for d in record.get("diagnostics", [])
             if not (isinstance(d, dict) and d.get("code") == UNDECIDED)]
    if cc.get("result") == "undecided":
        diags.append(undecided_note(cc))
    if diags != record.get("diagnostics", []):
        record["diagnostics"] = diags
        changed = True
    return changed
