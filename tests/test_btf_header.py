"""The 32-byte BTF header of Linux 7.x and its kind layout section (btf/header.py).

Kbuild 7.2 writes module BTF with the 32-byte header and an empty layout section; libbpf 1.8
can write a layout section between types and strings. Both parse, dump like the 24-byte form,
and serialise back to the same bytes; reconciled output keeps the layout section. The
malformed layouts are in malformed.py's corpus (test_validate.py checks them against libbpf
and the running kernel).
"""

from __future__ import annotations

import struct
from array import array

import malformed
import pytest

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.dump import dump_raw
from btfreconciled.btf.errors import BtfError
from btfreconciled.btf.header import pack_header
from btfreconciled.btf.types import Int, Ptr
from btfreconciled.errors import ErrorCode
from btfreconciled.reconcile.relocate import serialize, serialize_parts

GOOD = malformed.valid_blob()
LAYOUT = malformed.LIBBPF_LAYOUTS


def _fields(data: bytes) -> tuple[int, ...]:
    """hdr_len type_off type_len str_off str_len layout_off layout_len of a 32-byte header."""
    return struct.unpack_from("<IIIIIII", data, 4)


def test_kbuild_72_header_with_empty_layout_section() -> None:
    """What resolve_btfids writes in 7.2: hdr_len 32, layout_off = layout_len = 0."""
    data = malformed.with_layout(GOOD, b"", layout_off=0)
    assert _fields(data)[0] == 32 and _fields(data)[5:] == (0, 0)
    btf = Btf.parse(data, source="kbuild72.btf")
    assert btf.layout == b"" and btf.hdr_extra == b"\0" * 8
    assert btf.to_bytes() == data
    assert dump_raw(btf) == dump_raw(Btf.parse(GOOD))


def test_layout_section_parses_dumps_and_round_trips() -> None:
    data = malformed.with_layout(GOOD)
    btf = Btf.parse(data, source="layout.btf")
    assert btf.layout == LAYOUT
    assert btf.to_bytes() == data
    assert btf.to_bytes(reencode=True) == data
    assert dump_raw(btf) == dump_raw(Btf.parse(GOOD))


def test_empty_layout_section_ignores_its_offset() -> None:
    """layout_len 0 means no section: its offset is not looked at (kernel 7.x, libbpf 1.8),
    and is kept as it came."""
    data = malformed.with_layout(GOOD, b"", layout_off=0x1234)
    btf = Btf.parse(data, source="x.btf")
    assert btf.layout == b""
    assert btf.to_bytes() == data


def test_added_types_move_the_layout_section() -> None:
    btf = Btf.parse(malformed.with_layout(GOOD), source="layout.btf")
    tid = btf.add(Int(btf.add_str("u128_t"), 0, 16, 0, 0, 128))
    btf.add(Ptr(0, 0, tid))
    out = btf.to_bytes()
    hdr_len, type_off, type_len, str_off, str_len, layout_off, layout_len = _fields(out)
    assert (hdr_len, type_off, layout_off, layout_len) == (32, 0, type_len, len(LAYOUT))
    assert str_off == type_len + len(LAYOUT) and 32 + str_off + str_len == len(out)
    again = Btf.parse(out, source="again.btf")
    assert again.layout == LAYOUT and again.type_name(tid) == "u128_t"


def test_split_btf_with_layout_on_a_base() -> None:
    base = Btf.parse(GOOD, source="base.btf")
    split = Btf(base)
    split.add(Ptr(0, 0, 1))
    plain = split.to_bytes()
    n = len(plain) - 24 - len(split.strings)
    data = (struct.pack("<HBBIIIIIII", 0xEB9F, 1, 0, 32, 0, n, n + len(LAYOUT),
                        len(split.strings), n, len(LAYOUT))
            + plain[24:24 + n] + LAYOUT + plain[24 + n:])
    parsed = Btf.parse(data, base=base, source="split.btf")
    assert parsed.layout == LAYOUT and parsed.to_bytes() == data
    assert dump_raw(parsed) == dump_raw(Btf.parse(plain, base=base))


def test_reconciled_output_keeps_the_layout_section() -> None:
    """relocate's serialisers write the layout section of the BTF they rewrite."""
    data = malformed.with_layout(GOOD)
    btf = Btf.parse(data, source="layout.btf")
    words, _ = btf.wire_records()
    assert serialize(btf, array("I", words)) == data
    assert serialize_parts(array("I"), b"\0") == pack_header("<", 0, b"", 0, 0, 1) + b"\0"


def test_pack_header_needs_the_long_header_for_a_layout() -> None:
    with pytest.raises(ValueError, match="32-byte header"):
        pack_header("<", 0, b"", 4, 4, 1)


@pytest.mark.parametrize("hdr_len", [28, 32, 40])
def test_header_lengths_around_32(hdr_len: int) -> None:
    """Zero bytes past 24 are fine at any length; 28 reads no layout fields."""
    data = malformed.with_header(GOOD[:24], hdr_len=hdr_len) + b"\0" * (hdr_len - 24) + GOOD[24:]
    btf = Btf.parse(data, source="x.btf")
    assert btf.to_bytes() == data and btf.layout == b""


def test_big_endian_layout_section() -> None:
    """The other byte order: header fields swapped, layout bytes as they are (flags is a
    u16 only libbpf swaps in memory; nothing reads it)."""
    be_plain = malformed._byteswap(GOOD)
    h = struct.unpack_from(">HBBIIIII", be_plain)
    tl = h[5]
    data = (struct.pack(">HBBIIIIIII", *h[:3], 32, 0, tl, tl + len(LAYOUT), h[7], tl,
                        len(LAYOUT)) + be_plain[24:24 + tl] + LAYOUT + be_plain[24 + tl:])
    # libbpf 1.7 swaps only 24-byte headers: the validator says so (validate.run)
    with pytest.raises(BtfError, match="non-native byte order") as err:
        Btf.parse(data, source="be.btf")
    assert err.value.code is ErrorCode.BTF_BAD_HEADER
    btf = Btf.parse(data, source="be.btf", validate=False)
    assert btf.byte_order == ">" and btf.layout == LAYOUT and btf.to_bytes() == data
