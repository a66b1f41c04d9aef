"""Tables by type id for the resolve pass: kind, size/type word, size, and for split BTF
the base types it refers to (kernel: btf_type_id_size, btf_resolve_size; libbpf:
determine_ptr_size)."""

from __future__ import annotations

from itertools import repeat

from ..kinds import Kind
from ..record import MODS_AND_TYPEDEF, vlen_of
from .core import (
    _LONG_NAMES,
    ARRAY,
    DATASEC,
    DECL_TAG,
    ENUM,
    ENUM64,
    FLOAT,
    FUNC,
    HUGE,
    INT,
    PTR,
    REFS,
    SIZED,
    STRUCT,
    UNION,
    VAR,
    _g,
    _int_regular,
    _scatter,
)


class Tables:
    """Tables checks (a mixin of _Validator: the state lives in core.Core)."""

    # ------------------------------------------------------------ tables by type id
    def build_tables(self) -> None:
        """KT (kind) and SW (size/type word) for every type id; for a split BTF, base
        entries only for the base types this BTF refers to (see fill_base).
        Mirrors btf_type_id_size's inputs; libbpf determine_ptr_size."""
        start = self.start
        self.KT = [0] * start + self.kl
        self.SW = [0] * start + list(self.sw)
        self.ptr_size = self.find_ptr_size()
        self.base_info: dict[int, tuple] = {}
        if self.base is None:
            return
        refs: set[int] = set()
        below = start.__gt__
        for kind in (*REFS, FUNC, VAR, DECL_TAG):
            refs.update(filter(below, _g(self.sw, self.loc(kind))))
        for g in self.member_groups:
            refs.update(filter(below, g.MT))
        if self.protos:
            refs.update(filter(below, self.protos.ret))
            refs.update(filter(below, self.protos.PTset))
        if self.arrays:
            refs.update(filter(below, self.arrays[2]))
            refs.update(filter(below, self.arrays[3]))
        w = self.w
        for local in self.loc(DATASEC):
            o = self.offs[local]
            refs.update(filter(below, w[o + 3:o + 3 + 3 * vlen_of(w[o + 1]):3]))
        refs.discard(0)
        for b in sorted(refs):
            if b not in self.base_info:
                self.fill_base(b)

    def find_ptr_size(self) -> int:
        """Like libbpf's determine_ptr_size: the size of 'long', else 8."""
        for local in self.loc(INT):
            if self._name_bytes(self.names[local]) in _LONG_NAMES and self.sw[local] in (4, 8):
                return self.sw[local]
        base = self.base
        while base is not None:
            for name in _LONG_NAMES:
                for tid in base.find(name, Kind.INT):
                    size = base.type(tid).size
                    if size in (4, 8):
                        return size
            base = base.base
        return 8

    def fill_base(self, b: int) -> None:
        """Table entries for base type `b` and for what it resolves to (the base is valid:
        it was validated when parsed, or verified by the kernel)."""
        base = self.base
        KT, SW = self.KT, self.SW
        x = b
        path = []
        while True:
            kind = int(base.kind_of(x))
            t = base.type(x)
            KT[x] = kind
            SW[x] = getattr(t, "size", getattr(t, "type", 0))
            path.append(x)
            if kind not in MODS_AND_TYPEDEF or x == 0:
                break
            x = t.type
        r = path[-1]
        rk = KT[r]
        size = self.base_size(r)
        eff0 = size
        if rk == INT:
            t = base.type(r)
            eff0 = t.nr_bits >> 3 if _int_regular(t.nr_bits, t.bits_offset) else HUGE
        elif rk == FLOAT or rk not in SIZED:
            eff0 = HUGE
        eff1 = HUGE if rk in (ENUM, ENUM64) else eff0
        for x in path:
            self.base_info[x] = (r, size, eff0, eff1)
        if rk in (VAR, FUNC) and SW[r] not in self.base_info:
            self.fill_base(SW[r])  # a VAR's type, a FUNC's proto

    def base_size(self, tid: int) -> int:
        base = self.base
        nelems = 1
        for _ in range(64):
            kind = int(base.kind_of(tid)) if tid else 0
            t = base.type(tid)
            if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
                return min(nelems * t.size, HUGE)
            if kind == PTR:
                return min(nelems * self.ptr_size, HUGE)
            if kind == ARRAY:
                nelems *= t.nelems
                tid = t.type
            elif kind in MODS_AND_TYPEDEF or kind == VAR:
                tid = t.type
            else:
                return 0
        return 0

    def finish_tables(self) -> None:
        """SIZE: the size in bytes of each type id that has one.
        Mirrors btf_type_id_size."""
        SIZE = list(self.SW)
        _scatter(SIZE, self.ids(self.loc(PTR)), repeat(self.ptr_size))
        _scatter(SIZE, self.asize.keys(), self.asize.values())
        for b, (_r, size, _eff0, _eff1) in self.base_info.items():
            SIZE[b] = size
        self.SIZE = SIZE
