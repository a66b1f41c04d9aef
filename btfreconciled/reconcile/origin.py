"""Which vmlinux a classic split BTF was built for: read it off the module itself.

Classic module BTF continues the type ids and string offsets of the exact vmlinux it was
built against. Two numbers of that base are therefore written into the module:

* its type count N (void included): the module's own types are ids N .. N+k-1, so every
  reference at or above N names one of them, and must name a type of a kind that fits the
  reference (a FUNC points at a FUNC_PROTO, a DATASEC entry at a VAR or FUNC, a member at a
  sized type, ...). The largest reference bounds N from below (it must stay < N+k); the
  smallest N from there on whose own-type references all fit is the base's count: one less
  and some reference lands on a neighbouring own type of the wrong kind.
* its string-section length L: the module's own strings start at offset L, so every name
  offset at or above L must start a string of the module's own string section, and the
  largest one bounds L from below. The smallest such L is the base's length.

Neither is a guess: both follow from the module's own words, and `shape.exact` says whether
the kind/string checks singled the value out among the candidates the bounds allow. A
candidate vmlinux is the module's build when its type count and string length are N and L
(the fingerprint) and the module's BTF then passes the kernel's own checks on it
(btf/validate.py), every base name offset the module uses starting a string there.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..btf.kinds import (
    BTF_MAGIC,
    HEADER_SIZE,
    K_ARRAY,
    K_CONST,
    K_DATASEC,
    K_DECL_TAG,
    K_ENUM,
    K_ENUM64,
    K_FLOAT,
    K_FUNC,
    K_FUNC_PROTO,
    K_FWD,
    K_INT,
    K_PTR,
    K_RESTRICT,
    K_STRUCT,
    K_TYPE_TAG,
    K_TYPEDEF,
    K_UNION,
    K_VAR,
    K_VOLATILE,
    NR_KINDS,
)
from ..btf.layout import (
    ARRAY_INDEX,
    ARRAY_NELEMS,
    ARRAY_TYPE,
    ITEMS,
    MEMBER_OFFSET,
    MEMBER_TYPE,
    MEMBER_WORDS,
    PARAM_TYPE,
    PARAM_WORDS,
    SECINFO_SIZE,
    SECINFO_TYPE,
    SECINFO_WORDS,
)
from ..btf.record import COMPOSITE_KINDS, NATIVE
from .wire import WireError, record_offsets, str_slots

# what cannot be held by value (a member, an array element, a variable, a parameter): no
# size, or not a data type at all
_NOT_VALUE = frozenset({K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC, K_DECL_TAG, K_FWD})
_NOT_BEHIND_REF = frozenset({K_FUNC, K_VAR, K_DATASEC, K_DECL_TAG})
_ALL = frozenset(range(1, NR_KINDS))
MAX_SCAN = 4096  # candidate values tried past the lower bound before giving up
AMBIGUITY_WINDOW = 16  # after the first value that fits, how many more are tried


class OriginError(ValueError):
    """The module's BTF cannot be read as split BTF; the message is one line."""


@dataclass
class SplitShape:
    """What a classic split BTF says about the base it was built for."""

    own_types: int
    own_str_len: int
    base_types: int | None  # N, void included; None when no value fits
    base_str_len: int | None  # L
    types_lower_bound: int
    str_lower_bound: int
    exact: bool  # both values singled out by the checks (not merely the first that passed)
    type_count_candidates: list[int] = field(default_factory=list)
    str_len_candidates: list[int] = field(default_factory=list)
    base_type_refs: set[int] = field(default_factory=set, repr=False)
    base_str_refs: set[int] = field(default_factory=set, repr=False)

    def describe(self) -> str:
        def one(vals: list[int], floor: int) -> str:
            if not vals:  # nothing of the module's own pins it: only a lower bound
                return f"at least {floor}"
            return str(vals[0]) if len(vals) == 1 else " or ".join(map(str, vals[:3]))
        return (f"a vmlinux with {one(self.type_count_candidates, self.types_lower_bound)} "
                f"types and {one(self.str_len_candidates, self.str_lower_bound)} string bytes")

    def matches(self, type_count: int, str_len: int) -> bool:
        """The fingerprint: could a base with these numbers be the module's build? Where the
        module pins no value (no reference between its own types, no string of its own),
        only the lower bound counts."""
        n_ok = (type_count in self.type_count_candidates if self.type_count_candidates
                else type_count >= self.types_lower_bound)
        l_ok = (str_len in self.str_len_candidates if self.str_len_candidates
                else str_len >= self.str_lower_bound)
        return n_ok and l_ok


def _sections(data: bytes, source: str) -> tuple[array, bytes]:
    if len(data) < HEADER_SIZE:
        raise OriginError(f"{source}: too short for a BTF header ({len(data)} bytes)")
    (magic,) = struct.unpack_from("<H", data, 0)
    order = "<" if magic == BTF_MAGIC else ">" if magic == 0x9FEB else None
    if order is None:
        raise OriginError(f"{source}: bad BTF magic {magic:#06x}")
    _, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "HBBIIIII", data, 0)
    t0, s0 = hdr_len + type_off, hdr_len + str_off
    if type_len % 4 or t0 + type_len > len(data) or s0 + str_len > len(data):
        raise OriginError(f"{source}: BTF sections run past the end of the data")
    words = array("I")
    words.frombytes(data[t0:t0 + type_len])
    if order != NATIVE:
        words.byteswap()
    return words, data[s0:s0 + str_len]


# A reference: (referenced id, kinds it may name, the most bytes it may take, the exact
# size it must have); sizes are checked where the referenced type's size can be worked out
# from the module's own types (a chain that reaches the base is not checked).
Ref = tuple[int, frozenset[int], int | None, int | None]


def _refs(words: array, offs: list[int]) -> list[Ref]:
    """Every type reference of the records, with what it may name."""
    out: list[Ref] = []
    add = out.append
    value = _ALL - _NOT_VALUE
    for o in offs:
        info = words[o + 1]
        # inline info-word fields (record.kind_of & co.): a scan of every record
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if kind == K_FUNC:
            add((words[o + 2], frozenset({K_FUNC_PROTO}), None, None))
        elif kind == K_VAR:
            add((words[o + 2], value, None, None))
        elif kind in (K_PTR, K_TYPEDEF, K_CONST, K_VOLATILE, K_RESTRICT, K_TYPE_TAG):
            add((words[o + 2], _ALL - _NOT_BEHIND_REF, None, None))
        elif kind == K_DECL_TAG:
            add((words[o + 2], frozenset({K_STRUCT, K_UNION, K_VAR, K_FUNC, K_TYPEDEF}),
                 None, None))
        elif kind == K_ARRAY:
            add((words[o + ARRAY_TYPE], value, None, None))
            add((words[o + ARRAY_INDEX], frozenset({K_INT}), None, None))
        elif kind in COMPOSITE_KINDS:
            size = words[o + 2]
            kflag = info >> 31
            first, stop = o + ITEMS, o + ITEMS + MEMBER_WORDS * vlen
            raws = words[first + MEMBER_OFFSET:stop:MEMBER_WORDS]
            types = words[first + MEMBER_TYPE:stop:MEMBER_WORDS]
            offsets = [raw & (0xFFFFFF if kflag else 0xFFFFFFFF) for raw in raws]
            for i in range(vlen):
                raw = raws[i]
                room = None
                if not (kflag and raw >> 24) and offsets[i] % 8 == 0:  # not a bitfield
                    end = size * 8
                    if kind == K_STRUCT and i + 1 < vlen and offsets[i + 1] > offsets[i]:
                        end = offsets[i + 1]
                    room = max(0, (end - offsets[i]) // 8)
                add((types[i], value, room, None))
        elif kind == K_FUNC_PROTO:
            add((words[o + 2], value, None, None))
            stop = o + ITEMS + PARAM_WORDS * vlen
            for t in words[o + ITEMS + PARAM_TYPE:stop:PARAM_WORDS]:
                add((t, value, None, None))
        elif kind == K_DATASEC:
            for i in range(vlen):
                p = o + ITEMS + SECINFO_WORDS * i
                add((words[p + SECINFO_TYPE], frozenset({K_VAR, K_FUNC}), None,
                     words[p + SECINFO_SIZE]))
        # FWD's third word is a size (0), INT/ENUM/FLOAT refer to nothing
    return [r for r in out if r[0]]


_CHAIN = frozenset({K_TYPEDEF, K_CONST, K_VOLATILE, K_RESTRICT, K_TYPE_TAG, K_VAR})
_SIZED = frozenset({K_INT, K_STRUCT, K_UNION, K_ENUM, K_FLOAT, K_ENUM64})


class _OwnRecords:
    """The module's own records, to check references for one candidate base count."""

    def __init__(self, words: array, offs: list[int]) -> None:
        self.words = words
        self.offs = offs
        self.kinds = [(words[o + 1] >> 24) & 0x1F for o in offs]  # kind_of, inline: per record

    def size(self, x: int, n: int, depth: int = 0) -> int | None:
        """Size of type x when it can be worked out from own types (x >= n)."""
        if x < n or depth > 32:
            return None
        i = x - n
        if i >= len(self.offs):
            return None
        o, kind = self.offs[i], self.kinds[i]
        if kind in _SIZED:
            return self.words[o + 2]
        if kind == K_PTR:
            return 8
        if kind in _CHAIN:
            return self.size(self.words[o + 2], n, depth + 1)
        if kind == K_ARRAY:
            elem = self.size(self.words[o + ARRAY_TYPE], n, depth + 1)
            return None if elem is None else elem * self.words[o + ARRAY_NELEMS]
        return None

    def fits(self, n: int, refs: list[Ref]) -> bool:
        kinds, k = self.kinds, len(self.kinds)
        for x, allowed, room, exact in refs:
            if x < n:
                continue
            if x - n >= k or kinds[x - n] not in allowed:
                return False
            if room is not None or exact is not None:
                size = self.size(x, n)
                if size is not None and ((room is not None and size > room)
                                         or (exact is not None and size != exact)):
                    return False
        return True


def _str_refs(words: array, offs: list[int]) -> set[int]:
    return {words[p] for o in offs for p in str_slots(words, o)} - {0}


def infer_shape(split: bytes, source: str = "<module>") -> SplitShape:
    """Infer the base type count and string length a classic split BTF was made for."""
    words, strs = _sections(split, source)
    try:
        offs = record_offsets(words)
    except WireError as e:
        raise OriginError(f"{source}: {e}") from None
    k = len(offs)
    own = _OwnRecords(words, offs)
    refs = _refs(words, offs)
    max_ref = max((r[0] for r in refs), default=0)
    n_lo = max(1, max_ref - k + 1)
    # every count from the lower bound up to the largest reference that leaves all of the
    # module's own references fitting; past the largest reference nothing is checked
    passing = []
    for cand in range(n_lo, min(max_ref + 1, n_lo + MAX_SCAN)):
        if own.fits(cand, refs):
            passing.append(cand)
        if passing and cand - passing[0] >= AMBIGUITY_WINDOW:
            break
    n = passing[0] if passing else None
    n_exact = len(passing) == 1
    if not passing:  # no reference between own types: N is only bounded below
        n_lo = max(1, max_ref + 1)
    # strings: the module's own string section starts at L
    srefs = _str_refs(words, offs)
    s = len(strs)
    starts = {0} | {i + 1 for i, b in enumerate(strs) if b == 0 and i + 1 < s}
    max_sref = max(srefs, default=0)
    l_lo = max(1, max_sref - s + 1)  # with no own strings: just past the largest offset
    lpass = []
    for cand in range(l_lo, min(max_sref + 1, l_lo + MAX_SCAN)):
        if all(o < cand or (o - cand) in starts for o in srefs):
            lpass.append(cand)
        if lpass and cand - lpass[0] >= AMBIGUITY_WINDOW:
            break
    ln = lpass[0] if lpass else None
    shape = SplitShape(k, s, n, ln, n_lo, l_lo, n_exact and len(lpass) == 1,
                       type_count_candidates=passing, str_len_candidates=lpass)
    if n is not None:
        shape.base_type_refs = {r[0] for r in refs if r[0] < n}
    if ln is not None:
        shape.base_str_refs = {o for o in srefs if o < ln}
    return shape


@dataclass
class Fit:
    """How a classic split BTF relates to one candidate vmlinux."""

    fits: bool  # the candidate is the module's build
    fingerprint: bool  # type count and string length equal the inferred ones
    validates: bool | None  # the module's BTF passes the kernel's checks on it
    reason: str  # one line


def check_base(split: bytes, shape: SplitShape, base: Btf, *, source: str = "<module>",
               base_name: str = "vmlinux") -> Fit:
    """Is `base` the vmlinux this split BTF was built against?"""
    have = f"{base.type_count} types and {base.str_end} string bytes"
    finger = shape.matches(base.type_count, base.str_end)
    try:
        Btf.parse(split, base=base, source=source, validate=True)
        validates, why = True, ""
    except BtfError as e:
        validates, why = False, str(e)
    if not finger:
        silent = " (its BTF even passes the kernel's checks there: it would bind to the " \
                 "wrong types silently)" if validates else ""
        return Fit(False, False, validates,
                   f"built against {shape.describe()}; {base_name} has {have}{silent}")
    if not validates:
        return Fit(False, True, False, f"{base_name} has the same counts ({have}) but the "
                   f"module's BTF does not check out on it: {why}")
    strs = base.strings
    bad = [o for o in shape.base_str_refs if o >= len(strs) or (o and strs[o - 1] != 0)]
    if bad:
        return Fit(False, True, True, f"{base_name} has the same counts ({have}) but "
                   f"{len(bad)} base name offsets the module uses start no string there")
    return Fit(True, True, True, f"{base_name} is its build ({have}); every base type the "
               "module refers to checks out there")
