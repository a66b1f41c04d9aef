"""`btfreconcilectl min-core-btf`: minimized BTF for BPF objects, module types included.

The oracle is bpftool's own `gen min_core_btf` on the same merged input (vmlinux + module,
reconcile/merge.py): our bytes must be its bytes. The BPF objects are crafted here
(tests/bpfobj_build.py): an object's `.BTF` with the local declarations a CO-RE program
makes, and the `.BTF.ext` records clang writes for its accesses.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bpfobj_build import bpf_object, elf_object
from oracle_tools import VMLINUX, bpftool_raw, require_tool

from btfreconciled.bpfobj import RelocKind, read_bpf_object
from btfreconciled.btf.btf import Btf
from btfreconciled.btf.kinds import Kind
from btfreconciled.btf.types import (
    Array,
    Enum,
    EnumValue,
    FuncProto,
    Int,
    Member,
    Param,
    Ptr,
    Struct,
    Typedef,
)
from btfreconciled.cli.main import main as ctl
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.reconcile.distill import distill
from btfreconciled.reconcile.merge import merged_bytes
from btfreconciled.reconcile.mincore import Ambiguity, Resolver, essential_len

K = RelocKind
SEC = "kprobe/probe"


@pytest.fixture(scope="module")
def vml(vmlinux_bytes) -> Btf:
    return Btf.parse(vmlinux_bytes, source=str(VMLINUX), validate=False)


def dup_module(vml: Btf, x_byte: int, extra: str = "") -> bytes:
    """A module's split BTF on `vml` defining `struct btfr_dup` with `x` at `x_byte`."""
    s = Btf(vml)
    u32 = vml.find("unsigned int", Kind.INT)[0]
    n = vml.type_count
    members = [Member(s.add_str("x"), u32, 8 * x_byte)]
    members.insert(0 if x_byte else 1, Member(s.add_str("y"), u32, 0 if x_byte else 32))
    s.add(Struct(s.add_str("btfr_dup"), 0, 24, tuple(members)))  # [n]
    s.add(Ptr(0, 0, n))
    if extra:
        s.add(Struct(s.add_str(extra), 0, 4, (Member(s.add_str("v"), u32, 0),)))
    return Btf.parse(s.to_bytes(), base=vml, validate=False).to_bytes()


def local_btf() -> tuple[Btf, dict[str, int]]:
    """What a CO-RE program declares locally (preserve_access_index structs), by name."""
    b = Btf()
    ids: dict[str, int] = {}

    def add(key: str, t) -> int:  # noqa: ANN001
        ids[key] = b.add(t)
        return ids[key]

    u32 = add("u32i", Int(b.add_str("unsigned int"), 0, 4, 0, 0, 32))
    i32 = add("int", Int(b.add_str("int"), 0, 4, 1, 0, 32))
    u64 = add("u64i", Int(b.add_str("long long unsigned int"), 0, 8, 0, 0, 64))
    ul = add("ul", Int(b.add_str("long unsigned int"), 0, 8, 0, 0, 64))
    ch = add("char", Int(b.add_str("char"), 0, 1, 0, 0, 8))
    t_u32 = add("__u32", Typedef(b.add_str("__u32"), 0, u32))
    add("dup", Struct(b.add_str("btfr_dup"), 0, 4, (Member(b.add_str("x"), t_u32, 0),)))
    add("pt_regs", Struct(b.add_str("pt_regs"), 0, 168, (
        Member(b.add_str("di"), ul, 0), Member(b.add_str("si"), ul, 64))))
    se = add("se", Struct(b.add_str("sched_entity"), 0, 8, (
        Member(b.add_str("vruntime"), u64, 0),)))
    comm = add("comm", Array(0, 0, ch, i32, 16))
    lh = b.type_count
    add("list_head", Struct(b.add_str("list_head"), 0, 16, (
        Member(b.add_str("next"), lh + 1, 0), Member(b.add_str("prev"), lh + 1, 64))))
    add("lh_ptr", Ptr(0, 0, lh))
    add("task", Struct(b.add_str("task_struct"), 1, 64, (
        Member(b.add_str("pid"), i32, 0),
        Member(b.add_str("se"), se, 64),
        Member(b.add_str("comm"), comm, 128),
        Member(b.add_str("tasks"), lh, 256),
        Member(b.add_str("sched_reset_on_fork"), u32, 1 << 24 | 384),
        Member(b.add_str("no_such_field"), u32, 416))))
    add("task_old", Struct(b.add_str("task_struct___old"), 0, 8, (
        Member(b.add_str("pid"), i32, 0),)))
    add("pid_type", Enum(b.add_str("pid_type"), 0, 4, (
        EnumValue(b.add_str("PIDTYPE_TGID"), 1), EnumValue(b.add_str("PIDTYPE_NOPE"), 9))))
    # typedef irqreturn_t (*irq_handler_t)(int, void *): a type relocation follows the
    # pointer into the prototype and keeps what it names
    irqret = add("irqreturn", Enum(b.add_str("irqreturn"), 0, 4, ()))
    proto = add("proto", FuncProto(0, 0, irqret, (Param(0, i32), Param(0, b.type_count + 1))))
    add("void_ptr", Ptr(0, 0, 0))
    add("irq_handler_t", Typedef(b.add_str("irq_handler_t"), 0, b.type_count + 1))
    add("handler_ptr", Ptr(0, 0, proto))
    add("missing", Struct(b.add_str("btfr_no_such_struct"), 0, 4, (
        Member(b.add_str("a"), u32, 0),)))
    return b, ids


def every_kind_relos(ids: dict[str, int]) -> list[tuple[str, int, int, str, int]]:
    t = ids["task"]
    return [
        (SEC, 0, ids["pt_regs"], "0:0", K.FIELD_BYTE_OFFSET),
        (SEC, 8, ids["pt_regs"], "0:1", K.FIELD_BYTE_OFFSET),
        (SEC, 16, t, "0:0", K.FIELD_BYTE_OFFSET),
        (SEC, 24, t, "0:1:0", K.FIELD_BYTE_OFFSET),  # se.vruntime
        (SEC, 32, t, "0:2:3", K.FIELD_BYTE_OFFSET),  # comm[3]
        (SEC, 40, t, "0:3:0", K.FIELD_BYTE_OFFSET),  # tasks.next
        (SEC, 48, t, "0:4", K.FIELD_BYTE_SIZE),  # a bitfield
        (SEC, 56, t, "0:4", K.FIELD_LSHIFT_U64),
        (SEC, 64, t, "0:4", K.FIELD_RSHIFT_U64),
        (SEC, 72, t, "0:4", K.FIELD_SIGNED),
        (SEC, 80, t, "0:5", K.FIELD_EXISTS),  # matches nothing: no type recorded
        (SEC, 88, ids["task_old"], "0:0", K.FIELD_BYTE_OFFSET),  # flavor: task_struct
        (SEC, 96, ids["list_head"], "0", K.TYPE_SIZE),
        (SEC, 104, ids["irq_handler_t"], "0", K.TYPE_EXISTS),
        (SEC, 112, ids["task"], "0", K.TYPE_ID_TARGET),
        (SEC, 120, ids["task"], "0", K.TYPE_ID_LOCAL),
        (SEC, 128, ids["pid_type"], "0", K.ENUMVAL_VALUE),
        (SEC, 136, ids["pid_type"], "1", K.ENUMVAL_EXISTS),  # no such value
        (SEC, 144, ids["missing"], "0:0", K.FIELD_BYTE_OFFSET),  # no such struct
        ("kprobe/second", 0, ids["dup"], "0:0", K.FIELD_BYTE_OFFSET),
    ]


def write_obj(path: Path, relos_of) -> Path:  # noqa: ANN001
    b, ids = local_btf()
    path.write_bytes(bpf_object(b, relos_of(ids)))
    return path


def bpftool_min(merged: Path, out: Path, *objs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("bpftool", "bpftool"), "gen", "min_core_btf",
                           str(merged), str(out), *map(str, objs)],
                          capture_output=True, text=True)


def ours(merged: bytes, *objs: Path) -> tuple[bytes, Resolver]:
    r = Resolver(Btf.parse(merged, validate=False))
    for o in objs:
        r.record_object(read_bpf_object(o))
    return r.emit(), r


# ----------------------------------------------------------------------------- parity


def test_every_relocation_kind_equals_bpftool_byte_for_byte(vml, tmp_path):
    merged = merged_bytes(vml, [("btfr_dup_a", dup_module(vml, 0))])
    mfile = tmp_path / "merged.btf"
    mfile.write_bytes(merged)
    obj = write_obj(tmp_path / "a.bpf.o", every_kind_relos)
    res = bpftool_min(mfile, tmp_path / "ref.btf", obj)
    assert res.returncode == 0, res.stderr
    data, r = ours(merged, obj)
    assert data == (tmp_path / "ref.btf").read_bytes()
    dump = bpftool_raw(tmp_path / "ref.btf")
    assert "STRUCT 'btfr_dup' size=24 vlen=1\n\t'x' type_id=" in dump
    assert "STRUCT 'pt_regs'" in dump and "'di'" in dump and "'si'" in dump
    assert "'sched_reset_on_fork'" in dump and "'vruntime'" in dump
    assert "btfr_no_such_struct" not in dump
    # what libbpf would poison: the missing field, value and struct
    assert sorted((u.local_name, u.access) for u in r.unresolved) == [
        ("btfr_no_such_struct", "a"), ("pid_type", "PIDTYPE_NOPE"),
        ("task_struct", "no_such_field")]
    assert "TYPEDEF 'irq_handler_t'" in dump and "FUNC_PROTO" in dump


def test_several_objects_and_a_second_run_on_the_output(vml, tmp_path):
    merged = merged_bytes(vml, [("btfr_dup_a", dup_module(vml, 0))])
    mfile = tmp_path / "merged.btf"
    mfile.write_bytes(merged)
    one = write_obj(tmp_path / "one.bpf.o", lambda ids: every_kind_relos(ids)[:6])
    two = write_obj(tmp_path / "two.bpf.o", lambda ids: every_kind_relos(ids)[6:])
    assert bpftool_min(mfile, tmp_path / "ref.btf", one, two).returncode == 0
    data, _ = ours(merged, one, two)
    assert data == (tmp_path / "ref.btf").read_bytes()
    # minimizing the minimized file again keeps every byte (bpftool agrees)
    again, _ = ours(data, one, two)
    assert again == data
    assert bpftool_min(tmp_path / "ref.btf", tmp_path / "ref2.btf", one, two).returncode == 0
    assert (tmp_path / "ref2.btf").read_bytes() == data


def test_flavor_suffix_is_ignored_when_matching_names():
    assert essential_len("task_struct___old") == len("task_struct")
    assert essential_len("a___b___c") == len("a___b")
    assert essential_len("x____y") == len("x____y")  # four underscores: no flavor
    assert essential_len("___x") == 4


# ----------------------------------------------------------------------------- conflicts


def test_two_layouts_of_one_name_is_libbpfs_field_offset_ambiguity(vml, tmp_path):
    both = merged_bytes(vml, [("btfr_dup_a", dup_module(vml, 0)),
                              ("btfr_dup_b", dup_module(vml, 16))])
    mfile = tmp_path / "all.btf"
    mfile.write_bytes(both)
    obj = write_obj(tmp_path / "dup.bpf.o", lambda ids: [(SEC, 0, ids["dup"], "0:0", 0)])
    res = bpftool_min(mfile, tmp_path / "ref.btf", obj)
    assert res.returncode != 0 and "field offset ambiguity" in res.stderr
    with pytest.raises(Ambiguity) as exc:
        ours(both, obj)
    e = exc.value
    assert (e.local_name, e.access, e.reason) == ("btfr_dup", "x", "field offset ambiguity")
    assert (e.first_value, e.other_value) == ("at byte 0", "at byte 16")
    assert e.first_id == vml.type_count and e.other_id == vml.type_count + 2


def test_same_layout_in_two_modules_is_no_ambiguity(vml, tmp_path):
    both = merged_bytes(vml, [("btfr_dup_a", dup_module(vml, 8)),
                              ("btfr_dup_b", dup_module(vml, 8))])
    mfile = tmp_path / "all.btf"
    mfile.write_bytes(both)
    obj = write_obj(tmp_path / "dup.bpf.o", lambda ids: [(SEC, 0, ids["dup"], "0:0", 0)])
    assert bpftool_min(mfile, tmp_path / "ref.btf", obj).returncode == 0
    assert ours(both, obj)[0] == (tmp_path / "ref.btf").read_bytes()


def module_file(tmp_path: Path, vml: Btf, name: str, x_byte: int) -> Path:
    """A .ko (distilled base + split BTF) on the running vmlinux."""
    split = Btf.parse(dup_module(vml, x_byte), base=vml, validate=False)
    res = distill(split, source=name)
    src = tmp_path / f"{name}.c"
    src.write_text("int btfr_dummy;\n")
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    ko = tmp_path / f"{name}.ko"
    write_btf_sections(obj, ko, {".BTF": res.split.to_bytes(), ".BTF.base": res.base.to_bytes()})
    return ko


@pytest.fixture(scope="module")
def dup_files(vml, tmp_path_factory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("dup")
    obj = write_obj(d / "dupread.bpf.o", lambda ids: [(SEC, 0, ids["dup"], "0:0", 0),
                                                      (SEC, 8, ids["pt_regs"], "0:0", 0)])
    return module_file(d, vml, "btfr_dup_a", 0), module_file(d, vml, "btfr_dup_b", 16), obj


def test_cli_refuses_both_modules_in_one_line_and_writes_nothing(dup_files, tmp_path, capsys):
    a, b, obj = dup_files
    out = tmp_path / "min.btf"
    rc = ctl(["min-core-btf", str(obj), "-o", str(out), "--vmlinux", str(VMLINUX),
              "--module", str(a), "--module", str(b)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1
    assert "struct btfr_dup" in err and "btfr_dup_a" in err and "btfr_dup_b" in err
    assert "field offset ambiguity" in err and "x: at byte 0 in btfr_dup_a, at byte 16" in err


@pytest.mark.parametrize("which,x_byte", [(0, 0), (1, 16)])
def test_cli_one_module_resolves_to_its_layout_like_bpftool(dup_files, vml, tmp_path, capsys,
                                                            which, x_byte):
    ko, obj = dup_files[which], dup_files[2]
    out = tmp_path / "min.btf"
    rc = ctl(["min-core-btf", str(obj), "-o", str(out), "--vmlinux", str(VMLINUX),
              "--module", str(ko)])
    assert rc == 0, capsys.readouterr().err
    assert f"wrote {out}:" in capsys.readouterr().out
    dump = bpftool_raw(out)
    assert f"'x' type_id=1 bits_offset={8 * x_byte}\n" in dump.replace("type_id=2", "type_id=1")
    # the same bytes bpftool writes from this module's merged file
    merged = tmp_path / "merged.btf"
    assert ctl(["reconcile", str(ko), "--merged", "-o", str(merged),
                "--vmlinux", str(VMLINUX)]) == 0
    assert bpftool_min(merged, tmp_path / "ref.btf", obj).returncode == 0
    assert out.read_bytes() == (tmp_path / "ref.btf").read_bytes()


def test_cli_without_modules_uses_vmlinux_alone(dup_files, tmp_path, capsys):
    out = tmp_path / "min.btf"
    assert ctl(["min-core-btf", str(dup_files[2]), "-o", str(out), "--vmlinux", str(VMLINUX),
                "--json"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    assert got["size"] == out.stat().st_size and got["modules"] == []
    assert [u["type"] for u in got["unresolved"]] == ["btfr_dup"]
    assert bpftool_min(VMLINUX, tmp_path / "ref.btf", dup_files[2]).returncode == 0
    assert out.read_bytes() == (tmp_path / "ref.btf").read_bytes()


# ----------------------------------------------------------------------------- bad input


def run_err(capsys, *args: str) -> tuple[int, str]:
    rc = ctl(["min-core-btf", *args])
    return rc, capsys.readouterr().err


def test_bad_objects_are_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "min.btf"
    vm = ["--vmlinux", str(VMLINUX)]
    text = tmp_path / "notelf.o"
    text.write_text("hello\n")
    rc, err = run_err(capsys, str(text), "-o", str(out), *vm)
    assert rc == 2 and "notelf.o: not an ELF file" in err
    b, _ids = local_btf()
    noext = tmp_path / "noext.o"
    noext.write_bytes(elf_object([(".BTF", b.to_bytes())]))
    rc, err = run_err(capsys, str(noext), "-o", str(out), *vm)
    assert rc == 2 and "noext.o: no .BTF.ext section" in err
    rc, err = run_err(capsys, str(tmp_path / "missing.o"), "-o", str(out), *vm)
    assert rc == 2 and "missing.o: cannot read" in err
    bad = write_obj(tmp_path / "bad.bpf.o", lambda ids: [(SEC, 0, ids["pt_regs"], "0:x", 0)])
    rc, err = run_err(capsys, str(bad), "-o", str(out), *vm)
    assert rc == 2 and "bad.bpf.o: CO-RE relocation #0 in kprobe/probe: malformed" in err
    past = write_obj(tmp_path / "past.bpf.o", lambda ids: [(SEC, 0, ids["pt_regs"], "0:7", 0)])
    rc, err = run_err(capsys, str(past), "-o", str(out), *vm)
    assert rc == 2 and "member index 7 past the end" in err
    cut = tmp_path / "cut.bpf.o"
    b2, ids2 = local_btf()
    ext = bytearray(__import__("bpfobj_build").btf_ext(b2, [(SEC, 0, ids2["pt_regs"], "0:0", 0)]))
    ext[28:32] = (10_000).to_bytes(4, "little")  # core_relo_len past the section
    cut.write_bytes(elf_object([(".BTF", b2.to_bytes()), (".BTF.ext", bytes(ext))]))
    rc, err = run_err(capsys, str(cut), "-o", str(out), *vm)
    assert rc == 2 and "cut.bpf.o: .BTF.ext: CO-RE relocations at" in err
    for e in err.splitlines():
        assert e.startswith("btfreconcilectl: error: ")
    assert not out.exists()


def test_unknown_module_name_and_missing_module_file(dup_files, tmp_path, capsys):
    out = tmp_path / "min.btf"
    rc, err = run_err(capsys, str(dup_files[2]), "-o", str(out), "--vmlinux", str(VMLINUX),
                      "--module", "btfr_surely_not_loaded", "--cache-dir", str(tmp_path))
    assert rc == 2 and "btfr_surely_not_loaded: no reconciled BTF" in err
    assert len(err.strip().splitlines()) == 1
    rc, err = run_err(capsys, str(dup_files[2]), "-o", str(out), "--vmlinux", str(VMLINUX),
                      "--module", str(tmp_path / "gone.ko"))
    assert rc == 2 and "gone.ko: no such module file" in err
    assert not out.exists()


def test_type_matches_relocations_equal_bpftool(vml, tmp_path):
    """bpf_core_type_matches(): the strict relation; a match keeps the type's whole
    structure (composites behind pointers left empty)."""
    merged = merged_bytes(vml, [("btfr_dup_a", dup_module(vml, 0))])
    mfile = tmp_path / "merged.btf"
    mfile.write_bytes(merged)
    obj = write_obj(tmp_path / "m.bpf.o", lambda ids: [
        (SEC, 0, ids["list_head"], "0", K.TYPE_MATCHES),
        (SEC, 8, ids["irq_handler_t"], "0", K.TYPE_MATCHES),
        (SEC, 16, ids["dup"], "0", K.TYPE_MATCHES),
        (SEC, 24, ids["task"], "0", K.TYPE_MATCHES),  # pid is int, comm char[16]: ...
    ])
    res = bpftool_min(mfile, tmp_path / "ref.btf", obj)
    assert res.returncode == 0, res.stderr
    data, r = ours(merged, obj)
    assert data == (tmp_path / "ref.btf").read_bytes()
    dump = bpftool_raw(tmp_path / "ref.btf")
    assert "STRUCT 'list_head' size=16 vlen=2" in dump
    # the local task_struct's u32 bitfield and missing member cannot match the kernel's
    assert [u.local_name for u in r.unresolved] == ["task_struct"]


def test_module_by_name_from_the_cache_or_the_kernels_btf(tmp_path, capsys, monkeypatch):
    """--module NAME: the daemon's reconciled split BTF (checked by the client to be the
    running kernel's), else /sys/kernel/btf/NAME; the result equals bpftool on the merged
    file of the same vmlinux and module."""
    import hashlib

    from test_daemon import make_daemon
    from test_daemon_support import FAKE_VMLINUX, FakeSystem, expected_btf

    import btfreconciled.cli.mincore as cli_mincore

    fs = FakeSystem(tmp_path / "fs")
    fs.add_file("alpha")
    fs.load("alpha")
    d = make_daemon(fs)
    try:
        d.rescan("test")
        assert d.wait_idle()
    finally:
        d.stop()
    monkeypatch.setattr(cli_mincore, "SYSFS", fs.sysfs)
    split = expected_btf((fs.mods / "alpha.ko").read_bytes())
    struct_name = "m" + hashlib.sha256((fs.mods / "alpha.ko").read_bytes()).hexdigest()
    b = Btf()
    ptr = b.type_count + 2
    lh = b.add(Struct(b.add_str("list_head"), 0, 16, (Member(b.add_str("next"), ptr, 0),)))
    mod = b.add(Struct(b.add_str(struct_name), 0, 16, (Member(b.add_str("node"), lh, 0),)))
    b.add(Ptr(0, 0, lh))
    obj = tmp_path / "fake.bpf.o"
    obj.write_bytes(bpf_object(b, [(SEC, 0, mod, "0:0:0", K.FIELD_BYTE_OFFSET)]))
    merged = tmp_path / "merged.btf"
    merged.write_bytes(merged_bytes(Btf.parse(FAKE_VMLINUX, validate=False), [("alpha", split)]))
    assert bpftool_min(merged, tmp_path / "ref.btf", obj).returncode == 0
    ref = (tmp_path / "ref.btf").read_bytes()
    out = tmp_path / "min.btf"
    args = ["min-core-btf", str(obj), "-o", str(out), "--module", "alpha",
            "--cache-dir", str(fs.cache)]
    assert ctl(args) == 0, capsys.readouterr().err
    assert out.read_bytes() == ref
    assert f"STRUCT '{struct_name}' size=16 vlen=1" in bpftool_raw(out)
    # no cache: the kernel's own /sys/kernel/btf/alpha
    out.unlink()
    fs.kernel_btf("alpha", split)
    assert ctl([*args[:-1], str(tmp_path / "nocache")]) == 0, capsys.readouterr().err
    assert out.read_bytes() == ref
    # ... which is split BTF on the running kernel only
    rc, err = run_err(capsys, *args[1:-1], str(tmp_path / "nocache"), "--vmlinux",
                      str(tmp_path / "ref.btf"))
    assert rc == 2 and "is split BTF on the running kernel" in err


@pytest.mark.parametrize(("access", "ok"), [("0:1", True), ("0: 1", True), ("0:+1", True),
                                            ("0:1:", False), ("0::1", False), (":0", False),
                                            ("0:-1", False), ("", False), ("0:a", False)])
def test_access_strings_parse_as_libbpf_does(access, ok):
    from btfreconciled.bpfobj import CoreRelo
    from btfreconciled.reconcile.mincore import _Err, parse_spec

    b, ids = local_btf()
    relo = CoreRelo(SEC, 0, 0, ids["pt_regs"], b.add_str(access) if access else 0, 0)
    if ok:
        assert parse_spec(b, relo).raw == [0, 1]
    else:
        with pytest.raises(_Err):
            parse_spec(b, relo)


def test_header_size_32_is_the_same_btf_with_linux_7_header(dup_files, vml, tmp_path, capsys):
    """--header-size 32: what bpftool 7.8 (libbpf 1.7) writes: hdr_len 32, layout_off and
    layout_len 0, then the same types and strings."""
    import struct as st

    obj = dup_files[2]
    short, long_ = tmp_path / "24.btf", tmp_path / "32.btf"
    for out, size in ((short, "24"), (long_, "32")):
        assert ctl(["min-core-btf", str(obj), "-o", str(out), "--vmlinux", str(VMLINUX),
                    "--module", str(dup_files[0]), "--header-size", size]) == 0
    a, b = short.read_bytes(), long_.read_bytes()
    assert st.unpack_from("<I", b, 4)[0] == 32 and b[24:32] == bytes(8)
    assert b[:4] == a[:4] and b[8:24] == a[8:24] and b[32:] == a[24:]
    assert Btf.parse(b).to_bytes() == b
    assert bpftool_raw(long_) == bpftool_raw(short)


def test_type_id_of_a_name_two_modules_define_is_a_decision_ambiguity(vml, tmp_path):
    """bpf_core_type_id_kernel() of a struct both modules define: two different ids, and
    libbpf refuses ("relocation decision ambiguity"), even with equal layouts."""
    both = merged_bytes(vml, [("btfr_dup_a", dup_module(vml, 8)),
                              ("btfr_dup_b", dup_module(vml, 8))])
    mfile = tmp_path / "all.btf"
    mfile.write_bytes(both)
    obj = write_obj(tmp_path / "t.bpf.o",
                    lambda ids: [(SEC, 0, ids["dup"], "0", K.TYPE_ID_TARGET)])
    res = bpftool_min(mfile, tmp_path / "ref.btf", obj)
    assert res.returncode != 0 and "relocation decision ambiguity" in res.stderr
    with pytest.raises(Ambiguity) as exc:
        ours(both, obj)
    assert exc.value.label == "btfr_dup"
    assert exc.value.reason == "relocation decision ambiguity"
    n = vml.type_count
    assert (exc.value.first_value, exc.value.other_value) == (f"success {n}", f"success {n + 2}")
