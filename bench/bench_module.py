#!/usr/bin/env python3
"""One module's whole cost, what the daemon pays, against libbpf 1.5 btf__parse_split.

Per module, inside one timer (the daemon's calls, through its engine):
    ReconcileEngine.reconcile(path, index, strict="embedded")  read the file, decompress,
        ELF sections, parse + validate .BTF.base / .BTF / .BTF.base_expects, the module's
        lane index (prepare), relocate onto vmlinux, field checks, serialize the split BTF
    + ModuleResult.to_json(), sha256 of the BTF, json.dumps of the record   (the record)
against, in a C process of the trixie root (bench/libbpf_bench.c, libbpf 1.5):
    btf__parse_split(M.ko, vmlinux)   read the ELF, parse .BTF on .BTF.base, validate,
        btf__relocate onto vmlinux (libbpf does the whole job: it sorts vmlinux by name
        on every call, we look names up in an index built once).
Both sides parse the base vmlinux outside their timers, as the daemon does once at start-up
(ours: ReconcileEngine.load_index, which validates the file). Ours is timed cold, the way a
daemon started by systemd pays it: every round loads a fresh index and then reconciles each
module exactly once, in order, with no untimed warm-up (the index's lookups filled by a
module's first call are what a daemon pays on that module's one reconcile). libbpf keeps
nothing between calls; its side makes one untimed call, then one timed call, per module and
round. The two sides run alternately in chunks of CHUNK modules within each round, so both
see the same machine load. Every module gets ROUNDS timed calls on each side, and the median
of each is compared: the same filtering for the modules where we look best as for those where
we look worst. The table prints, next to the median-based ratios, the best (lowest) ratio and
the maximum of the first round alone (no filtering at all).

Inputs: the fixtures (6.12 and 6.1), and the whole Debian 6.12 and 6.1 trees distilled
(bench/distilled.py; 6.12 with .BTF.base_expects, so field checks run, and .ko.xz as Debian
ships it: ours reads the .ko.xz, libbpf cannot and gets the decompressed .ko, so the 6.12
rows also show ours on that same .ko).

    python bench/bench_module.py [--sets fixtures,6.12,6.1] [--rounds 5] [--limit N]
                                 [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ctools  # noqa: E402
import distilled  # noqa: E402
import toolchain  # noqa: E402

from btfreconciled.daemon.engine import ReconcileEngine  # noqa: E402

CHUNK = 200
TARGET_MEDIAN, TARGET_MAX = 2.0, 5.0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def daemon_cost(engine: ReconcileEngine, path: str, index: Any, name: str
                ) -> tuple[str, dict[str, float]]:
    """What the daemon's worker does for one module up to the publish (file writes aside)."""
    res = engine.reconcile(path, index, strict="embedded", module_name=name)
    rec = res.to_json()
    rec["btf_sha256"] = hashlib.sha256(res.btf).hexdigest() if res.btf is not None else None
    json.dumps(rec, sort_keys=True)
    return res.verdict.value, res.timings


Timing = tuple[float, str, dict[str, float]]  # ms, verdict, stage timings


def time_ours(engine: ReconcileEngine, index: Any, paths: list[str]) -> dict[str, Timing]:
    """One timed call per module, no warm-up."""
    out = {}
    for p in paths:
        name = Path(p).name.split(".ko")[0].replace("-", "_")
        t0 = time.perf_counter()
        verdict, timings = daemon_cost(engine, p, index, name)
        out[p] = ((time.perf_counter() - t0) * 1e3, verdict, timings)
    return out


def fresh_index(vmlinux: Path) -> tuple[ReconcileEngine, Any, float]:
    """A new engine and vmlinux index, as a daemon builds at its start (and its time)."""
    engine = ReconcileEngine()
    t0 = time.perf_counter()
    index = engine.load_index(str(vmlinux))
    return engine, index, time.perf_counter() - t0


def time_libbpf(vmlinux: Path, paths: list[str], iters: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".list") as f:
        f.write("".join(p + "\n" for p in paths))
        f.flush()
        r = subprocess.run([*ctools.libbpf_bench(), "split", str(vmlinux), str(iters), f.name],
                           capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"libbpf_bench failed:\n{r.stderr[-2000:]}")
    out = {}
    for ln in r.stdout.splitlines():
        parts = ln.split("\t")
        if len(parts) == 4:
            out[parts[0]] = int(parts[1]) / 1e6
        else:
            print(f"libbpf could not parse: {ln}", file=sys.stderr)
    return out


def decompressed(paths: list[Path], work: Path) -> dict[str, str]:
    """.ko.xz -> an uncompressed .ko in `work` (libbpf reads no compressed modules)."""
    out = {}
    for p in paths:
        if p.name.endswith(".ko"):
            out[str(p)] = str(p)
            continue
        dst = work / p.name.removesuffix(".xz")
        dst.write_bytes(lzma.decompress(p.read_bytes()))
        out[str(p)] = str(dst)
    return out


def median_timing(samples: list[Timing]) -> Timing:
    """The median sample (its verdict and stage timings with it)."""
    return sorted(samples, key=lambda t: t[0])[(len(samples) - 1) // 2]


def bench_set(label: str, vmlinux: Path, mods: list[Path], rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="btfr-bench-ko-"))
    index_s: list[float] = []
    try:
        ko = decompressed(mods, work)
        compressed = any(str(m) != ko[str(m)] for m in mods)
        paths = [str(m) for m in mods]
        lib_runs: list[dict[str, float]] = []
        ours_runs: list[dict[str, Timing]] = []
        same_runs: list[dict[str, Timing]] = []
        for n in range(rounds):
            lib: dict[str, float] = {}
            ours: dict[str, Timing] = {}
            same: dict[str, Timing] = {}
            engine, index, secs = fresh_index(vmlinux)
            index_s.append(secs)
            # ours on the decompressed .ko gets its own index: with the .ko.xz's calls before
            # it on the same index, it would find that module's lookups already done
            same_engine, same_index, _ = fresh_index(vmlinux) if compressed else (None, None, 0)
            for i in range(0, len(paths), CHUNK):
                chunk = paths[i:i + CHUNK]
                got = time_libbpf(vmlinux, [ko[p] for p in chunk], 1)
                lib.update({p: got[ko[p]] for p in chunk if ko[p] in got})
                ours.update(time_ours(engine, index, chunk))
                if same_engine is not None:
                    s = time_ours(same_engine, same_index, [ko[p] for p in chunk])
                    same.update({p: s[ko[p]] for p in chunk})
                print(f"  {label}: round {n + 1}/{rounds} {min(i + CHUNK, len(paths))}/"
                      f"{len(paths)}", file=sys.stderr, flush=True)
            del engine, index, same_engine, same_index
            lib_runs.append(lib)
            ours_runs.append(ours)
            if same:
                same_runs.append(same)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the same middle sample on both sides (the lower one of two when the count is even)
    lib = {p: sorted(r[p] for r in lib_runs)[(rounds - 1) // 2] for p in paths
           if all(p in r for r in lib_runs)}
    ours = {p: median_timing([r[p] for r in ours_runs]) for p in paths}
    names = [p for p in paths if p in lib and ours[p][1] == "ok"]
    not_ok = {Path(p).name: ours[p][1] for p in paths if ours[p][1] != "ok"}
    no_libbpf = [Path(p).name for p in paths if p not in lib]
    res: dict[str, Any] = {"set": label, "vmlinux": str(vmlinux), "modules": len(paths),
                           "compared": len(names), "not_ok": not_ok, "libbpf_failed": no_libbpf,
                           "rounds": rounds, "index_s": round(statistics.median(index_s), 3),
                           "loadavg": os.getloadavg()}
    for key, runs in (("ours", ours_runs), ("same_input", same_runs)):
        if not runs:
            continue
        data = {p: median_timing([r[p] for r in runs]) for p in paths}
        ratios = {p: data[p][0] / lib[p] for p in names}
        r = sorted(ratios.values())
        first = [runs[0][p][0] / lib_runs[0][p] for p in names]
        worst = sorted(names, key=lambda p: -ratios[p])[:10]
        res[key] = {
            "ours_ms_median": round(statistics.median(data[p][0] for p in names), 3),
            "ratio_median": round(statistics.median(r), 2), "ratio_p90": round(pct(r, 90), 2),
            "ratio_max": round(max(r), 2), "ratio_min": round(min(r), 2),
            "first_round_ratio_max": round(max(first), 2),
            "worst": [{"module": Path(p).name, "ours_ms": round(data[p][0], 2),
                       "libbpf_ms": round(lib[p], 2), "ratio": round(ratios[p], 2),
                       "stages_ms": {k: round(v * 1e3, 2) for k, v in data[p][2].items()}}
                      for p in worst],
        }
        biggest = max(names, key=lambda p: lib[p])
        res[key]["slowest_for_libbpf"] = {
            "module": Path(biggest).name, "ours_ms": round(data[biggest][0], 2),
            "libbpf_ms": round(lib[biggest], 2), "ratio": round(ratios[biggest], 2)}
    res["libbpf_ms_median"] = round(statistics.median(lib[p] for p in names), 3)
    return res


def module_sets(wanted: list[str], limit: int) -> dict[str, tuple[Path, list[Path]]]:
    sets: dict[str, tuple[Path, list[Path]]] = {}
    for w in wanted:
        if w == "fixtures":
            for series in toolchain.SERIES:
                mods = sorted(toolchain.fixtures_dir(series).glob("*.ko"))
                sets[f"fixtures {series}"] = (toolchain.kernel_dir(series) / "vmlinux.btf",
                                              mods)
        else:
            tree = distilled.ensure_tree(w, fields=(w == "6.12"))
            mods = distilled.modules_in(tree)
            if limit:
                mods = mods[:: max(1, len(mods) // limit)][:limit]
            sets[f"distilled {w} tree{' (+fields)' if w == '6.12' else ''}"] = (
                toolchain.kernel_dir(w) / "vmlinux.btf", mods)
    return sets


def met(r: dict[str, Any], key: str) -> bool:
    """The targets, and every module compared: one we fail on is a miss, not a left-out."""
    x = r[key]
    return (x["ratio_median"] <= TARGET_MEDIAN and x["ratio_max"] <= TARGET_MAX
            and not r["not_ok"] and not r["libbpf_failed"])


def report(results: list[dict[str, Any]]) -> str:
    rounds = results[0]["rounds"] if results else 0
    lines = [f"one module, whole cost (daemon's engine.reconcile + record) vs libbpf "
             f"{ctools.libbpf_version()} btf__parse_split; vmlinux parsed outside both "
             f"timers; ours cold (fresh index per round, no warm-up); every module {rounds} "
             "timed calls on both sides, medians compared",
             f"{'set':<34}{'n':>6}{'libbpf med':>11}{'ours med':>10}{'ratio med':>10}"
             f"{'p90':>7}{'max':>7}{'min':>6}{'max 1 run':>10}  target med<=2 max<=5"]
    for r in results:
        for key, what in (("ours", ""), ("same_input", " (same .ko)")):
            if key not in r:
                continue
            x = r[key]
            lines.append(f"{r['set'] + what:<34}{r['compared']:>6}{r['libbpf_ms_median']:>9.2f}ms"
                         f"{x['ours_ms_median']:>8.2f}ms{x['ratio_median']:>10.2f}"
                         f"{x['ratio_p90']:>7.2f}{x['ratio_max']:>7.2f}{x['ratio_min']:>6.2f}"
                         f"{x['first_round_ratio_max']:>10.2f}  "
                         f"{'met' if met(r, key) else 'MISSED'}")
    for r in results:
        x = r.get("ours")
        if not x:
            continue
        lines.append(f"worst 10, {r['set']} (load {r['loadavg'][0]:.1f}):")
        for w in x["worst"]:
            st = " ".join(f"{k} {v}" for k, v in w["stages_ms"].items() if k != "total")
            lines.append(f"  {w['module']:<34}{w['ours_ms']:>8.2f} vs {w['libbpf_ms']:>6.2f} ms"
                         f"{w['ratio']:>7.2f}x   ({st})")
        if r["not_ok"]:
            lines.append(f"  not ok (left out): {r['not_ok']}")
        if r["libbpf_failed"]:
            lines.append(f"  libbpf failed (left out): {r['libbpf_failed']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="fixtures,6.12,6.1")
    ap.add_argument("--rounds", type=int, default=5,
                    help="timed calls per module on each side, one per round (default 5)")
    ap.add_argument("--limit", type=int, default=0, help="spread sample of N tree modules")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a set misses a target or a module is not ok")
    args = ap.parse_args()
    toolchain.require_toolchain()
    results = []
    for label, (vml, mods) in module_sets(args.sets.split(","), args.limit).items():
        results.append(bench_set(label, vml, mods, max(1, args.rounds)))
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    missed = [r["set"] for r in results for key in ("ours", "same_input")
              if key in r and not met(r, key)]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
