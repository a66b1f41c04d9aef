"""The work queue and its worker thread (part of :class:`~.core.Daemon`).

The asyncio loop thread only *queues* module names (:meth:`WorkQueue._enqueue`); one worker
thread takes them in batches of up to BATCH, de-duplicated on the name, and hands each
batch to the daemon's ``process_batch``. A batch job carries the module's *desired* state
at the time it is taken, so a burst of load/unload events never loses a module's final
state. A watchdog thread gives up on a module still being worked on after
``module_timeout``: Python cannot stop a thread, so that worker is abandoned (its
generation is retired and its late results dropped) and a new one carries on.

When the queue drains the worker waits MANIFEST_QUIET seconds, then calls ``_on_idle``
(manifest, systemd status) and sets ``idle``.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .status import Stats

MANIFEST_QUIET = 0.1  # seconds without work before the manifest is rewritten
BATCH = 16  # modules evaluated, then published with one durability barrier


@dataclass
class Job:
    name: str
    loaded: bool
    when: float
    by_event: bool
    force: bool


class WorkQueue:
    """Queueing, the worker loop and the module_timeout watchdog. The state below is made
    in ``Daemon.__init__``; ``lock`` guards all of it (``cond`` is on the same lock)."""

    cfg: Config
    log: Any
    clock: Callable[[], float]
    stats: Stats
    lock: threading.Lock
    cond: threading.Condition
    desired: dict[str, bool]  # name -> loaded, as the events last said
    # name -> (time of the first unserved trigger, triggered by an event (not a rescan))
    pending: collections.OrderedDict[str, tuple[float, bool]]
    force: set[str]  # names to reconcile again even if unchanged
    busy: list[str]  # the batch being worked on
    idle: threading.Event
    _stop: bool
    _worker: threading.Thread | None
    _gen: int  # the worker generation; an abandoned worker's is retired
    _current: tuple[str, float, int] | None  # (module, since, generation)
    _rescan: dict[str, Any] | None  # the rescan being worked off
    last_rescan: dict[str, Any] | None
    _last_done: float
    # provided by the daemon (core.py)
    process_batch: Callable[[list[Job], int | None], None]
    _on_idle: Callable[[], None]
    _publish_timeout: Callable[[str, float], None]

    def start_queue(self) -> None:
        """Start the worker and its watchdog."""
        with self.cond:
            self._spawn_worker()
        threading.Thread(target=self._watch_worker, name="btfr-watch", daemon=True).start()

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

    def _enqueue(self, name: str, when: float, *, event: bool = False) -> None:
        # lock held
        if name not in self.pending:
            self.pending[name] = (when, event)
        self.idle.clear()
        self.cond.notify()

    def _requeue(self, name: str) -> None:
        with self.cond:
            if self.desired.get(name, False) and not self._stop:
                self._enqueue(name, self.clock())

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
                batch: list[Job] = []
                while self.pending and len(batch) < BATCH:
                    name, (when, by_event) = self.pending.popitem(last=False)
                    batch.append(Job(name, self.desired.get(name, False), when, by_event,
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

    def is_pending(self, name: str) -> bool:
        with self.lock:
            return name in self.pending or name in self.busy
