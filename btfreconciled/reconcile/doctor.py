"""Why a module's BTF does or does not fit a kernel, and which kernel build it was made for.
Used by `btfreconcilectl doctor`, `rescue` and the daemon.

Three kinds of module:

* with `.BTF.base` (distilled): reconciliation decides, with its diagnostics (as `check`);
* classic split BTF: the module's own ids and string offsets pin down the base it was built
  for (origin.py); it fits the target only if the target is that base. Otherwise the
  candidates (vmlinux ELF, raw BTF, kernel images found in the search directories) are
  fingerprinted by type count and string length, and a match confirmed by the kernel's
  checks: that file is named as the module's build;
* no BTF at all: said so, with the usual reason.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..elf import ElfError, read_btf_sections
from ..errors import ErrorCode
from .module import Verdict, module_label, reconcile_module_file
from .origin import OriginError, SplitShape, check_base, infer_shape
from .target import VmlinuxIndex

# Where distributions put kernels and their BTF: images, debug vmlinux, headers' vmlinux.
# /usr/lib/modules/*: the image itself where Debian sid (7.x), Fedora and Arch install it
DEFAULT_SEARCH = ("/boot", "/usr/lib/debug/boot", "/usr/lib/modules/*",
                  "/usr/lib/modules/*/build", "/usr/src/linux-headers-*")
NO_BTF_WHY = ("the module has no .BTF section: Kbuild generates module BTF only when a vmlinux "
              "with BTF sits in the build directory (it prints 'Skipping BTF generation for "
              "... due to unavailability of vmlinux'); rebuild it with one there")

FITS, DOES_NOT_FIT, ERROR = "fits", "does-not-fit", "error"


def candidate_files(dirs: list[str]) -> list[Path]:
    """Kernel BTF candidates in `dirs` (glob patterns allowed): vmlinuz-*, vmlinux*, *.btf."""
    out: list[Path] = []
    seen: set[Path] = set()
    for pattern in dirs:
        for d in sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for n in names:
                if not (n.startswith(("vmlinuz", "vmlinux")) or n.endswith(".btf")):
                    continue
                p = Path(d) / n
                if p.is_file() and p.resolve() not in seen:
                    seen.add(p.resolve())
                    out.append(p)
    return out


@dataclass
class CandidateBase:
    path: Path
    btf: Btf | None = None
    error: str | None = None


class Candidates:
    """Candidate bases, each read once, on demand (a kernel image costs a decompression)."""

    def __init__(self, paths: list[Path]) -> None:
        self.items = [CandidateBase(p) for p in paths]

    def loaded(self) -> Iterator[CandidateBase]:
        """The readable candidates, each read when the iteration reaches it: a caller that
        stops at the module's build reads no kernel file after it (an image costs a
        decompression, a headers' vmlinux a large read)."""
        for c in self.items:
            if c.btf is None and c.error is None:
                try:
                    sec = read_btf_sections(c.path, digest=False)
                    if sec.btf is None:
                        raise BtfError("no .BTF section", source=str(c.path),
                                       code=ErrorCode.BTF_MISSING)
                    c.btf = Btf.parse(sec.btf, source=str(c.path), validate=False)
                    if c.btf.base is not None:  # pragma: no cover - parse gives base BTF
                        raise BtfError("split BTF, not a vmlinux", source=str(c.path),
                                       code=ErrorCode.BTF_NOT_BASE)
                except (ElfError, BtfError, OSError) as e:
                    c.error = str(e)
            if c.btf is not None:
                yield c

    def errors(self) -> list[str]:
        return [c.error for c in self.items if c.error]


@dataclass
class Diagnosis:
    module: str
    path: str
    kind: str  # distilled | classic | no-btf | unreadable
    result: str  # fits | does-not-fit | error
    summary: str  # one line
    details: list[str] = field(default_factory=list)
    build: str | None = None  # the file that is the module's build, when found
    silent: bool = False  # passes the kernel's checks on the target though not built for it
    # the target kernel's own checks fail on this BTF: it drops the BTF or, without
    # CONFIG_MODULE_ALLOW_BTF_MISMATCH, refuses the module (kconfig.py)
    kernel_rejects: bool = False
    shape: dict[str, Any] | None = None
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    # no-btf: the kernel release the module was built for (its vermagic) and what that
    # kernel's build directory holds (cli/doctor.py fills these in)
    built_for: str | None = None
    build_dir: dict[str, str] | None = None
    fix: str | None = None  # the one-line remedy, when there is one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _shape_json(s: SplitShape) -> dict[str, Any]:
    return {"own_types": s.own_types, "own_str_len": s.own_str_len,
            "base_types": s.base_types, "base_str_len": s.base_str_len,
            "base_types_candidates": s.type_count_candidates[:8],
            "base_str_len_candidates": s.str_len_candidates[:8], "exact": s.exact}


def diagnose(path: str | Path, target: VmlinuxIndex, candidates: Candidates, *,
             strict: str = "embedded") -> Diagnosis:
    """Does the module at `path` fit `target`? If it has classic split BTF for another
    build, which of `candidates` is that build?"""
    p = str(path)
    name = module_label(p)
    tname = target.path
    try:
        sections = read_btf_sections(p, digest=False)
    except ElfError as e:
        return Diagnosis(name, p, "unreadable", ERROR, str(e))
    if not sections.is_elf:
        return Diagnosis(name, p, "unreadable", ERROR, f"{p}: raw BTF, not a module file")
    if sections.btf is None:
        return Diagnosis(name, p, "no-btf", DOES_NOT_FIT, f"{name}: no BTF at all",
                         [NO_BTF_WHY])
    if sections.base is not None or sections.base_expects is not None:
        res = reconcile_module_file(p, target, strict=strict, module_name=name)
        result = {Verdict.OK: FITS, Verdict.INCOMPATIBLE: DOES_NOT_FIT}.get(res.verdict, ERROR)
        return Diagnosis(name, p, "distilled", result, res.summary,
                         diagnostics=res.diagnostics, kernel_rejects=result == DOES_NOT_FIT)
    try:
        shape = infer_shape(sections.btf, f"{p}:.BTF")
    except OriginError as e:
        return Diagnosis(name, p, "classic", ERROR, str(e))
    d = Diagnosis(name, p, "classic", DOES_NOT_FIT, "", shape=_shape_json(shape))
    on_target = check_base(sections.btf, shape, target.btf, source=f"{p}:.BTF",
                           base_name="this kernel" if tname.startswith("/sys/") else tname)
    have = f"{target.btf.type_count}/{target.btf.str_end}"
    if on_target.fits:
        d.result = FITS
        d.summary = (f"{name}: classic split BTF built for this kernel ({shape.describe()}; "
                     f"this kernel has {have})")
        d.build = tname
        return d
    d.silent = bool(on_target.validates and not on_target.fingerprint)
    d.kernel_rejects = on_target.validates is False
    d.summary = (f"{name}: built against {shape.describe()}; "
                 f"{'this kernel' if tname.startswith('/sys/') else tname} has {have}")
    if on_target.fingerprint:  # same counts, yet not its build: say what failed
        d.details.append(on_target.reason)
    if d.silent:
        d.details.append("the kernel would accept this BTF and bind the module's types to "
                         "the wrong vmlinux types: do not trust /sys/kernel/btf/" + name)
    for c in candidates.loaded():
        assert c.btf is not None
        if not shape.matches(c.btf.type_count, c.btf.str_end):
            continue
        fit = check_base(sections.btf, shape, c.btf, source=f"{p}:.BTF", base_name=str(c.path))
        if fit.fits:
            d.build = str(c.path)
            d.details.append(f"its build: {c.path} (same counts; every base type the module "
                             "refers to checks out there)")
            break
        d.details.append(f"{c.path}: same counts, but {fit.reason}")
    if d.build is None:
        searched = len(candidates.items)
        d.details.append(f"its build is not among the {searched} candidate kernel files "
                         "searched (give more with --search DIR, or the file with --base)")
    return d
