"""Identity property over whole Debian module trees (SPEC §6, issue 4).

For every module of the 6.12 and 6.1 trees: distill its BTF against its own vmlinux (libbpf
btf__distill_base semantics), reconcile the result back onto that vmlinux (btf__relocate
semantics) and compare with the original split BTF. Modules whose distillation copied no
anonymous base types must come back identical (same records, same ids, same strings as
`dump` prints them); the others must be equivalent: every original split type maps to a type
of the same shape, references to base types possibly going through the copies.

Runs on 2 worker processes; about a minute per tree.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from btfreconciled.btf.load import parse_btf
from btfreconciled.elf import read_btf_sections
from btfreconciled.reconcile import VmlinuxIndex, distill, relocate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from split_compare import base_side, compare_split  # noqa: E402

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_state: dict = {}


def modules_of(kernel_dir: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(kernel_dir / "lib" / "modules"):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(SUFFIXES)]
    return sorted(out)


def _init(vmlinux: str) -> None:
    target = VmlinuxIndex.load(vmlinux)
    _state["target"] = target
    _state["side"] = base_side(target.btf)


def identity_one(path: str) -> tuple[str, str, int, int, str]:
    """(path, outcome, split types, copied types, detail); outcome is one of
    identical / equivalent / no-btf / FAIL-*."""
    target: VmlinuxIndex = _state["target"]
    try:
        sections = read_btf_sections(path)
        if sections.btf is None:
            return path, "no-btf", 0, 0, ""
        orig = parse_btf(sections.btf, base=target.btf, source=path, validate=False)
        dist = distill(orig, source=path)
        rel = relocate(dist.split, target, module=path, diagnose=False)
        if not rel.ok or rel.data is None:
            return path, "FAIL-relocate", len(orig), 0, rel.problems[0].summary
        back = parse_btf(rel.data, base=target.btf, source=path, validate=False)
        cmp = compare_split(orig, back, _state["side"])
    except Exception as exc:  # noqa: BLE001 - report, the test fails on it
        return path, "FAIL-exception", 0, 0, f"{type(exc).__name__}: {exc}"
    if cmp.equal:
        return path, "identical", len(orig), 0, ""
    if cmp.equivalent and cmp.copies > 0:
        return path, "equivalent", len(orig), cmp.copies, ""
    return path, "FAIL-differs", len(orig), cmp.copies, "; ".join(cmp.differences[:3])


def run_tree(kernel_dir: Path, workers: int = 2) -> tuple[Counter, list[tuple], float]:
    mods = modules_of(kernel_dir)
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init, initargs=(str(kernel_dir / "vmlinux.btf"),)) as p:
        results = p.map(identity_one, mods, chunksize=16)
    return Counter(r[1] for r in results), results, time.monotonic() - t0


@pytest.mark.parametrize("series", ["6.12", "6.1"])
def test_identity_whole_tree(tc, series: str) -> None:
    counts, results, secs = run_tree(tc.kernel_dir(series))
    failures = [r for r in results if r[1].startswith("FAIL")]
    copied = sum(r[3] for r in results)
    print(f"\n{series}: {len(results)} modules in {secs:.0f} s: {dict(counts)};"
          f" {copied} anonymous base types copied in total")
    assert len(results) > 3000
    assert counts["identical"] + counts["equivalent"] > 3000
    assert not failures, "\n".join(f"{p}: {o}: {d}" for p, o, _, _, d in failures[:20])


if __name__ == "__main__":  # python integration/test_identity.py [6.12|6.1]
    sys.path.insert(0, str(Path(__file__).parent))
    import toolchain

    for s in sys.argv[1:] or ["6.12", "6.1"]:
        c, res, secs = run_tree(toolchain.kernel_dir(s))
        fails = [r for r in res if r[1].startswith("FAIL")]
        print(f"{s}: {len(res)} modules in {secs:.1f} s: {dict(c)}")
        for f in fails[:10]:
            print("  ", f)
