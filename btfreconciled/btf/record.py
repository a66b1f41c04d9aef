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
)
from .layout import LAYOUT

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


__all__ = [
    "COMPOSITE_KINDS", "MATCHABLE_KINDS", "MODIFIER_KINDS", "MODS_AND_TYPEDEF", "NATIVE",
    "cstr", "is_composite", "is_modifier", "kflag_of", "kind_of", "vlen_of",
]
