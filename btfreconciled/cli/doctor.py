"""`btfreconcilectl doctor [MODULE|DIR] [--vmlinux FILE] [--search DIR]... [--json]`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ..basefile import no_btf_remedy, rebuild_hint
from ..elf import ElfError, modinfo_value, read_btf_sections
from ..kconfig import ALLOW_MISMATCH, REFUSE, config_files, find_policy
from ..reconcile.doctor import (
    DEFAULT_SEARCH,
    DOES_NOT_FIT,
    ERROR,
    FITS,
    Candidates,
    Diagnosis,
    candidate_files,
    diagnose,
)
from ..reconcile.module import module_label
from ..reconcile.target import SYSFS_VMLINUX, VmlinuxIndex
from . import headers
from .check import MODULE_SUFFIXES, find_modules, load_target
from .errors import EXIT_ERROR, EXIT_OK, CliError, printable

EXIT_DOES_NOT_FIT = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="explain why a module's BTF does not fit this kernel, and find its build",
        description=(
            "Explain whether MODULE's BTF fits a kernel (default: the running one) and why"
            " not. A module with .BTF.base is reconciled (as `check`). A module with classic"
            " split BTF (no .BTF.base) only fits the exact vmlinux it was built against: the"
            " base type count and string length it was made for are read off its own type"
            " ids and string offsets, compared with the kernel's, and the matching build is"
            " looked for among kernel files (vmlinuz-*, vmlinux*, *.btf) in the search"
            " directories, confirmed by the kernel's own checks. Also flags BTF that the"
            " kernel would accept though it was made for another build (it would bind to the"
            " wrong types silently). For a module with no BTF at all (Kbuild skipped it: no"
            " vmlinux in the build directory): what the build directory of the kernel it"
            " was built for (its vermagic) holds now, and how to get BTF:"
            " `btfreconcilectl headers VERSION`, then a rebuild."
            " Without MODULE: every loaded module whose BTF the kernel"
            " did not register (/sys/kernel/btf/<module> missing), with the kernel's log"
            " line when readable. Fix what it finds with `btfreconcilectl rescue`."),
        epilog="exit status: 0 fits, 1 does not fit (diagnosis printed), 2 error.",
    )
    p.add_argument("module", metavar="MODULE|DIR", nargs="?",
                   help="module file (.ko[.xz|.zst|.gz]) or a directory of modules")
    p.add_argument("--vmlinux", metavar="FILE", default=SYSFS_VMLINUX,
                   help="the kernel to check against: vmlinux ELF, raw BTF or kernel image "
                        f"(default {SYSFS_VMLINUX})")
    p.add_argument("--search", metavar="DIR", action="append",
                   help="where to look for the module's build (repeatable; default: "
                        f"{', '.join(DEFAULT_SEARCH)})")
    p.add_argument("--module-dir", metavar="DIR", action="append", default=[],
                   help="without MODULE: also look for loaded modules' files here, after "
                        "modules.dep (repeatable; like the daemon's extra_module_dirs)")
    p.add_argument("--strict", choices=("off", "embedded", "all"), default="embedded",
                   help="field checks for .BTF.base modules (as `check`)")
    p.add_argument("--root", metavar="DIR", default="/",
                   help="for a module without BTF: look for the build directory and image of "
                        "the kernel it was built for below DIR (as `headers`; default /)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(handler=run)


def _modules(args: argparse.Namespace) -> tuple[list[Path], dict[str, str], list[str]]:
    """The module files to diagnose, the kernel's log line for each, and the loaded modules
    without registered BTF whose file was not found (no-MODULE mode)."""
    if args.module is not None:
        path = Path(args.module)
        if path.is_dir():
            mods = find_modules(path)
            if not mods:
                raise CliError(f"{path}: no kernel modules ({', '.join(MODULE_SUFFIXES)})")
            return mods, _file_logs(args, mods), []
        if not os.path.lexists(path):
            raise CliError(f"{path}: no such file")
        return [path], _file_logs(args, [path]), []
    return _loaded_without_btf([Path(d) for d in args.module_dir])


def _file_logs(args: argparse.Namespace, files: list[Path]) -> dict[str, str]:
    """For files checked against the running kernel: its log lines about those modules (a
    refused insmod leaves nothing else behind); not the once-per-boot line naming none."""
    if args.vmlinux != SYSFS_VMLINUX:
        return {}
    logs = _kernel_log_lines([module_label(f) for f in files])
    logs.pop("", None)
    return logs


def _loaded_without_btf(extra_dirs: list[Path]
                        ) -> tuple[list[Path], dict[str, str], list[str]]:
    from ..daemon.modfind import build_index

    sysmod = Path("/sys/module")
    try:
        names = sorted(n for n in os.listdir(sysmod) if (sysmod / n / "initstate").exists())
    except OSError as e:
        raise CliError(f"{sysmod}: {e.strerror or e}") from None
    missing = [n for n in names if not (Path("/sys/kernel/btf") / n).exists()]
    idx = build_index(Path("/lib/modules") / os.uname().release, extra_dirs)
    logs = _kernel_log_lines(missing)
    files: list[Path] = []
    unfound: list[str] = []
    for n in missing:
        f = idx.lookup(n)
        if f is not None:
            files.append(f)
        else:
            unfound.append(n)
    return files, logs, unfound


# Linux >= 6.8 with CONFIG_MODULE_ALLOW_BTF_MISMATCH logs this once per boot, for the first
# module whose BTF it drops, instead of "failed to validate module [m] BTF: -22".
GENERIC_MISMATCH = "Kernel module BTF mismatch detected"


def _kernel_log_lines(names: list[str]) -> dict[str, str]:
    """The last BTF-related kernel log line naming each module (/dev/kmsg, when readable);
    under "" the once-per-boot line that names no module, if it was logged."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    texts: list[str] = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            if not rec:
                break
            texts.append(rec.split(";", 1)[-1].split("\n", 1)[0])
    finally:
        os.close(fd)
    return match_log_lines(texts, names)


_NAMED = re.compile(r"\[(\w+)\] BTF|module (\w+) .*BTF|(\w+): .*BTF")


def match_log_lines(texts: list[str], names: list[str]) -> dict[str, str]:
    """The log line about each of `names` in `texts` (the kernel log's messages, oldest
    first), as _kernel_log_lines.  A BTF line naming no module right before a module's line
    is its cause and is kept with it: 7.2 logs "distilled base BTF type 'work_struct' [68]
    is not mapped to base BTF id", then "failed to validate module [m] BTF: -22"."""
    want = set(names)
    out: dict[str, str] = {}
    cause = None
    for text in texts:
        if "BTF" not in text:
            cause = None
            continue
        if GENERIC_MISMATCH in text:  # 6.12+ with MODULE_ALLOW_BTF_MISMATCH: no name
            out[""] = text
            cause = None
            continue
        m = _NAMED.search(text)
        name = next((g for g in (m.groups() if m else ()) if g), None)
        if name is None:
            cause = text
            continue
        if name in want:
            out[name] = f"{cause}; {text}" if cause else text
        cause = None
    return out


def refusal_note(name: str, log: str) -> str | None:
    """When the running kernel logged that it could not validate `name`'s BTF and the module
    is not loaded: the kernel refused it (no CONFIG_MODULE_ALLOW_BTF_MISMATCH, as Debian's
    7.2), which insmod reports only as 'Invalid parameters'."""
    if "failed to validate module" not in log or os.path.exists(f"/sys/module/{name}"):
        return None
    release = os.uname().release
    policy, config = find_policy(config_files(release, None, Path("/lib/modules")))
    why = (f"{ALLOW_MISMATCH} is not set in {config}" if policy == REFUSE and config
           else f"{ALLOW_MISMATCH} is off")
    return (f"the running kernel refused to load it because of its BTF ({why}; insmod "
            "says only 'Invalid parameters')")


def run(args: argparse.Namespace) -> int:
    target: VmlinuxIndex = load_target(args.vmlinux)
    mods, logs, unfound = _modules(args)
    cands = Candidates(candidate_files(args.search or list(DEFAULT_SEARCH)))
    results: list[Diagnosis] = []
    where = "modules.dep" + "".join(f", {d}" for d in args.module_dir)
    for n in unfound:  # loaded without BTF, and no file to diagnose: still say so
        d = Diagnosis(n, "", "no-file", DOES_NOT_FIT,
                      f"{n}: loaded, but the kernel registered no BTF for it; its file is not "
                      f"in {where} (give the file as MODULE, or its directory with "
                      "--module-dir DIR)")
        results.append(d)
    tty = sys.stderr.isatty() and len(mods) > 1
    states: dict[str, headers.BuildDirState] = {}
    for i, m in enumerate(mods, 1):
        d = diagnose(m, target, cands, strict=args.strict)
        if d.kind == "no-btf":
            _explain_no_btf(d, Path(args.root), states)
        results.append(d)
        if tty:
            print(f"\r[{i}/{len(mods)}] {printable(d.module[:50]):<50}", end="",
                  file=sys.stderr,
                  flush=True)
    if tty:
        print(file=sys.stderr)
    errors = [d for d in results if d.result == ERROR]
    if errors and len(results) == 1:
        # an unreadable or corrupt file is an error like any other: one line on stderr
        raise CliError(errors[0].summary)
    for d in results:
        if d.module in logs:
            d.details.insert(0, f"kernel log: {logs[d.module]}")
            note = refusal_note(d.module, logs[d.module]) if args.module else None
            if note:
                d.details.insert(1, note)
        elif "" in logs:
            d.details.insert(0, f"kernel log: {logs['']} (logged once per boot, naming no "
                             "module)")
    if args.json:
        print(json.dumps({"target": target.path, "candidates": [str(c.path) for c in
                                                                cands.items],
                          "candidate_errors": cands.errors(),
                          "modules": [d.to_json() for d in results]}, indent=2))
    else:
        _print(results, args.module is None)
    if errors:
        print(printable(f"btfreconcilectl: error: {len(errors)} of {len(results)} modules "
                        f"could not be diagnosed (first: {errors[0].summary})"),
              file=sys.stderr)
        return EXIT_ERROR
    if any(d.result == DOES_NOT_FIT for d in results):
        return EXIT_DOES_NOT_FIT
    return EXIT_OK


def _vermagic_release(path: str) -> str | None:
    """The kernel release a module file was built for: the first word of its .modinfo
    vermagic ("6.1.0-57-amd64 SMP preempt mod_unload modversions")."""
    try:
        vermagic = modinfo_value(read_btf_sections(path, digest=False).modinfo, "vermagic")
    except (OSError, ElfError):
        return None
    words = (vermagic or "").split()
    return words[0] if words and words[0].isprintable() else None


def _explain_no_btf(d: Diagnosis, root: Path, states: dict[str, headers.BuildDirState]
                    ) -> None:
    """A module with no BTF at all: what the build directory of the kernel it was built for
    holds (Kbuild wrote no BTF because it had no vmlinux then), and the one-line fix for that
    state. `states` keeps each release's answer for the run (reading an image costs
    seconds)."""
    release = _vermagic_release(d.path)
    if release is None:
        release = headers.running_release()
        d.details.append(f"its .modinfo names no kernel (no vermagic): taking the running "
                         f"kernel, {release}")
    state = states.get(release)
    if state is None:
        state = states[release] = headers.build_dir_state(release, root)
    d.built_for = release
    d.build_dir = {"state": state.state, "detail": state.detail}
    d.details.append(f"built for {release}; its build directory: {state.detail}")
    if state.state == headers.NO_HEADERS:
        d.fix = f"install the headers of {release}, then {no_btf_remedy(release)}"
    elif state.state == headers.OTHER_BTF:
        d.details.append("modules built against that vmlinux get BTF split against the wrong "
                         "kernel's types")
        d.fix = no_btf_remedy(release, force=True)
    elif state.state == headers.RIGHT:
        d.details.append("a vmlinux is there now: the module was built before it")
        d.fix = rebuild_hint(release)
    else:
        d.fix = no_btf_remedy(release)


def _print(results: list[Diagnosis], loaded_mode: bool) -> None:
    if not results:
        print("every loaded module's BTF is registered by the kernel" if loaded_mode
              else "no modules")
        return
    many = len(results) > 1
    for d in results:
        if many and d.result == FITS:
            continue
        mark = {FITS: "fits", DOES_NOT_FIT: "DOES NOT FIT", ERROR: "error"}[d.result]
        print(printable(f"{mark}: {d.summary}"))
        for line in d.details:
            print(f"  {printable(line)}")
        for diag in d.diagnostics:
            if diag.get("severity") != "info":
                print(f"  - {printable(str(diag.get('summary')))}")
        if d.result == DOES_NOT_FIT and d.kind == "classic" and d.build:
            print(printable(f"  fix: btfreconcilectl rescue {d.path} --base {d.build} "
                            "--in-place"))
        elif d.fix:
            print(printable(f"  fix: {d.fix}"))
    if many:
        n_fit = sum(d.result == FITS for d in results)
        silent = sum(d.silent for d in results)
        found = sum(d.build is not None and d.result != FITS for d in results)
        print(f"{len(results)} modules: {n_fit} fit, {len(results) - n_fit} do not "
              f"({found} with their build found; {silent} would be accepted by the kernel "
              "and bind to the wrong types)")
