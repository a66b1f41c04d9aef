"""Merged BTF (SPEC §8) on the real fixtures, against bpftool 7.5 and libbpf 1.5.

For every fixture (its .BTF.base build) of 6.12 and 6.1, on its own kernel and moved onto the
other major version: `btfreconcilectl reconcile --merged` writes a file that bpftool 7.5 dumps
exactly as `bpftool btf dump file VMLINUX` followed by `bpftool btf dump file M.ko -B VMLINUX`
(libbpf relocating the .ko itself). all.btf of every fixture: libbpf's btf__parse takes it,
its type count is vmlinux's plus every module's, and each module's part is its own merged
file's part with the ids moved past the modules before it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import toolchain

from btfreconciled.btf.btf import Btf
from btfreconciled.cli.main import main as ctl
from btfreconciled.reconcile import Verdict, VmlinuxIndex, reconcile_module_file
from btfreconciled.reconcile.merge import merged_bytes

pytestmark = pytest.mark.chroot

MODS = toolchain.FIXTURE_MODULES
PAIRS = [("6.12", "6.12"), ("6.1", "6.1"), ("6.1", "6.12"), ("6.12", "6.1")]


def bpftool(tc, *args: str) -> tuple[int, str, str]:
    res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", *args, "format", "raw"])
    return res.returncode, res.stdout, res.stderr


@pytest.fixture(scope="module")
def vmlinux_dumps(tc) -> dict[str, str]:
    out = {}
    for series in ("6.12", "6.1"):
        rc, text, err = bpftool(tc, str(tc.kernel_dir(series) / "vmlinux.btf"))
        assert rc == 0, err
        out[series] = text
    return out


@pytest.mark.parametrize(("built_for", "target"), PAIRS)
def test_merged_file_dumps_as_vmlinux_then_the_relocated_module(
        tc, vmlinux_dumps, built_for, target, tmp_path: Path) -> None:
    vml = tc.kernel_dir(target) / "vmlinux.btf"
    verdicts = {}
    for mod in MODS:
        ko = tc.fixtures_dir(built_for) / f"{mod}.ko"
        merged = tmp_path / f"{mod}.merged.btf"
        rc = ctl(["reconcile", str(ko), "-o", str(merged), "--merged", "--vmlinux", str(vml)])
        theirs_rc, theirs, err = bpftool(tc, str(ko), "-B", str(vml))
        verdicts[mod] = rc
        if rc == 1:  # incompatible with that build: libbpf refuses to relocate it too
            assert theirs_rc != 0, f"{mod}: libbpf relocated what we call incompatible"
            assert not merged.exists()
            continue
        assert rc == 0 and theirs_rc == 0, err
        mrc, mine, merr = bpftool(tc, str(merged))
        assert mrc == 0, merr
        assert mine == vmlinux_dumps[target] + theirs, f"{mod} ({built_for} onto {target})"
    if built_for == target:
        assert set(verdicts.values()) == {0}, verdicts


def renumber(lines: list[str], first: int, shift: int) -> list[str]:
    def sub(m: re.Match[str]) -> str:
        v = int(m.group(2))
        return f"{m.group(1)}{v + shift if v >= first else v}"
    return [re.sub(r"(^\[|type_id=)(\d+)", sub, ln) for ln in lines]


@pytest.mark.parametrize("series", ["6.12", "6.1"])
def test_all_btf_of_every_fixture(tc, series: str, tmp_path: Path) -> None:
    vml_path = tc.kernel_dir(series) / "vmlinux.btf"
    target = VmlinuxIndex.load(str(vml_path))
    parts = []
    for mod in MODS:
        res = reconcile_module_file(str(tc.fixtures_dir(series) / f"{mod}.ko"), target)
        assert res.verdict is Verdict.OK and res.btf is not None, res.summary
        parts.append((mod, res.btf))
    all_btf = tmp_path / "all.btf"
    all_btf.write_bytes(merged_bytes(target.btf, parts))
    # libbpf 1.5 btf__parse: a standalone BTF with every module's types
    info = tc.oracle("info", str(all_btf))
    assert info.returncode == 0, info.stderr
    nv = target.btf.type_count
    n_mods = sum(len(Btf.parse(b, base=target.btf, validate=False)._offs) for _, b in parts)
    assert f"types={nv - 1 + n_mods} start_id=1 " in info.stdout
    rc, text, err = bpftool(tc, str(all_btf))
    assert rc == 0, err
    lines = text.splitlines()
    vml_lines = sum(1 for ln in lines if not ln.startswith("\t") and
                    int(ln[1:ln.index("]")]) < nv)
    first = nv
    records = _records(lines)
    for mod, btf in parts:
        own = tmp_path / f"{mod}.btf"
        own.write_bytes(merged_bytes(target.btf, [(mod, btf)]))
        orc, otext, oerr = bpftool(tc, str(own))
        assert orc == 0, oerr
        own_records = _records(otext.splitlines())
        count = len(Btf.parse(btf, base=target.btf, validate=False)._offs)
        mine = [ln for tid in range(nv, nv + count) for ln in own_records[tid]]
        got = [ln for tid in range(first, first + count) for ln in records[tid]]
        assert got == renumber(mine, nv, first - nv), mod
        first += count
    assert first == nv + n_mods and vml_lines == nv - 1


def _records(lines: list[str]) -> dict[int, list[str]]:
    """bpftool's raw dump lines grouped by type id (a type's line and its member lines)."""
    out: dict[int, list[str]] = {}
    cur: list[str] = []
    for ln in lines:
        if ln.startswith("["):
            cur = out.setdefault(int(ln[1:ln.index("]")]), [])
        cur.append(ln)
    return out
