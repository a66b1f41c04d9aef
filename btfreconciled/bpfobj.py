"""A compiled BPF object's BTF and CO-RE relocation records (`.BTF` and `.BTF.ext`).

clang writes, for every instruction whose immediate or offset depends on a kernel type's
layout, a `struct bpf_core_relo` into `.BTF.ext`: the instruction's byte offset in its ELF
section, the local (object's own) BTF type id of the root type, the access string ("0:1:2",
in the object's `.BTF` strings) and the relocation kind. This is what libbpf reads at open
and what `bpftool gen min_core_btf` walks. Only what those two need is read here: the
`.BTF.ext` header, and the CO-RE section (func/line info are skipped).
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from .btf.btf import Btf
from .btf.errors import BtfError
from .elf import (
    MAX_FILE_SIZE,
    ElfError,
    _bytes_reader,
    _open_elf,
    _plain_sections,
    _read_capped,
    _read_named_sections,
)
from .inputs import open_regular

BTF_EXT_SECTION = ".BTF.ext"
_BTF_EXT_MAGIC = 0xEB9F
_ELF_MAGIC = b"\x7fELF"
# struct btf_ext_header up to core_relo_len; older objects stop after line_info_len
_EXT_HDR_MIN = 24
_EXT_HDR_CORE = 32
_CORE_RELO_MIN_SIZE = 16  # insn_off, type_id, access_str_off, kind


class RelocKind(IntEnum):
    """enum bpf_core_relo_kind (include/uapi/linux/bpf.h)."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


FIELD_KINDS = frozenset(range(0, 6))
TYPE_KINDS = frozenset({6, 7, 8, 9, 12})
ENUMVAL_KINDS = frozenset({10, 11})


class CoreRelo(NamedTuple):
    """One `struct bpf_core_relo`, with the section (program) it belongs to."""

    section: str
    index: int  # its position among the section's records (libbpf's relo #N)
    insn_off: int
    type_id: int
    access_str_off: int
    kind: int


class BpfObject(NamedTuple):
    path: Path
    btf: Btf
    relos: tuple[CoreRelo, ...]


def read_bpf_object(path: str | os.PathLike[str]) -> BpfObject:
    """The `.BTF` and CO-RE records of a BPF ELF object. ElfError (one line, naming the
    file and where) for anything that is not a readable ELF with `.BTF` and `.BTF.ext`."""
    p = Path(path)
    fd, size = open_regular(p)
    with open(fd, "rb") as f:
        data = _read_capped(p, f, MAX_FILE_SIZE)
    if not data.startswith(_ELF_MAGIC):
        raise ElfError(p, f"not an ELF file (magic {data[:4].hex()}): give a compiled BPF "
                          "object (clang -target bpf -g)")
    wanted = {".BTF", BTF_EXT_SECTION}
    found = _plain_sections(_bytes_reader(data), len(data), wanted, MAX_FILE_SIZE)
    if found is None:
        import io

        found = _read_named_sections(p, _open_elf(p, io.BytesIO(data), len(data)),
                                     len(data), wanted, MAX_FILE_SIZE)
    del data
    btf_bytes = found.get(".BTF")
    if btf_bytes is None:
        raise ElfError(p, "no .BTF section: not a BPF object built with BTF (clang -g)")
    ext = found.get(BTF_EXT_SECTION)
    if ext is None:
        raise ElfError(p, f"no {BTF_EXT_SECTION} section: no CO-RE relocations recorded "
                          "(build the object with clang -g -target bpf)")
    try:
        # An object's BTF is the compiler's, not the kernel's: DATASEC sizes and VAR
        # offsets are only fixed up by libbpf at open, so the kernel verifier's checks do
        # not apply; the structural ones (bounds, kinds) still run.
        btf = Btf.parse(btf_bytes, source=f"{p}:.BTF", validate=False)
    except BtfError as e:
        raise ElfError(p, str(e)) from None
    relos = parse_core_relos(p, ext, btf)
    return BpfObject(p, btf, relos)


def parse_core_relos(path: Path, ext: bytes, btf: Btf) -> tuple[CoreRelo, ...]:
    """The CO-RE records of a `.BTF.ext` section (libbpf's btf_ext__new checks)."""
    where = f"{BTF_EXT_SECTION}"
    if len(ext) < _EXT_HDR_MIN:
        raise ElfError(path, f"{where}: {len(ext)} bytes, too short for its header")
    order = "<" if struct.unpack_from("<H", ext, 0)[0] == _BTF_EXT_MAGIC else ">"
    magic, version, _flags, hdr_len = struct.unpack_from(order + "HBBI", ext, 0)
    if magic != _BTF_EXT_MAGIC:
        raise ElfError(path, f"{where}: bad magic {magic:#06x}")
    if version != 1:
        raise ElfError(path, f"{where}: unsupported version {version}")
    if hdr_len < _EXT_HDR_MIN or hdr_len > len(ext):
        raise ElfError(path, f"{where}: header length {hdr_len} out of range")
    if hdr_len < _EXT_HDR_CORE:
        return ()  # written before CO-RE records existed: nothing to relocate
    core_off, core_len = struct.unpack_from(order + "II", ext, 24)
    if core_len == 0:
        return ()
    start = hdr_len + core_off
    end = start + core_len
    if end > len(ext) or core_len < 4:
        raise ElfError(path, f"{where}: CO-RE relocations at {start}..{end} past the end of "
                             f"the section ({len(ext)} bytes)")
    (rec_size,) = struct.unpack_from(order + "I", ext, start)
    if rec_size < _CORE_RELO_MIN_SIZE or rec_size % 4:
        raise ElfError(path, f"{where}: CO-RE record size {rec_size} is invalid")
    relos: list[CoreRelo] = []
    pos = start + 4
    while pos < end:
        if pos + 8 > end:
            raise ElfError(path, f"{where}: CO-RE section header at offset {pos} truncated")
        sec_name_off, count = struct.unpack_from(order + "II", ext, pos)
        pos += 8
        if count == 0:
            raise ElfError(path, f"{where}: CO-RE section at offset {pos - 8} has no records")
        if pos + count * rec_size > end:
            raise ElfError(path, f"{where}: {count} CO-RE records at offset {pos} run past "
                                 f"the end of the section")
        sec_name = _string(path, btf, sec_name_off, f"{where}: section name")
        for i in range(count):
            insn_off, type_id, access_off, kind = struct.unpack_from(order + "IIII", ext, pos)
            pos += rec_size
            relos.append(CoreRelo(sec_name, i, insn_off, type_id, access_off, kind))
    return tuple(relos)


def _string(path: Path, btf: Btf, off: int, what: str) -> str:
    try:
        return btf.name_of(off)
    except BtfError:
        raise ElfError(path, f"{what}: string offset {off} is outside .BTF's strings") \
            from None
