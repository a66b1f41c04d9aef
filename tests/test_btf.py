"""BTF core: exact round trips, both byte orders, building new BTF, dump parity on vmlinux."""

from __future__ import annotations

import errno
import io
import struct
import subprocess
import sys
from array import array

import pytest
from oracle_tools import VMLINUX, bpftool_raw

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.dump import PARALLEL_MIN_WORDS, dump_raw, write_raw
from btfreconciled.btf.errors import BtfError
from btfreconciled.btf.kinds import Kind
from btfreconciled.btf.types import (
    Array,
    Const,
    Datasec,
    DeclTag,
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
    Restrict,
    Struct,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarSecinfo,
    Volatile,
)
from btfreconciled.errors import ErrorCode


def byteswap_btf(data: bytes) -> bytes:
    """The same BTF in the other byte order (header and every type word swapped)."""
    order = "<" if struct.unpack_from("<H", data)[0] == 0xEB9F else ">"
    other = ">" if order == "<" else "<"
    magic, ver, flags, hdr_len, toff, tlen, soff, slen = struct.unpack_from(order + "HBBIIIII",
                                                                            data)
    hdr = struct.pack(other + "HBBIIIII", magic, ver, flags, hdr_len, toff, tlen, soff, slen)
    words = array("I", data[hdr_len + toff: hdr_len + toff + tlen])
    words.byteswap()
    return hdr + data[24:hdr_len] + words.tobytes() + data[hdr_len + soff:]


def test_vmlinux_round_trip_raw_and_reencoded(vmlinux_bytes: bytes) -> None:
    btf = Btf.parse(vmlinux_bytes, source=str(VMLINUX), validate=False)
    assert btf.to_bytes() == vmlinux_bytes
    # Decode every record into its dataclass and encode it again: the model is exact.
    assert btf.to_bytes(reencode=True) == vmlinux_bytes


def test_vmlinux_big_endian_round_trip(vmlinux_bytes: bytes) -> None:
    be = byteswap_btf(vmlinux_bytes)
    assert be[:2] == b"\xeb\x9f"  # 0xeB9F stored big-endian
    btf_be = Btf.parse(be, source="be", validate=False)
    btf_le = Btf.parse(vmlinux_bytes, source="le", validate=False)
    assert btf_be.byte_order == ">"
    assert btf_be.to_bytes() == be
    assert btf_be.to_bytes(reencode=True) == be
    assert len(btf_be) == len(btf_le)
    for tid in (1, 100, len(btf_le) // 2, len(btf_le)):
        assert btf_be.type(tid) == btf_le.type(tid)
    assert dump_raw(btf_be) == dump_raw(btf_le)


def test_dump_matches_bpftool_on_running_vmlinux(vmlinux_bytes: bytes) -> None:
    ours = dump_raw(Btf.parse(vmlinux_bytes, validate=False))
    ref = bpftool_raw(VMLINUX)
    ours_lines, ref_lines = ours.splitlines(), ref.splitlines()
    pairs = enumerate(zip(ref_lines, ours_lines, strict=False))
    diff = [(i, a, b) for i, (a, b) in pairs if a != b]
    assert len(ours_lines) == len(ref_lines)
    assert diff == [], f"{len(diff)} differing lines, first: {diff[:3]}"


def test_cli_dump_is_bpftool_text(vmlinux_bytes: bytes) -> None:
    res = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", "dump", str(VMLINUX)],
                         capture_output=True, text=True, errors="surrogateescape")
    assert res.returncode == 0, res.stderr
    assert res.stdout == bpftool_raw(VMLINUX)


@pytest.mark.parametrize("json_lines", [False, True])
def test_cli_dump_to_a_full_disk_is_one_line_error(json_lines: bool) -> None:
    cmd = [sys.executable, "-m", "btfreconciled.cli.main", "dump", str(VMLINUX)]
    with open("/dev/full", "wb") as full:  # every write fails with ENOSPC
        res = subprocess.run(cmd + ["--json"] * json_lines, stdout=full, stderr=subprocess.PIPE,
                             text=True)
    assert res.returncode == 2
    assert res.stderr == ("btfreconcilectl: error: writing standard output: "
                          "No space left on device\n")


def test_write_raw_two_processes_into_file_and_memory(vmlinux_bytes: bytes, tmp_path) -> None:
    # The parallel path, on an already scanned Btf (the CLI's is deferred), into a real file
    # (the child's half arrives by sendfile) and into a BytesIO (no file descriptor).
    btf = Btf.parse(vmlinux_bytes, validate=False)
    assert len(btf.wire_words()) >= PARALLEL_MIN_WORDS
    ref = bpftool_raw(VMLINUX).encode("utf-8", "surrogateescape")
    with open(tmp_path / "dump.txt", "wb") as f:
        f.write(b"kept\n")  # the child's half must land after what is already there
        write_raw(btf, f)
    assert (tmp_path / "dump.txt").read_bytes() == b"kept\n" + ref
    buf = io.BytesIO()
    write_raw(btf, buf)
    assert buf.getvalue() == ref


def test_write_raw_worker_failures_reach_the_caller(vmlinux_bytes: bytes, monkeypatch) -> None:
    # The child's errors come back as what they were: a BtfError with its type id (a bad
    # record only the child's scan sees), an OSError with its errno (its spill file full).
    eager = Btf.parse(vmlinux_bytes, validate=False)
    last = eager.wire_records()[1][-1]
    data = bytearray(vmlinux_bytes)
    struct.pack_into("<I", data, 24 + 4 * last + 4, 0x1F << 24)
    lazy = Btf.parse(bytes(data), validate=False, defer_scan=True)
    with pytest.raises(BtfError) as err:
        write_raw(lazy, io.BytesIO())
    assert err.value.type_id == len(eager) and "unknown BTF kind 31" in str(err.value)
    assert err.value.code is ErrorCode.BTF_UNKNOWN_KIND

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("btfreconciled.btf.dump._write_all", full)
    with pytest.raises(OSError) as err:
        write_raw(eager, io.BytesIO())
    assert err.value.errno == errno.ENOSPC


def test_name_index(vmlinux_bytes: bytes) -> None:
    btf = Btf.parse(vmlinux_bytes, validate=False)
    btf.build_index()
    (ts,) = btf.find("task_struct", Kind.STRUCT)
    assert btf.type_name(ts) == "task_struct"
    assert btf.kind_of(ts) == Kind.STRUCT
    # FUNC names come from the lazily built second half of the index.
    funcs = btf.find("schedule", Kind.FUNC)
    assert len(funcs) == 1 and btf.kind_of(funcs[0]) == Kind.FUNC
    assert btf.find("no_such_type_anywhere") == []
    # find(None kind) returns every kind, in id order
    both = btf.find("task_struct")
    assert ts in both and both == sorted(both)


def _all_kinds_btf() -> Btf:
    b = Btf()
    s = b.add_str
    i32 = b.add(Int(s("int"), 0, 4, 1, 0, 32))
    u8 = b.add(Int(s("unsigned char"), 0, 1, 0, 0, 8))
    ptr = b.add(Ptr(0, 0, i32))
    arr = b.add(Array(0, 0, u8, i32, 16))
    st = b.add(Struct(s("s"), 1, 24, (
        Member(s("a"), i32, 0),
        Member(s("bits"), i32, (3 << 24) | 32),
        Member(s("p"), ptr, 64),
        Member(0, arr, 128),
    )))
    b.add(Union(s("u"), 0, 8, (Member(s("x"), i32, 0), Member(s("y"), ptr, 0))))
    b.add(Enum(s("e"), 1, 4, (EnumValue(s("NEG"), (-5) & 0xFFFFFFFF), EnumValue(s("POS"), 7))))
    b.add(Enum64(s("e64"), 0, 8, (EnumValue(s("BIG"), 1 << 40),)))
    b.add(Fwd(s("fwd_union"), 1))
    td = b.add(Typedef(s("s_t"), 0, st))
    v = b.add(Volatile(0, 0, td))
    c = b.add(Const(0, 0, v))
    b.add(Restrict(0, 0, b.add(Ptr(0, 0, c))))
    proto = b.add(FuncProto(0, 0, i32, (Param(s("arg"), ptr), Param(0, 0))))
    fn = b.add(Func(s("fn"), 0, proto, 1))
    var = b.add(Var(s("var"), 0, i32, 1))
    b.add(Datasec(s(".data"), 0, 4, (VarSecinfo(var, 0, 4),)))
    b.add(Float(s("double"), 0, 8))
    b.add(DeclTag(s("tag"), 0, fn, -1))
    b.add(TypeTag(s("user"), 0, i32))
    return b


def test_build_all_kinds_round_trips_and_dumps_like_bpftool(tmp_path) -> None:
    b = _all_kinds_btf()
    data = b.to_bytes()
    again = Btf.parse(data, validate=False)
    assert again.to_bytes() == data
    assert again.to_bytes(reencode=True) == data
    for tid, t in b:
        assert again.type(tid) == t
    path = tmp_path / "all.btf"
    path.write_bytes(data)
    assert dump_raw(again) == bpftool_raw(path)
    # and in the other byte order
    swapped = byteswap_btf(data)
    (tmp_path / "all-be.btf").write_bytes(swapped)
    be = Btf.parse(swapped, validate=False)
    assert dump_raw(be) == dump_raw(again)
    assert be.to_bytes() == swapped


def test_split_btf_on_built_base(tmp_path) -> None:
    base = _all_kinds_btf()
    base_bytes = base.to_bytes()
    base = Btf.parse(base_bytes, validate=False)
    split = Btf(base)
    assert split.start_id == base.type_count
    # base strings are reused, new ones go after the base string section
    assert split.add_str("int") == base.find_str("int")
    off = split.add_str("module_only")
    assert off >= base.str_end
    i32 = base.find("int", Kind.INT)[0]
    sid = split.add(Struct(off, 0, 4, (Member(split.add_str("a"), i32, 0),)))
    assert split.find("module_only") == [sid]
    data = split.to_bytes()
    (tmp_path / "base.btf").write_bytes(base_bytes)
    (tmp_path / "split.btf").write_bytes(data)
    parsed = Btf.parse(data, base=base, validate=False)
    assert parsed.to_bytes() == data
    assert dump_raw(parsed) == bpftool_raw(tmp_path / "split.btf", tmp_path / "base.btf")


def test_dump_names_mid_string_and_raw_bytes_like_bpftool(tmp_path) -> None:
    # A name offset may point into the middle of a string (libbpf and the kernel accept
    # it), and libbpf does not insist on UTF-8: bpftool prints whatever bytes are there.
    b = Btf()
    uc = b.add_str("unsigned char")
    i8 = b.add(Int(uc + len("unsigned "), 0, 1, 0, 0, 8))  # named "char"
    odd = b.add_str(b"caf\xc3\xa9_\xff")
    b.add(Struct(odd, 0, 1, (Member(uc + 3, i8, 0), Member(odd + 3, i8, 0))))
    b.add(Enum(odd + 4, 0, 4, (EnumValue(uc + 9, 1),)))
    b.add(FuncProto(0, 0, i8, (Param(odd + 1, i8),)))
    path = tmp_path / "names.btf"
    path.write_bytes(b.to_bytes())
    # (the kernel's rules, which our validator applies, want C identifiers here)
    parsed = Btf.parse(path.read_bytes(), validate=False)
    assert dump_raw(parsed) == bpftool_raw(path)
    assert "'char' size=1" in dump_raw(parsed)


def test_dump_name_offset_past_the_end_is_invalid() -> None:
    # Only reachable unvalidated (the validator rejects it first); bpftool's btf_str()
    # prints "(invalid)" for it, and so do we, on every line that names something.
    b = Btf()
    i32 = b.add(Int(b.add_str("int"), 0, 4, 1, 0, 32))
    x = b.add_str("x")
    b.add(Struct(x, 0, 4, (Member(x, i32, 0), Member(0, i32, 0))))
    b.add(FuncProto(0, 0, i32, (Param(x, i32),)))
    data = bytearray(b.to_bytes())
    past = len(b.strings) + 7
    # type section at 24: INT 16 bytes, STRUCT 12 + 2 * 12, FUNC_PROTO 12 + 8
    for at, off in ((40, past), (52, past), (88, past + 1)):
        struct.pack_into("<I", data, at, off)
    data = bytes(data)
    with pytest.raises(BtfError):
        Btf.parse(data)
    parsed = Btf.parse(data, validate=False)
    assert dump_raw(parsed).splitlines()[1:] == [
        "[2] STRUCT '(invalid)' size=4 vlen=2",
        "\t'(invalid)' type_id=1 bits_offset=0",
        "\t'(anon)' type_id=1 bits_offset=0",
        "[3] FUNC_PROTO '(anon)' ret_type_id=1 vlen=1",
        "\t'(invalid)' type_id=1",
    ]
    # the last NUL of the section is a valid, empty name
    assert "FLOAT '' size=8" in dump_raw(Btf.parse(_float_named_by_last_nul(),
                                                    validate=False))


def _float_named_by_last_nul() -> bytes:
    b = Btf()
    b.add(Int(b.add_str("int"), 0, 4, 1, 0, 32))
    b.add(Float(len(b.strings) - 1, 0, 8))
    return b.to_bytes()


def test_deferred_scan_is_the_same_btf(vmlinux_bytes: bytes) -> None:
    eager = Btf.parse(vmlinux_bytes, validate=False)
    lazy = Btf.parse(vmlinux_bytes, validate=False, defer_scan=True)
    assert not lazy.scanned and lazy.wire_words() == eager.wire_words()
    assert not lazy.scanned  # the words alone need no scan
    (ts,) = lazy.find("task_struct", Kind.STRUCT)
    assert lazy.scanned
    assert ts == eager.find("task_struct", Kind.STRUCT)[0]
    assert len(lazy) == len(eager) and lazy.type(ts) == eager.type(ts)
    assert lazy.to_bytes() == vmlinux_bytes
    # validation needs the records, so it never defers
    small = Btf()
    small.add(Int(small.add_str("int"), 0, 4, 1, 0, 32))
    assert Btf.parse(small.to_bytes(), defer_scan=True).scanned


def test_deferred_scan_reports_bad_records_on_first_use() -> None:
    data = bytearray(_all_kinds_btf().to_bytes())
    struct.pack_into("<I", data, 24 + 4, 0x1F << 24)  # first record: kind 31
    lazy = Btf.parse(bytes(data), validate=False, defer_scan=True)
    with pytest.raises(BtfError, match="unknown BTF kind 31") as err:
        len(lazy)
    assert err.value.code is ErrorCode.BTF_UNKNOWN_KIND


def test_replace_keeps_other_records_exact(vmlinux_bytes: bytes) -> None:
    btf = Btf.parse(vmlinux_bytes, validate=False)
    (ts,) = btf.find("task_struct", Kind.STRUCT)
    t = btf.type(ts)
    btf.replace(ts, Struct(t.name_off, t.kind_flag, t.size + 8, t.members))
    out = btf.to_bytes()
    assert len(out) == len(vmlinux_bytes)
    reparsed = Btf.parse(out, validate=False)
    assert reparsed.type(ts).size == t.size + 8
    assert reparsed.type(ts + 1) == Btf.parse(vmlinux_bytes, validate=False).type(ts + 1)


@pytest.mark.parametrize("cut", [0, 3, 10, 23])
def test_truncated_header_is_one_line_error(cut: int, vmlinux_bytes: bytes) -> None:
    with pytest.raises(BtfError) as exc:
        Btf.parse(vmlinux_bytes[:cut], source="cut.btf")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("cut.btf: ")


def test_plain_kind_numbers_are_the_kind_enum() -> None:
    from btfreconciled.btf import kinds

    for k in Kind:
        assert getattr(kinds, f"K_{k.name}") == k.value


def test_layout_table_is_uapi_btf_h() -> None:
    """Record sizes and id/string words as include/uapi/linux/btf.h spells them."""
    from btfreconciled.btf.layout import EXTRA_FIXED_WORDS, EXTRA_VLEN_WORDS, LAYOUT

    # u32 words after struct btf_type, and per vlen item (btf_member, btf_enum, btf_param,
    # btf_var_secinfo, btf_enum64 are 12, 8, 8, 12, 12 bytes; btf_array 12, btf_var and
    # btf_decl_tag 4, INT's u32 4)
    assert EXTRA_FIXED_WORDS == (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
    assert EXTRA_VLEN_WORDS == (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
    ids = {k.name: (LAYOUT[k].ids, LAYOUT[k].item_id) for k in LAYOUT}
    assert ids["ARRAY"] == ((3, 4), None)
    assert ids["STRUCT"] == ids["UNION"] == ((), 1)
    assert ids["FUNC_PROTO"] == ((2,), 1)
    assert ids["DATASEC"] == ((), 0)
    assert ids["FWD"] == ids["INT"] == ids["ENUM"] == ids["FLOAT"] == ids["ENUM64"] == ((), None)
    for k in ("PTR", "TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "FUNC", "VAR", "DECL_TAG",
              "TYPE_TAG"):
        assert ids[k] == ((2,), None)
    assert LAYOUT[Kind.FWD].iter_ids == (2,)  # libbpf's btf_field_iter quirk
    strs = {k.name: LAYOUT[k].item_str for k in LAYOUT if LAYOUT[k].item_words}
    assert strs == {"STRUCT": 0, "UNION": 0, "ENUM": 0, "FUNC_PROTO": 0, "DATASEC": None,
                    "ENUM64": 0}


def test_record_info_fields_and_kind_families() -> None:
    """record.py's accessors are BTF_INFO_KIND/VLEN/KFLAG, and its families libbpf's
    btf_is_composite and btf_is_mod (plus the typedef skip_mods_and_typedefs also skips)."""
    from btfreconciled.btf import record

    info = 1 << 31 | int(Kind.STRUCT) << 24 | 0xABCD
    assert (record.kind_of(info), record.vlen_of(info), record.kflag_of(info)) == (
        Kind.STRUCT, 0xABCD, 1)
    assert record.kind_of(0x1F << 24) == 31  # past the last kind: for the caller to refuse
    assert {k for k in Kind if record.is_composite(k)} == {Kind.STRUCT, Kind.UNION}
    mods = {Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPE_TAG}
    assert {k for k in Kind if record.is_modifier(k)} == mods
    assert mods | {Kind.TYPEDEF} == record.MODS_AND_TYPEDEF
    matchable = {Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.ENUM64, Kind.FWD, Kind.STRUCT, Kind.UNION}
    assert matchable == record.MATCHABLE_KINDS
    assert record.cstr(b"\0ab\0cd", 1) == b"ab"
    assert record.cstr(b"\0ab\0cd", 4) == b"cd"  # unterminated: to the end
