#!/usr/bin/env python3
"""BTF core speed against the C tools, measured in one run on the same input.

  load+index   Btf.parse(/sys/kernel/btf/vmlinux, trusted) + name index
               vs libbpf btf__parse (ctypes, system libbpf.so.1)
  validate     Btf.parse of the same bytes as an untrusted file (full kernel-style checks)
               vs libbpf btf__parse
  dump         whole process `btfreconcilectl dump FILE` vs `bpftool btf dump file FILE
               format raw`, both writing to /dev/null

Prints medians, the ratios, and a breakdown of where our time goes.
Usage: /opt/btfreconciled/bin/python bench/bench_btf.py [--runs N] [FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from btfreconciled.btf import Btf, Kind
from btfreconciled.btf import dump as dump_mod


def median_time(fn, runs: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def libbpf_parse(path: str):  # noqa: ANN201
    lib = ctypes.CDLL("libbpf.so.1")
    lib.btf__parse.restype = ctypes.c_void_p
    lib.btf__parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.btf__free.argtypes = [ctypes.c_void_p]
    lib.libbpf_get_error.argtypes = [ctypes.c_void_p]
    lib.libbpf_get_error.restype = ctypes.c_long
    bpath = path.encode()

    def run() -> None:
        btf = lib.btf__parse(bpath, None)
        if not btf or lib.libbpf_get_error(btf):
            raise SystemExit(f"libbpf btf__parse failed on {path}")
        lib.btf__free(btf)

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default="/sys/kernel/btf/vmlinux")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    src = Path(args.file)
    data = src.read_bytes()
    # An untrusted copy: same bytes, but not under /sys/kernel/btf, so it gets validated.
    tmp = Path(tempfile.mkdtemp()) / "vmlinux.btf"
    tmp.write_bytes(data)

    def ours_load() -> None:
        b = Btf.parse(src.read_bytes(), source=str(src), validate=False)
        b.build_index()
        b.find("task_struct", Kind.STRUCT)

    def ours_validate() -> None:
        Btf.parse(tmp.read_bytes(), source=str(tmp), validate=True)

    lib_parse = libbpf_parse(str(src))
    lib_parse_tmp = libbpf_parse(str(tmp))
    # interleave to share whatever else the machine is doing
    t_lib = median_time(lib_parse, args.runs)
    t_load = median_time(ours_load, args.runs)
    t_lib2 = median_time(lib_parse_tmp, args.runs)
    t_val = median_time(ours_validate, max(3, args.runs // 3))

    bpftool = shutil.which("bpftool")
    # The btfreconcilectl of this interpreter's installation, not whichever is first on PATH
    # (a version manager's shim there would add its own start-up to our time).
    ctl = str(Path(sys.executable).parent / "btfreconcilectl")
    if not os.access(ctl, os.X_OK):
        ctl = shutil.which("btfreconcilectl")
    if not bpftool or not ctl:
        raise SystemExit("bpftool and btfreconcilectl must be on PATH (scripts/install-deps)")

    def whole(cmd: list[str]) -> float:
        def run() -> None:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        return median_time(run, max(3, args.runs // 2))

    t_bpftool = whole([bpftool, "btf", "dump", "file", str(src), "format", "raw"])
    t_dump = whole([ctl, "dump", str(src)])
    t_py = whole([sys.executable, "-c", "pass"])

    # breakdown of our side
    t0 = time.perf_counter()
    raw = src.read_bytes()
    t1 = time.perf_counter()
    b = Btf.parse(raw, validate=False)
    t2 = time.perf_counter()
    b.build_index()
    t3 = time.perf_counter()
    names = dump_mod._Names(b)
    t4 = time.perf_counter()
    lines = dump_mod.dump_raw_lines(b)
    t5 = time.perf_counter()
    text = "\n".join(lines)
    t6 = time.perf_counter()
    del names, text

    print(f"input: {src} ({len(data)} bytes, {len(b)} types)")
    print(f"{'':<14}{'ours':>10}{'C tool':>10}{'ratio':>8}  target")
    print(f"{'load+index':<14}{t_load * 1e3:>8.1f}ms{t_lib * 1e3:>8.1f}ms{t_load / t_lib:>7.1f}x"
          f"  <= 10x libbpf btf__parse")
    print(f"{'validate':<14}{t_val * 1e3:>8.1f}ms{t_lib2 * 1e3:>8.1f}ms{t_val / t_lib2:>7.1f}x"
          f"  <= 40x libbpf btf__parse")
    print(f"{'dump process':<14}{t_dump * 1e3:>8.1f}ms{t_bpftool * 1e3:>8.1f}ms"
          f"{t_dump / t_bpftool:>7.1f}x  <= 2x bpftool")
    print("where our time goes:")
    print(f"  python start (bare interpreter) {t_py * 1e3:6.1f} ms")
    print(f"  read file                       {(t1 - t0) * 1e3:6.1f} ms")
    print(f"  header + record scan            {(t2 - t1) * 1e3:6.1f} ms")
    print(f"  name index                      {(t3 - t2) * 1e3:6.1f} ms")
    print(f"  dump: offset->name map          {(t4 - t3) * 1e3:6.1f} ms")
    print(f"  dump: format {len(lines)} lines   {(t5 - t4) * 1e3:6.1f} ms")
    print(f"  dump: join                      {(t6 - t5) * 1e3:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
