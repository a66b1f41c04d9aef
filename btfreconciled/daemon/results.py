"""Where a loaded module's record comes from (part of :class:`~.core.Daemon`): the result
remembered in memory, the record already on disk (a daemon restart), or a new
reconciliation by the engine. A result is reused only for the same file (stat and sha256),
policy, kernel and engine build.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import Cache, describe_os_error, sha256_hex
from ..elf import ElfError, sha256_file
from .config import Config
from .engine import Engine
from .modfind import ModuleIndex
from .record import (
    BUILTIN,
    ENGINE_VERDICTS,
    NO_FILE,
    RECORD_FORMAT,
    VERSION,
    ModuleView,
    daemon_record,
    result_record,
    same_record,
)
from .status import Stats


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
# Engine results held for re-publication without reconciling again (LRU by BTF bytes).
MEMO_BYTES = 64 << 20


@dataclass
class Memo:
    key: tuple[Any, ...]
    record: dict[str, Any]
    btf: bytes | None


class Results:
    """The memo, reuse from disk and the engine call. The state below is made in
    ``Daemon.__init__``."""

    cfg: Config
    engine: Engine
    log: Any
    lock: threading.Lock
    stats: Stats
    desired: dict[str, bool]
    modules: dict[str, ModuleView]
    modindex: ModuleIndex
    cache: Cache | None
    index: Any
    kernel_id: str
    _memo: collections.OrderedDict[str, Memo]
    _memo_bytes: int
    _stamp: Callable[[], dict[str, Any]]  # the record fields of this kernel and policy

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
        return same_record(record, view.record)

    def _evaluate(self, name: str, *, force: bool) -> tuple[dict[str, Any], bytes | None, bool]:
        """(record, btf, already_on_disk) for a loaded module."""
        sysdir = self.cfg.sysfs / "module" / name
        with self.lock:
            idx = self.modindex
        path = idx.lookup(name)
        has_initstate = (sysdir / "initstate").exists()
        if sysdir.is_dir() and not has_initstate:
            return daemon_record(name, BUILTIN, "built into the kernel: its BTF is part of "
                                 "vmlinux", path=None, **self._stamp()), None, False
        if path is None:
            if idx.is_builtin(name):
                return daemon_record(name, BUILTIN, "built into the kernel (modules.builtin)",
                                     path=None, **self._stamp()), None, False
            where = ", ".join(idx.sources) or "no module tree is readable"
            return daemon_record(name, NO_FILE, f"module file not found (searched: {where})",
                                 path=None, **self._stamp()), None, False
        try:
            st = path.stat()
        except OSError as e:
            return daemon_record(name, "error", f"cannot stat module file: "
                                 f"{describe_os_error(e)}", path=str(path),
                                 **self._stamp()), None, False
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
            return daemon_record(name, "error", f"internal error: {type(e).__name__}: {e}",
                                 path=str(path), **self._stamp()), None, False
        elapsed = time.perf_counter() - t0
        self.stats.reconciled += 1
        record = result_record(name, result, path, key, elapsed, cache=self.cache,
                               **self._stamp())
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
        self._memo[name] = Memo(key, rec, btf)
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
        # only the engine's own result is reused; a verdict of the daemon's policy
        # (pending, kernel-dropped, a mismatch, a rescue) is decided again from sysfs now
        if rec.get("verdict") not in ENGINE_VERDICTS or rec.get("engine_verdict"):
            return None
        # the same stat is not the same bytes: the record must name this file's sha256
        try:
            if rec.get("module_sha256") != sha256_file(key[0],
                                                       max_size=self.cfg.max_module_bytes):
                return None
        except ElfError:
            return None
        if rec.get("verdict") == "ok":
            btf = self.cache.read_published_btf(name)
            if btf is None or sha256_hex(btf) != rec.get("btf_sha256"):
                return None
            return rec, btf
        if os.path.lexists(self.cache.btf_path(name)):
            return None  # a stale .btf next to a failed verdict: publish again to remove it
        return rec, None
