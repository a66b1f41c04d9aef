"""Full strict validation of an untrusted vmlinux BTF against libbpf's btf__parse.

    python bench/bench_validate.py [FILE] [-n RUNS] [--profile]

Both run in this process, interleaved, on the same file (default /sys/kernel/btf/vmlinux);
we print the median wall-clock and CPU time of each and their ratio. Ours is the whole job
an untrusted file gets: read the file, `Btf.parse(data, validate=True)`. libbpf's is
`btf__parse(path, NULL)` through ctypes on the system libbpf.so.1 (it reads the file too).
`--profile` adds a cProfile summary and the time of each validation phase.

These are warm, repeated calls: after the first, glibc hands libbpf back the heap it just
freed and libbpf runs in 2-4 ms instead of the ~9 ms of a first call in a fresh process.
The budget (ours <= 40x libbpf) is stated for the fresh-process case, which
bench/bench_btf.py measures ("validate fresh"); the warm ratio here is for tracking our
own validator's speed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from pathlib import Path

# the checkout's package, not an installed copy: a benchmark measures the code beside it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from btfreconciled.btf import validate as V  # noqa: E402
from btfreconciled.btf.btf import Btf  # noqa: E402


def libbpf():
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        sys.exit("libbpf.so.1 not found: apt-get install libbpf1")
    lib.btf__parse.restype = ctypes.c_void_p
    lib.btf__parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.btf__free.argtypes = [ctypes.c_void_p]
    return lib


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default="/sys/kernel/btf/vmlinux")
    ap.add_argument("-n", "--runs", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    path = Path(args.file)
    lib = libbpf()
    cpath = str(path).encode()

    def ours() -> None:
        Btf.parse(path.read_bytes(), source=str(path), validate=True)

    def theirs() -> None:
        p = lib.btf__parse(cpath, None)
        if not p:
            raise OSError(ctypes.get_errno(), f"libbpf btf__parse({path}) failed")
        lib.btf__free(p)

    ours()  # warm up (imports, page cache)
    theirs()
    ow, oc, lw, lc = [], [], [], []
    for _ in range(args.runs):
        gc.collect()
        w, c = timed(ours)
        ow.append(w)
        oc.append(c)
        w, c = timed(theirs)
        lw.append(w)
        lc.append(c)
    print(f"file: {path} ({path.stat().st_size if path.is_file() else '?'} bytes), "
          f"{args.runs} interleaved runs; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    for stat in (statistics.median, min):
        print(f"  {stat.__name__}:")
        for label, w, c in (("libbpf btf__parse", lw, lc),
                            ("read + Btf.parse(validate)", ow, oc)):
            print(f"    {label:28s} wall {stat(w) * 1e3:8.2f} ms   cpu {stat(c) * 1e3:8.2f} ms")
        print(f"    ratio (warm heaps)           wall {stat(ow) / stat(lw):8.1f} x    "
              f"cpu {stat(oc) / stat(lc):8.1f} x")
    if args.profile:
        profile(path)
    return 0


def profile(path: Path) -> None:
    import cProfile
    import pstats

    data = path.read_bytes()
    btf = Btf.parse(data, validate=False)
    best: dict[str, float] = {}
    gc.disable()  # as validate_btf does
    for _ in range(5):
        t = time.process_time()
        Btf.parse(data, validate=False)
        best["(parse: header, sections, record scan)"] = min(
            best.get("(parse: header, sections, record scan)", 1e9), time.process_time() - t)
        v = V._Validator(btf)
        for name in V.PHASES:
            t = time.process_time()
            getattr(v, name)()
            best[name] = min(best.get(name, 1e9), time.process_time() - t)
    gc.enable()
    print("\nbest CPU time per phase (ms):")
    for name, t in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"  {t * 1e3:7.2f}  {name}")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(3):
        Btf.parse(data, validate=True)
    pr.disable()
    print("\ncProfile of 3 x Btf.parse(validate=True), by own time:")
    pstats.Stats(pr, stream=sys.stdout).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    sys.exit(main())
