"""Distilled Debian module trees for the benchmarks, built once and kept in the toolchain cache.

Debian's 6.1 and 6.12 modules carry classic split BTF (no `.BTF.base`): the daemon would only
rescue them. The benchmarks need what a `.BTF.base` build looks like at the scale of a whole
distribution, so every module of a tree is distilled against its own vmlinux with our distill
(byte-identical to libbpf's btf__distill_base, as integration/test_dump_base_parity.py checks)
and rewritten in place of the original sections, keeping the file's compression (6.12: .ko.xz
as Debian ships it, 6.1: .ko as the cache holds it):

    <cache>/bench/distilled/<release>[+fields]/<module file name>

`fields=True` also writes `.BTF.base_expects` (`btfreconcilectl distill --fields`), so the
per-module field checks are part of what is timed. A stamp file marks a finished tree.

    python bench/distilled.py [6.12|6.1] [--fields]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO))

import toolchain  # noqa: E402

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
STAMP = ".complete"


def tree_dir(series: str, fields: bool) -> Path:
    rel = toolchain.kernel_release(series)
    return toolchain.cache_root() / "bench" / "distilled" / (rel + ("+fields" if fields else ""))


def source_modules(series: str) -> list[Path]:
    root = toolchain.kernel_dir(series) / "lib" / "modules"
    return sorted(p for p in root.rglob("*") if p.name.endswith(SUFFIXES))


_state: dict = {}


def _init(vmlinux: str, out: str, fields: bool) -> None:
    from btfreconciled.reconcile import VmlinuxIndex

    _state.update(target=VmlinuxIndex.load(vmlinux, validate=False), out=Path(out),
                  fields=fields)


def _one(path: str) -> str | None:
    from btfreconciled.btf.btf import Btf
    from btfreconciled.elf import read_btf_sections
    from btfreconciled.elfwrite import write_btf_sections
    from btfreconciled.reconcile.fields import FIELDS_EMBEDDED
    from btfreconciled.reconcile.rescue import distill_sections

    sections = read_btf_sections(path, digest=False)
    if sections.btf is None:
        return None
    split = Btf.parse(sections.btf, base=_state["target"].btf, source=path, validate=False)
    d = distill_sections(split, fields=FIELDS_EMBEDDED if _state["fields"] else None,
                         source=path)
    dst = _state["out"] / Path(path).name
    write_btf_sections(path, dst, d.sections)
    return str(dst)


def ensure_tree(series: str, *, fields: bool = False, workers: int = 2) -> Path:
    """The distilled tree of `series` (built on first use: a few minutes on 2 cores)."""
    out = tree_dir(series, fields)
    if (out / STAMP).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vmlinux = str(toolchain.kernel_dir(series) / "vmlinux.btf")
    mods = [str(p) for p in source_modules(series)]
    print(f"distilling {len(mods)} {series} modules into {out} (once)", file=sys.stderr)
    with multiprocessing.get_context("fork").Pool(
            workers, initializer=_init, initargs=(vmlinux, str(out), fields)) as pool:
        done = [d for d in pool.imap_unordered(_one, mods, chunksize=16) if d]
    (out / STAMP).write_text(f"{len(done)} modules\n")
    return out


def modules_in(tree: Path) -> list[Path]:
    return sorted(p for p in tree.iterdir() if p.name.endswith(SUFFIXES))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("series", nargs="?", default="6.12")
    ap.add_argument("--fields", action="store_true")
    args = ap.parse_args()
    toolchain.require_toolchain()
    out = ensure_tree(args.series, fields=args.fields, workers=os.cpu_count() or 2)
    print(f"{out}: {len(modules_in(out))} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
