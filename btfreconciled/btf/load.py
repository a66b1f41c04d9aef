"""Load BTF from files: raw BTF, vmlinux ELF, or a module's split BTF on a base."""

from __future__ import annotations

import os
from pathlib import Path

from ..elf import BtfSections, read_btf_sections
from . import markers
from .btf import Btf
from .errors import BtfError

SYSFS_BTF = Path("/sys/kernel/btf")


def is_kernel_verified(path: str | os.PathLike[str]) -> bool:
    """/sys/kernel/btf/* was verified by the kernel when it was loaded: skip re-validation."""
    try:
        return Path(path).resolve().parent == SYSFS_BTF
    except OSError:
        return False


def parse_btf(data: bytes, *, base: Btf | None = None, source: str = "<memory>",
              validate: bool = True) -> Btf:
    """Btf.parse with this package's defaults (validate unless told the input is trusted)."""
    return Btf.parse(data, base=base, source=source, validate=validate)


def load_btf(
    path: str | os.PathLike[str], *, base: Btf | None = None, validate: bool | None = None,
    defer_scan: bool = False, sections: BtfSections | None = None,
) -> Btf:
    """The `.BTF` of an ELF file (or the whole raw BTF file), split on `base` when given.
    `defer_scan` is Btf.parse's (it only applies to BTF that is not validated)."""
    if sections is None:
        sections = read_btf_sections(path, digest=False)
    if sections.btf is None:
        raise BtfError("no .BTF section", source=str(path))
    source = f"{path}:.BTF" if sections.is_elf else str(path)
    if validate is None:
        validate = not is_kernel_verified(path)
    marker = None
    if validate and base is None:  # a vmlinux file: maybe its bytes passed validation before
        marker = markers.needs_validation(sections.btf)
        validate = marker is not None
    btf = Btf.parse(sections.btf, base=base, source=source, validate=validate,
                    defer_scan=defer_scan)
    if marker is not None:
        markers.record_validated(marker, source)
    return btf


def load_base(path: str | os.PathLike[str]) -> Btf:
    """A base BTF (vmlinux) from a raw file or an ELF `.BTF` section."""
    return load_btf(path)
