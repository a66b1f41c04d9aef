"""Relocation of a whole split type section as lane arithmetic: every u32 word is a 32-bit
lane of one big integer, and which lanes hold type ids and string offsets comes from the
record layout table (btf/layout.py) per distinct record shape. relocate() uses `_LaneIndex`
(prepared once per module), merge.py's shift_references uses `slot_masks`.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from ..btf.layout import LAYOUT, record_words
from ..btf.record import kind_of, vlen_of
from .wire import WireError, id_slots, str_slots


class LaneSource(Protocol):
    """What `_LaneIndex` reads of a prepared split BTF (relocate.py's `PreparedSplit`); a protocol
    here, so that lanes.py does not import relocate.py, which imports it."""

    words: array

    def lane_masks(self) -> tuple[bytes, bytes]: ...


# Per record shape (info word): bytes with 0x80000000 in the lanes that hold type ids, and
# in the lanes that hold string offsets.
_LANE_ID: dict[int, bytes] = {}
_LANE_STR: dict[int, bytes] = {}


def _lane_masks(info: int) -> None:
    """Fill _LANE_ID/_LANE_STR for one record shape (strided slice writes, no per-word
    Python: a 60000-value enum is one record)."""
    kind = kind_of(info)
    lay = LAYOUT.get(kind)  # type: ignore[call-overload]
    if lay is None:
        raise WireError(f"unknown BTF kind {kind}")
    vlen = vlen_of(info)
    n = record_words(info)
    fake = [0] * min(n, 8)
    fake[1] = info & ~0xFFFF  # vlen 0: the fixed slots only
    ids = bytearray(4 * n)
    strs = bytearray(4 * n)
    for i in id_slots(fake, 0):
        ids[4 * i + 3] = 0x80
    for i in str_slots(fake, 0):
        strs[4 * i + 3] = 0x80
    if vlen:
        stride = 4 * lay.item_words
        for lanes, at in ((ids, lay.item_id), (strs, lay.item_str)):
            if at is not None:
                lanes[4 * (lay.first_item + at) + 3::stride] = b"\x80" * vlen
    _LANE_ID[info] = bytes(ids)
    _LANE_STR[info] = bytes(strs)


def slot_masks(words: array, offs: list[int]) -> tuple[bytes, bytes]:
    """(id lanes, string lanes) of a whole type section: 0x80000000 (little-endian bytes) in
    every word that holds a type id / a string offset, 0 elsewhere. Per distinct record
    shape, not per word: what makes lane-wise rewrites of a whole section cheap."""
    infos = list(map(words.__getitem__, map((1).__add__, offs)))
    for info in set(infos).difference(_LANE_ID):
        _lane_masks(info)
    return (b"".join(map(_LANE_ID.__getitem__, infos)),
            b"".join(map(_LANE_STR.__getitem__, infos)))


def _set_lanes(flags: int, nbytes: int) -> Iterator[int]:
    """The lanes whose flag bit (bit 0 of the lane, as the masks above leave it) is set."""
    if not flags:
        return
    b = flags.to_bytes(nbytes, "little")
    i = b.find(1)
    while i >= 0:
        yield i >> 2
        i = b.find(1, i + 4)


class _LaneIndex:
    """Everything about a split BTF's type words that does not depend on the target.

    Every word becomes a 32-bit lane of one big integer W. A *code* per lane (in the lane's
    low byte) says what relocation does to it: 0 nothing (not an id/string, void, no name),
    254 "split type id: add the id shift", 255 "split string: add the string shift", 1..253 a
    reference into the distilled base (the distilled id itself, or a code standing for a
    distilled-base string offset). Relocating is then: one translate() of the code plane per
    output byte (tables built from the id/string maps), one big-integer addition, one
    to_bytes(). Lanes never carry into each other: every delta keeps its lane < 2**32."""

    def __init__(self, sp: LaneSource, nr_dist: int, dsl: int) -> None:
        self.ok = False
        mid_b, mstr_b = sp.lane_masks()
        self.nbytes = n = len(mid_b)
        if n != 4 * len(sp.words) or nr_dist > 0xFFFFFF:
            return
        # a distilled base of more than 253 types does not fit the one-byte code: its
        # references are then patched lane by lane (wide mode)
        self.wide = wide = nr_dist > 253
        # (each plane is as big as the section: amdgpu's are 3.5 MB; the `del`s keep no more
        # of them alive than the next step needs)
        raw = sp.words.tobytes()
        w = int.from_bytes(raw, "little")
        del raw
        a1 = int.from_bytes(mid_b, "little") >> 31
        b1 = int.from_bytes(mstr_b, "little") >> 31
        s1 = a1 | b1
        if (w >> 31) & s1:  # a slot value >= 2**31: not lane-safe
            return
        ge = ((w + a1 * (0x80000000 - nr_dist) + b1 * (0x80000000 - dsl)) >> 31) & s1
        del s1
        gea = ge & a1
        geb = ge ^ gea
        del ge
        small_id = a1 ^ gea  # id lanes below nr_dist (void included: code 0)
        small_str = b1 ^ geb
        del a1, b1
        nz = ((w + small_str * 0x7FFFFFFF) >> 31) & small_str  # dist-base strings, not 0
        del small_str
        self.id_lanes: list[tuple[int, int]] = []  # wide mode: (lane, distilled id)
        if wide:
            codes = bytearray((gea * 254 | geb * 255).to_bytes(n, "little"))
            nzid = ((w + small_id * 0x7FFFFFFF) >> 31) & small_id
            self.id_lanes = [(lane, sp.words[lane]) for lane in _set_lanes(nzid, n)]
            del nzid
        else:
            codes = bytearray((gea * 254 | geb * 255 | (w & (small_id * 0xFF))
                               ).to_bytes(n, "little"))
        del gea, geb, small_id
        self.str_codes: dict[int, int] = {}  # code -> distilled-base string offset
        self.str_lanes: list[tuple[int, int]] = []  # (lane, offset) without a code
        self._code_strings(_set_lanes(nz, n), sp.words, 1 if wide else nr_dist, codes)
        del nz
        self.codes = bytes(codes)
        self.w = w
        self.nr_dist = nr_dist
        self.ok = True

    def _code_strings(self, lanes: Iterable[int], words: Sequence[int], first_code: int,
                      codes: bytearray) -> None:
        """A code per distinct distilled-base string offset, from ``first_code`` up to 253,
        written into those lanes of ``codes``; offsets past the codes are patched lane by
        lane (``str_lanes``)."""
        by_off: dict[int, int] = {}
        for lane in lanes:
            off = words[lane]
            code = by_off.get(off)
            if code is None and first_code + len(by_off) < 254:
                code = first_code + len(by_off)
                by_off[off] = code
                self.str_codes[code] = off
            if code is None:
                self.str_lanes.append((lane, off))
            else:
                codes[lane << 2] = code

    def apply(self, dmap: list[int], shift: int, sshift: int, smap: dict[int, int]
              ) -> bytes | int | None:
        """Relocated type words as bytes; an int is a distilled-base string offset without a
        mapping; None means "use the plain loop" (a delta would be negative)."""
        delta = [0] * 256
        if not self.wide:
            for v in range(1, self.nr_dist):
                delta[v] = dmap[v] - v
        for code, off in self.str_codes.items():
            nv = smap.get(off)
            if nv is None:
                return off
            delta[code] = nv - off
        delta[254] = shift
        delta[255] = sshift
        if max(delta) > 0xFFFFFFFF or min(delta) < -0xFFFFFFFF:
            return None
        # a string can map to a smaller offset: negative deltas go into their own plane
        # (lanes stay non-negative: the result of each lane is a valid offset)
        total = self.w + self._plane([max(d, 0) for d in delta])
        neg = [max(-d, 0) for d in delta]
        if any(neg):
            total -= self._plane(neg)
        out = total.to_bytes(self.nbytes, "little")
        if self.str_lanes or self.id_lanes:
            buf = bytearray(out)  # lanes without a code
            for lane, off in self.str_lanes:
                nv = smap.get(off)
                if nv is None:
                    return off
                struct.pack_into("<I", buf, 4 * lane, nv)
            pack = struct.Struct("<I").pack_into
            for lane, v in self.id_lanes:
                pack(buf, 4 * lane, dmap[v])
            out = bytes(buf)
        return out

    def _plane(self, delta: list[int]) -> int:
        """The lanes' deltas (by code) as one big integer."""
        codes = self.codes
        plane = bytearray(codes.translate(bytes(d & 0xFF for d in delta)))
        for k in (1, 2, 3):
            if any(d >> (8 * k) for d in delta):
                plane[k::4] = codes.translate(bytes((d >> (8 * k)) & 0xFF for d in delta))[0::4]
        return int.from_bytes(plane, "little")
