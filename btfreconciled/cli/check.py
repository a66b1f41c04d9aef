"""`btfreconcilectl check MODULE [--vmlinux FILE] [--strict ...] [--json]`: offline what-if."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from ..reconcile import (
    EMBEDDED_KERNEL,
    EMBEDDED_LIBBPF_1_5,
    ModuleResult,
    Verdict,
    VmlinuxIndex,
    reconcile_module_file,
)
from ..reconcile.diagnostics import problem_text
from ..reconcile.target import SYSFS_VMLINUX
from .errors import EXIT_ERROR, EXIT_INCOMPATIBLE, EXIT_OK, CliError, printable, printable_lines

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")

STRICT_HELP = (
    "field-check policy when the module carries .BTF.base_expects: 'embedded' (default) makes"
    " layout changes of base structs/unions the module embeds by value errors and others"
    " warnings; 'all' makes every field mismatch an error; 'off' reports them as warnings only")
VMLINUX_HELP = (
    "target kernel BTF: /sys/kernel/btf/vmlinux (default), a raw BTF file, a vmlinux ELF or a"
    " kernel image (/boot/vmlinuz-*);"
    " checking against another kernel's vmlinux answers 'would this module work there?'")
RULE_HELP = (
    "which btf_relocate.c to follow for 'embedded' structs: 'kernel' (default: every split type"
    " is scanned, as in Linux and libbpf >= 1.6) or 'libbpf-1.5' (libbpf 1.5.0's shorter scan)")


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """--vmlinux, --strict and --rule: which kernel to reconcile against, and how."""
    p.add_argument("--vmlinux", metavar="FILE", default=SYSFS_VMLINUX, help=VMLINUX_HELP)
    p.add_argument("--strict", choices=("off", "embedded", "all"), default="embedded",
                   help=STRICT_HELP)
    p.add_argument("--rule", choices=(EMBEDDED_KERNEL, EMBEDDED_LIBBPF_1_5),
                   default=EMBEDDED_KERNEL, help=RULE_HELP)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="would this module's BTF reconcile with a kernel? (offline, exit 0/1/2)",
        description=(
            "Reconcile the split BTF of MODULE (.ko, .ko.xz, .ko.zst, .ko.gz with .BTF.base or"
            " .BTF.base_expects) against a kernel's vmlinux BTF exactly as the kernel's"
            " btf_relocate.c / libbpf's btf__relocate() would, plus field checks when the"
            " module records member layouts, and explain every problem: the expected type,"
            " what vmlinux has instead, and which of the module's types embed it."
            " MODULE may also be a directory or a whole modules tree (/lib/modules/RELEASE):"
            " then progress goes to stderr and a summary table to stdout."),
        epilog="exit status: 0 compatible, 1 incompatible, 2 error (unreadable input, or a"
               " module without .BTF.base).",
    )
    p.add_argument("module", metavar="MODULE", help="module file, directory or modules tree")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.set_defaults(handler=run)


def load_target(path: str) -> VmlinuxIndex:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file (give the target kernel's BTF with --vmlinux)")
    return VmlinuxIndex.load(path)


def find_modules(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith(MODULE_SUFFIXES):
                out.append(Path(dirpath) / f)
    return out


def run(args: argparse.Namespace) -> int:
    path = Path(args.module)
    if not path.exists():
        raise CliError(f"{path}: no such file or directory")
    target = load_target(args.vmlinux)
    if path.is_dir():
        return _check_tree(path, target, args)
    res = reconcile_module_file(str(path), target, strict=args.strict,
                                embedded_rule=args.rule)
    if args.json:
        out = res.to_json()
        out["target"] = {"path": target.path, "sha256": target.sha256}
        print(json.dumps(out, indent=2))
    else:
        _print_result(res)
    return _exit_code(res)


NO_BASE_HINT = ("classic split BTF fits only the vmlinux it was built for: "
                "`btfreconcilectl doctor {0}` explains, `btfreconcilectl rescue {0}` fixes")


def _exit_code(res: ModuleResult) -> int:
    if res.verdict is Verdict.OK:
        return EXIT_OK
    if res.verdict is Verdict.INCOMPATIBLE:
        return EXIT_INCOMPATIBLE
    if res.verdict is Verdict.ERROR:
        # one line on stderr, like every other CLI error
        print(f"btfreconcilectl: error: {printable(res.summary)}", file=sys.stderr)
    elif res.verdict is Verdict.NO_BASE:
        print("btfreconcilectl: error: "
              + printable(f"{res.summary} ({NO_BASE_HINT.format(res.path)})"),
              file=sys.stderr)
    return EXIT_ERROR


def _print_result(res: ModuleResult) -> None:
    if res.verdict in (Verdict.ERROR, Verdict.NO_BASE):
        return  # _exit_code prints the one-line error
    print(printable(f"{res.verdict.value}: {res.summary}"))
    for d in res.diagnostics:
        print(printable_lines(problem_text(d)))


def _check_tree(root: Path, target: VmlinuxIndex, args: argparse.Namespace) -> int:
    modules = find_modules(root)
    if not modules:
        raise CliError(f"{root}: no kernel modules (*.ko, *.ko.xz, *.ko.zst, *.ko.gz) found")
    results: list[ModuleResult] = []
    tty = sys.stderr.isatty()
    n = len(modules)
    for i, m in enumerate(modules, 1):
        res = reconcile_module_file(str(m), target, strict=args.strict,
                                    embedded_rule=args.rule)
        results.append(res)
        if tty:
            print(f"\r[{i}/{n}] {res.verdict.value:<12} {printable(res.module[:40]):<40}", end="",
                  file=sys.stderr, flush=True)
        elif i % 250 == 0 or i == n:
            print(f"[{i}/{n}] checked", file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    counts = Counter(r.verdict.value for r in results)
    if args.json:
        print(json.dumps({
            "target": {"path": target.path, "sha256": target.sha256},
            "counts": {v.value: counts.get(v.value, 0) for v in Verdict},
            "modules": [r.to_json() for r in results],
        }, indent=2))
    else:
        _print_table(results, counts)
    if counts.get(Verdict.ERROR.value):
        return EXIT_ERROR
    if counts.get(Verdict.INCOMPATIBLE.value):
        return EXIT_INCOMPATIBLE
    return EXIT_OK


def _print_table(results: list[ModuleResult], counts: Counter[str]) -> None:
    bad = [r for r in results if r.verdict in (Verdict.INCOMPATIBLE, Verdict.ERROR)]
    if bad:
        width = max(len(r.module) for r in bad)
        print(f"{'MODULE':<{width}}  {'VERDICT':<12}  PROBLEM")
        for r in bad:
            summary = r.summary
            prefix = f"{r.module}: "
            if summary.startswith(prefix):
                summary = summary[len(prefix):]
            print(printable(f"{r.module:<{width}}  {r.verdict.value:<12}  {summary}"))
        print()
    total = sum(counts.values())
    print(f"{total} modules: " + ", ".join(
        f"{counts.get(v.value, 0)} {v.value}" for v in Verdict))
