"""`btfreconcilectl min-core-btf` on the real fixtures, against bpftool 7.5 and 7.8.

For modread.bpf.o (examples/modread: a kprobe reading btfr_loader_state.counter, and
pt_regs through BPF_KPROBE) on 6.1, 6.12 and 7.2: our minimized BTF from vmlinux + the
btfr_loader fixture equals what `bpftool gen min_core_btf` writes from the merged file of the
same two (bpftool 7.5 in the trixie root, 7.8 in the sid root), byte for byte. The same with
integration/bpf/core_kinds.bpf.o (every relocation kind, compiled here with clang) added.

The conflict fixtures (integration/conflict: btfr_dup_a and btfr_dup_b both define `struct
btfr_dup`, x at byte 0 and at byte 20; dupread.bpf.o reads btfr_dup.x): with a BTF holding
both modules (all.btf) libbpf finds two candidates and fails with its own "field offset
ambiguity" (through bpftool, which resolves relocations with libbpf's relo_core.c), and so
does min-core-btf given both (exit 1, one line, no file); with one module's merged file
libbpf resolves x to that module's offset, and min-core-btf given that module writes the
same bytes, never the other module's layout.

No VM: bpftool runs in the chroots. Sizes are printed (run with -s to see them).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from btfreconciled.cli.main import main as ctl
from btfreconciled.reconcile import Verdict, VmlinuxIndex, reconcile_module_file
from btfreconciled.reconcile.merge import merged_bytes

pytestmark = pytest.mark.chroot

SERIES = ("6.1", "6.12", "7.2")
# (version, sid root, the BTF header it writes): bpftool 7.8 (libbpf 1.7) writes Linux 7.x's
# 32-byte header (layout_off = layout_len = 0), 7.5 the 24-byte one; the rest is the same,
# and min-core-btf writes either (--header-size).
BPFTOOLS = (("7.5", False, 24), ("7.8", True, 32))
DUP_X_BYTE = {"btfr_dup_a": 0, "btfr_dup_b": 20}


def bpftool(tc, *args: str, sid: bool) -> subprocess.CompletedProcess:
    return tc.run_in_chroot(["bpftool", *args], sid=sid)


@pytest.fixture(scope="module")
def bpftool_versions(tc) -> None:
    """Each root's bpftool is there and is the version this file compares with."""
    for version, sid, _hdr in BPFTOOLS:
        res = bpftool(tc, "version", sid=sid)
        if res.returncode != 0:
            pytest.fail(f"bpftool missing in the {'sid' if sid else 'trixie'} root: "
                        f"{res.stderr.strip()} (run vm/setup)")
        if not res.stdout.startswith(f"bpftool v{version}"):
            pytest.fail(f"expected bpftool {version}, the root has: {res.stdout.splitlines()[0]}")


def modread_obj(tc) -> Path:
    obj = tc.modread_binary().parent / "modread.bpf.o"
    if not obj.is_file():
        pytest.fail(f"{obj} missing: vm/setup's examples step builds it")
    return obj


def min_of(tc, merged: Path, out: Path, obj: Path, sid: bool) -> subprocess.CompletedProcess:
    return bpftool(tc, "gen", "min_core_btf", str(merged), str(out), str(obj), sid=sid)


def raw_dump(tc, path: Path) -> str:
    res = bpftool(tc, "btf", "dump", "file", str(path), "format", "raw", sid=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def member_offset(dump: str, struct: str, member: str) -> int:
    """bits_offset of `struct`.`member` in a raw dump (exactly one such struct)."""
    blocks = re.findall(rf"^\[\d+\] STRUCT '{struct}' size=\d+ vlen=\d+\n((?:\t.*\n)*)",
                        dump, re.M)
    assert len(blocks) == 1, f"{len(blocks)} STRUCT {struct} in the dump"
    m = re.search(rf"^\t'{member}' type_id=\d+ bits_offset=(\d+)", blocks[0], re.M)
    assert m, f"{struct}.{member} not in the dump"
    return int(m.group(1))


@pytest.mark.parametrize("series", SERIES)
def test_modread_minimized_equals_bpftool_75_and_78(tc, bpftool_versions, series: str,
                                                    tmp_path: Path) -> None:
    obj = modread_obj(tc)
    vml = tc.kernel_dir(series) / "vmlinux.btf"
    ko = tc.fixtures_dir(series) / "btfr_loader.ko"
    merged = tmp_path / "btfr_loader.merged.btf"
    assert ctl(["reconcile", str(ko), "--merged", "-o", str(merged), "--vmlinux", str(vml)]) == 0
    for version, sid, hdr in BPFTOOLS:
        ours = tmp_path / f"min.{hdr}.btf"
        assert ctl(["min-core-btf", str(obj), "-o", str(ours), "--vmlinux", str(vml),
                    "--module", str(ko), "--header-size", str(hdr)]) == 0
        ref = tmp_path / f"min.bpftool-{version}.btf"
        res = min_of(tc, merged, ref, obj, sid)
        assert res.returncode == 0, f"bpftool {version}: {res.stderr}"
        assert ref.read_bytes() == ours.read_bytes(), f"{series}: differs from bpftool {version}"
    ours = tmp_path / "min.24.btf"
    data = ours.read_bytes()
    small, full = raw_dump(tc, ours), raw_dump(tc, merged)
    for struct, member in (("btfr_loader_state", "counter"), ("pt_regs", "di")):
        assert member_offset(small, struct, member) == member_offset(full, struct, member)
    print(f"\nmin-core-btf {series}: modread.bpf.o: minimized {len(data)} bytes, "
          f"merged vmlinux+btfr_loader {merged.stat().st_size} bytes; equal to bpftool 7.5 "
          "and 7.8")


@pytest.fixture(scope="module")
def core_kinds(tc, tmp_path_factory) -> Path:
    """integration/bpf/core_kinds.bpf.c (every relocation kind, as clang writes them),
    compiled in the trixie root against the vmlinux.h the examples step made."""
    out = tmp_path_factory.mktemp("core_kinds") / "core_kinds.bpf.o"
    src = Path(__file__).resolve().parent / "bpf" / "core_kinds.bpf.c"
    res = tc.run_in_chroot(["clang", "-g", "-O2", "-Wall", "-Werror", "--target=bpf",
                            "-D__TARGET_ARCH_x86", f"-I{tc.modread_binary().parent}", "-c",
                            str(src), "-o", str(out)])
    if res.returncode != 0 or not out.is_file():
        pytest.fail(f"clang in the trixie root failed on {src}: {res.stderr}")
    return out


@pytest.mark.parametrize("series", SERIES)
def test_every_relocation_kind_from_clang_equals_bpftool(tc, bpftool_versions, core_kinds,
                                                         series: str, tmp_path: Path) -> None:
    """core_kinds.bpf.o and modread.bpf.o together: many relocation kinds, two objects,
    types from vmlinux and the module; some relocations match nothing on some kernels."""
    objs = [str(core_kinds), str(modread_obj(tc))]
    vml = tc.kernel_dir(series) / "vmlinux.btf"
    ko = tc.fixtures_dir(series) / "btfr_loader.ko"
    merged = tmp_path / "merged.btf"
    assert ctl(["reconcile", str(ko), "--merged", "-o", str(merged), "--vmlinux", str(vml)]) == 0
    for version, sid, hdr in BPFTOOLS:
        ours = tmp_path / f"min.{hdr}.btf"
        assert ctl(["min-core-btf", *objs, "-o", str(ours), "--vmlinux", str(vml),
                    "--module", str(ko), "--header-size", str(hdr)]) == 0
        ref = tmp_path / f"min.bpftool-{version}.btf"
        res = bpftool(tc, "gen", "min_core_btf", str(merged), str(ref), *objs, sid=sid)
        assert res.returncode == 0, f"bpftool {version}: {res.stderr}"
        assert ref.read_bytes() == ours.read_bytes(), f"{series}: differs from bpftool {version}"
    print(f"\nmin-core-btf {series}: core_kinds.bpf.o + modread.bpf.o: "
          f"{(tmp_path / 'min.24.btf').stat().st_size} bytes; equal to bpftool 7.5 and 7.8")


@pytest.fixture(scope="module")
def conflict(tc, tmp_path_factory) -> dict[str, Path]:
    """all.btf (vmlinux + both modules), each module's merged file, and dupread.bpf.o."""
    d = tc.conflict_dir("6.12")
    files = {"obj": d / "dupread.bpf.o", "vmlinux": tc.kernel_dir("6.12") / "vmlinux.btf"}
    for name in DUP_X_BYTE:
        files[name] = d / f"{name}.ko"
    for p in files.values():
        if not p.is_file():
            pytest.fail(f"{p} missing: vm/setup's conflict-6.12 step builds it")
    out = tmp_path_factory.mktemp("conflict")
    target = VmlinuxIndex.load(str(files["vmlinux"]))
    parts = []
    for name in DUP_X_BYTE:
        res = reconcile_module_file(str(files[name]), target)
        assert res.verdict is Verdict.OK and res.btf is not None, res.summary
        parts.append((name, res.btf))
        own = out / f"{name}.merged.btf"
        own.write_bytes(merged_bytes(target.btf, [(name, res.btf)]))
        files[f"{name}.merged"] = own
    files["all"] = out / "all.btf"
    files["all"].write_bytes(merged_bytes(target.btf, parts))
    return files


@pytest.mark.parametrize(("version", "sid", "hdr"), BPFTOOLS)
def test_all_btf_is_libbpfs_field_offset_ambiguity(tc, bpftool_versions, conflict, version,
                                                   sid, hdr, tmp_path: Path) -> None:
    out = tmp_path / "min.btf"
    res = min_of(tc, conflict["all"], out, conflict["obj"], sid)
    assert res.returncode != 0 and not out.exists()
    line = next((ln for ln in res.stderr.splitlines() if "ambiguity" in ln), "")
    # x at byte 20 (bit 160) in btfr_dup_b, byte 0 in btfr_dup_a: libbpf's own words
    assert re.search(r"relo #\d+: field offset ambiguity: (160 != 0|0 != 160)$", line), \
        res.stderr
    print(f"\nbpftool {version} on all.btf: {line.strip()}")


def test_min_core_btf_refuses_both_modules(conflict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "min.btf"
    rc = ctl(["min-core-btf", str(conflict["obj"]), "-o", str(out),
              "--vmlinux", str(conflict["vmlinux"]),
              "--module", str(conflict["btfr_dup_a"]), "--module", str(conflict["btfr_dup_b"])])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1, err
    assert "struct btfr_dup" in err and "btfr_dup_a" in err and "btfr_dup_b" in err
    assert "field offset ambiguity" in err
    print(f"\n{err.strip()}")


@pytest.mark.parametrize("module", sorted(DUP_X_BYTE))
def test_one_module_resolves_to_its_own_layout(tc, bpftool_versions, conflict, module: str,
                                              tmp_path: Path) -> None:
    want = 8 * DUP_X_BYTE[module]
    assert member_offset(raw_dump(tc, conflict[f"{module}.merged"]), "btfr_dup", "x") == want
    for version, sid, hdr in BPFTOOLS:
        ours = tmp_path / f"min.{hdr}.btf"
        assert ctl(["min-core-btf", str(conflict["obj"]), "-o", str(ours),
                    "--vmlinux", str(conflict["vmlinux"]), "--module", str(conflict[module]),
                    "--header-size", str(hdr)]) == 0
        assert member_offset(raw_dump(tc, ours), "btfr_dup", "x") == want  # never the other's
        ref = tmp_path / f"min.bpftool-{version}.btf"
        res = min_of(tc, conflict[f"{module}.merged"], ref, conflict["obj"], sid)
        assert res.returncode == 0, f"bpftool {version}: {res.stderr}"
        assert ref.read_bytes() == ours.read_bytes(), f"{module}: differs from bpftool {version}"
    size = (tmp_path / "min.24.btf").stat().st_size
    print(f"\nmin-core-btf dupread.bpf.o with {module}: x at byte {DUP_X_BYTE[module]}, "
          f"{size} bytes (merged {conflict[f'{module}.merged'].stat().st_size})")
