"""`.BTF.base_expects`: full member lists of the base structs/unions a module depends on,
written by `distill --fields`, and the field checks that use them at reconcile time.

Layout of the section (a standalone BTF): first, in order, one type per type of the
module's distilled base (so its leading named INT/FLOAT/ENUM/FWD/STRUCT/UNION types with
members dropped *are* the distilled base), the recorded structs/unions carrying their members;
then the helper types members refer to: anonymous structs/unions in full, arrays (element type
and count), pointers (to a FWD of a named struct/union, to a named int/enum, or to void), and
named ints/enums/structs by name and size. Modifiers and typedefs are resolved away: a member's
type is compared by kind, name and size.

Field check of an expected struct/union against the vmlinux type it was matched to: every
recorded member (anonymous struct/union members flattened, as C names them) must exist with the
same bit offset, bitfield size and a compatible type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..btf.btf import Btf
from ..btf.kinds import (
    K_ARRAY,
    K_ENUM,
    K_ENUM64,
    K_FLOAT,
    K_FUNC_PROTO,
    K_FWD,
    K_INT,
    K_PTR,
    K_STRUCT,
    K_UNION,
)
from ..btf.layout import (
    ARRAY_INDEX,
    ARRAY_NELEMS,
    ARRAY_TYPE,
    INT_DATA,
    ITEMS,
    MEMBER_NAME,
    MEMBER_OFFSET,
    MEMBER_TYPE,
    MEMBER_WORDS,
)
from ..btf.record import (
    COMPOSITE_KINDS,
    MATCHABLE_KINDS,
    MODS_AND_TYPEDEF,
    kflag_of,
    kind_of,
    vlen_of,
)
from .diagnostics import ERROR, WARNING, Problem, expected_dict, type_label
from .distill import Builder, DistillResult
from .target import VmlinuxIndex
from .wire import kind_name, record_offsets

STRICT_CHOICES = ("off", "embedded", "all")
FIELDS_EMBEDDED, FIELDS_ALL = "embedded", "all"


class _ById:
    """Word-level reads of one Btf (and its bases) by type id."""

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        chain = []
        b: Btf | None = btf
        while b is not None:
            w, offs = b.wire_records()
            chain.append((b.start_id, w, offs))
            b = b.base
        self.chain = chain

    def rec(self, tid: int) -> tuple[Any, int]:
        for start, w, offs in self.chain:
            if tid >= start:
                return w, offs[tid - start]
        raise IndexError(tid)

    def kind(self, tid: int) -> int:
        if not tid:
            return 0
        w, o = self.rec(tid)
        return kind_of(w[o + 1])

    def name(self, tid: int) -> str:
        if not tid:
            return ""
        w, o = self.rec(tid)
        return self.btf.name_of(w[o])

    def resolve(self, tid: int) -> int:
        """Strip modifiers and typedefs."""
        for _ in range(64):
            if not tid:
                return 0
            w, o = self.rec(tid)
            k = kind_of(w[o + 1])
            if k in MODS_AND_TYPEDEF:
                tid = w[o + 2]
                continue
            return tid
        return tid


# --------------------------------------------------------------------- building the section
def build_expects(src: Btf, dist: DistillResult, embedded_ids: set[int], mode: str) -> bytes:
    """The `.BTF.base_expects` blob for module split BTF `src` (on its build vmlinux).

    `embedded_ids`: original vmlinux ids of the named structs/unions the module embeds;
    `mode` FIELDS_EMBEDDED records those, FIELDS_ALL every named struct/union it references.
    """
    w = _ExpectsWriter(_ById(src), dist)
    record = set(embedded_ids) if mode == FIELDS_EMBEDDED else {
        t for t in w.prefix if w.vm.kind(t) in COMPOSITE_KINDS}
    pending = w.write_prefix(record)
    filled = {new: w.members_of(old) for old, new in pending}
    return w.with_members(filled).to_bytes()


class _ExpectsWriter:
    """The section under construction: vmlinux ids (of the module's build) -> expects ids."""

    def __init__(self, vm: _ById, dist: DistillResult) -> None:
        self.vm = vm
        self.out = Builder()
        base = dist.base
        # the distilled base in original vmlinux ids, in distilled order
        by_new = {new: old for old, new in dist.id_map.items() if new < base.type_count}
        self.prefix: list[int] = [by_new[i] for i in range(1, base.type_count)]
        self.conv: dict[int, int] = {old: i + 1 for i, old in enumerate(self.prefix)}
        self.fwds: dict[tuple[str, int], int] = {}  # (name, is union) -> FWD id

    def name(self, tid: int) -> int:
        return self.out.add_str(self.vm.name(tid).encode("utf-8", "surrogateescape"))

    def write_prefix(self, record: set[int]) -> list[tuple[int, int]]:
        """One type per distilled-base type, members dropped, then a sentinel anonymous PTR
        that ends the prefix. Returns the (vmlinux id, expects id) of the composites in
        `record`, whose members with_members() puts back."""
        pending = []
        vm, out = self.vm, self.out
        for old in self.prefix:
            w, o = vm.rec(old)
            info = w[o + 1]
            k = kind_of(info)
            if k in COMPOSITE_KINDS:
                new = out.add([self.name(old), k << 24, w[o + 2]])
                if old in record:
                    pending.append((old, new))
            elif k in (K_ENUM, K_ENUM64):
                out.add([self.name(old), K_ENUM << 24, w[o + 2]])
            elif k == K_INT:
                out.add([self.name(old), info, w[o + 2], w[o + INT_DATA]])
            else:  # FLOAT, FWD
                out.add([self.name(old), info, w[o + 2]])
        out.add([0, K_PTR << 24, 0])
        return pending

    def member_type(self, tid: int) -> int:
        """The expects id standing for member type `tid` (modifiers and typedefs resolved
        away), added on first use."""
        vm, out = self.vm, self.out
        tid = vm.resolve(tid)
        if not tid:
            return 0
        if tid in self.conv:
            return self.conv[tid]
        w, o = vm.rec(tid)
        info = w[o + 1]
        k = kind_of(info)
        named = w[o] != 0
        if k == K_PTR:
            new = out.add([0, K_PTR << 24, self.pointee(w[o + 2])])
        elif k == K_ARRAY:
            elem = self.member_type(w[o + ARRAY_TYPE])
            index = self.member_type(w[o + ARRAY_INDEX])
            new = out.add([0, K_ARRAY << 24, 0, elem, index, w[o + ARRAY_NELEMS]])
        elif k in COMPOSITE_KINDS:
            new = out.add([self.name(tid), k << 24, w[o + 2]]) if named else \
                out.add([0, info, w[o + 2], *self.members_of(tid)])
        elif k in (K_ENUM, K_ENUM64):
            new = out.add([self.name(tid) if named else 0, K_ENUM << 24, w[o + 2]])
        elif k == K_INT:
            new = out.add([self.name(tid), info, w[o + 2], w[o + INT_DATA]])
        elif k in (K_FLOAT, K_FWD):
            new = out.add([self.name(tid), info, w[o + 2]])
        else:  # FUNC_PROTO etc. are never member types by value
            return 0
        self.conv[tid] = new
        return new

    def pointee(self, tid: int) -> int:
        """A pointer's target: a FWD for a named struct/union, the type itself for a named
        int/float/enum, else void."""
        vm = self.vm
        tgt = vm.resolve(tid)
        tk = vm.kind(tgt)
        if tk in (K_STRUCT, K_UNION, K_FWD) and vm.name(tgt):
            w, o = vm.rec(tgt)
            union = 1 if tk == K_UNION or (tk == K_FWD and kflag_of(w[o + 1])) else 0
            key = (vm.name(tgt), union)
            f = self.fwds.get(key)
            if f is None:
                f = self.fwds[key] = self.out.add([self.name(tgt), union << 31 | K_FWD << 24, 0])
            return f
        if tk in (K_INT, K_FLOAT, K_ENUM, K_ENUM64) and vm.name(tgt):
            return self.member_type(tgt)
        return 0

    def members_of(self, tid: int) -> list[int]:
        vm, out = self.vm, self.out
        w, o = vm.rec(tid)
        words: list[int] = []
        for m in range(vlen_of(w[o + 1])):
            p = o + ITEMS + MEMBER_WORDS * m
            mt = self.member_type(w[p + MEMBER_TYPE])
            no = w[p + MEMBER_NAME]
            words += (out.add_str(vm.btf.str_bytes(no)) if no else 0, mt, w[p + MEMBER_OFFSET])
        return words

    def with_members(self, filled: dict[int, list[int]]) -> Builder:
        """The section with the recorded composites' members put back into their prefix
        records (rebuilt: records cannot grow in place)."""
        out = self.out
        if not filled:
            return out
        rebuilt = Builder()
        rebuilt.strs = out.strs
        rebuilt.lookup = out.lookup
        offs = record_offsets(out.words)
        for i, o in enumerate(offs):
            end = offs[i + 1] if i + 1 < len(offs) else len(out.words)
            rec = list(out.words[o:end])
            mem = filled.get(i + 1)
            if mem is not None:
                rec[1] = (rec[1] & ~0xFFFF) | (len(mem) // 3)
                if any(x >> 24 for x in mem[2::3]):
                    rec[1] |= 1 << 31  # bitfield offsets
                rec += mem
            rebuilt.add(rec)
        return rebuilt


def derive_base(expects: Btf) -> bytes:
    """The distilled base an expects-only module implies: the leading named
    INT/FLOAT/ENUM/ENUM64/FWD/STRUCT/UNION types, members dropped (ENUM64 as sized ENUM)."""
    out = Builder()
    for _tid, t in expects:
        k = int(t.kind)
        if k not in MATCHABLE_KINDS or not t.name_off:
            break
        name = out.add_str(expects.str_bytes(t.name_off))
        if k in COMPOSITE_KINDS:
            out.add([name, k << 24, t.size])  # type: ignore[attr-defined]
        elif k in (K_ENUM, K_ENUM64):
            out.add([name, K_ENUM << 24, t.size])  # type: ignore[attr-defined]
        elif k == K_INT:
            out.add([name, K_INT << 24, t.size,  # type: ignore[attr-defined]
                     t.encoding << 24 | t.bits_offset << 16 | t.nr_bits])  # type: ignore[attr-defined]
        elif k == K_FWD:
            out.add([name, t.kind_flag << 31 | K_FWD << 24, t.size_word])  # type: ignore[attr-defined]
        else:
            out.add([name, K_FLOAT << 24, t.size])  # type: ignore[attr-defined]
    return out.to_bytes()


# --------------------------------------------------------------------- checking
@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    bit_offset: int
    bitfield_size: int
    shape: tuple

    @property
    def type_text(self) -> str:
        # only a mismatch is ever described: not worth formatting for every member
        return _shape_text(self.shape)


_KIND_NAMES: dict[int, str] = {}


def _kind_name(k: int) -> str:
    name = _KIND_NAMES.get(k)
    if name is None:
        name = _KIND_NAMES[k] = kind_name(k)
    return name


def _shape(v: _ById, tid: int, depth: int = 0) -> tuple:
    tid = v.resolve(tid)
    if not tid:
        return ("void",)
    w, o = v.rec(tid)
    k = kind_of(w[o + 1])
    name = v.btf.name_of(w[o])
    if k == K_PTR:
        return ("ptr",)
    if k == K_ARRAY:
        return ("array", _shape(v, w[o + 3], depth + 1) if depth < 8 else (), w[o + 5])
    if k in (K_ENUM, K_ENUM64):
        return ("enum", name, w[o + 2])
    if k in (K_INT, K_FLOAT, K_STRUCT, K_UNION):
        return (_kind_name(k), name, w[o + 2])
    if k == K_FWD:
        return ("fwd", name)
    if k == K_FUNC_PROTO:
        return ("func_proto",)
    return (_kind_name(k), name)


def _shape_text(shape: tuple) -> str:
    k = shape[0]
    if k == "array":
        return f"{_shape_text(shape[1]) if shape[1] else '?'}[{shape[2]}]"
    if k in ("struct", "union", "enum"):
        return f"{k} {shape[1] or '(anon)'} (size {shape[2]})"
    if k in ("int", "float"):
        return f"{shape[1]} (size {shape[2]})"
    if k == "ptr":
        return "pointer"
    return " ".join(str(x) for x in shape)


def flatten(v: _ById, tid: int) -> dict[str, FieldInfo]:
    """Members of composite `tid` by name; anonymous struct/union members are flattened."""
    out: dict[str, FieldInfo] = {}

    def walk(t: int, base: int, depth: int) -> None:
        w, o = v.rec(t)
        info = w[o + 1]
        kflag = kflag_of(info)
        for m in range(vlen_of(info)):
            p = o + 3 + 3 * m
            raw = w[p + 2]
            off = (raw & 0xFFFFFF) if kflag else raw
            bsz = (raw >> 24) if kflag else 0
            mt = w[p + 1]
            name = v.btf.name_of(w[p])
            r = v.resolve(mt)
            if not name and v.kind(r) in COMPOSITE_KINDS and not v.name(r) and depth < 16:
                walk(r, base + off, depth + 1)
                continue
            key = name or f"(anon@{base + off})"
            shape = _shape(v, mt)
            out.setdefault(key, FieldInfo(key, base + off, bsz, shape))

    walk(tid, 0, 0)
    return out


def _target_layout(target: VmlinuxIndex, tv: _ById, vid: int) -> dict[str, FieldInfo]:
    got = target.flat_layouts.get(vid)
    if got is None:
        got = target.flat_layouts[vid] = flatten(tv, vid)
    return got


def _compare_members(label: str, exp: dict[str, FieldInfo], have: dict[str, FieldInfo]
                     ) -> list[dict[str, Any]]:
    """Each recorded member against vmlinux's: gone, moved, bitfield resized, type changed."""
    mismatches: list[dict[str, Any]] = []
    for mname, e in exp.items():
        h = have.get(mname)
        if h is None:
            mismatches.append({"member": mname, "problem": "missing",
                               "old_offset": e.bit_offset, "old_size": e.bitfield_size,
                               "text": f"{label}.{mname}: gone (was at bit {e.bit_offset},"
                                       f" {e.type_text})"})
            continue
        if h.bit_offset != e.bit_offset or h.bitfield_size != e.bitfield_size:
            what = "moved" if h.bit_offset != e.bit_offset else "bitfield size changed"
            sz = (f", bitfield size {e.bitfield_size} -> {h.bitfield_size}"
                  if h.bitfield_size != e.bitfield_size else "")
            mismatches.append({"member": mname, "problem": what,
                               "old_offset": e.bit_offset, "new_offset": h.bit_offset,
                               "old_size": e.bitfield_size, "new_size": h.bitfield_size,
                               "text": f"{label}.{mname}: {what}: bit offset"
                                       f" {e.bit_offset} -> {h.bit_offset}{sz}"
                                       f" ({e.type_text})"})
        if not _compatible(e.shape, h.shape):
            mismatches.append({"member": mname, "problem": "type changed",
                               "old_offset": e.bit_offset, "new_offset": h.bit_offset,
                               "old_type": e.type_text, "new_type": h.type_text,
                               "text": f"{label}.{mname}: type changed: {e.type_text}"
                                       f" -> {h.type_text}"})
    return mismatches


def _compatible(a: tuple, b: tuple) -> bool:
    return a == b


def check_fields(expects: Btf, target: VmlinuxIndex, id_map: dict[int, int],
                 dist_names: dict[tuple[int, bytes], int], embedded: set[int], strict: str,
                 module: str, warn: Callable[[str], None] | None = None) -> list[Problem]:
    """Compare every struct/union of `expects` that has members with its vmlinux match.

    `dist_names` maps (kind, name) of distilled types to their distilled id, `id_map` distilled
    id -> vmlinux id (from relocation), `embedded` the distilled ids the module embeds.
    """
    if strict not in STRICT_CHOICES:
        raise ValueError(f"strict must be one of {', '.join(STRICT_CHOICES)}")
    ev = _ById(expects)
    tv = _ById(target.btf)
    problems: list[Problem] = []
    ew, eoffs = expects.wire_records()
    for tid, o in enumerate(eoffs, expects.start_id):
        # named structs/unions with members, read from the words (no Type objects)
        info = ew[o + 1]
        k = kind_of(info)
        if k not in COMPOSITE_KINDS or not ew[o] or not vlen_of(info):
            continue
        size = ew[o + 2]
        name_b = expects.str_bytes(ew[o])
        name = name_b.decode("utf-8", "replace")
        d = dist_names.get((k, name_b))
        vid = id_map.get(d) if d is not None else None
        if vid is None:
            same = [c for c in target.candidates(name_b) if c.kind == k and c.size == size]
            if len(same) != 1:
                continue  # relocation reports what is missing or ambiguous
            vid = same[0].id
        is_emb = d is not None and d in embedded
        severity = ERROR if strict == "all" or (strict == "embedded" and is_emb) else WARNING
        exp = flatten(ev, tid)
        have = _target_layout(target, tv, vid)
        label = type_label(k, name)
        mismatches = _compare_members(label, exp, have)
        if not mismatches:
            continue
        first = mismatches[0]["text"]
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""  # members
        emb = "embedded" if is_emb else "referenced"
        problems.append(Problem(
            "field", severity,
            f"{module}: {label} ({emb}) does not have the layout the module was built"
            f" against: {first}{more}",
            expected_dict(d if d is not None else tid, k, name, size),
            [], is_emb, [], {"vmlinux_id": vid, "members": mismatches}))
    return problems
