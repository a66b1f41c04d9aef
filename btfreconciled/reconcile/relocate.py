"""Reconcile a module's split BTF onto a target vmlinux: libbpf `btf__relocate()` /
the kernel's kernel/bpf/btf_relocate.c, rule for rule, with the target looked up by name.

What btf_relocate.c does, and what we do the same way:

- The distilled base may only hold *named* INT, FLOAT, ENUM, STRUCT, UNION and FWD types.
- A distilled STRUCT/UNION that a split STRUCT/UNION member reaches through CONST, VOLATILE,
  RESTRICT, TYPEDEF, TYPE_TAG and ARRAY links (no PTR) is "embedded": its size must match.
  libbpf 1.5.0 scans only split ids below `nr_split_types` for this (a bug fixed upstream in
  5ca681a86ef9, "Fix incorrect traversal end type ID when marking BTF_IS_EMBEDDED", and in
  Linux 6.12.y stable); `EMBEDDED_KERNEL` scans every split type like the fixed code,
  `EMBEDDED_LIBBPF_1_5` reproduces libbpf 1.5.0.
- For every named base type of kind INT/FLOAT/ENUM/ENUM64 (name and size must be equal), FWD
  (name only) or STRUCT/UNION (name; also size when the base has several composites of that
  name), in base-id order, each same-named distilled type is checked for compatibility:
  FWD needs a FWD of the same kind_flag, a STRUCT with kind_flag 0 or a UNION with kind_flag 1
  (the base type's kind_flag, exactly as the C code tests it); INT needs an INT with the same
  encoding; FLOAT a FLOAT; ENUM an ENUM or ENUM64; STRUCT/UNION anything that passed the name
  (and size) lookup, except that an embedded one still unmapped needs an equal size.
  A second compatible base type for an already mapped distilled type is an error (ambiguous).
- Any distilled type left unmapped is an error.
- Split ids move by (target type count - distilled type count); distilled ids become the
  matched target ids; split string offsets move by (target str_len - distilled str_len) and
  offsets into the distilled strings become the name offsets of the matched target types.
- Header and string section are unchanged; only type-id and string-offset words change, so
  the output is byte for byte what btf__raw_data() returns after btf__relocate().

Processing each distilled type against its candidates in ascending target id replays exactly
the state changes the C loop makes for that type, so accept/reject is the same; we collect
every problem instead of stopping at the first.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field

from ..btf.btf import Btf
from ..btf.header import pack_header
from ..btf.kinds import (
    K_ARRAY,
    K_ENUM,
    K_ENUM64,
    K_FLOAT,
    K_FWD,
    K_INT,
    K_STRUCT,
    K_UNION,
)
from ..btf.layout import (
    INT_DATA,
)
from ..btf.record import COMPOSITE_KINDS, MODS_AND_TYPEDEF, NATIVE, cstr, kflag_of, kind_of
from .diagnostics import ERROR, CandidateInfo, Problem, expected_dict, type_label
from .lanes import _LaneIndex, slot_masks
from .target import Candidate, VmlinuxIndex
from .wire import WireError, id_slots, kind_name, str_slots

EMBEDDED_KERNEL = "kernel"
EMBEDDED_LIBBPF_1_5 = "libbpf-1.5"
_DIST_KINDS = frozenset({K_INT, K_FLOAT, K_ENUM, K_STRUCT, K_UNION, K_FWD})
_MAX_PATHS = 4


@dataclass(slots=True)
class DistType:
    id: int
    kind: int
    kflag: int
    name_off: int
    name: bytes
    size: int
    encoding: int

    @property
    def label(self) -> str:
        return type_label(self.kind, self.name.decode("utf-8", "replace"))


@dataclass
class RelocateResult:
    ok: bool
    data: bytes | None  # relocated split BTF (base = target) when ok
    problems: list[Problem]
    id_map: dict[int, int]  # distilled id -> target id (what was matched)
    dist_types: list[DistType]
    embedded: set[int]  # distilled ids embedded by value (full scan)
    # member paths to embedded types, found only when a problem is reported (diagnose)
    embed_paths: dict[int, list[str]] = field(default_factory=dict)


def dist_types_of(dist: Btf) -> list[DistType]:
    words, offs = dist.wire_records()
    strs = dist.strings
    out = []
    tid = dist.start_id
    for o in offs:
        no = words[o]
        info = words[o + 1]
        kind = kind_of(info)
        name = b""
        if no and no < len(strs):
            name = cstr(strs, no)
        enc = (words[o + INT_DATA] >> 24) & 0x0F if kind == K_INT else 0
        out.append(DistType(tid, kind, kflag_of(info), no, name, words[o + 2], enc))
        tid += 1
    return out


class PreparedSplit:
    """A module's split types indexed for relocation: record offsets, kind/label lookups
    across split and distilled base, and the lane code plane the rewrite uses (libbpf builds
    its type-offset index at parse time likewise). Whoever relocates one module several times
    keeps this and passes it instead of the Btf; nothing else holds on to it."""

    def __init__(self, split: Btf) -> None:
        if split.base is None:
            raise ValueError("prepare() needs split BTF")
        self.btf = split
        self.words, self.offs = split.wire_records()
        self.start = split.start_id
        self.dist = dist_types_of(split.base)
        self._masks: tuple[bytes, bytes] | None = None
        self.lanes: _LaneIndex | None = None
        if len(self.offs) > 64 and sys.byteorder == "little":
            self.lanes = _LaneIndex(self, split.base.type_count, split.base.str_end)

    def lane_masks(self) -> tuple[bytes, bytes]:
        if self._masks is None:
            self._masks = slot_masks(self.words, self.offs)
        return self._masks

    def kind(self, tid: int) -> int:
        if tid >= self.start:
            return kind_of(self.words[self.offs[tid - self.start] + 1])
        return self.dist[tid - 1].kind if tid else 0

    def label(self, tid: int) -> str:
        if tid >= self.start:
            w = self.words
            o = self.offs[tid - self.start]
            return type_label(kind_of(w[o + 1]), self.btf.name_of(w[o]))
        return self.dist[tid - 1].label


def prepare(split: Btf | PreparedSplit) -> PreparedSplit:
    """`split` indexed for relocation (see PreparedSplit)."""
    return split if isinstance(split, PreparedSplit) else PreparedSplit(split)


def _embedded(sp: PreparedSplit, targets: set[int], end: int, want_paths: bool
              ) -> tuple[set[int], dict[int, list[str]]]:
    """libbpf's btf_mark_embedded_composite_type_ids: which of the distilled structs/unions
    `targets` a split STRUCT/UNION member (of split ids below `end`) embeds, following
    CONST/VOLATILE/RESTRICT/TYPEDEF/TYPE_TAG/ARRAY links; with `want_paths`, also up to
    _MAX_PATHS member paths per marked type, in record and member order, for messages.

    One forward walk, but by distinct member type rather than member by member: the member
    types of all records are gathered with one slice per record and each is followed once
    (amdgpu's 27k types: ~10 ms). Only when paths are wanted are the records visited again,
    member by member where a record holds a marked member."""
    w = sp.words
    offs = sp.offs
    start = sp.start
    n = max(0, min(end - start, len(offs)))
    member_types: set[int] = set()
    add = member_types.update
    for o in offs[:n]:
        info = w[o + 1]
        # inline info-word fields (record.kind_of & co.) here and below: this visits every
        # split record, then every member type's chain
        if (info >> 24) & 0x1F in COMPOSITE_KINDS and info & 0xFFFF:
            add(w[o + 4:o + 4 + 3 * (info & 0xFFFF):3])
    nr_types = start + len(offs)
    embeds: dict[int, int] = {}  # member type -> the target it embeds
    for x in member_types:
        t = x
        for _ in range(len(offs) + 1):  # a loop of modifiers ends nowhere
            if t < start or t >= nr_types:
                break
            o = offs[t - start]
            k = (w[o + 1] >> 24) & 0x1F
            if k in MODS_AND_TYPEDEF:
                t = w[o + 2]
            elif k == K_ARRAY:
                t = w[o + 3]
            else:
                break
        if t in targets:
            embeds[x] = t
    marked = set(embeds.values())
    if not want_paths or not marked:
        return marked, {}
    return marked, _embedding_paths(sp, embeds, n)


def _embedding_paths(sp: PreparedSplit, embeds: dict[int, int], n: int
                     ) -> dict[int, list[str]]:
    """Up to _MAX_PATHS `struct a.member -> struct b` per embedded type, in the order
    libbpf's walk meets them (records of the first `n` split types, members in order)."""
    w = sp.words
    paths: dict[int, list[str]] = {}
    hit = embeds.keys().isdisjoint
    for r, o in enumerate(sp.offs[:n]):
        info = w[o + 1]
        if (info >> 24) & 0x1F not in COMPOSITE_KINDS or not info & 0xFFFF:
            continue
        types = w[o + 4:o + 4 + 3 * (info & 0xFFFF):3]
        if hit(types):
            continue
        for m, x in enumerate(types):
            d = embeds.get(x)
            if d is None:
                continue
            lst = paths.setdefault(d, [])
            if len(lst) < _MAX_PATHS:
                mname = sp.btf.name_of(w[o + 3 + 3 * m]) or "(anon)"
                lst.append(f"{sp.label(sp.start + r)}.{mname} -> {sp.label(d)}")
    return paths


def embedded_ids(split: Btf | PreparedSplit) -> tuple[set[int], dict[int, list[str]]]:
    """Distilled ids of the base structs/unions split BTF embeds by value (every split type
    scanned), with up to four member paths each (`struct my_dev.work -> struct work_struct`)."""
    sp = prepare(split)
    comps = {d.id for d in sp.dist if d.kind in COMPOSITE_KINDS}
    return _embedded(sp, comps, sp.btf.type_count, True)


def _candidate_info(c: Candidate, target: VmlinuxIndex, why: str) -> CandidateInfo:
    size = None if c.kind == K_FWD else c.size
    return CandidateInfo(c.id, kind_name(c.kind), target.btf.name_of(c.name_off), size, why)


def _match(d: DistType, target: VmlinuxIndex, embedded: bool
           ) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """The target types that map `d`, in the order btf_relocate.c finds them, and the
    same-named ones it passes over (with the reason)."""
    hits: list[Candidate] = []
    misses: list[tuple[Candidate, str]] = []
    dk = d.kind
    for c in target.candidates(d.name):
        bk = c.kind
        # The sorted-name binary search: which base types even reach this distilled type.
        if bk in (K_INT, K_FLOAT, K_ENUM, K_ENUM64):
            if c.size != d.size:
                misses.append((c, f"size {c.size} != {d.size}"))
                continue
        elif (bk in COMPOSITE_KINDS and target.composites_named(c.name_off) > 1
              and c.size != d.size):
            misses.append((c, f"size {c.size} != {d.size} (several {kind_name(bk)}s of"
                              " this name: size decides)"))
            continue
        # Compatibility of kinds (btf_relocate_map_distilled_base's switch).
        if dk == K_FWD:
            if bk == K_FWD:
                ok = c.kflag == d.kflag
            elif bk == K_STRUCT:
                ok = c.kflag == 0
            elif bk == K_UNION:
                ok = c.kflag == 1
            else:
                ok = False
            if not ok:
                misses.append((c, "not compatible with the forward declaration"))
                continue
        elif dk == K_INT:
            if bk != K_INT or c.encoding != d.encoding:
                misses.append((c, "not an int" if bk != K_INT else
                               f"encoding {_enc(c.encoding)}, the module expects"
                               f" {_enc(d.encoding)}"))
                continue
        elif dk == K_FLOAT:
            if bk != K_FLOAT:
                misses.append((c, "not a float"))
                continue
        elif dk == K_ENUM:
            if bk != K_ENUM and bk != K_ENUM64:
                misses.append((c, "not an enum"))
                continue
        elif dk in COMPOSITE_KINDS:
            if embedded and not hits and c.size != d.size:
                misses.append((c, f"size {c.size} != {d.size} and the module embeds it"))
                continue
        else:
            misses.append((c, "distilled kind not matchable"))
            continue
        hits.append(c)
    return hits, misses


def _enc(e: int) -> str:
    names = [n for bit, n in ((1, "SIGNED"), (2, "CHAR"), (4, "BOOL")) if e & bit]
    return "|".join(names) if names else "(none)"


def relocate(split: Btf | PreparedSplit, target: VmlinuxIndex, *,
             embedded_rule: str = EMBEDDED_KERNEL, module: str = "module",
             diagnose: bool = True, want_embedded: bool = False) -> RelocateResult:
    """Relocate `split` (whose base is the module's distilled base) onto `target`: libbpf's
    btf_relocate() phases, in its order.

    `want_embedded`: always fill RelocateResult.embedded (the field checks need it); else it
    is only computed when it can change a match or a problem is reported. `diagnose=False`
    skips the extra work that only makes messages better."""
    if embedded_rule not in (EMBEDDED_KERNEL, EMBEDDED_LIBBPF_1_5):
        raise ValueError(f"unknown embedded rule {embedded_rule!r}")
    # before prepare(), which would index a full vmlinux base as if it were distilled
    dist_btf = (split.btf if isinstance(split, PreparedSplit) else split).base
    if dist_btf is None or dist_btf.base is not None:
        raise ValueError("relocate() needs split BTF whose base is a distilled base BTF")
    r = _Relocation.of(prepare(split), target, module, diagnose)
    r.problems = _validate_distilled_base(r)
    if r.problems:
        return r.result(False)
    _mark_embedded(r, embedded_rule, want_embedded)
    _map_distilled_base(r)
    if r.problems:
        return r.result(False)
    data = _rewrite_type_ids_and_strs(r)
    return r.result(data is not None, data)


@dataclass
class _Relocation:
    """libbpf's struct btf_relocate: the prepared module, the target, and what the phases
    decide."""

    sp: PreparedSplit
    target: VmlinuxIndex
    module: str
    diagnose: bool
    problems: list[Problem] = field(default_factory=list)
    comps: set[int] = field(default_factory=set)  # distilled struct/union ids
    embedded: set[int] = field(default_factory=set)  # those the matching must treat so
    embedded_all: set[int] = field(default_factory=set)  # all embedded ones, when known
    paths: dict[int, list[str]] = field(default_factory=dict)  # member paths, for messages
    diagnosed: bool = False  # embedded_all and paths found with the paths
    id_map: dict[int, int] = field(default_factory=dict)  # distilled id -> target id
    # distilled name offset -> (target id, target name offset), the highest id wins
    str_map: dict[int, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, sp: PreparedSplit, target: VmlinuxIndex, module: str,
           diagnose: bool) -> _Relocation:
        comps = {d.id for d in sp.dist if d.kind in COMPOSITE_KINDS}
        return cls(sp, target, module, diagnose, comps=comps, diagnosed=not diagnose)

    @property
    def nr_dist(self) -> int:
        return len(self.sp.dist) + 1  # the distilled base's type count, void included

    def find_paths(self) -> None:
        """Every embedded struct/union with its member paths, once, for a problem's text."""
        if not self.diagnosed:
            self.embedded_all, self.paths = _embedded(self.sp, self.comps,
                                                      self.sp.btf.type_count, True)
            self.diagnosed = True

    def result(self, ok: bool, data: bytes | None = None) -> RelocateResult:
        return RelocateResult(ok, data, self.problems, self.id_map, self.sp.dist,
                              self.embedded_all, self.paths)


def _validate_distilled_base(r: _Relocation) -> list[Problem]:
    """btf_relocate_validate_distilled_base: named INT FLOAT ENUM STRUCT UNION FWD only."""
    for d in r.sp.dist:
        if d.kind not in _DIST_KINDS:
            return [Problem("invalid-base", ERROR,
                            f"{r.module}: .BTF.base type [{d.id}] has kind {kind_name(d.kind)},"
                            " which a distilled base may not contain",
                            expected_dict(d.id, d.kind, d.name.decode(errors="replace"), None))]
        if not d.name_off:
            return [Problem("invalid-base", ERROR,
                            f"{r.module}: .BTF.base type [{d.id}] ({kind_name(d.kind)}) is"
                            " anonymous; a distilled base holds named types only",
                            expected_dict(d.id, d.kind, "", d.size))]
    return []


def _mark_embedded(r: _Relocation, embedded_rule: str, want_embedded: bool) -> None:
    """btf_mark_embedded_composite_type_ids, only where it can matter: a distilled
    struct/union that vmlinux has in another size (or everything, when asked)."""
    sp, target = r.sp, r.target
    nr_types = sp.btf.type_count
    # libbpf 1.5.0 stops the scan at the split type count (see the module docstring)
    scan_end = nr_types if embedded_rule == EMBEDDED_KERNEL else nr_types - r.nr_dist
    needed = {d.id for d in sp.dist if d.id in r.comps
              and any(c.size != d.size for c in target.candidates(d.name))}
    if want_embedded:  # (the member paths only when a problem is reported)
        r.embedded_all, _ = _embedded(sp, r.comps, nr_types, False)
    if want_embedded and scan_end >= nr_types:
        r.embedded = r.embedded_all & needed
    elif needed:
        r.embedded, _ = _embedded(sp, needed, scan_end, False)


def _map_distilled_base(r: _Relocation) -> None:
    """btf_relocate_map_distilled_base: each distilled type to the one compatible vmlinux
    type, every problem collected instead of stopping at the first."""
    target, module = r.target, r.module
    # void takes part in libbpf's name search with the empty name
    for c in target.candidates(b""):
        if c.kind == K_FWD or (c.kind in COMPOSITE_KINDS
                               and target.composites_named(c.name_off) < 2) or c.size == 0:
            r.problems.append(Problem("invalid-base", ERROR,
                                      f"{module}: vmlinux type [{c.id}] has an empty name and"
                                      " maps to the distilled void type"))
            break
    for d in r.sp.dist:
        hits, misses = _match(d, target, d.id in r.embedded)
        if len(hits) == 1:
            c = hits[0]
            r.id_map[d.id] = c.id
            prev = r.str_map.get(d.name_off)
            if prev is None or prev[0] < c.id:
                r.str_map[d.name_off] = (c.id, c.name_off)
        else:
            r.find_paths()
            r.problems.append(_unmapped(r, d, misses) if not hits else _ambiguous(r, d, hits))


def _unmapped(r: _Relocation, d: DistType, misses: list[tuple[Candidate, str]]) -> Problem:
    name = d.name.decode("utf-8", "replace")
    size = None if d.kind == K_FWD else d.size
    cands = [_candidate_info(c, r.target, why) for c, why in misses]
    if not cands and r.diagnose:
        cands = _other_kinds(r.target, d)
    what = "no type of that name" if not misses else "no compatible type"
    summary = f"{r.module}: {d.label}"
    if size is not None:
        summary += f" (size {d.size})"
    summary += f" expected by the module: vmlinux has {what}"
    if misses:
        summary += " (" + "; ".join(
            f"[{c.id}] {type_label(c.kind, name)} {why}" for c, why in misses[:3]) + ")"
    return Problem("unmapped", ERROR, summary, expected_dict(d.id, d.kind, name, size), cands,
                   _embedded_flag(r, d), r.paths.get(d.id, []))


def _ambiguous(r: _Relocation, d: DistType, hits: list[Candidate]) -> Problem:
    name = d.name.decode("utf-8", "replace")
    size = None if d.kind == K_FWD else d.size
    ids = ", ".join(str(c.id) for c in hits)
    summary = (f"{r.module}: {d.label} (size {d.size}) is ambiguous: vmlinux has"
               f" {len(hits)} equally good candidates (ids {ids})")
    return Problem("ambiguous", ERROR, summary, expected_dict(d.id, d.kind, name, size),
                   [_candidate_info(c, r.target, "") for c in hits], _embedded_flag(r, d),
                   r.paths.get(d.id, []))


def _embedded_flag(r: _Relocation, d: DistType) -> bool | None:
    return d.id in r.embedded_all if d.kind in COMPOSITE_KINDS else None


def _rewrite_type_ids_and_strs(r: _Relocation) -> bytes | None:
    """btf_relocate_rewrite_type_id + btf_relocate_rewrite_strs over every split record:
    split ids move by (target types - distilled types), distilled ids become their matches;
    string offsets past the distilled strings move by (target - distilled string size), the
    others become the name offsets of the matched vmlinux types. None (with a problem) when
    a distilled string names no distilled type."""
    sp, split = r.sp, r.sp.btf
    dist_btf = split.base
    assert dist_btf is not None
    nr_dist = r.nr_dist
    id_shift = r.target.type_count - nr_dist
    dist_ids = [0] * nr_dist  # distilled id -> target id
    for k, v in r.id_map.items():
        dist_ids[k] = v
    dist_str_len = dist_btf.str_end
    dist_strs = {k: v[1] for k, v in r.str_map.items()}
    str_shift = r.target.str_len - dist_str_len
    out = None
    if sp.lanes is not None and sp.lanes.ok:
        out = sp.lanes.apply(dist_ids, id_shift, str_shift, dist_strs)
    if isinstance(out, bytes):
        return serialize_parts_raw(split, out)
    bad = out
    if bad is None:  # the lanes cannot take this one: slot by slot
        w = array("I", sp.words)
        bad = _rewrite(w, sp.offs, nr_dist, id_shift, dist_ids, dist_str_len, str_shift,
                       dist_strs)
        if bad is None:
            return serialize(split, w)
    r.problems.append(Problem(
        "unmapped-string", ERROR,
        f"{r.module}: string '{dist_btf.name_of(bad)}' [offset {bad}] of the module's types is"
        " in the distilled base but names no distilled type, so it cannot be mapped"))
    return None
def _rewrite(w: array, offs: list[int], nr_dist: int, shift: int, dmap: list[int],
             dsl: int, sshift: int, smap: dict[int, int]) -> int | None:
    """Rewrite ids and string offsets of the records at `offs` in place, one slot at a time
    (the fallback of _LaneIndex); returns the first distilled-base string offset that has no
    mapping (then `w` is garbage), else None."""
    for o in offs:
        for pos in id_slots(w, o):
            v = w[pos]
            w[pos] = v + shift if v >= nr_dist else dmap[v]
    for o in offs:
        for pos in str_slots(w, o):
            v = w[pos]
            if not v:
                continue
            if v >= dsl:
                w[pos] = v + sshift
            else:
                nv = smap.get(v)
                if nv is None:
                    return v
                w[pos] = nv
    return None


def _other_kinds(target: VmlinuxIndex, d: DistType) -> list[CandidateInfo]:
    """Same-named types of kinds relocation never matches (e.g. a typedef), for context."""
    out: list[CandidateInfo] = []
    try:
        ids = target.btf.find(d.name)
    except Exception:  # noqa: BLE001 - diagnostics only
        return out
    for tid in ids[:4]:
        k = int(target.btf.kind_of(tid))
        out.append(CandidateInfo(tid, kind_name(k), d.name.decode("utf-8", "replace"), None,
                                 f"a {kind_name(k)}, never matched"))
    return out


def serialize(btf: Btf, words: array) -> bytes:
    """`btf`'s header, layout section and strings around `words` (host order), in btf's
    byte order."""
    return serialize_parts(words, btf.strings, byte_order=btf.byte_order, flags=btf.flags,
                           hdr_extra=btf.hdr_extra, layout=btf.layout)


def serialize_parts_raw(btf: Btf, types_host: bytes) -> bytes:
    """Like serialize(), from the type words as host-order bytes."""
    if btf.byte_order != NATIVE:
        w = array("I")
        w.frombytes(types_host)
        return serialize(btf, w)
    strs = btf.strings
    hdr = pack_header(btf.byte_order, btf.flags, btf.hdr_extra, len(types_host),
                      len(btf.layout), len(strs))
    return hdr + types_host + btf.layout + strs


def serialize_parts(words: array, strs: bytes, *, byte_order: str = NATIVE, flags: int = 0,
                    hdr_extra: bytes = b"", layout: bytes = b"") -> bytes:
    """A BTF blob: header, type words (given in host order), layout section, strings."""
    if byte_order != NATIVE:
        words = array("I", words)
        words.byteswap()
    types = words.tobytes()
    hdr = pack_header(byte_order, flags, hdr_extra, len(types), len(layout), len(strs))
    return hdr + types + layout + strs


__all__ = ["EMBEDDED_KERNEL", "EMBEDDED_LIBBPF_1_5", "RelocateResult", "WireError",
           "embedded_ids", "relocate", "serialize", "serialize_parts"]
