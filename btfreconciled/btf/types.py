"""One plain, immutable dataclass per BTF kind, and their exact (de)serialisation.

Every field of the wire record is kept (name_off, kind_flag, vlen-carried values), so that
decoding a record and encoding it again yields the same words. Names are string-table offsets:
resolving them needs the Btf object that owns the string section (see `Btf.name_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .kinds import Kind
from .layout import LAYOUT
from .record import kflag_of, kind_of, vlen_of


@dataclass(frozen=True, slots=True)
class Member:
    name_off: int
    type: int
    # Raw `offset` word: a bit offset, or (kind_flag set) bitfield_size << 24 | bit offset.
    offset: int

    def bit_offset(self, kind_flag: int) -> int:
        return self.offset & 0xFFFFFF if kind_flag else self.offset

    def bitfield_size(self, kind_flag: int) -> int:
        return self.offset >> 24 if kind_flag else 0


@dataclass(frozen=True, slots=True)
class EnumValue:
    name_off: int
    val: int  # raw u32 for ENUM, u64 for ENUM64; signedness is the type's kind_flag


@dataclass(frozen=True, slots=True)
class Param:
    name_off: int
    type: int


@dataclass(frozen=True, slots=True)
class VarSecinfo:
    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Type:
    """Fields common to all kinds. `kind` is a class attribute of each subclass."""

    name_off: int = 0
    kind_flag: int = 0

    kind = Kind.UNKN

    def ref_ids(self) -> tuple[int, ...]:
        """Every type id this record refers to, in record order (where they are: the
        record layout table, btf/layout.py)."""
        top, items, field_ = _REFS[self.kind]
        ids = tuple(getattr(self, f) for f in top)
        if items:
            ids += tuple(getattr(i, field_) for i in getattr(self, items))
        return ids

    def with_refs(self, remap: dict[int, int] | Sequence[int]) -> Type:
        """This type with every referenced id `x` replaced by `remap[x]`."""
        top, items, field_ = _REFS[self.kind]
        changes: dict[str, object] = {f: remap[getattr(self, f)] for f in top}
        if items:
            changes[items] = tuple(_replace(i, **{field_: remap[getattr(i, field_)]})
                                   for i in getattr(self, items))
        return _replace(self, **changes) if changes else self


@dataclass(frozen=True, slots=True)
class Void(Type):
    """Type id 0; never serialised."""


@dataclass(frozen=True, slots=True)
class Int(Type):
    size: int = 0
    encoding: int = 0
    bits_offset: int = 0
    nr_bits: int = 0
    kind = Kind.INT


@dataclass(frozen=True, slots=True)
class _Ref(Type):
    """A kind whose size/type word is a type id and that has no trailing data."""

    type: int = 0


@dataclass(frozen=True, slots=True)
class Ptr(_Ref):
    kind = Kind.PTR


@dataclass(frozen=True, slots=True)
class Typedef(_Ref):
    kind = Kind.TYPEDEF


@dataclass(frozen=True, slots=True)
class Volatile(_Ref):
    kind = Kind.VOLATILE


@dataclass(frozen=True, slots=True)
class Const(_Ref):
    kind = Kind.CONST


@dataclass(frozen=True, slots=True)
class Restrict(_Ref):
    kind = Kind.RESTRICT


@dataclass(frozen=True, slots=True)
class TypeTag(_Ref):
    kind = Kind.TYPE_TAG


@dataclass(frozen=True, slots=True)
class Func(_Ref):
    linkage: int = 0  # carried in vlen
    kind = Kind.FUNC


@dataclass(frozen=True, slots=True)
class Var(_Ref):
    linkage: int = 0
    kind = Kind.VAR


@dataclass(frozen=True, slots=True)
class DeclTag(_Ref):
    component_idx: int = -1
    kind = Kind.DECL_TAG


@dataclass(frozen=True, slots=True)
class Array(Type):
    type: int = 0
    index_type: int = 0
    nelems: int = 0
    kind = Kind.ARRAY


@dataclass(frozen=True, slots=True)
class Composite(Type):
    size: int = 0
    members: tuple[Member, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Struct(Composite):
    kind = Kind.STRUCT


@dataclass(frozen=True, slots=True)
class Union(Composite):
    kind = Kind.UNION


@dataclass(frozen=True, slots=True)
class Enum(Type):
    size: int = 4
    values: tuple[EnumValue, ...] = field(default_factory=tuple)
    kind = Kind.ENUM


@dataclass(frozen=True, slots=True)
class Enum64(Type):
    size: int = 8
    values: tuple[EnumValue, ...] = field(default_factory=tuple)
    kind = Kind.ENUM64


@dataclass(frozen=True, slots=True)
class Fwd(Type):
    """kind_flag 1 means a forward-declared union, 0 a struct."""

    size_word: int = 0  # meaningless for FWD but kept so that encoding is exact
    kind = Kind.FWD


@dataclass(frozen=True, slots=True)
class FuncProto(Type):
    ret_type: int = 0
    params: tuple[Param, ...] = field(default_factory=tuple)
    kind = Kind.FUNC_PROTO


@dataclass(frozen=True, slots=True)
class Datasec(Type):
    size: int = 0
    secinfos: tuple[VarSecinfo, ...] = field(default_factory=tuple)
    kind = Kind.DATASEC


@dataclass(frozen=True, slots=True)
class Float(Type):
    size: int = 0
    kind = Kind.FLOAT


def _replace(t, **changes: object):  # noqa: ANN001, ANN202 (a Type or an item)
    # dataclasses.replace() re-runs __init__ through keyword parsing; this is the hot path of
    # renumbering, so copy fields directly.
    values = {f: getattr(t, f) for f in t.__slots_all__}  # type: ignore[attr-defined]
    values.update(changes)
    return type(t)(**values)


def _all_slots(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for name in getattr(klass, "__slots__", ()):
            if name not in names:
                names.append(name)
    return tuple(names)


CLASS_OF_KIND: dict[Kind, type[Type]] = {
    cls.kind: cls
    for cls in (
        Int, Ptr, Array, Struct, Union, Enum, Fwd, Typedef, Volatile, Const, Restrict,
        Func, FuncProto, Var, Datasec, Float, DeclTag, TypeTag, Enum64,
    )
}
for _cls in (Void, Member, EnumValue, Param, VarSecinfo, *CLASS_OF_KIND.values()):
    _cls.__slots_all__ = _all_slots(_cls)  # type: ignore[attr-defined]

# kind -> (type-id fields of the record, its items' attribute or "", the items' type-id field)
_REFS: dict[int, tuple[tuple[str, ...], str, str]] = {Kind.UNKN: ((), "", "")}
for _k, _lay in LAYOUT.items():
    _REFS[_k] = (_lay.id_fields(), _lay.items if _lay.item_id is not None else "",
                 _lay.item[_lay.item_id][0] if _lay.item_id is not None else "")


VOID = Void()


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def decode(words: Sequence[int], off: int) -> Type:
    """Decode the record that starts at word `off` (the caller has bounds-checked it)."""
    name_off = words[off]
    info = words[off + 1]
    st = words[off + 2]
    kind = kind_of(info)
    kflag = kflag_of(info)
    vlen = vlen_of(info)
    p = off + 3
    if kind == Kind.INT:
        v = words[p]
        return Int(name_off, kflag, st, (v >> 24) & 0x0F, (v >> 16) & 0xFF, v & 0xFF)
    if kind == Kind.STRUCT or kind == Kind.UNION:
        members = tuple(
            Member(words[i], words[i + 1], words[i + 2]) for i in range(p, p + 3 * vlen, 3)
        )
        return (Struct if kind == Kind.STRUCT else Union)(name_off, kflag, st, members)
    if kind == Kind.ENUM:
        values = tuple(EnumValue(words[i], words[i + 1]) for i in range(p, p + 2 * vlen, 2))
        return Enum(name_off, kflag, st, values)
    if kind == Kind.ENUM64:
        values = tuple(
            EnumValue(words[i], words[i + 1] | words[i + 2] << 32)
            for i in range(p, p + 3 * vlen, 3)
        )
        return Enum64(name_off, kflag, st, values)
    if kind == Kind.ARRAY:
        return Array(name_off, kflag, words[p], words[p + 1], words[p + 2])
    if kind == Kind.FUNC_PROTO:
        params = tuple(Param(words[i], words[i + 1]) for i in range(p, p + 2 * vlen, 2))
        return FuncProto(name_off, kflag, st, params)
    if kind == Kind.FUNC:
        return Func(name_off, kflag, st, vlen)
    if kind == Kind.VAR:
        return Var(name_off, kflag, st, words[p])
    if kind == Kind.DECL_TAG:
        return DeclTag(name_off, kflag, st, _s32(words[p]))
    if kind == Kind.DATASEC:
        secinfos = tuple(
            VarSecinfo(words[i], words[i + 1], words[i + 2]) for i in range(p, p + 3 * vlen, 3)
        )
        return Datasec(name_off, kflag, st, secinfos)
    if kind == Kind.FWD:
        return Fwd(name_off, kflag, st)
    if kind == Kind.FLOAT:
        return Float(name_off, kflag, st)
    cls = CLASS_OF_KIND[Kind(kind)]  # the plain reference kinds
    return cls(name_off, kflag, st)  # type: ignore[call-arg]


def encode(t: Type) -> list[int]:
    """The record words of `t` (inverse of `decode`)."""
    k = t.kind
    head = t.kind_flag << 31 | k << 24
    if isinstance(t, Int):
        v = t.encoding << 24 | t.bits_offset << 16 | t.nr_bits
        return [t.name_off, head, t.size, v]
    if isinstance(t, Composite):
        out = [t.name_off, head | len(t.members), t.size]
        for m in t.members:
            out += (m.name_off, m.type, m.offset)
        return out
    if isinstance(t, Enum):
        out = [t.name_off, head | len(t.values), t.size]
        for v in t.values:
            out += (v.name_off, v.val & 0xFFFFFFFF)
        return out
    if isinstance(t, Enum64):
        out = [t.name_off, head | len(t.values), t.size]
        for v in t.values:
            out += (v.name_off, v.val & 0xFFFFFFFF, (v.val >> 32) & 0xFFFFFFFF)
        return out
    if isinstance(t, Array):
        return [t.name_off, head, 0, t.type, t.index_type, t.nelems]
    if isinstance(t, FuncProto):
        out = [t.name_off, head | len(t.params), t.ret_type]
        for p in t.params:
            out += (p.name_off, p.type)
        return out
    if isinstance(t, Func):
        return [t.name_off, head | t.linkage, t.type]
    if isinstance(t, Var):
        return [t.name_off, head, t.type, t.linkage]
    if isinstance(t, DeclTag):
        return [t.name_off, head, t.type, t.component_idx & 0xFFFFFFFF]
    if isinstance(t, Datasec):
        out = [t.name_off, head | len(t.secinfos), t.size]
        for s in t.secinfos:
            out += (s.type, s.offset, s.size)
        return out
    if isinstance(t, Fwd):
        return [t.name_off, head, t.size_word]
    if isinstance(t, Float):
        return [t.name_off, head, t.size]
    if isinstance(t, _Ref):
        return [t.name_off, head, t.type]
    raise TypeError(f"cannot encode {t!r}")
