"""Kernel images as BTF input: an x86 bzImage (`/boot/vmlinuz-*`) -> its `.BTF`.

One job: find the compressed vmlinux inside the image, decompress it as a stream and return
the bytes of its `.BTF` section, without a temporary file and without holding the ~60 MiB
decompressed kernel.

Locating the payload: exactly from the x86 boot protocol header (Documentation/arch/x86/
boot.rst), never by scanning for compression magic (a kernel image contains many byte
strings that look like one): the setup code is (setup_sects + 1) * 512 bytes, the protected
mode code follows, and from boot protocol 2.08 payload_offset (0x248, relative to that code)
and payload_length (0x24c) give the compressed vmlinux. The build (arch/x86/boot/compressed,
scripts/Makefile.lib `size_append`) ends every payload with the decompressed size as a 4-byte
little-endian word; for gzip that word is gzip's own ISIZE trailer. The decompressed stream is
vmlinux.bin (the stripped vmlinux ELF) followed, on relocatable kernels, by vmlinux.relocs.

Finding .BTF in the stream: the ELF header (first bytes) gives where the section header table
is (e_shoff, near the end), but which section is .BTF is only known once that table has been
decoded, long after .BTF (about a third into the file) went past. So while decoding we keep:
the ELF header, the section header table, a 64 KiB window before it (where objcopy puts
.shstrtab), and every byte range that starts with a BTF header (magic 0xeB9F, version 1,
flags 0) for the length that header declares, within a memory budget. At the end the section
table decides: the range at .BTF's sh_offset with exactly sh_size bytes is the answer. The
scan only saves a second decode: if .BTF's bytes (or the section names) were not kept, the
payload is decoded a second time capturing exactly the ranges the table names. So the result
never depends on the heuristic, only the time does.

Measured (best of 3, shared 2-CPU machine; time, peak RSS as VmHWM): Debian 6.1 (xz) one pass
1.57 s 56 MB, always two passes 3.59 s 55 MB, whole ELF in memory 1.48 s 113 MB; Debian 6.12
(zstd) 0.44 s 89 MB, 0.74 s 90 MB, 0.43 s 130 MB. One pass costs no time over holding the
kernel and half the memory; what remains is the decoder's window (xz 32 MiB, zstd -22 up to
128 MiB), the .BTF itself and Python.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from .errors import ErrorCode
from .inputs import ElfError, open_regular

# How read_btf_sections recognises a bzImage: the PE/DOS stub and the boot header signature.
BZIMAGE_PROBE_LEN = 0x206


def is_bzimage(head: bytes) -> bool:
    return head[:2] == b"MZ" and head[0x202:0x206] == b"HdrS"


# The whole decompressed kernel (ELF + relocs) is decoded but never held, so this bounds time,
# not memory: Debian's 6.12 is 55 MiB, debug-heavy configs stay well below 512 MiB.
MAX_DECOMPRESSED = 512 << 20
# Bytes held for BTF candidates (the real .BTF is ~5 MiB; the kernel embeds a few small BPF
# objects with BTF of their own). Past it, candidates are dropped and a second decode
# answers instead: memory stays bounded whatever the input.
_CANDIDATE_BUDGET = 64 << 20
# The largest .BTF accepted from a kernel image (Debian's is ~6 MiB): a section table may
# claim any size for a .BTF of compressed zeros, and the bytes kept for it are held, then
# copied once into the answer. Checked against the section table before the range is kept.
MAX_BTF = 64 << 20
# The section names (a vmlinux's are ~400 bytes): kept on a second decode, so bounded too.
_MAX_SHSTRTAB = 1 << 20
_SHSTRTAB_WINDOW = 64 << 10
_IN_CHUNK = 1 << 20  # compressed bytes read from the file at a time
_OUT_CHUNK = 1 << 20  # bound on one decompressor call's output (zlib, lzma, bz2)
# zstd's decompressobj has no output bound: a 4-byte RLE block expands to 128 KiB, so feeding
# 256 bytes at a time bounds one call's output to 8 MiB (measured: a 600 MiB zero bomb peaks
# at 36 MB RSS with 256, 101 MB with 1 KiB; Debian 6.12's image decodes as fast with either).
_ZSTD_FEED = 256
_COALESCE = 256 << 10  # hand the ELF scanner chunks at least this big (fewer Python calls)

_LZ4_LEGACY_MAGIC = 0x184C2102
_LZ4_LEGACY_BLOCK = 8 << 20  # uncompressed size of a legacy-frame block
_LZ4_MAX_BLOCK = _LZ4_LEGACY_BLOCK + _LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_COMPRESSBOUND

_SHT_NOBITS = 8
_SHF_COMPRESSED = 0x800
_SHN_XINDEX = 0xFFFF
_BTF_HEADER_LEN = 24


def _compression_of(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(_LZ4_LEGACY_MAGIC.to_bytes(4, "little")):
        return "lz4"
    if head.startswith(b"BZh"):
        return "bzip2"
    # lzma "alone" format: properties byte (lc=3 lp=0 pb=2, what `lzma -9` writes), then the
    # dictionary size; the payload's position is exact, so this weak magic is enough.
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma"
    return None


class KernelImageBtf(NamedTuple):
    compression: str  # of the payload: gzip, xz, zstd, lz4, bzip2, lzma
    btf: bytes  # the .BTF section of the vmlinux inside
    decompressed_size: int  # vmlinux ELF + relocs


def read_kernel_image_btf(path: str | os.PathLike[str], f: BinaryIO | None = None, *,
                          max_btf: int = MAX_BTF,
                          max_decompressed: int = MAX_DECOMPRESSED) -> KernelImageBtf:
    """The .BTF of bzImage `path` (read through `f`, an open file of it, when given); a
    .BTF larger than `max_btf` (at most MAX_BTF) is refused."""
    p = Path(path)
    max_btf = min(max_btf, MAX_BTF)
    if f is None:
        fd, _ = open_regular(p)  # a regular file, checked before anything is read
        with open(fd, "rb") as own:
            return read_kernel_image_btf(p, own, max_btf=max_btf,
                                         max_decompressed=max_decompressed)
    try:
        size = os.fstat(f.fileno()).st_size
        start, length = _payload_range(p, f, size)
        f.seek(start)
        magic = f.read(6)
        compression = _compression_of(magic)
        if compression is None:
            raise ElfError(p, "bzImage payload has an unknown compression (starts with "
                              f"{magic.hex()}; expected gzip, xz, zstd, lz4, bzip2 or lzma)")
        image = _Image(p, f, start, length, compression, max_decompressed)
    except OSError as e:
        raise ElfError(p, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None
    first = _ElfScan(p, max_btf, scan=True)
    total = image.decode(first.feed)
    elf = first.finish(total)
    btf = first.candidate(elf.btf_header()) if elf.named else None
    # The stream scan did not keep .BTF (or the section names): decode again, keeping exactly
    # what the section table names. Names unknown until the second decode may need a third.
    # Every pass reads the same open file (package managers replace /boot/vmlinuz-* by
    # rename, which leaves this inode alone) and checks the stream's integrity again.
    for _ in range(2):
        if btf is not None:
            break
        again = _ElfScan(p, max_btf, scan=False, ranges=elf.ranges_needed())
        total = image.decode(again.feed)
        elf = again.finish(total)
        if elf.named:
            btf = first.candidate(elf.btf_header()) or again.kept(elf.btf_header())
    if btf is None:  # unreachable: the third decode has the names and the range
        raise ElfError(p, "could not locate .BTF in the decompressed vmlinux")
    return KernelImageBtf(compression, btf, total)


def _payload_range(path: Path, f: BinaryIO, size: int) -> tuple[int, int]:
    f.seek(0)
    hdr = f.read(0x250)
    if len(hdr) < 0x250 or not is_bzimage(hdr):
        raise ElfError(path, "not a bzImage: no complete x86 boot header (MZ ... HdrS)")
    version = struct.unpack_from("<H", hdr, 0x206)[0]
    if version < 0x208:
        raise ElfError(path, f"bzImage boot protocol {version >> 8}.{version & 0xff} is older "
                             "than 2.08: no payload_offset to find the kernel")
    setup_sects = hdr[0x1F1] or 4  # 0 means 4 (boot.rst)
    offset, length = struct.unpack_from("<II", hdr, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if start >= size:
        raise ElfError(path, f"bzImage payload_offset points to {start:#x}, past the end of the "
                             f"file (size {size})")
    if length < 8:
        raise ElfError(path, f"bzImage payload_length {length} is too small")
    if start + length > size:
        raise ElfError(path, f"truncated payload: {length} bytes at {start:#x} end past the end "
                             f"of the file (size {size})")
    return start, length


class _Image:
    """The compressed payload: decoded in chunks, as many times as asked."""

    def __init__(self, path: Path, f: BinaryIO, start: int, length: int, compression: str,
                 cap: int) -> None:
        self.path, self.f, self.start, self.length = path, f, start, length
        self.compression, self.cap = compression, cap
        f.seek(start + length - 4)
        # size_append: the decompressed size; for gzip the same word is the gzip ISIZE,
        # which belongs to the gzip stream, so the decoder sees it too.
        self.declared = struct.unpack("<I", f.read(4))[0]
        self.stream_len = length if compression == "gzip" else length - 4

    def decode(self, sink: Callable[[bytes], None]) -> int:
        """Feed the decompressed stream to `sink`; returns its length."""
        self.f.seek(self.start)
        self.left = self.stream_len
        decoder = _DECODERS[self.compression]
        total = 0
        pending: list[bytes] = []
        pending_len = 0
        try:
            for chunk in decoder(self):
                if not chunk:
                    continue
                total += len(chunk)
                if total > self.cap:
                    raise ElfError(self.path, f"{self.compression} payload decompresses to more "
                                              f"than {self.cap} bytes; refusing",
                                   ErrorCode.INPUT_TOO_LARGE)
                pending.append(chunk)
                pending_len += len(chunk)
                if pending_len >= _COALESCE:
                    sink(b"".join(pending))
                    pending, pending_len = [], 0
        except ElfError:
            raise
        except ImportError as e:
            raise ElfError(self.path, f"cannot decompress a {self.compression} payload: Python "
                                      f"package {e.name} is not installed") from None
        except _TruncatedError:
            raise ElfError(self.path, f"truncated payload: the {self.compression} stream ends "
                                      f"early (payload_length {self.length})") from None
        except _decoder_errors() as e:
            raise ElfError(self.path, f"corrupt {self.compression} payload: {e}") from None
        except OSError as e:
            raise ElfError(self.path, f"cannot read: {e.strerror or e}",
                           ErrorCode.INPUT_UNREADABLE) from None
        if pending:
            sink(b"".join(pending))
        if self.left:
            raise ElfError(self.path, f"{self.left} bytes of the {self.compression} payload "
                                      "follow the end of the compressed stream")
        if total & 0xFFFFFFFF != self.declared:
            raise ElfError(self.path, f"truncated payload: decompressed {total} bytes, the "
                                      f"image declares {self.declared}")
        return total

    def read(self, n: int) -> bytes:
        """Up to n more compressed bytes of the stream (b"" at its end)."""
        n = min(n, self.left)
        data = self.f.read(n) if n else b""
        self.left -= len(data)
        if len(data) < n:
            raise _TruncatedError
        return data

    def unread(self, data: bytes) -> None:
        """Bytes a decoder did not consume after its stream ended (checked by decode)."""
        self.left += len(data)


class _TruncatedError(Exception):
    pass


def _decoder_errors() -> tuple[type[BaseException], ...]:
    """What the decoders raise on corrupt input (bz2's OSError is turned into ValueError in
    _bounded, so that OSError keeps meaning "the file could not be read")."""
    import lzma

    errors: list[type[BaseException]] = [lzma.LZMAError, zlib.error, EOFError, ValueError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # a missing package is reported by its decoder, not here
        pass
    try:
        import lz4.block

        errors.append(lz4.block.LZ4BlockError)
    except ImportError:
        pass
    return tuple(errors)


def _bounded(dec: Any, image: _Image, *, zlib_style: bool) -> Iterator[bytes]:
    """Drive a zlib/lzma/bz2 decompressor with output bounded per call; one stream only.
    zlib keeps input it has not used in unconsumed_tail; lzma and bz2 keep it internally and
    say needs_input once it is used up."""
    while not dec.eof:
        if zlib_style:
            data = dec.unconsumed_tail or image.read(_IN_CHUNK)
        else:
            data = image.read(_IN_CHUNK) if dec.needs_input else b""
        if not data and (zlib_style or dec.needs_input):
            raise _TruncatedError
        try:
            yield dec.decompress(data, _OUT_CHUNK)
        except OSError as e:  # bz2: "Invalid data stream"
            raise ValueError(str(e)) from None
    image.unread(dec.unused_data)


def _gzip(image: _Image) -> Iterator[bytes]:
    return _bounded(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), image, zlib_style=True)


def _xz(image: _Image) -> Iterator[bytes]:
    import lzma

    return _bounded(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), image, zlib_style=False)


def _lzma_alone(image: _Image) -> Iterator[bytes]:
    import lzma

    return _bounded(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), image, zlib_style=False)


def _bzip2(image: _Image) -> Iterator[bytes]:
    import bz2

    return _bounded(bz2.BZ2Decompressor(), image, zlib_style=False)


def _zstd(image: _Image) -> Iterator[bytes]:
    import zstandard

    dec = zstandard.ZstdDecompressor().decompressobj()
    while not dec.eof:  # eof is what tells a truncated frame apart
        piece = image.read(_ZSTD_FEED)
        if not piece:
            raise _TruncatedError
        yield dec.decompress(piece)
    image.unread(dec.unused_data)


def _lz4_legacy(image: _Image) -> Iterator[bytes]:
    """The kernel's lz4 format (`lz4 -l`): magic, then blocks of a 4-byte little-endian
    compressed size and a raw LZ4 block of at most 8 MiB output, until the stream ends (no end
    mark: payload_length says where); the magic may recur (concatenated frames)."""
    import lz4.block

    if image.read(4) != _LZ4_LEGACY_MAGIC.to_bytes(4, "little"):
        raise ValueError("not an lz4 legacy frame")
    while word := image.read(4):
        if len(word) < 4:
            raise _TruncatedError
        size = int.from_bytes(word, "little")
        if size == _LZ4_LEGACY_MAGIC:
            continue
        if size > _LZ4_MAX_BLOCK:
            raise ValueError(f"lz4 block of {size} bytes exceeds the 8 MiB legacy block")
        block = image.read(size)
        if len(block) < size:
            raise _TruncatedError
        yield lz4.block.decompress(block, uncompressed_size=_LZ4_LEGACY_BLOCK)


_DECODERS: dict[str, Callable[[_Image], Iterator[bytes]]] = {
    "gzip": _gzip, "xz": _xz, "zstd": _zstd, "lz4": _lz4_legacy, "bzip2": _bzip2,
    "lzma": _lzma_alone,
}


class _Range:
    """Bytes [start, end) of the decompressed stream, filled as the stream passes."""

    __slots__ = ("start", "end", "buf")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.buf = start, end, bytearray()

    def take(self, pos: int, data: memoryview) -> None:
        nxt = self.start + len(self.buf)
        lo, hi = max(nxt, pos), min(self.end, pos + len(data))
        if lo < hi:
            self.buf += data[lo - pos:hi - pos]

    @property
    def complete(self) -> bool:
        return self.start + len(self.buf) == self.end


class _SectionHeader(NamedTuple):
    name: int
    type: int
    flags: int
    offset: int
    size: int
    link: int


class _ElfTables(NamedTuple):
    path: Path
    headers: list[_SectionHeader]
    shstrndx: int
    named: bool  # the section names were kept, so btf_index is known
    btf_index: int | None

    def btf_header(self) -> _SectionHeader:
        if self.btf_index is None:
            raise ElfError(self.path, "no .BTF section in the kernel (built without "
                                      "CONFIG_DEBUG_INFO_BTF)")
        return self.headers[self.btf_index]

    def ranges_needed(self) -> dict[str, tuple[int, int]]:
        sh = self.headers[self.shstrndx]
        ranges = {"shstrtab": (sh.offset, sh.offset + sh.size)}
        if self.btf_index is not None:
            h = self.headers[self.btf_index]
            ranges[".BTF"] = (h.offset, h.offset + h.size)
        return ranges


class _ElfScan:
    """Watches the decompressed stream; see the module docstring."""

    def __init__(self, path: Path, max_btf: int, *, scan: bool,
                 ranges: dict[str, tuple[int, int]] | None = None) -> None:
        self.path, self.max_btf, self.scan = path, max_btf, scan
        self.pos = 0
        self.head = bytearray()
        self.ident: tuple[str, bool] | None = None  # struct prefix, 64-bit
        self.ranges: dict[str, _Range] = {k: _Range(*v) for k, v in (ranges or {}).items()}
        self.candidates: dict[int, _Range] = {}  # BTF header offset -> bytes
        self.probing: list[_Range] = []  # BTF magic seen, header not yet complete
        self.held = 0
        self.carry = b""
        self.pattern = b""

    def feed(self, chunk: bytes) -> None:
        if self.ident is None:
            self.head += chunk
            if len(self.head) < 64:
                return
            self._parse_ehdr(bytes(self.head[:64]))
            chunk, self.head = bytes(self.head), bytearray()
        data = memoryview(chunk)
        pos = self.pos
        for r in self.ranges.values():
            r.take(pos, data)
        if self.scan:
            self._scan(pos, chunk)
        self.pos += len(chunk)

    def _parse_ehdr(self, ehdr: bytes) -> None:
        if ehdr[:4] != b"\x7fELF":
            raise ElfError(self.path, "decompressed bzImage payload is not an ELF vmlinux "
                                      f"(magic {ehdr[:4].hex()})")
        if ehdr[4] not in (1, 2) or ehdr[5] not in (1, 2):
            raise ElfError(self.path, "decompressed vmlinux: bad ELF class or data encoding")
        bits64, endian = ehdr[4] == 2, "<" if ehdr[5] == 1 else ">"
        self.ident = (endian, bits64)
        if bits64:
            shoff = struct.unpack_from(endian + "Q", ehdr, 0x28)[0]
            shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ehdr, 0x3A)
        else:
            shoff = struct.unpack_from(endian + "I", ehdr, 0x20)[0]
            shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ehdr, 0x2E)
        want = 64 if bits64 else 40
        if shoff == 0 or shnum == 0 or shentsize != want:
            raise ElfError(self.path, "decompressed vmlinux has no usable section header table "
                                      f"(e_shoff {shoff:#x}, e_shnum {shnum}, "
                                      f"e_shentsize {shentsize})")
        self.shstrndx = shstrndx
        self.ranges["shdrs"] = _Range(shoff, shoff + shnum * shentsize)
        if self.scan:
            self.ranges["window"] = _Range(max(0, shoff - _SHSTRTAB_WINDOW), shoff)
        self.pattern = (b"\x9f\xeb" if endian == "<" else b"\xeb\x9f") + b"\x01\x00"

    def _scan(self, pos: int, chunk: bytes) -> None:
        # BTF headers starting in this chunk (including one split across the previous one)
        data = self.carry + chunk
        base = pos - len(self.carry)
        i = data.find(self.pattern)
        while i >= 0:
            self.probing.append(_Range(base + i, base + i + _BTF_HEADER_LEN))
            i = data.find(self.pattern, i + 1)
        self.carry = chunk[-(len(self.pattern) - 1):]
        view = memoryview(data)
        still: list[_Range] = []
        for r in self.probing:
            r.take(base, view)
            if r.complete:
                self._accept(r, base, view)
            else:
                still.append(r)
        self.probing = still
        for r in self.candidates.values():
            r.take(base, view)

    def _accept(self, hdr: _Range, base: int, view: memoryview) -> None:
        endian = self.ident[0]  # type: ignore[index]
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "5I", hdr.buf, 4)
        if hdr_len < _BTF_HEADER_LEN or hdr_len > 4096:
            return
        length = hdr_len + max(type_off + type_len, str_off + str_len)
        if length > self.max_btf or self.held + length > _CANDIDATE_BUDGET:
            return  # dropped: if it was .BTF, the second decode finds it
        self.held += length
        r = _Range(hdr.start, hdr.start + length)
        r.take(base, view)
        self.candidates[hdr.start] = r

    def finish(self, total: int) -> _ElfTables:
        if self.ident is None:
            raise ElfError(self.path, f"decompressed bzImage payload is {total} bytes, too "
                                      "short for an ELF header")
        shdrs = self.ranges["shdrs"]
        if not shdrs.complete:
            raise ElfError(self.path, f"truncated vmlinux: section header table at "
                                      f"{shdrs.start:#x} past the end of the decompressed data "
                                      f"(size {total})")
        endian, bits64 = self.ident
        fmt = endian + ("IIQQQQIIQQ" if bits64 else "IIIIIIIIII")
        headers = [_SectionHeader(*(f[i] for i in (0, 1, 2, 4, 5, 6)))
                   for f in struct.iter_unpack(fmt, bytes(shdrs.buf))]
        shstrndx = headers[0].link if self.shstrndx == _SHN_XINDEX else self.shstrndx
        if not 0 < shstrndx < len(headers):
            raise ElfError(self.path, f"vmlinux section name table index {shstrndx} out of "
                                      "range")
        if headers[shstrndx].size > _MAX_SHSTRTAB:
            raise ElfError(self.path, f"vmlinux section name table is "
                                      f"{headers[shstrndx].size} bytes, more than "
                                      f"{_MAX_SHSTRTAB}; refusing")
        for i, h in enumerate(headers):
            if h.type != _SHT_NOBITS and h.offset + h.size > total:
                raise ElfError(self.path, f"truncated vmlinux: section [{i}] at {h.offset:#x} "
                                          f"size {h.size:#x} past the end of the decompressed "
                                          f"data (size {total})")
        names = self._shstrtab(headers[shstrndx])
        if names is None:  # not kept by the scan: a second decode names the sections
            return _ElfTables(self.path, headers, shstrndx, False, None)
        btf_index = None
        for i, h in enumerate(headers):
            if i and names[h.name:h.name + 5] == b".BTF\0":
                if btf_index is not None:
                    raise ElfError(self.path, "vmlinux has more than one .BTF section")
                btf_index = i
        if btf_index is not None:
            h = headers[btf_index]
            if h.type == _SHT_NOBITS:
                raise ElfError(self.path, "vmlinux .BTF is SHT_NOBITS (no data)")
            if h.flags & _SHF_COMPRESSED:
                raise ElfError(self.path, "vmlinux .BTF is SHF_COMPRESSED: the kernel reads "
                                          "BTF uncompressed")
            if h.size < _BTF_HEADER_LEN:
                raise ElfError(self.path, f"vmlinux .BTF is {h.size} bytes, too small for BTF")
            if h.size > self.max_btf:
                raise ElfError(self.path, f"vmlinux .BTF is {h.size} bytes, more than "
                                          f"{self.max_btf}; refusing", ErrorCode.INPUT_TOO_LARGE)
        return _ElfTables(self.path, headers, shstrndx, True, btf_index)

    def _shstrtab(self, h: _SectionHeader) -> bytes | None:
        for r in (self.ranges.get("shstrtab"), self.ranges.get("window")):
            if r is not None and r.start <= h.offset and h.offset + h.size <= r.end:
                return bytes(r.buf[h.offset - r.start:h.offset - r.start + h.size])
        return None

    def kept(self, h: _SectionHeader) -> bytes | None:
        r = self.ranges.get(".BTF")
        if r is None or (r.start, r.end) != (h.offset, h.offset + h.size) or not r.complete:
            return None
        return bytes(r.buf)

    def candidate(self, h: _SectionHeader) -> bytes | None:
        r = self.candidates.get(h.offset)
        if r is None or r.end - r.start != h.size or not r.complete:
            return None
        return bytes(r.buf)
