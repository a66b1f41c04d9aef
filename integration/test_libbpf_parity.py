"""Parity with libbpf 1.5 (btf__distill_base, btf__relocate).

- fixtures (6.12 and 6.1 builds): our reconcile of each .ko == libbpf's btf__parse_split
  (which relocates .BTF.base on the way in); our distill of the plain build == libbpf's
  btf__distill_base, and == the .BTF.base pahole embedded.
- whole Debian trees (6.12, 6.1): for every module, our distilled base and new split BTF ==
  btf__distill_base output, and our reconcile of that == btf__relocate output, byte for byte.
- mutated vmlinux BTFs: same accept/reject as btf__relocate, same bytes when accepted, and our
  diagnostic names the type; plus the field check that catches a member moved at the same size.
(Parity with the kernel itself, /sys/kernel/btf/<module>, is judged in test_vm_kernels.py,
with the guests.)

libbpf runs in the trixie chroot through a small batch harness
(integration/libbpf_harness.py) so that vmlinux is parsed once per tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest
import toolchain
from libbpf_harness import build, parse_status

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.kinds import Kind
from btfreconciled.btf.load import parse_btf
from btfreconciled.btf.types import Enum64, Int, Member, Struct
from btfreconciled.elf import read_btf_sections
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.reconcile import (
    EMBEDDED_LIBBPF_1_5,
    Verdict,
    VmlinuxIndex,
    distill,
    load_module,
    reconcile_module_file,
    relocate,
)
from btfreconciled.reconcile.fields import FIELDS_EMBEDDED, build_expects
from btfreconciled.reconcile.relocate import embedded_ids

pytestmark = pytest.mark.chroot
MODS = toolchain.FIXTURE_MODULES
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@pytest.fixture(scope="session")
def harness(tc) -> Path:
    return build(lambda argv: tc.run_in_chroot(list(argv)),
                 tc.cache_root() / "build" / "harness")


def run_harness(tc, exe: Path, mode: str, vmlinux: Path, lines: list[str], work: Path,
                extra: str) -> dict[str, tuple[str, ...]]:
    lst = work / f"{mode}.list"
    lst.write_text("".join(f"{ln}\n" for ln in lines))
    p = tc.run_in_chroot([str(exe), mode, str(vmlinux), str(lst), extra])
    assert p.returncode == 0, p.stderr
    return parse_status(p.stdout)


# ----------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("series", ["6.12", "6.1"])
@pytest.mark.parametrize("mod", MODS)
def test_fixture_reconcile_equals_libbpf_parse_split(tc, series, mod, tmp_path):
    ko = tc.fixtures_dir(series) / f"{mod}.ko"
    vmlinux = tc.kernel_dir(series) / "vmlinux.btf"
    out = tmp_path / "libbpf.btf"
    res = tc.oracle("parse-split", str(ko), str(vmlinux), str(out))
    assert res.returncode == 0, res.stderr
    ours = reconcile_module_file(str(ko), VmlinuxIndex.load(str(vmlinux)))
    assert ours.verdict is Verdict.OK, ours.summary
    assert ours.btf == out.read_bytes()


@pytest.mark.parametrize("series", ["6.12", "6.1"])
@pytest.mark.parametrize("mod", MODS)
def test_fixture_distill_equals_libbpf_and_pahole(tc, harness, series, mod, tmp_path):
    plain = tc.fixtures_dir(series) / "plain" / f"{mod}.ko"
    vmlinux = tc.kernel_dir(series) / "vmlinux.btf"
    raw = tmp_path / f"{mod}.btf"
    raw.write_bytes(read_btf_sections(plain).btf or b"")
    status = run_harness(tc, harness, "distill", vmlinux, [f"{mod}\t{raw}"], tmp_path,
                         str(tmp_path))
    assert status[mod] == ("ok",), status
    target = VmlinuxIndex.load(str(vmlinux))
    src = parse_btf(raw.read_bytes(), base=target.btf)
    res = distill(src)
    assert res.base.to_bytes() == (tmp_path / f"{mod}.base").read_bytes()
    assert res.split.to_bytes() == (tmp_path / f"{mod}.split").read_bytes()
    rel = relocate(res.split, target, embedded_rule=EMBEDDED_LIBBPF_1_5)
    assert rel.ok and rel.data == (tmp_path / f"{mod}.rel").read_bytes()
    # pahole --btf_features=distilled_base embedded the same distilled base
    pahole_base = read_btf_sections(tc.fixtures_dir(series) / f"{mod}.ko").base
    assert res.base.to_bytes() == pahole_base


# ----------------------------------------------------------------------------- trees
_st: dict = {}


def _init(vmlinux: str, work: str) -> None:
    _st["target"] = VmlinuxIndex.load(vmlinux)
    _st["work"] = work


def _ours(job: tuple[int, str]) -> tuple[int, str, str | None, tuple[str, str, str] | str]:
    i, path = job
    target: VmlinuxIndex = _st["target"]
    try:
        data = read_btf_sections(path).btf
        if data is None:
            return i, path, None, "no .BTF"
        raw = os.path.join(_st["work"], f"m{i}.btf")
        with open(raw, "wb") as f:
            f.write(data)
        src = parse_btf(data, base=target.btf, validate=False)
        res = distill(src)
        rel = relocate(res.split, target, embedded_rule=EMBEDDED_LIBBPF_1_5, diagnose=False)
        digest = [hashlib.sha256(res.base.to_bytes()).hexdigest(),
                  hashlib.sha256(res.split.to_bytes()).hexdigest(),
                  hashlib.sha256(rel.data).hexdigest() if rel.data else "rejected"]
        return i, path, raw, (digest[0], digest[1], digest[2])
    except Exception as exc:  # noqa: BLE001
        return i, path, None, f"{type(exc).__name__}: {exc}"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"


@pytest.mark.parametrize("series", ["6.12", "6.1"])
def test_whole_tree_distill_and_relocate_equal_libbpf(tc, harness, series, tmp_path):
    kdir = tc.kernel_dir(series)
    mods = sorted(os.path.join(d, f) for d, _, fs in os.walk(kdir / "lib" / "modules")
                  for f in fs if f.endswith(SUFFIXES))
    vmlinux = kdir / "vmlinux.btf"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=_init, initargs=(str(vmlinux), str(tmp_path))) as pool:
        ours = pool.map(_ours, list(enumerate(mods)), chunksize=16)
    errors = [(p, r) for _, p, raw, r in ours if raw is None and r != "no .BTF"]
    assert not errors, errors[:10]
    todo = [(i, p, r) for i, p, raw, r in ours if raw is not None]
    status = run_harness(tc, harness, "distill", vmlinux,
                         [f"m{i}\t{tmp_path / f'm{i}.btf'}" for i, _, _ in todo], tmp_path,
                         str(tmp_path))
    bad = []
    for i, p, r in todo:
        st = status.get(f"m{i}")
        got = (_sha(tmp_path / f"m{i}.base"), _sha(tmp_path / f"m{i}.split"),
               _sha(tmp_path / f"m{i}.rel") if st == ("ok",) else "rejected")
        if got != r:
            bad.append((p, st, got, r))
    print(f"\n{series}: {len(todo)} modules: distilled base, split and relocated BTF"
          f" byte-identical to libbpf 1.5 for {len(todo) - len(bad)}")
    assert len(todo) > 3000
    assert not bad, bad[:5]


# ----------------------------------------------------------------------------- mutations
def _vmlinux(tc) -> Btf:
    return Btf.parse((tc.kernel_dir("6.12") / "vmlinux.btf").read_bytes(), validate=False)


def _one(btf: Btf, name: str, kind: Kind) -> int:
    ids = btf.find(name, kind)
    assert len(ids) == 1, (name, ids)
    return ids[0]


def mutate_grow(btf: Btf, name: str, by: int = 8) -> None:
    tid = _one(btf, name, Kind.STRUCT)
    t = btf.type(tid)
    btf.replace(tid, dataclasses.replace(t, size=t.size + by))


def mutate_rename(btf: Btf, name: str) -> None:
    tid = _one(btf, name, Kind.STRUCT)
    btf.replace(tid, dataclasses.replace(btf.type(tid), name_off=btf.add_str(name + "_v2")))


def mutate_duplicate(btf: Btf, name: str) -> None:
    t = btf.type(_one(btf, name, Kind.STRUCT))
    btf.add(Struct(t.name_off, t.kind_flag, t.size, t.members))


def mutate_int_encoding(btf: Btf, name: str) -> None:
    tid = _one(btf, name, Kind.INT)
    t = btf.type(tid)
    assert isinstance(t, Int)
    btf.replace(tid, dataclasses.replace(t, encoding=t.encoding ^ 1))


def mutate_enum64(btf: Btf, name: str, size: int | None = None) -> None:
    tid = _one(btf, name, Kind.ENUM)
    t = btf.type(tid)
    btf.replace(tid, Enum64(t.name_off, t.kind_flag, size or t.size, t.values))


def mutate_move_member(btf: Btf, name: str, a: str, b: str) -> None:
    """Swap the offsets of members a and b (same struct size)."""
    tid = _one(btf, name, Kind.STRUCT)
    t = btf.type(tid)
    off = {btf.name_of(m.name_off): m.offset for m in t.members}
    members = tuple(Member(m.name_off, m.type, off[b] if btf.name_of(m.name_off) == a else
                           off[a] if btf.name_of(m.name_off) == b else m.offset)
                    for m in t.members)
    btf.replace(tid, dataclasses.replace(t, members=members))


# (case id, mutation, module, libbpf expected to accept?, name our diagnostic must contain)
MUTATIONS = [
    ("grow-embedded", lambda b: mutate_grow(b, "work_struct"), "btfr_embed", False,
     "struct work_struct"),
    ("grow-pointed-to", lambda b: mutate_grow(b, "task_struct"), "btfr_ptr", True, None),
    ("rename", lambda b: mutate_rename(b, "work_struct"), "btfr_embed", False,
     "struct work_struct"),
    ("two-same-size", lambda b: mutate_duplicate(b, "work_struct"), "btfr_embed", False,
     "struct work_struct"),
    ("two-same-size-pointed-to", lambda b: mutate_duplicate(b, "task_struct"), "btfr_ptr",
     False, "struct task_struct"),
    ("int-encoding", lambda b: mutate_int_encoding(b, "int"), "btfr_embed", False, "int"),
    ("enum-to-enum64", lambda b: mutate_enum64(b, "hrtimer_restart"), "btfr_types", True, None),
    ("enum-to-enum64-wider", lambda b: mutate_enum64(b, "hrtimer_restart", 8), "btfr_types",
     False, "enum hrtimer_restart"),
    ("member-moved-same-size",
     lambda b: mutate_move_member(b, "work_struct", "entry", "func"), "btfr_embed", True, None),
]


@pytest.fixture(scope="module")
def mutated(tc, tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("mutated")
    out = {}
    for case, fn, *_ in MUTATIONS:
        btf = _vmlinux(tc)
        fn(btf)
        p = work / f"{case}.vmlinux.btf"
        p.write_bytes(btf.to_bytes())
        out[case] = p
    return out


@pytest.mark.parametrize("case,mod,libbpf_accepts,names",
                         [(c, m, a, n) for c, _, m, a, n in MUTATIONS])
def test_mutated_vmlinux_same_verdict_as_libbpf(tc, harness, mutated, tmp_path, case, mod,
                                                 libbpf_accepts, names):
    ko = tc.fixtures_dir("6.12") / f"{mod}.ko"
    sec = read_btf_sections(ko)
    (tmp_path / "d.btf").write_bytes(sec.base or b"")
    (tmp_path / "s.btf").write_bytes(sec.btf or b"")
    status = run_harness(tc, harness, "relocate", mutated[case],
                         [f"{mod}\t{tmp_path / 'd.btf'}\t{tmp_path / 's.btf'}"], tmp_path,
                         str(tmp_path))
    assert (status[mod] == ("ok",)) == libbpf_accepts, status
    target = VmlinuxIndex.load(str(mutated[case]), validate=False)
    loaded = load_module(ko)
    assert loaded is not None
    ours = relocate(loaded.split, target, embedded_rule=EMBEDDED_LIBBPF_1_5, module=mod)
    assert ours.ok == libbpf_accepts, [p.summary for p in ours.problems]
    if libbpf_accepts:
        assert ours.data == (tmp_path / f"{mod}.rel").read_bytes()
    else:
        assert any(names in p.summary for p in ours.problems), \
            [p.summary for p in ours.problems]
        print(f"\n{case}: {ours.problems[0].text()}")
    # the daemon's entry point agrees (kernel rule; no field records in these fixtures)
    res = reconcile_module_file(str(ko), target)
    assert (res.verdict is Verdict.OK) == libbpf_accepts


def test_libbpf_15_embedded_scan_quirk_confirmed(tc, harness, mutated, tmp_path):
    """libbpf 1.5.0 only marks embedded structs among split ids < nr_split_types (fixed
    upstream by 5ca681a86ef9 and in Linux 6.12.y). A module with fewer split types than
    distilled ones embedding a struct that grew: libbpf 1.5 accepts it, the fixed rule (and
    the running 6.12 kernel) rejects it. EMBEDDED_LIBBPF_1_5 reproduces the former."""
    dist = Btf()
    dist.add(Int(dist.add_str("int"), 0, 4, 1, 0, 32))
    dist.add(Int(dist.add_str("unsigned int"), 0, 4, 0, 0, 32))
    dist.add(Int(dist.add_str("long unsigned int"), 0, 8, 0, 0, 64))
    dist.add(Int(dist.add_str("long long unsigned int"), 0, 8, 0, 0, 64))
    ws = dist.add(Struct(dist.add_str("work_struct"), 0, 32, ()))
    dist = Btf.parse(dist.to_bytes(), validate=False)
    split = Btf(dist)
    split.add(Struct(split.add_str("holder"), 0, 32, (Member(split.add_str("w"), ws, 0),)))
    (tmp_path / "d.btf").write_bytes(dist.to_bytes())
    (tmp_path / "s.btf").write_bytes(split.to_bytes())
    split = Btf.parse(split.to_bytes(), base=dist, validate=False)
    status = run_harness(tc, harness, "relocate", mutated["grow-embedded"],
                         [f"q\t{tmp_path / 'd.btf'}\t{tmp_path / 's.btf'}"], tmp_path,
                         str(tmp_path))
    assert status["q"] == ("ok",), status
    target = VmlinuxIndex.load(str(mutated["grow-embedded"]), validate=False)
    ours = relocate(split, target, embedded_rule=EMBEDDED_LIBBPF_1_5)
    assert ours.ok and ours.data == (tmp_path / "q.rel").read_bytes()
    fixed = relocate(split, target)
    assert not fixed.ok and "struct work_struct" in fixed.problems[0].summary


def test_field_check_catches_member_moved_at_same_size(tc, mutated, tmp_path):
    """work_struct.entry and .func swap places, size stays 32: the kernel and libbpf accept
    (size-only rule), our field check rejects a module that recorded the layout."""
    plain = tc.fixtures_dir("6.12") / "plain" / "btfr_embed.ko"
    target = VmlinuxIndex.load(str(tc.kernel_dir("6.12") / "vmlinux.btf"))
    src = parse_btf(read_btf_sections(plain).btf or b"", base=target.btf)
    res = distill(src)
    emb, _ = embedded_ids(res.split)
    back = {new: old for old, new in res.id_map.items()}
    expects = build_expects(src, res, {back[d] for d in emb}, FIELDS_EMBEDDED)
    ko = tmp_path / "btfr_embed.ko"
    write_btf_sections(plain, ko, {".BTF": res.split.to_bytes(), ".BTF.base": res.base.to_bytes(),
                                   ".BTF.base_expects": expects})
    # unchanged kernel: compatible, no warnings
    ok = reconcile_module_file(str(ko), target)
    assert ok.verdict is Verdict.OK and not ok.diagnostics, ok.diagnostics
    moved = VmlinuxIndex.load(str(mutated["member-moved-same-size"]), validate=False)
    bad = reconcile_module_file(str(ko), moved)
    assert bad.verdict is Verdict.INCOMPATIBLE, bad.summary
    field = [d for d in bad.diagnostics if d["code"] == "field"]
    assert field and "struct work_struct" in field[0]["summary"]
    members = {m["member"]: m for m in field[0]["members"]}
    assert members["func"]["old_offset"] == 192 and members["func"]["new_offset"] == 64
    assert members["entry"]["old_offset"] == 64 and members["entry"]["new_offset"] == 192
    print("\n" + bad.summary)
    # policy off: reported as a warning, BTF still produced
    off = reconcile_module_file(str(ko), moved, strict="off")
    assert off.verdict is Verdict.OK and off.btf is not None
    assert off.diagnostics and off.diagnostics[0]["severity"] == "warning"
