"""The on-disk cache BPF loaders consult.

Layout under the cache root (default ``/var/cache/btfreconciled``)::

    <root>/<kernel-id>/modules/<name>.btf   reconciled split BTF (base = running vmlinux)
    <root>/<kernel-id>/modules/<name>.json  verdict record, for every module
    <root>/<kernel-id>/merged/<name>.btf    vmlinux + the module as one standalone BTF
    <root>/<kernel-id>/merged/all.btf       vmlinux + every module served, in name order
    <root>/<kernel-id>/merged/index.json    each merged file's sha256 and size, and which
                                            split BTF (sha256) it was made from
    <root>/<kernel-id>/manifest.json        kernel identity and the module -> verdict table
    <root>/current -> <kernel-id>           relative symlink to the running kernel's directory

The cache belongs to one daemon: ``<root>/.lock`` is flock'ed for its lifetime (a
second daemon is refused, naming the holder's pid); nothing below the root is ever followed
through a symlink (a planted link is reported and replaced, never written through); the root's
mode is left as found unless the daemon created it; garbage collection removes only kernel
directories that carry the daemon's marker file. modules/ and merged/ hold regular files only:
anything else found there (start-up, SIGHUP) is removed without being followed, and what the
daemon owns is written again.

Readers (:func:`load_json`, :func:`verify_file`) open with O_NOFOLLOW|O_NONBLOCK, check the
type on the descriptor (a FIFO never blocks), refuse a file bigger than its kind's cap
(``MAX_*_BYTES``) unread, and compare a file's size before hashing it.

``kernel-id`` is the sha256 of the running kernel's raw vmlinux BTF.  Every file is written
atomically (hidden temporary file in the same directory, fsync, rename, fsync of the
directory), so a reader or a crash never sees a torn file.  A module that does not reconcile
never has a ``.btf``: a stale one is removed *before* its new verdict is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

DEFAULT_CACHE_DIR = Path("/var/cache/btfreconciled")
CURRENT_LINK = "current"
MANIFEST = "manifest.json"
MODULES_DIR = "modules"
MERGED_DIR = "merged"  # loader-ready standalone BTF (daemon/merged.py)
MERGED_INDEX = "index.json"
MERGED_INDEX_FORMAT = 2  # 2: each merged file's own sha256 and size
_TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"
KERNEL_MARKER = ".btfreconciled-kernel"  # in every kernel directory the daemon made
# The one list of verdicts whose BTF is handed to loaders: what the client returns, what
# `path` answers and what goes into merged/all.btf. Every other verdict (incompatible,
# no-base, error, pending, kernel-dropped, stale-file, ...) publishes a record and no BTF.
SERVED_VERDICTS = ("ok", "rescued")
# What a reader takes from the cache (inputs are untrusted): a bigger file is refused
# with its name and size, never read whole. Real ones: a record is 2-10 KB (an incompatible
# module's diagnostics, ~0.5-1 KB per unmatched base type, a few hundred KB at worst); the
# manifest is ~100 bytes per loaded module and index.json ~300 per merged module.
MAX_RECORD_BYTES = 4 << 20
MAX_INDEX_BYTES = 16 << 20  # merged/index.json
MAX_MANIFEST_BYTES = 16 << 20
_KERNEL_ID_RE = re.compile(r"^[0-9a-f]{64}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Module names as the kernel spells them in /sys/module (MODULE_NAME_LEN 56, '-' -> '_').
_MODULE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")


class CacheError(Exception):
    """A cache operation failed; the message is one line."""


class CacheFileError(CacheError):
    """A cache file is there but is not what the daemon writes (a symlink, a FIFO, a
    directory, too big, not JSON, ...); the message names the file and says what it is."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(reason.split())
        super().__init__(f"{self.path}: {self.reason}")


def lock_root(root: str | os.PathLike[str]) -> int:
    """Take the cache's lock (created if missing) for this process; returns the descriptor
    to keep open. Raises CacheError naming the pid of a daemon that holds it."""
    import fcntl

    path = Path(root) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except PermissionError:
        raise  # the caller says how to get a cache of one's own
    except OSError as e:
        raise CacheError(f"{path}: cannot open the cache lock: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise CacheError(f"{root}: the cache is in use by another btfreconciled (pid {holder}); "
                         "each cache directory belongs to one daemon") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def ensure_dir(path: Path, planted: list[str]) -> bool:
    """Make `path` a real directory of ours: a symlink or other non-directory planted there
    is removed (and reported in `planted`), never followed. True when it was created."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        return True
    if stat.S_ISDIR(st.st_mode):
        return False
    what = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
    planted.append(f"{path} was a {what}; replaced by a directory")
    os.unlink(path)
    os.mkdir(path, 0o755)
    return True


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """A regular file itself, not a symlink to one (what the cache hands out)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


_FILE_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """"a symlink", "a FIFO", ... for a mode that is not a regular file's."""
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """(descriptor, its fstat) of a regular file, never through a symlink (O_NOFOLLOW) and
    never blocking on a FIFO or device (O_NONBLOCK; the file type is checked on the
    descriptor itself). FileNotFoundError propagates (missing is not damaged); anything
    else that is not a regular file raises CacheFileError. The caller closes the fd."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CacheFileError(path, f"unreadable: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # not even opened: a device's open may act
        raise CacheFileError(path, f"is {file_kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        what = "is a symlink" if e.errno == errno.ELOOP else f"unreadable: {e.strerror or e}"
        raise CacheFileError(path, what) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between lstat and open
        os.close(fd)
        raise CacheFileError(path, f"is {file_kind(st.st_mode)}, not a regular file")
    return fd, st


def _read_upto(fd: int, most: int) -> Iterator[bytes]:
    """The descriptor's bytes in chunks, `most` at the most: one byte past a limit is how a
    file that grew while it was read is told from one that fits."""
    n = 0
    while n < most:
        chunk = os.read(fd, min(1 << 20, most - n))
        if not chunk:
            return
        n += len(chunk)
        yield chunk


def read_capped(path: str | os.PathLike[str], limit: int) -> bytes:
    """A regular file's bytes (see :func:`open_regular`), refused with its name and size
    when bigger than `limit` (checked before reading, and again while reading)."""
    fd, st = open_regular(path)
    try:
        if st.st_size > limit:
            raise CacheFileError(path, f"{st.st_size} bytes, more than the {limit} a cache "
                                 "file of this kind may have; refused")
        chunks = list(_read_upto(fd, limit + 1))
        n = sum(map(len, chunks))
    except OSError as e:
        raise CacheFileError(path, f"unreadable: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if n > limit:
        raise CacheFileError(path, f"more than the {limit} bytes a cache file of this kind "
                             "may have (it grew while read); refused")
    return b"".join(chunks)


def load_json(path: str | os.PathLike[str], limit: int) -> Any:
    """A cache JSON file parsed (see :func:`read_capped`); CacheFileError when it is not
    JSON, nested too deep for the parser, or not UTF-8."""
    data = read_capped(path, limit)
    try:
        return json.loads(data)
    except RecursionError:
        raise CacheFileError(path, "not a btfreconciled file: JSON nested too deep") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise CacheFileError(path, f"not valid JSON: {e}") from None


def verify_file(path: str | os.PathLike[str], size: int, sha256: str) -> str | None:
    """None when `path` is a regular file (not a symlink) of `size` bytes whose sha256 is
    `sha256`; else why not (one line). The size is compared on the descriptor that is then
    hashed, before hashing (a huge file is never read), and at most size+1 bytes are read."""
    try:
        fd, st = open_regular(path)
    except FileNotFoundError:
        return "missing"
    except CacheFileError as e:
        return e.reason
    try:
        if st.st_size != size:
            return f"{st.st_size} bytes, not the {size} recorded"
        h = hashlib.sha256()
        n = 0
        for chunk in _read_upto(fd, size + 1):
            h.update(chunk)
            n += len(chunk)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    finally:
        os.close(fd)
    if n != size or h.hexdigest() != sha256:
        return "its sha256 is not the one recorded"
    return None


def _open_nofollow(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes (at most `limit`), never through a symlink; None otherwise."""
    try:
        return read_capped(path, limit)
    except (OSError, CacheFileError):
        return None


def remove_planted(directory: Path, notes: list[str]) -> None:
    """Remove every entry of `directory` that is not a regular file (a symlink, FIFO,
    socket, device, directory): the cache's own directories hold only regular files. Links
    are unlinked, never followed; a directory tree is removed without following links in it."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            continue
        try:
            if stat.S_ISDIR(mode):
                shutil.rmtree(entry.path)  # fd-based on Linux: never follows a link inside
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
        notes.append(f"{entry.path} was {file_kind(mode)}; removed")


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """The package's one content hash (cache keys, record digests, file identity)."""
    return hashlib.sha256(data).hexdigest()


def sha256_stream(f: BinaryIO) -> str:
    """sha256_hex of the whole open file `f` (from its start, 1 MiB at a time); OSError
    propagates."""
    h = hashlib.sha256()
    f.seek(0)
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def kernel_id_of(vmlinux_btf: bytes) -> str:
    """The cache key of a running kernel: sha256 of its raw vmlinux BTF."""
    return sha256_hex(vmlinux_btf)


def normalize_module_name(name: str) -> str:
    """The kernel's spelling of a module name (``-`` and ``_`` are equivalent)."""
    return name.replace("-", "_")


_KO_RE = re.compile(r"^(?P<name>.+?)\.ko(?:\.(?:xz|zst|gz))?$")


def module_name_of(filename: str | os.PathLike[str]) -> str | None:
    """``kernel/fs/ext4/ext4.ko.xz`` -> ``ext4``; ``snd-hda-intel.ko`` -> ``snd_hda_intel``;
    None for a file that is not a module (.ko, .ko.xz, .ko.zst, .ko.gz)."""
    m = _KO_RE.match(os.path.basename(filename))
    return normalize_module_name(m["name"]) if m else None


def check_module_name(name: str) -> str:
    """Reject names that could escape the cache directory; return the normalized name."""
    norm = normalize_module_name(name)
    if not _MODULE_NAME_RE.match(norm) or norm in (".", ".."):
        raise CacheError(f"invalid module name {name!r}")
    return norm


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, mode: int | None = 0o644,
                  sync_dir: bool = True, verify: Callable[[Path], None] | None = None,
                  ) -> Iterator[BinaryIO]:
    """A binary file to stream into that replaces ``path`` when the block ends without an
    exception: readers see the old or the new file, never a mix. The package's one atomic
    writer (cache files, merged BTF, `reconcile -o`, rewritten modules).

    The temporary file is hidden (``.tmp-*.tmp``) in the same directory; on any failure it
    is removed and the exception propagates (the old file, if any, is untouched).  With
    ``sync_dir=False`` the caller fsyncs the directory itself (once for several renames).
    ``mode=None``: the caller sets owner and mode on the descriptor itself. ``verify`` sees
    the complete, fsynced temporary file before it replaces ``path`` and may raise.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{target.name}.", suffix=".tmp",
                                    dir=directory)
    try:
        with open(fd, "wb", buffering=0) as f:
            yield f
            if mode is not None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        if verify is not None:
            verify(Path(tmp_name))
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if sync_dir:
        fsync_dir(directory)


def write_all(f: BinaryIO, data: bytes | memoryview) -> None:
    """Write everything to ``f``'s descriptor (a single write may be short)."""
    fd = f.fileno()
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write everything at ``offset`` of ``fd`` without moving its file position."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                 sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, mode=mode, sync_dir=sync_dir) as f:
        write_all(f, data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sync_dir: bool = True) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(),
                 sync_dir=sync_dir)


def unlink_durable(path: str | os.PathLike[str], *, sync_dir: bool = True) -> bool:
    """Remove ``path`` if present and make the removal durable; True when it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync_dir:
        fsync_dir(Path(path).parent)
    return True


def _stage(target: Path, data: bytes) -> str:
    """Write ``data`` to a hidden temporary file next to ``target`` (not yet durable)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{target.name}.", dir=target.parent)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o644)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink_missing_ok(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


_libc: Any = None


def _syncfs(directory: Path) -> bool:
    """syncfs(2) on the filesystem holding ``directory``; False when unavailable/failed."""
    global _libc
    try:
        if _libc is None:
            import ctypes
            import ctypes.util

            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return _libc.syncfs(fd) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


def _make_durable(directory: Path, paths: list[str]) -> dict[str, OSError]:
    """Flush the data of freshly written files: one syncfs for a group, else fsync each.
    Returns the files whose flush failed."""
    failed: dict[str, OSError] = {}
    if not paths or (len(paths) > 2 and _syncfs(directory)):
        return failed
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            failed[p] = e
    return failed


class Cache:
    """One kernel's directory in the cache, plus the ``current`` link and GC of the others."""

    def __init__(self, root: str | os.PathLike[str], kernel_id: str) -> None:
        if not _KERNEL_ID_RE.match(kernel_id):
            raise CacheError(f"invalid kernel id {kernel_id!r}")
        self.root = Path(root)
        self.kernel_id = kernel_id
        self.kernel_dir = self.root / kernel_id
        self.modules_dir = self.kernel_dir / MODULES_DIR
        self.manifest_path = self.kernel_dir / MANIFEST
        # held while modules/ changes: publishing, and repair() (which must never remove
        # what a publish renames in at the same moment)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ set-up / GC

    def prepare(self) -> list[str]:
        """Create the directories, point ``current`` here, remove leftover temporary files.

        Returns what was cleaned up: temporary files left by a crash, anything planted in
        place of our directories (a symlink is removed and reported, never written through),
        and anything in modules/ and merged/ that is not a regular file (a symlink, FIFO,
        directory, ...: removed, never followed; what the daemon owns there is written again).
        """
        notes: list[str] = []
        if not os.path.isdir(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o755)  # ours: readable by loaders; a found root keeps its mode
        for d in (self.kernel_dir, self.modules_dir, self.merged_dir):
            ensure_dir(d, notes)
        marker = self.kernel_dir / KERNEL_MARKER
        if not os.path.lexists(marker):
            atomic_write(marker, f"{self.kernel_id}\n".encode())
        for d in (self.root, self.kernel_dir, self.modules_dir, self.merged_dir):
            for entry in os.scandir(d):
                if entry.name.startswith(_TMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        notes.append(entry.name)
        for d in (self.modules_dir, self.merged_dir):
            remove_planted(d, notes)
        self._point_current()
        return notes

    def repair(self) -> list[str]:
        """The running daemon's repair (SIGHUP): our directories and the ``current`` link as
        :meth:`prepare` makes them, and nothing but regular files in modules/ (anything else
        removed, never followed). merged/ is its writer's (daemon/merged.py), which repairs
        it in its own thread. Returns what was found, as :meth:`prepare` does."""
        notes: list[str] = []
        with self._lock:  # no publish renames into modules/ meanwhile
            for d in (self.kernel_dir, self.modules_dir):
                ensure_dir(d, notes)
            marker = self.kernel_dir / KERNEL_MARKER
            if not is_regular_file(marker):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)
                atomic_write(marker, f"{self.kernel_id}\n".encode())
            remove_planted(self.modules_dir, notes)
            self._point_current()
        return notes

    def check_published(self, name: str, record: dict[str, Any],
                        ignore: tuple[str, ...] = ()) -> str | None:
        """None when modules/<name>.json says what `record` says (but for the fields in
        `ignore`) and the .btf is what it names (size, sha256) or absent when it names none;
        else what is wrong (one line)."""
        try:
            on_disk = load_json(self.record_path(name), MAX_RECORD_BYTES)
        except FileNotFoundError:
            return f"{self.record_path(name)} is missing"
        except CacheFileError as e:
            return str(e)
        expected = json.loads(json.dumps({k: v for k, v in record.items() if k not in ignore}))
        if not isinstance(on_disk, dict) or expected != {
                k: v for k, v in on_disk.items() if k not in ignore}:
            return f"{self.record_path(name)} is not the record published"
        sha, size = record.get("btf_sha256"), record.get("btf_size")
        if sha:
            why = verify_file(self.btf_path(name), size if isinstance(size, int) else -1, sha)
            return f"{self.btf_path(name)}: {why}" if why else None
        if os.path.lexists(self.btf_path(name)):
            return f"{self.btf_path(name)} is there though its record names no BTF"
        return None

    def _point_current(self) -> None:
        link = self.root / CURRENT_LINK
        with contextlib.suppress(OSError):
            if os.readlink(link) == self.kernel_id:
                return
        tmp = self.root / f"{_TMP_PREFIX}{CURRENT_LINK}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(self.kernel_id, tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def gc(self) -> list[str]:
        """Remove other kernels' directories: only those the daemon made (they carry its
        marker file); anything else under the root is left alone."""
        removed = []
        for entry in os.scandir(self.root):
            if (entry.name == self.kernel_id or not _KERNEL_ID_RE.match(entry.name)
                    or not entry.is_dir(follow_symlinks=False)
                    or not os.path.isfile(os.path.join(entry.path, KERNEL_MARKER))):
                continue
            # Rename first so a half-deleted tree is never mistaken for a kernel's entry.
            doomed = self.root / f"{_TMP_PREFIX}gc.{entry.name}"
            try:
                os.replace(entry.path, doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(entry.name)
        # a gc rename interrupted by a crash: ours by name, finish it
        for entry in os.scandir(self.root):
            if entry.name.startswith(f"{_TMP_PREFIX}gc.") and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
        if removed:
            fsync_dir(self.root)
        return removed

    # ------------------------------------------------------------------ paths

    def btf_path(self, name: str) -> Path:
        return self.modules_dir / f"{check_module_name(name)}.btf"

    def record_path(self, name: str) -> Path:
        return self.modules_dir / f"{check_module_name(name)}.json"

    @property
    def merged_dir(self) -> Path:
        return self.kernel_dir / MERGED_DIR

    def merged_path(self, name: str) -> Path:
        return self.merged_dir / f"{check_module_name(name)}.btf"

    def all_merged_path(self) -> Path:
        return self.merged_dir / "all.btf"

    def read_merged_index(self) -> dict[str, Any] | None:
        """merged/index.json when it is ours and readable, else None (see
        :meth:`load_merged_index`)."""
        try:
            return self.load_merged_index()
        except (OSError, CacheError):
            return None

    def load_merged_index(self) -> dict[str, Any] | None:
        """merged/index.json: None when missing or of another format (the daemon writes
        it again); CacheFileError when it is not a regular file, too big or not JSON. Only
        its top level is checked here; readers type-check every field they take."""
        path = self.merged_dir / MERGED_INDEX
        try:
            idx = load_json(path, MAX_INDEX_BYTES)
        except FileNotFoundError:
            return None
        if not isinstance(idx, dict):
            raise CacheFileError(path, f"not a btfreconciled index: a JSON "
                                 f"{type(idx).__name__}, not an object")
        if idx.get("format") != MERGED_INDEX_FORMAT:
            return None
        return idx

    # ------------------------------------------------------------------ publishing

    def publish(self, name: str, record: dict[str, Any], btf: bytes | None) -> None:
        """Publish one module's verdict; ``btf`` only for a module that reconciled.

        Order matters for readers: a ``.btf`` is in place before the record that announces
        it, and a stale ``.btf`` is gone before a record that says there is none.
        """
        errors = self.publish_many([(name, record, btf)])
        if name in errors:
            raise errors[name]

    def remove(self, name: str) -> bool:
        """Forget a module (unloaded): its ``.btf`` first, then its record."""
        with self._lock:
            a = unlink_durable(self.btf_path(name), sync_dir=False)
            b = unlink_durable(self.record_path(name), sync_dir=False)
            if a or b:
                fsync_dir(self.modules_dir)
        return a or b

    def publish_many(self, entries: list[tuple[str, dict[str, Any] | None, bytes | None]]
                     ) -> dict[str, OSError]:
        """Publish (``record`` given) or remove (``record`` None) several modules at once.

        Every new file is written to a hidden temporary file and made durable *before* it
        is renamed into place -- one ``syncfs`` for a group instead of one ``fsync`` per
        file -- then the renames happen in order (``.btf`` before its record, stale
        ``.btf`` removed before its record) and the directory is fsynced once.  A failure
        (ENOSPC, EIO, ...) affects only its own module; it is returned, not raised.
        """
        with self._lock:
            return self._publish_many(entries)

    def _publish_many(self, entries: list[tuple[str, dict[str, Any] | None, bytes | None]]
                      ) -> dict[str, OSError]:
        errors: dict[str, OSError] = {}
        staged: list[tuple[str, str | None, str | None]] = []
        for name, record, btf in entries:
            if record is None:
                staged.append((name, None, None))
                continue
            tb = tj = None
            try:
                if btf is not None:
                    tb = _stage(self.btf_path(name), btf)
                tj = _stage(self.record_path(name),
                            (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
            except OSError as e:
                errors[name] = e
                _discard(tb, tj)
                continue
            staged.append((name, tb, tj))
        temps = [t for _, tb, tj in staged for t in (tb, tj) if t is not None]
        failed = _make_durable(self.modules_dir, temps)
        for name, tb, tj in staged:
            try:
                if tj is None:
                    _unlink_missing_ok(self.btf_path(name))
                    _unlink_missing_ok(self.record_path(name))
                    continue
                bad = failed.get(tj) or (failed.get(tb) if tb else None)
                if bad is not None:
                    raise bad
                if tb is not None:
                    os.replace(tb, self.btf_path(name))
                else:
                    _unlink_missing_ok(self.btf_path(name))
                os.replace(tj, self.record_path(name))
            except OSError as e:
                errors[name] = e
                _discard(tb, tj)
        fsync_dir(self.modules_dir)
        return errors

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)

    # ------------------------------------------------------------------ reading

    def read_record(self, name: str) -> dict[str, Any] | None:
        """modules/<name>.json when it is a regular file holding a JSON object, else None."""
        try:
            rec = load_json(self.record_path(name), MAX_RECORD_BYTES)
        except (OSError, CacheError):
            return None
        return rec if isinstance(rec, dict) else None

    def read_published_btf(self, name: str) -> bytes | None:
        """A module's published .btf: a regular file only, never through a symlink."""
        return _open_nofollow(self.btf_path(name), 256 << 20)

    def published_btf_intact(self, name: str, size: int | None) -> bool:
        """The .btf is still a regular file of the recorded size (cheap; for re-checks)."""
        try:
            st = os.lstat(self.btf_path(name))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def read_manifest(self) -> dict[str, Any] | None:
        """manifest.json when it is a regular file holding a JSON object, else None."""
        try:
            m = load_json(self.manifest_path, MAX_MANIFEST_BYTES)
        except (OSError, CacheError):
            return None
        return m if isinstance(m, dict) else None

    def published_modules(self) -> Iterator[str]:
        """Names that have a record on disk."""
        try:
            entries = list(os.scandir(self.modules_dir))
        except FileNotFoundError:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                yield entry.name[: -len(".json")]


def describe_os_error(exc: OSError) -> str:
    """``ENOSPC: No space left on device`` style text for logs and records."""
    code = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{code + ': ' if code else ''}{text}{where}"


def _discard(*temps: str | None) -> None:
    """Remove staged temp files of a write that will not be published."""
    for t in temps:
        if t is not None:
            with contextlib.suppress(OSError):
                os.unlink(t)
