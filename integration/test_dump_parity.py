"""Dump parity with bpftool on real Debian kernels: every module of the 6.1 and 6.12 packages,
split on the vmlinux BTF extracted from the same package, 0 differing lines.

Host bpftool (7.1, bookworm) is the oracle for the module trees; trixie's bpftool 7.5 (in the
chroot) for the 6.12 vmlinux and the fixtures. bpftool cannot read compressed modules, so
.ko.xz/.ko.zst are decompressed into a temporary file for it (we read them directly).
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracle_tools import bpftool_raw  # noqa: E402

from btfreconciled.btf import Btf  # noqa: E402
from btfreconciled.btf.dump import dump_raw  # noqa: E402
from btfreconciled.elf import read_btf_sections  # noqa: E402


def _modules(kdir: Path) -> list[Path]:
    mods = sorted(p for p in (kdir / "lib" / "modules").rglob("*.ko*") if p.is_file())
    assert mods, f"no modules under {kdir}"
    return mods


def _bpftool_on(path: Path, base: Path, tmpdir: str) -> str:
    if path.suffix == ".ko":
        return bpftool_raw(path, base)
    sections = read_btf_sections(path)  # decompresses
    fd, name = tempfile.mkstemp(suffix=".btf", dir=tmpdir)
    with os.fdopen(fd, "wb") as f:
        f.write(sections.btf or b"")
    try:
        return bpftool_raw(name, base)
    finally:
        os.unlink(name)


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_every_module_of_a_debian_kernel_dumps_like_bpftool(tc, series: str, tmp_path) -> None:
    kdir = tc.kernel_dir(series)
    base_path = kdir / "vmlinux.btf"
    base = Btf.parse(base_path.read_bytes(), source=str(base_path))
    assert dump_raw(base) == bpftool_raw(base_path), f"{series} vmlinux dump differs"

    def check(mod: Path) -> tuple[Path, int, str]:
        sections = read_btf_sections(mod)
        assert sections.btf is not None, f"{mod}: no .BTF"
        ours = dump_raw(Btf.parse(sections.btf, base=base, source=f"{mod}:.BTF"))
        ref = _bpftool_on(mod, base_path, str(tmp_path))
        if ours == ref:
            return mod, 0, ""
        diff = list(difflib.unified_diff(ref.splitlines(), ours.splitlines(), lineterm=""))
        return mod, sum(1 for d in diff if d[:1] in "+-") - 2, "\n".join(diff[:12])

    mods = _modules(kdir)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(check, mods))
    bad = [r for r in results if r[1]]
    print(f"{series}: {len(mods)} modules, {len(bad)} with differences")
    assert not bad, (f"{len(bad)}/{len(mods)} modules differ from bpftool; first: "
                     f"{bad[0][0]}\n{bad[0][2]}")


def test_trixie_bpftool_75_agrees_on_612_vmlinux_and_fixtures(tc) -> None:
    """bpftool 7.5 (the version that knows .BTF.base) on the 6.12 vmlinux and the fixtures."""
    kdir = tc.kernel_dir("6.12")
    base_path = kdir / "vmlinux.btf"
    res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(base_path), "format", "raw"])
    assert res.returncode == 0, res.stderr
    base = Btf.parse(base_path.read_bytes(), source=str(base_path))
    assert dump_raw(base) == res.stdout
    fixtures = sorted(tc.fixtures_dir("6.12").glob("plain/*.ko"))
    assert fixtures, "no plain (non-distilled) 6.12 fixtures"
    for ko in fixtures:
        res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(ko), "-B", str(base_path),
                                "format", "raw"])
        assert res.returncode == 0, res.stderr
        sections = read_btf_sections(ko)
        ours = dump_raw(Btf.parse(sections.btf, base=base, source=str(ko)))
        assert ours == res.stdout, f"{ko.name} differs from bpftool 7.5"


def test_cli_dump_of_a_compressed_module(tc) -> None:
    kdir = tc.kernel_dir("6.12")
    mod = next(p for p in _modules(kdir) if p.name.endswith(".ko.xz"))
    res = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", "dump", str(mod),
                          "-B", str(kdir / "vmlinux.btf")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with tempfile.TemporaryDirectory() as d:
        assert res.stdout == _bpftool_on(mod, kdir / "vmlinux.btf", d)
