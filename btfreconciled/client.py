"""Where a BPF loader finds the BTF btfreconciled published (SPEC §8), from the cache alone.

No daemon is needed: everything is read from the cache directory (default
``/var/cache/btfreconciled``, world-readable), and checked on the way::

    from btfreconciled import client

    path = client.merged_path("btfr_loader")  # vmlinux + module, one standalone BTF:
                                               # libbpf btf_custom_path, cilium/ebpf
                                               # KernelTypes, bpftrace BPFTRACE_BTF
    path = client.all_merged_path()            # vmlinux + every module whose verdict is ok
    path = client.split_path("btfr_loader")    # split BTF, base /sys/kernel/btf/vmlinux

Every lookup raises a :class:`NoBtf` subclass with a one-line reason when there is nothing
to hand out: the cache is missing or belongs to another kernel (:class:`CacheUnavailable`),
the module is not loaded or unknown (:class:`NotLoaded`), it did not reconcile
(:class:`NotReconciled`, with its verdict), or its merged file is still being written
(:class:`NotYetWritten`). A file is returned only when the cache vouches for it: the cache is
the running kernel's (sha256 of its vmlinux BTF), the module's record says ok, and the
file's split BTF is the one that record names (by sha256). Symlinks are never followed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .cache import (
    CURRENT_LINK,
    DEFAULT_CACHE_DIR,
    MANIFEST,
    Cache,
    CacheError,
    check_module_name,
    is_regular_file,
)
from .elf import ElfError, sha256_file

SYSFS = Path("/sys")

__all__ = ["CacheUnavailable", "NoBtf", "NotLoaded", "NotReconciled", "NotYetWritten",
           "Published", "all_merged_path", "merged_path", "open_cache", "split_path"]


class NoBtf(LookupError):
    """There is no BTF to hand out; ``str()`` is one line saying why."""

    def __init__(self, message: str, module: str | None = None,
                 verdict: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.verdict = verdict


class CacheUnavailable(NoBtf):
    """No cache, an unreadable one, or one made for another kernel."""


class NotLoaded(NoBtf):
    """The module is not loaded, or the cache has no record of it."""


class NotReconciled(NoBtf):
    """The module's verdict is not ok (incompatible, no-base, error, ...): see ``verdict``."""


class NotYetWritten(NoBtf):
    """The module reconciled, but its merged file is not written yet (try again shortly)."""


def _digest(path: Path) -> str | None:
    """sha256 of a regular file that is not a symlink, else None."""
    try:
        return sha256_file(path, follow_symlinks=False)
    except ElfError:
        return None


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
        if "/" in kernel_id or len(kernel_id) != 64:
            raise CacheUnavailable(f"{link} points at {kernel_id!r}, not a kernel id")
        self.kernel_id = kernel_id
        self.kernel_dir = self.root / kernel_id
        self._cache = Cache(self.root, kernel_id)
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
        try:
            with open(self.kernel_dir / MANIFEST, "rb") as f:
                self.manifest: dict[str, Any] = json.load(f)
        except (OSError, ValueError) as e:
            raise CacheUnavailable(f"{self.kernel_dir / MANIFEST}: unreadable: "
                                   f"{getattr(e, 'strerror', None) or e}") from None

    # ------------------------------------------------------------------ records

    def record(self, module: str) -> dict[str, Any]:
        """The module's verdict record; NotLoaded when it is not loaded or unknown."""
        try:
            name = check_module_name(module.removesuffix(".ko"))
        except CacheError as e:
            raise NotLoaded(str(e), module) from None
        if not (self.sysfs / "module" / name).is_dir():
            raise NotLoaded(f"{name}: not loaded (no {self.sysfs / 'module' / name})", name)
        path = self.kernel_dir / "modules" / f"{name}.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                rec = json.load(f)
        except FileNotFoundError:
            raise NotLoaded(f"{name}: btfreconciled has no record of it (yet)", name) from None
        except (OSError, ValueError) as e:
            raise CacheUnavailable(f"{path}: unreadable: {getattr(e, 'strerror', None) or e}",
                                   name) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("verdict"), str):
            raise CacheUnavailable(f"{path}: not a btfreconciled record", name)
        return rec

    def _ok_record(self, module: str) -> tuple[str, dict[str, Any]]:
        rec = self.record(module)
        name = str(rec.get("module") or module)
        if not rec.get("btf") or not rec.get("btf_sha256"):  # ok, rescued, kernel's bytes
            raise NotReconciled(f"{name}: no reconciled BTF ({rec['verdict']}: "
                                f"{rec.get('summary', '')})", name, rec["verdict"])
        return name, rec

    # ------------------------------------------------------------------ paths

    def split_path(self, module: str) -> Path:
        """The module's reconciled split BTF (base: the running vmlinux)."""
        name, rec = self._ok_record(module)
        path = self.kernel_dir / "modules" / f"{name}.btf"
        if _digest(path) != rec["btf_sha256"]:
            raise NotYetWritten(f"{name}: {path} is missing or not the BTF its record names",
                                name, "ok")
        return path

    def merged_path(self, module: str) -> Path:
        """vmlinux + the module as one standalone BTF."""
        name, rec = self._ok_record(module)
        info = ((self._cache.read_merged_index() or {}).get("modules") or {}).get(name)
        path = self._cache.merged_path(name)
        if (not isinstance(info, dict) or info.get("btf_sha256") != rec["btf_sha256"]
                or not is_regular_file(path)):
            raise NotYetWritten(f"{name}: its merged BTF is being written; try again in a "
                                "moment", name, "ok")
        return path

    def all_merged(self) -> tuple[Path, list[str]]:
        """vmlinux + every module whose verdict is ok, and those modules in file order."""
        info = (self._cache.read_merged_index() or {}).get("all")
        path = self._cache.all_merged_path()
        if not isinstance(info, dict) or not is_regular_file(path):
            raise NotReconciled("no merged BTF of all modules: no module with verdict ok "
                                "(or it is being written)")
        return path, [str(m.get("name")) for m in info.get("modules") or []]


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
