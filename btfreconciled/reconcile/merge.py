"""Merged BTF (SPEC §8): a target vmlinux and reconciled modules as ONE standalone BTF.

Loaders that take a single BTF file -- libbpf's ``btf_custom_path``, cilium/ebpf's
``KernelTypes``, bpftrace's ``BPFTRACE_BTF`` -- cannot read split BTF. A module's BTF
reconciled onto a vmlinux continues that vmlinux's type ids and string offsets, so vmlinux's
type section followed by the module's, and vmlinux's strings followed by the module's, are
already a valid standalone BTF in which the module keeps exactly its split ids and offsets.
Each further module's own ids and string offsets move past the modules before it; its
references into vmlinux stay as they are.

vmlinux is never copied: its sections are written straight from the parsed index the daemon
already holds; only the (small) module parts are held in memory while a file is written.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..btf.kinds import BTF_MAGIC, BTF_VERSION, HEADER_SIZE, MAX_NAME_OFFSET, MAX_TYPE
from .lanes import slot_masks
from .wire import id_slots, str_slots

_NATIVE = "<" if sys.byteorder == "little" else ">"


class MergeError(Exception):
    """A module's BTF cannot be merged onto this vmlinux; the message is one line."""


@dataclass(frozen=True)
class MergedModule:
    """Where one module's part sits in a merged BTF."""

    name: str
    first_id: int  # its first type id in the merged file
    type_count: int
    str_off: int  # its first string offset in the merged file
    str_len: int


@dataclass(frozen=True)
class MergedLayout:
    """What a merged BTF holds: vmlinux's types (ids 1..vmlinux_types-1), then each module."""

    vmlinux_types: int  # vmlinux's type count, void included
    vmlinux_str_len: int
    type_count: int  # the merged file's, void included
    str_len: int
    size: int  # bytes written
    modules: tuple[MergedModule, ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["modules"] = [asdict(m) for m in self.modules]
        return d


def shift_references(words: array, offs: list[int], nr_base: int, id_shift: int,
                     str_base: int, str_shift: int) -> array:
    """A copy of a split type section (host-order words) whose own type ids (>= nr_base)
    move by `id_shift` and own string offsets (>= str_base) by `str_shift`; references into
    the base stay. Lane-wise on one big integer (see lanes._LaneIndex): every slot value
    is < 2**31 and each shift < 2**31, so no lane carries into the next."""
    if (sys.byteorder == "little" and len(offs) > 64 and id_shift < 1 << 31
            and str_shift < 1 << 31):
        mid_b, mstr_b = slot_masks(words, offs)
        n = 4 * len(words)
        if len(mid_b) == n:
            w = int.from_bytes(words.tobytes(), "little")
            a1 = int.from_bytes(mid_b, "little") >> 31
            b1 = int.from_bytes(mstr_b, "little") >> 31
            if not (w >> 31) & (a1 | b1):
                ge_id = ((w + a1 * (0x80000000 - nr_base)) >> 31) & a1
                ge_str = ((w + b1 * (0x80000000 - str_base)) >> 31) & b1
                out = array("I")
                out.frombytes((w + ge_id * id_shift + ge_str * str_shift).to_bytes(n, "little"))
                return out
    out = array("I", words)
    for o in offs:
        for pos in id_slots(out, o):
            if out[pos] >= nr_base:
                out[pos] += id_shift
        for pos in str_slots(out, o):
            if out[pos] >= str_base:
                out[pos] += str_shift
    return out


def _wire_bytes(words: array, byte_order: str) -> memoryview:
    if byte_order != _NATIVE:
        words = array("I", words)
        words.byteswap()
    return memoryview(words).cast("B")


def write_merged(write: Callable[[Any], Any], vmlinux: Btf,
                 modules: Sequence[tuple[str, bytes]]) -> MergedLayout:
    """Write vmlinux + `modules` (name, reconciled split BTF whose base is `vmlinux`) as one
    standalone BTF through `write` (a binary file's write). Raises MergeError before
    anything is written when a module's BTF does not fit this vmlinux."""
    if vmlinux.base is not None:
        raise MergeError(f"{vmlinux.source}: the base of a merged BTF must be a vmlinux BTF, "
                         "not split BTF")
    nr_base = vmlinux.type_count
    str_base = vmlinux.str_end
    parts: list[tuple[memoryview, bytes]] = []
    placed: list[MergedModule] = []
    next_id, next_str = nr_base, str_base
    for name, data in modules:
        try:
            split = Btf.parse(data, base=vmlinux, source=name, validate=False)
        except BtfError as e:
            raise MergeError(f"{name}: not split BTF on {vmlinux.source}: {e}") from None
        words, offs = split.wire_records()
        count, slen = len(offs), len(split.strings)
        if next_id != nr_base or next_str != str_base:
            words = shift_references(words, offs, nr_base, next_id - nr_base, str_base,
                                     next_str - str_base)
        placed.append(MergedModule(name, next_id, count, next_str, slen))
        parts.append((_wire_bytes(words, vmlinux.byte_order), split.strings))
        next_id += count
        next_str += slen
    if next_id - 1 > MAX_TYPE:
        raise MergeError(f"merged BTF would have {next_id - 1} types (the limit is {MAX_TYPE})")
    if next_str - 1 > MAX_NAME_OFFSET:
        raise MergeError(f"merged BTF strings would end at {next_str} bytes (the limit is "
                         f"{MAX_NAME_OFFSET + 1})")
    vtypes = _wire_bytes(vmlinux.wire_words(), vmlinux.byte_order)
    type_len = len(vtypes) + sum(len(t) for t, _ in parts)
    str_len = next_str
    write(struct.pack(vmlinux.byte_order + "HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, HEADER_SIZE,
                      0, type_len, type_len, str_len))
    write(vtypes)
    for t, _ in parts:
        write(t)
    write(vmlinux.strings)
    for _, s in parts:
        write(s)
    return MergedLayout(nr_base, str_base, next_id, str_len, HEADER_SIZE + type_len + str_len,
                        tuple(placed))


def merged_bytes(vmlinux: Btf, modules: Sequence[tuple[str, bytes]]) -> bytes:
    """write_merged() into memory (tests, small tools)."""
    out: list[bytes] = []
    write_merged(lambda b: out.append(bytes(b)), vmlinux, modules)
    return b"".join(out)
