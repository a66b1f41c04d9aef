#!/usr/bin/env python3
"""Reconcile time per module, warm vmlinux index, against libbpf 1.5 btf__relocate().

For every module of a Debian tree (default: the 6.1 tree of the toolchain cache) the module's
BTF is distilled against its vmlinux (btf__distill_base semantics, byte-identical to libbpf),
then both sides relocate the same (distilled base, split) pair onto the same vmlinux:

- libbpf 1.5 in the trixie chroot: a C harness parses the pair (untimed) and times
  btf__relocate() alone, ITERS times per module; vmlinux is parsed once.
- btfreconciled: the VmlinuxIndex is built once (warm); per module we time relocate() on the
  parsed and indexed pair ("relocate", the counterpart of libbpf's timed btf__relocate), and
  also parse + index + relocate from the raw bytes ("parse+relocate", which libbpf's number
  does not include).

One run; prints per-size-class medians and the ratio ours/libbpf over the tree (median, p90,
max), plus the median-sized and the largest module.

    python bench/bench_reconcile.py [--series 6.1|6.12] [--iters 11] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO))

import toolchain  # noqa: E402
from libbpf_harness import build  # noqa: E402

from btfreconciled.btf.load import parse_btf  # noqa: E402
from btfreconciled.elf import read_btf_sections  # noqa: E402
from btfreconciled.reconcile import VmlinuxIndex, distill, relocate  # noqa: E402
from btfreconciled.reconcile.relocate import prepare  # noqa: E402

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", default="6.1")
    ap.add_argument("--iters", type=int, default=11)
    ap.add_argument("--limit", type=int, default=0, help="only the first N modules")
    args = ap.parse_args()

    toolchain.require_toolchain()
    kdir = toolchain.kernel_dir(args.series)
    vmlinux = kdir / "vmlinux.btf"
    mods = sorted(os.path.join(d, f) for d, _, fs in os.walk(kdir / "lib" / "modules")
                  for f in fs if f.endswith(SUFFIXES))
    if args.limit:
        mods = mods[: args.limit]
    exe = build(lambda argv: toolchain.run_in_chroot(list(argv)),
                toolchain.cache_root() / "build" / "harness")

    t0 = time.perf_counter()
    target = VmlinuxIndex.load(str(vmlinux), validate=False)
    index_s = time.perf_counter() - t0
    print(f"{args.series}: {len(mods)} modules; vmlinux index built once in {index_s:.2f} s"
          f" ({target.type_count} types)", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="btfr-bench-", dir="/tmp"))
    pairs: dict[str, tuple[bytes, bytes, int]] = {}
    lines = []
    for i, m in enumerate(mods):
        data = read_btf_sections(m).btf
        if data is None:
            continue
        src = parse_btf(data, base=target.btf, validate=False)
        res = distill(src)
        b, s = res.base.to_bytes(), res.split.to_bytes()
        name = f"m{i}"
        (work / f"{name}.base").write_bytes(b)
        (work / f"{name}.split").write_bytes(s)
        pairs[name] = (b, s, len(res.split))
        lines.append(f"{name}\t{work / name}.base\t{work / name}.split\n")
    (work / "list").write_text("".join(lines))
    print(f"distilled {len(pairs)} modules into {work}", file=sys.stderr)

    # libbpf 1.5
    p = toolchain.run_in_chroot([str(exe), "bench", str(vmlinux), str(work / "list"),
                                 str(args.iters)], timeout=3600)
    if p.returncode != 0:
        print(p.stderr, file=sys.stderr)
        return 1
    libbpf: dict[str, float] = {}
    for ln in p.stdout.splitlines():
        parts = ln.split("\t")
        if len(parts) == 4:
            libbpf[parts[0]] = int(parts[2]) / 1e6  # ms

    # ours, warm index
    ours_rel: dict[str, float] = {}
    ours_full: dict[str, float] = {}
    for name, (b, s, _n) in pairs.items():
        dist = parse_btf(b, validate=False)
        split = parse_btf(s, base=dist, validate=False)
        prepare(split)  # the module's own index, built once when it is parsed (untimed,
        #                 like libbpf's parse of the module in the harness)
        t_rel, t_full = [], []
        for _ in range(args.iters):
            t = time.perf_counter()
            r = relocate(split, target, diagnose=False)
            t_rel.append(time.perf_counter() - t)
            t = time.perf_counter()
            d2 = parse_btf(b, validate=False)
            s2 = parse_btf(s, base=d2, validate=False)
            r = relocate(s2, target, diagnose=False)
            t_full.append(time.perf_counter() - t)
            assert r.ok
        ours_rel[name] = statistics.median(t_rel) * 1e3
        ours_full[name] = statistics.median(t_full) * 1e3

    names = [n for n in pairs if n in libbpf]
    size = {n: pairs[n][2] for n in names}
    by_size = sorted(names, key=lambda n: size[n])
    med_mod = by_size[len(by_size) // 2]
    big_mod = by_size[-1]
    print(f"\n{args.series}: {len(names)} modules, {args.iters} iterations each, medians per"
          " module (ms)")
    print(f"{'':<28}{'split types':>12}{'libbpf':>10}{'ours':>10}{'ours+parse':>12}"
          f"{'ratio':>8}")
    for label, n in (("median-sized module", med_mod), ("largest module", big_mod)):
        print(f"{label:<28}{size[n]:>12}{libbpf[n]:>10.3f}{ours_rel[n]:>10.3f}"
              f"{ours_full[n]:>12.3f}{ours_rel[n] / libbpf[n]:>8.2f}")
    for what, ours in (("relocate", ours_rel), ("parse+relocate", ours_full)):
        ratios = [ours[n] / libbpf[n] for n in names]
        worst = max(names, key=lambda n: ours[n] / libbpf[n])
        print(f"ratio ours/libbpf ({what}): median {statistics.median(ratios):.3f}"
              f"  p90 {pct(ratios, 90):.3f}  max {max(ratios):.3f}"
              f"  (faster than libbpf on {sum(r < 1 for r in ratios)}/{len(ratios)};"
              f" max at {Path(mods[int(worst[1:])]).name}, {size[worst]} split types,"
              f" {ours[worst]:.3f} vs {libbpf[worst]:.3f} ms)")
    print(f"libbpf per module: median {statistics.median(libbpf[n] for n in names):.3f} ms;"
          f" ours: median {statistics.median(ours_rel[n] for n in names):.3f} ms"
          f" (+ {index_s * 1e3:.0f} ms once for the index)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
