"""Read and write the BTF sections of kernel ELF files (SPEC §2).

Reading: `.ko`/vmlinux ELF files, plain or xz/zstd/gzip compressed (detected by magic
bytes), raw BTF files such as /sys/kernel/btf/vmlinux, and x86 kernel images (bzImage,
/boot/vmlinuz-*: their vmlinux's .BTF, see kimage.py). Parsing is pyelftools'; we only
add the bounds checks pyelftools skips (it reads a BytesIO, which silently returns short
data past EOF) and turn every parse failure into a one-line `ElfError`.

Writing (pyelftools cannot write): `write_btf_sections` adds, replaces or removes
non-allocated sections such as `.BTF.base` without renumbering any existing section, because
symbols, relocations, groups and sh_link/sh_info refer to sections by index. Layout rules:

- Every existing section keeps its index and, unless it is one we rewrite, its offset and
  bytes. The file is cut after the last byte that anything still live (ELF header, program
  headers, segments, untouched sections) occupies; rewritten sections, a copy of `.shstrtab`
  (only when a new name is needed) and a fresh section header table are appended after the
  cut. Because everything we append sits after the cut, rewriting a file we wrote before
  drops the previous tail instead of piling up dead copies.
- Added sections are SHT_PROGBITS, flags 0, sh_addralign 4 (the layout `objcopy
  --add-section`/pahole produce for `.BTF.base`, with 4-byte alignment since BTF is a
  sequence of u32-aligned records). Flags stay 0: an allocated section appended outside every
  segment would be wrong in an executable, and the kernel finds `.BTF*` by name anyway.
- Removal is refused for any section something refers to by index (sh_link, sh_info of
  relocation/SHF_INFO_LINK sections, group members, symbols) and for non-PROGBITS sections.
  A removed section at the end of the header table is dropped; one in the middle becomes an
  all-zero SHT_NULL header so later indexes do not shift (readelf and the kernel's module
  loader both skip SHT_NULL entries).
- In executables (ET_EXEC/ET_DYN) an allocated section (e.g. vmlinux `.BTF`) lives inside a
  segment, so it can only be overwritten in place with data of the same size.

The output keeps the input's compression (xz with CRC32 checks, which kmod requires) and is
written atomically: temp file in the destination directory, fsync, verify, rename, fsync dir.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

# pyelftools, zstandard, lzma, gzip, copy, hashlib and tempfile are imported where they are
# used: together they cost ~30 ms at start-up, and a command reading a raw BTF file such as
# /sys/kernel/btf/vmlinux (`btfreconcilectl dump`) needs none of them.
if TYPE_CHECKING:
    from elftools.construct import Container
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import Section

BTF_SECTION = ".BTF"
BTF_BASE_SECTION = ".BTF.base"
BTF_BASE_EXPECTS_SECTION = ".BTF.base_expects"
_BTF_SECTIONS = (BTF_SECTION, BTF_BASE_SECTION, BTF_BASE_EXPECTS_SECTION)
# What identifies a module build: the kernel shows the same bytes as
# /sys/module/<m>/notes/.note.gnu.build-id, and .modinfo's srcversion as .../srcversion.
BUILD_ID_SECTION = ".note.gnu.build-id"
MODINFO_SECTION = ".modinfo"
_READ_SECTIONS = (*_BTF_SECTIONS, BUILD_ID_SECTION, MODINFO_SECTION)

# Inputs are untrusted (SPEC §10): sizes from a file never size an allocation unchecked.
# The largest Debian module (amdgpu, 6.12) is 4 MiB compressed and 30 MiB decompressed; a raw
# vmlinux BTF is ~5 MiB. An uncompressed ELF (a vmlinux with debug info: up to ~1 GiB) is
# never read whole: only its section headers and .BTF* sections, each within MAX_FILE_SIZE.
MAX_FILE_SIZE = 256 << 20  # bytes read from one file (compressed module, raw BTF, a section)
MAX_DECOMPRESSED_SIZE = 128 << 20  # a compressed module's payload
_DECOMPRESS_CHUNK = 16 << 20
_ZSTD_FEED = 8 << 10

_ELF_MAGIC = b"\x7fELF"
_BTF_MAGICS = (b"\x9f\xeb", b"\xeb\x9f")  # 0xeB9F little- and big-endian
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_HEAD_LEN = 0x206  # enough for the compression magics and a bzImage's "HdrS" at 0x202

_SHN_LORESERVE = 0xFF00
_SHF_ALLOC = 0x2
_SHF_INFO_LINK = 0x40
_SHF_COMPRESSED = 0x800
_NEW_SECTION_ALIGN = 4
# Most file-offset padding one section may get (a page): see _ElfRewriter._append.
_MAX_FILE_ALIGN = 4096



def _parse_errors() -> tuple[type[BaseException], ...]:
    """pyelftools' ELFError and Python's own errors it lets escape on malformed input (bad
    offsets, enum values, string decoding): all of them mean "this is not a well-formed ELF".
    A function so that pyelftools is imported only once an ELF is parsed (an `except`
    clause's expression is evaluated only when an exception reaches it)."""
    from elftools.common.exceptions import ELFError

    return (ELFError, struct.error, ValueError, IndexError, KeyError, TypeError,
            AttributeError, AssertionError, OverflowError)


class ElfError(Exception):
    """A file could not be read or written as BTF-carrying ELF; message is one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        super().__init__(f"{self.path}: {self.reason}")


# NamedTuples rather than dataclasses: `dataclasses` (with `inspect`) costs ~6 ms to import,
# a tenth of a `btfreconcilectl dump` that needs neither.
class BtfSections(NamedTuple):
    path: Path
    compression: str | None  # None, "xz", "zst", "gz"; "bzImage+zstd" etc. for a kernel image
    btf: bytes | None  # .BTF
    base: bytes | None  # .BTF.base (distilled base)
    base_expects: bytes | None  # .BTF.base_expects
    is_elf: bool  # False for a raw BTF file such as /sys/kernel/btf/vmlinux
    sha256: str | None  # of the file as stored on disk (compressed bytes); None if not asked
    build_id_note: bytes | None = None  # the .note.gnu.build-id section as it is
    modinfo: bytes | None = None  # .modinfo: NUL-separated key=value strings

    @property
    def build_id(self) -> str | None:
        return note_build_id(self.build_id_note)

    @property
    def srcversion(self) -> str | None:
        return modinfo_value(self.modinfo, "srcversion")


def note_build_id(note: bytes | None) -> str | None:
    """The GNU build id (hex) in a .note.gnu.build-id section's bytes, if well-formed."""
    if not note or len(note) < 12:
        return None
    namesz, descsz, ntype = struct.unpack_from("<III", note, 0)
    desc = 12 + ((namesz + 3) & ~3)
    if ntype != 3 or namesz > 16 or desc + descsz > len(note) or not descsz:
        return None
    return note[desc:desc + descsz].hex()


def modinfo_value(modinfo: bytes | None, key: str) -> str | None:
    for item in (modinfo or b"").split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k == key.encode():
            return v.decode("ascii", "replace")
    return None


class _Image(NamedTuple):
    """A file as read: on-disk bytes, compression and the decompressed payload."""

    path: Path
    raw: bytes
    compression: str | None
    data: bytes

    @property
    def is_elf(self) -> bool:
        return self.data.startswith(_ELF_MAGIC)


# --------------------------------------------------------------------------- reading


def read_btf_sections(path: str | os.PathLike[str], *, digest: bool = True,
                      max_size: int | None = None) -> BtfSections:
    """Read `.BTF`, `.BTF.base` and `.BTF.base_expects` from an ELF or raw BTF file;
    `digest=False` skips hashing the file (`sha256` is then None). Only regular files are
    read (a FIFO or device is refused without blocking); `max_size` (default MAX_FILE_SIZE)
    bounds what is read from the file and what a compressed payload may decompress to."""
    p = Path(path)
    cap = max_size or MAX_FILE_SIZE
    fd, size = _open_regular(p)
    with open(fd, "rb") as f:
        try:
            head = f.read(_HEAD_LEN)
        except OSError as e:
            raise ElfError(p, f"cannot read: {e.strerror or e}") from None
        if head[:2] == b"MZ" and head[0x202:0x206] == b"HdrS":
            return _read_kernel_image(p, f, size, cap, max_size, digest)
        if _detect_compression(head) is None and head.startswith(_ELF_MAGIC):
            # pyelftools seeks to what it needs: headers and the .BTF* sections
            f.seek(0)
            found = _read_named_sections(p, _open_elf(p, f, size), size, set(_READ_SECTIONS),
                                         cap)
            sha = _sha256_stream(p, f) if digest else None
            return BtfSections(p, None, found.get(BTF_SECTION), found.get(BTF_BASE_SECTION),
                               found.get(BTF_BASE_EXPECTS_SECTION), True, sha,
                               found.get(BUILD_ID_SECTION), found.get(MODINFO_SECTION))
        if size > cap:  # st_size of sysfs files is 0 or 4096: only real files get here
            raise ElfError(p, f"{size} bytes, larger than {cap}; refusing")
        f.seek(0)
        raw = _read_capped(p, f, cap)
    image = _image(p, raw, min(cap, MAX_DECOMPRESSED_SIZE) if max_size is None else cap)
    if image.is_elf:
        found = _read_named_sections(image.path, _open_elf(image.path, io.BytesIO(image.data),
                                                           len(image.data)),
                                     len(image.data), set(_READ_SECTIONS), cap)
    else:
        found = {BTF_SECTION: image.data}
    return BtfSections(
        path=image.path,
        compression=image.compression,
        btf=found.get(BTF_SECTION),
        base=found.get(BTF_BASE_SECTION),
        base_expects=found.get(BTF_BASE_EXPECTS_SECTION),
        is_elf=image.is_elf,
        sha256=_sha256(image.raw) if digest else None,
        build_id_note=found.get(BUILD_ID_SECTION),
        modinfo=found.get(MODINFO_SECTION),
    )


def _read_kernel_image(p: Path, f: io.BufferedReader, size: int, cap: int,
                       max_size: int | None, digest: bool) -> BtfSections:
    """A bzImage (/boot/vmlinuz-*): only its vmlinux's .BTF, so callers treat it like a raw
    BTF file (is_elf False: no .BTF.base, not a module); `compression` says what it was."""
    from . import kimage

    if size > cap:
        raise ElfError(p, f"{size} bytes, larger than {cap}; refusing")
    found = kimage.read_kernel_image_btf(
        p, f, max_btf=cap, max_decompressed=max_size or kimage.MAX_DECOMPRESSED)
    sha = _sha256_stream(p, f) if digest else None
    return BtfSections(p, f"bzImage+{found.compression}", found.btf, None, None, False, sha)


MODULE_SIGNATURE_MAGIC = b"~Module signature appended~\n"


def module_is_signed(path: str | os.PathLike[str]) -> bool:
    """The module (decompressed) ends with an appended signature (scripts/sign-file)."""
    return _load(Path(path)).data.endswith(MODULE_SIGNATURE_MAGIC)


def sha256_file(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> str:
    """sha256 of a regular file's bytes as stored (never blocks on a FIFO or device)."""
    p = Path(path)
    fd, _ = _open_regular(p, follow_symlinks=follow_symlinks)
    with open(fd, "rb") as f:
        return _sha256_stream(p, f)


def _sha256(data: bytes) -> str:
    from .cache import sha256_hex  # (cache imports hashlib, json, tempfile: not at start-up)

    return sha256_hex(data)


def _sha256_stream(path: Path, f: io.BufferedReader) -> str:
    from .cache import sha256_stream

    try:
        return sha256_stream(f)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}") from None


def _load(path: Path) -> _Image:
    fd, _ = _open_regular(path)
    with open(fd, "rb") as f:
        raw = _read_capped(path, f, MAX_FILE_SIZE)
    return _image(path, raw, MAX_DECOMPRESSED_SIZE)


def _image(path: Path, raw: bytes, cap: int) -> _Image:
    if not raw:
        raise ElfError(path, "empty file")
    compression = _detect_compression(raw)
    data = raw if compression is None else _decompress(path, compression, raw, cap)
    if not (data.startswith(_ELF_MAGIC) or data[:2] in _BTF_MAGICS):
        what = "decompressed data" if compression else "file"
        raise ElfError(path, f"{what} is neither ELF nor BTF (magic {data[:4].hex()})")
    return _Image(path=path, raw=raw, compression=compression, data=data)


_KIND_OF_MODE = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO"),
                 (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
                 (stat.S_ISSOCK, "is a socket"))


def _open_regular(path: Path, *, follow_symlinks: bool = True) -> tuple[int, int]:
    """(fd, size) of a regular file. O_NONBLOCK: opening a FIFO must not wait for a writer;
    the type is then checked on the open descriptor (no stat-then-open race)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = next((w for test, w in _KIND_OF_MODE if test(st.st_mode)),
                       "not a regular file")
            raise ElfError(path, f"{why}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _read_capped(path: Path, f: io.BufferedReader, cap: int) -> bytes:
    """Read to EOF (sysfs BTF files must be read until read() returns 0, never sized by
    st_size), refusing more than `cap` bytes and a file that would block (/proc/kmsg)."""
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = f.read1(1 << 20)
            if chunk is None:
                raise ElfError(path, "reading would block: not a plain file")
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise ElfError(path, f"larger than {cap} bytes; refusing")
            chunks.append(chunk)
    except BlockingIOError:
        raise ElfError(path, "reading would block: not a plain file") from None
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}") from None
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _detect_compression(raw: bytes) -> str | None:
    if raw.startswith(_XZ_MAGIC):
        return "xz"
    if raw.startswith(_ZSTD_MAGIC):
        return "zst"
    if raw.startswith(_GZIP_MAGIC):
        return "gz"
    return None


def _decompress(path: Path, compression: str, raw: bytes, cap: int) -> bytes:
    try:
        chunks = {"xz": _xz_chunks, "zst": _zstd_chunks, "gz": _gzip_chunks}[compression](raw)
        out = io.BytesIO()  # getvalue() hands its buffer over: no second copy
        for chunk in chunks:
            if out.tell() + len(chunk) > cap:
                raise ElfError(path, f"{compression} stream decompresses to more than "
                                     f"{cap} bytes; refusing")
            out.write(chunk)
        return out.getvalue()
    except (_lzma().LZMAError, zlib.error, _zstd().ZstdError, EOFError) as e:
        raise ElfError(path, f"corrupt {compression} stream: {e}") from None


def _xz_chunks(raw: bytes) -> Iterator[bytes]:
    # Concatenated xz streams are valid xz; decode them all, bounded chunk by chunk.
    rest = raw
    lzma = _lzma()
    while rest:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        yield dec.decompress(rest, _DECOMPRESS_CHUNK)
        while not dec.eof:
            if dec.needs_input:
                raise EOFError("truncated stream")
            yield dec.decompress(b"", _DECOMPRESS_CHUNK)
        rest = dec.unused_data.lstrip(b"\0")  # xz allows stream padding


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


def _zstd_chunks(raw: bytes) -> Iterator[bytes]:
    # decompressobj has no output bound, so feed it small input pieces: one zstd block
    # (<= 128 KiB of output) needs at least a few input bytes, which bounds each call's
    # output. Its eof flag is what tells a truncated frame apart (stream_reader does not).
    pos = 0
    while pos < len(raw):
        dec = _zstd().ZstdDecompressor().decompressobj()
        while not dec.eof:
            if pos >= len(raw):
                raise EOFError("truncated stream")
            piece = raw[pos:pos + _ZSTD_FEED]
            pos += len(piece)
            yield dec.decompress(piece)
        pos -= len(dec.unused_data)


def _open_elf(path: Path, stream: BinaryIO, size: int) -> ELFFile:
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(stream)
        _check_section_table(path, elf, size)
        return elf
    except ElfError:
        raise
    except _parse_errors() as e:
        raise ElfError(path, f"truncated or corrupt ELF: {e}") from None
    except OSError as e:  # reading the file itself: a bogus offset seeks out of range
        raise _read_error(path, e) from None


def _read_error(path: Path, e: OSError) -> ElfError:
    if e.errno == errno.EINVAL:
        return ElfError(path, "truncated or corrupt ELF: an offset is out of range")
    return ElfError(path, f"cannot read: {e.strerror or e}")


def _check_section_table(path: Path, elf: ELFFile, size: int) -> None:
    shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
    if shoff == 0:
        return
    if shoff + entsize > size:
        raise ElfError(path, f"truncated ELF: section header table at offset {shoff:#x} "
                             f"past end of file (size {size})")
    end = shoff + elf.num_sections() * entsize
    if end > size:
        raise ElfError(path, f"truncated ELF: section header table {shoff:#x}..{end:#x} "
                             f"past end of file (size {size})")


def _read_named_sections(path: Path, elf: ELFFile, size: int,
                         wanted: set[str], cap: int = MAX_FILE_SIZE) -> dict[str, bytes]:
    try:
        found: dict[str, bytes] = {}
        for index, section in enumerate(elf.iter_sections()):
            _check_section_bounds(path, index, section, size)
            if section.name not in wanted:
                continue
            if section.name in found:
                raise ElfError(path, f"duplicate section {section.name}")
            if section["sh_type"] == "SHT_NOBITS":
                raise ElfError(path, f"section {section.name} is SHT_NOBITS (no data in file)")
            if section["sh_flags"] & _SHF_COMPRESSED:
                # the kernel and libbpf take BTF sections' bytes as they are; pyelftools
                # would inflate them to whatever size they claim
                raise ElfError(path, f"section {section.name} is SHF_COMPRESSED: BTF sections "
                                     "are read uncompressed by the kernel and libbpf")
            if section["sh_size"] > cap:
                raise ElfError(path, f"section {section.name} is {section['sh_size']} bytes, "
                                     f"more than {cap}; refusing")
            found[section.name] = section.data()
        return found
    except ElfError:
        raise
    except _parse_errors() as e:
        raise ElfError(path, f"truncated or corrupt ELF: {e}") from None
    except OSError as e:  # reading the file itself: a bogus offset seeks out of range
        raise _read_error(path, e) from None


def _check_section_bounds(path: Path, index: int, section: Section, size: int) -> None:
    if section["sh_type"] in ("SHT_NOBITS", "SHT_NULL"):
        return
    end = section["sh_offset"] + section["sh_size"]
    if end > size:
        raise ElfError(path, f"truncated ELF: section [{index}] {section.name} at offset "
                             f"{section['sh_offset']:#x} size {section['sh_size']:#x} past end "
                             f"of file (size {size})")


# --------------------------------------------------------------------------- writing


def write_btf_sections(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                       sections: Mapping[str, bytes | None]) -> None:
    """Copy ELF `src` to `dst` with sections added/replaced (bytes) or removed (None).

    `dst` may be `src`; it is replaced atomically and keeps src's compression format and
    permission bits.  `dst` follows :func:`btfreconciled.output.output_target`: a device or
    FIFO is never replaced, a symlink is written through to its regular file.
    """
    src_path, dst_path = Path(src), Path(dst)
    for name in sections:
        if not name or "\0" in name:
            raise ElfError(src_path, f"invalid section name {name!r}")
    target = _output_target(dst_path)
    compression, payload = _rewritten_payload(src_path, sections)

    def verify(tmp: Path) -> None:
        _verify_written(tmp, dst_path, compression, sections)

    # checked again: building the payload took a while
    target = _output_target(dst_path)
    _atomic_write(dst_path, target, payload, verify, _owner_and_mode(src_path, target))


def _output_target(dst: Path) -> Path:
    from .output import OutputError, output_target

    try:
        return output_target(dst)
    except OutputError as e:
        raise ElfError(dst, e.reason) from None


def _rewritten_payload(src: Path, sections: Mapping[str, bytes | None],
                       ) -> tuple[str | None, bytes | bytearray]:
    """The new file as it goes on disk; the source image is freed on return, before the
    verification re-read (a vmlinux is hundreds of MiB)."""
    image = _load(src)
    if not image.is_elf:
        raise ElfError(src, "raw BTF file, not ELF: it cannot carry sections")
    elf_bytes = _ElfRewriter(src, image.data).rewrite(sections)
    return image.compression, _compress(image.compression, elf_bytes)


class _ElfRewriter:
    """Builds the new ELF image; see the module docstring for the layout rules."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.data = data
        self.elf = _open_elf(path, io.BytesIO(data), len(data))
        try:
            self._parse()
        except ElfError:
            raise
        except _parse_errors() as e:
            raise ElfError(path, f"truncated or corrupt ELF: {e}") from None

    def _parse(self) -> None:
        elf = self.elf
        if elf["e_type"] not in ("ET_REL", "ET_EXEC", "ET_DYN"):
            raise ElfError(self.path, f"cannot write sections into ELF type {elf['e_type']}")
        count = elf.num_sections()
        if count == 0:
            raise ElfError(self.path, "ELF has no section header table")
        if elf["e_shentsize"] != elf.structs.Elf_Shdr.sizeof():
            raise ElfError(self.path, f"unexpected e_shentsize {elf['e_shentsize']}")
        self.executable = elf["e_type"] != "ET_REL"
        # A producer that chose extended numbering for a small count wants it kept; one
        # that needed it for >= SHN_LORESERVE sections gets the plain form back if removals
        # bring the count down.
        self.keep_extended = elf["e_shnum"] == 0 and count < _SHN_LORESERVE
        self.headers: list[Container] = []
        self.names: list[str] = []
        for index, section in enumerate(elf.iter_sections()):
            _check_section_bounds(self.path, index, section, len(self.data))
            self.headers.append(_copy(section.header))
            self.names.append(section.name)
        self.shstrndx = elf.get_shstrndx()
        if not 0 < self.shstrndx < count:
            raise ElfError(self.path, f"section name table index {self.shstrndx} out of range")
        shstr = self.headers[self.shstrndx]
        self.shstrtab = self.data[shstr["sh_offset"]:shstr["sh_offset"] + shstr["sh_size"]]

    def rewrite(self, sections: Mapping[str, bytes | None]) -> bytearray:
        in_place: dict[int, bytes] = {}  # pinned index -> same-size contents
        moved: dict[int, bytes] = {}  # existing index -> new contents appended at the end
        added: list[tuple[str, bytes]] = []
        removed: set[int] = set()
        for name, contents in sections.items():
            index = self._index_of(name)
            if contents is None:
                if index is not None:
                    self._check_removable(index)
                    removed.add(index)
            elif index is None:
                added.append((name, bytes(contents)))
            elif self._check_replaceable(index, contents):
                in_place[index] = bytes(contents)
            else:
                moved[index] = bytes(contents)
        return self._layout(in_place, moved, added, removed)

    def _index_of(self, name: str) -> int | None:
        indexes = [i for i, n in enumerate(self.names) if i and n == name]
        if len(indexes) > 1:
            raise ElfError(self.path, f"section {name} appears {len(indexes)} times")
        if indexes and indexes[0] == self.shstrndx:
            raise ElfError(self.path, f"refusing to rewrite the section name table {name}")
        return indexes[0] if indexes else None

    def _is_pinned(self, index: int) -> bool:
        """Allocated sections of executables sit inside segments: they cannot move."""
        return self.executable and bool(self.headers[index]["sh_flags"] & _SHF_ALLOC)

    def _check_replaceable(self, index: int, contents: bytes) -> bool:
        """Validate a replacement; True means overwrite in place, False means move."""
        header, name = self.headers[index], self.names[index]
        if header["sh_type"] != "SHT_PROGBITS":
            raise ElfError(self.path, f"refusing to replace section {name} of type "
                                      f"{header['sh_type']} (only SHT_PROGBITS)")
        if not self._is_pinned(index):
            return False
        if len(contents) != header["sh_size"]:
            raise ElfError(self.path, f"section {name} is loaded in a segment: new size "
                                      f"{len(contents)} must equal old size {header['sh_size']}")
        return True

    def _check_removable(self, index: int) -> None:
        header, name = self.headers[index], self.names[index]
        if header["sh_type"] != "SHT_PROGBITS" or self._is_pinned(index):
            raise ElfError(self.path, f"refusing to remove section [{index}] {name} "
                                      f"(type {header['sh_type']}, flags {header['sh_flags']:#x})")
        if index in self._referenced_indexes():
            raise ElfError(self.path, f"refusing to remove section [{index}] {name}: "
                                      "other sections or symbols refer to it")

    def _referenced_indexes(self) -> set[int]:
        refs: set[int] = set()
        for index, header in enumerate(self.headers):
            kind = header["sh_type"]
            refs.add(header["sh_link"])
            if kind in ("SHT_REL", "SHT_RELA") or header["sh_flags"] & _SHF_INFO_LINK:
                refs.add(header["sh_info"])
            if kind == "SHT_GROUP":
                refs.update(self._words(index)[1:])  # word 0 is the group flags
            elif kind == "SHT_SYMTAB_SHNDX":
                refs.update(self._words(index))
            elif kind in ("SHT_SYMTAB", "SHT_DYNSYM"):
                refs.update(self._symbol_section_indexes(index))
        return refs

    def _words(self, index: int) -> tuple[int, ...]:
        header = self.headers[index]
        raw = self.data[header["sh_offset"]:header["sh_offset"] + header["sh_size"]]
        endian = "<" if self.elf.little_endian else ">"
        return struct.unpack(f"{endian}{len(raw) // 4}I", raw[: len(raw) // 4 * 4])

    def _symbol_section_indexes(self, index: int) -> Iterator[int]:
        for symbol in self.elf.get_section(index).iter_symbols():
            shndx = symbol["st_shndx"]
            if isinstance(shndx, int):  # special indexes (SHN_UNDEF, SHN_ABS...) are strings
                yield shndx

    def _layout(self, in_place: dict[int, bytes], moved: dict[int, bytes],
                added: list[tuple[str, bytes]], removed: set[int]) -> bytearray:
        headers = [_copy(h) for h in self.headers]
        shstrtab = bytearray(self.shstrtab)
        new_strtab = False
        for name, _ in added:
            if _find_string(shstrtab, name) is None:
                shstrtab += name.encode() + b"\0"
                new_strtab = True
        rewritten = set(moved) | removed | ({self.shstrndx} if new_strtab else set())
        # One copy of the kept prefix (a vmlinux is hundreds of MiB: no extra copies).
        out = bytearray(memoryview(self.data)[: self._live_end(rewritten)])
        for index, contents in in_place.items():  # pinned sections are live: before the cut
            offset = self.headers[index]["sh_offset"]
            out[offset:offset + len(contents)] = contents
        for index in removed:
            headers[index] = self._null_header()
        while len(headers) > 1 and len(headers) - 1 in removed:
            headers.pop()  # trailing removals: dropping them shifts no index
        for index, contents in sorted(moved.items()):
            self._append(out, headers[index], contents, headers[index]["sh_addralign"])
        for name, contents in added:
            header = self._new_header(_find_string(shstrtab, name) or 0)
            self._append(out, header, contents, _NEW_SECTION_ALIGN)
            headers.append(header)
        if new_strtab:
            self._append(out, headers[self.shstrndx], bytes(shstrtab), 1)
        self._append_header_table(out, headers)
        return out

    def _live_end(self, rewritten: set[int]) -> int:
        """First offset after every byte that stays referenced from the old layout."""
        elf = self.elf
        end = elf["e_ehsize"]
        if elf["e_phoff"]:
            end = max(end, elf["e_phoff"] + elf.num_segments() * elf["e_phentsize"])
        for segment in elf.iter_segments():
            end = max(end, segment["p_offset"] + segment["p_filesz"])
        for index, header in enumerate(self.headers):
            if index in rewritten or header["sh_type"] in ("SHT_NOBITS", "SHT_NULL"):
                continue
            end = max(end, header["sh_offset"] + header["sh_size"])
        return end

    def _null_header(self) -> Container:
        header = _copy(self.headers[0])
        for key in header:
            header[key] = 0
        header["sh_type"] = "SHT_NULL"
        return header

    def _new_header(self, name_offset: int) -> Container:
        header = self._null_header()
        header["sh_name"] = name_offset
        header["sh_type"] = "SHT_PROGBITS"
        header["sh_addralign"] = _NEW_SECTION_ALIGN
        return header

    @staticmethod
    def _append(out: bytearray, header: Container, contents: bytes, align: int) -> None:
        # sh_addralign comes from the file (2**30, 2**63...): it may pad the file offset,
        # never size the output.  Moved sections are never mapped from the file (an
        # executable's allocated sections are pinned; a module's are copied by the loader
        # into memory it aligns by sh_addralign itself), so a capped file alignment loses
        # nothing; the header keeps its sh_addralign.
        _pad(out, min(align, _MAX_FILE_ALIGN))
        header["sh_offset"] = len(out)
        header["sh_size"] = len(contents)
        out += contents

    def _append_header_table(self, out: bytearray, headers: list[Container]) -> None:
        elf = self.elf
        count = len(headers)
        # Extended numbering: with >= SHN_LORESERVE sections e_shnum is 0 and section 0's
        # sh_size holds the count; otherwise section 0's sh_size must stay 0.
        extended = count >= _SHN_LORESERVE or self.keep_extended
        headers[0]["sh_size"] = count if extended else 0
        e_shnum = 0 if extended else count
        _pad(out, elf.elfclass // 8)
        e_shoff = len(out)
        for header in headers:
            out += elf.structs.Elf_Shdr.build(header)
        endian = "<" if elf.little_endian else ">"
        if elf.elfclass == 64:
            struct.pack_into(f"{endian}Q", out, 0x28, e_shoff)
            struct.pack_into(f"{endian}H", out, 0x3C, e_shnum)
        else:
            struct.pack_into(f"{endian}I", out, 0x20, e_shoff)
            struct.pack_into(f"{endian}H", out, 0x30, e_shnum)


def _copy(header: Container) -> Container:
    import copy

    return copy.copy(header)


def _find_string(table: bytes | bytearray, name: str) -> int | None:
    """Offset of `name` in a string table; a hit inside a longer name is fine (ELF shares
    suffixes) because the needle ends with the NUL terminator."""
    pos = table.find(name.encode() + b"\0", 1)  # offset 0 is the mandatory empty string
    return pos if pos > 0 else None


def _pad(out: bytearray, align: int) -> None:
    align = align if align > 0 and align & (align - 1) == 0 else 1
    out += b"\0" * (-len(out) % align)


def _compress(compression: str | None, data: bytearray) -> bytes | bytearray:
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


def _verify_written(tmp: Path, dst: Path, compression: str | None,
                    sections: Mapping[str, bytes | None]) -> None:
    """Re-read what was written and check it holds exactly the requested sections."""
    try:
        image = _load(tmp)
        elf = _open_elf(tmp, io.BytesIO(image.data), len(image.data))
        found = _read_named_sections(tmp, elf, len(image.data), set(sections))
    except ElfError as e:  # name the destination, not our temporary file
        raise ElfError(dst, f"verification failed: {e.reason}") from None
    if image.compression != compression:
        raise ElfError(dst, f"verification failed: compression {image.compression} "
                            f"instead of {compression}")
    for name, contents in sections.items():
        if found.get(name) != (None if contents is None else bytes(contents)):
            raise ElfError(dst, f"verification failed: section {name} not as requested")


def _owner_and_mode(src: Path, target: Path) -> tuple[int, int, int] | None:
    """uid, gid and permission bits for the new file.

    The bits are always the module's own (src): the new file is that module, rewritten;
    whatever sat at the destination before (say a 0666 scratch file) says nothing about
    who may read or write a kernel module.  The owner is the replaced regular file's (root
    rewriting someone's file leaves it theirs), else src's."""
    try:
        st = os.stat(src)
    except OSError:
        return None
    uid, gid = st.st_uid, st.st_gid
    mode = stat.S_IMODE(st.st_mode)
    if os.path.realpath(target) != os.path.realpath(src):
        mode &= 0o777  # a copy gets no set-id or sticky bits
    try:
        old = os.stat(target)
    except OSError:
        pass
    else:
        if stat.S_ISREG(old.st_mode):
            uid, gid = old.st_uid, old.st_gid
    return uid, gid, mode


def _atomic_write(dst: Path, target: Path, payload: bytes | bytearray,
                  verify: Callable[[Path], None], like: tuple[int, int, int] | None) -> None:
    """Replace `target` (dst with symlinks resolved, see output_target) with `payload`
    through cache.atomic_output, `verify` checking the temporary file before the rename;
    errors name `dst`, the path the user gave."""
    from .cache import atomic_output, write_all

    try:
        with atomic_output(target, mode=None, verify=verify) as f:
            write_all(f, payload)
            _copy_owner_and_mode(f.fileno(), like)
    except ElfError:
        raise
    except OSError as e:
        raise ElfError(dst, f"cannot write: {e.strerror or e}") from None


def _copy_owner_and_mode(fd: int, like: tuple[int, int, int] | None) -> None:
    if like is None:
        os.fchmod(fd, 0o644)
        return
    uid, gid, mode = like
    if (uid, gid) != (os.geteuid(), os.getegid()):
        # Root rewriting a file it does not own keeps the owner; an unprivileged user
        # writing a copy simply owns it.
        with contextlib.suppress(PermissionError):
            os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


