"""The Btf container: a base or split BTF blob, its types, strings and name index.

Records stay in their wire form (an array of u32 words plus the word offset of each record)
until somebody asks for a type; this keeps loading a 126k-type vmlinux cheap. Decoded and
new types live beside the raw words, and `to_bytes` stitches the two back together.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from ..errors import ErrorCode
from .errors import BtfError
from .header import pack_header, parse_header
from .kinds import (
    LAYOUT_KINDS,
    MAX_NAME_OFFSET,
    MAX_TYPE,
    Kind,
)
from .record import NATIVE, RecordScanError, cstr, kind_of, scan_records

if TYPE_CHECKING:
    from .types import Type

# The per-kind dataclasses (types.py) cost ~20 ms to create at import; loading, indexing and
# dumping never decode a record, so the module is imported on first decode/encode instead.
_types = None


def _codec():  # noqa: ANN202
    global _types
    if _types is None:
        from . import types

        _types = types
    return _types


# What _scan_records() sets, and a parse(defer_scan=True) leaves unset.
_SCANNED = frozenset({"_offs", "_types", "_layout_locals"})


class Btf:
    """Base BTF (`base is None`) or split BTF on top of `base`."""

    def __init__(
        self,
        base: Btf | None = None,
        *,
        byte_order: str | None = None,
        source: str = "<memory>",
    ) -> None:
        self.base = base
        self.source = source
        self.byte_order = byte_order or (base.byte_order if base else NATIVE)
        self.flags = 0
        self.hdr_extra = b""  # header bytes past the first 24 (layout_off/_len, zero tail)
        self.layout = b""  # the kind layout section (Linux 7.x), kept as it came
        self.start_id = base.type_count if base else 1
        self.start_str_off = base.str_end if base else 0
        self._words = array("I")
        self._layout_locals: list[int] = []
        self._offs: list[int] = []  # word offset of each raw record
        self._types: list[Type | None] = []  # decoded or new types, by local index
        self._replaced: set[int] = set()  # local indexes of raw records replaced by types
        self._strs = b"" if base else b"\0"
        self._str_cache: dict[int, str] = {}
        self._str_lookup: dict[bytes, int] | None = None  # for add_str dedup
        self._index: dict[bytes, list[int]] | None = None
        self._rest_index: dict[bytes, list[int]] | None = None

    # ---------------------------------------------------------------- parsing
    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        base: Btf | None = None,
        source: str = "<memory>",
        validate: bool = True,
        defer_scan: bool = False,
    ) -> Btf:
        """Parse a BTF blob. `validate=False` is for BTF the kernel already verified
        (/sys/kernel/btf/*): only the structural checks that keep decoding in bounds run.
        With it, `defer_scan=True` also leaves the record scan (record offsets, kinds) until
        something first needs it, so that a dump can start on the words at once."""
        data = bytes(data)
        btf = cls(base, source=source)
        btf._parse_header_and_sections(data)
        if defer_scan and not validate:
            # __getattr__ scans when one of these is first read
            del btf._offs, btf._types, btf._layout_locals
            return btf
        btf._scan_records()
        if validate:
            from .validate import validate_btf

            validate_btf(btf)
        return btf

    def _err(self, msg: str, *, offset: int | None = None, type_id: int | None = None,
             code: ErrorCode = ErrorCode.BTF_INVALID) -> BtfError:
        return BtfError(msg, source=self.source, offset=offset, type_id=type_id, code=code)

    def _parse_header_and_sections(self, data: bytes) -> None:
        # header and section placement: header.py (the 32-byte header of Linux 7.x too)
        h = parse_header(data, self._err,
                         base_order=self.base.byte_order if self.base is not None else None)
        size = len(data)
        order, hdr_len, str_off, str_len = h.order, h.hdr_len, h.str_off, h.str_len
        self.byte_order = order
        strs = data[hdr_len + str_off : size]
        if self.base is None and (not strs or strs[0] != 0):
            raise self._err("string section does not start with a NUL byte",
                            offset=hdr_len + str_off, code=ErrorCode.BTF_BAD_STRINGS)
        if strs and strs[-1] != 0:
            raise self._err("string section is not NUL-terminated", offset=size - 1,
                            code=ErrorCode.BTF_BAD_STRINGS)
        if str_len and self.start_str_off + str_len - 1 > MAX_NAME_OFFSET:
            raise self._err(f"string section too large ({str_len} bytes)", offset=20,
                            code=ErrorCode.BTF_BAD_STRINGS)
        self.flags = h.flags
        self.hdr_extra = h.extra
        self.layout = data[hdr_len + h.layout_off : hdr_len + h.layout_off + h.layout_len]
        self._strs = strs
        # array indexing is ~1.4x faster than memoryview indexing, and the copy is cheap;
        # copying straight from a view of `data` saves an intermediate bytes slice.
        words = array("I")
        with memoryview(data) as view:
            words.frombytes(view[hdr_len : hdr_len + h.type_len])
        if order != NATIVE:
            words.byteswap()
        self._words = words
        self._types_off = hdr_len  # byte offset of the type section, for messages

    def _scan_records(self) -> None:
        """Find where each record starts; checks kinds and that records fit the section."""
        n = len(self._words)
        try:
            offs, layout = scan_records(self._words)
        except RecordScanError as e:
            tid = self.start_id + e.index
            if e.what == "kind":
                raise self._err(f"unknown BTF kind {e.kind}", offset=self._byte(e.at),
                                type_id=tid, code=ErrorCode.BTF_UNKNOWN_KIND) from None
            if e.what == "header":
                raise self._err("type record header truncated", offset=self._byte(e.at),
                                type_id=tid, code=ErrorCode.BTF_TRUNCATED) from None
            raise self._err(
                f"type record needs {4 * (e.end - e.at)} bytes, only {4 * (n - e.at)} left",
                offset=self._byte(e.at), type_id=tid,
                code=ErrorCode.BTF_RECORD_OVERRUN) from None
        if self.start_id + len(offs) - 1 > MAX_TYPE:
            raise self._err(f"too many types ({self.start_id + len(offs) - 1} > {MAX_TYPE})",
                            code=ErrorCode.BTF_TOO_MANY_TYPES)
        self._offs = offs
        self._layout_locals = layout
        self._types = [None] * len(offs)

    def __getattr__(self, name: str) -> object:
        # Reached only for attributes that are not set: the record arrays of a
        # parse(defer_scan=True), on first use.
        if name in _SCANNED:
            self._scan_records()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def scanned(self) -> bool:
        """False while a parse(defer_scan=True) has not been scanned yet."""
        return "_offs" in self.__dict__

    def _byte(self, word: int) -> int:
        return getattr(self, "_types_off", 0) + 4 * word

    # ---------------------------------------------------------------- types
    @property
    def type_count(self) -> int:
        """Number of type ids in this BTF and its bases, counting void (btf__type_cnt)."""
        return self.start_id + len(self._types)

    def __len__(self) -> int:
        """Types defined by this BTF itself (not its base)."""
        return len(self._types)

    def type(self, type_id: int) -> Type:
        local = type_id - self.start_id
        if local >= 0:
            t = self._types[local]  # IndexError for ids past the end
            if t is None:
                t = _codec().decode(self._words, self._offs[local])
                self._types[local] = t
            return t
        if type_id == 0:
            return _codec().VOID
        if self.base is None or type_id < 0:
            raise IndexError(type_id)
        return self.base.type(type_id)

    def kind_of(self, type_id: int) -> Kind:
        """The kind of `type_id`, without decoding the record."""
        if type_id == 0:
            return Kind.UNKN
        local = type_id - self.start_id
        if local < 0:
            assert self.base is not None
            return self.base.kind_of(type_id)
        t = self._types[local]
        if t is not None:
            return t.kind
        return Kind(kind_of(self._words[self._offs[local] + 1]))

    def name_off_of(self, type_id: int) -> int:
        local = type_id - self.start_id
        if local < 0:
            return self.base.name_off_of(type_id) if self.base and type_id else 0
        t = self._types[local]
        return t.name_off if t is not None else self._words[self._offs[local]]

    def __iter__(self) -> Iterator[tuple[int, Type]]:
        """(id, type) for this BTF's own types."""
        for local in range(len(self._types)):
            yield self.start_id + local, self.type(self.start_id + local)

    def add(self, t: Type) -> int:
        """Append a type; returns its id."""
        if self.type_count > MAX_TYPE:
            raise self._err("too many types", code=ErrorCode.BTF_TOO_MANY_TYPES)
        self._types.append(t)
        if t.name_off:
            name = self.str_bytes(t.name_off)
            if t.kind in LAYOUT_KINDS:
                if self._index is not None:
                    self._index.setdefault(name, []).append(self.type_count - 1)
            elif self._rest_index is not None:
                self._rest_index.setdefault(name, []).append(self.type_count - 1)
        return self.type_count - 1

    def replace(self, type_id: int, t: Type) -> None:
        local = type_id - self.start_id
        if local < 0:
            raise IndexError(f"type [{type_id}] belongs to the base BTF")
        self._types[local] = t
        if local < len(self._offs):
            self._replaced.add(local)
        self._index = None
        self._rest_index = None

    # ---------------------------------------------------------------- strings
    @property
    def str_end(self) -> int:
        """First string offset past this BTF's strings (base str_len for a split BTF)."""
        return self.start_str_off + len(self._strs)

    @property
    def strings(self) -> bytes:
        return self._strs

    def str_bytes(self, off: int) -> bytes:
        if off < self.start_str_off:
            assert self.base is not None
            return self.base.str_bytes(off)
        rel = off - self.start_str_off
        s = self._strs
        if rel >= len(s):
            raise self._err(f"string offset {off:#x} past the end of the string section",
                            code=ErrorCode.BTF_BAD_STRINGS)
        return cstr(s, rel)  # the section ends in a NUL (parse checks it; add_str keeps it)

    def name_of(self, off: int) -> str:
        """The string at offset `off` ('' for 0)."""
        s = self._str_cache.get(off)
        if s is None:
            s = self.str_bytes(off).decode("utf-8", "surrogateescape")
            self._str_cache[off] = s
        return s

    def type_name(self, type_id: int) -> str:
        return self.name_of(self.name_off_of(type_id)) if type_id else ""

    def find_str(self, s: str | bytes) -> int | None:
        """Offset of an existing string (base first, like btf__find_str), else None."""
        b = s.encode() if isinstance(s, str) else s
        if self.base is not None:
            found = self.base.find_str(b)
            if found is not None:
                return found
        if b == b"":
            return 0 if self.base is None else None
        lookup = self._strings_lookup()
        rel = lookup.get(b)
        return None if rel is None else self.start_str_off + rel

    def add_str(self, s: str | bytes) -> int:
        """Offset of `s`, appending it if neither this BTF nor its base has it."""
        b = s.encode() if isinstance(s, str) else s
        if b"\0" in b:
            raise ValueError("BTF strings cannot contain NUL")
        found = self.find_str(b)
        if found is not None:
            return found
        lookup = self._strings_lookup()
        rel = len(self._strs)
        self._strs += b + b"\0"
        lookup[b] = rel
        return self.start_str_off + rel

    def _strings_lookup(self) -> dict[bytes, int]:
        if self._str_lookup is None:
            parts = self._strs.split(b"\0")[:-1]
            starts = accumulate(map((1).__add__, map(len, parts)), initial=0)
            lookup: dict[bytes, int] = {}
            for p, st in zip(parts, starts, strict=False):
                lookup.setdefault(p, st)
            self._str_lookup = lookup
        return self._str_lookup

    # ---------------------------------------------------------------- index
    def build_index(self) -> None:
        """Name -> ids index of this BTF's own types of the layout kinds (INT, FLOAT, ENUM,
        ENUM64, FWD, STRUCT, UNION, TYPEDEF): what reconciliation looks up. Names of other
        kinds (56k FUNCs in a vmlinux) are indexed on first use, see `find`."""
        if self._index is not None:
            return
        self._index = self._group_by_name(self._layout_locals, with_types=True)

    def _group_by_name(self, locals_: Sequence[int], *, with_types: bool) -> dict[bytes, list[int]]:
        w = self._words
        offs = self._offs
        types = self._types
        strs = self._strs
        start_str = self.start_str_off
        find_nul = strs.find
        nstr = len(strs)
        index: dict[bytes, list[int]] = {}
        get = index.get
        tid0 = self.start_id
        for local in locals_:
            t = types[local]
            no = w[offs[local]] if t is None else t.name_off
            if not no:
                continue
            rel = no - start_str
            name = strs[rel:find_nul(0, rel)] if 0 <= rel < nstr else self.str_bytes(no)
            ids = get(name)
            if ids is None:
                index[name] = [tid0 + local]
            else:
                ids.append(tid0 + local)
        if with_types:
            for local in range(len(offs), len(types)):
                t = types[local]
                if t is not None and t.name_off and t.kind in LAYOUT_KINDS:
                    index.setdefault(self.str_bytes(t.name_off), []).append(tid0 + local)
        return index

    def _other_index(self) -> dict[bytes, list[int]]:
        if self._rest_index is None:
            layout = set(self._layout_locals)
            rest = [i for i in range(len(self._offs)) if i not in layout]
            index = self._group_by_name(rest, with_types=False)
            for local in range(len(self._offs), len(self._types)):
                t = self._types[local]
                if t is not None and t.name_off and t.kind not in LAYOUT_KINDS:
                    index.setdefault(self.str_bytes(t.name_off), []).append(self.start_id + local)
            self._rest_index = index
        return self._rest_index

    def layout_ids(self, name: bytes) -> list[int]:
        """Ids of this BTF's own (not its base's) types of the layout kinds named `name`,
        ascending: the name index alone, without the other kinds' index find() may build."""
        if self._index is None:
            self.build_index()
        assert self._index is not None
        return self._index.get(name, [])

    def find(self, name: str | bytes, kind: Kind | None = None) -> list[int]:
        """Ids of types named `name` (optionally of one kind), base BTF first."""
        b = name.encode() if isinstance(name, str) else name
        found = self.base.find(b, kind) if self.base is not None else []
        if self._index is None:
            self.build_index()
        assert self._index is not None
        ids: list[int] = []
        if kind is None or kind in LAYOUT_KINDS:
            ids += self._index.get(b, ())
        if kind is None or kind not in LAYOUT_KINDS:
            ids += self._other_index().get(b, ())
            if kind is None:
                ids.sort()
        if kind is None:
            return found + ids
        return found + [i for i in ids if self.kind_of(i) == kind]

    # ---------------------------------------------------------------- writing
    def wire_records(self) -> tuple[array, list[int]]:
        """(type-section words, word offset of each record) of this BTF's own types, in host
        order. The parser's arrays when nothing was replaced or added since parsing (shared:
        do not modify them), else those of the re-serialised section."""
        if not self._replaced and len(self._offs) == len(self._types):
            return self._words, self._offs
        wire = Btf.parse(self.to_bytes(), base=self.base, source=self.source, validate=False)
        return wire._words, wire._offs

    def wire_words(self) -> array:
        """wire_records()'s words; for a parse(defer_scan=True) not scanned yet (nothing can
        have changed), the parsed words, without scanning."""
        return self._words if not self.scanned else self.wire_records()[0]

    def types_words(self, *, reencode: bool = False) -> array:
        """The type section as u32 words in host order. Raw records are copied as they are
        unless replaced; `reencode=True` encodes every type from its decoded form instead
        (used to prove that decode/encode are exact inverses)."""
        out = array("I")
        w = self._words
        offs = self._offs
        raw_n = len(offs)
        if not self._replaced and not reencode:
            out.frombytes(w.tobytes())
            for t in self._types[raw_n:]:
                out.extend(_codec().encode(t))  # type: ignore[arg-type]
            return out
        for local in range(len(self._types)):
            if local < raw_n and local not in self._replaced and not reencode:
                end = offs[local + 1] if local + 1 < raw_n else len(w)
                out.extend(w[offs[local]:end])
            else:
                out.extend(_codec().encode(self.type(self.start_id + local)))
        return out

    def to_bytes(self, *, reencode: bool = False) -> bytes:
        """Serialise in this BTF's byte order; byte-exact for a parsed, unmodified BTF."""
        words = self.types_words(reencode=reencode)
        if self.byte_order != NATIVE:
            words.byteswap()
        types = words.tobytes()
        strs = self._strs
        hdr = pack_header(self.byte_order, self.flags, self.hdr_extra, len(types),
                          len(self.layout), len(strs))
        return hdr + types + self.layout + strs
