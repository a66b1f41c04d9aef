"""libbpf `btf__distill_base()`: from a module's split BTF on its build vmlinux, make the
distilled base (`.BTF.base`) and the new split BTF that refers to it.

Rules (src/btf.c: btf_add_distilled_type_ids, btf_add_distilled_types,
btf_update_distilled_type_ids, btf__distill_base), kept exactly:

- Every base type a split type refers to is needed, and so is everything a needed base type
  refers to, except the members of *named* structs/unions. Base types of other kinds than
  INT FLOAT FWD ARRAY STRUCT UNION TYPEDEF ENUM ENUM64 PTR CONST RESTRICT VOLATILE FUNC_PROTO
  TYPE_TAG make distillation fail.
- In base-id order, into the distilled base: INT, FLOAT, FWD as they are; named STRUCT/UNION
  as vlen-0 types of the same size; named ENUM/ENUM64 as a vlen-0 ENUM of the same size.
- The new split BTF holds all split types (same order), then, in base-id order, the needed
  anonymous STRUCT/UNION/ENUM/ENUM64 and all ARRAY TYPEDEF PTR CONST RESTRICT VOLATILE
  FUNC_PROTO TYPE_TAG, copied whole.
- Strings are added like btf__add_str: a split string that the distilled base has is reused.
- Ids: needed base ids become their new ids, other split ids move down by
  (old base type count - distilled base type count).
- libbpf decides "am I filling the base?" by `start_id == 1`, so with an *empty* distilled base
  the second pass behaves like the first; we do the same.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from ..btf.btf import Btf
from ..btf.kinds import (
    K_ARRAY,
    K_CONST,
    K_ENUM,
    K_ENUM64,
    K_FLOAT,
    K_FUNC_PROTO,
    K_FWD,
    K_INT,
    K_PTR,
    K_RESTRICT,
    K_STRUCT,
    K_TYPE_TAG,
    K_TYPEDEF,
    K_UNION,
    K_VOLATILE,
)
from ..btf.load import parse_btf
from ..btf.record import COMPOSITE_KINDS, kind_of
from .relocate import serialize_parts
from .wire import id_slots, kind_name, record_offsets, str_slots

_ALLOWED = frozenset({K_INT, K_FLOAT, K_FWD, K_ARRAY, K_STRUCT, K_UNION, K_TYPEDEF, K_ENUM,
                      K_ENUM64, K_PTR, K_CONST, K_RESTRICT, K_VOLATILE, K_FUNC_PROTO,
                      K_TYPE_TAG})
_TO_SPLIT = frozenset({K_ARRAY, K_TYPEDEF, K_PTR, K_CONST, K_RESTRICT, K_VOLATILE, K_FUNC_PROTO,
                       K_TYPE_TAG})


class DistillError(ValueError):
    """btf__distill_base() would fail (-EINVAL) on this input."""


class Builder:
    """A BTF under construction, with libbpf's btf__add_str/btf__find_str string rules."""

    def __init__(self, base: Builder | None = None) -> None:
        self.base = base
        self.words = array("I")
        self.count = 0
        self.strs = bytearray(b"" if base else b"\0")
        self.lookup: dict[bytes, int] = {} if base else {b"": 0}
        self.start_id = base.type_count if base else 1
        self.start_str_off = base.str_len if base else 0

    @property
    def type_count(self) -> int:
        return self.start_id + self.count

    @property
    def str_len(self) -> int:
        return self.start_str_off + len(self.strs)

    def find_str(self, s: bytes) -> int | None:
        if self.base is not None:
            off = self.base.find_str(s)
            if off is not None:
                return off
        rel = self.lookup.get(s)
        return None if rel is None else self.start_str_off + rel

    def add_str(self, s: bytes) -> int:
        off = self.find_str(s)
        if off is not None:
            return off
        rel = len(self.strs)
        self.strs += s + b"\0"
        self.lookup[s] = rel
        return self.start_str_off + rel

    def add(self, record: list[int] | array) -> int:
        self.words.extend(record)
        self.count += 1
        return self.type_count - 1

    def to_btf(self, base: Btf | None, source: str) -> Btf:
        return parse_btf(self.to_bytes(), base=base, source=source, validate=False)

    def to_bytes(self) -> bytes:
        return serialize_parts(self.words, bytes(self.strs))


@dataclass
class DistillResult:
    base: Btf  # distilled base (standalone)
    split: Btf  # new split BTF, base = `base`
    needed: set[int] = field(default_factory=set)  # original base ids the module needs
    id_map: dict[int, int] = field(default_factory=dict)  # original base id -> new id


def distill(src: Btf, *, source: str = "module") -> DistillResult:
    """btf__distill_base(src): `src` is split BTF whose base is the full vmlinux. The phases
    are libbpf's, in its order."""
    d = _Distill.of(src, source)
    _add_distilled_type_ids(d)
    new_base = Builder()
    _add_distilled_types(d, new_base)
    new_split = Builder(new_base)
    _add_split_types(d, new_split)
    _add_distilled_types(d, new_split)
    _update_distilled_type_ids(d, new_base, new_split)
    base_btf = new_base.to_btf(None, f"{source}:.BTF.base")
    split_btf = new_split.to_btf(base_btf, f"{source}:.BTF")
    return DistillResult(base_btf, split_btf, d.needed, d.id_map)


@dataclass
class _Distill:
    """libbpf's struct btf_distill: the input's records and what the phases decide."""

    src: Btf
    source: str
    bwords: array  # the full base's records (host order) and each one's word offset
    boffs: list[int]
    swords: array  # the split's own records
    soffs: list[int]
    split_start: int
    needed: set[int] = field(default_factory=set)  # base ids the split needs, ...
    order: list[int] = field(default_factory=list)  # ... in base-id order
    id_map: dict[int, int] = field(default_factory=dict)  # base id -> id in the new BTFs
    str_map: dict[int, int] = field(default_factory=dict)  # btf_rewrite_str's str_off_map

    @classmethod
    def of(cls, src: Btf, source: str) -> _Distill:
        if src.base is None:
            raise DistillError(f"{source}: distilling needs split BTF (a module's .BTF on its"
                               " vmlinux)")
        bwords, boffs = src.base.wire_records()
        swords, soffs = src.wire_records()
        return cls(src, source, bwords, boffs, swords, soffs, src.start_id)

    def base_end(self, tid: int) -> int:
        return self.boffs[tid] if tid < len(self.boffs) else len(self.bwords)

    def copy(self, dst: Builder, words: array, o: int, end: int) -> int:
        """btf_add_type: the record as it is, its strings added to `dst` (ids unchanged)."""
        rec = words[o:end]
        str_map = self.str_map
        for pos in str_slots(words, o):
            off = words[pos]
            if not off:
                continue
            new = str_map.get(off)
            if new is None:
                new = str_map[off] = dst.add_str(self.src.str_bytes(off))
            rec[pos - o] = new
        return dst.add(rec)


def _add_distilled_type_ids(d: _Distill) -> None:
    """btf_add_distilled_type_ids: every base type a split type refers to, and what those
    refer to, except the members of named structs/unions."""
    bwords, boffs, needed, split_start = d.bwords, d.boffs, d.needed, d.split_start
    stack: list[int] = []

    def visit(words: array, o: int) -> None:
        for pos in id_slots(words, o):
            tid = words[pos]
            if not tid or tid >= split_start or tid in needed:
                continue
            bo = boffs[tid - 1]
            k = kind_of(bwords[bo + 1])
            if k not in _ALLOWED:
                raise DistillError(
                    f"{d.source}: unexpected reference to base type [{tid}] of kind"
                    f" {kind_name(k)} when creating distilled base BTF")
            needed.add(tid)
            if not (k in COMPOSITE_KINDS and bwords[bo]):
                stack.append(tid)

    for o in d.soffs:
        visit(d.swords, o)
        while stack:
            visit(bwords, boffs[stack.pop() - 1])
    d.order = sorted(needed)


def _add_distilled_types(d: _Distill, dst: Builder) -> None:
    """btf_add_distilled_types: run once into the new base (INT FLOAT FWD as they are, named
    composites and enums as empty shells) and once into the new split (anonymous composites
    and enums, and every other kind, whole). libbpf tells the two apart by start_id == 1."""
    adding_to_base = dst.start_id == 1
    bwords, boffs = d.bwords, d.boffs
    for tid in d.order:
        o = boffs[tid - 1]
        k = kind_of(bwords[o + 1])
        named = bwords[o] != 0
        if k in (K_INT, K_FLOAT, K_FWD):
            whole = adding_to_base
        elif k in COMPOSITE_KINDS or k in (K_ENUM, K_ENUM64):
            if adding_to_base and named:
                d.id_map[tid] = dst.add(_shell(d, dst, tid, k))
                continue
            whole = not adding_to_base and not named
        elif k in _TO_SPLIT:
            whole = not adding_to_base
        else:  # pragma: no cover - refused by _add_distilled_type_ids
            raise DistillError(f"{d.source}: unexpected kind {kind_name(k)} of [{tid}]")
        if whole:
            d.id_map[tid] = d.copy(dst, bwords, o, d.base_end(tid))


def _shell(d: _Distill, dst: Builder, tid: int, k: int) -> list[int]:
    """A named struct/union as a vlen-0 type of its size; a named enum/enum64 as a vlen-0
    ENUM (btf__add_enum, which takes sizes 1, 2, 4 and 8 only)."""
    o = d.boffs[tid - 1]
    size = d.bwords[o + 2]
    if k not in COMPOSITE_KINDS:
        if not size or size & (size - 1) or size > 8:
            raise DistillError(f"{d.source}: enum [{tid}] has size {size}, which"
                               " btf__add_enum() refuses")
        k = K_ENUM
    return [dst.add_str(d.src.str_bytes(d.bwords[o])), k << 24, size]


def _add_split_types(d: _Distill, dst: Builder) -> None:
    """The split's own types, in their order, before the needed base types it takes."""
    swords, soffs = d.swords, d.soffs
    for i, o in enumerate(soffs):
        d.copy(dst, swords, o, soffs[i + 1] if i + 1 < len(soffs) else len(swords))


def _update_distilled_type_ids(d: _Distill, new_base: Builder, new_split: Builder) -> None:
    """btf_update_distilled_type_ids: needed base ids become their new ids, split ids move
    down by the types the base lost; over every type of both, like libbpf."""
    split_start, id_map = d.split_start, d.id_map
    diff = split_start - new_base.type_count
    for b in (new_base, new_split):
        w = b.words
        for o in record_offsets(w):
            for pos in id_slots(w, o):
                v = w[pos]
                m = id_map.get(v)
                if m:
                    w[pos] = m
                elif v >= split_start:
                    w[pos] = v - diff
