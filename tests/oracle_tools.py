"""Host tools the tests compare against (bpftool), shared by tests/ and integration/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

VMLINUX = Path("/sys/kernel/btf/vmlinux")
REPO = Path(__file__).resolve().parent.parent
# btfreconcilectl in a child reporting its own peak RSS as VmHWM. Not ru_maxrss: Linux carries
# the parent's high-water mark over fork/vfork + exec (a child of a 300 MB process reports
# ru_maxrss >= 300 MB while its VmHWM is 9 MB), so late in the suite it would be pytest's.
CTL_HWM = [sys.executable, "-c",
           "import os, sys\n"
           "from btfreconciled.cli.main import main\n"
           "try:\n    rc = main()\n"
           "finally:\n"
           "    hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
           "    with open(os.environ['HWM_FILE'], 'w') as f:\n"
           "        f.write(hwm.split()[1])\n"
           "sys.exit(rc)"]


def ctl_hwm(tmp_path: Path, *args: str, timeout: float = 120
            ) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, seconds, the child's peak RSS in MB) of `btfreconcilectl ARGS`."""
    hwm = tmp_path / "hwm"
    t0 = time.monotonic()
    r = subprocess.run([*CTL_HWM, *args], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH=str(REPO), HWM_FILE=str(hwm)))
    return r, time.monotonic() - t0, int(hwm.read_text()) / 1024


def require_tool(name: str, package: str) -> str:
    """Path of a host tool the tests compare against; its absence is a setup bug, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/install-deps --test installs it "
                    f"(apt-get install {package})", pytrace=False)
    return path


def bpftool_raw(path: Path | str, base: Path | str | None = None) -> str:
    cmd = [require_tool("bpftool", "bpftool"), "btf", "dump", "file", str(path)]
    if base is not None:
        cmd += ["-B", str(base)]
    cmd += ["format", "raw"]
    res = subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape")
    assert res.returncode == 0, f"bpftool failed on {path}: {res.stderr.strip()}"
    return res.stdout


# bpftool leaves errno set by a libbpf call (EBADF) and its batch loop reads errno at the end
# of the file: every version we run (7.1, 7.5, 7.8) prints this and exits 255 after running
# every command.  Any other message, or fewer outputs than commands, is a real failure.
BATCH_ERRNO_LEAK = "Error: reading batch file failed: Bad file descriptor"


def bpftool_batch(bpftool: list[str], files: list[str], base: str | None,
                  cmds: Path) -> list[str]:
    """Raw dumps of many BTF files from one bpftool process: `bpftool [-B BASE] batch file`
    parses BASE once, not once per file (12 ms of each call on a 6.12 vmlinux, ~30,000 calls
    over the whole-tree tests).  `bpftool` is the command that runs it (the host's, or one in
    a chroot); `cmds` the batch file to write.  Each dump is followed by `version`, whose
    fixed text delimits the outputs; the dump code is the same as a single call's."""
    ver = subprocess.run([*bpftool, "version"], capture_output=True, text=True)
    assert ver.returncode == 0 and "bpftool v" in ver.stdout, ver.stdout + ver.stderr
    for f in files:
        assert not any(c in f for c in " \t\"'\\\n"), f"batch file cannot quote {f!r}"
    cmds.write_text("".join(f"btf dump file {f} format raw\nversion\n" for f in files))
    res = subprocess.run([*bpftool, *(["-B", base] if base else []), "batch", "file",
                          str(cmds)], capture_output=True, text=True, errors="surrogateescape")
    err = res.stderr.strip()
    ok = (res.returncode, err) in ((0, ""), (255, BATCH_ERRNO_LEAK))
    *dumps, tail = res.stdout.split(ver.stdout)
    assert ok and len(dumps) == len(files) and tail in ("", f"processed {2 * len(files)} "
                                                            "commands\n"), (
        f"bpftool batch over {len(files)} files (status {res.returncode}): "
        f"{len(dumps)} outputs; {err[-2000:]}")
    return dumps


def bpftool_batch_halves(bpftool: list[str], files: list[str], base: str | None,
                         prefix: Path) -> list[str]:
    """bpftool_batch over `files` in two processes side by side (one per core), each half's
    batch file at `prefix`.0 / `prefix`.1; the dumps come back in the order of `files`."""
    halves = (files[0::2], files[1::2])
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda i: bpftool_batch(bpftool, halves[i], base,
                                                    prefix.with_name(f"{prefix.name}.{i}")),
                            (0, 1)))
    dumps = [""] * len(files)
    dumps[0::2], dumps[1::2] = got
    return dumps
