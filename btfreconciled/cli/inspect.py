"""`btfreconcilectl inspect [FILE]`: what a BTF blob holds and which kernel it identifies."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

from ..btf.kinds import Kind
from ..btf.load import SYSFS_BTF, is_kernel_verified
from ..cache import sha256_hex
from ..elf import read_btf_sections
from .dump import load_for_dump
from .errors import printable

DEFAULT = str(SYSFS_BTF / "vmlinux")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a BTF file: kernel identity, type counts by kind",
        description="Summarise FILE (default: the running kernel's /sys/kernel/btf/vmlinux): "
        "its kernel identity (sha256 of the BTF, as the cache keys it), type counts by kind, "
        "string section size, module sections (.BTF.base, .BTF.base_expects) and load time.",
    )
    p.add_argument("file", metavar="FILE", nargs="?", default=DEFAULT)
    p.add_argument("-B", "--base", metavar="BASE", help="base BTF when FILE is split BTF")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    sections = read_btf_sections(args.file)
    if sections.btf is None:
        from .errors import CliError

        raise CliError(f"{args.file}: no .BTF section")
    btf = load_for_dump(args.file, args.base, sections=sections)
    validate = not is_kernel_verified(sections, btf.base)
    btf.build_index()
    elapsed = time.perf_counter() - t0
    kinds = Counter(Kind(btf.kind_of(tid)).name for tid in range(btf.start_id, btf.type_count))
    report = {
        "file": args.file,
        "btf_sha256": sha256_hex(sections.btf),
        "file_sha256": sections.sha256,
        "kernel_release": os.uname().release if args.file == DEFAULT else None,
        "byte_order": "little" if btf.byte_order == "<" else "big",
        "split": btf.base is not None,
        "first_type_id": btf.start_id,
        "types": len(btf),
        "string_bytes": len(btf.strings),
        "kinds": dict(sorted(kinds.items(), key=lambda kv: Kind[kv[0]])),
        "sections": {
            ".BTF": len(sections.btf),
            ".BTF.base": len(sections.base) if sections.base is not None else None,
            ".BTF.base_expects": (len(sections.base_expects)
                                  if sections.base_expects is not None else None),
        },
        "validated": validate,
        "load_ms": round(elapsed * 1000, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"file:          {printable(report['file'])}")
    if report["kernel_release"]:
        print(f"kernel:        {report['kernel_release']}")
    print(f"kernel id:     {report['btf_sha256']}  (sha256 of the BTF)")
    print(f"byte order:    {report['byte_order']}-endian"
          f"{', split BTF from id ' + str(btf.start_id) if btf.base else ''}")
    print(f"types:         {report['types']}   strings: {report['string_bytes']} bytes")
    for name, count in report["kinds"].items():
        print(f"  {name:<11} {count:>8}")
    if sections.is_elf:
        for sec, size in report["sections"].items():
            print(f"section {sec:<18} {'absent' if size is None else f'{size} bytes'}")
    how = "validated" if validate else "trusted as kernel-verified"
    print(f"loaded ({how}) and indexed in {report['load_ms']} ms")
    return 0
