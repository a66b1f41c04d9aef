"""The BTF record layout, once: for every kind, what each u32 word of its record is.

A record is the 12-byte `struct btf_type` (name_off; info = kind_flag << 31 | kind << 24 |
vlen; a size-or-type word), then a fixed number of extra words, then `vlen` items of a
fixed size (include/uapi/linux/btf.h). `LAYOUT[kind]` says, for the third word, each extra
word and each word of an item, its field name and its role: a type id, a string offset, a
size, plain data, or a word that must be zero; and what vlen and kind_flag mean. (Linux 7.x
BTF may carry the first two facts itself, as a kind layout section of `struct btf_layout
{info_sz, elem_sz, flags}`: header.py; for the kinds below they are 4 * fixed_words and
4 * item_words.)

Everything that needs to know where a record's ids and strings are derives from this table:
the record size (`record_words`, used by every record scan), libbpf's field-iterator slots
(`reconcile/wire.id_slots`/`str_slots`), relocation's lane masks (`reconcile/lanes.
slot_masks`), the validator's vlen/kind_flag rules and word columns (`btf/validate/`) and
the decoded types' `ref_ids`/`with_refs` (`btf/types.py`). Hand-written record walks use the
named positions below (MEMBER_TYPE, ARRAY_NELEMS, ...); the codecs that build or print whole
records (types.decode/encode, dump.py) spell the words in wire order.
"""

from __future__ import annotations

from .kinds import NR_KINDS, Kind

# Roles of a word.
ID = "type id"
STR = "string offset"
SIZE = "size in bytes"
DATA = "data"
ZERO = "must be zero"
UNUSED = "unused"

_HEADER = (("name_off", STR), ("info", DATA))


class KindLayout:
    """One kind's record layout. A plain class, not a dataclass: btf.py imports this module
    on every start-up, and `dataclasses` alone costs ~4 ms to import."""

    __slots__ = ("fixed", "item", "items", "kflag", "kind", "vlen", "word2")

    def __init__(self, kind: Kind, word2: tuple[str, str],
                 fixed: tuple[tuple[str, str], ...] = (), item: tuple[tuple[str, str], ...] = (),
                 *, items: str = "", vlen: str = "", kflag: str = "") -> None:
        self.kind = kind
        self.word2 = word2  # (field, role) of the size/type word
        self.fixed = fixed  # the extra words after the 12-byte header
        self.item = item  # the words of one vlen item
        self.items = items  # what the vlen items are called in types.py ("members", ...)
        self.vlen = vlen  # what vlen means ("" = must be 0)
        self.kflag = kflag  # what kind_flag means ("" = must be 0)

    def __repr__(self) -> str:
        return f"KindLayout({self.kind.name}, {self.word2}, {self.fixed}, {self.item})"

    @property
    def fixed_words(self) -> int:
        """Words after the 12-byte header, before the first item."""
        return len(self.fixed)

    @property
    def item_words(self) -> int:
        return len(self.item)

    @property
    def first_item(self) -> int:
        """Record-relative word index of the first item."""
        return 3 + len(self.fixed)

    @property
    def words(self) -> tuple[tuple[str, str], ...]:
        """(field, role) of the words before the items, from word 0."""
        return (*_HEADER, self.word2, *self.fixed)

    def word(self, name: str) -> int:
        """Record-relative word index of fixed field `name`."""
        return next(i for i, (f, _) in enumerate(self.words) if f == name)

    def item_word(self, name: str) -> int:
        """Item-relative word index of item field `name`."""
        return next(i for i, (f, _) in enumerate(self.item) if f == name)

    def _where(self, role: str) -> tuple[int, ...]:
        return tuple(i for i, (_, r) in enumerate(self.words) if r == role)

    def _item_where(self, role: str) -> int | None:
        return next((i for i, (_, r) in enumerate(self.item) if r == role), None)

    @property
    def ids(self) -> tuple[int, ...]:
        """Record-relative word indexes of the type ids before the items."""
        return self._where(ID)

    @property
    def strs(self) -> tuple[int, ...]:
        return self._where(STR)

    @property
    def item_id(self) -> int | None:
        """Item-relative index of an item's type id (an item holds at most one)."""
        return self._item_where(ID)

    @property
    def item_str(self) -> int | None:
        return self._item_where(STR)

    @property
    def iter_ids(self) -> tuple[int, ...]:
        """The fixed id slots libbpf's btf_field_iter (src/btf_iter.c) visits. It lists FWD
        with the one-id kinds, so it treats a FWD's unused size word as a type id; relocation
        and distillation keep that quirk so that their output matches libbpf's."""
        return (2,) if self.kind == Kind.FWD else self.ids

    def id_fields(self) -> tuple[str, ...]:
        """Field names of the type ids before the items (types.py's attribute names)."""
        return tuple(self.words[i][0] for i in self.ids)


_TYPE = ("type", ID)
_SIZE = ("size", SIZE)
_MEMBER = (("name_off", STR), ("type", ID), ("offset", DATA))
_MEMBERS = "members: name, type, bit offset (with kind_flag: bitfield_size << 24 | offset)"
_KFLAG_ATTR = "the tag is an __attribute__ (kernel 6.14+), not a btf_decl_tag/btf_type_tag"

LAYOUT: dict[Kind, KindLayout] = {lay.kind: lay for lay in (
    KindLayout(Kind.INT, _SIZE, (("int_data", DATA),)),  # encoding << 24 | offset << 16 | bits
    KindLayout(Kind.PTR, _TYPE),
    KindLayout(Kind.ARRAY, ("size", ZERO),
               (("type", ID), ("index_type", ID), ("nelems", DATA))),
    KindLayout(Kind.STRUCT, _SIZE, item=_MEMBER, items="members", vlen=_MEMBERS,
               kflag="member offsets carry a bitfield size"),
    KindLayout(Kind.UNION, _SIZE, item=_MEMBER, items="members", vlen=_MEMBERS,
               kflag="member offsets carry a bitfield size"),
    KindLayout(Kind.ENUM, _SIZE, item=(("name_off", STR), ("val", DATA)), items="values",
               vlen="enumerators: name, u32 value", kflag="the values are signed"),
    KindLayout(Kind.FWD, ("size_word", UNUSED), kflag="a union (else a struct)"),
    KindLayout(Kind.TYPEDEF, _TYPE),
    KindLayout(Kind.VOLATILE, _TYPE),
    KindLayout(Kind.CONST, _TYPE),
    KindLayout(Kind.RESTRICT, _TYPE),
    KindLayout(Kind.FUNC, _TYPE, vlen="linkage: static 0, global 1, extern 2"),
    KindLayout(Kind.FUNC_PROTO, ("ret_type", ID), item=(("name_off", STR), ("type", ID)),
               items="params", vlen="parameters: name, type (void last: varargs)"),
    KindLayout(Kind.VAR, _TYPE, (("linkage", DATA),)),
    KindLayout(Kind.DATASEC, _SIZE, item=(("type", ID), ("offset", DATA), ("size", DATA)),
               items="secinfos", vlen="variables: VAR id, offset, size"),
    KindLayout(Kind.FLOAT, _SIZE),
    KindLayout(Kind.DECL_TAG, _TYPE, (("component_idx", DATA),), kflag=_KFLAG_ATTR),
    KindLayout(Kind.TYPE_TAG, _TYPE, kflag=_KFLAG_ATTR),
    KindLayout(Kind.ENUM64, _SIZE,
               item=(("name_off", STR), ("val_lo32", DATA), ("val_hi32", DATA)),
               items="values", vlen="enumerators: name, u64 value (low, high)",
               kflag="the values are signed"),
)}

# Indexed by kind number (0: UNKN, no record). The whole record-size rule of the format.
EXTRA_FIXED_WORDS = tuple(LAYOUT[Kind(k)].fixed_words if k else 0 for k in range(NR_KINDS))
EXTRA_VLEN_WORDS = tuple(LAYOUT[Kind(k)].item_words if k else 0 for k in range(NR_KINDS))

# Named word positions for code that walks records by hand (hot loops cannot afford a table
# lookup per word): a fixed word is at `o + X`, field F of item j at `o + ITEMS + WORDS * j + F`.
ITEMS = 3  # the first item: no kind has both fixed extra words and items
assert all(lay.first_item == ITEMS for lay in LAYOUT.values() if lay.item)
_M, _P, _D = LAYOUT[Kind.STRUCT], LAYOUT[Kind.FUNC_PROTO], LAYOUT[Kind.DATASEC]
MEMBER_WORDS = _M.item_words  # (UNION's are the same)
MEMBER_NAME, MEMBER_TYPE, MEMBER_OFFSET = (_M.item_word(f) for f in ("name_off", "type", "offset"))
PARAM_WORDS = _P.item_words
PARAM_NAME, PARAM_TYPE = _P.item_word("name_off"), _P.item_word("type")
SECINFO_WORDS = _D.item_words
SECINFO_TYPE, SECINFO_OFFSET, SECINFO_SIZE = (_D.item_word(f) for f in ("type", "offset", "size"))
ARRAY_SIZE, ARRAY_TYPE, ARRAY_INDEX, ARRAY_NELEMS = (
    LAYOUT[Kind.ARRAY].word(f) for f in ("size", "type", "index_type", "nelems"))
INT_DATA = LAYOUT[Kind.INT].word("int_data")  # encoding << 24 | bits_offset << 16 | nr_bits
VAR_LINKAGE = LAYOUT[Kind.VAR].word("linkage")
DECL_TAG_COMPONENT = LAYOUT[Kind.DECL_TAG].word("component_idx")

# Kinds whose vlen / kind_flag must be 0 (FUNC's vlen is its linkage).
VLEN_ZERO = frozenset(int(k) for k, lay in LAYOUT.items() if not lay.vlen)
NO_KFLAG = frozenset(int(k) for k, lay in LAYOUT.items() if not lay.kflag)


def record_words(info: int) -> int:
    """Size in u32 words of the record whose info word is `info`."""
    kind = (info >> 24) & 0x1F
    return 3 + EXTRA_FIXED_WORDS[kind] + EXTRA_VLEN_WORDS[kind] * (info & 0xFFFF)


__all__ = [
    "ARRAY_INDEX", "ARRAY_NELEMS", "ARRAY_SIZE", "ARRAY_TYPE", "DATA", "DECL_TAG_COMPONENT",
    "EXTRA_FIXED_WORDS", "EXTRA_VLEN_WORDS", "ID", "INT_DATA", "ITEMS", "LAYOUT", "MEMBER_NAME",
    "MEMBER_OFFSET", "MEMBER_TYPE", "MEMBER_WORDS", "NO_KFLAG", "PARAM_NAME", "PARAM_TYPE",
    "PARAM_WORDS", "SECINFO_OFFSET", "SECINFO_SIZE", "SECINFO_TYPE", "SECINFO_WORDS", "SIZE",
    "STR", "UNUSED", "VAR_LINKAGE", "VLEN_ZERO", "ZERO", "KindLayout", "record_words",
]
