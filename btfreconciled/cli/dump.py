"""`btfreconcilectl dump FILE [-B BASE] [--json]`: bpftool's raw dump, line for line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..btf.btf import Btf
from ..btf.dump import write_raw
from ..btf.load import load_base, load_btf, load_btf_validating_later
from ..elf import BtfSections, read_btf_sections
from .errors import CliError

if TYPE_CHECKING:
    from ..btf.types import Type


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dump",
        help="print BTF as `bpftool btf dump file FILE format raw` does",
        description="Print every type of FILE (raw BTF, vmlinux, or a module .ko[.xz|.zst|.gz])"
        " exactly as `bpftool btf dump file FILE [-B BASE] format raw` prints it. A module"
        " with .BTF.base prints as split BTF on that distilled base, or with -B relocated"
        " onto BASE, as bpftool (libbpf) does.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("-B", "--base", metavar="BASE",
                   help="base BTF (vmlinux ELF, /boot/vmlinuz-* or raw, e.g. "
                        "/sys/kernel/btf/vmlinux) for split BTF")
    p.add_argument("--json", action="store_true", help="one JSON object per type")
    p.set_defaults(handler=run)


def load_for_dump(path: str, base_path: str | None, *, defer_scan: bool = False,
                  sections: BtfSections | None = None) -> Btf:
    """FILE as bpftool reads it: a module with a distilled base (.BTF.base) is split BTF on
    that base, or relocated onto -B BASE (libbpf's btf__parse_split)."""
    base = load_base(base_path) if base_path else None
    if sections is None:
        sections = read_btf_sections(path, digest=False)
    if sections.is_elf and sections.btf is not None and (
            sections.base is not None or sections.base_expects is not None):
        from ..reconcile.module import module_btf

        btf = module_btf(path, base, base_path=base_path or "", sections=sections)
        assert btf is not None
        return btf
    # (a dump of a kernel-verified vmlinux starts formatting before the record scan)
    return load_btf(path, base=base, defer_scan=defer_scan, sections=sections)


def _load_for_raw_dump(path: str, base_path: str | None) -> tuple[Btf, Callable[[], None] | None]:
    """load_for_dump for the raw text: a file that is not the kernel's own is strictly
    validated by write_raw while its forked renderer already works (validation costs about
    half of what formatting a vmlinux does); nothing is written unless it passes."""
    if base_path:
        return load_for_dump(path, base_path, defer_scan=True), None
    sections = read_btf_sections(path, digest=False)
    if sections.is_elf and sections.btf is not None and (
            sections.base is not None or sections.base_expects is not None):
        return load_for_dump(path, None, sections=sections), None
    return load_btf_validating_later(path, sections=sections)


def run(args: argparse.Namespace) -> int:
    if args.json:
        btf, check = load_for_dump(args.file, args.base), None
    else:
        btf, check = _load_for_raw_dump(args.file, args.base)
    try:
        if args.json:
            import json

            out = sys.stdout
            for tid, t in btf:
                out.write(json.dumps(_type_json(btf, tid, t)))
                out.write("\n")
        else:
            sys.stdout.flush()
            write_raw(btf, sys.stdout.buffer, before_output=check)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        if e.filename is not None:
            raise
        # e.g. ENOSPC on a redirected dump: say where, since the error itself does not
        raise CliError(f"writing standard output: {e.strerror or e}") from None
    return 0


def _type_json(btf, tid: int, t: Type) -> dict:  # noqa: ANN001
    d: dict = {"id": tid, "kind": t.kind.name, "name": btf.name_of(t.name_off)}
    for field in t.__slots_all__:  # type: ignore[attr-defined]
        if field == "name_off":
            continue
        v = getattr(t, field)
        if isinstance(v, tuple):
            v = [
                {
                    **({"name": btf.name_of(x.name_off)} if hasattr(x, "name_off") else {}),
                    **{f: getattr(x, f) for f in x.__slots__ if f != "name_off"},
                }
                for x in v
            ]
        d[field] = v
    return d
