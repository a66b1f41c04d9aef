"""The BTF header and where its sections lie, checked as the kernel's btf_parse_hdr /
btf_check_sec_info (Linux 7.x) and libbpf's btf_parse_hdr (1.7 and 1.8) both accept them.

struct btf_header grew from 24 to 32 bytes in Linux 7.x (libbpf 1.8): `layout_off` and
`layout_len` place an optional kind layout section, one `struct btf_layout { u8 info_sz;
u8 elem_sz; u16 flags; }` per kind the encoder knew, that lets a parser step over records of
kinds it does not know. Kbuild 7.2 writes the 32-byte header with an empty layout section
(resolve_btfids, built with the kernel's libbpf); pahole 1.32 writes the 24-byte one.

What is accepted is what both the 7.x kernel and libbpf read:
- header bytes past the 32 the 7.x kernel knows must be zero (the kernel: E2BIG);
- layout_off/layout_len are read only when hdr_len >= 32, and a layout section with
  layout_len == 0 is no section at all (its layout_off is ignored, as both do);
- the sections follow the header without gaps: types, then the layout section if any,
  then strings up to the end of the data. The kernel allows the sections in any order
  without gaps, libbpf wants types before layout before strings; together that is this
  one order (the type section must start at 0: it is 4-byte aligned, the strings are not).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ErrorCode
from .errors import BtfError
from .kinds import BTF_MAGIC, BTF_VERSION, HEADER_SIZE

HEADER_SIZE_LAYOUT = 32  # struct btf_header with layout_off, layout_len (Linux 7.x)
LAYOUT_ENTRY_SIZE = 4  # struct btf_layout

ErrFn = Callable[..., BtfError]  # (msg, *, offset, code) -> BtfError naming the source


@dataclass(frozen=True)
class Header:
    order: str  # struct byte order: "<" or ">"
    flags: int
    hdr_len: int
    type_len: int
    str_off: int
    str_len: int
    layout_off: int
    layout_len: int
    extra: bytes  # header bytes past the first 24 (layout_off/layout_len, zero tail)


def parse_header(data: bytes, err: ErrFn, *, base_order: str | None = None) -> Header:
    """Decode and check the header of `data`; `err` builds the error to raise.

    `base_order` is the base BTF's byte order for a split BTF (they must agree)."""
    order = _byte_order(data, err, base_order)
    _, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "HBBIIIII", data, 0)
    _check_fixed_fields(data, err, version, flags, hdr_len)
    layout_off = layout_len = 0
    if hdr_len >= HEADER_SIZE_LAYOUT:
        layout_off, layout_len = struct.unpack_from(order + "II", data, HEADER_SIZE)
    _check_sections(len(data), err, hdr_len, type_off, type_len, layout_off, layout_len,
                    str_off, str_len)
    return Header(order, flags, hdr_len, type_len, str_off, str_len, layout_off, layout_len,
                  bytes(data[HEADER_SIZE:hdr_len]))


def _byte_order(data: bytes, err: ErrFn, base_order: str | None) -> str:
    """The struct byte order the magic says, once the fixed 24 bytes are there."""
    size = len(data)
    if size < 4:
        raise err(f"too short for a BTF header ({size} bytes)", offset=0,
                  code=ErrorCode.BTF_TRUNCATED)
    (magic_le,) = struct.unpack_from("<H", data, 0)
    if magic_le == BTF_MAGIC:
        order = "<"
    elif magic_le == 0x9FEB:
        order = ">"
    else:
        raise err(f"bad BTF magic {magic_le:#06x} (expected 0xeb9f)", offset=0,
                  code=ErrorCode.BTF_BAD_MAGIC)
    if base_order is not None and order != base_order:
        raise err("split BTF byte order differs from its base", offset=0,
                  code=ErrorCode.BTF_BAD_HEADER)
    if size < HEADER_SIZE:
        raise err(f"truncated BTF header ({size} of {HEADER_SIZE} bytes)", offset=0,
                  code=ErrorCode.BTF_TRUNCATED)
    return order


def _check_fixed_fields(data: bytes, err: ErrFn, version: int, flags: int,
                        hdr_len: int) -> None:
    """version, flags and hdr_len, and a zero tail past the 32 bytes Linux 7.x knows."""
    if version != BTF_VERSION:
        raise err(f"unsupported BTF version {version}", offset=2, code=ErrorCode.BTF_BAD_HEADER)
    if flags:
        raise err(f"unsupported BTF header flags {flags:#x}", offset=3,
                  code=ErrorCode.BTF_BAD_HEADER)
    if hdr_len < HEADER_SIZE:
        raise err(f"hdr_len {hdr_len} is shorter than the 24-byte header", offset=4,
                  code=ErrorCode.BTF_BAD_HEADER)
    if hdr_len > len(data):
        raise err(f"hdr_len {hdr_len} runs past the end of the data ({len(data)})", offset=4,
                  code=ErrorCode.BTF_TRUNCATED)
    tail = data[HEADER_SIZE_LAYOUT:hdr_len]
    if tail.strip(b"\0"):
        at = HEADER_SIZE_LAYOUT + next(i for i, b in enumerate(tail) if b)
        raise err(f"unsupported non-zero byte in the BTF header at {at} (past the 32 bytes "
                  "Linux 7.x knows)", offset=at, code=ErrorCode.BTF_BAD_HEADER)


def _check_sections(size: int, err: ErrFn, hdr_len: int, type_off: int, type_len: int,
                    layout_off: int, layout_len: int, str_off: int, str_len: int) -> None:
    """Types at 0, then the layout section if any, then strings up to the end of the data."""
    if type_off % 4:
        raise err(f"type section offset {type_off} is not 4-byte aligned", offset=8,
                  code=ErrorCode.BTF_BAD_HEADER)
    if type_len % 4:
        raise err(f"type section length {type_len} is not a multiple of 4", offset=12,
                  code=ErrorCode.BTF_BAD_HEADER)
    if type_off != 0:
        raise err(f"type section starts at {type_off}, not right after the header", offset=8,
                  code=ErrorCode.BTF_BAD_HEADER)
    strings_at = type_off + type_len
    if layout_len:
        if layout_off % 4:
            raise err(f"layout section offset {layout_off} is not 4-byte aligned", offset=24,
                      code=ErrorCode.BTF_BAD_HEADER)
        if layout_len % LAYOUT_ENTRY_SIZE:
            raise err(f"layout section length {layout_len} is not a multiple of "
                      f"{LAYOUT_ENTRY_SIZE} (struct btf_layout)", offset=28,
                      code=ErrorCode.BTF_BAD_HEADER)
        if layout_off != strings_at:
            raise err(f"layout section at {layout_off} does not follow the type section "
                      f"({type_off}+{type_len})", offset=24, code=ErrorCode.BTF_BAD_HEADER)
        strings_at = layout_off + layout_len
        if str_off != strings_at:
            raise err(f"string section at {str_off} does not follow the layout section "
                      f"({layout_off}+{layout_len})", offset=16, code=ErrorCode.BTF_BAD_HEADER)
    elif str_off != strings_at:
        raise err(f"string section at {str_off} does not follow the type section "
                  f"({type_off}+{type_len})", offset=16, code=ErrorCode.BTF_BAD_HEADER)
    end = hdr_len + str_off + str_len
    if end != size:
        # a header that promises more than the data holds: the data was cut short
        end_code = ErrorCode.BTF_TRUNCATED if end > size else ErrorCode.BTF_BAD_HEADER
        raise err(f"sections end at {end} but the data is {size} bytes", offset=20,
                  code=end_code)


def pack_header(order: str, flags: int, extra: bytes, type_len: int, layout_len: int,
                str_len: int) -> bytes:
    """The header of a BTF laid out as header + `extra`, types, layout section, strings.

    With a layout section, `extra` (at least 8 bytes then) gets its layout_off/layout_len
    rewritten to where the section now lies; without one it is written as it came, so that
    a parsed, unmodified BTF serialises to the same bytes."""
    if layout_len:
        if len(extra) < HEADER_SIZE_LAYOUT - HEADER_SIZE:
            raise ValueError("a layout section needs the 32-byte header")
        extra = struct.pack(order + "II", type_len, layout_len) + extra[8:]
    return struct.pack(order + "HBBIIIII", BTF_MAGIC, BTF_VERSION, flags,
                       HEADER_SIZE + len(extra), 0, type_len, type_len + layout_len,
                       str_len) + extra
