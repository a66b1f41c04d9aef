"""Host tools the tests compare against (bpftool), shared by tests/ and integration/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

VMLINUX = Path("/sys/kernel/btf/vmlinux")


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
