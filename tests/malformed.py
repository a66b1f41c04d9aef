"""A corpus of malformed BTF blobs, derived from one small valid BTF that uses every kind.

`valid_blob()` is the valid BTF. `hand_crafted()` yields one `Case` per rule we enforce (bad
header fields, broken sections, bad names, ids past the end, loops, bad members, ...),
`truncations()` every proper prefix of the valid blob, `bit_flips(n, seed)` n copies with one
or a few random bits flipped, `word_smashes(n, seed)` n copies with one type-section word
replaced by an interesting value. Every blob of the first two must be rejected; the random
ones may be valid, but must either parse or raise BtfError.

Run as a script to write the corpus to a directory: `python tests/malformed.py DIR`.
"""

from __future__ import annotations

import random
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from btfreconciled.btf.btf import Btf  # noqa: E402
from btfreconciled.btf.types import (  # noqa: E402
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
    Type,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarSecinfo,
    Volatile,
)
from btfreconciled.errors import ErrorCode  # noqa: E402

HDR = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off type_len str_off str_len


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    # a fragment the error message must contain (None: any BtfError will do)
    expect: str | None = None


# The failure class (BtfError.code) of the cases that have one of their own, by case name;
# every other case is ErrorCode.BTF_INVALID: what else the verifier rejects.
CODES: dict[str, ErrorCode] = {
    # btf-bad-magic
    'bad magic': ErrorCode.BTF_BAD_MAGIC,
    'zero magic': ErrorCode.BTF_BAD_MAGIC,
    # btf-bad-header
    'bad version': ErrorCode.BTF_BAD_HEADER,
    'nonzero flags': ErrorCode.BTF_BAD_HEADER,
    'hdr_len below 24': ErrorCode.BTF_BAD_HEADER,
    'extended header not zero': ErrorCode.BTF_BAD_HEADER,
    'layout section misaligned': ErrorCode.BTF_BAD_HEADER,
    'layout length not a multiple of 4': ErrorCode.BTF_BAD_HEADER,
    'gap between types and layout': ErrorCode.BTF_BAD_HEADER,
    'layout section overlapping the types': ErrorCode.BTF_BAD_HEADER,
    'gap between layout and strings': ErrorCode.BTF_BAD_HEADER,
    'layout section past the end': ErrorCode.BTF_BAD_HEADER,
    'layout section after the strings': ErrorCode.BTF_BAD_HEADER,
    'sections overlap': ErrorCode.BTF_BAD_HEADER,
    'gap between sections': ErrorCode.BTF_BAD_HEADER,
    'trailing data after strings': ErrorCode.BTF_BAD_HEADER,
    'strings shorter than the data': ErrorCode.BTF_BAD_HEADER,
    'type_len not a multiple of 4': ErrorCode.BTF_BAD_HEADER,
    'type section misaligned': ErrorCode.BTF_BAD_HEADER,
    'strings before types': ErrorCode.BTF_BAD_HEADER,
    'other byte order with a 32-byte header': ErrorCode.BTF_BAD_HEADER,
    # btf-truncated
    'hdr_len past the end': ErrorCode.BTF_TRUNCATED,
    'hdr_len huge': ErrorCode.BTF_TRUNCATED,
    'string section past the end': ErrorCode.BTF_TRUNCATED,
    'record header cut': ErrorCode.BTF_TRUNCATED,
    # btf-bad-strings
    'unterminated string section': ErrorCode.BTF_BAD_STRINGS,
    'string section without leading NUL': ErrorCode.BTF_BAD_STRINGS,
    'empty string section': ErrorCode.BTF_BAD_STRINGS,
    'header only': ErrorCode.BTF_BAD_STRINGS,
    'type name offset past the end': ErrorCode.BTF_BAD_STRINGS,
    'member name offset past the end': ErrorCode.BTF_BAD_STRINGS,
    'param name offset past the end': ErrorCode.BTF_BAD_STRINGS,
    'enumerator name offset past the end': ErrorCode.BTF_BAD_STRINGS,
    'INT name offset past the end': ErrorCode.BTF_BAD_STRINGS,
    # btf-unknown-kind
    'unknown kind 20': ErrorCode.BTF_UNKNOWN_KIND,
    'kind 0': ErrorCode.BTF_UNKNOWN_KIND,
    # btf-record-overrun
    'vlen overflow (struct)': ErrorCode.BTF_RECORD_OVERRUN,
    'vlen overflow (proto)': ErrorCode.BTF_RECORD_OVERRUN,
    # btf-bad-type-id
    'member type past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'PTR target past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'TYPEDEF target past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'ARRAY element past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'ARRAY index past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'param type past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'return type past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'FUNC type past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'VAR type past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'DATASEC entry past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'DECL_TAG target past the end': ErrorCode.BTF_BAD_TYPE_ID,
    'TYPE_TAG target one past the end': ErrorCode.BTF_BAD_TYPE_ID,
    # btf-loop
    'reference loop CONST -> TYPEDEF -> CONST': ErrorCode.BTF_LOOP,
    'TYPEDEF to itself': ErrorCode.BTF_LOOP,
    'pointer loop PTR -> VOLATILE -> PTR': ErrorCode.BTF_LOOP,
    'struct containing itself through an array': ErrorCode.BTF_LOOP,
    'struct containing itself through a typedef': ErrorCode.BTF_LOOP,
    'struct and union containing each other': ErrorCode.BTF_LOOP,
    'struct containing itself through a const seen first from a pointer': ErrorCode.BTF_LOOP,
}


def code_of(case: Case) -> ErrorCode:
    return CODES.get(case.name, ErrorCode.BTF_INVALID)


class Built:
    """The valid BTF, with its type ids by name, for mutators to edit."""

    def __init__(self) -> None:
        b = self.btf = Btf()
        s = self.s = b.add_str
        ids = self.ids = {}
        ids["int"] = b.add(Int(s("int"), 0, 4, 1, 0, 32))
        ids["uint"] = b.add(Int(s("unsigned int"), 0, 4, 0, 0, 32))
        ids["char"] = b.add(Int(s("char"), 0, 1, 2, 0, 8))
        ids["long"] = b.add(Int(s("long"), 0, 8, 1, 0, 64))
        ids["bool"] = b.add(Int(s("_Bool"), 0, 1, 4, 0, 8))
        ids["double"] = b.add(Float(s("double"), 0, 8))
        ids["fwd"] = b.add(Fwd(s("opaque"), 0))
        ids["fwd_union"] = b.add(Fwd(s("opaque_u"), 1))
        ids["u32"] = b.add(Typedef(s("u32"), 0, ids["uint"]))
        ids["vint"] = b.add(Volatile(0, 0, ids["int"]))
        ids["cchar"] = b.add(Const(0, 0, ids["char"]))
        ids["pcchar"] = b.add(Ptr(0, 0, ids["cchar"]))
        ids["rpcchar"] = b.add(Restrict(0, 0, ids["pcchar"]))
        ids["pvoid"] = b.add(Ptr(0, 0, 0))
        ids["pfwd"] = b.add(Ptr(0, 0, ids["fwd"]))
        ids["tag"] = b.add(TypeTag(s("user"), 0, ids["int"]))
        ids["ptag"] = b.add(Ptr(0, 0, ids["tag"]))
        ids["carr"] = b.add(Array(0, 0, ids["char"], ids["int"], 16))
        ids["color"] = b.add(Enum(s("color"), 0, 4, (EnumValue(s("RED"), 0),
                                                     EnumValue(s("GREEN"), 1))))
        ids["small_enum"] = b.add(Enum(s("small"), 1, 1, (EnumValue(s("NEG"), 0xFFFFFFFF),)))
        ids["big"] = b.add(Enum64(s("big"), 0, 8, (EnumValue(s("HUGE_VAL"), 1 << 40),)))
        # struct foo { int a; u32 b; struct foo *next; char name[16]; enum color c;
        #              double d; const char *restrict s; void *p; };
        ids["foo"] = foo = b.add(Struct(s("foo"), 0, 64, ()))
        ids["pfoo"] = b.add(Ptr(0, 0, foo))
        b.replace(foo, Struct(s("foo"), 0, 64, (
            Member(s("a"), ids["int"], 0),
            Member(s("b"), ids["u32"], 32),
            Member(s("next"), ids["pfoo"], 64),
            Member(s("name"), ids["carr"], 128),
            Member(s("c"), ids["color"], 256),
            Member(s("d"), ids["double"], 320),
            Member(s("s"), ids["rpcchar"], 384),
            Member(s("p"), ids["pvoid"], 448),
        )))
        # struct flags { unsigned int x:3, y:5; char z; enum small e:4; struct foo *f; }
        ids["flags"] = b.add(Struct(s("flags"), 1, 16, (
            Member(s("x"), ids["uint"], (3 << 24) | 0),
            Member(s("y"), ids["uint"], (5 << 24) | 3),
            Member(s("z"), ids["char"], 8),
            Member(s("e"), ids["small_enum"], (4 << 24) | 16),
            Member(s("f"), ids["pfoo"], 64),
        )))
        ids["u"] = b.add(Union(s("u"), 0, 8, (Member(s("i"), ids["int"], 0),
                                             Member(s("l"), ids["long"], 0),
                                             Member(0, ids["pfoo"], 0))))
        ids["proto"] = b.add(FuncProto(0, 0, ids["int"], (Param(s("f"), ids["pfoo"]),
                                                          Param(s("n"), ids["long"]))))
        ids["vproto"] = b.add(FuncProto(0, 0, 0, (Param(s("fmt"), ids["pcchar"]),
                                                  Param(0, 0))))
        ids["anon_proto"] = b.add(FuncProto(0, 0, ids["int"], (Param(0, ids["int"]),)))
        ids["pproto"] = b.add(Ptr(0, 0, ids["anon_proto"]))
        ids["func"] = b.add(Func(s("frob"), 0, ids["proto"], 1))
        ids["vfunc"] = b.add(Func(s("log_it"), 0, ids["vproto"], 0))
        ids["var"] = b.add(Var(s("counter"), 0, ids["int"], 1))
        ids["var2"] = b.add(Var(s("table"), 0, ids["carr"], 0))
        ids["sec"] = b.add(Datasec(s(".data"), 0, 32, (VarSecinfo(ids["var"], 0, 4),
                                                      VarSecinfo(ids["var2"], 8, 16))))
        ids["dtag"] = b.add(DeclTag(s("kfunc"), 0, ids["func"], -1))
        ids["dtag_arg"] = b.add(DeclTag(s("nonnull"), 0, ids["func"], 0))
        ids["dtag_member"] = b.add(DeclTag(s("rcu"), 0, ids["foo"], 2))
        ids["dtag_var"] = b.add(DeclTag(s("percpu"), 0, ids["var"], -1))
        ids["vla"] = b.add(Struct(s("with_vla"), 0, 8, (
            Member(s("len"), ids["long"], 0),
            Member(s("data"), b.add(Array(0, 0, ids["int"], ids["int"], 0)), 64),
        )))

    def get(self, name: str) -> Type:
        return self.btf.type(self.ids[name])

    def blob(self) -> bytes:
        return self.btf.to_bytes()


def valid_btf() -> Btf:
    return Built().btf


def valid_blob() -> bytes:
    return Built().blob()


# ---------------------------------------------------------------- raw edits
def header(data: bytes) -> list[int]:
    return list(HDR.unpack_from(data))


def with_header(data: bytes, **fields: int) -> bytes:
    names = ("magic", "version", "flags", "hdr_len", "type_off", "type_len", "str_off",
             "str_len")
    h = dict(zip(names, HDR.unpack_from(data), strict=True))
    h.update(fields)
    return HDR.pack(*(h[n] for n in names)) + data[HDR.size:]


# libbpf 1.8's kind layout table (struct btf_layout {u8 info_sz, elem_sz; u16 flags} by kind)
LIBBPF_LAYOUTS = bytes(b for info, elem in (
    (0, 0), (4, 0), (0, 0), (12, 0), (0, 12), (0, 12), (0, 8), (0, 0), (0, 0), (0, 0),
    (0, 0), (0, 0), (0, 0), (0, 8), (4, 0), (0, 12), (0, 0), (4, 0), (0, 0), (0, 12),
) for b in (info, elem, 0, 0))


def with_layout(data: bytes, layout: bytes = LIBBPF_LAYOUTS, **fields: int) -> bytes:
    """`data` (a 24-byte-header BTF) with the 32-byte header of Linux 7.x and a kind layout
    section between types and strings, as libbpf 1.8 writes it; `fields` override header
    fields (the eight of HDR plus layout_off, layout_len) after that."""
    h = header(data)
    hdr_len, type_len, str_off = h[3], h[5], h[6]
    assert hdr_len == 24
    names = ("magic", "version", "flags", "hdr_len", "type_off", "type_len", "str_off",
             "str_len", "layout_off", "layout_len")
    vals = dict(zip(names, [*h[:3], 32, 0, type_len, type_len + len(layout), h[7], type_len,
                            len(layout)], strict=True))
    vals.update(fields)
    return (struct.pack("<HBBIIIIIII", *(vals[n] for n in names))
            + data[hdr_len:hdr_len + type_len] + layout + data[hdr_len + str_off:])


def _layout_after_strings(data: bytes) -> bytes:
    """Types, strings (NUL-padded to 4 bytes), then the layout section: contiguous."""
    h = header(data)
    hdr_len, type_len, str_off, str_len = h[3], h[5], h[6], h[7]
    strs = data[hdr_len + str_off:hdr_len + str_off + str_len]
    strs += b"\0" * (-len(strs) % 4)
    return (struct.pack("<HBBIIIIIII", *h[:3], 32, 0, type_len, type_len, len(strs),
                        type_len + len(strs), len(LIBBPF_LAYOUTS))
            + data[hdr_len:hdr_len + type_len] + strs + LIBBPF_LAYOUTS)


def type_words(data: bytes) -> array:
    h = header(data)
    words = array("I")
    words.frombytes(data[h[3] + h[4]: h[3] + h[4] + h[5]])
    return words


def with_type_words(data: bytes, words: array) -> bytes:
    h = header(data)
    start = h[3] + h[4]
    return data[:start] + words.tobytes() + data[start + h[5]:]


def edit(mutate: Callable[[Built], None]) -> bytes:
    b = Built()
    mutate(b)
    return b.blob()


def _replace(name: str, make: Callable[[Built, Type], Type]) -> Callable[[Built], None]:
    def mutate(b: Built) -> None:
        b.btf.replace(b.ids[name], make(b, b.get(name)))
    return mutate


def _members(b: Built, name: str, index: int, **changes: int) -> Type:
    t = b.get(name)
    ms = list(t.members)
    m = ms[index]
    ms[index] = Member(changes.get("name_off", m.name_off), changes.get("type", m.type),
                       changes.get("offset", m.offset))
    return type(t)(t.name_off, changes.get("kind_flag", t.kind_flag),
                   changes.get("size", t.size), tuple(ms))


def _append(make: Callable[[Built], None]) -> Callable[[Built], None]:
    return make


def hand_crafted() -> Iterator[Case]:  # noqa: C901 (a list of cases)
    good = valid_blob()
    h = header(good)
    hdr_len, type_len, str_off, str_len = h[3], h[5], h[6], h[7]
    size = len(good)
    far = 999999

    # ---- header and sections
    yield Case("bad magic", b"\x9f\xea" + good[2:], "magic")
    yield Case("zero magic", b"\0\0" + good[2:], "magic")
    yield Case("bad version", with_header(good, version=2), "version")
    yield Case("nonzero flags", with_header(good, flags=1), "flags")
    yield Case("hdr_len past the end", with_header(good, hdr_len=size + 1), "hdr_len")
    yield Case("hdr_len huge", with_header(good, hdr_len=0xFFFFFFF0), "hdr_len")
    yield Case("hdr_len below 24", with_header(good, hdr_len=16), "hdr_len")
    # Linux 7.x reads 32 header bytes (layout_off, layout_len); anything past them must be 0
    yield Case("extended header not zero",
               with_header(good[:24], hdr_len=40) + b"\0" * 8 + b"\1" + b"\0" * 7 + good[24:],
               "header at 32")
    # ---- the kind layout section (Linux 7.x, libbpf 1.8)
    tl = type_len
    yield Case("layout section misaligned", with_layout(good, layout_off=tl + 2), "aligned")
    yield Case("layout length not a multiple of 4",
               with_layout(good, LIBBPF_LAYOUTS[:-2], str_off=tl + len(LIBBPF_LAYOUTS) - 2),
               "multiple of 4")
    yield Case("gap between types and layout",
               with_layout(good, b"\0" * 4 + LIBBPF_LAYOUTS, layout_off=tl + 4,
                           layout_len=len(LIBBPF_LAYOUTS)), "layout section at")
    yield Case("layout section overlapping the types",
               with_layout(good, layout_off=tl - 4), "layout section at")
    yield Case("gap between layout and strings",
               with_layout(good, LIBBPF_LAYOUTS + b"\0" * 4, layout_len=len(LIBBPF_LAYOUTS)),
               "does not follow the layout")
    yield Case("layout section past the end",
               with_layout(good, layout_len=len(LIBBPF_LAYOUTS) + 4), "layout")
    # the 7.x kernel would take this order (no gaps), libbpf 1.8 not: types, layout, strings
    yield Case("layout section after the strings", _layout_after_strings(good),
               "layout section at")
    yield Case("sections overlap", with_header(good, str_off=type_len - 4,
                                               str_len=str_len + 4))
    yield Case("gap between sections", with_header(good[:hdr_len + type_len], str_off=type_len + 4)
               + b"\0" * 4 + good[hdr_len + str_off:])
    yield Case("trailing data after strings", good + b"\0\0\0\0")
    yield Case("strings shorter than the data", with_header(good, str_len=str_len - 4))
    yield Case("string section past the end", with_header(good, str_len=str_len + 4))
    yield Case("type_len not a multiple of 4",
               with_header(good, type_len=type_len - 2, str_off=str_off - 2,
                           str_len=str_len + 2))
    yield Case("type section misaligned", with_header(good, type_off=2))
    yield Case("strings before types", with_header(good, type_off=str_len, str_off=0))
    yield Case("unterminated string section", good[:-1] + b"x", "NUL")
    yield Case("string section without leading NUL",
               good[:hdr_len + str_off] + b"x" + good[hdr_len + str_off + 1:], "NUL")
    yield Case("empty string section", with_header(good[:hdr_len + type_len], str_len=0))
    yield Case("header only", with_header(good[:24], type_len=0, str_off=0, str_len=0))
    yield Case("record header cut", with_header(good, type_len=type_len + 4,
                                                str_off=str_off + 4)[:hdr_len + type_len]
               + b"\x01\0\0\0" + good[hdr_len + type_len:])

    # ---- info word
    def info_edit(name: str, new_info: Callable[[int], int]) -> bytes:
        b = Built()
        tid = b.ids[name]
        data = b.blob()
        words = type_words(data)
        parsed = Btf.parse(data, validate=False)
        off = parsed._offs[tid - 1]
        words[off + 1] = new_info(words[off + 1])
        return with_type_words(data, words)

    yield Case("unknown kind 20", info_edit("int", lambda i: (i & ~0x1F000000) | 20 << 24))
    yield Case("kind 0", info_edit("int", lambda i: i & ~0x1F000000))
    yield Case("info reserved bits", info_edit("int", lambda i: i | 0x00010000 << 4), "info")
    yield Case("info bit 30", info_edit("pfoo", lambda i: i | 1 << 30), "info")
    yield Case("INT with kind_flag", info_edit("int", lambda i: i | 1 << 31), "kind_flag")
    yield Case("PTR with vlen", info_edit("pfoo", lambda i: i | 1), "vlen")
    yield Case("FUNC extern linkage", info_edit("func", lambda i: (i & ~0xFFFF) | 2), "linkage")
    yield Case("FUNC_PROTO kind_flag", info_edit("proto", lambda i: i | 1 << 31), "kind_flag")
    yield Case("ARRAY with vlen", info_edit("carr", lambda i: i | 1), "vlen")
    yield Case("vlen overflow (struct)", info_edit("vla", lambda i: (i & ~0xFFFF) | 0xFFFF))
    yield Case("vlen overflow (proto)", info_edit("proto", lambda i: (i & ~0xFFFF) | 999))

    # ---- names
    past = str_len + 10
    yield Case("type name offset past the end",
               edit(_replace("foo", lambda b, t: Struct(past, 0, t.size, t.members))),
               "name offset")
    yield Case("member name offset past the end",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 3, name_off=past))),
               "name offset")
    yield Case("param name offset past the end",
               edit(_replace("proto", lambda b, t: FuncProto(0, 0, t.ret_type, (
                   Param(past, t.params[0].type), t.params[1])))), "name offset")
    yield Case("enumerator name offset past the end",
               edit(_replace("color", lambda b, t: Enum(t.name_off, 0, 4, (
                   EnumValue(past, 0),)))), "name offset")
    yield Case("INT name offset past the end",
               edit(_replace("int", lambda b, t: Int(past, 0, 4, 1, 0, 32))), "name offset")
    yield Case("FWD without name", edit(_replace("fwd", lambda b, t: Fwd(0, 0))), "name")
    yield Case("TYPEDEF without name",
               edit(_replace("u32", lambda b, t: Typedef(0, 0, t.type))), "name")
    yield Case("FUNC without name",
               edit(_replace("func", lambda b, t: Func(0, 0, t.type, 1))), "name")
    yield Case("VAR without name", edit(_replace("var", lambda b, t: Var(0, 0, t.type, 1))))
    yield Case("enumerator without name",
               edit(_replace("color", lambda b, t: Enum(t.name_off, 0, 4, (
                   EnumValue(0, 0),)))), "name")
    yield Case("PTR with a name",
               edit(_replace("pfoo", lambda b, t: Ptr(b.s("p"), 0, t.type))), "anonymous")
    yield Case("ARRAY with a name", edit(_replace("carr", lambda b, t: Array(
        b.s("arr"), 0, t.type, t.index_type, t.nelems))), "anonymous")
    yield Case("CONST with a name",
               edit(_replace("cchar", lambda b, t: Const(b.s("c"), 0, t.type))), "anonymous")
    yield Case("FUNC_PROTO with a name", edit(_replace("proto", lambda b, t: FuncProto(
        b.s("proto"), 0, t.ret_type, t.params))), "anonymous")
    for label, name in (("digit first", "1abc"), ("dash", "a-b"), ("space", "with space"),
                        ("empty", ""), ("too long", "x" * 513), ("control char", "a\x01"),
                        ("non-ASCII UTF-8", "caf\u00e9")):
        yield Case(f"struct name: {label}", edit(_replace(
            "foo", lambda b, t, n=name: Struct(b.s(n) if n else b.s("zz") + 2, 0, t.size,
                                              t.members))), "invalid name")
    yield Case("member name with a dash",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 1, name_off=b.s("b-x")))),
               "invalid name")
    yield Case("param name starting with a digit", edit(_replace("proto", lambda b, t: FuncProto(
        0, 0, t.ret_type, (Param(b.s("0f"), t.params[0].type), t.params[1])))), "invalid name")
    yield Case("FUNC name with a colon",
               edit(_replace("func", lambda b, t: Func(b.s("a::b"), 0, t.type, 1))),
               "invalid name")
    yield Case("enumerator name with a space", edit(_replace("color", lambda b, t: Enum(
        t.name_off, 0, 4, (EnumValue(b.s("RED ONE"), 0),)))), "invalid name")
    yield Case("name offset into the middle of a bad string", edit(_replace(
        "foo", lambda b, t: Struct(b.s("ok name") + 1, 0, t.size, t.members))), "invalid name")
    yield Case("DATASEC name empty", edit(_replace("sec", lambda b, t: Datasec(
        0, 0, t.size, t.secinfos))), "section name")
    yield Case("DATASEC name unprintable", edit(_replace("sec", lambda b, t: Datasec(
        b.s(".da\tta"), 0, t.size, t.secinfos))), "section name")
    yield Case("TYPE_TAG without name",
               edit(_replace("tag", lambda b, t: TypeTag(0, 0, t.type))), "name")
    yield Case("DECL_TAG without value",
               edit(_replace("dtag", lambda b, t: DeclTag(0, 0, t.type, -1))), "value")

    # ---- type ids past the end (and void where it is not allowed)
    yield Case("member type past the end",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 2, type=far))),
               "refers to type [999999]")
    yield Case("member of type void",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 2, type=0))), "void")
    yield Case("PTR target past the end",
               edit(_replace("pfoo", lambda b, t: Ptr(0, 0, far))), "refers to type")
    yield Case("TYPEDEF target past the end",
               edit(_replace("u32", lambda b, t: Typedef(t.name_off, 0, far))), "refers to type")
    yield Case("ARRAY element past the end", edit(_replace("carr", lambda b, t: Array(
        0, 0, far, t.index_type, 16))), "refers to type")
    yield Case("ARRAY index past the end", edit(_replace("carr", lambda b, t: Array(
        0, 0, t.type, far, 16))), "refers to type")
    yield Case("ARRAY of void", edit(_replace("carr", lambda b, t: Array(
        0, 0, 0, t.index_type, 16))), "void")
    yield Case("ARRAY index void", edit(_replace("carr", lambda b, t: Array(
        0, 0, t.type, 0, 16))), "void")
    yield Case("param type past the end", edit(_replace("proto", lambda b, t: FuncProto(
        0, 0, t.ret_type, (Param(t.params[0].name_off, far), t.params[1])))), "refers to type")
    yield Case("return type past the end", edit(_replace("proto", lambda b, t: FuncProto(
        0, 0, far, t.params))), "refers to type")
    yield Case("FUNC type past the end",
               edit(_replace("func", lambda b, t: Func(t.name_off, 0, far, 1))), "refers to type")
    yield Case("VAR type past the end",
               edit(_replace("var", lambda b, t: Var(t.name_off, 0, far, 1))), "refers to type")
    yield Case("VAR of void", edit(_replace("var", lambda b, t: Var(t.name_off, 0, 0, 1))),
               "void")
    yield Case("DATASEC entry past the end", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (VarSecinfo(far, 0, 4), t.secinfos[1])))), "refers to type")
    yield Case("DECL_TAG target past the end", edit(_replace("dtag", lambda b, t: DeclTag(
        t.name_off, 0, far, -1))), "refers to type")
    yield Case("TYPE_TAG target one past the end", edit(lambda b: b.btf.replace(
        b.ids["tag"], TypeTag(b.get("tag").name_off, 0, b.btf.type_count))), "refers to type")

    # ---- reference loops
    def const_typedef_loop(b: Built) -> None:
        c = b.btf.add(Const(0, 0, b.btf.type_count + 1))
        b.btf.add(Typedef(b.s("loop_t"), 0, c))
    yield Case("reference loop CONST -> TYPEDEF -> CONST", edit(const_typedef_loop), "loop")
    yield Case("TYPEDEF to itself", edit(lambda b: b.btf.add(
        Typedef(b.s("self_t"), 0, b.btf.type_count))), "loop")

    def ptr_loop(b: Built) -> None:
        p = b.btf.add(Ptr(0, 0, b.btf.type_count + 1))
        b.btf.add(Volatile(0, 0, p))
    yield Case("pointer loop PTR -> VOLATILE -> PTR", edit(ptr_loop), "loop")

    def struct_in_itself_via_array(b: Built) -> None:
        sid = b.btf.type_count
        arr = sid + 1
        b.btf.add(Struct(b.s("selfish"), 0, 16, (Member(b.s("kids"), arr, 0),)))
        b.btf.add(Array(0, 0, sid, b.ids["int"], 2))
    yield Case("struct containing itself through an array", edit(struct_in_itself_via_array),
               "contains itself")

    def struct_in_itself_via_typedef(b: Built) -> None:
        sid = b.btf.type_count
        b.btf.add(Struct(b.s("outer"), 0, 8, (Member(b.s("o"), sid + 1, 0),)))
        b.btf.add(Typedef(b.s("outer_t"), 0, sid))
    yield Case("struct containing itself through a typedef", edit(struct_in_itself_via_typedef),
               "contains itself")

    def mutual_structs(b: Built) -> None:
        a = b.btf.type_count
        b.btf.add(Struct(b.s("A"), 0, 8, (Member(b.s("b"), a + 1, 0),)))
        b.btf.add(Union(b.s("B"), 0, 8, (Member(b.s("a"), a, 0),)))
    yield Case("struct and union containing each other", edit(mutual_structs), "contains itself")

    def ptr_after_struct_then_self(b: Built) -> None:
        # the kernel misses this one when the PTR comes first; we do not
        p = b.btf.type_count
        b.btf.add(Ptr(0, 0, p + 1))
        b.btf.add(Const(0, 0, p + 2))
        b.btf.add(Struct(b.s("sneaky"), 0, 8, (Member(b.s("me"), p + 1, 0),)))
    yield Case("struct containing itself through a const seen first from a pointer",
               edit(ptr_after_struct_then_self), "contains itself")

    def long_chain(b: Built) -> None:
        prev = b.ids["int"]
        for _ in range(33):
            prev = b.btf.add(Const(0, 0, prev))
    yield Case("modifier chain of 33", edit(long_chain), "chain")

    # ---- what references may point at
    yield Case("DATASEC entry is an INT", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (VarSecinfo(b.ids["int"], 0, 4), t.secinfos[1])))), "not a VAR")
    yield Case("DATASEC entry is a FUNC", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (VarSecinfo(b.ids["func"], 0, 4), t.secinfos[1])))), "not a VAR")
    yield Case("FUNC type is an INT",
               edit(_replace("func", lambda b, t: Func(t.name_off, 0, b.ids["int"], 1))),
               "not a FUNC_PROTO")
    yield Case("FUNC type is a PTR to a proto",
               edit(_replace("func", lambda b, t: Func(t.name_off, 0, b.ids["pproto"], 1))),
               "not a FUNC_PROTO")
    yield Case("FUNC of a proto with an unnamed parameter", edit(_replace(
        "func", lambda b, t: Func(t.name_off, 0, b.ids["anon_proto"], 1))), "unnamed")
    yield Case("PTR to a FUNC", edit(_replace("pfoo", lambda b, t: Ptr(0, 0, b.ids["func"]))),
               "points to")
    yield Case("TYPEDEF of a FUNC", edit(lambda b: b.btf.add(
        Typedef(b.s("frob_t"), 0, b.ids["func"]))), "points to")
    yield Case("CONST of a VAR",
               edit(_replace("cchar", lambda b, t: Const(0, 0, b.ids["var"]))), "points to")
    yield Case("TYPEDEF of a DATASEC", edit(_replace(
        "u32", lambda b, t: Typedef(t.name_off, 0, b.ids["sec"]))), "points to")
    yield Case("member of FWD type",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 0, type=b.ids["fwd"]))),
               "without a size")
    yield Case("member of FUNC_PROTO type", edit(_replace(
        "foo", lambda b, t: _members(b, "foo", 0, type=b.ids["proto"]))), "without a size")
    yield Case("member of VAR type",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 0, type=b.ids["var"]))),
               "without a size")

    def member_typedef_fwd(b: Built) -> None:
        td = b.btf.add(Typedef(b.s("opaque_t"), 0, b.ids["fwd"]))
        b.btf.replace(b.ids["foo"], _members(b, "foo", 0, type=td))
    yield Case("member of a typedef of a FWD", edit(member_typedef_fwd), "without a size")
    yield Case("ARRAY of FWD", edit(_replace("carr", lambda b, t: Array(
        0, 0, b.ids["fwd"], t.index_type, 16))), "no size")
    yield Case("ARRAY index is a struct", edit(_replace("carr", lambda b, t: Array(
        0, 0, t.type, b.ids["foo"], 16))), "index")
    yield Case("ARRAY index is a pointer", edit(_replace("carr", lambda b, t: Array(
        0, 0, t.type, b.ids["pfoo"], 16))), "index")
    yield Case("ARRAY of 4-bit ints", edit(lambda b: b.btf.replace(b.ids["carr"], Array(
        0, 0, b.btf.add(Int(b.s("nibble"), 0, 1, 0, 0, 4)), b.ids["int"], 16))), "bitfield")
    yield Case("ARRAY larger than 4 GiB", edit(_replace("carr", lambda b, t: Array(
        0, 0, b.ids["long"], t.index_type, 0x80000000))), "4 GiB")
    yield Case("VAR of FUNC", edit(_replace("var", lambda b, t: Var(
        t.name_off, 0, b.ids["func"], 1))), "no size")
    yield Case("VAR of FWD", edit(_replace("var", lambda b, t: Var(
        t.name_off, 0, b.ids["fwd"], 1))), "no size")
    yield Case("return type FUNC_PROTO", edit(_replace("proto", lambda b, t: FuncProto(
        0, 0, b.ids["anon_proto"], t.params))), "no size")
    yield Case("param of FWD", edit(_replace("proto", lambda b, t: FuncProto(
        0, 0, t.ret_type, (Param(t.params[0].name_off, b.ids["fwd"]), t.params[1])))),
        "no size")
    yield Case("void parameter in the middle", edit(_replace("proto", lambda b, t: FuncProto(
        0, 0, t.ret_type, (Param(0, 0), t.params[1])))), "void")
    yield Case("named vararg", edit(_replace("vproto", lambda b, t: FuncProto(
        0, 0, 0, (t.params[0], Param(b.s("rest"), 0))))), "vararg")
    yield Case("DECL_TAG on an INT", edit(_replace("dtag", lambda b, t: DeclTag(
        t.name_off, 0, b.ids["int"], -1))), "tagged")
    yield Case("DECL_TAG component past the params", edit(_replace("dtag_arg", lambda b, t: DeclTag(
        t.name_off, 0, t.type, 2))), "component_idx")
    yield Case("DECL_TAG component past the members", edit(_replace(
        "dtag_member", lambda b, t: DeclTag(t.name_off, 0, t.type, 8))), "component_idx")
    yield Case("DECL_TAG component on a VAR", edit(_replace("dtag_var", lambda b, t: DeclTag(
        t.name_off, 0, t.type, 0))), "component_idx")
    yield Case("DECL_TAG component_idx -2", edit(_replace("dtag", lambda b, t: DeclTag(
        t.name_off, 0, t.type, -2))), "component_idx")

    def tag_after_const(b: Built) -> None:
        b.btf.replace(b.ids["cchar"], Const(0, 0, b.ids["tag"]))
    yield Case("TYPE_TAG after a CONST", edit(tag_after_const), "TYPE_TAG")

    # ---- per-kind rules
    yield Case("INT with 129 bits", edit(_replace("int", lambda b, t: Int(
        t.name_off, 0, 17, 0, 0, 129))), "128")
    yield Case("INT bits beyond its size", edit(_replace("int", lambda b, t: Int(
        t.name_off, 0, 4, 1, 0, 33))), "size")
    yield Case("INT bit offset beyond its size", edit(_replace("int", lambda b, t: Int(
        t.name_off, 0, 4, 1, 8, 32))), "size")
    yield Case("INT signed char encoding", edit(_replace("int", lambda b, t: Int(
        t.name_off, 0, 4, 3, 0, 32))), "encoding")
    yield Case("INT encoding 8", edit(_replace("int", lambda b, t: Int(
        t.name_off, 0, 4, 8, 0, 32))), "encoding")
    yield Case("INT reserved data bits", edit(_replace("int", lambda b, t: Int(
        t.name_off, 0, 4, 0x10 | 1, 0, 32))))
    yield Case("ENUM of size 3", edit(_replace("color", lambda b, t: Enum(
        t.name_off, 0, 3, t.values))), "size")
    yield Case("ENUM of size 16", edit(_replace("color", lambda b, t: Enum(
        t.name_off, 0, 16, t.values))), "size")
    yield Case("ENUM64 of size 0", edit(_replace("big", lambda b, t: Enum64(
        t.name_off, 0, 0, t.values))), "size")
    yield Case("FLOAT of size 3", edit(_replace("double", lambda b, t: Float(
        t.name_off, 0, 3))), "size")
    yield Case("FWD with a size", edit(_replace("fwd", lambda b, t: Fwd(t.name_off, 0, 8))),
               "must be 0")
    yield Case("ARRAY with a size word", edit(_patch_array_size), "size word")
    yield Case("VAR linkage extern", edit(_replace("var", lambda b, t: Var(
        t.name_off, 0, t.type, 2))), "linkage")
    yield Case("DATASEC of size 0", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, 0, ()))), "size 0")
    yield Case("DATASEC entries overlap", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (t.secinfos[0], VarSecinfo(t.secinfos[1].type, 2, 16))))),
        "overlaps")
    yield Case("DATASEC entries out of order", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (t.secinfos[1], t.secinfos[0])))), "overlaps")
    yield Case("DATASEC entry past its end", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (t.secinfos[0], VarSecinfo(t.secinfos[1].type, 24, 16))))))
    yield Case("DATASEC entry of size 0", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (VarSecinfo(t.secinfos[0].type, 0, 0), t.secinfos[1])))),
        "size")
    yield Case("DATASEC entry smaller than its VAR", edit(_replace("sec", lambda b, t: Datasec(
        t.name_off, 0, t.size, (t.secinfos[0], VarSecinfo(t.secinfos[1].type, 8, 8))))),
        "needs")

    # ---- members
    yield Case("member offsets go backwards",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 3, offset=16))), "before")
    yield Case("member past the end of the struct",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 7, offset=512))), "end")
    yield Case("member starts past the struct",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 7, offset=8000))))
    yield Case("struct too small for its last member",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 0, size=60))), "end")
    yield Case("pointer member not byte aligned",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 2, offset=65))), "aligned")
    yield Case("enum member not byte aligned",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 4, offset=257))), "aligned")
    yield Case("float member misaligned",
               edit(_replace("foo", lambda b, t: _members(b, "foo", 5, offset=296))), "aligned")
    yield Case("union member at nonzero offset",
               edit(_replace("u", lambda b, t: _members(b, "u", 1, offset=8))), "union")
    yield Case("bitfield wider than its int",
               edit(_replace("flags", lambda b, t: _members(b, "flags", 0, offset=(33 << 24)))),
               "bitfield")
    yield Case("bitfield on a pointer", edit(_replace(
        "flags", lambda b, t: _members(b, "flags", 4, offset=(8 << 24) | 64))), "bitfield")
    yield Case("enum bitfield wider than 32", edit(_replace(
        "flags", lambda b, t: _members(b, "flags", 3, offset=(33 << 24) | 16))), "bitfield")
    yield Case("kind_flag enum member needs 4 bytes", edit(_replace(
        "flags", lambda b, t: Struct(t.name_off, 1, 2, (
            Member(b.s("z"), b.ids["char"], 0), Member(b.s("e"), b.ids["small_enum"], 8))))),
        "end")
    yield Case("bitfield of an irregular int", edit(lambda b: b.btf.replace(
        b.ids["flags"], _members(b, "flags", 0, type=b.btf.add(
            Int(b.s("int3"), 0, 1, 0, 0, 3))))), "regular")
    yield Case("kind_flag member not byte aligned",
               edit(_replace("flags", lambda b, t: _members(b, "flags", 2, offset=9))),
               "aligned")
    yield Case("int member crossing the struct end", edit(lambda b: b.btf.add(Struct(
        b.s("tail"), 0, 4, (Member(b.s("x"), b.ids["int"], 1),)))), "end")

    # ---- byte order (libbpf swaps only a plain 24-byte header)
    be = _byteswap(good)
    yield Case("other byte order with a 32-byte header",
               with_header_any(be, hdr_len=32, extra=8), "header")


def _patch_array_size(b: Built) -> None:
    """Give the array a nonzero size word (the model has no field for it)."""
    data = b.btf.to_bytes()
    words = type_words(data)
    parsed = Btf.parse(data, validate=False)
    words[parsed._offs[b.ids["carr"] - 1] + 2] = 16
    reparsed = Btf.parse(with_type_words(data, words), validate=False)
    b.btf = reparsed


def _byteswap(data: bytes) -> bytes:
    """The same BTF in the other byte order (header and every type word swapped)."""
    order = "<" if struct.unpack_from("<H", data)[0] == 0xEB9F else ">"
    other = ">" if order == "<" else "<"
    fields = struct.unpack_from(order + "HBBIIIII", data)
    hdr_len, toff, tlen, soff = fields[3], fields[4], fields[5], fields[6]
    words = array("I", data[hdr_len + toff: hdr_len + toff + tlen])
    words.byteswap()
    return (struct.pack(other + "HBBIIIII", *fields) + data[24:hdr_len] + words.tobytes()
            + data[hdr_len + soff:])


def with_header_any(data: bytes, hdr_len: int, extra: int) -> bytes:
    """`data` (either byte order) with a longer, zero-filled header."""
    order = "<" if struct.unpack_from("<H", data)[0] == 0xEB9F else ">"
    fields = list(struct.unpack_from(order + "HBBIIIII", data))
    old = fields[3]
    fields[3] = hdr_len
    return struct.pack(order + "HBBIIIII", *fields) + b"\0" * extra + data[old:]


def byteswap(data: bytes) -> bytes:
    return _byteswap(data)


def truncations(data: bytes | None = None) -> Iterator[Case]:
    data = valid_blob() if data is None else data
    for n in range(len(data)):
        yield Case(f"truncated to {n} bytes", data[:n])


def bit_flips(n: int, seed: int = 1, data: bytes | None = None) -> Iterator[Case]:
    data = valid_blob() if data is None else data
    rng = random.Random(seed)
    for k in range(n):
        buf = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            bit = rng.randrange(len(buf) * 8)
            buf[bit >> 3] ^= 1 << (bit & 7)
        yield Case(f"bit flip #{k}", bytes(buf))


INTERESTING = (0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFF, 0x100000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x01000000, 0x0D000001,
               0x04000001, 0x80000000 | 0x04000001)


def word_smashes(n: int, seed: int = 2, data: bytes | None = None) -> Iterator[Case]:
    """One type-section word replaced by an interesting value, or a small id, or +-1."""
    data = valid_blob() if data is None else data
    words = type_words(data)
    count = Btf.parse(data, validate=False).type_count
    rng = random.Random(seed)
    for k in range(n):
        w = array("I", words)
        i = rng.randrange(len(w))
        how = rng.randrange(4)
        if how == 0:
            w[i] = rng.choice(INTERESTING)
        elif how == 1:
            w[i] = rng.randrange(count + 2)
        elif how == 2:
            w[i] = (w[i] + rng.choice((-1, 1, 8, -8))) & 0xFFFFFFFF
        else:
            w[i] ^= 1 << rng.randrange(32)
        yield Case(f"word smash #{k} (word {i})", with_type_words(data, w))


def corpus(flips: int = 300, smashes: int = 300) -> list[Case]:
    """Everything: hand-crafted (all invalid), truncations (all invalid), random."""
    return [*hand_crafted(), *truncations(), *bit_flips(flips), *word_smashes(smashes)]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "malformed-btf")
    out.mkdir(parents=True, exist_ok=True)
    (out / "valid.btf").write_bytes(valid_blob())
    for i, case in enumerate(corpus()):
        (out / f"{i:04d}.btf").write_bytes(case.data)
    print(f"wrote {i + 2} files to {out}")
