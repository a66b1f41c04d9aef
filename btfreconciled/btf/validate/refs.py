"""PTR and the modifiers (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG), and FUNC's type id:
that the target exists, what it may be, reference loops, modifier chains and TYPE_TAG order
(kernel: btf_ref_type_check_meta, btf_func_check_meta, btf_modifier_resolve,
btf_ptr_resolve, btf_check_type_tags; libbpf: btf_validate_id)."""

from __future__ import annotations

from itertools import compress

from ...errors import ErrorCode
from ..record import MODS_AND_TYPEDEF
from .core import (
    BAD_REF_TARGET,
    FUNC,
    MAX_CHAIN,
    PTR,
    REFS,
    TYPE_TAG,
    _g,
    _scatter,
)


class Refs:
    """Refs checks (a mixin of _Validator: the state lives in core.Core)."""

    def meta_refs(self) -> None:
        """PTR, modifiers and FUNC: the type they name exists (btf_ref_type_check_meta,
        btf_func_check_meta: BTF_TYPE_ID_VALID / type id < nr_types)."""
        sw = self.sw
        self.targets: dict[int, tuple] = {}  # what PTRs, modifiers and FUNCs point to
        for kind in (*REFS, FUNC):
            locs = self.loc(kind)
            self.targets[kind] = col = _g(sw, locs)
            self.check_bound(col, locs, "")

    # ------------------------------------------------------------ pointers and modifiers
    def resolve_refs(self) -> None:
        """PTR and modifiers: what they point to, reference loops, RID (the id a type
        resolves to through modifiers), chain length, TYPE_TAG order.
        Mirrors btf_modifier_resolve, btf_ptr_resolve, btf_check_type_tags."""
        KT = self.KT
        MX: list[int] = []
        Y = list(self.targets[PTR])
        for kind in REFS[1:]:
            MX += self.ids(self.loc(kind))
            Y += self.targets[kind]
        PX = self.ids(self.loc(PTR))
        X = PX + MX
        dk = _g(KT, Y)
        if not BAD_REF_TARGET.isdisjoint(dk):
            i = min((j for j, k in enumerate(dk) if k in BAD_REF_TARGET), key=X.__getitem__)
            self.fail(X[i], f"points to {self._ref(Y[i])}, which it cannot")
        if _has_cycle(X, Y):
            self.report_chain_loop(X, Y)
        RID = list(range(self.T))
        for b, info in self.base_info.items():
            RID[b] = info[0]
        MY = list(Y[len(PX):])
        cur = MY
        while MX:  # pointer jumping: RID[m] = RID[RID[m]] until nothing moves
            _scatter(RID, MX, cur)
            nxt = list(_g(RID, cur))
            if nxt == cur:
                break
            cur = nxt
        self.RID = RID
        self.check_chains(MX, MY)

    def report_chain_loop(self, X: list[int], Y) -> None:  # noqa: ANN001
        nxt = dict(zip(X, Y, strict=True))
        for s in sorted(X):
            seen: dict[int, int] = {}
            path = []
            x = s
            while x in nxt and x not in seen:
                seen[x] = len(path)
                path.append(x)
                x = nxt[x]
            if x in seen:
                self.report_loop(path[seen[x]:], "is in a reference loop")

    def report_loop(self, loop: list[int], what: str, via=None) -> None:  # noqa: ANN001
        """`via(a, b)`, if given, says how a leads to b (" member 2 'x'")."""
        first = min(loop)
        k = loop.index(first)
        loop = loop[k:] + loop[:k]
        nxt = loop[1:] + loop[:1]
        text = " -> ".join(self._ref(a) + (via(a, b) if via else "")
                           for a, b in zip(loop, nxt, strict=True))
        self.fail(first, f"{what}: {text} -> [{first}]", code=ErrorCode.BTF_LOOP)

    def check_chains(self, MX: list[int], MY: list[int]) -> None:
        """Modifier chains: at most 32 links, TYPE_TAGs only at the start (as
        btf_check_type_tags; a split BTF's chain stops at its first base type)."""
        if not MX:
            return
        KT, start = self.KT, self.start
        exits = ({y for y in filter(start.__gt__, MY) if KT[y] in MODS_AND_TYPEDEF}
                 if self.base is not None else set())
        X = MX + list(exits)
        Y = MY + [-1] * len(exits)
        S = set(X)
        depth = 0
        while X:  # peel the chains from their ends, one link per round
            depth += 1
            if depth > MAX_CHAIN:
                self.fail(min(X), f"starts a chain of more than {MAX_CHAIN} modifiers")
            keep = list(map(S.__contains__, Y))
            X = list(compress(X, keep))
            Y = list(compress(Y, keep))
            S = set(X)
        tagged = set(self.ids(self.loc(TYPE_TAG)))
        tagged.update(x for x in exits if KT[x] == TYPE_TAG)
        if not tagged:
            return
        nxt = dict(zip(MX, MY, strict=True))
        while True:  # every modifier whose chain reaches a TYPE_TAG
            new = set(compress(MX, map(tagged.__contains__, MY))) - tagged
            if not new:
                break
            tagged |= new
        bad = [x for x in tagged if KT[x] != TYPE_TAG and x >= start]
        if bad:
            x = min(bad)
            self.fail(x, f"is followed by a TYPE_TAG in its chain (via {self._ref(nxt[x])}); "
                      "type tags must come before other modifiers")


def _has_cycle(X: list[int], Y) -> bool:  # noqa: ANN001
    """Whether the functional graph x -> y (x in X) has a cycle: peel the nodes whose
    target is outside the remaining set until nothing changes."""
    S = set(X)
    while X:
        keep = list(map(S.__contains__, Y))
        if all(keep):
            return True
        X = list(compress(X, keep))
        Y = list(compress(Y, keep))
        S = set(X)
    return False
