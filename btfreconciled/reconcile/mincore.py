"""Minimized BTF for BPF objects: what `bpftool gen min_core_btf` writes, from our BTF.

Applications that ship CO-RE programs to kernels without usable BTF cut the kernel's BTF down
to the types their relocations touch (BTFHub's "btfgen"). bpftool does it in two steps, and
so does this module, with the same results byte for byte:

1. *Record*: every CO-RE relocation of every object is resolved against the target BTF
   the way libbpf does at load time (relo_core.c): candidates are the target types of a
   compatible kind whose name, without a `___flavor` suffix, is the local type's; each
   candidate's access path is matched member by member (names, anonymous members searched
   through, compatible field kinds); the first matching candidate is the target, and every
   other match must give the same bit offset and value, or libbpf refuses ("field offset
   ambiguity"). Candidates that do not match are dropped for later relocations of the same
   local type (libbpf keeps one pruned list per local type and object).
2. *Emit*: the target spec of each relocation marks types: a field relocation its root type
   and, along the access path, each struct/union member it goes through and that member's
   type (pointers are not followed); a type relocation the type and what its pointers,
   typedefs and modifiers lead to (structs reached that way stay empty); an enum value
   relocation the enum; a type-match relocation the whole structure of the type, composites
   behind pointers left empty. The marked types are written in their target id order into a
   new standalone BTF: structs and unions with only their marked members (kind_flag set only
   when a kept member is a bitfield, as libbpf's btf__add_field does), other kinds as they
   are; references to unmarked types become void; strings in first-use order.

The target is one standalone BTF: a merged file (vmlinux + modules, reconcile/merge.py), so
that module types are found where libbpf would look for them with `btf_custom_path`.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..bpfobj import ENUMVAL_KINDS, FIELD_KINDS, TYPE_KINDS, BpfObject, CoreRelo, RelocKind
from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..btf.header import HEADER_SIZE_LAYOUT
from ..btf.kinds import BTF_MAGIC, BTF_VERSION, HEADER_SIZE, Kind
from ..btf.record import COMPOSITE_KINDS, MODS_AND_TYPEDEF
from ..btf.types import (
    Composite,
    Enum,
    Enum64,
    FuncProto,
    Int,
    Member,
    Type,
)

_SCANF_INT = re.compile(r"\s*([+-]?\d+)")
_ANY_ENUM = frozenset({Kind.ENUM, Kind.ENUM64})
_SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
_MAX_RESOLVE_DEPTH = 32
_U32_MAX = 0xFFFFFFFF
_BTF_INT_SIGNED = 1
_POINTER_LONGS = (b"long int", b"long unsigned int", b"unsigned long int", b"long",
                  b"unsigned long", b"long unsigned")


class MinCoreError(Exception):
    """A relocation that libbpf (and so bpftool) cannot resolve; the message is one line."""


class BadObject(MinCoreError):
    """The object's own BTF or relocation records are malformed (libbpf: "parsing ...
    failed"): a bad input, not a resolution failure."""


@dataclass
class Ambiguity(MinCoreError):
    """Two candidates of one local type resolve a relocation differently."""

    obj: str
    relo: CoreRelo
    local_kind: str  # "struct", "union", "enum", "typedef", ...
    local_name: str
    access: str  # the field path, e.g. "x" or "a.b[2]"
    first_id: int
    other_id: int
    first_value: str
    other_value: str
    reason: str  # libbpf's words: "field offset ambiguity" / "relocation decision ambiguity"

    @property
    def label(self) -> str:
        """The type and field the relocation reads: "btfr_dup.x" (the type alone for a
        type or enum relocation)."""
        if self.access and self.relo.kind in FIELD_KINDS:
            return f"{self.local_name}.{self.access}"
        return self.local_name

    def __str__(self) -> str:
        return (f"{self.obj}: {self.label}: {self.reason} between "
                f"[{self.first_id}] ({self.first_value}) and [{self.other_id}] "
                f"({self.other_value})")


@dataclass
class Unresolved:
    """A relocation no candidate matched: libbpf poisons its instruction (fine when the
    program guards it, e.g. with bpf_core_field_exists()); nothing is recorded for it."""

    obj: str
    relo: CoreRelo
    local_kind: str
    local_name: str
    access: str

    @property
    def what(self) -> str:
        """What the program asked for, in C terms: "struct s.a.b", "enum e value V"."""
        if self.relo.kind in TYPE_KINDS:
            return f"{self.local_kind} {self.local_name}"
        if self.relo.kind in ENUMVAL_KINDS:
            return f"{self.local_kind} {self.local_name} value {self.access}"
        return f"{self.local_kind} {self.local_name}" + (f".{self.access}" if self.access else "")


# ----------------------------------------------------------------------------- specs


@dataclass
class _Acc:
    type_id: int
    idx: int
    name: str | None


@dataclass
class _Spec:
    btf: Btf
    root_type_id: int
    kind: int
    spec: list[_Acc] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    bit_offset: int = 0

    def copy(self) -> _Spec:
        return _Spec(self.btf, self.root_type_id, self.kind, list(self.spec), list(self.raw),
                     self.bit_offset)


class _Err(Exception):
    """libbpf returned a negative errno while reading the object's side of a relocation."""


class _TargetErr(_Err):
    """... or while resolving it against the target (a candidate, the target's layout)."""


def _skip(btf: Btf, tid: int) -> tuple[Type, int]:
    """skip_mods_and_typedefs(): the type and its id past modifiers and typedefs."""
    t = _type(btf, tid)
    while t.kind in MODS_AND_TYPEDEF:
        tid = t.type  # type: ignore[attr-defined]
        t = _type(btf, tid)
    return t, tid


def _type(btf: Btf, tid: int) -> Type:
    try:
        return btf.type(tid)
    except (IndexError, BtfError):
        raise _Err(f"type id {tid} does not exist in {btf.source}") from None


def _name(btf: Btf, off: int) -> str:
    try:
        return btf.name_of(off)
    except BtfError:
        raise _Err(f"string offset {off} outside {btf.source}'s strings") from None


def essential_len(name: str) -> int:
    """bpf_core_essential_name_len(): the length without a `___flavor` suffix."""
    n = len(name)
    for i in range(n - 5, -1, -1):
        s = name[i:i + 5]
        if s[0] != "_" and s[1:4] == "___" and s[4] != "_":
            return i + 1
    return n


def _kind_compat(a: Kind, b: Kind) -> bool:
    return a == b or (a in _ANY_ENUM and b in _ANY_ENUM)


def _ptr_size(btf: Btf) -> int:
    """btf_ptr_sz(): the size of C `long` in this BTF, else the host's pointer size."""
    cached = getattr(btf, "_mincore_ptr_sz", None)
    if cached is not None:
        return int(cached)
    size = struct.calcsize("P")
    for name in _POINTER_LONGS:
        ids = btf.find(name, Kind.INT)
        if ids:
            t = btf.type(ids[0])
            if isinstance(t, Int) and t.size in (4, 8):
                size = t.size
                break
    btf._mincore_ptr_sz = size  # type: ignore[attr-defined]
    return size


def _resolve_size(btf: Btf, tid: int) -> int:
    """btf__resolve_size()."""
    nelems = 1
    t = _type(btf, tid)
    size = -1
    for _ in range(_MAX_RESOLVE_DEPTH):
        if tid == 0:
            break
        k = t.kind
        if k in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.DATASEC,
                 Kind.FLOAT):
            size = t.size  # type: ignore[attr-defined]
            break
        if k == Kind.PTR:
            size = _ptr_size(btf)
            break
        if k in (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.VAR,
                 Kind.DECL_TAG, Kind.TYPE_TAG):
            tid = t.type  # type: ignore[attr-defined]
        elif k == Kind.ARRAY:
            n = t.nelems  # type: ignore[attr-defined]
            if nelems and n > _U32_MAX // nelems:
                raise _Err("array size overflow")
            nelems *= n
            tid = t.type  # type: ignore[attr-defined]
        else:
            raise _Err(f"cannot size type [{tid}] of kind {k.name}")
        t = _type(btf, tid)
    if size < 0:
        raise _Err(f"cannot size type [{tid}]")
    if nelems and size > _U32_MAX // nelems:
        raise _Err("type size overflow")
    return nelems * size


def _member_bit_offset(t: Composite, i: int) -> int:
    return t.members[i].bit_offset(t.kind_flag)


def _is_flex_arr(btf: Btf, acc: _Acc, nelems: int) -> bool:
    if acc.name is None or nelems > 0:
        return False
    t = _type(btf, acc.type_id)
    return isinstance(t, Composite) and acc.idx == len(t.members) - 1


def _access_string(btf: Btf, relo: CoreRelo) -> str:
    return _name(btf, relo.access_str_off)


def parse_spec(btf: Btf, relo: CoreRelo) -> _Spec:
    """bpf_core_parse_spec() on the object's own BTF."""
    spec_str = _access_string(btf, relo)
    if not spec_str or spec_str[0] == ":":
        raise _Err(f"empty or malformed access string {spec_str!r}")
    spec = _Spec(btf, relo.type_id, relo.kind)
    if relo.kind in TYPE_KINDS:
        if spec_str != "0":
            raise _Err(f"type relocation with access string {spec_str!r} (must be '0')")
        return spec
    spec.raw.extend(_access_indices(spec_str))
    t, tid = _skip(btf, relo.type_id)
    idx = spec.raw[0]
    acc = _Acc(tid, idx, None)
    spec.spec.append(acc)
    if relo.kind in ENUMVAL_KINDS:
        if not isinstance(t, Enum | Enum64) or len(spec.raw) > 1 or idx >= len(t.values):
            raise _Err(f"enum value relocation {spec_str!r} does not name a value of "
                       f"[{relo.type_id}]")
        acc.name = _name(btf, t.values[idx].name_off)
        return spec
    if relo.kind not in FIELD_KINDS:
        raise _Err(f"unknown relocation kind {relo.kind}")
    spec.bit_offset = idx * _resolve_size(btf, tid) * 8
    _walk_field_access(btf, spec, tid, spec_str)
    return spec


def _access_indices(spec_str: str) -> list[int]:
    """The numbers of an access string such as "0:1:3", read the way libbpf's loop does:
    skip one ':', then sscanf("%d") (which skips blanks and takes a sign)."""
    raw: list[int] = []
    pos = 0
    while pos < len(spec_str):
        if spec_str[pos] == ":":
            pos += 1
        m = _SCANF_INT.match(spec_str, pos)
        if m is None:
            raise _Err(f"malformed access string {spec_str!r}")
        pos = m.end()
        v = int(m.group(1))
        if v < 0:
            raise _Err(f"negative index in access string {spec_str!r}")
        if len(raw) == _SPEC_MAX_LEN:
            raise _Err(f"access string {spec_str!r} too long")
        raw.append(v)
    return raw


def _walk_field_access(btf: Btf, spec: _Spec, tid: int, spec_str: str) -> None:
    """Follow the indices after the first through members and array elements, adding an
    accessor per named member and per array element and the bits each one moves."""
    for i in range(1, len(spec.raw)):
        t, tid = _skip(btf, tid)
        idx = spec.raw[i]
        if isinstance(t, Composite):
            if idx >= len(t.members):
                raise _Err(f"member index {idx} past the end of [{tid}]")
            spec.bit_offset += _member_bit_offset(t, idx)
            m = t.members[idx]
            if m.name_off:
                name = _name(btf, m.name_off)
                if not name:
                    raise _Err(f"member {idx} of [{tid}] has an empty name")
                spec.spec.append(_Acc(tid, idx, name))
            tid = m.type
        elif t.kind == Kind.ARRAY:
            nelems = t.nelems  # type: ignore[attr-defined]
            t, tid = _skip(btf, t.type)  # type: ignore[attr-defined]
            flex = _is_flex_arr(btf, spec.spec[-1], nelems)
            if not flex and idx >= nelems:
                raise _Err(f"array index {idx} past the end ({nelems})")
            spec.spec.append(_Acc(tid, idx, None))
            spec.bit_offset += idx * _resolve_size(btf, tid) * 8
        else:
            raise _Err(f"access {spec_str!r} goes through type [{tid}] of kind {t.kind.name}")


def _fields_compat(lb: Btf, lid: int, tb: Btf, tid: int) -> bool:
    """bpf_core_fields_are_compat()."""
    while True:
        lt, lid = _skip(lb, lid)
        tt, tid = _skip(tb, tid)
        if lt.kind in COMPOSITE_KINDS and tt.kind in COMPOSITE_KINDS:
            return True
        if not _kind_compat(lt.kind, tt.kind):
            return False
        k = lt.kind
        if k in (Kind.PTR, Kind.FLOAT):
            return True
        if k in (Kind.FWD, Kind.ENUM, Kind.ENUM64):
            ln, tn = _name(lb, lt.name_off), _name(tb, tt.name_off)
            ll, tl = essential_len(ln), essential_len(tn)
            return ll == 0 or tl == 0 or (ll == tl and ln[:ll] == tn[:ll])
        if k == Kind.INT:
            return lt.bits_offset == 0 and tt.bits_offset == 0  # type: ignore[attr-defined]
        if k == Kind.ARRAY:
            lid, tid = lt.type, tt.type  # type: ignore[attr-defined]
            continue
        return False


def _types_compat(lb: Btf, lid: int, tb: Btf, tid: int, level: int = 32) -> bool:
    """__bpf_core_types_are_compat()."""
    if not _kind_compat(_type(lb, lid).kind, _type(tb, tid).kind):
        return False
    depth = 32
    while True:
        depth -= 1
        if depth < 0:
            raise _Err("type nesting too deep")
        lt, lid = _skip(lb, lid)
        tt, tid = _skip(tb, tid)
        if not _kind_compat(lt.kind, tt.kind):
            return False
        k = lt.kind
        if k in (Kind.UNKN, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.FWD, Kind.ENUM64):
            return True
        if k == Kind.INT:
            return lt.bits_offset == 0 and tt.bits_offset == 0  # type: ignore[attr-defined]
        if k in (Kind.PTR, Kind.ARRAY):
            lid, tid = lt.type, tt.type  # type: ignore[attr-defined]
            continue
        if k == Kind.FUNC_PROTO:
            assert isinstance(lt, FuncProto) and isinstance(tt, FuncProto)
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params, strict=True):
                if level <= 0:
                    raise _Err("function prototype nesting too deep")
                _, lpid = _skip(lb, lp.type)
                _, tpid = _skip(tb, tp.type)
                if not _types_compat(lb, lpid, tb, tpid, level - 1):
                    return False
            _, lid = _skip(lb, lt.ret_type)
            _, tid = _skip(tb, tt.ret_type)
            continue
        return False


def _names_match(lb: Btf, loff: int, tb: Btf, toff: int) -> bool:
    """bpf_core_names_match(): equal without flavor suffixes; an anonymous target matches
    only an anonymous local."""
    ln, tn = _name(lb, loff), _name(tb, toff)
    if not tn:
        return not ln
    ll = essential_len(ln)
    return essential_len(tn) == ll and ln[:ll] == tn[:ll]


def _enums_match(lb: Btf, lt: Type, tb: Btf, tt: Type) -> bool:
    """Enums (32- or 64-bit alike) match when their sizes do and every local value name is
    among the target's."""
    if not isinstance(tt, Enum | Enum64):
        return False
    assert isinstance(lt, Enum | Enum64)
    if lt.size != tt.size or len(lt.values) > len(tt.values):
        return False
    return all(any(_names_match(lb, lv.name_off, tb, tv.name_off) for tv in tt.values)
               for lv in lt.values)


def _members_match(lb: Btf, lt: Type, tb: Btf, tt: Type, level: int) -> bool:
    """Structs or unions (not behind a pointer): every local member has a target member of
    matching name and matching type, wherever it lies."""
    assert isinstance(lt, Composite) and isinstance(tt, Composite)
    if len(lt.members) > len(tt.members):
        return False
    return all(any(_names_match(lb, lm.name_off, tb, tm.name_off)
                   and _types_match(lb, lm.type, tb, tm.type, False, level - 1)
                   for tm in tt.members)
               for lm in lt.members)


def _types_match(lb: Btf, lid: int, tb: Btf, tid: int, behind_ptr: bool = False,
                 level: int = 32) -> bool:
    """__bpf_core_types_match(): the stricter relation bpf_core_type_matches() asks for."""
    if level <= 0:
        raise _TargetErr("type nesting too deep")
    depth = 32
    while True:
        depth -= 1
        if depth < 0:
            raise _TargetErr("type nesting too deep")
        lt, lid = _skip(lb, lid)
        tt, tid = _skip(tb, tid)
        if not _names_match(lb, lt.name_off, tb, tt.name_off):
            return False
        lk, tk = lt.kind, tt.kind
        if lk == Kind.UNKN:
            return tk == Kind.UNKN
        if lk == Kind.FWD:
            if behind_ptr and lk != tk:
                return ((tk == Kind.STRUCT and not lt.kind_flag)
                        or (tk == Kind.UNION and bool(lt.kind_flag)))
            return lk == tk and lt.kind_flag == tt.kind_flag
        if lk in _ANY_ENUM:
            return _enums_match(lb, lt, tb, tt)
        if lk in COMPOSITE_KINDS:
            if behind_ptr:
                if lk == tk:
                    return True
                return tk == Kind.FWD and (lk == Kind.UNION) == bool(tt.kind_flag)
            return lk == tk and _members_match(lb, lt, tb, tt, level)
        if lk == Kind.INT:
            assert isinstance(lt, Int)
            return (tk == Kind.INT and lt.size == tt.size  # type: ignore[attr-defined]
                    and (lt.encoding & _BTF_INT_SIGNED)
                    == (tt.encoding & _BTF_INT_SIGNED))  # type: ignore[attr-defined]
        if lk == Kind.PTR:
            if tk != lk:
                return False
            behind_ptr = True
            lid, tid = lt.type, tt.type  # type: ignore[attr-defined]
            continue
        if lk == Kind.ARRAY:
            if tk != lk or lt.nelems != tt.nelems:  # type: ignore[attr-defined]
                return False
            lid, tid = lt.type, tt.type  # type: ignore[attr-defined]
            continue
        if lk == Kind.FUNC_PROTO:
            if tk != lk:
                return False
            assert isinstance(lt, FuncProto) and isinstance(tt, FuncProto)
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params, strict=True):
                if not _types_match(lb, lp.type, tb, tp.type, behind_ptr, level - 1):
                    return False
            lid, tid = lt.ret_type, tt.ret_type
            continue
        return False


def _match_member(lb: Btf, lacc: _Acc, tb: Btf, tid: int, spec: _Spec) -> tuple[int, int]:
    """bpf_core_match_member(): (found 0/1, next target id)."""
    tt, tid = _skip(tb, tid)
    if not isinstance(tt, Composite):
        return 0, 0
    lt = _type(lb, lacc.type_id)
    assert isinstance(lt, Composite)
    lmember = lt.members[lacc.idx]
    lname = _name(lb, lmember.name_off)
    for i, m in enumerate(tt.members):
        bit_off = _member_bit_offset(tt, i)
        if len(spec.raw) == _SPEC_MAX_LEN:
            raise _Err("struct/union/array nesting too deep")
        spec.bit_offset += bit_off
        spec.raw.append(i)
        tname = _name(tb, m.name_off)
        if not tname:
            found, nxt = _match_member(lb, lacc, tb, m.type, spec)
            if found:
                return found, nxt
        elif lname == tname:
            spec.spec.append(_Acc(tid, i, tname))
            ok = _fields_compat(lb, lmember.type, tb, m.type)
            if not ok:
                spec.spec.pop()
            return int(ok), m.type
        spec.bit_offset -= bit_off
        spec.raw.pop()
    return 0, 0


def _spec_match(local: _Spec, tb: Btf, tid: int) -> _Spec | None:
    """bpf_core_spec_match(): the target spec, or None when this candidate does not match."""
    targ = _Spec(tb, tid, local.kind)
    if local.kind in TYPE_KINDS:
        if local.kind == RelocKind.TYPE_MATCHES:
            matched = _types_match(local.btf, local.root_type_id, tb, tid)
            return targ if matched else None
        return targ if _types_compat(local.btf, local.root_type_id, tb, tid) else None
    if local.kind in ENUMVAL_KINDS:
        tt, tid = _skip(tb, tid)
        if not isinstance(tt, Enum | Enum64):
            return None
        lname = local.spec[0].name or ""
        ll = essential_len(lname)
        for i, v in enumerate(tt.values):
            tname = _name(tb, v.name_off)
            if essential_len(tname) == ll and tname[:ll] == lname[:ll]:
                targ.spec.append(_Acc(tid, i, tname))
                targ.raw.append(i)
                return targ
        return None
    for i, lacc in enumerate(local.spec):
        tt, tid = _skip(tb, tid)
        if lacc.name is not None:
            found, tid = _match_member(local.btf, lacc, tb, tid, targ)
            if not found:
                return None
        else:
            if i > 0:
                if tt.kind != Kind.ARRAY:
                    return None
                nelems = tt.nelems  # type: ignore[attr-defined]
                flex = _is_flex_arr(tb, targ.spec[-1], nelems)
                if not flex and lacc.idx >= nelems:
                    return None
                _, tid = _skip(tb, tt.type)  # type: ignore[attr-defined]
            if len(targ.raw) == _SPEC_MAX_LEN:
                raise _Err("struct/union/array nesting too deep")
            targ.spec.append(_Acc(tid, lacc.idx, None))
            targ.raw.append(lacc.idx)
            targ.bit_offset += lacc.idx * _resolve_size(tb, tid) * 8
    return targ


_POISON = object()


def _calc_field(relo: CoreRelo, spec: _Spec | None) -> object:
    """bpf_core_calc_field_relo(): the relocated value (or _POISON)."""
    if relo.kind == RelocKind.FIELD_EXISTS:
        return 1 if spec else 0
    if spec is None:
        return _POISON
    btf = spec.btf
    acc = spec.spec[-1]
    t = _type(btf, acc.type_id)
    if acc.name is None:
        if relo.kind == RelocKind.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8
        if relo.kind == RelocKind.FIELD_BYTE_SIZE:
            return _resolve_size(btf, acc.type_id)
        raise _Err(f"relocation kind {relo.kind} cannot be applied to an array access")
    assert isinstance(t, Composite)
    m: Member = t.members[acc.idx]
    mt, ftid = _skip(btf, m.type)
    bit_off = spec.bit_offset
    bit_sz = m.bitfield_size(t.kind_flag)
    if bit_sz > 0:
        byte_sz = mt.size  # type: ignore[attr-defined]
        if byte_sz <= 0:
            raise _Err("bitfield of a type without size")
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise _Err("bitfield cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = _resolve_size(btf, ftid)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    k = relo.kind
    if k == RelocKind.FIELD_BYTE_OFFSET:
        return byte_off
    if k == RelocKind.FIELD_BYTE_SIZE:
        return byte_sz
    if k == RelocKind.FIELD_SIGNED:
        return int((mt.kind in _ANY_ENUM and bool(mt.kind_flag))
                   or (isinstance(mt, Int) and bool(mt.encoding & _BTF_INT_SIGNED)))
    if k == RelocKind.FIELD_LSHIFT_U64:
        if sys.byteorder == "little":
            return 64 - (bit_off + bit_sz - byte_off * 8)
        return (8 - byte_sz) * 8 + (bit_off - byte_off * 8)
    if k == RelocKind.FIELD_RSHIFT_U64:
        return 64 - bit_sz
    raise _Err(f"unknown field relocation kind {k}")


def _calc(relo: CoreRelo, spec: _Spec | None) -> object:
    """bpf_core_calc_relo() for one side: the value, or _POISON."""
    if relo.kind in FIELD_KINDS:
        return _calc_field(relo, spec)
    if relo.kind in TYPE_KINDS:
        if spec is None:
            return 0
        if relo.kind == RelocKind.TYPE_ID_TARGET:
            return spec.root_type_id
        if relo.kind in (RelocKind.TYPE_EXISTS, RelocKind.TYPE_MATCHES):
            return 1
        if relo.kind == RelocKind.TYPE_SIZE:
            return _resolve_size(spec.btf, spec.root_type_id)
        raise _Err(f"unexpected relocation kind {relo.kind}")
    if relo.kind == RelocKind.ENUMVAL_EXISTS:
        return 1 if spec else 0
    if relo.kind == RelocKind.ENUMVAL_VALUE:
        if spec is None:
            return _POISON
        t = _type(spec.btf, spec.spec[0].type_id)
        assert isinstance(t, Enum | Enum64)
        val = t.values[spec.spec[0].idx].val
        if isinstance(t, Enum) and val & 0x80000000:  # libbpf reads it as __s32
            val = (val - (1 << 32)) & 0xFFFFFFFFFFFFFFFF
        return val
    raise _Err(f"unknown relocation kind {relo.kind}")


def _kind_word(t: Type) -> str:
    return t.kind.name.lower() if t.kind != Kind.ENUM64 else "enum"


def _offset_words(bit_offset: int) -> str:
    if bit_offset % 8:
        return f"at bit {bit_offset}"
    return f"at byte {bit_offset // 8}"


def _show(v: object) -> str:
    return "failure" if v is _POISON else f"success {v}"


def access_path(btf: Btf, relo: CoreRelo) -> str:
    """A relocation's access string as C would write it ("x", "a.b[2]"; "" for the type
    itself), for messages."""
    try:
        spec = parse_spec(btf, relo)
    except _Err:
        return _name(btf, relo.access_str_off) if relo.access_str_off else "?"
    if relo.kind in TYPE_KINDS:
        return ""
    parts: list[str] = []
    for i, acc in enumerate(spec.spec):
        if acc.name is not None:
            parts.append(("." if parts else "") + acc.name)
        elif i > 0 or acc.idx:
            parts.append(f"[{acc.idx}]")
    return "".join(parts)


# ----------------------------------------------------------------------------- resolver


class Resolver:
    """Candidate search over one standalone target BTF (a merged file), and the types the
    relocations of each object touch (bpftool's "marked" types and members)."""

    def __init__(self, target: Btf) -> None:
        if target.base is not None:
            raise ValueError("the target of min_core_btf is one standalone BTF")
        self.target = target
        self.types: set[int] = set()
        self.members: dict[int, set[int]] = {}
        self.unresolved: list[Unresolved] = []
        self._flavored: list[tuple[str, list[int]]] | None = None
        self._seen: set[tuple[int, int]] = set()
        self.emitted_types = 0

    # -- candidates (bpf_core_add_cands)
    def _candidates(self, local: Type, local_name: str) -> list[int]:
        ess = local_name[:essential_len(local_name)]
        tb = self.target
        ids = [i for i in tb.find(ess) if _kind_compat(tb.kind_of(i), local.kind)]
        for name, fids in self._flavored_names():
            if name[:essential_len(name)] == ess:
                ids += [i for i in fids if _kind_compat(tb.kind_of(i), local.kind)]
        return sorted(set(ids))

    def _flavored_names(self) -> list[tuple[str, list[int]]]:
        """Target names with a `___flavor` suffix: they match by their essential name."""
        if self._flavored is None:
            tb = self.target
            tb.build_index()
            names = [*(tb._index or {}), *tb._other_index()]
            found: dict[str, list[int]] = {}
            for raw in names:
                if b"___" in raw:
                    name = raw.decode("utf-8", "surrogateescape")
                    if essential_len(name) != len(name):
                        found[name] = tb.find(raw)
            self._flavored = list(found.items())
        return self._flavored

    # -- recording
    def record_object(self, obj: BpfObject) -> None:
        """Resolve every CO-RE relocation of `obj` and mark what the target specs touch.
        Raises Ambiguity, MinCoreError (libbpf would fail) or BadObject."""
        cands: dict[int, list[int]] = {}
        for relo in obj.relos:
            try:
                targ = self._resolve(obj, relo, cands)
            except _TargetErr as e:
                raise MinCoreError(f"{obj.path}: CO-RE relocation #{relo.index} in "
                                   f"{relo.section}: {e}") from None
            except _Err as e:
                raise BadObject(f"{obj.path}: CO-RE relocation #{relo.index} in "
                                f"{relo.section}: {e}") from None
            if targ is None:
                continue
            try:
                self._record(targ)
            except _Err as e:
                raise MinCoreError(f"{obj.path}: CO-RE relocation #{relo.index} in "
                                   f"{relo.section}: {e}") from None

    def _resolve(self, obj: BpfObject, relo: CoreRelo, cands: dict[int, list[int]]
                 ) -> _Spec | None:
        lb = obj.btf
        if relo.kind == RelocKind.TYPE_ID_LOCAL:
            parse_spec(lb, relo)
            return None
        local = _type(lb, relo.type_id)
        local_name = _name(lb, local.name_off)
        if relo.type_id not in cands:
            cands[relo.type_id] = self._candidates(local, local_name)
        local_spec = parse_spec(lb, relo)
        if not local_name:
            raise _Err(f"{RelocKind(relo.kind).name.lower()} relocation of an anonymous "
                       "type: libbpf does not support it")
        targ: _Spec | None = None
        targ_val: object = None
        kept: list[int] = []
        _calc(relo, local_spec)  # libbpf computes the local value for every outcome
        for cid in cands[relo.type_id]:
            try:
                cand = _spec_match(local_spec, self.target, cid)
                if cand is None:
                    continue
                val = _calc(relo, cand)
            except _TargetErr:
                raise
            except _Err as e:
                raise _TargetErr(f"candidate [{cid}]: {e}") from None
            if targ is None:
                targ, targ_val = cand, val
            elif cand.bit_offset != targ.bit_offset:
                raise Ambiguity(str(obj.path), relo, _kind_word(local), local_name,
                                access_path(lb, relo), targ.root_type_id, cand.root_type_id,
                                _offset_words(targ.bit_offset), _offset_words(cand.bit_offset),
                                "field offset ambiguity")
            elif val != targ_val:
                raise Ambiguity(str(obj.path), relo, _kind_word(local), local_name,
                                access_path(lb, relo), targ.root_type_id, cand.root_type_id,
                                _show(targ_val), _show(val), "relocation decision ambiguity")
            kept.append(cid)
        if kept:
            cands[relo.type_id] = kept
            return targ
        self.unresolved.append(Unresolved(str(obj.path), relo, _kind_word(local), local_name,
                                          access_path(lb, relo)))
        return None

    def _record(self, spec: _Spec) -> None:
        k = spec.kind
        if k in FIELD_KINDS:
            self._record_field(spec)
        elif k == RelocKind.TYPE_MATCHES:
            self._mark_match(spec.root_type_id, False)
        elif k in TYPE_KINDS:
            self._mark(spec.root_type_id, True)
        else:
            self._mark(spec.root_type_id, False)

    def _record_field(self, spec: _Spec) -> None:
        tb = self.target
        tid = spec.root_type_id
        t = _type(tb, tid)
        self._mark(tid, False)
        for i in range(1, len(spec.raw)):
            while t.kind in MODS_AND_TYPEDEF:
                tid = t.type  # type: ignore[attr-defined]
                t = _type(tb, tid)
            if isinstance(t, Composite):
                idx = spec.raw[i]
                self.members.setdefault(tid, set()).add(idx)
                tid = t.members[idx].type
                t = _type(tb, tid)
                self._mark(tid, False)
            elif t.kind == Kind.ARRAY:
                tid = t.type  # type: ignore[attr-defined]
                t = _type(tb, tid)
            else:
                raise _Err(f"unsupported kind {t.kind.name} ([{tid}]) on the access path")

    def _mark(self, tid: int, follow_pointers: bool) -> None:
        """btfgen_mark_type()."""
        tb = self.target
        stack = [tid]
        mode = 1 if follow_pointers else 0
        while stack:
            tid = stack.pop()
            if tid == 0 or (tid, mode) in self._seen:
                continue
            self._seen.add((tid, mode))
            t = _type(tb, tid)
            self.types.add(tid)
            k = t.kind
            nxt: list[int] = []
            if k in (Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.ENUM64, Kind.STRUCT, Kind.UNION):
                pass
            elif k == Kind.PTR:
                if follow_pointers:
                    nxt = [t.type]  # type: ignore[attr-defined]
            elif k in (Kind.CONST, Kind.RESTRICT, Kind.VOLATILE, Kind.TYPEDEF):
                nxt = [t.type]  # type: ignore[attr-defined]
            elif k == Kind.ARRAY:
                nxt = [t.type, t.index_type]  # type: ignore[attr-defined]
            elif k == Kind.FUNC_PROTO:
                assert isinstance(t, FuncProto)
                nxt = [t.ret_type, *(p.type for p in t.params)]
            else:
                # bpftool stops here too ("unsupported kind"): a FWD or type tag reached
                # through a relocation's types
                raise _Err(f"unsupported kind {k.name} ([{tid}]) reached from a relocation "
                           "(bpftool gen min_core_btf fails the same way)")
            stack.extend(reversed(nxt))

    def _mark_match(self, tid: int, behind_ptr: bool) -> None:
        """btfgen_mark_type_match()."""
        tb = self.target
        stack = [(tid, behind_ptr)]
        while stack:
            tid, behind = stack.pop()
            key = (tid, 2 + int(behind))
            if tid == 0 or key in self._seen:
                continue
            self._seen.add(key)
            t = _type(tb, tid)
            self.types.add(tid)
            k = t.kind
            nxt: list[tuple[int, bool]] = []
            if k in (Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.ENUM64):
                pass
            elif isinstance(t, Composite):
                if not behind:
                    self.members.setdefault(tid, set()).update(range(len(t.members)))
                    nxt = [(m.type, False) for m in t.members]
            elif k in (Kind.CONST, Kind.RESTRICT, Kind.TYPEDEF, Kind.VOLATILE):
                nxt = [(t.type, behind)]  # type: ignore[attr-defined]
            elif k == Kind.FWD:
                # bpftool follows a FWD's size/type word too (0 in any sane BTF)
                nxt = [(t.size_word, behind)]  # type: ignore[attr-defined]
            elif k == Kind.PTR:
                nxt = [(t.type, True)]  # type: ignore[attr-defined]
            elif k == Kind.ARRAY:
                nxt = [(t.type, False), (t.index_type, False)]  # type: ignore[attr-defined]
            elif k == Kind.FUNC_PROTO:
                assert isinstance(t, FuncProto)
                nxt = [(t.ret_type, False), *((p.type, False) for p in t.params)]
            else:
                raise _Err(f"unsupported kind {k.name} ([{tid}]) reached from a relocation")
            stack.extend(reversed(nxt))

    # -- emitting (btfgen_get_btf)
    def emit(self, header_size: int = HEADER_SIZE) -> bytes:
        """The minimized BTF: raw, standalone, host byte order, as bpftool saves it.
        `header_size` 32 writes the Linux 7.x header (layout_off/layout_len, both 0: no
        kind layout section), as bpftool 7.8 does with libbpf 1.7; 24 (the default) is
        the header bpftool 7.5 writes and every kernel and libbpf reads."""
        if header_size not in (HEADER_SIZE, HEADER_SIZE_LAYOUT):
            raise ValueError(f"a BTF header is {HEADER_SIZE} or {HEADER_SIZE_LAYOUT} bytes")
        tb = self.target
        strs = bytearray(b"\0")
        str_at: dict[str, int] = {"": 0}

        def add_str(off: int) -> int:
            if not off:
                return 0
            s = tb.name_of(off)
            got = str_at.get(s)
            if got is None:
                got = str_at[s] = len(strs)
                strs.extend(s.encode("utf-8", "surrogateescape") + b"\0")
            return got

        order = sorted(self.types)
        new_id = {old: i + 1 for i, old in enumerate(order)}
        remap = _Remap(new_id)
        words: list[int] = []
        from ..btf.types import encode

        for old in order:
            t = tb.type(old)
            if isinstance(t, Composite):
                name_off = add_str(t.name_off)
                kept = self.members.get(old, set())
                members: list[Member] = []
                kflag = 0
                for i, m in enumerate(t.members):
                    if i not in kept:
                        continue
                    bit_off = m.bit_offset(t.kind_flag)
                    bit_sz = m.bitfield_size(t.kind_flag)
                    bitfield = bool(bit_sz) or bit_off % 8 != 0
                    if bitfield and (bit_sz == 0 or bit_sz > 255 or bit_off > 0xFFFFFF):
                        raise MinCoreError(
                            f"{tb.source}: [{old}] {tb.name_of(t.name_off) or '(anon)'} "
                            f"member {i}: bit offset {bit_off} is not a byte boundary but "
                            "no bitfield size is recorded (libbpf refuses such a member)")
                    if t.kind == Kind.UNION and bit_off:
                        raise MinCoreError(f"{tb.source}: [{old}] union member {i} at bit "
                                           f"offset {bit_off}")
                    kflag |= int(bitfield)
                    members.append(Member(add_str(m.name_off), remap[m.type],
                                          bit_off | bit_sz << 24))
                out: Type = type(t)(name_off, kflag, t.size, tuple(members))
            else:
                out = _rename(t, add_str).with_refs(remap)
            words.extend(encode(out))
        self.emitted_types = len(order)
        types = struct.pack(f"={len(words)}I", *words)
        hdr = struct.pack("=HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, header_size, 0, len(types),
                          len(types), len(strs)) + bytes(header_size - HEADER_SIZE)
        return hdr + types + bytes(strs)


class _Remap(dict):  # type: ignore[type-arg]
    """Old id -> new id; a type that was not kept becomes void, as in bpftool."""

    def __missing__(self, key: int) -> int:
        return 0


def _rename(t: Type, add_str: Callable[[int], int]) -> Type:
    """`t` with its string offsets moved into the new string section, in libbpf's
    field-iterator order (the type's name, then its items' names)."""
    from ..btf.types import EnumValue, Param, _replace

    name_off = add_str(t.name_off)
    if isinstance(t, Enum | Enum64):
        vals = tuple(EnumValue(add_str(v.name_off), v.val) for v in t.values)
        return _replace(t, name_off=name_off, values=vals)
    if isinstance(t, FuncProto):
        params = tuple(Param(add_str(p.name_off), p.type) for p in t.params)
        return _replace(t, name_off=name_off, params=params)
    return _replace(t, name_off=name_off)


def min_core_btf(target: Btf, objects: Iterable[BpfObject]) -> tuple[bytes, list[Unresolved]]:
    """The minimized BTF of `objects` against `target` (one standalone BTF), and the
    relocations nothing in it matched."""
    r = Resolver(target)
    for obj in objects:
        r.record_object(obj)
    return r.emit(), r.unresolved


def owners(layout_modules: Sequence[tuple[str, int, int]], nr_vmlinux: int
           ) -> Callable[[int], str]:
    """type id -> "vmlinux" or the module (name, first id, count) it belongs to."""
    def owner(tid: int) -> str:
        if tid < nr_vmlinux:
            return "vmlinux"
        for name, first, count in layout_modules:
            if first <= tid < first + count:
                return name
        return "?"
    return owner
