"""`btfreconcilectl min-core-btf OBJ.bpf.o... -o OUT.btf [--vmlinux FILE] [--module M]...`."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..btf.btf import Btf
from ..btf.load import SYSFS_BTF
from ..cache import DEFAULT_CACHE_DIR, atomic_output, sha256_hex, write_all
from ..output import output_target
from .errors import EXIT_INCOMPATIBLE, EXIT_OK, CliError

if TYPE_CHECKING:
    from ..reconcile import VmlinuxIndex
    from ..reconcile.mincore import Ambiguity

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
SYSFS = SYSFS_BTF.parent.parent  # /sys: loaded modules and the kernel's own BTF


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "min-core-btf",
        help="minimized BTF for BPF objects' CO-RE relocations, module types included",
        description=(
            "Write the types the CO-RE relocations of OBJ (compiled BPF objects) need, cut"
            " out of the vmlinux BTF plus the given modules' reconciled BTF, as one small"
            " standalone BTF: what `bpftool gen min_core_btf` writes from the same merged"
            " input, byte for byte (no bpftool is needed). Ship it with the program and pass"
            " it as libbpf's btf_custom_path (or cilium/ebpf's KernelTypes) on kernels whose"
            " module BTF the loader cannot use. Each relocation is resolved as libbpf"
            " resolves it; when two given modules define a type of the same name with"
            " different layouts and a relocation touches it, libbpf would fail ('field offset"
            " ambiguity'), and so does this command: give only the module the program is"
            " written for."),
        epilog=("exit status: 0 written, 1 a relocation is ambiguous or cannot be resolved"
                " (nothing written), 2 error (unreadable object or BTF, a module that does"
                " not reconcile)."),
    )
    p.add_argument("objects", metavar="OBJ.bpf.o", nargs="+",
                   help="BPF object files (clang -g --target=bpf) with .BTF and .BTF.ext")
    p.add_argument("-o", "--output", metavar="OUT.btf", required=True,
                   help="where to write the minimized BTF (replaced atomically)")
    p.add_argument("--vmlinux", metavar="FILE", default=None,
                   help="kernel BTF: /sys/kernel/btf/vmlinux (default), a raw BTF file, a"
                        " vmlinux ELF or a kernel image (/boot/vmlinuz-*); any kernel's, for"
                        " building offline")
    p.add_argument("--module", metavar="NAME|FILE", action="append", default=[],
                   dest="modules",
                   help="a module whose types relocations may need (repeatable): a loaded"
                        " module's NAME (its reconciled BTF from btfreconciled's cache, else"
                        " /sys/kernel/btf/NAME; needs the running kernel's vmlinux), or a"
                        " module FILE (.ko[.xz|.zst|.gz]) reconciled onto --vmlinux")
    p.add_argument("--cache-dir", metavar="DIR", default=str(DEFAULT_CACHE_DIR),
                   help=f"btfreconciled's cache, for --module NAME (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--header-size", type=int, choices=(24, 32), default=24,
                   help="BTF header to write: 24 bytes (default; what bpftool 7.5 writes,"
                        " read by every kernel and libbpf) or 32 (the Linux 7.x header with an"
                        " empty kind layout section, what bpftool 7.8 writes); the rest of the"
                        " file is the same")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def _is_module_file(arg: str) -> bool:
    return arg.endswith(MODULE_SUFFIXES) or os.sep in arg


def _module_split(arg: str, vmlinux_path: str, target: VmlinuxIndex, cache_dir: str
                  ) -> tuple[str, bytes]:
    """(module name, its split BTF on the vmlinux) for one --module argument."""
    from ..elf import read_btf_sections
    from ..reconcile import Verdict, reconcile_module_file

    if _is_module_file(arg):
        if not Path(arg).is_file():
            raise CliError(f"{arg}: no such module file")
        res = reconcile_module_file(arg, target)
        if res.verdict is not Verdict.OK or res.btf is None:
            raise CliError(f"{arg}: does not reconcile onto {vmlinux_path}: {res.summary}")
        return res.module, res.btf
    name = arg
    from .. import client

    why: list[str] = []
    try:
        path = client.open_cache(cache_dir, vmlinux=vmlinux_path, sysfs=SYSFS).split_path(name)
        return name, _read(path)
    except client.NoBtf as e:
        why.append(str(e))
    sysfs = SYSFS / "kernel" / "btf" / name
    if sysfs.is_file():
        running = read_btf_sections(SYSFS / "kernel" / "btf" / "vmlinux").sha256
        if running != target.sha256:
            raise CliError(f"{name}: {sysfs} is split BTF on the running kernel, not on "
                           f"{vmlinux_path}: give the module's .ko file to use another vmlinux")
        return name, _read(sysfs)
    raise CliError(f"{name}: no reconciled BTF ({'; '.join(why)}) and no {sysfs}; give the "
                   "module's .ko file instead")


def _read(path: Path) -> bytes:
    from ..elf import read_btf_sections

    data = read_btf_sections(path, digest=False).btf
    if data is None:
        raise CliError(f"{path}: no BTF")
    return data


def run(args: argparse.Namespace) -> int:
    from ..bpfobj import read_bpf_object
    from ..reconcile import VmlinuxIndex
    from ..reconcile.merge import MergeError, write_merged
    from ..reconcile.mincore import Ambiguity as MinCoreAmbiguity
    from ..reconcile.mincore import BadObject, MinCoreError, Resolver, owners

    out = Path(args.output)
    output_target(out)  # a device, FIFO or directory fails before the work
    objects = [read_bpf_object(o) for o in args.objects]
    if args.vmlinux is None:
        args.vmlinux = str(SYSFS / "kernel" / "btf" / "vmlinux")
    if not os.path.exists(args.vmlinux):
        raise CliError(f"{args.vmlinux}: no such file (give the kernel's BTF with --vmlinux)")
    target = VmlinuxIndex.load(args.vmlinux)
    splits: list[tuple[str, bytes]] = []
    for arg in args.modules:
        name, split = _module_split(arg, args.vmlinux, target, args.cache_dir)
        if any(n == name for n, _ in splits):
            raise CliError(f"{arg}: module {name} given twice")
        splits.append((name, split))
    chunks: list[bytes] = []
    try:
        layout = write_merged(lambda b: chunks.append(bytes(b)), target.btf, splits) \
            if splits else None
    except MergeError as e:
        raise CliError(str(e)) from None
    merged = b"".join(chunks) if layout is not None else None
    chunks.clear()
    if merged is not None:
        source = f"{args.vmlinux} + {' + '.join(n for n, _ in splits)}"
        whole = Btf.parse(merged, source=source, validate=False)
    else:
        whole = target.btf
    resolver = Resolver(whole)
    try:
        for obj in objects:
            resolver.record_object(obj)
        data = resolver.emit(args.header_size)
    except MinCoreAmbiguity as e:
        spans = [(m.name, m.first_id, m.type_count) for m in layout.modules] if layout else []
        owner = owners(spans, target.btf.type_count)
        print(f"btfreconcilectl: error: {_refusal(e, owner, out)}", file=sys.stderr)
        return EXIT_INCOMPATIBLE
    except BadObject as e:
        raise CliError(str(e)) from None
    except MinCoreError as e:
        print(f"btfreconcilectl: error: {e}; {out} not written", file=sys.stderr)
        return EXIT_INCOMPATIBLE
    dest = output_target(out)
    try:
        with atomic_output(dest, mode=0o644) as f:
            write_all(f, data)
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise CliError(f"{out}: cannot write: {reason}") from None
    full = len(merged) if merged is not None else None
    if args.json:
        print(json.dumps({
            "output": str(out), "size": len(data), "sha256": sha256_hex(data),
            "types": resolver.emitted_types, "vmlinux": args.vmlinux,
            "modules": [n for n, _ in splits], "merged_size": full,
            "objects": [str(o.path) for o in objects],
            "relocations": sum(len(o.relos) for o in objects),
            "unresolved": [{"object": u.obj, "section": u.relo.section,
                            "relocation": u.relo.index, "kind": u.local_kind,
                            "type": u.local_name,
                            "access": u.access} for u in resolver.unresolved],
        }, indent=2))
    else:
        what = f"vmlinux + {', '.join(n for n, _ in splits)}" if splits else "vmlinux"
        print(f"wrote {out}: {len(data)} bytes, {resolver.emitted_types} types "
              f"(from {what}" + (f", {full} bytes merged)" if full is not None else ")"))
        for u in resolver.unresolved:
            print(f"note: {u.obj}: {u.relo.section} relocation #{u.relo.index} "
                  f"({u.what}) matches nothing in the given BTF: libbpf "
                  "will poison that instruction unless the program guards it")
    return EXIT_OK


def _refusal(e: Ambiguity, owner: Callable[[int], str], out: Path) -> str:
    """The one line saying which modules disagree about a type, and what to do."""
    a, b = owner(e.first_id), owner(e.other_id)
    where = f"{e.obj}: {e.relo.section} relocation #{e.relo.index}"
    if a == b:
        return (f"{e.local_kind} {e.local_name}: {a} defines it twice with different layouts "
                f"({e.label}: {e.first_value} in [{e.first_id}], "
                f"{e.other_value} in [{e.other_id}]): libbpf fails with '{e.reason}' "
                f"({where}); {out} not written")
    return (f"{e.local_kind} {e.local_name} is defined by both {a} and {b} with different "
            f"layouts ({e.label}: {e.first_value} in {a}, {e.other_value} "
            f"in {b}): libbpf fails with '{e.reason}' ({where}); give only the module the "
            f"program is written for; {out} not written")
