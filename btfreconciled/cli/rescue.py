"""`btfreconcilectl rescue MODULE [--search DIR]... [--base FILE] (-o OUT | --in-place)`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..btf.btf import Btf
from ..elf import module_is_signed, read_btf_sections
from ..elfwrite import write_btf_sections
from ..output import output_target
from ..reconcile.doctor import DEFAULT_SEARCH, Candidates, candidate_files
from ..reconcile.fields import FIELDS_ALL, FIELDS_EMBEDDED
from ..reconcile.rescue import CorruptBtf, RescueError, distill_sections, find_build
from ..reconcile.target import VmlinuxIndex
from .errors import EXIT_OK, CliError, printable

EXIT_CANNOT = 1
BACKUP_SUFFIX = ".btfr-orig"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rescue",
        help="give a module with classic split BTF a .BTF.base for the build it was made for",
        description=(
            "MODULE's classic split BTF only fits the exact vmlinux it was built against."
            " Find that build (as `doctor` does: among kernel files in the search directories,"
            " or --base FILE), distill the module's BTF against it exactly like libbpf's"
            " btf__distill_base(), and write the module with .BTF and .BTF.base (and"
            " .BTF.base_expects with --fields). A kernel >= 6.11 then relocates it itself at"
            " its next load, and btfreconciled reconciles it for any kernel. Compressed"
            " modules stay compressed. --in-place keeps the original next to it"
            f" (MODULE{BACKUP_SUFFIX}, which must not exist yet; --backup-suffix picks"
            " another name); a signed module is refused unless --signed-ok: the"
            " signature covers the whole file, so rewriting it removes the signature (the"
            " kernel then taints, or refuses it under module.sig_enforce)."),
        epilog="exit status: 0 written, 1 cannot be rescued (reason printed), 2 error.",
    )
    p.add_argument("module", metavar="MODULE", help="module file (.ko[.xz|.zst|.gz])")
    p.add_argument("--base", metavar="FILE",
                   help="the module's build: vmlinux ELF, raw BTF or kernel image (default: "
                        "search for it)")
    p.add_argument("--search", metavar="DIR", action="append",
                   help=f"where to look for the build (default: {', '.join(DEFAULT_SEARCH)})")
    p.add_argument("--fields", nargs="?", const=FIELDS_EMBEDDED,
                   choices=(FIELDS_EMBEDDED, FIELDS_ALL), metavar="=all",
                   help="also write .BTF.base_expects (see distill)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", metavar="OUT.ko", help="write the result here")
    out.add_argument("--in-place", action="store_true",
                     help=f"rewrite MODULE, keeping the original as MODULE{BACKUP_SUFFIX}")
    p.add_argument("--backup-suffix", metavar="SUFFIX", default=BACKUP_SUFFIX,
                   help="with --in-place: keep the original as MODULE + SUFFIX (default "
                        f"{BACKUP_SUFFIX}); an existing file of that name is an error")
    p.add_argument("--signed-ok", action="store_true",
                   help="rewrite a signed module anyway (its signature is removed)")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    module = Path(args.module)
    if not os.path.lexists(module):
        raise CliError(f"{module}: no such file")
    backup = _backup_name(module, args.backup_suffix) if args.in_place else None
    dst = module if args.in_place else Path(args.output)
    output_target(dst)  # a device, FIFO, directory or symlink loop fails before the search
    sections = read_btf_sections(module, digest=False)
    if not sections.is_elf:
        raise CliError(f"{module}: raw BTF, not a module file")
    signed = module_is_signed(module)
    if signed and not args.signed_ok:
        raise CliError(f"{module}: signed module: rewriting it removes the signature (the "
                       "kernel then taints or, with module.sig_enforce, refuses it); pass "
                       "--signed-ok to go ahead")
    base = base_path = None
    if args.base:
        target = VmlinuxIndex.load(args.base)
        base, base_path = target.btf, args.base
    cands = Candidates(candidate_files(args.search or list(DEFAULT_SEARCH)))
    try:
        build = find_build(module, sections, cands, base, base_path or "")
        assert sections.btf is not None
        src = Btf.parse(sections.btf, base=build.btf, source=f"{module}:.BTF")
        d = distill_sections(src, fields=args.fields, source=str(module))
    except CorruptBtf as e:  # not a verdict on the module: its BTF cannot be read
        raise CliError(str(e)) from None
    except RescueError as e:
        if args.json:
            print(json.dumps({"module": str(module), "rescued": False, "reason": str(e)},
                             indent=2))
        else:
            print(printable(f"btfreconcilectl: cannot rescue: {e}"))
        return EXIT_CANNOT
    if backup is not None:  # (a module with nothing to rescue said so above: exit 1)
        _refuse_existing(backup, module)
    # the backup is made (exclusively) only once the new file is verified, and removed again
    # if replacing the module fails: on return both are on disk
    write_btf_sections(module, dst, d.sections, backup=backup)
    info = {"module": str(module), "rescued": True, "output": str(dst), "build": build.path,
            "backup": str(backup) if backup else None, "signature_removed": signed,
            "distilled_base_types": d.base_types, "split_types": d.split_types,
            "original_split_types": d.original_split_types, "fields": d.expects}
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(printable(f"{dst}: .BTF.base with {d.base_types} base types, distilled against "
                    f"its build {build.path}; .BTF with {d.split_types} types (was "
                    f"{d.original_split_types})"))
    if backup:
        print(printable(f"original kept as {backup}"))
    if signed:
        print("the module's signature was removed (it covered the old file)")
    print("a kernel >= 6.11 relocates it itself at its next load; btfreconciled reconciles it "
          "for any kernel")
    return EXIT_OK


def _backup_name(module: Path, suffix: str) -> Path:
    """Where --in-place keeps the original."""
    if not suffix or "/" in suffix or "\0" in suffix:
        raise CliError(f"--backup-suffix {suffix!r}: give a non-empty suffix without '/'")
    return Path(f"{module}{suffix}")


def _refuse_existing(backup: Path, module: Path) -> None:
    """An existing backup name is never reused: it may be an older original (overwriting
    it, or keeping it while the module is replaced, loses one of the two) or a planted
    symlink. (write_btf_sections creates it exclusively, so a name appearing later fails
    there.)"""
    if os.path.lexists(backup):
        raise CliError(f"{backup}: already exists: refusing to overwrite it or to rewrite "
                       f"{module} without a backup (move it away, or pick another name with "
                       "--backup-suffix)")
