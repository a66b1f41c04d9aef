"""Structural comparison of two split BTFs on the same base (used by the identity property:
distill then reconcile gives back the module's original BTF).

`a` is the original split BTF, `b` the round-tripped one. Both number their first len(a)
split types the same way. `b` may have extra split types after those: copies of anonymous
base types that distillation moved into the module's BTF; a reference to base type X in `a`
may then be a reference to a copy of X in `b`. Records are compared with every string offset
resolved to its string, so the result is "same `bpftool btf dump` output" up to those copies.

Test code (tests/test_reconcile.py, integration/test_identity.py), not part of the product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from btfreconciled.btf.btf import Btf
from btfreconciled.reconcile.wire import id_slots, str_slots


@dataclass
class Comparison:
    equal: bool  # same types, same ids (dump output identical)
    equivalent: bool  # same shapes, references to base types possibly via copies
    copies: int  # extra split types in b
    differences: list[str] = field(default_factory=list)


class _Side:
    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self.split_words, self.split_offs = btf.wire_records()
        self.start = btf.start_id

    def record(self, tid: int, base_view: _Side | None) -> tuple[tuple, tuple, tuple]:
        """(plain words, strings, ids) of a type's record."""
        if tid >= self.start:
            w, offs, i = self.split_words, self.split_offs, tid - self.start
        else:
            assert base_view is not None
            w, offs, i = base_view.split_words, base_view.split_offs, tid - 1
        o = offs[i]
        end = offs[i + 1] if i + 1 < len(offs) else len(w)
        ids = id_slots(w, o)
        strs = str_slots(w, o)
        skip = set(ids) | set(strs)
        plain = tuple(w[p] for p in range(o, end) if p not in skip)
        names = tuple(self.btf.str_bytes(w[p]) if w[p] else b"" for p in strs)
        return plain, names, tuple(w[p] for p in ids)


def compare_split(a: Btf, b: Btf, base_view: _Side | None = None) -> Comparison:
    if a.start_id != b.start_id:
        return Comparison(False, False, 0, [f"split starts at {a.start_id} vs {b.start_id}"])
    base = a.base
    if base is None:
        raise ValueError("compare_split() compares split BTFs")
    bv = base_view or _Side(base)
    sa, sb = _Side(a), _Side(b)
    n = len(sa.split_offs)
    copies = len(sb.split_offs) - n
    diffs: list[str] = []
    if copies < 0:
        return Comparison(False, False, copies, [f"{-copies} split types missing"])
    start = a.start_id
    first_copy = start + n
    assumed: set[tuple[int, int]] = set()
    equal = True

    def equiv(x: int, y: int) -> bool:
        nonlocal equal
        if x == y:
            return True
        equal = False
        if y < first_copy or x >= start:
            return False
        key = (x, y)
        if key in assumed:
            return True
        assumed.add(key)
        ra = sa.record(x, bv)
        rb = sb.record(y, bv)
        if ra[0] != rb[0] or ra[1] != rb[1] or len(ra[2]) != len(rb[2]):
            return False
        return all(equiv(p, q) for p, q in zip(ra[2], rb[2], strict=True))

    for tid in range(start, first_copy):
        ra = sa.record(tid, bv)
        rb = sb.record(tid, bv)
        if ra[0] != rb[0] or ra[1] != rb[1] or len(ra[2]) != len(rb[2]):
            diffs.append(f"[{tid}] differs: {ra} vs {rb}")
        elif not all(equiv(p, q) for p, q in zip(ra[2], rb[2], strict=True)):
            diffs.append(f"[{tid}] refers to different types: {ra[2]} vs {rb[2]}")
        if len(diffs) >= 10:
            break
    ok = not diffs
    return Comparison(ok and equal and copies == 0, ok, copies, diffs)


def base_side(base: Btf) -> _Side:
    """Precomputed record view of a base BTF, to share across many compare_split() calls."""
    return _Side(base)
