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

# Kind's values as plain ints, for hot loops and frozensets: in CPython 3.11 `k == Kind.STRUCT`
# costs 3x `k == K_STRUCT` (an enum attribute lookup per test). The same numbers, not a second
# numbering: tests/test_btf.py checks K_<name> == Kind.<name> for every kind.
(K_UNKN, K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF, K_VOLATILE,
 K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC, K_FLOAT, K_DECL_TAG, K_TYPE_TAG,
 K_ENUM64) = (k.value for k in Kind)

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

