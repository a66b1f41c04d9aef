"""The C tools the benchmarks compare against (libbpf 1.5, bpftool 7.5 of the trixie root), and
whole-process timing (wall and CPU, children included).

The tools are run from the host through the root's own dynamic loader and libraries
(`ld-linux-x86-64.so.2 --library-path ...`), not through vm/chroot: entering the chroot
(mount namespace, bind mounts) costs ~0.3 s that is no part of the tool's time, and both
sides are then measured the same way, by os.wait4 on a direct child.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import toolchain  # noqa: E402

C_SOURCE = HERE / "libbpf_bench.c"


def _root_exec(exe: str) -> list[str]:
    root = toolchain.rootfs()
    libs = ":".join(str(root / d) for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
    return [str(root / "lib64" / "ld-linux-x86-64.so.2"), "--library-path", libs, exe]


def libbpf_bench() -> list[str]:
    """argv prefix of bench/libbpf_bench.c, compiled in the trixie root (once per source)."""
    digest = hashlib.sha256(C_SOURCE.read_bytes()).hexdigest()[:12]
    out_dir = toolchain.cache_root() / "build" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"libbpf_bench-{digest}"
    if not exe.exists():
        tmp = out_dir / f".libbpf_bench-{digest}.tmp"
        p = toolchain.run_in_chroot(["gcc", "-O2", "-Wall", "-Werror", "-o", str(tmp),
                                     str(C_SOURCE), "-lbpf"])
        if p.returncode != 0:
            raise SystemExit(f"building {C_SOURCE} in the trixie root failed:\n"
                             f"{p.stdout}{p.stderr}")
        tmp.rename(exe)
    return _root_exec(str(exe))


def bpftool() -> list[str]:
    """bpftool 7.5 (libbpf 1.5) of the trixie root."""
    exe = toolchain.rootfs() / "usr" / "sbin" / "bpftool"
    if not exe.exists():
        raise SystemExit(f"{exe} missing: run vm/setup")
    return _root_exec(str(exe))


def libbpf_version() -> str:
    libs = sorted((toolchain.rootfs() / "usr/lib/x86_64-linux-gnu").glob("libbpf.so.*.*"))
    return libs[-1].name.removeprefix("libbpf.so.") if libs else "?"


def run_timed(cmd: Sequence[str], *, env: dict[str, str] | None = None,
              ok_codes: Sequence[int] = (0,)) -> tuple[float, float]:
    """(wall s, CPU s = user + sys of the process and all its waited-for children); stdout
    goes to /dev/null (a dump's output is not what is compared)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, env=env)
        # wait4 on this pid: its rusage covers the process and the children it waited for
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode not in ok_codes:
            err.seek(0)
            text = err.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{text[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime


def interleaved(cmds: dict[str, Sequence[str]], runs: int, **kw: object
                ) -> dict[str, list[tuple[float, float]]]:
    """Each command `runs` times, alternating, so all see the same machine load."""
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    for _ in range(runs):
        for k, c in cmds.items():
            out[k].append(run_timed(c, **kw))  # type: ignore[arg-type]
    return out
