"""Compressed kernel files: xz, zstd and gzip, told apart by their magic bytes.

Reading decompresses within a caller-given bound, chunk by chunk (inputs are untrusted);
writing compresses the way the kernel's tools need (xz with CRC32 checks, which
kmod requires). lzma and zstandard are imported on first use: a command that reads a raw
BTF file needs neither.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator

_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_DECOMPRESS_CHUNK = 1 << 20  # small: the output grows in place, chunks are transient
_XZ_FEED = 256 << 10
# zstd's decompressobj has no output bound, and a 4-byte RLE block expands to 128 KiB: a
# fixed 8 KiB piece of a bomb gave 256 MiB in one call, on top of the payload buffer (and
# the call joins its output, so twice that for a moment). The piece is sized to the room
# left under the cap instead: one call's output, doubled, fits in half of what is left, so
# the peak stays near the cap; 256 bytes (8 MiB of output) at least, 1 KiB at most (a real
# 100 KB module decodes as fast in 1 KiB pieces as in 8 KiB ones, ~3x slower in 256 bytes).
_ZSTD_EXPANSION = (128 << 10) // 4
_ZSTD_FEED_MIN, _ZSTD_FEED_MAX = 256, 1 << 10
_NONZERO = re.compile(rb"[^\0]")


class CompressionError(ValueError):
    """A stream that is corrupt or decompresses past its bound; message is one line.
    `too_large` tells the bound from corruption (the reader's ElfError code)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def detect(raw: bytes) -> str | None:
    """"xz", "zst" or "gz" by the magic bytes at the start of `raw`; None when uncompressed."""
    if raw.startswith(_XZ_MAGIC):
        return "xz"
    if raw.startswith(_ZSTD_MAGIC):
        return "zst"
    if raw.startswith(_GZIP_MAGIC):
        return "gz"
    return None


def decompress(compression: str, raw: bytes, cap: int) -> bytearray:
    """The payload of `raw`, refused past `cap` bytes (checked chunk by chunk, so a small
    bomb never allocates its claimed size). A bytearray grown in place (realloc): no second
    copy of a 30 MiB module at any moment, unlike joining chunks or BytesIO.getvalue() after
    growth."""
    out = bytearray()

    def room() -> int:
        return cap - len(out)

    try:
        chunks = {"xz": _xz_chunks, "zst": lambda r: _zstd_chunks(r, room),
                  "gz": _gzip_chunks}[compression](raw)
        for chunk in chunks:
            if len(out) + len(chunk) > cap:
                raise CompressionError(f"{compression} stream decompresses to more than "
                                       f"{cap} bytes; refusing", too_large=True)
            out += chunk
        return out
    except (_lzma().LZMAError, zlib.error, _zstd().ZstdError, EOFError) as e:
        raise CompressionError(f"corrupt {compression} stream: {e}") from None


def _xz_chunks(raw: bytes) -> Iterator[bytes]:
    # Concatenated xz streams are valid xz; decode them all, bounded chunk by chunk. The
    # input goes in _XZ_FEED pieces: given all of it with an output bound, the decompressor
    # would keep its own copy of what it has not consumed yet (a second compressed module).
    lzma = _lzma()
    view = memoryview(raw)
    pos = 0
    while pos < len(raw):
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        while not dec.eof:
            if dec.needs_input:
                if pos >= len(raw):
                    raise EOFError("truncated stream")
                piece = view[pos:pos + _XZ_FEED]
                pos += len(piece)
            else:
                piece = b""
            yield dec.decompress(piece, _DECOMPRESS_CHUNK)
        pos -= len(dec.unused_data)
        more = _NONZERO.search(raw, pos)  # xz allows zero padding between streams
        pos = more.start() if more else len(raw)


def _gzip_chunks(raw: bytes) -> Iterator[bytes]:
    rest = raw
    while rest:
        dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip wrapper only
        chunk = dec.decompress(rest, _DECOMPRESS_CHUNK)
        while True:
            yield chunk
            if dec.eof:
                break
            chunk = dec.decompress(dec.unconsumed_tail, _DECOMPRESS_CHUNK)
            if not chunk and not dec.eof:
                raise EOFError("truncated stream")
        rest = dec.unused_data.lstrip(b"\0")  # like gzip(1), ignore trailing zero padding


def _lzma():  # noqa: ANN202 - the lzma module
    import lzma

    return lzma


def _zstd():  # noqa: ANN202 - the zstandard module
    import zstandard

    return zstandard


def _zstd_chunks(raw: bytes, room: Callable[[], int]) -> Iterator[bytes]:
    # decompressobj has no output bound, so feed it input pieces sized to `room()`, the
    # bytes left under the cap: one zstd block (<= 128 KiB of output) needs at least 4 input
    # bytes, which bounds each call's output. Its eof flag is what tells a truncated frame
    # apart (stream_reader and read_to_iter end quietly).
    view = memoryview(raw)
    pos = 0
    while pos < len(raw):
        dec = _zstd().ZstdDecompressor().decompressobj()
        while not dec.eof:
            if pos >= len(raw):
                raise EOFError("truncated stream")
            feed = room() // (4 * _ZSTD_EXPANSION)
            piece = view[pos:pos + max(_ZSTD_FEED_MIN, min(_ZSTD_FEED_MAX, feed))]
            pos += len(piece)
            yield dec.decompress(piece)
        pos -= len(dec.unused_data)


def compress(compression: str | None, data: bytearray) -> bytes | bytearray:
    """`data` in the format `compression` (as detect() names it; None: as it is)."""
    if compression == "xz":
        # kmod's xz decoder only accepts CRC32 (or no) checks, not the CRC64 default.
        lzma = _lzma()
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if compression == "zst":
        return _zstd().ZstdCompressor().compress(data)
    if compression == "gz":
        import gzip

        return gzip.compress(data, mtime=0)
    return data
