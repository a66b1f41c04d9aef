"""Strict validation of untrusted BTF: the kernel's BTF verifier, plus everything libbpf rejects.

`Btf.parse` has already checked the header, the section layout, the string section's NUL
rules, that every record has a known kind and fits the type section. `validate_btf` then
applies the rules of the kernel's verifier (kernel/bpf/btf.c: btf_check_all_metas with each
kind's check_meta, btf_check_all_types with each kind's resolve, btf_func_proto_check,
btf_func_check, btf_check_type_tags) and of libbpf's btf__new (btf_parse_hdr,
btf_sanity_check):

* info word: no bits outside kind_flag/kind/vlen; vlen and kind_flag only where the kind has
  them (FUNC vlen is the linkage: static or global only, like the kernel).
* names: every name offset inside the string sections (this BTF's or its base's); names that
  must be absent (PTR, ARRAY, CONST, VOLATILE, RESTRICT, FUNC_PROTO), must be C identifiers
  (FWD, TYPEDEF, FUNC, VAR, enumerators; STRUCT/UNION/ENUM names, members and parameters when
  present), section names (DATASEC: printable), non-empty values (TYPE_TAG, DECL_TAG). The
  character classes are the kernel's (lib/ctype.c: Latin-1 letters count, '.' is allowed),
  names are at most KSYM_NAME_LEN (512) bytes.
* per kind: INT encoding/bits/offset/size, ENUM/ENUM64 size 1/2/4/8, FLOAT size
  2/4/8/12/16, FWD and ARRAY size words zero, VAR linkage, DECL_TAG component_idx >= -1,
  DATASEC size and sorted, non-overlapping, in-bounds entries, struct/union member bit
  offsets (non-decreasing, zero in unions).
* type ids: every referenced id exists (in this BTF or its base); void only where allowed
  (pointee, modifier target, return type, a last vararg parameter).
* resolution: what each reference may point to (no VAR/DATASEC/DECL_TAG/FUNC behind a
  modifier or pointer; members, array elements, variables, parameters and return values
  must have a size; array index types are regular ints; FUNC -> FUNC_PROTO whose
  parameters are named; DATASEC entries are VARs that fit their slot; DECL_TAG targets and
  component indexes), the kernel's per-member layout rules (btf_*_check_member and
  btf_*_check_kflag_member: alignment, bitfield sizes, inside the struct), array sizes
  that fit in u32.
* loops: reference loops through modifiers and pointers; structs, unions and arrays that
  contain themselves by value; modifier chains longer than 32; a TYPE_TAG after another
  modifier.
* libbpf: BTF in the other byte order only with the plain 24-byte header.

Where the kernel's answer depends on the order in which it happens to visit types (a
self-embedding struct it can miss, a pointer to a FUNC it accepts once that FUNC is resolved,
its 32-deep resolve stack) we apply the order-independent rule instead. An empty type
section is accepted (the kernel refuses to load one; it is harmless to read).

Speed: a vmlinux has ~127k types, so nothing here creates per-type Python objects. Fields
are gathered with `operator.itemgetter` over the raw u32 words, variable-length parts are cut
out with one slice per record and joined, properties of referenced types are computed once
per distinct id, and the rules run as `map`/`max`/`set` operations over those columns. Only
on failure do we go back to find, and name, the first offending type.
"""

from __future__ import annotations

import gc
import re
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from itertools import accumulate, chain, compress, repeat
from operator import add, and_, gt, itemgetter, le, not_

from .errors import BtfError
from .kinds import Kind

# Plain ints: IntEnum members are slower to hash and compare.
(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)
VOID = 0
KIND_NAMES = {k.value: k.name for k in Kind}
KIND_NAMES[0] = "VOID"

INFO_MASK = 0x9F00FFFF
INT_MASK = 0x0FFFFFFF
U32_MAX = 0xFFFFFFFF
MAX_CHAIN = 32  # btf_check_type_tags' chain_limit
HUGE = 1 << 40  # an "effective size" that never fits: sends a member to the exact check

MODS = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
REFS = (PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
SOURCE_ONLY = frozenset({VAR, DECL_TAG, DATASEC})
NOSIZE = frozenset({VOID, FWD, FUNC, FUNC_PROTO, DECL_TAG})
SIZED = frozenset({INT, PTR, ARRAY, STRUCT, UNION, ENUM, ENUM64, FLOAT})
COMPOSITE = frozenset({STRUCT, UNION, ARRAY})
# What a modifier or pointer may not point at (the kernel accepts a FUNC target only when
# it happens to have resolved that FUNC first; no compiler emits one).
BAD_REF_TARGET = SOURCE_ONLY | {FUNC}
BAD_MEMBER = NOSIZE | SOURCE_ONLY  # direct type of a member, array element or index
DECL_TAG_TARGETS = frozenset({FUNC, STRUCT, UNION, VAR, TYPEDEF})

VLEN_ZERO = frozenset({INT, PTR, ARRAY, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, VAR, FLOAT,
                       DECL_TAG, TYPE_TAG})
NO_KFLAG = frozenset({INT, PTR, ARRAY, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO,
                      VAR, DATASEC, FLOAT})
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
_BAD_TOP = bytes(1 if c & 0x60 or not 1 <= c & 0x1F <= 19 or (c & 0x80 and c & 0x1F in NO_KFLAG)
                 else 0 for c in range(256))
_VLEN_ZERO_TOP = bytes(0xFF if c & 0x1F in VLEN_ZERO else 0 for c in range(256))
_FUNC_TOP = bytes(0xFF if c & 0x1F == FUNC else 0 for c in range(256))
_ABOVE_1 = bytes(0xFF if c > 1 else 0 for c in range(256))
_LONG = b"x" * 513
_NATIVE = "<" if sys.byteorder == "little" else ">"
_LONG_NAMES = (b"long", b"long int", b"unsigned long", b"long unsigned int")

# Tests set this so that a bug in the validator shows up as itself, not as a BtfError.
RAISE_INTERNAL_ERRORS = False


def validate_btf(btf) -> None:  # noqa: ANN001 (a Btf; btf.py imports us lazily)
    """Raise BtfError (one line: source, type id, byte offset, what is wrong) unless `btf`
    passes the kernel's and libbpf's checks. Called by `Btf.parse(..., validate=True)`."""
    # The columns below are big, short-lived and acyclic: generational collections in the
    # middle of the work only rescan them (~8% of the time on a vmlinux).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _Validator(btf).run()
    except BtfError:
        raise
    except Exception as exc:  # never a traceback for bad input, whatever the bug
        if RAISE_INTERNAL_ERRORS:
            raise
        raise btf._err(f"cannot validate this BTF ({type(exc).__name__}: {exc})",
                       offset=0) from None
    finally:
        if was_enabled:
            gc.enable()


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


# The checks, in order: structure and names first (the kernel's check_meta), then what
# references resolve to (its resolve pass). Each raises on the first problem it finds.
PHASES = (
    "gather", "group", "check_name_offsets", "meta_simple_kinds", "meta_members",
    "meta_protos", "meta_enums", "meta_arrays", "meta_vars", "meta_datasecs", "meta_decl_tags",
    "check_identifiers", "build_tables", "resolve_refs", "resolve_arrays",
    "resolve_member_types", "resolve_embedding", "array_sizes", "finish_tables",
    "resolve_members", "resolve_protos", "resolve_funcs", "resolve_vars", "resolve_datasecs",
    "resolve_decl_tags",
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


class _Validator:
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
        kind = (self.w[o + 1] >> 24) & 0x1F
        return KIND_NAMES.get(kind, f"kind {kind}") + self._label(self.w[o])

    def _ref(self, tid: int) -> str:
        """A referenced type in messages: [ID] KIND 'name'."""
        if tid >= self.T:
            return f"[{tid}]"
        return f"[{tid}] {self._desc(tid)}"

    def fail(self, tid: int, msg: str, word: int | None = None) -> None:
        local = tid - self.start
        if word is None:
            word = self.offs[local] if 0 <= local < self.n else 0
        raise self.btf._err(f"{self._desc(tid)} {msg}", offset=self.btf._byte(word),
                            type_id=tid)

    def fail_local(self, local: int, msg: str, word: int | None = None) -> None:
        self.fail(self.start + local, msg, word)

    def past_end(self, what: str, ref: int) -> str:
        lead = f"{what} " if what else ""
        return f"{lead}refers to type [{ref}] but the last type id is [{self.T - 1}]"

    # ------------------------------------------------------------ driver
    def run(self) -> None:
        btf = self.btf
        if btf.byte_order != _NATIVE and btf.hdr_extra:
            # libbpf's btf_parse_hdr: the other byte order only with the 24-byte header.
            raise btf._err(f"BTF in non-native byte order with a {24 + len(btf.hdr_extra)}"
                           "-byte header (libbpf only swaps the 24-byte header)", offset=4)
        if not self.n:
            return
        for name in PHASES:
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
        we look at the words one distinct value at a time, to name the first culprit."""
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
        kinds = [k for k in range(1, 20) if k in kb]
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
        names = self.names
        end = self.str_end
        if max(names) >= end:
            local = _first(map(end.__le__, names))
            self.fail_local(local, f"has name offset {names[local]:#x} past the end of the "
                            f"strings ({end:#x})")

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
            self.fail_local(locs[i], msg, word(i) if word else None)

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
            self.fail_local(it.locs[r], f"{what} {n} {why}", p)

        if required and 0 in col:
            fail(col.index(0))
        self.idents.append((col, required, fail))

    # ------------------------------------------------------------ meta: simple kinds
    def meta_simple_kinds(self) -> None:
        names, sw, w, offs = self.names, self.sw, self.w, self.offs
        for kind in ANONYMOUS:
            locs = self.loc(kind)
            nm = _g(names, locs)
            if any(nm):
                local = locs[_first(nm)]
                self.fail_local(local, f"must be anonymous but has name offset {names[local]:#x}")
        for kind in NAMED_IDENT:
            locs = self.loc(kind)
            nm = _g(names, locs)
            if 0 in nm:
                self.fail_local(locs[nm.index(0)], "needs a name")
            self.idents.append((nm, True, None))  # (names: checked in check_name_offsets)
        for kind in OPTIONAL_IDENT:
            self.idents.append((_g(names, self.loc(kind)), False, None))
        for kind in (TYPE_TAG, DECL_TAG):
            for local in self.loc(kind):
                if not self._name_bytes(names[local]):
                    self.fail_local(local, "needs a non-empty " +
                                    ("name" if kind == TYPE_TAG else "value"))
        self.targets: dict[int, tuple] = {}  # what PTRs, modifiers and FUNCs point to
        for kind in (*REFS, FUNC):
            locs = self.loc(kind)
            self.targets[kind] = col = _g(sw, locs)
            self.check_bound(col, locs, "")
        locs = self.loc(FWD)
        size = _g(sw, locs)
        if any(size):
            local = locs[_first(size)]
            self.fail_local(local, f"has size/type word {sw[local]} (must be 0)",
                            offs[local] + 2)
        for local in self.loc(INT):
            o = offs[local]
            msg = _int_problem(sw[local], w[o + 3])
            if msg:
                self.fail_local(local, msg, o + 3)
        for local in self.loc(FLOAT):
            if sw[local] not in (2, 4, 8, 12, 16):
                self.fail_local(local, f"has size {sw[local]} (must be 2, 4, 8, 12 or 16)",
                                offs[local] + 2)
        for kind in (ENUM, ENUM64):
            locs = self.loc(kind)
            if not set(_g(sw, locs)) <= {1, 2, 4, 8}:
                local = next(lo for lo in locs if sw[lo] not in (1, 2, 4, 8))
                self.fail_local(local, f"has size {sw[local]} (must be 1, 2, 4 or 8)",
                                offs[local] + 2)

    # ------------------------------------------------------------ meta: members
    def meta_members(self) -> None:
        """Structs and unions, by (kind, kind_flag): the columns of all their members."""
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
        g = self.items(locs, 3)
        g.kind, g.kflag = kind, kflag
        # a list: every later pass then reuses these int objects instead of making new ones
        fl = self.flat(g).tolist()
        g.MN, g.MT, g.MO = MN, MT, MO = fl[0::3], fl[1::3], fl[2::3]
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
            self.fail_local(locs[r], msg, p + 1)
        BO = MO if not kflag else list(map((0xFFFFFF).__and__, MO))
        if kind == UNION:
            if any(BO):
                i = _first(BO)
                r, j, p = g.where(i)
                self.fail_local(locs[r], f"member {j}{self._label(MN[i])} has bit offset "
                                f"{BO[i]} (union members are at offset 0)", p + 2)
            return g
        # member bit offsets never decrease (">": a last "char a[0]" may share an offset);
        # that they lie inside the struct is part of the member checks below
        prev = [0, *BO[:-1]]
        _scatter(prev, g.cum[:bisect_right(g.cum, len(BO) - 1)], repeat(0))
        if not all(map(le, prev, BO)):
            i = _first(map(gt, prev, BO))
            r, j, p = g.where(i)
            self.fail_local(locs[r], f"member {j}{self._label(MN[i])} at bit offset {BO[i]} "
                            f"comes before the previous member (bit offset {prev[i]})", p + 2)
        return g

    # ------------------------------------------------------------ meta: protos
    def meta_protos(self) -> None:
        """Parameters as columns: protos sorted by vlen, then one gather per parameter
        position (cheaper than cutting 29k small records out one by one)."""
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
        T, end = self.T, self.str_end
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
                PN = get(mv[3 + 2 * j:])
                PT = get(mv[4 + 2 * j:])
                p.cols.append((group, j, v, PN, PT))
                def fail(i: int, group=group, j=j, ofs=ofs, PN=PN) -> None:
                    self.fail_local(group[i], f"parameter {j + 1} has name offset {PN[i]:#x} "
                                    f"past the end of the strings ({end:#x})", ofs[i] + 3 + 2 * j)

                self.idents.append((PN, False, fail))
                distinct = set(PT)
                if max(distinct) >= T:
                    i = _first(map(T.__le__, PT))
                    self.fail_local(group[i], self.past_end(
                        f"parameter {j + 1}{self._label(PN[i])}", PT[i]), ofs[i] + 4 + 2 * j)
                if 0 in distinct:  # a void parameter: only the last, unnamed one (varargs)
                    for i in _positions(PT, 0):
                        if j != v - 1:
                            self.fail_local(group[i], f"parameter {j + 1} is void (only a last "
                                            "parameter may be, for varargs)", ofs[i] + 4 + 2 * j)
                        if PN[i]:
                            self.fail_local(group[i], f"vararg parameter {j + 1} has a name"
                                            f"{self._label(PN[i])}", ofs[i] + 3 + 2 * j)
                pts |= distinct
                # protos with an unnamed (non-vararg) parameter
                if 0 not in distinct:
                    p.unnamed_locs.update(compress(group, map(not_, PN)))
                else:
                    p.unnamed_locs.update(group[i] for i in _positions(PN, 0) if PT[i])
        pts.discard(0)
        p.PTset = pts

    # ------------------------------------------------------------ meta: enums
    def meta_enums(self) -> None:
        for kind, stride in ((ENUM, 2), (ENUM64, 3)):
            locs = self.loc(kind)
            if locs:
                e = self.items(locs, stride)
                self.check_item_names(e, self.flat(e)[0::stride].tolist(), "enumerator",
                                      required=True)

    # ------------------------------------------------------------ meta: arrays
    def meta_arrays(self) -> None:
        locs = self.loc(ARRAY)
        self.arrays = None
        if not locs:
            return
        ofs = _g(self.offs, locs)
        sizes = _g(self.sw, locs)
        if any(sizes):
            i = _first(sizes)
            self.fail_local(locs[i], f"has size word {sizes[i]} (must be 0)", ofs[i] + 2)
        AE = self.field(ofs, 3)
        AI = self.field(ofs, 4)
        AN = self.field(ofs, 5)
        self.check_bound(AE, locs, "element type", zero_ok=False, word=lambda i: ofs[i] + 3)
        self.check_bound(AI, locs, "index type", zero_ok=False, word=lambda i: ofs[i] + 4)
        self.arrays = (locs, ofs, AE, AI, AN)

    # ------------------------------------------------------------ meta: vars
    def meta_vars(self) -> None:
        locs = self.loc(VAR)
        if not locs:
            return
        ofs = _g(self.offs, locs)
        self.check_bound(_g(self.sw, locs), locs, "type", zero_ok=False)
        link = self.field(ofs, 3)
        if not set(link) <= {0, 1}:
            i = next(i for i, v in enumerate(link) if v > 1)
            self.fail_local(locs[i], f"has linkage {link[i]} (must be static (0) or global "
                            "allocated (1))", ofs[i] + 3)

    # ------------------------------------------------------------ meta: datasecs
    def meta_datasecs(self) -> None:
        w, T = self.w, self.T
        for local in self.loc(DATASEC):
            o = self.offs[local]
            size = w[o + 2]
            if not size:
                self.fail_local(local, "has size 0", o + 2)
            raw = self._name_bytes(w[o])
            if not raw or not _SECTION_RE.fullmatch(raw):
                self.fail_local(local, "needs a section name of 1 to 512 printable characters")
            last_end = total = 0
            for j in range(w[o + 1] & 0xFFFF):
                p = o + 3 + 3 * j
                vt, off, sz = w[p], w[p + 1], w[p + 2]
                what = f"entry {j}"
                if not vt or vt >= T:
                    self.fail_local(local, self.past_end(what, vt) if vt else
                                    f"{what} is void (type [0])", p)
                if off < last_end or off >= size:
                    self.fail_local(local, f"{what} at offset {off} overlaps the previous "
                                    f"entry (which ends at {last_end}) or lies outside the "
                                    f"{size}-byte section", p + 1)
                if not sz or sz > size:
                    self.fail_local(local, f"{what} has size {sz} (must be 1..{size})", p + 2)
                last_end = off + sz
                if last_end > size:
                    self.fail_local(local, f"{what} ends at {last_end}, past the {size}-byte "
                                    "section", p + 2)
                total += sz
            if total > size:
                self.fail_local(local, f"entries total {total} bytes, more than its size {size}")

    # ------------------------------------------------------------ meta: decl tags
    def meta_decl_tags(self) -> None:
        w = self.w
        for local in self.loc(DECL_TAG):
            o = self.offs[local]
            idx = w[o + 3]
            if 0x80000000 <= idx < U32_MAX:
                self.fail_local(local, f"has component_idx {idx - (1 << 32)} (must be >= -1)",
                                o + 3)
            if w[o + 2] >= self.T:
                self.fail_local(local, self.past_end("", w[o + 2]), o + 2)

    # ------------------------------------------------------------ names
    def check_identifiers(self) -> None:
        """Every name that must be a C identifier is one. One byte per string offset says
        whether a name starting there is fine: 'a' (an identifier starts here: the rest
        of its string is identifier characters, at most 512 of them), 'Z' (offset 0, the
        empty name), '?' (inside a string that is no identifier: check that suffix on its
        own), anything else (not an identifier). Each column then costs one gather."""
        if not self.idents:
            return
        end = self.str_end
        lut = self.ident_lut()
        if lut is None:  # strings we cannot lay out in one piece: check one by one
            for col, _, past_end in self.idents:
                if col and max(col) >= end:
                    past_end(_first(map(end.__le__, col)))
            offsets = set().union(*(set(c) for c, _, _ in self.idents))
            offsets.discard(0)
            bad = {o for o in offsets if not _IDENT_RE.fullmatch(self._name_bytes(o) or b"")}
            if bad:
                self.report_bad_identifier(bad)
            return
        ok_required, ok_optional = {0x61}, {0x61, 0x5A}
        for col, required, past_end in self.idents:
            allowed = ok_required if required else ok_optional
            try:
                classes = _g(lut, col)  # (the lookup table ends where the strings end)
            except IndexError:
                past_end(_first(map(end.__le__, col)))
                raise
            good = classes.count(0x61) if required else classes.count(0x61) + classes.count(0x5A)
            if good == len(classes):
                continue
            bad = set()
            for o in set(col):
                c = lut[o]
                if c in allowed or (c == 0x3F and _IDENT_RE.fullmatch(self._name_bytes(o))):
                    continue
                bad.add(o)
            if bad:
                self.report_bad_identifier(bad)

    def ident_lut(self) -> bytearray | None:
        strs = [self.strs]
        base = self.base
        while base is not None:
            strs.append(base._strs)
            base = base.base
        full = b"".join(reversed(strs))
        if len(full) != self.str_end:
            return None
        t = full.translate(_IDCLASS)
        lut = bytearray(t)
        lut[0] = 0x5A
        # strings with a character no identifier has, or longer than 512 bytes
        spans = []
        i = t.find(b"!")
        while i >= 0:
            end = t.index(b"\0", i)
            spans.append((t.rfind(b"\0", 0, i) + 1, end))
            i = t.find(b"!", end)
        tx = t.translate(_NONNUL)
        i = tx.find(_LONG)
        while i >= 0:
            end = tx.index(b"\0", i)
            spans.append((i, end))
            i = tx.find(_LONG, end)
        for a, b in spans:
            lut[a:b] = b"?" * (b - a)
        return lut

    def report_bad_identifier(self, bad: set[int]) -> None:
        """Find the first type that uses one of the `bad` name offsets, and say so."""
        names, offs, w = self.names, self.offs, self.w
        for local in range(self.n):
            kind = self.kl[local]
            o = offs[local]
            if (kind in NAMED_IDENT or kind in OPTIONAL_IDENT) and names[local] in bad:
                self.fail_local(local, BAD_NAME)
            vlen = w[o + 1] & 0xFFFF
            if kind in (STRUCT, UNION):
                items = [(j, o + 3 + 3 * j, "member") for j in range(vlen)]
            elif kind == FUNC_PROTO:
                items = [(j + 1, o + 3 + 2 * j, "parameter") for j in range(vlen)]
            elif kind == ENUM:
                items = [(j, o + 3 + 2 * j, "enumerator") for j in range(vlen)]
            elif kind == ENUM64:
                items = [(j, o + 3 + 3 * j, "enumerator") for j in range(vlen)]
            else:
                continue
            for j, p, what in items:
                if w[p] in bad:
                    self.fail_local(local, f"{what} {j}{self._label(w[p])} {BAD_NAME}", p)
        raise self.btf._err("invalid identifier", offset=0)  # not reached

    # ------------------------------------------------------------ tables by type id
    def build_tables(self) -> None:
        """KT (kind) and SW (size/type word) for every type id; for a split BTF, base
        entries only for the base types this BTF refers to (see fill_base)."""
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
            refs.update(filter(below, w[o + 3:o + 3 + 3 * (w[o + 1] & 0xFFFF):3]))
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
            if kind not in MODS or x == 0:
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
            elif kind in MODS or kind == VAR:
                tid = t.type
            else:
                return 0
        return 0

    # ------------------------------------------------------------ pointers and modifiers
    def resolve_refs(self) -> None:
        """PTR and modifiers: what they point to, reference loops, RID (the id a type
        resolves to through modifiers), chain length, TYPE_TAG order."""
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
        self.fail(first, f"{what}: {text} -> [{first}]")

    def embedding_via(self, a: int, b: int) -> str:
        """Which member (or the element) of local type a holds b by value."""
        w, o = self.w, self.offs[a - self.start]
        kind = (w[o + 1] >> 24) & 0x1F
        if kind == ARRAY:
            return " element"
        for j in range(w[o + 1] & 0xFFFF):
            p = o + 3 + 3 * j
            if w[p + 1] < self.T and self.RID[w[p + 1]] == b:
                return f" member {j}{self._label(w[p])}"
        return ""

    def check_chains(self, MX: list[int], MY: list[int]) -> None:
        """Modifier chains: at most 32 links, TYPE_TAGs only at the start (as
        btf_check_type_tags; a split BTF's chain stops at its first base type)."""
        if not MX:
            return
        KT, start = self.KT, self.start
        exits = ({y for y in filter(start.__gt__, MY) if KT[y] in MODS}
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

    # ------------------------------------------------------------ arrays
    def resolve_arrays(self) -> None:
        if not self.arrays:
            return
        locs, ofs, AE, AI, AN = self.arrays
        KT, RID = self.KT, self.RID
        for col, what, k in ((AE, "element type", 3), (AI, "index type", 4)):
            dk = _g(KT, col)
            if not BAD_MEMBER.isdisjoint(dk):
                i = _first(map(BAD_MEMBER.__contains__, dk))
                self.fail_local(locs[i], f"{what} {self._ref(col[i])} has no size", ofs[i] + k)
        RI = _g(RID, AI)
        for r in set(RI):
            if KT[r] != INT or not self.int_regular(r):
                i = RI.index(r)
                self.fail_local(locs[i], f"index type {self._ref(AI[i])} is not a regular int "
                                "(8, 16, 32, 64 or 128 bits at bit offset 0)", ofs[i] + 4)
        RE = _g(RID, AE)
        for r in set(RE):
            k = KT[r]
            if k not in SIZED or (k == INT and not self.int_regular(r)):
                i = RE.index(r)
                why = "has no size" if k not in SIZED else "is an int bitfield type"
                self.fail_local(locs[i], f"element type {self._ref(AE[i])} {why}", ofs[i] + 3)
        self.RE = RE

    def int_regular(self, tid: int) -> bool:
        return _int_regular(*self.int_bits(tid))

    def int_bits(self, tid: int) -> tuple[int, int]:
        if tid < self.start:
            t = self.base.type(tid)
            return t.nr_bits, t.bits_offset
        d = self.w[self.offs[tid - self.start] + 3]
        return d & 0xFF, (d >> 16) & 0xFF

    def resolved(self, col, distinct=None):  # noqa: ANN001, ANN201
        """For the distinct ids of `col`: (ids, direct kinds, resolved ids, resolved kinds)."""
        dl = list(set(col) if distinct is None else distinct)
        rl = _g(self.RID, dl)
        return dl, _g(self.KT, dl), rl, _g(self.KT, rl)

    # ------------------------------------------------------------ member types
    def resolve_member_types(self) -> None:
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
                            f"{self._ref(t)}{via} without a size", p + 1)

    # ------------------------------------------------------------ embedding loops
    def resolve_embedding(self) -> None:
        """No struct/union/array may contain itself by value (through members, array
        elements and modifiers)."""
        KT, start = self.KT, self.start
        src: list[int] = []
        dst: list[int] = []
        for g in self.member_groups:
            if not g.MT:
                continue
            comp = dict(compress(zip(g.dl, g.rl, strict=True),
                                 map(and_, map(COMPOSITE.__contains__, g.rk),
                                     map(start.__le__, g.rl))))
            if not comp:
                continue
            sel = list(map(comp.__contains__, g.MT))
            owners = chain.from_iterable(map(repeat, self.ids(g.locs), g.vlens))
            src += compress(owners, sel)
            dst += _g(comp, list(compress(g.MT, sel)))
        if self.arrays:
            RE = self.RE
            sel = [k in COMPOSITE and r >= start for r, k in zip(RE, _g(KT, RE), strict=True)]
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

    # ------------------------------------------------------------ sizes
    def array_sizes(self) -> None:
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
                              ofs[locs.index(x - start)] + 5)
                asize[x] = nel * esize

    def finish_tables(self) -> None:
        """SIZE: the size in bytes of each type id that has one."""
        SIZE = list(self.SW)
        _scatter(SIZE, self.ids(self.loc(PTR)), repeat(self.ptr_size))
        _scatter(SIZE, self.asize.keys(), self.asize.values())
        for b, (_r, size, _eff0, _eff1) in self.base_info.items():
            SIZE[b] = size
        self.SIZE = SIZE

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
        inside the struct); whatever fails it gets the kernel's exact rule for its type."""
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
                    self.fail_local(g.locs[r], f"member {j}{self._label(g.MN[i])} {msg}", p + 2)

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

    # ------------------------------------------------------------ protos and funcs
    def resolve_protos(self) -> None:
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
                                self.offs[local] + 4 + 2 * j)
        # protos with an unnamed parameter cannot be a FUNC's type
        self.unnamed = set(map(self.start.__add__, p.unnamed_locs))

    def resolve_funcs(self) -> None:
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

    def resolve_vars(self) -> None:
        locs = self.loc(VAR)
        if not locs:
            return
        vt = _g(self.sw, locs)
        dl, dk, rl, rk = self.resolved(vt)
        bad = {d for d, k, r in zip(dl, dk, rk, strict=True) if k in SOURCE_ONLY or r not in SIZED}
        if bad:
            i = _first(map(bad.__contains__, vt))
            self.fail_local(locs[i], f"has type {self._ref(vt[i])}, which has no size",
                            self.offs[locs[i]] + 2)

    def resolve_datasecs(self) -> None:
        w, KT, SW, RID, SIZE = self.w, self.KT, self.SW, self.RID, self.SIZE
        for local in self.loc(DATASEC):
            o = self.offs[local]
            for j in range(w[o + 1] & 0xFFFF):
                p = o + 3 + 3 * j
                vt = w[p]
                if KT[vt] != VAR:
                    self.fail_local(local, f"entry {j} is {self._ref(vt)}, not a VAR", p)
                need = SIZE[RID[SW[vt]]]
                if w[p + 2] < need:
                    self.fail_local(local, f"entry {j} ({self._ref(vt)}) has size {w[p + 2]} "
                                    f"but its type needs {need} bytes", p + 2)

    def resolve_decl_tags(self) -> None:
        w, KT, start = self.w, self.KT, self.start
        for local in self.loc(DECL_TAG):
            o = self.offs[local]
            target = w[o + 2]
            kind = KT[target]
            if target == 0 or kind not in DECL_TAG_TARGETS:
                self.fail_local(local, f"tags {self._ref(target)}; only a FUNC, STRUCT, UNION, "
                                "VAR or TYPEDEF can be tagged", o + 2)
            idx = w[o + 3]
            if idx == U32_MAX:
                continue
            if kind in (VAR, TYPEDEF):
                self.fail_local(local, f"has component_idx {idx} but its target "
                                f"{self._ref(target)} has no components", o + 3)
            if kind == FUNC:
                proto = self.SW[target] if target >= start else self.base.type(target).type
                vlen = self.vlen_of(proto)
            else:
                vlen = self.vlen_of(target)
            if idx >= vlen:
                self.fail_local(local, f"has component_idx {idx} but {self._ref(target)} has "
                                f"only {vlen} components", o + 3)

    def vlen_of(self, tid: int) -> int:
        if tid < self.start:
            t = self.base.type(tid)
            return len(getattr(t, "members", getattr(t, "params", ())))
        return self.infos[tid - self.start] & 0xFFFF


def _info_problem(info: int) -> str | None:
    if info & ~INFO_MASK & U32_MAX:
        return (f"has info word {info:#010x} with reserved bits set (only kind_flag, kind "
                "and vlen may be)")
    kind = (info >> 24) & 0x1F
    vlen = info & 0xFFFF
    if kind == FUNC and vlen > 1:
        return f"has linkage {vlen} (must be static (0) or global (1))"
    if vlen and kind in VLEN_ZERO:
        return f"has vlen {vlen} (must be 0)"
    if info >> 31 and kind in NO_KFLAG:
        return "has kind_flag set, which this kind does not allow"
    return None


def _int_problem(size: int, data: int) -> str | None:
    """btf_int_check_meta."""
    if data & ~INT_MASK & U32_MAX:
        return f"has int data {data:#010x} with reserved bits set"
    bits = data & 0xFF
    off = (data >> 16) & 0xFF
    enc = (data >> 24) & 0x0F
    if bits + off > 128:
        return f"has {bits} bits at bit offset {off}: more than 128 bits"
    if (bits + off + 7) >> 3 > size:
        return f"has {bits} bits at bit offset {off}, more than its size of {size} bytes"
    if enc not in (0, 1, 2, 4):
        return f"has encoding {enc:#x} (must be none, signed, char or bool)"
    return None


def _int_regular(bits: int, off: int) -> bool:
    """btf_type_int_is_regular: 8/16/32/64/128 bits at bit offset 0."""
    return not off and bits in (8, 16, 32, 64, 128)


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


def _positions(col, value: int) -> Iterator[int]:  # noqa: ANN001
    """Indexes of `value` in `col`, by C-speed scans (for values that are rare)."""
    i = -1
    try:
        while True:
            i = col.index(value, i + 1)
            yield i
    except ValueError:
        return


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


__all__ = ["RAISE_INTERNAL_ERRORS", "validate_btf"]
