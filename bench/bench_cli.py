#!/usr/bin/env python3
"""Whole-process CLI costs against the C tools, wall and CPU (children included), same run.

  check   `btfreconcilectl check DIR --vmlinux V` vs one libbpf 1.5 process doing the same
          job (bench/libbpf_bench.c batch: btf__parse(V), then btf__parse_split of every .ko
          under DIR). DIRs: the fixtures of each series (.BTF.base builds and their classic
          `plain/` twins), and the whole distilled Debian 6.1 tree (4,023 .ko).
          Ours is timed twice: "cold", the first run against V (V is strictly validated and
          a validated-marker is written: btf/markers.py, root only, in a private trust
          directory given by $BTFRECONCILED_TRUST_DIR), and "warm", later runs that find the
          marker and skip re-validating V. The same two ways for dump.
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
import shutil
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


def ctl_env(trust_dir: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), BTFRECONCILED_TRUST_DIR=str(trust_dir))


def med(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def check_case(label: str, d: Path, vml: Path, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="btfr-trust-") as trust:
        env = ctl_env(Path(trust))
        cmd = ctl("check", str(d), "--vmlinux", str(vml))
        lib_cmd = [*ctools.libbpf_bench(), "batch", str(vml), str(d)]
        codes = (0, 1, 2)
        cold = []
        for _ in range(max(3, runs // 2)):
            shutil.rmtree(trust)
            os.mkdir(trust, 0o700)
            cold.append(ctools.run_timed(cmd, env=env, ok_codes=codes))
        ctools.run_timed(cmd, env=env, ok_codes=codes)  # leaves the marker for warm runs
        r = ctools.interleaved({"lib": lib_cmd, "warm": cmd}, runs, env=env, ok_codes=codes)
    n = len([p for p in d.rglob("*.ko")])
    lib, warm, cold_m = med(r["lib"]), med(r["warm"]), med(cold)
    return {"case": f"check {label}", "modules": n, "libbpf": lib, "ours_cold": cold_m,
            "ours_warm": warm, "ratio_cold": cold_m[0] / lib[0],
            "ratio_warm": warm[0] / lib[0], "loadavg": os.getloadavg()}


def dump_case(label: str, f: Path, base: Path | None, runs: int) -> dict[str, Any]:
    b = ["-B", str(base)] if base else []
    cmd = ctl("dump", str(f), *b)
    with tempfile.TemporaryDirectory(prefix="btfr-trust-") as trust:
        env = ctl_env(Path(trust))
        cold = []
        for _ in range(max(3, runs // 2)):
            shutil.rmtree(trust)
            os.mkdir(trust, 0o700)
            cold.append(ctools.run_timed(cmd, env=env))
        ctools.run_timed(cmd, env=env)  # leaves the marker for warm runs
        r = ctools.interleaved({
            "bpftool": [*ctools.bpftool(), "btf", "dump", "file", str(f), *b, "format", "raw"],
            "ours": cmd,
        }, runs, env=env)
    lib, ours, ours_cold = med(r["bpftool"]), med(r["ours"]), med(cold)
    return {"case": f"dump {label}", "bpftool": lib, "ours": ours, "ours_cold": ours_cold,
            "ratio_wall": ours[0] / lib[0], "ratio_cpu": ours[1] / lib[1],
            "ratio_cold_wall": ours_cold[0] / lib[0], "ratio_cold_cpu": ours_cold[1] / lib[1],
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
                f"  ours cold {r['ours_cold'][0] * 1e3:7.0f} ms ({r['ratio_cold']:.2f}x)"
                f"  warm {r['ours_warm'][0] * 1e3:7.0f} ms ({r['ratio_warm']:.2f}x)"
                f"  target <= {TARGET_CHECK}x: "
                f"{'met' if r['ratio_cold'] <= TARGET_CHECK else 'MISSED'} cold, "
                f"{'met' if r['ratio_warm'] <= TARGET_CHECK else 'MISSED'} warm"
                f"  (load {r['loadavg'][0]:.1f})")
        else:
            met = r["ratio_wall"] <= TARGET_DUMP and r["ratio_cpu"] <= TARGET_DUMP
            lines.append(
                f"{r['case']:<44} bpftool wall {r['bpftool'][0] * 1e3:6.0f} ms cpu "
                f"{r['bpftool'][1] * 1e3:6.0f} ms  ours wall {r['ours'][0] * 1e3:6.0f} ms cpu "
                f"{r['ours'][1] * 1e3:6.0f} ms  ratio wall {r['ratio_wall']:.2f}x cpu "
                f"{r['ratio_cpu']:.2f}x  target <= {TARGET_DUMP}x both: "
                f"{'met' if met else 'MISSED'}  (load {r['loadavg'][0]:.1f})")
            lines.append(
                f"{'':<44} first run (validates; warm runs above trust the marker): wall "
                f"{r['ours_cold'][0] * 1e3:6.0f} ms cpu {r['ours_cold'][1] * 1e3:6.0f} ms, "
                f"ratio wall {r['ratio_cold_wall']:.2f}x cpu {r['ratio_cold_cpu']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
