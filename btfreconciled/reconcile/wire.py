"""Record-level access to BTF type words: where each record starts, and which of its words
are type ids or string offsets.

The slot order is libbpf's `btf_field_iter` (src/btf_iter.c), which both `btf__relocate()` and
`btf__distill_base()` walk. Note that libbpf treats the size word of a FWD as a type id
(BTF_FIELD_ITER_IDS lists FWD with the plain reference kinds); we keep that quirk so that our
output matches libbpf's even for odd input.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..btf.kinds import Kind
from ..btf.layout import LAYOUT
from ..btf.record import RecordScanError, scan_records

# By kind number, from the layout table: (the one fixed slot or None, all fixed slots, first
# item slot or None, item stride); ids in libbpf's btf_field_iter order (FWD's size word
# included), strings name first. Kinds past the table (5 bits: up to 31) have a name only.
# Per-call cost matters (distill and merge walk every record): hence the one-slot shortcut.
_SlotSpec = tuple["int | None", tuple[int, ...], "int | None", int]
_ID_SPEC: list[_SlotSpec] = [(None, (), None, 0)] * 32
_STR_SPEC: list[_SlotSpec] = [(0, (0,), None, 0)] * 32
for _k, _lay in LAYOUT.items():
    for _spec, _fixed, _at in ((_ID_SPEC, _lay.iter_ids, _lay.item_id),
                               (_STR_SPEC, _lay.strs, _lay.item_str)):
        _spec[_k] = (_fixed[0] if len(_fixed) == 1 else None, _fixed,
                     None if _at is None else _lay.first_item + _at, _lay.item_words)


class WireError(ValueError):
    """A record that cannot be walked (unknown kind, truncated)."""


def record_offsets(words: Sequence[int]) -> list[int]:
    """Word offset of every record of a type section."""
    try:
        return scan_records(words)[0]
    except RecordScanError as e:
        if len(words) - e.at < 3:  # the 12-byte header itself is cut short
            raise WireError(f"type record at word {e.at} truncated") from None
        if e.what == "kind":
            raise WireError(f"unknown BTF kind {e.kind} in record at word {e.at}") from None
        raise WireError("last type record truncated") from None


def id_slots(words: Sequence[int], o: int) -> list[int]:
    """Word positions of the type ids of the record at `o`, in libbpf iteration order."""
    return _slots(_ID_SPEC, words, o)


def str_slots(words: Sequence[int], o: int) -> list[int]:
    """Word positions of the string offsets of the record at `o` (libbpf order)."""
    return _slots(_STR_SPEC, words, o)


def _slots(spec: list[_SlotSpec], words: Sequence[int], o: int) -> list[int]:
    info = words[o + 1]
    # inline info-word fields (record.kind_of & co.): called per record by distill and merge
    one, fixed, at, stride = spec[(info >> 24) & 0x1F]
    vlen = info & 0xFFFF
    if at is None or not vlen:
        return [o + one] if one is not None else [o + i for i in fixed]
    p = o + at
    if one is not None:
        return [o + one, *range(p, p + stride * vlen, stride)]
    return [*(o + i for i in fixed), *range(p, p + stride * vlen, stride)]


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name.lower()
    except ValueError:
        return f"kind{kind}"


