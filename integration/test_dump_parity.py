"""Dump parity with bpftool on real Debian kernels: every module of the 6.1 and 6.12 packages,
split on the vmlinux BTF extracted from the same package, 0 differing lines.

Host bpftool (7.1, bookworm) is the oracle for the 6.1 and 6.12 module trees; trixie's bpftool
7.5 (in the chroot) for the 6.12 vmlinux and the fixtures; sid's bpftool 7.8 (its own libbpf 1.8)
for the whole 7.2 tree (vmlinux and every module; Kbuild 7.2 writes a 32-byte BTF header) and the
7.2 fixtures. bpftool cannot read compressed modules, so .ko.xz/.ko.zst are decompressed into a
temporary file for it (we read them directly). Over a whole tree, bpftool runs in batch mode
(tests/oracle_tools.bpftool_batch_halves): one process per half of the tree parses the vmlinux
once for thousands of dumps, as our side does.
"""

from __future__ import annotations

import difflib
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import malformed  # noqa: E402
from oracle_tools import bpftool_batch_halves, bpftool_raw, require_tool  # noqa: E402

from btfreconciled.btf.btf import Btf  # noqa: E402
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
    base_path = tc.kernel_dir(series) / "vmlinux.btf"
    base = Btf.parse(base_path.read_bytes(), source=str(base_path))
    assert dump_raw(base) == bpftool_raw(base_path), f"{series} vmlinux dump differs"
    mods, bad = _whole_tree(tc, series, [require_tool("bpftool", "bpftool")], tmp_path)
    without = [m for m, raw in mods if raw is None]
    assert not without, f"{len(without)} modules without .BTF, first {without[0]}"
    print(f"{series}: {len(mods)} modules, host bpftool: {len(bad)} with differences")
    assert not bad, f"{len(bad)}/{len(mods)} modules differ from bpftool; first: {bad[0]}"


@pytest.mark.parametrize("series,bpftool", [("6.12", "7.5"), ("7.2", "7.8")])
def test_chroot_bpftool_agrees_on_vmlinux_and_plain_fixtures(tc, series: str,
                                                             bpftool: str) -> None:
    """bpftool 7.5 (trixie, the version that knows .BTF.base) on the 6.12 vmlinux and fixtures;
    bpftool 7.8 (sid) on 7.2's."""
    flags = tc.chroot_flags(series)
    ver = tc.run_in_chroot(["bpftool", "version"], **flags)
    assert ver.returncode == 0 and f"bpftool v{bpftool}." in ver.stdout, ver.stdout + ver.stderr
    kdir = tc.kernel_dir(series)
    base_path = kdir / "vmlinux.btf"
    res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(base_path), "format", "raw"],
                           **flags)
    assert res.returncode == 0, res.stderr
    base = Btf.parse(base_path.read_bytes(), source=str(base_path))
    assert dump_raw(base) == res.stdout
    fixtures = sorted(tc.fixtures_dir(series).glob("plain/*.ko"))
    assert fixtures, f"no plain (non-distilled) {series} fixtures"
    for ko in fixtures:
        res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(ko), "-B", str(base_path),
                                "format", "raw"], **flags)
        assert res.returncode == 0, res.stderr
        sections = read_btf_sections(ko)
        ours = dump_raw(Btf.parse(sections.btf, base=base, source=str(ko)))
        assert ours == res.stdout, f"{ko.name} differs from bpftool {bpftool}"


_tree: dict = {}


def _tree_init(vmlinux: str, out: str) -> None:
    _tree.update(base=Btf.parse(Path(vmlinux).read_bytes(), source=vmlinux), out=out)


def _tree_dump(args: tuple[int, str]) -> tuple[str, str | None]:
    """Write module i's raw .BTF (decompressed, for bpftool) and our dump of it."""
    i, path = args
    sections = read_btf_sections(path, digest=False)
    if sections.btf is None:
        return path, None
    raw = Path(_tree["out"]) / f"{i:05d}.btf"
    raw.write_bytes(sections.btf)
    ours = dump_raw(Btf.parse(sections.btf, base=_tree["base"], source=f"{path}:.BTF"))
    raw.with_suffix(".ours").write_text(ours, errors="surrogateescape")
    return path, str(raw)


def _whole_tree(tc, series: str, bpftool: list[str], tmp_path: Path
                ) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Every module of the ``series`` package, split on its vmlinux: our dumps in two worker
    processes (the vmlinux parsed once each), then ``bpftool``'s in two batch processes
    (the vmlinux parsed once each).  (module, its raw .BTF or None) per module, and the
    modules whose dumps differ, each with the head of its diff."""
    vml = str(tc.kernel_dir(series) / "vmlinux.btf")
    out = tmp_path / "tree"
    out.mkdir()
    mods = [str(p) for p in _modules(tc.kernel_dir(series))]
    with multiprocessing.get_context("fork").Pool(
            2, initializer=_tree_init, initargs=(vml, str(out))) as pool:
        done = pool.map(_tree_dump, list(enumerate(mods)), chunksize=32)
    raws = [r for _, r in done if r]
    refs = bpftool_batch_halves(bpftool, raws, vml, out / "batch")
    src = {r: m for m, r in done if r}
    bad = []
    for raw, ref in zip(raws, refs, strict=True):
        ours = Path(raw).with_suffix(".ours").read_text(errors="surrogateescape")
        if ours != ref:
            diff = difflib.unified_diff(ref.splitlines(), ours.splitlines(), lineterm="")
            bad.append(f"{src[raw]}\n" + "\n".join(list(diff)[:12]))
    return done, bad


@pytest.mark.parametrize("series,bpftool", [("7.2", "7.8")])
def test_whole_tree_dumps_like_chroot_bpftool(tc, series: str, bpftool: str,
                                              tmp_path: Path) -> None:
    """Every module of a kernel package, split on its vmlinux, against the bpftool of the
    chroot that goes with it."""
    done, bad = _whole_tree(tc, series, [*tc.chroot_argv(series), "bpftool"], tmp_path)
    with_btf = sum(1 for _, raw in done if raw)
    assert with_btf > 4000, with_btf
    print(f"{series}: {with_btf} modules with .BTF (of {len(done)}), bpftool {bpftool}: "
          f"{len(bad)} differ")
    assert not bad, f"{len(bad)} dumps differ from bpftool {bpftool}; first: {bad[0]}"


def test_cli_dump_of_a_compressed_module(tc) -> None:
    kdir = tc.kernel_dir("6.12")
    mod = next(p for p in _modules(kdir) if p.name.endswith(".ko.xz"))
    res = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", "dump", str(mod),
                          "-B", str(kdir / "vmlinux.btf")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with tempfile.TemporaryDirectory() as d:
        assert res.stdout == _bpftool_on(mod, kdir / "vmlinux.btf", d)


@pytest.mark.parametrize("series,bpftool", [("6.12", "7.5"), ("7.2", "7.8")])
def test_kind_layout_section_dumps_like_chroot_bpftool(tc, series: str, bpftool: str,
                                                       tmp_path: Path) -> None:
    """A BTF with Linux 7.x's 32-byte header and a kind layout section (libbpf 1.8's table
    between types and strings): bpftool 7.8 reads the section, 7.5 steps over it as a gap;
    both print the types as without it, and so do we."""
    plain = malformed.valid_blob()
    path = tmp_path / "layout.btf"
    path.write_bytes(malformed.with_layout(plain))
    res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(path), "format", "raw"],
                           **tc.chroot_flags(series))
    assert res.returncode == 0, res.stderr
    ours = dump_raw(Btf.parse(path.read_bytes(), source=str(path)))
    assert ours == res.stdout, f"bpftool {bpftool} differs"
    assert ours == dump_raw(Btf.parse(plain))
