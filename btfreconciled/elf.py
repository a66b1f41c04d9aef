"""Read the BTF sections of kernel ELF files.

Reading: `.ko`/vmlinux ELF files, plain or xz/zstd/gzip compressed (detected by magic
bytes), raw BTF files such as /sys/kernel/btf/vmlinux, and x86 kernel images (bzImage,
/boot/vmlinuz-*: their vmlinux's .BTF, see kimage.py). Parsing is pyelftools'; we only
add the bounds checks pyelftools skips (it reads a BytesIO, which silently returns short
data past EOF) and turn every parse failure into a one-line `ElfError`.

Compressed files are compression.py's to unpack; writing sections is elfwrite.py's.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from .compression import CompressionError, decompress
from .compression import detect as _detect_compression
from .errors import ErrorCode
from .inputs import ElfError, open_regular

# pyelftools and cache (hashlib) are imported where they are used (as compression.py and elfwrite.py
# do with zstandard, lzma, gzip, copy and tempfile): together they cost ~30 ms at start-up,
# and a command reading a raw BTF file such as /sys/kernel/btf/vmlinux (`btfreconcilectl
# dump`) needs none of them.
if TYPE_CHECKING:
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

# Inputs are untrusted: sizes from a file never size an allocation unchecked.
# The largest Debian module (amdgpu, 6.12) is 4 MiB compressed and 30 MiB decompressed; a raw
# vmlinux BTF is ~5 MiB. An uncompressed ELF (a vmlinux with debug info: up to ~1 GiB) is
# never read whole: only its section headers and .BTF* sections, each within MAX_FILE_SIZE.
MAX_FILE_SIZE = 256 << 20  # bytes read from one file (compressed module, raw BTF, a section)
MAX_DECOMPRESSED_SIZE = 128 << 20  # a compressed module's payload
# An uncompressed ELF is read by its headers and .BTF* sections only, but hashed whole: the
# file itself is bounded too, by its fstat size before any byte is read or hashed (a sparse
# file claims any size for free, and hashing 100 GiB of holes takes minutes). Modules are
# held to MAX_FILE_SIZE (reconcile_module_file, the daemon's max_module_bytes); this bound
# is for what else is read as ELF, such as a vmlinux with debug info (~1 GiB).
MAX_ELF_SIZE = 2 << 30

_ELF_MAGIC = b"\x7fELF"
_BTF_MAGICS = (b"\x9f\xeb", b"\xeb\x9f")  # 0xeB9F little- and big-endian
_HEAD_LEN = 0x206  # enough for the compression magics and a bzImage's "HdrS" at 0x202

_SHF_COMPRESSED = 0x800


def _parse_errors() -> tuple[type[BaseException], ...]:
    """pyelftools' ELFError and Python's own errors it lets escape on malformed input (bad
    offsets, enum values, string decoding): all of them mean "this is not a well-formed ELF".
    A function so that pyelftools is imported only once an ELF is parsed (an `except`
    clause's expression is evaluated only when an exception reaches it)."""
    from elftools.common.exceptions import ELFError

    return (ELFError, struct.error, ValueError, IndexError, KeyError, TypeError,
            AttributeError, AssertionError, OverflowError)


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
    # (st_dev, st_ino) of the open file the bytes were read from, for a file read whole as
    # uncompressed raw BTF (the only form /sys/kernel/btf/* takes); None otherwise. Whether
    # the kernel already verified these bytes is decided from this, never from the path
    # (btf/load.py: is_kernel_verified).
    raw_file_id: tuple[int, int] | None = None

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
    data: bytes | bytearray  # a decompressed payload is a bytearray (compression.decompress)

    @property
    def is_elf(self) -> bool:
        return self.data.startswith(_ELF_MAGIC)


# --------------------------------------------------------------------------- reading


def read_btf_sections(path: str | os.PathLike[str], *, digest: bool = True,
                      max_size: int | None = None,
                      max_file_size: int | None = None) -> BtfSections:
    """Read `.BTF`, `.BTF.base` and `.BTF.base_expects` from an ELF or raw BTF file;
    `digest=False` skips hashing the file (`sha256` is then None). Only regular files are
    read (a FIFO or device is refused without blocking); `max_size` (default MAX_FILE_SIZE)
    bounds what is read from the file and what a compressed payload may decompress to.
    `max_file_size` bounds an uncompressed ELF file's own size (default: `max_size` when
    given, else MAX_ELF_SIZE); a larger one is refused before anything is read."""
    p = Path(path)
    cap = max_size or MAX_FILE_SIZE
    elf_cap = max_file_size or max_size or MAX_ELF_SIZE
    fd, size = open_regular(p)
    st = os.fstat(fd)
    with open(fd, "rb") as f:
        try:
            head = f.read(_HEAD_LEN)
        except OSError as e:
            raise ElfError(p, f"cannot read: {e.strerror or e}",
                           ErrorCode.INPUT_UNREADABLE) from None
        if head[:2] == b"MZ" and head[0x202:0x206] == b"HdrS":
            return _read_kernel_image(p, f, size, cap, max_size, digest)
        if _detect_compression(head) is None and head.startswith(_ELF_MAGIC):
            _check_size(p, size, elf_cap)
            # pyelftools seeks to what it needs: headers and the .BTF* sections
            try:
                found = _plain_sections(_file_reader(f), size, set(_READ_SECTIONS), cap)
            except OSError:
                found = None  # pyelftools' path below says what is wrong
            if found is None:
                f.seek(0)
                found = _read_named_sections(p, _open_elf(p, f, size), size,
                                             set(_READ_SECTIONS), cap)
            sha = _sha256_stream(p, f, elf_cap) if digest else None
            return BtfSections(p, None, found.get(BTF_SECTION), found.get(BTF_BASE_SECTION),
                               found.get(BTF_BASE_EXPECTS_SECTION), True, sha,
                               found.get(BUILD_ID_SECTION), found.get(MODINFO_SECTION))
        # st_size of sysfs files is 0 or 4096: only real files are refused here
        _check_size(p, size, cap)
        f.seek(0)
        raw = _read_capped(p, f, cap)
    image = _image(p, raw, min(cap, MAX_DECOMPRESSED_SIZE) if max_size is None else cap)
    if image.is_elf:
        found = _plain_sections(_bytes_reader(image.data), len(image.data),
                                set(_READ_SECTIONS), cap)
        if found is None:
            found = _read_named_sections(
                image.path, _open_elf(image.path, io.BytesIO(image.data), len(image.data)),
                len(image.data), set(_READ_SECTIONS), cap)
    else:
        found = {BTF_SECTION: bytes(image.data)}
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
        raw_file_id=(st.st_dev, st.st_ino)
        if image.compression is None and not image.is_elf else None,
    )


def read_elf_sections(path: str | os.PathLike[str], names: set[str],
                      max_size: int | None = None) -> dict[str, bytes]:
    """The sections named `names` of an uncompressed ELF file (those it has), read with the
    same bounds as read_btf_sections; never the whole file (a debug vmlinux is ~1 GiB)."""
    p = Path(path)
    cap = max_size or MAX_FILE_SIZE
    fd, size = open_regular(p)
    with open(fd, "rb") as f:
        try:
            found = _plain_sections(_file_reader(f), size, set(names), cap)
        except OSError:
            found = None
        if found is None:
            f.seek(0)
            found = _read_named_sections(p, _open_elf(p, f, size), size, set(names), cap)
    return found


def _read_kernel_image(p: Path, f: io.BufferedReader, size: int, cap: int,
                       max_size: int | None, digest: bool) -> BtfSections:
    """A bzImage (/boot/vmlinuz-*): only its vmlinux's .BTF, so callers treat it like a raw
    BTF file (is_elf False: no .BTF.base, not a module); `compression` says what it was."""
    from . import kimage

    _check_size(p, size, cap)
    found = kimage.read_kernel_image_btf(
        p, f, max_btf=min(cap, kimage.MAX_BTF),
        max_decompressed=max_size or kimage.MAX_DECOMPRESSED)
    sha = _sha256_stream(p, f, cap) if digest else None
    return BtfSections(p, f"bzImage+{found.compression}", found.btf, None, None, False, sha)


MODULE_SIGNATURE_MAGIC = b"~Module signature appended~\n"


def module_is_signed(path: str | os.PathLike[str]) -> bool:
    """The module (decompressed) ends with an appended signature (scripts/sign-file)."""
    return _load(Path(path)).data.endswith(MODULE_SIGNATURE_MAGIC)


def sha256_file(path: str | os.PathLike[str], *, follow_symlinks: bool = True,
                max_size: int = MAX_ELF_SIZE) -> str:
    """sha256 of a regular file's bytes as stored (never blocks on a FIFO or device); a file
    larger than `max_size` is refused (ElfError) before a byte is hashed."""
    p = Path(path)
    fd, size = open_regular(p, follow_symlinks=follow_symlinks)
    with open(fd, "rb") as f:
        _check_size(p, size, max_size)
        return _sha256_stream(p, f, max_size)


def _check_size(path: Path, size: int, limit: int) -> None:
    """Refuse a file by its fstat size, before reading or hashing it."""
    if size > limit:
        raise ElfError(path, f"{size} bytes, larger than {limit}; refusing",
                       ErrorCode.INPUT_TOO_LARGE)


def _sha256(data: bytes) -> str:
    from .cache import sha256_hex  # (cache imports hashlib, json, tempfile: not at start-up)

    return sha256_hex(data)


def _sha256_stream(path: Path, f: io.BufferedReader, limit: int = MAX_ELF_SIZE) -> str:
    """sha256 of the whole open file, refused once more than `limit` bytes came: a file
    that grows while it is hashed (or a size that lied) never makes the work unbounded."""
    import hashlib

    h = hashlib.sha256()
    total = 0
    try:
        f.seek(0)
        while chunk := f.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise ElfError(path, f"larger than {limit} bytes; refusing",
                               ErrorCode.INPUT_TOO_LARGE)
            h.update(chunk)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None
    return h.hexdigest()


def _load(path: Path) -> _Image:
    fd, size = open_regular(path)
    with open(fd, "rb") as f:
        _check_size(path, size, MAX_FILE_SIZE)
        raw = _read_capped(path, f, MAX_FILE_SIZE)
    image = _image(path, raw, MAX_DECOMPRESSED_SIZE)
    return image._replace(data=bytes(image.data))  # the writer slices it as bytes


def _image(path: Path, raw: bytes, cap: int) -> _Image:
    if not raw:
        raise ElfError(path, "empty file", ErrorCode.INPUT_NOT_REGULAR)
    compression = _detect_compression(raw)
    try:
        data = raw if compression is None else decompress(compression, raw, cap)
    except CompressionError as e:
        raise ElfError(path, str(e), ErrorCode.INPUT_TOO_LARGE if e.too_large
                       else ErrorCode.ELF_INVALID) from None
    if not (data.startswith(_ELF_MAGIC) or data[:2] in _BTF_MAGICS):
        what = "decompressed data" if compression else "file"
        raise ElfError(path, f"{what} is neither ELF nor BTF (magic {data[:4].hex()})")
    return _Image(path=path, raw=raw, compression=compression, data=data)


def _read_capped(path: Path, f: io.BufferedReader, cap: int) -> bytes:
    """Read to EOF (sysfs BTF files must be read until read() returns 0, never sized by
    st_size), refusing more than `cap` bytes and a file that would block (/proc/kmsg)."""
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = f.read1(1 << 20)
            if chunk is None:
                raise ElfError(path, "reading would block: not a plain file",
                               ErrorCode.INPUT_NOT_REGULAR)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise ElfError(path, f"larger than {cap} bytes; refusing",
                               ErrorCode.INPUT_TOO_LARGE)
            chunks.append(chunk)
    except BlockingIOError:
        raise ElfError(path, "reading would block: not a plain file",
                       ErrorCode.INPUT_NOT_REGULAR) from None
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


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
    return ElfError(path, f"cannot read: {e.strerror or e}",
                    ErrorCode.INPUT_UNREADABLE)


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


# ELF header and section header layouts (after e_ident) per class, for _plain_sections
_EHDR = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}
_SHDR = {1: "IIIIIIIIII", 2: "IIQQQQIIQQ"}
_SHT_NULL, _SHT_NOBITS = 0, 8
_SHN_LORESERVE = 0xFF00


def _plain_sections(read: Callable[[int, int], bytes], size: int, wanted: set[str],
                    cap: int) -> dict[str, bytes] | None:
    """The `wanted` sections of a well-formed ELF, read with struct alone (pyelftools costs
    ~0.7 ms per module, most of what reading a small module takes). None whenever anything
    is unusual (extended section numbering, odd entry sizes, a bound crossed, a duplicate,
    SHT_NOBITS or SHF_COMPRESSED, non-ASCII names, ...): the caller then reads the file with
    pyelftools and _read_named_sections, which reports the problem, so every error stays
    exactly what it was. `read(offset, n)` returns fewer than n bytes past the end."""
    ident = read(0, 16)
    if len(ident) < 16 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    order = "<" if ident[5] == 1 else ">"
    ehdr = struct.Struct(order + _EHDR[ident[4]])
    shdr = struct.Struct(order + _SHDR[ident[4]])
    head = read(16, ehdr.size)
    if len(head) < ehdr.size:
        return None
    *_, shoff, _flags, _ehsize, _phentsize, _phnum, shentsize, shnum, shstrndx = \
        ehdr.unpack(head)
    if (not shoff or not shnum or shentsize != shdr.size or not shstrndx
            or shstrndx >= min(shnum, _SHN_LORESERVE) or shoff + shnum * shentsize > size):
        return None
    table = read(shoff, shnum * shentsize)
    if len(table) != shnum * shentsize:
        return None
    # (sh_name, sh_type, sh_flags, sh_offset, sh_size) per section
    heads = [(h[0], h[1], h[2], h[4], h[5]) for h in shdr.iter_unpack(table)]
    for _name, typ, _fl, off, sz in heads:
        if typ not in (_SHT_NULL, _SHT_NOBITS) and off + sz > size:
            return None
    _n, styp, _sf, soff, ssz = heads[shstrndx]
    if styp == _SHT_NOBITS or ssz > cap:
        return None
    names = read(soff, ssz)
    want = {n.encode(): n for n in wanted}
    found: dict[str, bytes] = {}
    for name_off, typ, flags, off, sz in heads:
        end = names.find(b"\0", name_off)
        if end < 0:
            return None
        name = names[name_off:end]
        if not name.isascii():
            return None
        key = want.get(name)
        if key is None:
            continue
        if key in found or typ == _SHT_NOBITS or flags & _SHF_COMPRESSED or sz > cap:
            return None
        data = read(off, sz)
        if len(data) != sz:
            return None
        found[key] = data
    return found


def _file_reader(f: BinaryIO) -> Callable[[int, int], bytes]:
    def read(off: int, n: int) -> bytes:
        f.seek(off)
        return f.read(n)
    return read


def _bytes_reader(data: bytes | bytearray) -> Callable[[int, int], bytes]:
    view = memoryview(data)

    def read(off: int, n: int) -> bytes:
        return bytes(view[off:off + n])
    return read


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

