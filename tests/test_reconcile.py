"""Reconciliation rules on small hand-built BTF (no toolchain needed).

Every matching rule of btf_relocate.c, every rejection, id/string renumbering, the
libbpf-1.5 embedded-scan quirk, the lane-wise rewrite against the plain loop, field checks,
and reconcile_module_file / the CLI on real (gcc-made) ELF files.
"""

from __future__ import annotations

import json
import subprocess
from array import array
from dataclasses import replace
from pathlib import Path

import pytest
from split_compare import compare_split

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.kinds import Kind
from btfreconciled.btf.record import MODS_AND_TYPEDEF
from btfreconciled.btf.types import (
    Array,
    Const,
    Enum,
    Enum64,
    EnumValue,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Member,
    Param,
    Ptr,
    Struct,
    Typedef,
    Union,
)
from btfreconciled.cli.main import main as ctl
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.reconcile import (
    EMBEDDED_KERNEL,
    EMBEDDED_LIBBPF_1_5,
    Verdict,
    VmlinuxIndex,
    distill,
    reconcile_module_file,
    relocate,
)
from btfreconciled.reconcile.fields import FIELDS_ALL, FIELDS_EMBEDDED, build_expects
from btfreconciled.reconcile.relocate import _MAX_PATHS as MAX_PATHS
from btfreconciled.reconcile.relocate import (
    PreparedSplit,
    _embedded,
    _rewrite,
    embedded_ids,
)
from btfreconciled.reconcile.wire import id_slots, record_offsets, str_slots

SIGNED = 1


def reparse(b: Btf, base: Btf | None = None) -> Btf:
    return Btf.parse(b.to_bytes(), base=base, validate=False)


def target_of(b: Btf) -> VmlinuxIndex:
    return VmlinuxIndex(reparse(b))


def dist_and_split(dist_types, split_types) -> tuple[Btf, Btf]:
    """A distilled base from `dist_types(btf) -> None` and split types from
    `split_types(split_btf) -> None` (both callables adding types)."""
    d = Btf()
    dist_types(d)
    d = reparse(d)
    s = Btf(d)
    split_types(s)
    return d, reparse(s, d)


def vmlinux(*adders) -> Btf:
    b = Btf()
    b.add(Int(b.add_str("int"), 0, 4, SIGNED, 0, 32))  # [1]
    b.add(Int(b.add_str("long unsigned int"), 0, 8, 0, 0, 64))  # [2]
    b.add(Struct(b.add_str("list_head"), 0, 16, (
        Member(b.add_str("next"), 4, 0), Member(b.add_str("prev"), 4, 64))))  # [3]
    b.add(Ptr(0, 0, 3))  # [4] struct list_head *
    b.add(Struct(b.add_str("work_struct"), 0, 32, (
        Member(b.add_str("data"), 2, 0), Member(b.add_str("entry"), 3, 64),
        Member(b.add_str("func"), 7, 192))))  # [5]
    b.add(FuncProto(0, 0, 0, (Param(b.add_str("w"), 7),)))  # [6] void (*)(struct work_struct *)
    b.add(Ptr(0, 0, 5))  # [7]
    b.add(Struct(b.add_str("task_struct"), 0, 9792, ()))  # [8]
    b.add(Typedef(b.add_str("u32"), 0, 10))  # [9] -> [10]
    b.add(Int(b.add_str("unsigned int"), 0, 4, 0, 0, 32))  # [10]
    b.add(Enum(b.add_str("color"), 0, 4, (EnumValue(b.add_str("RED"), 0),)))  # [11]
    b.add(Float(b.add_str("double"), 0, 8))  # [12]
    b.add(Func(b.add_str("schedule"), 0, 6, 1))  # [13]
    for add in adders:
        add(b)
    return b


def module(base: Btf) -> Btf:
    """A module on `base`: embeds list_head and work_struct, points at task_struct, uses
    int, u32 (typedef), color, double, and an anonymous base-free struct."""
    s = Btf(base)
    n = base.type_count
    s.add(Struct(s.add_str("my_dev"), 0, 80, (
        Member(s.add_str("node"), 3, 0),
        Member(s.add_str("work"), 5, 128),
        Member(s.add_str("owner"), n + 1, 384),
        Member(s.add_str("count"), 1, 448),
        Member(s.add_str("flags"), 9, 480),
        Member(s.add_str("hue"), 11, 512),
        Member(s.add_str("ratio"), 12, 576))))  # [n]
    s.add(Ptr(0, 0, 8))  # [n+1] struct task_struct *
    s.add(Ptr(0, 0, n))  # [n+2]
    s.add(FuncProto(0, 0, 1, (Param(s.add_str("dev"), n + 2),)))  # [n+3]
    s.add(Func(s.add_str("my_probe"), 0, n + 3, 1))  # [n+4]
    return reparse(s, base)


@pytest.fixture(scope="module")
def built() -> tuple[Btf, Btf]:
    base = reparse(vmlinux())
    return base, module(base)


def distilled(built) -> tuple[Btf, Btf]:
    _base, mod = built
    res = distill(mod)
    return res.base, res.split


# ----------------------------------------------------------------------------- distill
def test_distill_puts_named_types_in_base_and_copies_the_rest(built):
    dbase, dsplit = distilled(built)
    names = [(t.kind.name, dbase.name_of(t.name_off)) for _, t in dbase]
    # base-id order; named structs sized with vlen 0; typedef u32 and the PTR go to split
    assert names == [("INT", "int"), ("STRUCT", "list_head"), ("STRUCT", "work_struct"),
                     ("STRUCT", "task_struct"), ("INT", "unsigned int"), ("ENUM", "color"),
                     ("FLOAT", "double")]
    assert all(getattr(t, "members", ()) == () for _, t in dbase)
    assert dbase.type(3).size == 32
    assert dbase.type(6).values == ()
    # split: 5 module types then the typedef u32 copied whole
    assert len(dsplit) == 6
    last = dsplit.type(dsplit.type_count - 1)
    assert isinstance(last, Typedef) and dsplit.name_of(last.name_off) == "u32"
    assert last.type == 5  # -> INT unsigned int in the distilled base


def test_distill_enum64_becomes_sized_enum_and_bad_kind_fails():
    base = Btf()
    e = base.add(Enum64(base.add_str("big"), 0, 8, (EnumValue(base.add_str("X"), 1 << 40),)))
    f = base.add(Func(base.add_str("f"), 0, 0, 0))
    base = reparse(base)
    s = Btf(base)
    s.add(Ptr(0, 0, e))
    res = distill(reparse(s, base))
    t = res.base.type(1)
    assert isinstance(t, Enum) and t.size == 8 and t.values == ()
    s2 = Btf(base)
    s2.add(Ptr(0, 0, f))
    with pytest.raises(ValueError, match="unexpected reference to base type"):
        distill(reparse(s2, base))


def test_distill_then_relocate_is_identity(built):
    base, mod = built
    res = distill(mod)
    rel = relocate(res.split, target_of(base))
    assert rel.ok
    back = Btf.parse(rel.data, base=base, validate=False)
    cmp = compare_split(mod, back)
    assert cmp.equivalent and cmp.copies == 1


def test_compare_split_notices_a_changed_type(built):
    base, mod = built
    res = distill(mod)
    rel = relocate(res.split, target_of(base))
    back = Btf.parse(rel.data, base=base, validate=False)
    n = base.type_count
    back.replace(n, replace(back.type(n), size=81))
    assert not compare_split(mod, reparse(back, base)).equivalent


# ----------------------------------------------------------------------------- matching
def test_ids_and_strings_are_renumbered_onto_the_target(built):
    base, mod = built
    dbase, dsplit = distilled(built)
    # a target with extra types in front: every id moves
    bigger = Btf()
    for i in range(5):
        bigger.add(Int(bigger.add_str(f"pad{i}"), 0, 4, 0, 0, 32))
    vm = vmlinux()
    for _tid, t in vm:
        t2 = t.with_refs([0] + [i + 5 for i in range(1, vm.type_count)])
        names = {f: bigger.add_str(vm.str_bytes(getattr(t, f))) for f in ("name_off",)}
        t2 = replace(t2, **names)
        if isinstance(t2, Struct):
            t2 = replace(t2, members=tuple(
                Member(bigger.add_str(vm.str_bytes(m.name_off)), m.type, m.offset)
                for m in t2.members))
        bigger.add(t2)
    target = target_of(bigger)
    rel = relocate(dsplit, target)
    assert rel.ok, [p.summary for p in rel.problems]
    out = Btf.parse(rel.data, base=target.btf, validate=False)
    assert out.start_id == target.type_count
    dev = out.type(out.start_id)
    assert out.name_of(dev.name_off) == "my_dev"
    assert [out.type_name(m.type) for m in dev.members[:2]] == ["list_head", "work_struct"]
    assert dev.members[0].type == 3 + 5
    assert rel.id_map[1] == 1 + 5  # int


def test_int_needs_same_encoding_and_size():
    d, s = dist_and_split(lambda b: b.add(Int(b.add_str("int"), 0, 4, SIGNED, 0, 32)),
                          lambda s: s.add(Ptr(0, 0, 1)))
    ok = target_of(vmlinux())
    assert relocate(s, ok).ok
    unsigned = vmlinux()
    unsigned.replace(1, Int(unsigned.type(1).name_off, 0, 4, 0, 0, 32))
    r = relocate(s, target_of(unsigned))
    assert not r.ok and r.problems[0].code == "unmapped"
    assert "encoding" in r.problems[0].summary and "int" in r.problems[0].summary
    wide = vmlinux()
    wide.replace(1, Int(wide.type(1).name_off, 0, 8, SIGNED, 0, 64))
    r = relocate(s, target_of(wide))
    assert not r.ok and r.problems[0].candidates[0].why_not == "size 8 != 4"


def test_float_needs_float():
    d, s = dist_and_split(lambda b: b.add(Float(b.add_str("double"), 0, 8)),
                          lambda s: s.add(Ptr(0, 0, 1)))
    assert relocate(s, target_of(vmlinux())).ok
    vm = vmlinux()
    vm.replace(12, Int(vm.type(12).name_off, 0, 8, 0, 0, 64))
    r = relocate(s, target_of(vm))
    assert not r.ok and "not a float" in r.problems[0].summary


def test_enum_matches_enum_or_enum64_of_the_same_size():
    d, s = dist_and_split(lambda b: b.add(Enum(b.add_str("color"), 0, 4, ())),
                          lambda s: s.add(Ptr(0, 0, 1)))
    assert relocate(s, target_of(vmlinux())).ok
    vm = vmlinux()
    vm.replace(11, Enum64(vm.type(11).name_off, 0, 4, ()))
    assert relocate(s, target_of(vm)).ok
    vm.replace(11, Enum64(vm.type(11).name_off, 0, 8, ()))
    r = relocate(s, target_of(vm))
    assert not r.ok and "enum color" in r.problems[0].summary


@pytest.mark.parametrize("dist_kflag,base,ok", [
    (0, lambda b: b.add(Fwd(b.add_str("thing"), 0)), True),
    (1, lambda b: b.add(Fwd(b.add_str("thing"), 0)), False),
    (0, lambda b: b.add(Struct(b.add_str("thing"), 0, 8, ())), True),
    # btf_relocate.c tests the *base* type's kind_flag (bitfield flag) here
    (0, lambda b: b.add(Struct(b.add_str("thing"), 1, 8, ())), False),
    (1, lambda b: b.add(Union(b.add_str("thing"), 1, 8, ())), True),
    (1, lambda b: b.add(Union(b.add_str("thing"), 0, 8, ())), False),
    (0, lambda b: b.add(Int(b.add_str("thing"), 0, 4, 0, 0, 32)), False),
])
def test_fwd_rules(dist_kflag, base, ok):
    d, s = dist_and_split(lambda b: b.add(Fwd(b.add_str("thing"), dist_kflag)),
                          lambda s: s.add(Ptr(0, 0, 1)))
    r = relocate(s, target_of(vmlinux(base)))
    assert r.ok == ok, [p.summary for p in r.problems]


def _struct_module(embed: str):
    """dist: STRUCT work_struct size 32; split: how the module uses it."""
    def split(s: Btf) -> None:
        n = s.start_id
        if embed == "value":
            s.add(Struct(s.add_str("o"), 0, 32, (Member(s.add_str("w"), 1, 0),)))
        elif embed == "typedef-array":
            s.add(Struct(s.add_str("o"), 0, 64, (Member(s.add_str("w"), n + 1, 0),)))
            s.add(Array(0, 0, n + 2, 0, 2))
            s.add(Const(0, 0, n + 3))
            s.add(Typedef(s.add_str("ws_t"), 0, 1))
        elif embed == "array-then-value":  # the member order libbpf reports paths in
            s.add(Struct(s.add_str("o"), 0, 96, (Member(s.add_str("ws"), n + 1, 0),
                                                 Member(s.add_str("w"), 1, 512))))
            s.add(Array(0, 0, 1, 0, 2))
        else:  # pointer
            s.add(Struct(s.add_str("o"), 0, 8, (Member(s.add_str("w"), n + 1, 0),)))
            s.add(Ptr(0, 0, 1))
    return dist_and_split(lambda b: b.add(Struct(b.add_str("work_struct"), 0, 32, ())), split)


@pytest.mark.parametrize("embed,ok", [("value", False), ("typedef-array", False),
                                      ("pointer", True)])
def test_struct_size_must_match_only_when_embedded(embed, ok):
    _d, s = _struct_module(embed)
    vm = vmlinux()
    vm.replace(5, replace(vm.type(5), size=40))
    r = relocate(s, target_of(vm))
    assert r.ok == ok
    if not ok:
        p = r.problems[0]
        assert p.embedded and p.paths and p.paths[0].startswith("struct o.w -> ")
        assert "struct work_struct (size 32)" in p.summary
        assert p.candidates[0].size == 40
        assert "embedded by value through" in p.text()


def test_same_named_structs_size_disambiguates_and_same_size_is_ambiguous():
    _d, s = _struct_module("pointer")
    other = vmlinux(lambda b: b.add(Struct(b.add_str("work_struct"), 0, 48, ())))
    r = relocate(s, target_of(other))
    assert r.ok and r.id_map[1] == 5
    twin = vmlinux(lambda b: b.add(Struct(b.add_str("work_struct"), 0, 32, ())))
    r = relocate(s, target_of(twin))
    assert not r.ok and r.problems[0].code == "ambiguous"
    assert {c.id for c in r.problems[0].candidates} == {5, 14}


def test_fwd_next_to_struct_depends_on_embedding_like_libbpf():
    """A base FWD and STRUCT of the same name: an embedded distilled struct skips the FWD
    (size 0 != 32) and maps to the struct; a pointed-to one maps to both: ambiguous."""
    fwd_first = Btf()
    fwd_first.add(Fwd(fwd_first.add_str("work_struct"), 0))
    fwd_first.add(Struct(fwd_first.add_str("work_struct"), 0, 32, ()))
    target = target_of(fwd_first)
    _d, emb = _struct_module("value")
    assert relocate(emb, target).ok
    _d, ptr = _struct_module("pointer")
    r = relocate(ptr, target)
    assert not r.ok and r.problems[0].code == "ambiguous"


def test_unmapped_type_names_module_type_and_candidates():
    _d, s = _struct_module("value")
    vm = vmlinux()
    vm.replace(5, replace(vm.type(5), name_off=vm.add_str("work_struct_v2")))
    r = relocate(s, target_of(vm), module="my_mod")
    assert not r.ok
    p = r.problems[0].to_dict()
    assert p["code"] == "unmapped" and p["expected"] == {
        "id": 1, "kind": "struct", "name": "work_struct", "size": 32}
    assert p["summary"].startswith("my_mod: struct work_struct")
    assert p["embedded"] is True and p["paths"] == ["struct o.w -> struct work_struct"]
    assert p["candidates"] == []
    json.dumps(p)


def test_typedef_of_the_same_name_is_listed_but_never_matched():
    d, s = dist_and_split(lambda b: b.add(Struct(b.add_str("u32"), 0, 4, ())),
                          lambda s: s.add(Ptr(0, 0, 1)))
    r = relocate(s, target_of(vmlinux()))
    assert not r.ok and r.problems[0].candidates[0].kind == "typedef"


@pytest.mark.parametrize("bad", [
    lambda b: b.add(Typedef(b.add_str("t"), 0, 0)),
    lambda b: b.add(Int(0, 0, 4, 0, 0, 32)),
    lambda b: b.add(Enum64(b.add_str("e"), 0, 8, ())),
])
def test_invalid_distilled_base(bad):
    _d, s = dist_and_split(bad, lambda s: s.add(Ptr(0, 0, 1)))
    r = relocate(s, target_of(vmlinux()))
    assert not r.ok and r.problems[0].code == "invalid-base"


def test_string_in_distilled_base_that_names_no_type_is_an_error():
    def dist(b: Btf) -> None:
        b.add(Int(b.add_str("int"), 0, 4, SIGNED, 0, 32))
        b.add_str("orphan")

    d, s = dist_and_split(dist, lambda s: s.add(Ptr(s.find_str("orphan"), 0, 1)))
    r = relocate(s, target_of(vmlinux()))
    assert not r.ok and r.problems[0].code == "unmapped-string"
    assert "orphan" in r.problems[0].summary


def test_libbpf_15_embedded_scan_quirk():
    """libbpf 1.5.0 marks embedded structs only among split ids < nr_split_types; with
    fewer split types than distilled ones it marks none and accepts a grown struct."""
    def dist(b: Btf) -> None:
        for i in range(4):
            b.add(Int(b.add_str(f"i{i}"), 0, 4, 0, 0, 32))
        b.add(Struct(b.add_str("work_struct"), 0, 32, ()))  # [5]

    def split(s: Btf) -> None:
        s.add(Struct(s.add_str("o"), 0, 32, (Member(s.add_str("w"), 5, 0),)))

    _d, s = dist_and_split(dist, split)
    vm = vmlinux(*[lambda b, i=i: b.add(Int(b.add_str(f"i{i}"), 0, 4, 0, 0, 32))
                   for i in range(4)])
    vm.replace(5, replace(vm.type(5), size=40))
    target = target_of(vm)
    assert not relocate(s, target, embedded_rule=EMBEDDED_KERNEL).ok
    assert relocate(s, target, embedded_rule=EMBEDDED_LIBBPF_1_5).ok


def test_plain_rewrite_equals_spelled_out_loop(built):
    base, mod = built
    # many records of every slot kind, values on both sides of the thresholds
    s = Btf(Btf.parse(distill(mod).base.to_bytes(), validate=False))
    n = s.start_id
    for i in range(300):
        s.add(Struct(s.add_str(f"s{i}") if i % 3 else 0, 0, 8, (
            Member(s.add_str("m") if i % 2 else 0, (i % (n + 5)), 0),
            Member(0, 0, 32))))
        s.add(Ptr(0, 0, i % n))
        s.add(FuncProto(0, 0, 0, (Param(s.add_str("p"), n + i),)))
    s = reparse(s, s.base)
    w = s.types_words()
    offs = record_offsets(w)
    dmap = [0, *range(101, 100 + n)]  # void stays void
    smap = {off: off + 7 for off in range(1, s.base.str_end)}
    b = array("I", w)
    for o in offs:  # the plain loop, spelled out
        for p in id_slots(b, o):
            b[p] = b[p] + 1000 if b[p] >= n else dmap[b[p]]
        for p in str_slots(b, o):
            v = b[p]
            if v:
                b[p] = v + 5000 if v >= s.base.str_end else smap[v]
    c = array("I", w)
    assert _rewrite(c, offs, n, 1000, dmap, s.base.str_end, 5000, smap) is None and c == b


# ----------------------------------------------------------------------------- fields
def _with_expects(built, mode=FIELDS_EMBEDDED) -> tuple[Btf, Btf, Btf]:
    base, mod = built
    res = distill(mod)
    emb, paths = embedded_ids(res.split)
    back = {new: old for old, new in res.id_map.items()}
    assert {res.base.type_name(d) for d in emb} == {"list_head", "work_struct"}
    exp = Btf.parse(build_expects(mod, res, {back[d] for d in emb}, mode), validate=False)
    return res.base, res.split, exp


def test_expects_prefix_is_the_distilled_base(built):
    dbase, _split, exp = _with_expects(built)
    for tid, t in dbase:
        e = exp.type(tid)
        assert (e.kind, exp.name_of(e.name_off)) == (t.kind, dbase.name_of(t.name_off))
    ws = exp.type(3)
    assert [exp.name_of(m.name_off) for m in ws.members] == ["data", "entry", "func"]
    assert [m.offset for m in ws.members] == [0, 64, 192]
    assert exp.type(4).members == ()  # task_struct: pointed to, not recorded
    _b, _s, exp_all = _with_expects(built, FIELDS_ALL)
    assert exp_all.type(4).members == () and exp_all.type(3).members


def _elf(tmp_path: Path) -> Path:
    src = tmp_path / "m.c"
    src.write_text("int btfr_dummy;\n")
    obj = tmp_path / "plain.ko"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    return obj


def _module_file(tmp_path: Path, built, *, expects: bool = True) -> Path:
    dbase, dsplit, exp = _with_expects(built)
    ko = tmp_path / "my_mod.ko"
    write_btf_sections(_elf(tmp_path), ko, {
        ".BTF": dsplit.to_bytes(), ".BTF.base": dbase.to_bytes(),
        ".BTF.base_expects": exp.to_bytes() if expects else None})
    return ko


def test_field_check_catches_member_moved_at_same_size(tmp_path, built):
    ko = _module_file(tmp_path, built)
    base, _mod = built
    assert reconcile_module_file(str(ko), target_of(base)).verdict is Verdict.OK
    vm = vmlinux()
    ws = vm.type(5)
    vm.replace(5, replace(ws, members=(ws.members[0], replace(ws.members[1], offset=128),
                                       replace(ws.members[2], offset=64))))
    target = target_of(vm)
    res = reconcile_module_file(str(ko), target)
    assert res.verdict is Verdict.INCOMPATIBLE and res.btf is None
    d = res.diagnostics[0]
    assert d["code"] == "field" and d["embedded"] is True
    mem = {m["member"]: m for m in d["members"]}
    assert (mem["entry"]["old_offset"], mem["entry"]["new_offset"]) == (64, 128)
    assert (mem["func"]["old_offset"], mem["func"]["new_offset"]) == (192, 64)
    # size-only relocation (the kernel's rule) accepts the same module
    assert relocate(Btf.parse(_with_expects(built)[1].to_bytes(),
                              base=_with_expects(built)[0], validate=False), target).ok
    warn = reconcile_module_file(str(ko), target, strict="off")
    assert warn.verdict is Verdict.OK and warn.diagnostics[0]["severity"] == "warning"


def test_field_check_type_change_and_missing_member(tmp_path, built):
    ko = _module_file(tmp_path, built)
    vm = vmlinux()
    lh = vm.type(3)
    vm.replace(3, replace(lh, members=(replace(lh.members[0], type=2),
                                       replace(lh.members[1], name_off=vm.add_str("back")))))
    res = reconcile_module_file(str(ko), target_of(vm), strict="all")
    assert res.verdict is Verdict.INCOMPATIBLE
    probs = {m["member"]: m["problem"] for m in res.diagnostics[0]["members"]}
    assert probs == {"next": "type changed", "prev": "missing"}


def test_expects_only_module_derives_its_base(tmp_path, built):
    ko = _module_file(tmp_path, built)
    only = tmp_path / "only.ko"
    write_btf_sections(ko, only, {".BTF.base": None})
    base, _ = built
    res = reconcile_module_file(str(only), target_of(base))
    assert res.verdict is Verdict.OK, res.summary
    assert res.btf == reconcile_module_file(str(ko), target_of(base)).btf


# ----------------------------------------------------------------------------- module files
def test_module_file_verdicts_never_raise(tmp_path, built):
    base, _ = built
    target = target_of(base)
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"\x7fELF" + b"\x01" * 60)
    r = reconcile_module_file(str(junk), target)
    assert r.verdict is Verdict.ERROR and str(junk) in r.summary and "\n" not in r.summary
    # the diagnostic's error_code says which failure it is (README: diagnostics)
    assert r.diagnostics[0]["error_code"] == "elf-invalid", r.diagnostics
    missing = reconcile_module_file(str(tmp_path / "nope.ko"), target)
    assert missing.verdict is Verdict.ERROR
    assert missing.diagnostics[0]["error_code"] == "input-unreadable", missing.diagnostics
    plain = _elf(tmp_path)
    assert reconcile_module_file(str(plain), target).verdict is Verdict.NO_BASE
    ko = _module_file(tmp_path, built)
    bad = tmp_path / "bad.ko"
    write_btf_sections(ko, bad, {".BTF.base": b"\x9f\xeb\x01\x00garbage"})
    r = reconcile_module_file(str(bad), target)
    assert r.verdict is Verdict.ERROR and ".BTF.base" in r.summary
    assert r.diagnostics[0]["error_code"] == "btf-truncated", r.diagnostics
    ok = reconcile_module_file(str(ko), target)
    assert ok.verdict is Verdict.OK and ok.module == "my_mod"
    j = ok.to_json()
    assert j["verdict"] == "ok" and j["btf_size"] == len(ok.btf) and "total" in j["timings"]
    json.dumps(j)


def test_cli_check_reconcile_distill(tmp_path, built, capsys):
    base, mod = built
    vm = tmp_path / "vmlinux.btf"
    vm.write_bytes(base.to_bytes())
    ko = _module_file(tmp_path, built)
    assert ctl(["check", str(ko), "--vmlinux", str(vm)]) == 0
    grown = vmlinux()
    grown.replace(5, replace(grown.type(5), size=40))
    vm2 = tmp_path / "vmlinux2.btf"
    vm2.write_bytes(grown.to_bytes())
    capsys.readouterr()
    assert ctl(["check", str(ko), "--vmlinux", str(vm2), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "incompatible" and "work_struct" in out["summary"]
    assert ctl(["check", str(tmp_path), "--vmlinux", str(vm2)]) == 1
    table = capsys.readouterr().out
    assert "my_mod" in table and "incompatible" in table
    out_btf = tmp_path / "out.btf"
    assert ctl(["reconcile", str(ko), "-o", str(out_btf), "--vmlinux", str(vm2)]) == 1
    assert not out_btf.exists()
    assert ctl(["reconcile", str(ko), "-o", str(out_btf), "--vmlinux", str(vm)]) == 0
    assert out_btf.read_bytes() == reconcile_module_file(str(ko), target_of(base)).btf
    # distill a plain module (its .BTF split on vmlinux)
    plain = tmp_path / "p.ko"
    write_btf_sections(_elf(tmp_path), plain, {".BTF": mod.to_bytes()})
    d = tmp_path / "d.ko"
    assert ctl(["distill", str(plain), "--base", str(vm), "--fields", "-o", str(d)]) == 0
    assert ctl(["check", str(d), "--vmlinux", str(vm)]) == 0
    assert ctl(["distill", str(plain), "--base", str(vm), "--in-place"]) == 0
    assert ctl(["check", str(plain), "--vmlinux", str(vm)]) == 0
    capsys.readouterr()
    assert ctl(["check", str(tmp_path / "missing.ko"), "--vmlinux", str(vm)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ko" in err


def test_module_without_anonymous_base_refs_comes_back_identical_in_dump():
    from btfreconciled.btf.dump import dump_raw

    base = reparse(vmlinux())
    s = Btf(base)
    n = base.type_count
    s.add(Struct(s.add_str("plain_obj"), 0, 24, (
        Member(s.add_str("a"), 1, 0), Member(s.add_str("l"), 3, 64))))
    s.add(Ptr(0, 0, n))
    s.add(FuncProto(0, 0, 1, (Param(s.add_str("o"), n + 1),)))
    s.add(Func(s.add_str("plain_fn"), 0, n + 2, 1))
    orig = reparse(s, base)
    res = distill(orig)
    assert len(res.split) == len(orig)  # nothing copied
    rel = relocate(res.split, target_of(base))
    back = Btf.parse(rel.data, base=base, validate=False)
    assert compare_split(orig, back).equal
    assert dump_raw(back) == dump_raw(orig)


def _embedded_scan(sp: PreparedSplit, nr_dist: int, end: int, want_paths: bool
                   ) -> tuple[set[int], dict[int, list[str]]]:
    """libbpf's btf_mark_embedded_composite_type_ids over split ids [nr_dist, end), walked
    forwards member by member as the C code does: the reference the product's _embedded
    (by distinct member type) must equal."""
    w = sp.words
    offs = sp.offs
    start = sp.start
    nr_types = start + len(offs)
    marked: set[int] = set()
    paths: dict[int, list[str]] = {}
    for tid in range(nr_dist, min(end, nr_types)):
        o = offs[tid - start]
        info = w[o + 1]
        kind = (info >> 24) & 0x1F
        if kind != Kind.STRUCT and kind != Kind.UNION:
            continue
        for m in range(info & 0xFFFF):
            next_id = w[o + 4 + 3 * m]
            steps = 0
            while next_id:
                steps += 1
                if steps > 64 or next_id >= nr_types:  # a loop or a dangling id: stop
                    break
                if next_id >= start:
                    no = offs[next_id - start]
                    k = (w[no + 1] >> 24) & 0x1F
                    if k in MODS_AND_TYPEDEF:
                        next_id = w[no + 2]
                        continue
                    if k == Kind.ARRAY:
                        next_id = w[no + 3]
                        continue
                    break
                k = sp.dist[next_id - 1].kind
                if (k in (Kind.STRUCT, Kind.UNION)) and next_id < nr_dist:
                    marked.add(next_id)
                    if want_paths:
                        lst = paths.setdefault(next_id, [])
                        if len(lst) < MAX_PATHS:
                            mname = sp.btf.name_of(w[o + 3 + 3 * m]) or "(anon)"
                            lst.append(f"{sp.label(tid)}.{mname} -> {sp.label(next_id)}")
                break
    return marked, paths


@pytest.mark.parametrize("embed", ["value", "typedef-array", "array-then-value", "pointer"])
def test_embedded_scan_equals_libbpf_forward_walk(embed, built):
    for split in (_struct_module(embed)[1], distill(built[1]).split):
        sp = PreparedSplit(split)
        comps = {d.id for d in sp.dist if d.kind in (4, 5)}
        fwd = _embedded_scan(sp, split.base.type_count, split.type_count, True)
        assert _embedded(sp, comps, split.type_count, True) == fwd
        end = split.start_id + 1
        assert _embedded_scan(sp, split.base.type_count, end, False)[0] == \
            _embedded(sp, comps, end, False)[0]


def test_embedding_paths_in_libbpf_member_order():
    """An array member before a by-value one: the paths come in member order, as libbpf's
    walk meets them (a search for the struct's id found the by-value member first)."""
    split = _struct_module("array-then-value")[1]
    sp = PreparedSplit(split)
    assert _embedded(sp, {1}, split.type_count, True) == (
        {1}, {1: ["struct o.ws -> struct work_struct", "struct o.w -> struct work_struct"]})


def test_lane_templates_match_the_field_iterator():
    from btfreconciled.btf.layout import EXTRA_FIXED_WORDS, EXTRA_VLEN_WORDS
    from btfreconciled.reconcile.lanes import _LANE_ID, _LANE_STR, _lane_masks

    b31, z = (0x80000000).to_bytes(4, "little"), bytes(4)
    for kind in range(1, 20):
        for vlen in (0, 1, 2, 7):
            info = 1 << 31 | kind << 24 | vlen
            _lane_masks(info)
            n = 3 + EXTRA_FIXED_WORDS[kind] + EXTRA_VLEN_WORDS[kind] * vlen
            fake = [0] * n
            fake[1] = info
            ids, strs = set(id_slots(fake, 0)), set(str_slots(fake, 0))
            assert _LANE_ID[info] == b"".join(b31 if i in ids else z for i in range(n))
            assert _LANE_STR[info] == b"".join(b31 if i in strs else z for i in range(n))


@pytest.mark.parametrize("n_ints", [40, 300])  # one-byte codes, and the wide mode
def test_lane_index_relocation_equals_plain_loop(n_ints):
    from btfreconciled.reconcile.relocate import prepare

    def vm(order):
        b = Btf()
        for i in order:
            b.add(Int(b.add_str(f"i{i}"), 0, 4, 0, 0, 32))
        return b

    base = reparse(vm(range(n_ints)))
    s = Btf(base)
    n = base.type_count
    for i in range(n_ints):  # a struct per int, named after the int: strings shared
        s.add(Struct(s.add_str(f"i{i}" if i % 2 else f"s{i}"), 0, 4,
                     (Member(s.add_str(f"i{(i + 1) % n_ints}"), 1 + i, 0),)))
        s.add(Ptr(0, 0, n + 2 * i))
    dist = distill(reparse(s, base))
    # a target where the same ints sit elsewhere and their names at other offsets
    target = target_of(vm(reversed(range(n_ints))))
    fast = prepare(Btf.parse(dist.split.to_bytes(), base=dist.base, validate=False))
    assert fast.lanes is not None and fast.lanes.ok
    assert fast.lanes.wide == (n_ints > 253)
    slow = prepare(Btf.parse(dist.split.to_bytes(), base=dist.base, validate=False))
    slow.lanes = None
    a, b = relocate(fast, target), relocate(slow, target)
    assert a.ok and b.ok and a.data == b.data
