"""STRUCT, UNION and ARRAY: members and elements, their types, self-embedding, array sizes
and the per-member layout rules (kernel: btf_struct_check_meta, btf_array_check_meta,
btf_struct_resolve, btf_array_resolve, btf_int_check_member, btf_int_check_kflag_member,
btf_enum_check_member, btf_enum_check_kflag_member, btf_generic_check_kflag_member,
btf_struct_check_member, btf_float_check_member; libbpf: btf_validate_type)."""

from __future__ import annotations

from bisect import bisect_right
from itertools import chain, compress, repeat
from operator import add, and_, gt, le, not_

from ...errors import ErrorCode
from ..layout import (
    ARRAY_INDEX,
    ARRAY_NELEMS,
    ARRAY_SIZE,
    ARRAY_TYPE,
    ITEMS,
    MEMBER_NAME,
    MEMBER_OFFSET,
    MEMBER_TYPE,
    MEMBER_WORDS,
)
from ..record import kind_of, vlen_of
from .core import (
    _EFF_SPECIAL,
    ARRAY,
    BAD_MEMBER,
    ENUM,
    ENUM64,
    FLOAT,
    HOLDS_BY_VALUE,
    HUGE,
    INT,
    PTR,
    SIZED,
    STRUCT,
    U32_MAX,
    UNION,
    _first,
    _g,
    _int_regular,
    _Items,
    _scatter,
)


class Composites:
    """Composites checks (a mixin of _Validator: the state lives in core.Core)."""

    # ------------------------------------------------------------ meta: members
    def meta_members(self) -> None:
        """Structs and unions, by (kind, kind_flag): the columns of all their members.
        Mirrors btf_struct_check_meta."""
        self.member_groups: list[_Items] = []
        for kind in (STRUCT, UNION):
            locs = self.loc(kind)
            if not locs:
                continue
            kf = list(map((31).__rrshift__, _g(self.infos, locs)))
            for kflag, sel in ((0, map(not_, kf)), (1, kf)):
                glocs = list(compress(locs, sel))
                if glocs:
                    self.member_groups.append(self.meta_member_group(kind, kflag, glocs))

    def meta_member_group(self, kind: int, kflag: int, locs: list[int]) -> _Items:
        g = self.items(locs, MEMBER_WORDS)
        g.kind, g.kflag = kind, kflag
        # a list: every later pass then reuses these int objects instead of making new ones
        fl = self.flat(g).tolist()
        n = MEMBER_WORDS
        g.MN, g.MT, g.MO = MN, MT, MO = (fl[MEMBER_NAME::n], fl[MEMBER_TYPE::n],
                                         fl[MEMBER_OFFSET::n])
        g.ssz = _g(self.sw, locs)
        if not MT:
            return g
        self.check_item_names(g, MN, "member", required=False)
        T = self.T
        g.MTset = mts = set(MT)
        if max(mts) >= T or 0 in mts:
            i = _first(map(T.__le__, MT)) if max(mts) >= T else MT.index(0)
            r, j, p = g.where(i)
            what = f"member {j}{self._label(MN[i])}"
            msg = self.past_end(what, MT[i]) if MT[i] else f"{what} is void (type [0])"
            self.fail_local(locs[r], msg, p + MEMBER_TYPE,
                            ErrorCode.BTF_BAD_TYPE_ID if MT[i] else ErrorCode.BTF_INVALID)
        BO = MO if not kflag else list(map((0xFFFFFF).__and__, MO))
        if kind == UNION:
            if any(BO):
                i = _first(BO)
                r, j, p = g.where(i)
                self.fail_local(locs[r], f"member {j}{self._label(MN[i])} has bit offset "
                                f"{BO[i]} (union members are at offset 0)", p + MEMBER_OFFSET)
            return g
        # member bit offsets never decrease (">": a last "char a[0]" may share an offset);
        # that they lie inside the struct is part of the member checks below
        prev = [0, *BO[:-1]]
        _scatter(prev, g.cum[:bisect_right(g.cum, len(BO) - 1)], repeat(0))
        if not all(map(le, prev, BO)):
            i = _first(map(gt, prev, BO))
            r, j, p = g.where(i)
            self.fail_local(locs[r], f"member {j}{self._label(MN[i])} at bit offset {BO[i]} "
                            f"comes before the previous member (bit offset {prev[i]})",
                            p + MEMBER_OFFSET)
        return g

    # ------------------------------------------------------------ meta: arrays
    def meta_arrays(self) -> None:
        """Mirrors btf_array_check_meta."""
        locs = self.loc(ARRAY)
        self.arrays = None
        if not locs:
            return
        ofs = _g(self.offs, locs)
        sizes = _g(self.sw, locs)
        if any(sizes):
            i = _first(sizes)
            self.fail_local(locs[i], f"has size word {sizes[i]} (must be 0)", ofs[i] + ARRAY_SIZE)
        AE = self.field(ofs, ARRAY_TYPE)
        AI = self.field(ofs, ARRAY_INDEX)
        AN = self.field(ofs, ARRAY_NELEMS)
        self.check_bound(AE, locs, "element type", zero_ok=False,
                         word=lambda i: ofs[i] + ARRAY_TYPE)
        self.check_bound(AI, locs, "index type", zero_ok=False, word=lambda i: ofs[i] + ARRAY_INDEX)
        self.arrays = (locs, ofs, AE, AI, AN)

    # ------------------------------------------------------------ arrays
    def resolve_arrays(self) -> None:
        """Mirrors btf_array_resolve (index: btf_type_int_is_regular)."""
        if not self.arrays:
            return
        locs, ofs, AE, AI, AN = self.arrays
        KT, RID = self.KT, self.RID
        for col, what, k in ((AE, "element type", ARRAY_TYPE), (AI, "index type", ARRAY_INDEX)):
            dk = _g(KT, col)
            if not BAD_MEMBER.isdisjoint(dk):
                i = _first(map(BAD_MEMBER.__contains__, dk))
                self.fail_local(locs[i], f"{what} {self._ref(col[i])} has no size", ofs[i] + k)
        RI = _g(RID, AI)
        for r in set(RI):
            if KT[r] != INT or not self.int_regular(r):
                i = RI.index(r)
                self.fail_local(locs[i], f"index type {self._ref(AI[i])} is not a regular int "
                                "(8, 16, 32, 64 or 128 bits at bit offset 0)", ofs[i] + ARRAY_INDEX)
        RE = _g(RID, AE)
        for r in set(RE):
            k = KT[r]
            if k not in SIZED or (k == INT and not self.int_regular(r)):
                i = RE.index(r)
                why = "has no size" if k not in SIZED else "is an int bitfield type"
                self.fail_local(locs[i], f"element type {self._ref(AE[i])} {why}",
                                ofs[i] + ARRAY_TYPE)
        self.RE = RE

    # ------------------------------------------------------------ member types
    def resolve_member_types(self) -> None:
        """Mirrors btf_struct_resolve (btf_type_id_size)."""
        for g in self.member_groups:
            if not g.MT:
                continue
            dl, dk, rl, rk = self.resolved(g.MT, g.MTset)
            g.dl, g.rl, g.rk = dl, rl, rk
            if BAD_MEMBER.isdisjoint(dk) and SIZED.issuperset(rk):
                continue
            bad = {d for d, k, r in zip(dl, dk, rk, strict=True)
                   if k in BAD_MEMBER or r not in SIZED}
            i = _first(map(bad.__contains__, g.MT))
            r, j, p = g.where(i)
            t = g.MT[i]
            via = "" if self.RID[t] == t else f", which resolves to {self._ref(self.RID[t])},"
            self.fail_local(g.locs[r], f"member {j}{self._label(g.MN[i])} has type "
                            f"{self._ref(t)}{via} without a size", p + MEMBER_TYPE)

    # ------------------------------------------------------------ embedding loops
    def resolve_embedding(self) -> None:
        """No struct/union/array may contain itself by value (through members, array
        elements and modifiers).
        Mirrors btf_struct_resolve/btf_array_resolve's resolve stack (a type that contains
        itself)."""
        KT, start = self.KT, self.start
        src: list[int] = []
        dst: list[int] = []
        for g in self.member_groups:
            if not g.MT:
                continue
            comp = dict(compress(zip(g.dl, g.rl, strict=True),
                                 map(and_, map(HOLDS_BY_VALUE.__contains__, g.rk),
                                     map(start.__le__, g.rl))))
            if not comp:
                continue
            sel = list(map(comp.__contains__, g.MT))
            owners = chain.from_iterable(map(repeat, self.ids(g.locs), g.vlens))
            src += compress(owners, sel)
            dst += _g(comp, list(compress(g.MT, sel)))
        if self.arrays:
            RE = self.RE
            sel = [k in HOLDS_BY_VALUE and r >= start for r, k in zip(RE, _g(KT, RE), strict=True)]
            dst += compress(RE, sel)
            src += compress(self.ids(self.arrays[0]), sel)
        while src:  # peel nodes that no longer contain anything still in the graph
            alive = set(src)
            keep = list(map(alive.__contains__, dst))
            if all(keep):
                self.report_embedding_loop(src, dst)
            src = list(compress(src, keep))
            dst = list(compress(dst, keep))

    def report_embedding_loop(self, src: list[int], dst: list[int]) -> None:
        adj: dict[int, list[int]] = {}
        for s, d in zip(src, dst, strict=True):
            adj.setdefault(s, []).append(d)
        # every node left has an edge to another one left: walk until a node repeats
        seen: dict[int, int] = {}
        path: list[int] = []
        x = min(adj)
        while x not in seen:
            seen[x] = len(path)
            path.append(x)
            x = min(adj[x])
        self.report_loop(path[seen[x]:], "contains itself by value", self.embedding_via)

    def embedding_via(self, a: int, b: int) -> str:
        """Which member (or the element) of local type a holds b by value."""
        w, o = self.w, self.offs[a - self.start]
        kind = kind_of(w[o + 1])
        if kind == ARRAY:
            return " element"
        for j in range(vlen_of(w[o + 1])):
            p = o + ITEMS + MEMBER_WORDS * j
            t = w[p + MEMBER_TYPE]
            if t < self.T and self.RID[t] == b:
                return f" member {j}{self._label(w[p + MEMBER_NAME])}"
        return ""

    # ------------------------------------------------------------ sizes
    def array_sizes(self) -> None:
        """Mirrors btf_array_resolve: nelems * element size fits u32."""
        self.asize: dict[int, int] = {}
        if not self.arrays:
            return
        locs, ofs, AE, AI, AN = self.arrays
        KT, SW, start = self.KT, self.SW, self.start
        asize = self.asize
        ids = self.ids(locs)
        elem_of = dict(zip(ids, self.RE, strict=True))
        nelems_of = dict(zip(ids, AN, strict=True))
        for a in ids:
            path = [a]
            e = elem_of[a]
            while a not in asize and KT[e] == ARRAY and e >= start and e not in asize:
                path.append(e)
                e = elem_of[e]
            for x in reversed(path):
                if x in asize:
                    continue
                e = elem_of[x]
                if e in asize:
                    esize = asize[e]
                elif e < start:
                    esize = self.base_info[e][1]
                elif KT[e] == PTR:
                    esize = self.ptr_size
                else:
                    esize = SW[e]
                nel = nelems_of[x]
                if nel and esize > U32_MAX // nel:
                    self.fail(x, f"of {nel} elements of {esize} bytes is larger than 4 GiB",
                              ofs[locs.index(x - start)] + ARRAY_NELEMS)
                asize[x] = nel * esize

    def effective_sizes(self, g: _Items) -> dict[int, int]:
        """Member type id -> the bytes such a member occupies for the quick check
        (HUGE: not decided by bytes; the exact check runs)."""
        start = self.start
        eff = dict(zip(g.dl, _g(self.SIZE, g.rl), strict=True))
        special = _EFF_SPECIAL[g.kflag].__contains__
        for d, r, k in compress(zip(g.dl, g.rl, g.rk, strict=True), map(special, g.rk)):
            if k == INT:
                if r < start:
                    eff[d] = self.base_info[r][2]
                else:
                    bits, off = self.int_bits(r)
                    eff[d] = bits >> 3 if _int_regular(bits, off) else HUGE
            elif k == FLOAT or (g.kflag and k in (ENUM, ENUM64)):
                eff[d] = HUGE
        return eff

    # ------------------------------------------------------------ members
    def resolve_members(self) -> None:
        """Every member fits its struct. Quick check for the common case (byte aligned,
        inside the struct); whatever fails it gets the kernel's exact rule for its type.
        Mirrors btf_struct_resolve -> each member type's check_member / check_kflag_member."""
        for g in self.member_groups:
            if not g.MT:
                continue
            eff = self.effective_sizes(g)
            eff_bits = dict(zip(eff, map((8).__mul__, eff.values()), strict=True))
            MO = g.MO
            # in bits: a member ends inside its struct (misaligned ones are caught below)
            ends = map(add, MO, _g(eff_bits, g.MT))
            size_bits = chain.from_iterable(map(repeat, map((8).__mul__, g.ssz), g.vlens))
            slow = set(compress(range(len(MO)), map(gt, ends, size_bits)))
            mask = 0xFF000007 if g.kflag else 7
            if any(map(mask.__and__, MO)):
                slow.update(compress(range(len(MO)), map(mask.__and__, MO)))
            if not slow:
                continue
            rid = dict(zip(g.dl, g.rl, strict=True))
            rkind = dict(zip(g.dl, g.rk, strict=True))
            kflag, cum, ssz, MT = g.kflag, g.cum, g.ssz, g.MT
            for i in sorted(slow):
                mo, t = MO[i], MT[i]
                r = bisect_right(cum, i)
                ss = ssz[r]
                bs = mo >> 24
                if kflag and bs and rkind[t] == INT:
                    # the common slow case, an int bitfield: eff is its int's bytes if that
                    # is a regular int; btf_int_check_kflag_member, inline
                    e = eff[t]
                    bo = mo & 0xFFFFFF
                    if e < HUGE and bs <= 8 * e and (bo & 7) + bs <= 128 and bo + bs <= 8 * ss:
                        continue
                msg = self.member_problem(kflag, ss, mo, t, rid[t])
                if msg:
                    r, j, p = g.where(i)
                    self.fail_local(g.locs[r], f"member {j}{self._label(g.MN[i])} {msg}",
                                    p + MEMBER_OFFSET)

    def member_problem(self, kflag: int, ssize: int, moff: int, mt: int,  # noqa: C901
                       rid: int) -> str | None:
        """The kernel's btf_*_check_member / check_kflag_member for one member."""
        rk = self.KT[rid]
        if kflag:
            bs, bo = moff >> 24, moff & 0xFFFFFF
            if rk == INT:
                bits, ioff = self.int_bits(rid)
                if not _int_regular(bits, ioff):
                    return f"has type {self._ref(mt)}, not a regular int as kind_flag needs"
                if not bs:
                    if bo & 7:
                        return f"at bit offset {bo} is not byte aligned"
                    nr = bits
                elif bs > bits:
                    return f"has bitfield size {bs}, more than the {bits} bits of its type"
                else:
                    nr = bs
                return _fits(bo, nr, ssize)
            if rk in (ENUM, ENUM64):
                if not bs:
                    if bo & 7:
                        return f"at bit offset {bo} is not byte aligned"
                    nr = 32
                elif bs > 32:
                    return f"has bitfield size {bs} (at most 32 for an enum)"
                else:
                    nr = bs
                if (bo + nr + 7) >> 3 > ssize:
                    return f"(bits {bo}..{bo + nr}) ends past the end of the {ssize}-byte struct"
                return None
            if bs:
                return f"has bitfield size {bs} but type {self._ref(mt)}, not an int or enum"
            moff = bo
        if rk == INT:
            bits, ioff = self.int_bits(rid)
            if moff + ioff > U32_MAX:
                return f"at bit offset {moff} plus its int's bit offset {ioff} overflows u32"
            return _fits(moff + ioff, bits, ssize)
        size = self.ptr_size if rk == PTR else self.SIZE[rid]
        if rk == FLOAT:
            align = min(self.ptr_size, size) * 8
            if moff % align:
                return f"(a {size}-byte float) at bit offset {moff} is not " \
                       f"{align // 8}-byte aligned"
        elif moff & 7:
            return f"at bit offset {moff} is not byte aligned"
        if (moff >> 3) + size > ssize:
            return f"of {size} bytes at byte offset {moff >> 3} ends past the end of the " \
                   f"{ssize}-byte struct"
        return None


def _fits(bit_off: int, nr_bits: int, ssize: int) -> str | None:
    """The tail of btf_int_check_member / btf_int_check_kflag_member."""
    ncb = nr_bits + (bit_off & 7)
    if ncb > 128:
        return f"at bit offset {bit_off} spans more than 128 bits"
    byte = bit_off >> 3
    if ssize < byte or ssize - byte < (ncb + 7) >> 3:
        return f"({nr_bits} bits at bit offset {bit_off}) ends past the end of the " \
               f"{ssize}-byte struct"
    return None
