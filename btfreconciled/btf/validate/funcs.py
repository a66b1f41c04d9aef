"""FUNC_PROTO and FUNC: parameters and return types, varargs, named parameters (kernel:
btf_func_proto_check_meta, btf_func_proto_check, btf_func_check_meta, btf_func_check,
btf_func_resolve)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from itertools import compress
from operator import itemgetter, not_

from ...errors import ErrorCode
from ..layout import ITEMS, PARAM_NAME, PARAM_TYPE, PARAM_WORDS
from .core import (
    FUNC,
    FUNC_PROTO,
    SIZED,
    SOURCE_ONLY,
    _first,
    _g,
    _positions,
)


class _Protos:
    """FUNC_PROTO records: return types, and parameters as columns by vlen."""

    def __init__(self) -> None:
        self.locs: list[int] = []
        self.ret: tuple = ()
        # (locals of the protos with vlen v, parameter index j, v, name offsets, types)
        self.cols: list[tuple] = []
        self.PTset: set[int] = set()
        self.unnamed_locs: set[int] = set()


class Funcs:
    """Funcs checks (a mixin of _Validator: the state lives in core.Core)."""

    # ------------------------------------------------------------ meta: protos
    def meta_protos(self) -> None:
        """Parameters as columns: protos sorted by vlen, then one gather per parameter
        position (cheaper than cutting 29k small records out one by one).
        Mirrors btf_func_proto_check_meta; btf_func_proto_check (ids, varargs)."""
        locs = self.loc(FUNC_PROTO)
        self.protos = None
        if not locs:
            return
        p = self.protos = _Protos()
        p.locs = locs
        p.ret = _g(self.sw, locs)
        self.check_bound(p.ret, locs, "return type")
        infos = self.infos
        by_vlen = sorted(locs, key=infos.__getitem__)  # kind and kind_flag are all equal
        key = (0xFFFF).__and__
        vl = list(map(key, _g(infos, by_vlen)))
        mv = memoryview(self.w)
        offs = self.offs
        lo = 0
        pts: set[int] = set()
        while lo < len(vl):
            v = vl[lo]
            hi = bisect_right(vl, v, lo)
            group = by_vlen[lo:hi]
            lo = hi
            if not v:
                continue
            ofs = list(_g(offs, group))
            get = itemgetter(*ofs) if len(ofs) > 1 else (lambda m, o=ofs[0]: (m[o],))
            for j in range(v):
                pts |= self._param_column(p, group, ofs, get, mv, j, v)
        pts.discard(0)
        p.PTset = pts

    def _param_column(self, p: _Protos, group: list[int], ofs: list[int],
                      get: Callable[[memoryview], tuple[int, ...]], mv: memoryview,
                      j: int, v: int) -> set[int]:
        """Parameter j of every proto with vlen v: name offsets and types gathered at once,
        then checked as columns; returns the parameter types seen."""
        T, end = self.T, self.str_end
        at_name = ITEMS + PARAM_NAME + PARAM_WORDS * j  # record-relative words
        at_type = ITEMS + PARAM_TYPE + PARAM_WORDS * j
        PN = get(mv[at_name:])
        PT = get(mv[at_type:])
        p.cols.append((group, j, v, PN, PT))

        def fail(i: int) -> None:
            self.fail_local(group[i], f"parameter {j + 1} has name offset {PN[i]:#x} "
                            f"past the end of the strings ({end:#x})", ofs[i] + at_name,
                            ErrorCode.BTF_BAD_STRINGS)

        self.idents.append((PN, False, fail))
        distinct = set(PT)
        if max(distinct) >= T:
            i = _first(map(T.__le__, PT))
            self.fail_local(group[i], self.past_end(
                f"parameter {j + 1}{self._label(PN[i])}", PT[i]), ofs[i] + at_type,
                ErrorCode.BTF_BAD_TYPE_ID)
        if 0 in distinct:  # a void parameter: only the last, unnamed one (varargs)
            for i in _positions(PT, 0):
                if j != v - 1:
                    self.fail_local(group[i], f"parameter {j + 1} is void (only a last "
                                    "parameter may be, for varargs)", ofs[i] + at_type)
                if PN[i]:
                    self.fail_local(group[i], f"vararg parameter {j + 1} has a name"
                                    f"{self._label(PN[i])}", ofs[i] + at_name)
        # protos with an unnamed (non-vararg) parameter
        if 0 not in distinct:
            p.unnamed_locs.update(compress(group, map(not_, PN)))
        else:
            p.unnamed_locs.update(group[i] for i in _positions(PN, 0) if PT[i])
        return distinct

    # ------------------------------------------------------------ protos and funcs
    def resolve_protos(self) -> None:
        """Mirrors btf_func_proto_check."""
        self.unnamed: set[int] = set()
        p = self.protos
        if not p:
            return
        locs = p.locs
        # return types: void, or something with a size
        dl, dk, rl, rk = self.resolved(p.ret)
        bad = {d for d, k, r in zip(dl, dk, rk, strict=True)
               if d and (k in SOURCE_ONLY or r not in SIZED)}
        if bad:
            i = _first(map(bad.__contains__, p.ret))
            self.fail_local(locs[i], f"returns {self._ref(p.ret[i])}, which has no size",
                            self.offs[locs[i]] + 2)
        # parameters: something with a size (void ones were checked: last, varargs)
        if p.PTset:
            dl, dk, rl, rk = self.resolved((), p.PTset)
            bad = {d for d, k, r in zip(dl, dk, rk, strict=True)
                   if k in SOURCE_ONLY or r not in SIZED}
            if bad:
                local, j, i, PN, PT = min(
                    (group[i], j, i, PN, PT) for group, j, v, PN, PT in p.cols
                    for i in range(len(PT)) if PT[i] in bad)
                self.fail_local(local, f"parameter {j + 1}{self._label(PN[i])} has type "
                                f"{self._ref(PT[i])}, which has no size",
                                self.offs[local] + ITEMS + PARAM_TYPE + PARAM_WORDS * j)
        # protos with an unnamed parameter cannot be a FUNC's type
        self.unnamed = set(map(self.start.__add__, p.unnamed_locs))

    def resolve_funcs(self) -> None:
        """Mirrors btf_func_check, btf_func_resolve."""
        locs = self.loc(FUNC)
        if not locs:
            return
        KT, start = self.KT, self.start
        ft = self.targets[FUNC]
        protos = set(ft)
        if {KT[p] for p in protos} != {FUNC_PROTO}:
            i = next(i for i, p in enumerate(ft) if KT[p] != FUNC_PROTO)
            self.fail_local(locs[i], f"has type {self._ref(ft[i])}, which is not a FUNC_PROTO",
                            self.offs[locs[i]] + 2)
        unnamed = set(self.unnamed)
        for p in protos:
            if p < start and any(not q.name_off and q.type for q in self.base.type(p).params):
                unnamed.add(p)
        if not unnamed.isdisjoint(protos):
            i = next(i for i, p in enumerate(ft) if p in unnamed)
            self.fail_local(locs[i], f"has type {self._ref(ft[i])}, which has an unnamed "
                            "parameter", self.offs[locs[i]] + 2)
