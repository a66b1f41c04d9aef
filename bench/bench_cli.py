#!/usr/bin/env python3
"""Whole-process CLI costs against the C tools, wall and CPU (children included), same run.

  check   `btfreconcilectl check DIR --vmlinux V` vs one libbpf 1.5 process doing the same
          job (bench/libbpf_bench.c batch: btf__parse(V), then btf__parse_split of every .ko
          under DIR). DIRs: the fixtures of each series (.BTF.base builds and their classic
          `plain/` twins), and the whole distilled Debian 6.1 tree (4,023 .ko).
          Every run of ours strictly validates V (a file, not the kernel's own
          /sys/kernel/btf/vmlinux): nothing is remembered between runs. The same for dump.
  dump    `btfreconcilectl dump F [-B V]` vs `bpftool btf dump file F [-B V] format raw`
          (bpftool 7.5 / libbpf 1.5), output to /dev/null: the 6.12 vmlinux BTF file, and the
          largest module of the distilled 6.12 tree (decompressed: bpftool reads no .ko.xz)
          relocated onto that vmlinux.
Runs alternate between the two sides (medians of --runs). CPU is user+sys from wait4 on the
direct child: a dump's forked renderer and every process the tools wait for are included.

    python bench/bench_cli.py [--runs 7] [--json FILE] [--only check|dump]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import ctools  # noqa: E402
import distilled  # noqa: E402
import toolchain  # noqa: E402

TARGET_CHECK, TARGET_DUMP = 3.0, 2.0


def ctl(*args: str) -> list[str]:
    """This checkout's btfreconcilectl (not the venv's installed copy)."""
    return [sys.executable, "-m", "btfreconciled.cli.main", *args]


def ctl_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def med(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def check_case(label: str, d: Path, vml: Path, runs: int) -> dict[str, Any]:
    cmd = ctl("check", str(d), "--vmlinux", str(vml))
    lib_cmd = [*ctools.libbpf_bench(), "batch", str(vml), str(d)]
    codes = (0, 1, 2)
    r = ctools.interleaved({"lib": lib_cmd, "ours": cmd}, runs, env=ctl_env(), ok_codes=codes)
    n = len([p for p in d.rglob("*.ko")])
    lib, ours = med(r["lib"]), med(r["ours"])
    return {"case": f"check {label}", "modules": n, "libbpf": lib, "ours": ours,
            "ratio": ours[0] / lib[0], "loadavg": os.getloadavg()}


def dump_case(label: str, f: Path, base: Path | None, runs: int) -> dict[str, Any]:
    b = ["-B", str(base)] if base else []
    cmd = ctl("dump", str(f), *b)
    r = ctools.interleaved({
        "bpftool": [*ctools.bpftool(), "btf", "dump", "file", str(f), *b, "format", "raw"],
        "ours": cmd,
    }, runs, env=ctl_env())
    lib, ours = med(r["bpftool"]), med(r["ours"])
    return {"case": f"dump {label}", "bpftool": lib, "ours": ours,
            "ratio_wall": ours[0] / lib[0], "ratio_cpu": ours[1] / lib[1],
            "loadavg": os.getloadavg()}


def largest_module(tree: Path) -> Path:
    return max(distilled.modules_in(tree), key=lambda p: p.stat().st_size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", choices=("check", "dump"))
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    toolchain.require_toolchain()
    results: list[dict[str, Any]] = []
    if args.only in (None, "check"):
        for series in toolchain.SERIES:
            results.append(check_case(f"fixtures {series} (with plain/)",
                                      toolchain.fixtures_dir(series),
                                      toolchain.kernel_dir(series) / "vmlinux.btf", args.runs))
        tree61 = distilled.ensure_tree("6.1")
        results.append(check_case("distilled 6.1 tree", tree61,
                                  toolchain.kernel_dir("6.1") / "vmlinux.btf",
                                  max(3, args.runs // 2)))
    if args.only in (None, "dump"):
        vml = toolchain.kernel_dir("6.12") / "vmlinux.btf"
        results.append(dump_case("6.12 vmlinux.btf", vml, None, args.runs))
        big = largest_module(distilled.ensure_tree("6.12", fields=True))
        with tempfile.TemporaryDirectory(prefix="btfr-bench-") as tmp:
            ko = Path(tmp) / big.name.removesuffix(".xz")
            ko.write_bytes(lzma.decompress(big.read_bytes()) if big.name.endswith(".xz")
                           else big.read_bytes())
            results.append(dump_case(f"{ko.name} -B vmlinux", ko, vml, args.runs))
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if r["case"].startswith("check"):
            lines.append(
                f"{r['case']:<44} {r['modules']:>5} .ko  libbpf {r['libbpf'][0] * 1e3:7.0f} ms"
                f"  ours {r['ours'][0] * 1e3:7.0f} ms ({r['ratio']:.2f}x)"
                f"  target <= {TARGET_CHECK}x: "
                f"{'met' if r['ratio'] <= TARGET_CHECK else 'MISSED'}"
                f"  (load {r['loadavg'][0]:.1f})")
        else:
            met = r["ratio_wall"] <= TARGET_DUMP and r["ratio_cpu"] <= TARGET_DUMP
            lines.append(
                f"{r['case']:<44} bpftool wall {r['bpftool'][0] * 1e3:6.0f} ms cpu "
                f"{r['bpftool'][1] * 1e3:6.0f} ms  ours wall {r['ours'][0] * 1e3:6.0f} ms cpu "
                f"{r['ours'][1] * 1e3:6.0f} ms  ratio wall {r['ratio_wall']:.2f}x cpu "
                f"{r['ratio_cpu']:.2f}x  target <= {TARGET_DUMP}x both: "
                f"{'met' if met else 'MISSED'}  (load {r['loadavg'][0]:.1f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
