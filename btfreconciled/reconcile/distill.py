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

import weakref
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


class _Words:
    __slots__ = ("words", "offs", "start")

    def __init__(self, btf: Btf) -> None:
        self.words, self.offs = btf.wire_records()
        self.start = btf.start_id

    def record(self, tid: int) -> array:
        o = self.offs[tid - self.start]
        nxt = self.offs[tid - self.start + 1] if tid - self.start + 1 < len(self.offs) \
            else len(self.words)
        return self.words[o:nxt]


_base_cache: weakref.WeakKeyDictionary[Btf, _Words] = weakref.WeakKeyDictionary()


def _words_of_base(btf: Btf) -> _Words:
    w = _base_cache.get(btf)
    if w is None:
        w = _Words(btf)
        _base_cache[btf] = w
    return w


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
    """btf__distill_base(src): `src` is split BTF whose base is the full vmlinux."""
    old_base = src.base
    if old_base is None:
        raise DistillError(f"{source}: distilling needs split BTF (a module's .BTF on its"
                           " vmlinux)")
    bw = _words_of_base(old_base)
    sw = _Words(src)
    split_start = src.start_id
    n = src.type_count
    bwords, boffs = bw.words, bw.offs
    swords, soffs = sw.words, sw.offs

    def base_kind(tid: int) -> int:
        return kind_of(bwords[boffs[tid - 1] + 1])

    # 1. which base types are needed (btf_add_distilled_type_ids)
    needed: set[int] = set()
    stack: list[int] = []

    def visit(words: array, o: int) -> None:
        for pos in id_slots(words, o):
            tid = words[pos]
            if not tid or tid >= split_start or tid in needed:
                continue
            k = base_kind(tid)
            if k not in _ALLOWED:
                raise DistillError(
                    f"{source}: unexpected reference to base type [{tid}] of kind"
                    f" {kind_name(k)} when creating distilled base BTF")
            needed.add(tid)
            bo = boffs[tid - 1]
            if (k in COMPOSITE_KINDS) and bwords[bo]:
                continue
            stack.append(tid)

    for o in soffs:
        visit(swords, o)
        while stack:
            tid = stack.pop()
            visit(bwords, boffs[tid - 1])
    order = sorted(needed)

    # string rewriting shared by both passes (btf_rewrite_str's str_off_map)
    str_cache: dict[int, int] = {}
    src_str = src.str_bytes

    def copy(dst: Builder, words: array, o: int, end: int) -> int:
        rec = words[o:end]
        for pos in str_slots(words, o):
            off = words[pos]
            if not off:
                continue
            new = str_cache.get(off)
            if new is None:
                new = dst.add_str(src_str(off))
                str_cache[off] = new
            rec[pos - o] = new
        return dst.add(rec)

    def base_end(tid: int) -> int:
        return boffs[tid] if tid < len(boffs) else len(bwords)

    id_map: dict[int, int] = {}

    def add_types(dst: Builder) -> None:
        adding_to_base = dst.start_id == 1
        for tid in order:
            o = boffs[tid - 1]
            info = bwords[o + 1]
            k = kind_of(info)
            named = bwords[o] != 0
            if k in (K_INT, K_FLOAT, K_FWD):
                if not adding_to_base:
                    continue
                new = copy(dst, bwords, o, base_end(tid))
            elif k in COMPOSITE_KINDS:
                if adding_to_base:
                    if not named:
                        continue
                    new = dst.add([dst.add_str(src_str(bwords[o])), k << 24, bwords[o + 2]])
                else:
                    if named:
                        continue
                    new = copy(dst, bwords, o, base_end(tid))
            elif k in (K_ENUM, K_ENUM64):
                if adding_to_base:
                    if not named:
                        continue
                    size = bwords[o + 2]
                    if not size or size & (size - 1) or size > 8:
                        raise DistillError(f"{source}: enum [{tid}] has size {size}, which"
                                           " btf__add_enum() refuses")
                    new = dst.add([dst.add_str(src_str(bwords[o])), K_ENUM << 24, size])
                else:
                    if named:
                        continue
                    new = copy(dst, bwords, o, base_end(tid))
            elif k in _TO_SPLIT:
                if adding_to_base:
                    continue
                new = copy(dst, bwords, o, base_end(tid))
            else:  # pragma: no cover - filtered in step 1
                raise DistillError(f"{source}: unexpected kind {kind_name(k)} of [{tid}]")
            id_map[tid] = new

    # 2. the distilled base
    new_base = Builder()
    add_types(new_base)
    # 3. the new split: all split types, then the needed types that did not go to the base
    new_split = Builder(new_base)
    for i, o in enumerate(soffs):
        end = soffs[i + 1] if i + 1 < len(soffs) else len(swords)
        copy(new_split, swords, o, end)
    add_types(new_split)
    # 4. renumber (every type of the new split, base types included, like libbpf)
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
    base_btf = new_base.to_btf(None, f"{source}:.BTF.base")
    split_btf = new_split.to_btf(base_btf, f"{source}:.BTF")
    del n
    return DistillResult(base_btf, split_btf, needed, id_map)
