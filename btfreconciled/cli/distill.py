"""`btfreconcilectl distill MODULE --base VMLINUX [--fields[=all]] [-o OUT.ko | --in-place]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..btf.btf import Btf
from ..btf.load import parse_btf
from ..elf import BTF_BASE_SECTION, read_btf_sections
from ..output import output_target
from ..reconcile import VmlinuxIndex, load_module, relocate
from ..reconcile.fields import FIELDS_ALL, FIELDS_EMBEDDED
from ..reconcile.rescue import RescueError, distill_sections
from .errors import EXIT_OK, CliError, printable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="give a module a .BTF.base (and .BTF.base_expects) so it survives kernel updates",
        description=(
            "Distill MODULE's split BTF against VMLINUX, the kernel it was built for, exactly"
            " like libbpf's btf__distill_base() (what pahole --btf_features=distilled_base"
            " does): write a new .BTF that refers to a small .BTF.base holding only the named"
            " base types the module needs (ints, floats, enums, and structs/unions by name and"
            " size). The kernel (>= 6.11), libbpf (>= 1.5) and btfreconciled then reconcile"
            " the module with any later kernel. --fields additionally writes"
            " .BTF.base_expects with the full member layout of the base structs/unions the"
            " module embeds by value (--fields=all: of every one it references), so that"
            " `check`/`reconcile` also catch members that moved while the size stayed the"
            " same. Nothing else in the file changes; compressed modules stay compressed."),
    )
    p.add_argument("module", metavar="MODULE", help="module file (.ko[.xz|.zst|.gz])")
    p.add_argument("--base", metavar="VMLINUX", required=True,
                   help="BTF of the kernel the module was built for (vmlinux ELF, raw BTF "
                        "or /boot/vmlinuz-*)")
    p.add_argument("--fields", nargs="?", const=FIELDS_EMBEDDED,
                   choices=(FIELDS_EMBEDDED, FIELDS_ALL), metavar="=all",
                   help="also write .BTF.base_expects (members of embedded base structs;"
                        " --fields=all: of all referenced ones)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", metavar="OUT.ko", help="write the result here")
    out.add_argument("--in-place", action="store_true", help="rewrite MODULE (atomically)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=run)


def module_split_on(module: Path, base: Btf, target: VmlinuxIndex) -> Btf:
    """The module's .BTF as split BTF on `base`; a module that already carries .BTF.base is
    first reconciled onto it (so distilling twice gives the same sections)."""
    sections = read_btf_sections(module)
    if not sections.is_elf:
        what = "a kernel image" if (sections.compression or "").startswith("bzImage") \
            else "raw BTF"
        raise CliError(f"{module}: {what}, not a module ELF file")
    if sections.btf is None:
        raise CliError(f"{module}: no .BTF section (build the module with BTF)")
    if sections.base is None and sections.base_expects is None:
        return parse_btf(sections.btf, base=base, source=f"{module}:.BTF")
    loaded = load_module(module, sections)
    assert loaded is not None
    rel = relocate(loaded.split, target, module=str(module))
    if not rel.ok or rel.data is None:
        why = rel.problems[0].summary if rel.problems else "relocation failed"
        raise CliError(f"{module}: already distilled and does not reconcile with the"
                       f" given --base: {why}")
    return parse_btf(rel.data, base=base, source=f"{module}:.BTF (reconciled)")


def run(args: argparse.Namespace) -> int:
    from ..elfwrite import write_btf_sections

    module = Path(args.module)
    if not module.is_file():
        raise CliError(f"{module}: no such file")
    dst = module if args.in_place else Path(args.output)
    output_target(dst)  # a device, FIFO, directory or symlink loop fails before the work
    target = VmlinuxIndex.load(args.base)
    src = module_split_on(module, target.btf, target)
    try:
        d = distill_sections(src, fields=args.fields, source=str(module))
    except RescueError as exc:
        raise CliError(str(exc)) from None
    write_btf_sections(module, dst, d.sections)
    expects_info = d.expects
    info = {
        "module": str(module), "output": str(dst),
        "distilled_base_types": d.base_types, "split_types": d.split_types,
        "original_split_types": d.original_split_types,
        "base_bytes": len(d.sections[BTF_BASE_SECTION] or b""),
        "fields": expects_info,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        extra = (f", .BTF.base_expects with {expects_info['embedded_structs']} embedded"
                 f" structs/unions ({args.fields})" if expects_info else "")
        print(printable(f"{dst}: .BTF.base with {d.base_types} base types, .BTF with"
                        f" {d.split_types} types (was {d.original_split_types}){extra}"))
    return EXIT_OK
