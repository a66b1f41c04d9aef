"""`btfreconcilectl reconcile MODULE -o OUT.btf [--vmlinux FILE]`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

from ..reconcile import Verdict, reconcile_module_file
from ..reconcile.diagnostics import problem_text
from .check import _exit_code, add_target_arguments, load_target
from .errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconcile",
        help="write a module's BTF reconciled onto a kernel (raw split BTF)",
        description=(
            "Reconcile MODULE's split BTF (.BTF on its .BTF.base) onto a kernel's vmlinux BTF"
            " and write the result to OUT as raw split BTF whose base is that vmlinux, the"
            " same bytes libbpf's btf__relocate() and the kernel produce. Read it with"
            " `bpftool btf dump file OUT -B VMLINUX` or libbpf btf__parse_split(OUT, vmlinux)."
            " Nothing is written unless the module is compatible."),
        epilog="exit status: 0 written, 1 incompatible (diagnostics printed), 2 error.",
    )
    p.add_argument("module", metavar="MODULE", help="module file (.ko[.xz|.zst|.gz])")
    p.add_argument("-o", "--output", metavar="OUT.btf", required=True,
                   help="where to write the reconciled split BTF (replaced atomically)")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def atomic_write(path: Path, data: bytes) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def run(args: argparse.Namespace) -> int:
    module = Path(args.module)
    if not module.is_file():
        raise CliError(f"{module}: no such file")
    out = Path(args.output)
    if out.is_dir():
        raise CliError(f"{out}: is a directory")
    target = load_target(args.vmlinux)
    res = reconcile_module_file(str(module), target, strict=args.strict,
                                embedded_rule=args.rule)
    if res.verdict is Verdict.NO_BASE:
        raise CliError(f"{res.summary} (make one with: btfreconcilectl distill)")
    if res.verdict is Verdict.OK and res.btf is not None:
        atomic_write(out, res.btf)
    if args.json:
        d = res.to_json()
        d["output"] = str(out) if res.verdict is Verdict.OK else None
        print(json.dumps(d, indent=2))
    elif res.verdict is Verdict.OK:
        print(f"{res.summary}")
        print(f"wrote {out} ({len(res.btf or b'')} bytes)")
        for d in res.diagnostics:
            print(problem_text(d))
    elif res.verdict is Verdict.INCOMPATIBLE:
        print(f"{res.module}: incompatible: {res.summary}")
        for d in res.diagnostics:
            print(problem_text(d))
        print(f"{out} not written")
    return _exit_code(res)
