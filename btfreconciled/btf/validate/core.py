"""The validator's shared machinery: kind sets, the columns every per-kind check reads
(name, info and size/type word of every record; records grouped by kind), C-speed column
helpers, and one-line error reports that name the type, its id and the byte offset.

Plain-int kind numbers (kinds.K_*): IntEnum members are slower to hash and compare.
"""

from __future__ import annotations

import re
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from itertools import accumulate, compress
from operator import add, itemgetter

from ...errors import ErrorCode
from .. import kinds as _k
from ..kinds import NR_KINDS, Kind
from ..layout import NO_KFLAG, VLEN_ZERO
from ..record import NATIVE, kflag_of, kind_of, vlen_of

# Short names for Kind's plain-int values (kinds.K_*), like btf.c's BTF_KIND_*.
(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = (
    _k.K_INT, _k.K_PTR, _k.K_ARRAY, _k.K_STRUCT, _k.K_UNION, _k.K_ENUM, _k.K_FWD, _k.K_TYPEDEF,
    _k.K_VOLATILE, _k.K_CONST, _k.K_RESTRICT, _k.K_FUNC, _k.K_FUNC_PROTO, _k.K_VAR, _k.K_DATASEC,
    _k.K_FLOAT, _k.K_DECL_TAG, _k.K_TYPE_TAG, _k.K_ENUM64)
VOID = 0
KIND_NAMES = {k.value: k.name for k in Kind}
KIND_NAMES[0] = "VOID"

INFO_MASK = 0x9F00FFFF
INT_MASK = 0x0FFFFFFF
U32_MAX = 0xFFFFFFFF
MAX_CHAIN = 32  # btf_check_type_tags' chain_limit
HUGE = 1 << 40  # an "effective size" that never fits: sends a member to the exact check

REFS = (PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
SOURCE_ONLY = frozenset({VAR, DECL_TAG, DATASEC})
NOSIZE = frozenset({VOID, FWD, FUNC, FUNC_PROTO, DECL_TAG})
SIZED = frozenset({INT, PTR, ARRAY, STRUCT, UNION, ENUM, ENUM64, FLOAT})
# What holds other types by value, so can contain itself (btf_struct_resolve/btf_array_resolve).
HOLDS_BY_VALUE = frozenset({STRUCT, UNION, ARRAY})
# What a modifier or pointer may not point at (the kernel accepts a FUNC target only when
# it happens to have resolved that FUNC first; no compiler emits one).
BAD_REF_TARGET = SOURCE_ONLY | {FUNC}
BAD_MEMBER = NOSIZE | SOURCE_ONLY  # direct type of a member, array element or index
DECL_TAG_TARGETS = frozenset({FUNC, STRUCT, UNION, VAR, TYPEDEF})

ANONYMOUS = (PTR, ARRAY, VOLATILE, CONST, RESTRICT, FUNC_PROTO)
NAMED_IDENT = (FWD, TYPEDEF, FUNC, VAR)
OPTIONAL_IDENT = (STRUCT, UNION, ENUM, ENUM64)
BAD_NAME = "has an invalid name (not a C identifier of at most 512 characters)"

# Kernel ctype (lib/ctype.c): isalpha/isalnum include Latin-1 letters, isprint Latin-1 too.
_ALPHA = b"A-Za-z\xc0-\xd6\xd8-\xf6\xf8-\xff"
_IDENT_RE = re.compile(b"[" + _ALPHA + b"_.][" + _ALPHA + b"0-9_.]{0,511}")
_SECTION_RE = re.compile(rb"[\x20-\x7e\xa0-\xff]{1,512}")
# Byte classes for checking many identifiers at once: 'a' may start an identifier, '0' may
# follow, '!' never appears in one.
_ID_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.") | frozenset(
    c for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7))
_IDCLASS = bytes(0 if c == 0 else 0x61 if c in _ID_START else 0x30 if 0x30 <= c <= 0x39
                 else 0x21 for c in range(256))
_NONNUL = bytes([0] + [0x78] * 255)
_KIND_OF_TOP_BYTE = bytes(c & 0x1F for c in range(256))
# member types whose effective size is not their size (without, with kind_flag)
_EFF_SPECIAL = (frozenset({INT, FLOAT}), frozenset({INT, FLOAT, ENUM, ENUM64}))
# By the top byte of an info word (kind_flag << 7 | reserved << 5 | kind): a bad
# combination; a kind whose vlen must be 0; FUNC (vlen is its linkage, 0 or 1).
_BAD_TOP = bytes(1 if c & 0x60 or not 1 <= c & 0x1F < NR_KINDS
                 or (c & 0x80 and c & 0x1F in NO_KFLAG) else 0 for c in range(256))
_VLEN_ZERO_TOP = bytes(0xFF if c & 0x1F in VLEN_ZERO else 0 for c in range(256))
_FUNC_TOP = bytes(0xFF if c & 0x1F == FUNC else 0 for c in range(256))
_ABOVE_1 = bytes(0xFF if c > 1 else 0 for c in range(256))
_LONG = b"x" * 513
_LONG_NAMES = (b"long", b"long int", b"unsigned long", b"long unsigned int")


def _g(seq, idx):  # noqa: ANN001, ANN202
    """seq[i] for each i in idx, as a tuple, at C speed."""
    if len(idx) > 1:
        return itemgetter(*idx)(seq)
    if idx:
        return (seq[next(iter(idx))],)
    return ()


def _scatter(table, idx, values) -> None:  # noqa: ANN001
    """table[i] = v for each pair, at C speed."""
    deque(map(table.__setitem__, idx, values), 0)


def _first(flags) -> int:  # noqa: ANN001
    """Index of the first true item (the caller knows there is one)."""
    return next(compress(range(sys.maxsize), flags))


def _show(raw: bytes) -> str:
    s = raw[:64].decode("utf-8", "backslashreplace")
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s + "..." if len(raw) > 64 else s


class _Items:
    """The vlen items (members, parameters, ...) of one group of records, as columns."""

    def __init__(self, locs: list[int], offs, vlens: list[int], stride: int) -> None:  # noqa: ANN001
        self.locs = locs
        self.offs = offs  # word offset of each record
        self.vlens = vlens
        self.stride = stride
        self.cum = list(accumulate(vlens))

    def where(self, i: int) -> tuple[int, int, int]:
        """(record index, item index, word offset of the item) of flat item i."""
        r = bisect_right(self.cum, i)
        j = i - (self.cum[r - 1] if r else 0)
        return r, j, self.offs[r] + 3 + self.stride * j


class Core:
    """State and helpers shared by the per-kind checks (mixins of _Validator)."""

    def __init__(self, btf) -> None:  # noqa: ANN001
        self.btf = btf
        self.w = btf._words
        self.offs = btf._offs
        self.n = len(self.offs)
        self.start = btf.start_id
        self.T = self.start + self.n
        self.base = btf.base
        self.sso = btf.start_str_off
        self.str_end = btf.str_end
        self.strs = btf._strs
        # name columns that must be identifiers: (offsets, required)
        self.idents: list[tuple[object, bool]] = []
        self.ptr_size = 8
        self.bw: bytes | None = None

    # ------------------------------------------------------------ reporting
    def _name_bytes(self, off: int) -> bytes | None:
        if off >= self.str_end:
            return None
        if off < self.sso:
            return self.base.str_bytes(off)
        rel = off - self.sso
        return self.strs[rel:self.strs.index(b"\0", rel)]

    def _label(self, off: int) -> str:
        if not off:
            return ""
        raw = self._name_bytes(off)
        return " <name offset past the end>" if raw is None else f" '{_show(raw)}'"

    def _desc(self, tid: int) -> str:
        if tid < self.start:
            if tid == 0:
                return "VOID"
            try:
                kind = int(self.base.kind_of(tid))
                name = self.base.type_name(tid)
            except Exception:  # noqa: BLE001
                return "?"
            return KIND_NAMES.get(kind, "?") + (f" '{_show(name.encode())}'" if name else "")
        o = self.offs[tid - self.start]
        kind = kind_of(self.w[o + 1])
        return KIND_NAMES.get(kind, f"kind {kind}") + self._label(self.w[o])

    def _ref(self, tid: int) -> str:
        """A referenced type in messages: [ID] KIND 'name'."""
        if tid >= self.T:
            return f"[{tid}]"
        return f"[{tid}] {self._desc(tid)}"

    def fail(self, tid: int, msg: str, word: int | None = None,
             code: ErrorCode = ErrorCode.BTF_INVALID) -> None:
        local = tid - self.start
        if word is None:
            word = self.offs[local] if 0 <= local < self.n else 0
        raise self.btf._err(f"{self._desc(tid)} {msg}", offset=self.btf._byte(word),
                            type_id=tid, code=code)

    def fail_local(self, local: int, msg: str, word: int | None = None,
                   code: ErrorCode = ErrorCode.BTF_INVALID) -> None:
        self.fail(self.start + local, msg, word, code)

    def past_end(self, what: str, ref: int) -> str:
        lead = f"{what} " if what else ""
        return f"{lead}refers to type [{ref}] but the last type id is [{self.T - 1}]"

    # ------------------------------------------------------------ driver
    def run(self) -> None:
        btf = self.btf
        if btf.byte_order != NATIVE and btf.hdr_extra:
            # libbpf's btf_parse_hdr: the other byte order only with the 24-byte header.
            raise btf._err(f"BTF in non-native byte order with a {24 + len(btf.hdr_extra)}"
                           "-byte header (libbpf only swaps the 24-byte header)", offset=4,
                           code=ErrorCode.BTF_BAD_HEADER)
        if not self.n:
            return
        for name in self.phases:
            getattr(self, name)()

    # ------------------------------------------------------------ columns
    def gather(self) -> None:
        w = self.w
        offs = self.offs
        if self.n > 1:
            get = itemgetter(*offs)
            mv = memoryview(w)
            self.names = get(mv)
            self.infos = get(mv[1:])
            self.sw = get(mv[2:])  # size or type word
        else:
            o = offs[0]
            self.names, self.infos, self.sw = (w[o],), (w[o + 1],), (w[o + 2],)

    def field(self, ofs, k: int):  # noqa: ANN001, ANN201
        """Word k of each record at word offsets `ofs`."""
        return _g(self.w, list(map(k.__add__, ofs)))

    def flat(self, items: _Items) -> array:
        """The vlen parts of the records of `items`, concatenated, as array('I')."""
        if self.bw is None:
            self.bw = self.w.tobytes()
        st = list(map((12).__add__, map((4).__mul__, items.offs)))
        en = map(add, st, map((4 * items.stride).__mul__, items.vlens))
        out = array("I")
        out.frombytes(b"".join(_g(self.bw, list(map(slice, st, en)))))
        return out

    def group(self) -> None:
        """Check the info words and sort records by kind. The checks run on the bytes of
        the info words at once (one byte per record and field); only when one fails do
        we look at the words one distinct value at a time, to name the first culprit.
        Mirrors btf_check_meta: BTF_INFO_MASK, kind range, vlen/kind_flag per kind (layout.py's
        table); btf_func_check_meta: linkage; libbpf btf_validate_type."""
        infos = self.infos
        raw = array("I", infos).tobytes()
        if sys.byteorder == "little":
            top, reserved, vhi, vlo = raw[3::4], raw[2::4], raw[1::4], raw[0::4]
        else:
            top, reserved, vhi, vlo = raw[0::4], raw[1::4], raw[2::4], raw[3::4]
        n = self.n
        little = int.from_bytes
        ok = (reserved.count(0) == n and top.translate(_BAD_TOP).count(0) == n
              and not (little(vhi, "little") | little(vlo, "little"))
              & little(top.translate(_VLEN_ZERO_TOP), "little")
              and not (little(vhi, "little") | little(vlo.translate(_ABOVE_1), "little"))
              & little(top.translate(_FUNC_TOP), "little"))
        if not ok:
            bad = {info for info in set(infos) if _info_problem(info)}
            local = _first(map(bad.__contains__, infos))
            self.fail_local(local, _info_problem(infos[local]), self.offs[local] + 1)
        # the kind is the low 5 bits of the info word's top byte
        kb = top.translate(_KIND_OF_TOP_BYTE)
        kinds = [k for k in range(1, NR_KINDS) if k in kb]
        kl = list(kb)
        order = sorted(range(self.n), key=kl.__getitem__)
        key = kl.__getitem__
        self.groups: dict[int, list[int]] = {}
        for k in kinds:
            lo = bisect_left(order, k, key=key)
            self.groups[k] = order[lo:bisect_left(order, k + 1, lo, key=key)]
        self.kl = kl

    def loc(self, kind: int) -> list[int]:
        return self.groups.get(kind, [])

    def ids(self, locs) -> list[int]:  # noqa: ANN001
        return list(map(self.start.__add__, locs))

    def items(self, locs: list[int], stride: int) -> _Items:
        ofs = _g(self.offs, locs)
        vlens = list(map((0xFFFF).__and__, _g(self.infos, locs)))
        return _Items(locs, ofs, vlens, stride)

    def check_name_offsets(self) -> None:
        """Mirrors btf_name_offset_valid; libbpf btf_validate_str."""
        names = self.names
        end = self.str_end
        if max(names) >= end:
            local = _first(map(end.__le__, names))
            self.fail_local(local, f"has name offset {names[local]:#x} past the end of the "
                            f"strings ({end:#x})", code=ErrorCode.BTF_BAD_STRINGS)

    def check_bound(self, values, locs, what: str, zero_ok: bool = True,  # noqa: ANN001
                    word=None) -> None:  # noqa: ANN001
        """values[i] (one per record of `locs`) must be a type id < T (and not 0 unless
        zero_ok); `word(i)` gives the word offset of item i, for the message."""
        if not values:
            return
        T = self.T
        if max(values) >= T or (not zero_ok and min(values) == 0):
            i = _first(map(T.__le__, values)) if max(values) >= T else values.index(0)
            ref = values[i]
            msg = self.past_end(what, ref) if ref >= T else f"{what} is void (type [0])"
            self.fail_local(locs[i], msg, word(i) if word else None,
                            ErrorCode.BTF_BAD_TYPE_ID if ref >= T else ErrorCode.BTF_INVALID)

    def check_item_names(self, it: _Items, col, what: str, required: bool) -> None:  # noqa: ANN001
        """Names of members/enumerators: present if required, and identifiers (that they
        lie inside the strings is checked by the identifier lookup itself)."""
        if not col:
            return

        def fail(bad: int) -> None:
            r, j, p = it.where(bad)
            n = j + 1 if what == "parameter" else j
            end = self.str_end
            why = "has no name" if not col[bad] else (
                f"has name offset {col[bad]:#x} past the end of the strings ({end:#x})")
            self.fail_local(it.locs[r], f"{what} {n} {why}", p,
                            ErrorCode.BTF_BAD_STRINGS if col[bad] else ErrorCode.BTF_INVALID)

        if required and 0 in col:
            fail(col.index(0))
        self.idents.append((col, required, fail))

    def resolved(self, col, distinct=None):  # noqa: ANN001, ANN201
        """For the distinct ids of `col`: (ids, direct kinds, resolved ids, resolved kinds)."""
        dl = list(set(col) if distinct is None else distinct)
        rl = _g(self.RID, dl)
        return dl, _g(self.KT, dl), rl, _g(self.KT, rl)

    def vlen_of(self, tid: int) -> int:
        if tid < self.start:
            t = self.base.type(tid)
            return len(getattr(t, "members", getattr(t, "params", ())))
        return vlen_of(self.infos[tid - self.start])


def _info_problem(info: int) -> str | None:
    if info & ~INFO_MASK & U32_MAX:
        return (f"has info word {info:#010x} with reserved bits set (only kind_flag, kind "
                "and vlen may be)")
    kind = kind_of(info)
    vlen = vlen_of(info)
    if kind == FUNC and vlen > 1:
        return f"has linkage {vlen} (must be static (0) or global (1))"
    if vlen and kind in VLEN_ZERO:
        return f"has vlen {vlen} (must be 0)"
    if kflag_of(info) and kind in NO_KFLAG:
        return "has kind_flag set, which this kind does not allow"
    return None


def _positions(col, value: int) -> Iterator[int]:  # noqa: ANN001
    """Indexes of `value` in `col`, by C-speed scans (for values that are rare)."""
    i = -1
    try:
        while True:
            i = col.index(value, i + 1)
            yield i
    except ValueError:
        return


def _int_regular(bits: int, off: int) -> bool:
    """btf_type_int_is_regular: 8/16/32/64/128 bits at bit offset 0."""
    return not off and bits in (8, 16, 32, 64, 128)
