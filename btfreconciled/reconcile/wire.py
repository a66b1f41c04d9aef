"""Record-level access to BTF type words: where each record starts, and which of its words
are type ids or string offsets.

The slot order is libbpf's `btf_field_iter` (src/btf_iter.c), which both `btf__relocate()` and
`btf__distill_base()` walk. Note that libbpf treats the size word of a FWD as a type id
(BTF_FIELD_ITER_IDS lists FWD with the plain reference kinds); we keep that quirk so that our
output matches libbpf's even for odd input.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..btf.kinds import NR_KINDS, Kind, record_words

K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC = 9, 10, 11, 12, 13, 14, 15
K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64 = 16, 17, 18, 19

# Kinds whose third word is a type id (libbpf BTF_FIELD_ITER_IDS: FWD included).
_ONE_ID = frozenset({K_FWD, K_CONST, K_VOLATILE, K_RESTRICT, K_PTR, K_TYPEDEF, K_FUNC, K_VAR,
                     K_DECL_TAG, K_TYPE_TAG})
# Kinds that chain to the next type when looking for an embedded composite.
CHAIN_KINDS = frozenset({K_CONST, K_RESTRICT, K_VOLATILE, K_TYPEDEF, K_TYPE_TAG})
COMPOSITE = frozenset({K_STRUCT, K_UNION})


class WireError(ValueError):
    """A record that cannot be walked (unknown kind, truncated)."""


def record_offsets(words: Sequence[int]) -> list[int]:
    """Word offset of every record of a type section."""
    n = len(words)
    offs: list[int] = []
    app = offs.append
    steps: dict[int, int] = {}
    get = steps.get
    i = 0
    while i < n:
        app(i)
        if i + 2 >= n:
            raise WireError(f"type record at word {i} truncated")
        info = words[i + 1]
        step = get(info)
        if step is None:
            kind = (info >> 24) & 0x1F
            if kind == 0 or kind >= NR_KINDS:
                raise WireError(f"unknown BTF kind {kind} in record at word {i}")
            step = record_words(info)
            steps[info] = step
        i += step
    if i != n:
        raise WireError("last type record truncated")
    return offs


def id_slots(words: Sequence[int], o: int) -> list[int]:
    """Word positions of the type ids of the record at `o`, in libbpf iteration order."""
    info = words[o + 1]
    kind = (info >> 24) & 0x1F
    if kind in _ONE_ID:
        return [o + 2]
    vlen = info & 0xFFFF
    if kind in (K_STRUCT, K_UNION):
        return list(range(o + 4, o + 4 + 3 * vlen, 3))
    if kind == K_ARRAY:
        return [o + 3, o + 4]
    if kind == K_FUNC_PROTO:
        return [o + 2, *range(o + 4, o + 4 + 2 * vlen, 2)]
    if kind == K_DATASEC:
        return list(range(o + 3, o + 3 + 3 * vlen, 3))
    return []


def str_slots(words: Sequence[int], o: int) -> list[int]:
    """Word positions of the string offsets of the record at `o` (libbpf order)."""
    info = words[o + 1]
    kind = (info >> 24) & 0x1F
    vlen = info & 0xFFFF
    if kind in (K_STRUCT, K_UNION):
        return [o, *range(o + 3, o + 3 + 3 * vlen, 3)]
    if kind in (K_ENUM, K_FUNC_PROTO):
        return [o, *range(o + 3, o + 3 + 2 * vlen, 2)]
    if kind == K_ENUM64:
        return [o, *range(o + 3, o + 3 + 3 * vlen, 3)]
    return [o]


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name.lower()
    except ValueError:
        return f"kind{kind}"


def cstr(strs: bytes, rel: int) -> bytes:
    """The NUL-terminated string at `rel` in a string section."""
    end = strs.find(b"\0", rel)
    return strs[rel:] if end < 0 else strs[rel:end]


