"""Rescue a module with classic split BTF: distill it against the build it was made
for, so that it carries `.BTF.base` and reconciles onto any kernel -- in the file
(`btfreconcilectl rescue`) or in memory (the daemon, verdict `rescued`).

The build is found by doctor.py (the module's own fingerprint, confirmed by the kernel's
checks); distillation is libbpf's btf__distill_base (distill.py), so a kernel >= 6.11
relocates a rescued file itself at its next load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..btf.btf import Btf
from ..elf import (
    BTF_BASE_EXPECTS_SECTION,
    BTF_BASE_SECTION,
    BTF_SECTION,
    BtfSections,
    read_btf_sections,
)
from ..errors import ErrorCode
from .distill import DistillError, distill
from .doctor import Candidates
from .fields import build_expects
from .origin import OriginError, check_base, infer_shape
from .relocate import EMBEDDED_KERNEL, embedded_ids, relocate
from .target import VmlinuxIndex


class RescueError(Exception):
    """The module cannot be rescued; the message is one line saying why, `code` (errors.py)
    which reason it is."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple:
        # keeps the code when a worker process hands the error over
        return (type(self), (str(self), self.code))


class CorruptBtf(RescueError):
    """The module's .BTF is malformed: an error in the file rather than a reason a sound
    module cannot be rescued."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.RESCUE_CORRUPT_BTF) -> None:
        super().__init__(message, code)


@dataclass
class Distilled:
    sections: dict[str, bytes | None]
    base_types: int
    split_types: int
    original_split_types: int
    expects: dict[str, Any] | None


def distill_sections(src: Btf, *, fields: str | None, source: str) -> Distilled:
    """`.BTF` (new split), `.BTF.base` and, with `fields`, `.BTF.base_expects` for a module
    whose split BTF `src` sits on the vmlinux it was built for."""
    try:
        res = distill(src, source=source)
    except DistillError as e:
        raise RescueError(str(e), ErrorCode.RESCUE_DISTILL_FAILED) from None
    sections: dict[str, bytes | None] = {BTF_SECTION: res.split.to_bytes(),
                                         BTF_BASE_SECTION: res.base.to_bytes(),
                                         BTF_BASE_EXPECTS_SECTION: None}
    expects = None
    if fields:
        emb_dist, _ = embedded_ids(res.split)
        back = {new: old for old, new in res.id_map.items()}
        emb_vmlinux = {back[d] for d in emb_dist if d in back}
        data = build_expects(src, res, emb_vmlinux, fields)
        sections[BTF_BASE_EXPECTS_SECTION] = data
        expects = {"mode": fields, "embedded_structs": len(emb_vmlinux), "bytes": len(data)}
    return Distilled(sections, len(res.base), len(res.split), len(src), expects)


@dataclass
class Build:
    path: str
    btf: Btf


def find_build(path: str | Path, sections: BtfSections, candidates: Candidates,
               base: Btf | None = None, base_path: str = "") -> Build:
    """The vmlinux the module's classic split BTF was built against: `base` when given (it
    must check out), else the candidate that does. RescueError says why there is none."""
    p = str(path)
    if sections.btf is None:
        raise RescueError(f"{p}: no .BTF section: nothing to rescue (the module was built "
                          "without BTF)", ErrorCode.RESCUE_NO_BTF)
    if sections.base is not None:
        raise RescueError(f"{p}: already carries .BTF.base: nothing to rescue",
                          ErrorCode.RESCUE_ALREADY_DISTILLED)
    try:
        shape = infer_shape(sections.btf, f"{p}:.BTF")
    except OriginError as e:
        raise CorruptBtf(str(e)) from None
    if base is not None:
        fit = check_base(sections.btf, shape, base, source=f"{p}:.BTF", base_name=base_path)
        if not fit.fits:
            raise RescueError(f"{base_path} is not this module's build: {fit.reason}",
                              ErrorCode.RESCUE_NOT_THE_BUILD)
        return Build(base_path, base)
    for c in candidates.loaded():
        assert c.btf is not None
        if shape.matches(c.btf.type_count, c.btf.str_end) and check_base(
                sections.btf, shape, c.btf, source=f"{p}:.BTF").fits:
            return Build(str(c.path), c.btf)
    raise RescueError(f"{p}: built against {shape.describe()}; none of the "
                      f"{len(candidates.items)} kernel files searched is that build",
                      ErrorCode.RESCUE_NO_BUILD)


@dataclass
class Rescued:
    build: str  # the base file it was distilled against
    btf: bytes  # reconciled split BTF on the target
    distilled: Distilled  # the sections a rescued file would carry
    summary: str


def rescue_onto(path: str | Path, target: VmlinuxIndex, candidates: Candidates, *,
                module: str, embedded_rule: str = EMBEDDED_KERNEL) -> Rescued:
    """In memory: find the module's build, distill against it, relocate onto `target`."""
    sections = read_btf_sections(path, digest=False)
    build = find_build(path, sections, candidates)
    assert sections.btf is not None
    src = Btf.parse(sections.btf, base=build.btf, source=f"{path}:.BTF", validate=False)
    d = distill_sections(src, fields=None, source=str(path))
    split_bytes = d.sections[BTF_SECTION]
    base_bytes = d.sections[BTF_BASE_SECTION]
    assert split_bytes is not None and base_bytes is not None
    dist = Btf.parse(base_bytes, source=f"{path} (distilled)", validate=False)
    split = Btf.parse(split_bytes, base=dist, source=f"{path} (distilled)", validate=False)
    rel = relocate(split, target, module=module, embedded_rule=embedded_rule)
    if not rel.ok or rel.data is None:
        why = rel.problems[0].summary if rel.problems else "relocation failed"
        raise RescueError(f"{module}: distilled against its build {build.path}, but it does "
                          f"not reconcile onto {target.path}: {why}",
                          ErrorCode.RESCUE_NO_RECONCILE)
    return Rescued(build.path, rel.data, d,
                   f"{module}: classic split BTF for another build ({build.path}); distilled "
                   f"against it and reconciled onto {target.path}: {d.split_types} types")
