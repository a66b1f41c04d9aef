"""Load BTF from files: raw BTF, vmlinux ELF, or a module's split BTF on a base."""

from __future__ import annotations

import os
import stat
import weakref
from collections.abc import Callable
from pathlib import Path

from ..elf import BtfSections, read_btf_sections
from ..errors import ErrorCode
from .btf import Btf
from .errors import BtfError

SYSFS_BTF = Path("/sys/kernel/btf")
_VMLINUX = "vmlinux"

# The base BTFs this process loaded from the kernel's own /sys/kernel/btf/vmlinux: a module's
# /sys/kernel/btf/<m> was verified by the kernel as split BTF on that base, and on no other.
_kernel_bases: weakref.WeakSet[Btf] = weakref.WeakSet()


def is_kernel_verified(sections: BtfSections, base: Btf | None = None) -> bool:
    """The bytes in `sections` were read from the kernel's own /sys/kernel/btf/<name>, which
    the kernel verified when it registered it, so strict validation can be skipped.

    Decided from the file that was opened and read (its (st_dev, st_ino) as fstat gave them
    then), compared with /sys/kernel/btf/<name> in this process's own mount namespace, which
    only root can change. A path is never trusted for what it names: a symlink swapped
    after the read, or /proc/<pid>/root/sys/kernel/btf/vmlinux of a process that mounted its
    own files there in another mount namespace, is validated like any other file.
    vmlinux only counts as a base, a module's file only as split BTF on that vmlinux."""
    ident = sections.raw_file_id
    if ident is None:
        return False
    name = sections.path.name
    if name in ("", ".", "..") or (name == _VMLINUX) != (base is None):
        return False
    if base is not None and base not in _kernel_bases:
        return False
    try:
        sysfs = os.stat(SYSFS_BTF)
        st = os.stat(SYSFS_BTF / name, follow_symlinks=False)
    except OSError:
        return False
    return (stat.S_ISDIR(sysfs.st_mode) and stat.S_ISREG(st.st_mode)
            and st.st_dev == sysfs.st_dev and (st.st_dev, st.st_ino) == ident)


def parse_btf(data: bytes, *, base: Btf | None = None, source: str = "<memory>",
              validate: bool = True) -> Btf:
    """Btf.parse with this package's defaults (validate unless told the input is trusted)."""
    return Btf.parse(data, base=base, source=source, validate=validate)


def load_btf(
    path: str | os.PathLike[str], *, base: Btf | None = None, validate: bool | None = None,
    defer_scan: bool = False, sections: BtfSections | None = None,
) -> Btf:
    """The `.BTF` of an ELF file (or the whole raw BTF file), split on `base` when given.
    `validate=None` validates strictly unless the bytes are the kernel's own
    (is_kernel_verified); `sections` must then come from read_btf_sections of `path`.
    `defer_scan` is Btf.parse's (it only applies to BTF that is not validated)."""
    if sections is None:
        sections = read_btf_sections(path, digest=False)
    if sections.btf is None:
        raise BtfError("no .BTF section", source=str(path), code=ErrorCode.BTF_MISSING)
    source = f"{path}:.BTF" if sections.is_elf else str(path)
    kernel = is_kernel_verified(sections, base)
    if validate is None:
        validate = not kernel
    btf = Btf.parse(sections.btf, base=base, source=source, validate=validate,
                    defer_scan=defer_scan)
    if kernel and base is None:
        _kernel_bases.add(btf)
    return btf


def load_btf_validating_later(
    path: str | os.PathLike[str], *, base: Btf | None = None, sections: BtfSections,
) -> tuple[Btf, Callable[[], None] | None]:
    """load_btf's BTF parsed without its strict validation yet (and without the record scan),
    with that validation as a function to call, or None when the bytes are the kernel's own.
    For work that shows nothing until the check has passed (a dump rendering into memory in
    another process); nothing from the BTF may be output or acted on before it has run.
    The checks are exactly Btf.parse(validate=True)'s: the record scan, then validate_btf."""
    if sections.btf is None:
        raise BtfError("no .BTF section", source=str(path), code=ErrorCode.BTF_MISSING)
    if is_kernel_verified(sections, base):
        btf = load_btf(path, base=base, defer_scan=True, sections=sections)
        return btf, None
    source = f"{path}:.BTF" if sections.is_elf else str(path)
    btf = Btf.parse(sections.btf, base=base, source=source, validate=False, defer_scan=True)

    def check() -> None:
        from .validate import validate_btf

        if not btf.scanned:
            btf._scan_records()
        validate_btf(btf)

    return btf, check


def load_base(path: str | os.PathLike[str]) -> Btf:
    """A base BTF (vmlinux) from a raw file or an ELF `.BTF` section."""
    return load_btf(path)
