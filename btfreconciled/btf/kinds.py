"""BTF kind numbers and the fixed layout facts of include/uapi/linux/btf.h."""

from __future__ import annotations

from enum import IntEnum

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
# struct btf_header: magic(u16) version(u8) flags(u8) hdr_len type_off type_len str_off str_len
HEADER_SIZE = 24
MAX_TYPE = 0x000FFFFF
MAX_NAME_OFFSET = 0x00FFFFFF
KSYM_NAME_LEN = 512  # the kernel's limit on a BTF name (KSYM_NAME_LEN)


class Kind(IntEnum):
    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


NR_KINDS = 20

# Words (u32) that follow the 12-byte common header: fixed part + per-vlen-item part.
# Indexed by kind number; this is the whole record-size rule of the format.
EXTRA_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
EXTRA_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# INT encoding bits (BTF_INT_ENCODING)
INT_SIGNED = 1 << 0
INT_CHAR = 1 << 1
INT_BOOL = 1 << 2

# FUNC linkage (kept in vlen) and VAR linkage
FUNC_STATIC, FUNC_GLOBAL, FUNC_EXTERN = 0, 1, 2
VAR_STATIC, VAR_GLOBAL_ALLOCATED, VAR_GLOBAL_EXTERN = 0, 1, 2


# Kinds that describe data layout by name: what reconciliation matches and the eager index holds.
LAYOUT_KINDS = frozenset(
    {Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.ENUM64, Kind.FWD, Kind.STRUCT, Kind.UNION, Kind.TYPEDEF}
)


def record_words(info: int) -> int:
    """Size in u32 words of the record whose info word is `info`."""
    kind = (info >> 24) & 0x1F
    return 3 + EXTRA_FIXED_WORDS[kind] + EXTRA_VLEN_WORDS[kind] * (info & 0xFFFF)
