"""One module file in, one verdict out: what the daemon and `btfreconcilectl check` call."""

from __future__ import annotations

import contextlib
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..btf.load import parse_btf
from ..cache import module_name_of, normalize_module_name
from ..elf import MAX_FILE_SIZE, BtfSections, ElfError, read_btf_sections, sha256_file
from ..errors import ErrorCode
from .diagnostics import ERROR, Problem
from .fields import STRICT_CHOICES, check_fields, derive_base
from .relocate import EMBEDDED_KERNEL, RelocateResult, relocate
from .target import VmlinuxIndex
from .wire import WireError

# The diagnostic code of a module file with no .BTF section (verdict no-base).
NO_BTF = "no-btf"


class Verdict(enum.Enum):
    OK = "ok"
    INCOMPATIBLE = "incompatible"
    NO_BASE = "no-base"
    ERROR = "error"


@dataclass
class ModuleResult:
    module: str
    path: str
    verdict: Verdict
    summary: str
    diagnostics: list[dict[str, Any]]  # one dict per problem / warning
    btf: bytes | None  # reconciled split BTF (base = target vmlinux) when verdict is OK
    module_sha256: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase + "total"
    build_id: str | None = None  # GNU build id of the file (hex), to match the loaded module
    srcversion: str | None = None  # .modinfo srcversion, likewise
    # which distilled-base sections the file carries: the kernel relocates .BTF.base itself
    # (>= 6.11), never .BTF.base_expects alone; None when the file was not read
    base_sections: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "path": self.path,
            "verdict": self.verdict.value,
            "summary": self.summary,
            "diagnostics": self.diagnostics,
            "btf_size": len(self.btf) if self.btf is not None else None,
            "module_sha256": self.module_sha256,
            "build_id": self.build_id,
            "srcversion": self.srcversion,
            "base_sections": self.base_sections,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }


def module_label(path: str | Path) -> str:
    """What messages call the module at `path`: its kernel name (`snd-hda-intel.ko.xz` ->
    `snd_hda_intel`, cache.module_name_of), or the file's name when it is no .ko file."""
    return module_name_of(path) or normalize_module_name(Path(path).name)


@dataclass
class LoadedModule:
    """A module's sections parsed: split BTF on its distilled base (and expectations)."""

    sections: BtfSections
    split: Btf
    dist: Btf
    expects: Btf | None
    derived_base: bool


def load_module(path: str | Path, sections: BtfSections | None = None) -> LoadedModule | None:
    """Parse `.BTF` on `.BTF.base` (or on the base implied by `.BTF.base_expects`).
    None when the module has no distilled base at all. Raises BtfError/ElfError."""
    if sections is None:
        sections = read_btf_sections(path)
    if sections.btf is None or (sections.base is None and sections.base_expects is None):
        return None
    p = str(path)
    expects = None
    if sections.base_expects is not None:
        expects = parse_btf(sections.base_expects, source=f"{p}:.BTF.base_expects")
    if sections.base is not None:
        dist = parse_btf(sections.base, source=f"{p}:.BTF.base")
        derived = False
    else:
        assert expects is not None
        dist = parse_btf(derive_base(expects), source=f"{p}:.BTF.base_expects (as base)",
                         validate=False)
        derived = True
    if dist.base is not None:  # pragma: no cover - parse without base gives a base BTF
        raise BtfError("distilled base is not standalone", source=p)
    split = parse_btf(sections.btf, base=dist, source=f"{p}:.BTF")
    return LoadedModule(sections, split, dist, expects, derived)


def module_btf(path: str | Path, base: Btf | VmlinuxIndex | None, *, base_path: str = "",
               sections: BtfSections | None = None) -> Btf | None:
    """A module's BTF as bpftool 7.5 / libbpf read it (btf__parse_split): with a distilled
    base (`.BTF.base`, or ours derived from `.BTF.base_expects`), the split BTF on that
    base when `base` is None, else relocated onto `base`. None for a file without a
    distilled base (its `.BTF` is then plain split BTF on `base`). Raises BtfError when the
    module does not relocate onto `base` (naming the first problem)."""
    if sections is None:
        sections = read_btf_sections(path, digest=False)
    loaded = load_module(path, sections)
    if loaded is None:
        return None
    if base is None:
        return loaded.split
    if isinstance(base, VmlinuxIndex):
        target = base
    else:
        target = VmlinuxIndex(base, path=base_path or base.source)
    rel = relocate(loaded.split, target, module=module_label(path), diagnose=True)
    if not rel.ok or rel.data is None:
        first = rel.problems[0].summary if rel.problems else "relocation failed"
        n = len(rel.problems) - 1
        more = f" (and {n} more problem{'s' if n > 1 else ''})" if n > 0 else ""
        raise BtfError(f"does not relocate onto {target.path}: {first}{more}",
                       source=f"{path}:.BTF", code=ErrorCode.BTF_NO_RELOCATE)
    return Btf.parse(rel.data, base=target.btf,
                     source=f"{path}:.BTF relocated onto {target.path}", validate=False)


def reconcile_module_file(path: str, target: VmlinuxIndex, *, strict: str = "embedded",
                          module_name: str | None = None,
                          embedded_rule: str = EMBEDDED_KERNEL,
                          max_bytes: int | None = None) -> ModuleResult:
    """Reconcile the module file at `path` onto `target`. Never raises for bad module input:
    unreadable or corrupt files give verdict ERROR with a one-line summary."""
    if strict not in STRICT_CHOICES:
        raise ValueError(f"strict must be one of {', '.join(STRICT_CHOICES)}")
    run = _Run(module_name or module_label(path), str(path), time.perf_counter())
    sections = _read(run, max_bytes)
    if isinstance(sections, ModuleResult):
        return sections
    got = _relocate(run, sections, target, embedded_rule)
    if isinstance(got, ModuleResult):
        return got
    return _judge(run, *got, target, strict)


@dataclass
class _Run:
    """One reconcile_module_file call: what its result will carry, filled as it goes."""

    name: str
    path: str
    t0: float
    timings: dict[str, float] = field(default_factory=dict)
    sha: str = ""
    ident: tuple[str | None, str | None] = (None, None)  # build id, srcversion
    bases: list[str] | None = None  # which base sections the file carries

    def result(self, verdict: Verdict, summary: str, problems: list[Problem] | None = None,
               btf: bytes | None = None) -> ModuleResult:
        self.timings["total"] = time.perf_counter() - self.t0
        return ModuleResult(self.name, self.path, verdict, summary,
                            [p.to_dict() for p in problems or []], btf, self.sha,
                            self.timings, *self.ident, self.bases)

    def error(self, summary: str, code: ErrorCode | None = None) -> ModuleResult:
        # the failure class goes out as the diagnostic's "error_code" (README), for a
        # program reading the record; none for a failure with no class (a bug)
        p = Problem("error", ERROR, summary,
                    details={"error_code": code.value} if code is not None else {})
        return self.result(Verdict.ERROR, summary, [p])


def _read(run: _Run, max_bytes: int | None) -> BtfSections | ModuleResult:
    path = run.path
    # a module file is never larger than this: refused by its size before it is read or
    # hashed, so a sparse 100 GiB file costs no time
    file_cap = max_bytes or MAX_FILE_SIZE
    try:
        sections = read_btf_sections(path, max_size=max_bytes, max_file_size=file_cap)
    except ElfError as exc:
        with contextlib.suppress(OSError, ElfError):
            run.sha = sha256_file(path, max_size=file_cap)
        return run.error(str(exc), exc.code)
    except OSError as exc:
        return run.error(f"{path}: {exc.strerror or exc}", ErrorCode.INPUT_UNREADABLE)
    run.sha = sections.sha256 or ""
    run.ident = (sections.build_id, sections.srcversion)
    run.bases = [n for n, d in ((".BTF.base", sections.base),
                                (".BTF.base_expects", sections.base_expects)) if d is not None]
    run.timings["read"] = time.perf_counter() - run.t0
    return sections


def _relocate(run: _Run, sections: BtfSections, target: VmlinuxIndex, embedded_rule: str
              ) -> tuple[LoadedModule, RelocateResult] | ModuleResult:
    path = run.path
    try:
        t = time.perf_counter()
        loaded = load_module(path, sections)
        run.timings["parse"] = time.perf_counter() - t
        if loaded is None:
            # the code tells a module without any BTF (built with no vmlinux in its build
            # directory) from classic split BTF: the daemon gives the first its own verdict
            if sections.btf is None:
                p = Problem(NO_BTF, "info", f"{path}: no .BTF section: the module has no BTF"
                                            " at all, nothing to reconcile")
            else:
                p = Problem("no-base", "info", f"{path}: no .BTF.base or .BTF.base_expects "
                                               "section: not split-distilled, nothing to"
                                               " reconcile")
            return run.result(Verdict.NO_BASE, p.summary, [p])
        t = time.perf_counter()
        rel = relocate(loaded.split, target, embedded_rule=embedded_rule, module=run.name,
                       want_embedded=loaded.expects is not None)
        run.timings["relocate"] = time.perf_counter() - t
    except BtfError as exc:
        return run.error(str(exc), exc.code)
    except WireError as exc:
        return run.error(f"{path}: {exc}", ErrorCode.BTF_INVALID)
    except Exception as exc:  # noqa: BLE001 - never raise for bad module input
        return run.error(f"{path}: cannot reconcile: {type(exc).__name__}: {exc}")
    return loaded, rel


def _judge(run: _Run, loaded: LoadedModule, rel: RelocateResult, target: VmlinuxIndex,
           strict: str) -> ModuleResult:
    """The verdict: relocation's problems, then the field checks of .BTF.base_expects."""
    problems = list(rel.problems)
    if any(p.code == "invalid-base" for p in problems):
        return run.result(Verdict.ERROR, problems[0].summary, problems)
    if loaded.expects is not None and rel.ok:
        t = time.perf_counter()
        try:
            dist_names = {(d.kind, d.name): d.id for d in rel.dist_types}
            problems += check_fields(loaded.expects, target, rel.id_map, dist_names,
                                     rel.embedded, strict, run.name)
        except Exception as exc:  # noqa: BLE001
            return run.error(f"{run.path}:.BTF.base_expects: cannot check fields:"
                             f" {type(exc).__name__}: {exc}")
        run.timings["fields"] = time.perf_counter() - t
    errors = [p for p in problems if p.severity == ERROR]
    if errors:
        n = len(errors) - 1
        more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
        return run.result(Verdict.INCOMPATIBLE, errors[0].summary + more, problems)
    n_types = len(loaded.split)
    warn = f"; {len(problems)} warning{'s' if len(problems) > 1 else ''}" if problems else ""
    summary = (f"{run.name}: compatible with {target.path}: {n_types} module types reconciled,"
               f" {len(rel.dist_types)} expected base types matched{warn}")
    return run.result(Verdict.OK, summary, problems, rel.data)
