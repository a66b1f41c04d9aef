"""Where a BPF loader finds the BTF btfreconciled published, from the cache alone.

No daemon is needed: everything is read from the cache directory (default
``/var/cache/btfreconciled``, world-readable), and checked on the way::

    from btfreconciled import client

    path = client.merged_path("btfr_loader")  # vmlinux + module, one standalone BTF:
                                               # libbpf btf_custom_path, cilium/ebpf
                                               # KernelTypes, bpftrace BPFTRACE_BTF
    path = client.all_merged_path()            # vmlinux + every module served (below)
    path = client.split_path("btfr_loader")    # split BTF, base /sys/kernel/btf/vmlinux

Every lookup raises a :class:`NoBtf` subclass with a one-line reason when there is nothing
to hand out: the cache is missing, damaged or another kernel's (:class:`CacheUnavailable`),
the module is not loaded or unknown (:class:`NotLoaded`), its verdict is not served
(:class:`NotReconciled`, with ``.verdict``), the cache's record is of another build than the
loaded module (:class:`StaleRecord`), or its file is still being written
(:class:`NotYetWritten`).

What a returned path guarantees, checked at the time of the call:

- the cache is the running kernel's (sha256 of ``/sys/kernel/btf/vmlinux``);
- the module is loaded, and its record's verdict is one of ``cache.SERVED_VERDICTS``
  (ok, rescued) -- the one list of verdicts whose BTF loaders get;
- the record is of the loaded build: its GNU build id and srcversion equal
  ``/sys/module/<m>/notes/.note.gnu.build-id`` and ``/sys/module/<m>/srcversion``. When
  neither pair can be compared the lookup succeeds and :meth:`Published.identity` says
  "unverified" and why;
- the file is a regular file (never a symlink, nor in a symlinked directory) whose size and
  sha256 are the ones recorded: the record's for a split file, ``merged/index.json``'s for a
  merged one, whose modules are exactly those records (for all.btf: every module it holds).

Nothing in the cache is trusted further than that: no file is followed through a symlink
or read when it is not a regular file (a FIFO never blocks), a record or index bigger than
``cache.MAX_RECORD_BYTES`` / ``MAX_INDEX_BYTES`` is refused unread, and JSON that is not the
daemon's (wrong types, nesting, another module's record) is :class:`CacheUnavailable`
naming the file. Only names from the caller (checked as module names) make paths.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, NamedTuple

from .cache import (
    CURRENT_LINK,
    DEFAULT_CACHE_DIR,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_RECORD_BYTES,
    SERVED_VERDICTS,
    SHA256_RE,
    Cache,
    CacheError,
    CacheFileError,
    check_module_name,
    file_kind,
    load_json,
    verify_file,
)
from .daemon.policy import STALE_FILE, loaded_identity  # (imports cache and elf only)
from .elf import ElfError, sha256_file

SYSFS = Path("/sys")

__all__ = ["CacheUnavailable", "Identity", "NoBtf", "NotLoaded", "NotReconciled",
           "NotYetWritten", "Published", "StaleRecord", "all_merged_path", "merged_path",
           "open_cache", "split_path"]

_VERDICT_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_BUILD_ID_RE = re.compile(r"^[0-9a-f]{2,128}$")
_SRCVERSION_RE = re.compile(r"^[!-~]{1,64}$")  # printable ASCII, no blanks
_IDENTITY_KEYS = (("build_id", "build id"), ("srcversion", "srcversion"))


class NoBtf(LookupError):
    """There is no BTF to hand out; ``str()`` is one line saying why."""

    def __init__(self, message: str, module: str | None = None,
                 verdict: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.verdict = verdict


class CacheUnavailable(NoBtf):
    """No cache, an unreadable or damaged one, or one made for another kernel."""


class NotLoaded(NoBtf):
    """The module is not loaded, or the cache has no record of it."""


class NotReconciled(NoBtf):
    """The module's verdict is not served (incompatible, no-base, error, ...): see
    ``verdict``; the served ones are ``cache.SERVED_VERDICTS``."""


class NotYetWritten(NoBtf):
    """The module is served, but its file is not (yet) the one the cache vouches for: being
    written, or rewritten after a change (try again shortly). ``verdict`` is the record's."""


class StaleRecord(NoBtf):
    """The cache's record is of another build than the loaded module (rebuilt and reloaded
    while btfreconciled was not running, or before it looked again)."""


class Identity(NamedTuple):
    """Whether a module's record was matched to the loaded module, and how (or why not)."""

    verified: bool
    detail: str

    def __str__(self) -> str:
        return f"{'verified' if self.verified else 'unverified'}: {self.detail}"


def _show(value: Any) -> str:
    """A JSON value in a one-line message: short, never several lines."""
    if value is None or isinstance(value, str | int | float | bool):
        text = repr(value)
    else:
        text = f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Member(NamedTuple):
    name: str
    btf_sha256: str


class _FileInfo(NamedTuple):
    """What merged/index.json says a merged file is."""

    sha256: str  # of the merged file itself
    size: int
    btf_sha256: str | None  # per-module file: the split BTF it was made from
    members: tuple[_Member, ...]  # all.btf: the modules it holds, in file order


class Published:
    """One kernel's directory of the cache, checked to be the running kernel's."""

    def __init__(self, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, *,
                 vmlinux: str | os.PathLike[str] | None = None,
                 sysfs: str | os.PathLike[str] = SYSFS, verify_kernel: bool = True) -> None:
        self.root = Path(cache_dir)
        self.sysfs = Path(sysfs)
        link = self.root / CURRENT_LINK
        try:
            kernel_id = os.readlink(link)
        except FileNotFoundError:
            raise CacheUnavailable(f"{link}: no such link: btfreconciled has not published "
                                   f"anything under {self.root}") from None
        except OSError as e:
            raise CacheUnavailable(f"{link}: {e.strerror or e}") from None
        if not SHA256_RE.match(kernel_id):
            raise CacheUnavailable(f"{link} points at {_show(kernel_id)}, not a kernel id")
        self.kernel_id = kernel_id
        self.kernel_dir = self.root / kernel_id
        self._cache = Cache(self.root, kernel_id)
        self._identities: dict[str, Identity] = {}
        self._real_dir(self.kernel_dir)
        if verify_kernel:
            vml = Path(vmlinux) if vmlinux else self.sysfs / "kernel" / "btf" / "vmlinux"
            try:
                running = sha256_file(vml)
            except ElfError as e:
                raise CacheUnavailable(f"{e}: cannot tell which kernel is running") from None
            if running != kernel_id:
                raise CacheUnavailable(
                    f"{self.root}: the cache is for kernel {kernel_id[:16]}, the running "
                    f"kernel is {running[:16]} (is btfreconciled running?)")
        path = self.kernel_dir / MANIFEST
        try:
            manifest = self._load(path, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise CacheUnavailable(f"{path}: unreadable: No such file or directory") from None
        if not isinstance(manifest, dict):
            raise CacheUnavailable(f"{path}: not a btfreconciled manifest: "
                                   f"{_show(manifest)}, not an object")
        if manifest.get("kernel_id", kernel_id) != kernel_id:
            raise CacheUnavailable(f"{path}: not this kernel's manifest: it names kernel "
                                   f"{_show(manifest.get('kernel_id'))}")
        self.manifest: dict[str, Any] = manifest

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _load(path: Path, limit: int, module: str | None = None) -> Any:
        """A cache JSON file; FileNotFoundError propagates, damage is CacheUnavailable."""
        try:
            return load_json(path, limit)
        except CacheFileError as e:
            raise CacheUnavailable(str(e), module) from None

    @staticmethod
    def _real_dir(path: Path, module: str | None = None) -> None:
        """`path` is a directory itself, not a symlink to one."""
        try:
            mode = os.lstat(path).st_mode
        except OSError as e:
            raise CacheUnavailable(f"{path}: {e.strerror or e}", module) from None
        if not stat.S_ISDIR(mode):
            raise CacheUnavailable(f"{path}: is {file_kind(mode)}, not a directory of the "
                                   "cache", module)

    # ------------------------------------------------------------------ records

    def record(self, module: str) -> dict[str, Any]:
        """The module's verdict record, checked (types, that it is this module's and this
        kernel's, and its build against the loaded module's: :meth:`identity`).

        NotLoaded when it is not loaded or unknown; StaleRecord when the record is of
        another build; CacheUnavailable when the record is damaged."""
        try:
            if not isinstance(module, str):
                raise CacheError(f"invalid module name {_show(module)}")
            name = check_module_name(module.removesuffix(".ko"))
        except CacheError as e:
            raise NotLoaded(str(e), module if isinstance(module, str) else None) from None
        if not (self.sysfs / "module" / name).is_dir():
            raise NotLoaded(f"{name}: not loaded (no {self.sysfs / 'module' / name})", name)
        self._real_dir(self._cache.modules_dir, name)
        path = self._cache.record_path(name)
        try:
            rec = self._load(path, MAX_RECORD_BYTES, name)
        except FileNotFoundError:
            raise NotLoaded(f"{name}: btfreconciled has no record of it (yet)", name) from None
        self._check_record(path, name, rec)
        self._identities[name] = self._check_identity(path, name, rec)
        return rec

    def identity(self, module: str) -> Identity:
        """Whether the module's record is proven to be of the loaded build (GNU build id,
        srcversion), and how; ``verified`` False says why it cannot be told. Raises as
        :meth:`record` does (a record proven to be of another build is StaleRecord)."""
        self.record(module)
        return self._identities[check_module_name(module.removesuffix(".ko"))]

    def _check_record(self, path: Path, name: str, rec: Any) -> None:
        """Every field the client reads has the type and form the daemon writes."""
        def damaged(why: str) -> CacheUnavailable:
            return CacheUnavailable(f"{path}: not a btfreconciled record: {why}", name)

        if not isinstance(rec, dict):
            raise damaged(f"{_show(rec)}, not an object")
        if rec.get("module") != name:
            raise damaged(f"its module is {_show(rec.get('module'))}, not {name!r}")
        verdict = rec.get("verdict")
        if not isinstance(verdict, str) or not _VERDICT_RE.match(verdict):
            raise damaged(f"verdict {_show(verdict)}")
        if not isinstance(rec.get("summary", ""), str | None):
            raise damaged(f"summary {_show(rec.get('summary'))}")
        sha, size = rec.get("btf_sha256"), rec.get("btf_size")
        if sha is not None and not (isinstance(sha, str) and SHA256_RE.match(sha)):
            raise damaged(f"btf_sha256 {_show(sha)}")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                                 or size < 0):
            raise damaged(f"btf_size {_show(size)}")
        for key, pattern in (("build_id", _BUILD_ID_RE), ("srcversion", _SRCVERSION_RE)):
            v = rec.get(key)
            if v is not None and not (isinstance(v, str) and pattern.match(v)):
                raise damaged(f"{key} {_show(v)}")
        if rec.get("kernel_id", self.kernel_id) != self.kernel_id:
            raise CacheUnavailable(f"{path}: the record of another kernel "
                                   f"({_show(rec.get('kernel_id'))})", name)

    def _check_identity(self, path: Path, name: str, rec: dict[str, Any]) -> Identity:
        loaded = loaded_identity(self.sysfs, name)
        matched = []
        for key, what in _IDENTITY_KEYS:
            ours, theirs = rec.get(key), loaded.get(key)
            if not (ours and theirs):
                continue
            if ours != theirs:
                if rec["verdict"] == STALE_FILE:  # the daemon's own finding: the file's ids
                    return Identity(False, f"verdict {STALE_FILE}: the file on disk has "
                                    f"{what} {ours}, the loaded module {theirs}")
                raise StaleRecord(
                    f"{name}: the cache's record is of another build than the loaded module: "
                    f"{what} {ours} in {path}, {_one_line(theirs, 80)} in "
                    f"{self.sysfs / 'module' / name}; btfreconciled checks it again when it "
                    "runs", name, rec["verdict"])
            matched.append(f"{what} {ours}")
        if matched:
            return Identity(True, f"{' and '.join(matched)} match the loaded module")
        ours_has = [what for key, what in _IDENTITY_KEYS if rec.get(key)]
        theirs_has = [what for key, what in _IDENTITY_KEYS if loaded.get(key)]
        if not ours_has:
            why = "the record names neither a build id nor a srcversion"
        elif not theirs_has:
            why = (f"{self.sysfs / 'module' / name} shows neither a build id "
                   "(notes/.note.gnu.build-id) nor a srcversion")
        else:
            why = (f"the record names only a {ours_has[0]}, the loaded module shows only a "
                   f"{theirs_has[0]}")
        return Identity(False, why)

    def _served(self, module: str) -> tuple[str, dict[str, Any]]:
        """The record of a module whose BTF is served (verdict in SERVED_VERDICTS)."""
        rec = self.record(module)
        name, verdict = rec["module"], rec["verdict"]
        if verdict not in SERVED_VERDICTS:
            summary = _one_line(rec.get("summary") or "")
            raise NotReconciled(f"{name}: no reconciled BTF ({verdict}: {summary})", name,
                                verdict)
        if rec.get("btf_sha256") is None or rec.get("btf_size") is None:
            raise CacheUnavailable(f"{self._cache.record_path(name)}: not a btfreconciled "
                                   f"record: verdict {verdict} without btf_sha256 and "
                                   "btf_size", name)
        return name, rec

    # ------------------------------------------------------------------ merged/index.json

    def _index(self) -> tuple[Path, dict[str, Any]] | None:
        self._real_dir(self._cache.merged_dir)
        try:
            idx = self._cache.load_merged_index()
        except CacheFileError as e:
            raise CacheUnavailable(str(e)) from None
        return None if idx is None else (self._cache.merged_dir / "index.json", idx)

    @staticmethod
    def _file_info(ipath: Path, where: str, info: Any, *, members: bool) -> _FileInfo:
        def damaged(why: str) -> CacheUnavailable:
            return CacheUnavailable(f"{ipath}: not a btfreconciled index: {where}: {why}")

        if not isinstance(info, dict):
            raise damaged(f"{_show(info)}, not an object")
        sha, size = info.get("sha256"), info.get("size")
        if not (isinstance(sha, str) and SHA256_RE.match(sha)):
            raise damaged(f"sha256 {_show(sha)}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise damaged(f"size {_show(size)}")
        if not members:
            btf_sha = info.get("btf_sha256")
            if not (isinstance(btf_sha, str) and SHA256_RE.match(btf_sha)):
                raise damaged(f"btf_sha256 {_show(btf_sha)}")
            return _FileInfo(sha, size, btf_sha, ())
        mods = info.get("modules")
        if not isinstance(mods, list):
            raise damaged(f"modules {_show(mods)}, not an array")
        out: list[_Member] = []
        for m in mods:
            if not isinstance(m, dict):
                raise damaged(f"a module {_show(m)}, not an object")
            name, btf_sha = m.get("name"), m.get("btf_sha256")
            try:
                if not isinstance(name, str) or check_module_name(name) != name:
                    raise CacheError
            except CacheError:
                raise damaged(f"module name {_show(name)}") from None
            if not (isinstance(btf_sha, str) and SHA256_RE.match(btf_sha)):
                raise damaged(f"{name}: btf_sha256 {_show(btf_sha)}")
            if any(x.name == name for x in out):
                raise damaged(f"{name} listed twice")
            out.append(_Member(name, btf_sha))
        return _FileInfo(sha, size, None, tuple(out))

    # ------------------------------------------------------------------ paths

    def split_path(self, module: str) -> Path:
        """The module's reconciled split BTF (base: the running vmlinux)."""
        name, rec = self._served(module)
        self._real_dir(self._cache.modules_dir, name)
        path = self._cache.btf_path(name)
        why = verify_file(path, rec["btf_size"], rec["btf_sha256"])
        if why:
            raise NotYetWritten(f"{name}: {path} is not the BTF its record names ({why}); "
                                "not handed out", name, rec["verdict"])
        return path

    def merged_path(self, module: str) -> Path:
        """vmlinux + the module as one standalone BTF."""
        name, rec = self._served(module)
        verdict = rec["verdict"]
        found = self._index()
        if found is None:
            raise NotYetWritten(f"{name}: no merged BTF yet (merged/index.json is being "
                                "written); try again in a moment", name, verdict)
        ipath, idx = found
        mods = idx.get("modules")
        if not isinstance(mods, dict):
            raise CacheUnavailable(f"{ipath}: not a btfreconciled index: modules "
                                   f"{_show(mods)}, not an object", name)
        if name not in mods:
            raise NotYetWritten(f"{name}: its merged BTF is being written; try again in a "
                                "moment", name, verdict)
        info = self._file_info(ipath, f"modules.{name}", mods[name], members=False)
        if info.btf_sha256 != rec["btf_sha256"]:
            raise NotYetWritten(f"{name}: its merged BTF is being written (the one there is "
                                "of an older BTF); try again in a moment", name, verdict)
        path = self._cache.merged_path(name)
        why = verify_file(path, info.size, info.sha256)
        if why:
            raise NotYetWritten(f"{name}: {path} is not the file merged/index.json names "
                                f"({why}); not handed out", name, verdict)
        return path

    def all_merged(self) -> tuple[Path, list[str]]:
        """vmlinux + every module it holds, and those modules in file order. Each of them is
        loaded, of the build recorded, with a verdict served (``cache.SERVED_VERDICTS``:
        ok, rescued) and the split BTF all.btf was made from; a module loaded since may not
        be in it yet."""
        found = self._index()
        if found is None:
            raise NotYetWritten("no merged BTF of all modules yet (merged/index.json is being "
                                "written); try again in a moment")
        ipath, idx = found
        if idx.get("all") is None:
            raise NotReconciled("no merged BTF of all modules: no module with a served verdict "
                                f"({', '.join(SERVED_VERDICTS)}), or it is being written")
        info = self._file_info(ipath, "all", idx["all"], members=True)
        path = self._cache.all_merged_path()
        for m in info.members:
            try:
                _, rec = self._served(m.name)
            except NotLoaded as e:
                raise NotYetWritten(f"{path} holds {m.name}, which is not loaded or has no "
                                    f"record ({e}); not handed out until it is written "
                                    "again") from None
            except NotReconciled as e:
                raise NotYetWritten(f"{path} holds {m.name}, whose verdict {e.verdict} is not "
                                    f"served ({', '.join(SERVED_VERDICTS)}); not handed out "
                                    "until it is written again") from None
            if rec["btf_sha256"] != m.btf_sha256:
                raise NotYetWritten(f"{path} holds an older BTF of {m.name}; it is being "
                                    "written again, try again in a moment")
        why = verify_file(path, info.size, info.sha256)
        if why:
            raise NotYetWritten(f"{path} is not the file merged/index.json names ({why}); not "
                                "handed out")
        return path, [m.name for m in info.members]


def open_cache(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, **kw: Any) -> Published:
    return Published(cache_dir, **kw)


def split_path(module: str, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
               **kw: Any) -> Path:
    return Published(cache_dir, **kw).split_path(module)


def merged_path(module: str, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
                **kw: Any) -> Path:
    return Published(cache_dir, **kw).merged_path(module)


def all_merged_path(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, **kw: Any) -> Path:
    return Published(cache_dir, **kw).all_merged()[0]
