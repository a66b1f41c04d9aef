"""`btfreconcilectl reconcile MODULE -o OUT.btf [--merged] [--vmlinux FILE]`."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

from ..cache import atomic_output, write_all
from ..output import output_target
from ..reconcile import Verdict, VmlinuxIndex, reconcile_module_file
from ..reconcile.diagnostics import problem_text
from ..reconcile.merge import MergeError, write_merged
from .check import NO_BASE_HINT, _exit_code, add_target_arguments, load_target
from .errors import CliError, printable, printable_lines


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconcile",
        help="write a module's BTF reconciled onto a kernel (split, or merged for loaders)",
        description=(
            "Reconcile MODULE's split BTF (.BTF on its .BTF.base) onto a kernel's vmlinux BTF"
            " and write the result to OUT as raw split BTF whose base is that vmlinux, the"
            " same bytes libbpf's btf__relocate() and the kernel produce. Read it with"
            " `bpftool btf dump file OUT -B VMLINUX` or libbpf btf__parse_split(OUT, vmlinux)."
            " With --merged, OUT is one standalone BTF instead: the vmlinux's types and"
            " strings followed by the module's (same ids as the split file), the single file"
            " BPF loaders take: libbpf's btf_custom_path, cilium/ebpf's KernelTypes,"
            " bpftrace's BPFTRACE_BTF. Nothing is written unless the module is compatible."),
        epilog="exit status: 0 written, 1 incompatible (diagnostics printed), 2 error.",
    )
    p.add_argument("module", metavar="MODULE", help="module file (.ko[.xz|.zst|.gz])")
    p.add_argument("-o", "--output", metavar="OUT.btf", required=True,
                   help="where to write the reconciled BTF (replaced atomically)")
    p.add_argument("--merged", action="store_true",
                   help="write vmlinux + module as one standalone BTF (for loaders)")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def write_output(out: Path, btf: bytes, target: VmlinuxIndex, name: str,
                 merged: bool) -> int:
    """Write the split (or merged) BTF to `out` atomically, mode 0644 (BTF is public: the
    kernel's own is world-readable); returns its size."""
    # Checked again right before writing: the reconciliation took a while.
    dest = output_target(out)
    try:
        with atomic_output(dest, mode=0o644) as f:
            if not merged:
                write_all(f, btf)
                return len(btf)
            try:
                layout = write_merged(lambda b: write_all(f, b), target.btf, [(name, btf)])
            except MergeError as e:
                raise CliError(str(e)) from None
            return layout.size
    except OSError as e:  # name the user's path, not the temporary file next to it
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise CliError(f"{out}: cannot write: {reason}") from None


def run(args: argparse.Namespace) -> int:
    module = Path(args.module)
    if not module.is_file():
        raise CliError(f"{module}: no such file")
    out = Path(args.output)
    output_target(out)  # a device, FIFO, directory or symlink loop fails before the work
    target = load_target(args.vmlinux)
    res = reconcile_module_file(str(module), target, strict=args.strict,
                                embedded_rule=args.rule)
    if res.verdict is Verdict.NO_BASE:
        raise CliError(f"{res.summary} ({NO_BASE_HINT.format(res.path)})")
    size = None
    if res.verdict is Verdict.OK and res.btf is not None:
        size = write_output(out, res.btf, target, res.module, args.merged)
    what = "merged BTF (vmlinux + module)" if args.merged else "split BTF"
    if args.json:
        d = res.to_json()
        d["output"] = str(out) if size is not None else None
        d["output_kind"] = "merged" if args.merged else "split"
        d["output_size"] = size
        print(json.dumps(d, indent=2))
    elif res.verdict is Verdict.OK:
        print(printable(res.summary))
        print(printable(f"wrote {out}: {what}, {size} bytes"))
        for d in res.diagnostics:
            print(printable_lines(problem_text(d)))
    elif res.verdict is Verdict.INCOMPATIBLE:
        print(printable(f"{res.module}: incompatible: {res.summary}"))
        for d in res.diagnostics:
            print(printable_lines(problem_text(d)))
        print(printable(f"{out} not written"))
    return _exit_code(res)
