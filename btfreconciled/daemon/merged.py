"""Loader-ready BTF in the cache: ``merged/<module>.btf`` and ``merged/all.btf``.

libbpf (``btf_custom_path``), cilium/ebpf (``KernelTypes``) and bpftrace (``BPFTRACE_BTF``)
take ONE standalone BTF file, not split BTF. For every module whose verdict is served
(``cache.SERVED_VERDICTS``: ok or rescued; the daemon chooses them) this thread writes
vmlinux + that module (``merged/<m>.btf``), and vmlinux + every such module in name
order (``merged/all.btf``), then ``merged/index.json``: each file's own sha256 and size,
which split BTF (by sha256) it was made from, and where each module sits in all.btf. Readers
(the control socket, the client API) hand out a merged file only when the split sha256 there
equals the module record's, and the client also checks the file's own size and sha256.

Repair (start-up, SIGHUP: :meth:`MergedWriter.repair`), in this thread so that it never races
a write: anything in merged/ that is not a regular file is removed (never followed), and every
file the index vouches for is hashed again; what differs is written again, then the index.

It runs beside the worker, never in it: a merged file is a few megabytes (a whole vmlinux), and
writing it must not delay event -> publish. Changes are debounced (a burst of loads rewrites
all.btf once); files are streamed from the vmlinux index the daemon already holds (no copy of
vmlinux per file) and replaced atomically.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..btf.btf import Btf
from ..cache import (
    MERGED_INDEX,
    MERGED_INDEX_FORMAT,
    SHA256_RE,
    Cache,
    CacheError,
    atomic_output,
    atomic_write_json,
    describe_os_error,
    ensure_dir,
    fsync_dir,
    is_regular_file,
    pwrite_all,
    remove_planted,
    sha256_hex,
    sha256_stream,
    verify_file,
    write_all,
)
from ..errors import ErrorCode
from ..reconcile.merge import MergedLayout, MergeError, Split, write_merged

QUIET = 0.1  # seconds without changes before writing
MAX_DELAY = 1.0  # ... but never more than this after the first change
RETRY = 5.0  # after a failed write (ENOSPC, EIO), try again this much later


class MergedWriter:
    """Keeps ``<kernel-dir>/merged/`` equal to the set of served modules (name -> split
    sha256)."""

    def __init__(self, cache: Cache, vmlinux: Btf, log: Any, *, per_module: bool = True,
                 between: Callable[[], None] | None = None) -> None:
        self.cache = cache
        # runs before each module is merged: the daemon waits there while its worker has
        # modules to decide, so merged writing never competes with event->publish
        self.between = between
        self.per_module = per_module
        self.vmlinux = vmlinux
        self.log = log
        self.dir = cache.merged_dir
        self.cond = threading.Condition()
        self.wanted: dict[str, str] = {}
        self.files: dict[str, dict[str, Any]] = {}  # module -> what its merged file holds
        self.all: dict[str, Any] | None = None  # what all.btf holds
        self.bytes_on_disk = 0
        self.errors = 0
        self.last_error: str | None = None
        self.all_writes = 0
        self._first_change: float | None = None
        self._last_change = 0.0
        self._retry_at: float | None = None
        self._busy = False
        self._stop = False
        self._verify = False  # repair due: re-hash what the index vouches for (the thread)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def prepare(self) -> None:
        """Create merged/, drop temporary files of a crash, take over what index.json
        vouches for (a restart reuses the files instead of rewriting them): a regular file
        of the size the index names. The thread hashes them again before its first write
        (:meth:`repair`), off the start-up path."""
        self.dir.mkdir(exist_ok=True)
        for entry in os.scandir(self.dir):
            if entry.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        idx = self.cache.read_merged_index() or {}
        mods = idx.get("modules")
        for name, info in (mods if isinstance(mods, dict) else {}).items():
            try:
                path = self.cache.merged_path(name)
            except CacheError:  # not a module name: not ours
                continue
            if _vouched(info, ("btf_sha256",)) and _size_is(path, info["size"]):
                self.files[name] = info
        all_info = idx.get("all")
        if (_vouched(all_info, ()) and isinstance(all_info.get("modules"), list)
                and all(_vouched(m, ("name", "btf_sha256"), file=False)
                        for m in all_info["modules"])
                and _size_is(self.cache.all_merged_path(), all_info["size"])):
            self.all = all_info
        with self.cond:
            self._verify = True
        self._measure()

    def repair(self) -> None:
        """Have the thread repair merged/ (SIGHUP): remove what is not a regular file there,
        hash every file the index vouches for, write again what differs, and the index."""
        with self.cond:
            self._verify = True
            now = time.monotonic()
            if self._first_change is None:
                self._first_change = now
            self._last_change = now
            self.cond.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="btfr-merged", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ input

    def set_wanted(self, wanted: dict[str, str]) -> None:
        """The served modules now published (name -> sha256 of their split BTF)."""
        with self.cond:
            if wanted == self.wanted:
                return
            self.wanted = dict(wanted)
            now = time.monotonic()
            if self._first_change is None:
                self._first_change = now
            self._last_change = now
            self.cond.notify_all()

    # ------------------------------------------------------------------ queries

    def lookup(self, name: str, sha256: str | None) -> Path | None:
        """merged/<name>.btf when it holds the split BTF with this sha256."""
        with self.cond:
            info = self.files.get(name)
        if sha256 and info and info.get("btf_sha256") == sha256:
            return self.cache.merged_path(name)
        return None

    def all_info(self) -> tuple[Path, list[str]] | None:
        with self.cond:
            info = self.all
        if not info:
            return None
        return self.cache.all_merged_path(), [m["name"] for m in info["modules"]]

    def pending(self) -> bool:
        with self.cond:
            return self._busy or self._first_change is not None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._busy or self._first_change is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
        return True

    def status(self) -> dict[str, Any]:
        with self.cond:
            return {"dir": str(self.dir), "files": len(self.files) + (1 if self.all else 0),
                    "bytes": self.bytes_on_disk,
                    "all_modules": len(self.all["modules"]) if self.all else 0,
                    "pending": self._busy or self._first_change is not None,
                    "all_writes": self.all_writes,
                    "errors": self.errors, "last_error": self.last_error}

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self._stop:
                    now = time.monotonic()
                    if self._first_change is None and self._retry_at is None:
                        self.cond.wait()
                        continue
                    if self._first_change is None:
                        due = self._retry_at or now
                    else:
                        due = min(self._last_change + QUIET, self._first_change + MAX_DELAY)
                    if now >= due:
                        break
                    self.cond.wait(due - now)
                if self._stop:
                    return
                wanted = dict(self.wanted)
                verify, self._verify = self._verify, False
                self._first_change = None
                self._retry_at = None
                self._busy = True
            try:
                ok = self.sync(wanted, verify=verify)
            except _Stopping:
                return
            except Exception as e:  # never let the thread die: log, retry later
                ok = False
                self._failed(f"internal error: {type(e).__name__}: {e}")
            with self.cond:
                self._busy = False
                if not ok and self._first_change is None:
                    self._retry_at = time.monotonic() + RETRY
                self.cond.notify_all()

    def _pause(self) -> None:
        if self.between is not None and not self._stop:
            self.between()
        if self._stop:
            raise _Stopping  # a half-written file is discarded by atomic_output

    def _failed(self, msg: str) -> None:
        with self.cond:
            self.errors += 1
            self.last_error = msg
        self.log.error("cannot write merged BTF", error=msg)

    def sync(self, wanted: dict[str, str], *, verify: bool = False) -> bool:
        """Make merged/ match `wanted`; True when everything was written. `verify`: repair
        first (:meth:`_check_files`)."""
        ok = True
        changed = self._check_files() if verify else False
        keep = set(wanted) if self.per_module else set()
        for name in sorted(set(self.files) - keep):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cache.merged_path(name))
            with self.cond:
                del self.files[name]
            changed = True
        present: list[str] = []  # names only: all.btf reads each split when it needs it
        for name, sha in sorted(wanted.items()):
            if not self.per_module or (self.files.get(name) or {}).get("btf_sha256") == sha:
                if is_regular_file(self.cache.btf_path(name)):
                    present.append(name)
                continue
            data = self._read_split(name, sha)
            if data is None:
                continue  # replaced meanwhile: the worker's next set_wanted() says so
            present.append(name)
            self._pause()
            try:
                _, digest, size = self._write(self.cache.merged_path(name), [(name, data)])
            except (OSError, MergeError) as e:
                ok = False
                self._failed(f"{name}: {_why(e)}")
                continue
            with self.cond:
                self.files[name] = {"btf_sha256": sha, "sha256": digest, "size": size}
            changed = True
        want_all = [(n, self._split_reader(n, wanted[n])) for n in sorted(present)]
        have_all = [(m["name"], m["btf_sha256"]) for m in (self.all or {}).get("modules", [])]
        if [(n, wanted[n]) for n, _ in want_all] != have_all or (not want_all and self.all):
            ok = self._write_all(want_all, wanted) and ok
            changed = True
        if changed:
            self._write_index()
            self._measure()
        return ok

    def _write_all(self, parts: list[tuple[str, Split]], wanted: dict[str, str]) -> bool:
        path = self.cache.all_merged_path()
        if not parts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with self.cond:
                self.all = None
            return True
        t0 = time.perf_counter()
        try:
            layout, digest, size = self._write(path, parts)
        except _Changed as e:
            # the worker published a newer BTF: its set_wanted() brings the next sync; the
            # all.btf on disk stays what index.json says it is
            self.log.debug("all.btf deferred", reason=str(e))
            return True
        except (OSError, MergeError) as e:
            # a stale all.btf would keep modules that are gone or changed: remove it
            with contextlib.suppress(OSError):
                os.unlink(path)
            with self.cond:
                self.all = None
            self._failed(f"all.btf: {_why(e)}")
            return False
        info = layout.to_json()
        info.update(sha256=digest, size=size)  # the file's own: what readers check
        for m in info["modules"]:
            m["btf_sha256"] = wanted[m["name"]]
        info["seconds"] = round(time.perf_counter() - t0, 4)
        with self.cond:
            self.all = info
            self.all_writes += 1
        self.log.info("merged BTF written", file=str(path), modules=len(parts),
                      bytes=layout.size, seconds=info["seconds"])
        return True

    def _write(self, path: Path, parts: list[tuple[str, Split]]
               ) -> tuple[MergedLayout, str, int]:
        """(layout, sha256, size) of the merged file written at `path`: the digest is of the
        complete temporary file as it is on disk (written positionally, so hashed after),
        before it replaces `path`."""
        done: list[tuple[str, int]] = []

        def digest(tmp: Path) -> None:
            with open(tmp, "rb") as t:
                done.append((sha256_stream(t), os.fstat(t.fileno()).st_size))

        # atomic_output: a MergeError or a stop() half way leaves no file
        with atomic_output(path, sync_dir=False, verify=digest) as f:
            fd = f.fileno()
            layout = write_merged(lambda b: write_all(f, b), self.vmlinux, parts, self._pause,
                                  place=lambda off, b: pwrite_all(fd, b, off))
        return layout, *done[0]

    def _check_files(self) -> bool:
        """The repair: merged/ a real directory holding only regular files (anything else
        removed, never followed), and every file we hold re-hashed against what the index
        says; one that differs is forgotten, so this sync writes it again. Always True: the
        index is written again after it."""
        notes: list[str] = []
        ensure_dir(self.dir, notes)
        remove_planted(self.dir, notes)
        with self.cond:
            files, all_info = dict(self.files), self.all
        for name, info in files.items():
            why = verify_file(self.cache.merged_path(name), info["size"], info["sha256"])
            if why:
                notes.append(f"{self.cache.merged_path(name)}: {why}; written again")
                with self.cond:
                    self.files.pop(name, None)
        if all_info is not None:
            path = self.cache.all_merged_path()
            why = verify_file(path, all_info["size"], all_info["sha256"])
            if why:
                notes.append(f"{path}: {why}; written again")
                with self.cond:
                    self.all = None
        if notes:
            self.log.warning("repaired merged BTF: found damaged or planted files",
                             files=notes)
        return True

    def _split_reader(self, name: str, sha: str) -> Callable[[], bytes]:
        def read() -> bytes:
            data = self._read_split(name, sha)
            if data is None:
                raise _Changed(f"{name}: its published BTF changed while all.btf was written",
                               ErrorCode.MERGE_CHANGED)
            return data
        return read

    def _read_split(self, name: str, sha: str) -> bytes | None:
        """The module's published split BTF, if it is still the one with this sha256 (a
        regular file: a FIFO planted there never blocks this thread)."""
        data = self.cache.read_published_btf(name)
        return data if data is not None and sha256_hex(data) == sha else None

    def _write_index(self) -> None:
        with self.cond:
            idx = {"format": MERGED_INDEX_FORMAT, "kernel_id": self.cache.kernel_id,
                   "vmlinux_types": self.vmlinux.type_count,
                   "vmlinux_str_len": self.vmlinux.str_end,
                   "modules": dict(sorted(self.files.items())), "all": self.all}
        try:
            fsync_dir(self.dir)  # the merged files' renames, before the index names them
            atomic_write_json(self.dir / MERGED_INDEX, idx)
        except OSError as e:
            self._failed(f"{MERGED_INDEX}: {describe_os_error(e)}")

    def _measure(self) -> None:
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
        with self.cond:
            self.bytes_on_disk = total


class _Changed(MergeError):
    """A module's published split BTF was replaced while all.btf was being written."""


class _Stopping(Exception):
    """stop() was called while a sync was under way."""


def _vouched(info: Any, keys: tuple[str, ...], *, file: bool = True) -> bool:
    """An index entry as this writer makes it: the file's sha256 and size, and `keys`."""
    if not isinstance(info, dict):
        return False
    if file and not (isinstance(info.get("sha256"), str) and SHA256_RE.match(info["sha256"])
                     and type(info.get("size")) is int):
        return False
    return all(isinstance(info.get(k), str) for k in keys)


def _size_is(path: Path, size: int) -> bool:
    """A regular file itself (not a symlink), of `size` bytes."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _why(e: Exception) -> str:
    return describe_os_error(e) if isinstance(e, OSError) else str(e)
