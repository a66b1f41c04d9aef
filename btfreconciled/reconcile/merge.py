"""Merged BTF: a target vmlinux and reconciled modules as ONE standalone BTF.

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
from ..btf.header import Header, parse_header
from ..btf.kinds import BTF_MAGIC, BTF_VERSION, HEADER_SIZE, MAX_NAME_OFFSET, MAX_TYPE
from ..btf.record import NATIVE
from ..errors import ErrorCode
from .lanes import slot_masks
from .wire import id_slots, str_slots


class MergeError(Exception):
    """A module's BTF cannot be merged onto this vmlinux; the message is one line, `code`
    (errors.py) which failure it is."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple:
        # keeps the code when a worker process hands the error over
        return (type(self), (str(self), self.code))


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
    if byte_order != NATIVE:
        words = array("I", words)
        words.byteswap()
    return memoryview(words).cast("B")


Split = bytes | Callable[[], bytes]  # a module's split BTF, or what reads it when needed


def write_merged(write: Callable[[Any], Any], vmlinux: Btf,
                 modules: Sequence[tuple[str, Split]],
                 between: Callable[[], None] | None = None,
                 place: Callable[[int, Any], Any] | None = None) -> MergedLayout:
    """Write vmlinux + `modules` (name, reconciled split BTF whose base is `vmlinux`) as one
    standalone BTF through `write` (a binary file's write).

    Streamed: the header comes from the modules' own headers, then each module's type
    section is renumbered and written before the next is parsed, so only one module's
    words are held at a time (all.btf of the 50 largest Debian modules is ~20 MB).
    With `place(offset, bytes)` (a positional write into the same file), each module's
    strings go straight to their final offset too and a module given as a callable is read
    twice (header, then contents) and never held: memory stays one module whatever the
    number of modules. Without it the strings are kept until the types are all out.
    A module that is not BTF raises MergeError before anything is written; one that turns
    out not to be split BTF on this vmlinux, or a merged BTF over the type-id limit, is
    found while writing: write through cache.atomic_output so nothing is left.
    `between` runs before each module (the daemon lets its event path go first there)."""
    if vmlinux.base is not None:
        raise MergeError(f"{vmlinux.source}: the base of a merged BTF must be a vmlinux BTF, "
                         "not split BTF", ErrorCode.MERGE_BASE_NOT_VMLINUX)
    nr_base, str_base = vmlinux.type_count, vmlinux.str_end
    heads = _module_headers(vmlinux, modules)
    vtypes = _wire_bytes(vmlinux.wire_words(), vmlinux.byte_order)
    type_len = len(vtypes) + sum(h.type_len for h in heads)
    str_len = str_base + sum(h.str_len for h in heads)
    if str_len - 1 > MAX_NAME_OFFSET:
        raise MergeError(f"merged BTF strings would end at {str_len} bytes (the limit is "
                         f"{MAX_NAME_OFFSET + 1})", ErrorCode.MERGE_TOO_MANY_STRINGS)
    write(struct.pack(vmlinux.byte_order + "HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, HEADER_SIZE,
                      0, type_len, type_len, str_len))
    write(vtypes)
    strings_at = HEADER_SIZE + type_len  # file offset of the string section
    del vtypes
    if place is not None:
        place(strings_at, vmlinux.strings)
    placed: list[MergedModule] = []
    strings: list[memoryview] = []
    next_id, next_str = nr_base, str_base
    for (name, split), h in zip(modules, heads, strict=True):
        if between is not None:
            between()
        count, mod_strings = _write_module(write, vmlinux, name, split, h, next_id, next_str)
        if place is not None:
            place(strings_at + next_str, mod_strings)
        else:
            strings.append(mod_strings)
        del mod_strings
        placed.append(MergedModule(name, next_id, count, next_str, h.str_len))
        next_id += count
        next_str += h.str_len
    if place is None:
        write(vmlinux.strings)
        for s in strings:
            write(s)
    return MergedLayout(nr_base, str_base, next_id, str_len, HEADER_SIZE + type_len + str_len,
                        tuple(placed))


def _module_headers(vmlinux: Btf, modules: Sequence[tuple[str, Split]]) -> list[Header]:
    """Every module's header, read before anything is written (a module that is not BTF
    fails the merge with nothing written)."""
    heads: list[Header] = []
    for name, split in modules:
        data = split() if callable(split) else split
        try:
            heads.append(parse_header(data, _header_error(name),
                                      base_order=vmlinux.byte_order))
        except BtfError as e:
            raise MergeError(f"{name}: not split BTF on {vmlinux.source}: {e}",
                             ErrorCode.MERGE_NOT_SPLIT) from None
        del data
    return heads


def _write_module(write: Callable[[Any], Any], vmlinux: Btf, name: str, split: Split,
                  h: Header, next_id: int, next_str: int) -> tuple[int, memoryview]:
    """Write one module's types renumbered to start at type `next_id` and string offset
    `next_str`; returns its type count and its string section (still to be written)."""
    nr_base, str_base = vmlinux.type_count, vmlinux.str_end
    data = split() if callable(split) else split
    try:
        if callable(split) and parse_header(data, _header_error(name)) != h:
            raise MergeError(f"{name}: its split BTF changed while the merged BTF was "
                             "written", ErrorCode.MERGE_CHANGED)
        mod = Btf.parse(data, base=vmlinux, source=name, validate=False)
    except BtfError as e:
        raise MergeError(f"{name}: not split BTF on {vmlinux.source}: {e}",
                         ErrorCode.MERGE_NOT_SPLIT) from None
    words, offs = mod.wire_records()
    count = len(offs)
    if next_id + count - 1 > MAX_TYPE:
        raise MergeError(f"merged BTF would have more than {MAX_TYPE} types (the limit) "
                         f"with {name}", ErrorCode.MERGE_TOO_MANY_TYPES)
    if next_id != nr_base or next_str != str_base:
        words = shift_references(words, offs, nr_base, next_id - nr_base, str_base,
                                 next_str - str_base)
    write(_wire_bytes(words, vmlinux.byte_order))
    at = h.hdr_len + h.str_off
    return count, memoryview(data)[at:at + h.str_len]


def _header_error(name: str) -> Callable[..., BtfError]:
    def err(msg: str, *, offset: int, code: ErrorCode) -> BtfError:
        return BtfError(msg, source=name, offset=offset, code=code)
    return err


def merged_bytes(vmlinux: Btf, modules: Sequence[tuple[str, Split]]) -> bytes:
    """write_merged() into memory (tests, small tools)."""
    out: list[bytes] = []
    write_merged(lambda b: out.append(bytes(b)), vmlinux, modules)
    return b"".join(out)
