"""One BTF record read one way: the fields of its info word, the kind families the engine
asks about, the byte order of the words, and the strings its name offsets point at.

`info` is `kind_flag << 31 | kind << 24 | vlen` (include/uapi/linux/btf.h: BTF_INFO_KIND,
BTF_INFO_VLEN, BTF_INFO_KFLAG). The kind families are libbpf's (btf.h: btf_is_composite,
btf_is_mod) and derive from the record layout table where the table says it (layout.py).

Loops that visit every record of a ~100k-type vmlinux (the record scans, the validator's
columns, the dump) pay for a Python call per record; they spell the bit operations inline
and say so. Everything else reads an info word through here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .kinds import (
    K_CONST,
    K_ENUM,
    K_ENUM64,
    K_FLOAT,
    K_FWD,
    K_INT,
    K_RESTRICT,
    K_TYPE_TAG,
    K_TYPEDEF,
    K_VOLATILE,
    LAYOUT_KINDS,
    NR_KINDS,
)
from .layout import LAYOUT, record_words

# The struct format prefix for words in this machine's order: what parsed type sections
# are kept in (array("I") is native), and what a BTF of the other order is byte-swapped to.
NATIVE = "<" if sys.byteorder == "little" else ">"


def kind_of(info: int) -> int:
    """BTF_INFO_KIND: the kind number (5 bits, so possibly past the last known kind)."""
    return (info >> 24) & 0x1F


def vlen_of(info: int) -> int:
    """BTF_INFO_VLEN: the item count (FUNC: its linkage)."""
    return info & 0xFFFF


def kflag_of(info: int) -> int:
    """BTF_INFO_KFLAG: 0 or 1."""
    return info >> 31


# STRUCT and UNION: the kinds whose items are members (btf_is_composite).
COMPOSITE_KINDS = frozenset(int(k) for k, lay in LAYOUT.items() if lay.items == "members")
# CONST, VOLATILE, RESTRICT, TYPE_TAG: a type id and nothing else that changes the type's
# layout (btf_is_mod).
MODIFIER_KINDS = frozenset({K_CONST, K_VOLATILE, K_RESTRICT, K_TYPE_TAG})
# What is looked through to reach the type underneath (libbpf's skip_mods_and_typedefs).
MODS_AND_TYPEDEF = MODIFIER_KINDS | {K_TYPEDEF}
# The kinds a distilled base may hold and relocation matches by name in the target
# (btf__distill_base keeps them; btf_relocate's candidate search looks them up).
MATCHABLE_KINDS = frozenset({K_INT, K_FLOAT, K_ENUM, K_ENUM64, K_FWD} | COMPOSITE_KINDS)


def is_composite(kind: int) -> bool:
    return kind in COMPOSITE_KINDS


def is_modifier(kind: int) -> bool:
    return kind in MODIFIER_KINDS


def cstr(strs: bytes, rel: int) -> bytes:
    """The NUL-terminated string at `rel` in a string section (to its end if unterminated)."""
    end = strs.find(b"\0", rel)
    return strs[rel:] if end < 0 else strs[rel:end]


class RecordScanError(ValueError):
    """Where `scan_records` stopped; the caller words the message. `what` is "kind" (record
    `index` at word `at` has kind number `kind`, unknown), "header" (its info word is past the
    end) or "short" (it needs the words up to `end`, past the end)."""

    def __init__(self, what: str, index: int, at: int, *, kind: int = 0, end: int = 0) -> None:
        super().__init__(what)
        self.what, self.index, self.at, self.kind, self.end = what, index, at, kind, end


def scan_records(w: Sequence[int]) -> tuple[list[int], list[int]]:
    """(the word offset of every record of a type section, the indexes of the records whose
    kind is in LAYOUT_KINDS). The one record scan: Btf's parse and reconcile/wire.py's
    record_offsets both call it; it is the floor of load time for a 126k-type vmlinux, so
    it stays this small."""
    n = len(w)
    offs: list[int] = []
    app = offs.append
    # Records of the kinds the name index covers eagerly are marked by a negative step, so
    # that the loop pays one comparison for it; the step is worked out once per info word.
    step_of: dict[int, int] = {}
    get = step_of.get
    layout: list[int] = []
    mark = layout.append
    i = 0
    try:
        while i < n:
            app(i)
            step = get(w[i + 1])
            if step is None:
                info = w[i + 1]
                kind = kind_of(info)
                if kind == 0 or kind >= NR_KINDS:
                    raise RecordScanError("kind", len(offs) - 1, i, kind=kind)
                step = record_words(info)
                if kind in LAYOUT_KINDS:
                    step = -step
                step_of[info] = step
            if step < 0:
                mark(len(offs) - 1)
                step = -step
            i += step
    except IndexError:  # w[i + 1] past the end: a record header cut short
        raise RecordScanError("header", len(offs) - 1, i) from None
    if i != n:
        raise RecordScanError("short", len(offs) - 1, offs[-1], end=i)
    return offs, layout


__all__ = [
    "COMPOSITE_KINDS", "MATCHABLE_KINDS", "MODIFIER_KINDS", "MODS_AND_TYPEDEF", "NATIVE",
    "RecordScanError", "cstr", "is_composite", "is_modifier", "kflag_of", "kind_of",
    "scan_records", "vlen_of",
]
