"""Write the BTF sections of kernel ELF files (pyelftools cannot write).

`write_btf_sections` adds, replaces or removes non-allocated sections such as `.BTF.base`
without renumbering any existing section, because symbols, relocations, groups and
sh_link/sh_info refer to sections by index. Layout rules:

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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .compression import compress
from .elf import (
    ElfError,
    _check_section_bounds,
    _load,
    _open_elf,
    _parse_errors,
    _read_named_sections,
)
from .errors import ErrorCode

# pyelftools, copy and cache (tempfile) are imported where they are used (see elf.py).
if TYPE_CHECKING:
    from elftools.construct import Container

_SHN_LORESERVE = 0xFF00
_SHF_ALLOC = 0x2
_SHF_INFO_LINK = 0x40
_NEW_SECTION_ALIGN = 4
# Most file-offset padding one section may get (a page): see _ElfRewriter._append.
_MAX_FILE_ALIGN = 4096


def write_btf_sections(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                       sections: Mapping[str, bytes | None], *,
                       backup: str | os.PathLike[str] | None = None) -> None:
    """Copy ELF `src` to `dst` with sections added/replaced (bytes) or removed (None).

    `dst` may be `src`; it is replaced atomically and keeps src's compression format and
    permission bits.  `dst` follows :func:`btfreconciled.output.output_target`: a device or
    FIFO is never replaced, a symlink is written through to its regular file.

    `backup`: keep the file `dst` names under this new name. It is made only once the new
    file is written and verified, right before that replaces `dst`; it must not exist in any
    form (not even as a symlink: ElfError, nothing touched); it is a hard link to the file,
    else (another file system) an exclusive copy, and durable before `dst` is replaced.
    When replacing fails, the backup is removed again and `dst` is left as it was.
    """
    src_path, dst_path = Path(src), Path(dst)
    backup_path = None if backup is None else Path(backup)
    for name in sections:
        if not name or "\0" in name:
            raise ElfError(src_path, f"invalid section name {name!r}")
    target = _output_target(dst_path)
    if backup_path is not None and os.path.lexists(backup_path):
        raise _backup_exists(dst_path, backup_path)
    compression, payload = _rewritten_payload(src_path, sections)
    made: list[Path] = []

    def verify(tmp: Path) -> None:
        _verify_written(tmp, dst_path, compression, sections)
        if backup_path is not None:
            _make_backup(target, backup_path, dst_path)
            made.append(backup_path)

    # checked again: building the payload took a while
    target = _output_target(dst_path)
    before = _identity(target)
    try:
        _atomic_write(dst_path, target, payload, verify, _owner_and_mode(src_path, target))
    except BaseException:
        # Only while dst still is the original: once the rename happened (a failed directory
        # fsync after it), the backup is the one copy of the original left.
        if made and _identity(target) == before:
            _remove_backup(made[0])
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _backup_exists(dst: Path, backup: Path) -> ElfError:
    return ElfError(dst, f"backup {backup} already exists: refusing to overwrite it "
                         "(move it away first)")


def _make_backup(original: Path, backup: Path, dst: Path) -> None:
    """`backup` as a new name for the regular file `original`, durable on return."""
    from .cache import fsync_dir

    try:
        os.link(original, backup, follow_symlinks=False)  # never creates through a link
    except FileExistsError:
        raise _backup_exists(dst, backup) from None
    except OSError as e:
        # another file system (dst is a symlink into one), or links not allowed there
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP,
                           errno.EOPNOTSUPP, errno.ENOSYS):
            raise ElfError(dst, f"cannot create backup {backup}: {e.strerror or e}",
                           ErrorCode.ELF_WRITE_FAILED) from None
        _copy_exclusive(original, backup, dst)
    try:
        st = os.lstat(backup)
        if not stat.S_ISREG(st.st_mode):  # `original` was swapped for something else
            raise ElfError(dst, f"backup {backup}: {original} is no longer a regular file",
                           ErrorCode.ELF_WRITE_FAILED)
        fsync_dir(backup.parent if str(backup.parent) else Path("."))
    except BaseException as e:
        _remove_backup(backup)
        if isinstance(e, OSError):
            raise ElfError(dst, f"cannot create backup {backup}: {e.strerror or e}",
                           ErrorCode.ELF_WRITE_FAILED) from None
        raise


def _copy_exclusive(original: Path, backup: Path, dst: Path) -> None:
    """A copy of `original` created as `backup` with O_EXCL (an existing name, symlink or
    not, fails), with its owner and mode bits, fsynced."""
    from .cache import write_all
    from .inputs import open_regular

    src_fd, _ = open_regular(original, follow_symlinks=False)
    with open(src_fd, "rb") as src:
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise _backup_exists(dst, backup) from None
        except OSError as e:
            raise ElfError(dst, f"cannot create backup {backup}: {e.strerror or e}",
                           ErrorCode.ELF_WRITE_FAILED) from None
        try:
            with open(fd, "wb", buffering=0) as out:
                while chunk := src.read(1 << 20):
                    write_all(out, chunk)
                st = os.fstat(src_fd)
                _copy_owner_and_mode(fd, (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
                os.fsync(fd)
        except BaseException as e:
            _remove_backup(backup)
            if isinstance(e, OSError):
                raise ElfError(dst, f"cannot create backup {backup}: {e.strerror or e}",
                               ErrorCode.ELF_WRITE_FAILED) from None
            raise


def _remove_backup(backup: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(backup)


def _output_target(dst: Path) -> Path:
    from .output import OutputError, output_target

    try:
        return output_target(dst)
    except OutputError as e:
        raise ElfError(dst, e.reason, ErrorCode.ELF_WRITE_FAILED) from None


def _rewritten_payload(src: Path, sections: Mapping[str, bytes | None],
                       ) -> tuple[str | None, bytes | bytearray]:
    """The new file as it goes on disk; the source image is freed on return, before the
    verification re-read (a vmlinux is hundreds of MiB)."""
    image = _load(src)
    if not image.is_elf:
        raise ElfError(src, "raw BTF file, not ELF: it cannot carry sections")
    elf_bytes = _ElfRewriter(src, image.data).rewrite(sections)
    return image.compression, compress(image.compression, elf_bytes)


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


def _verify_written(tmp: Path, dst: Path, compression: str | None,
                    sections: Mapping[str, bytes | None]) -> None:
    """Re-read what was written and check it holds exactly the requested sections."""
    try:
        image = _load(tmp)
        elf = _open_elf(tmp, io.BytesIO(image.data), len(image.data))
        found = _read_named_sections(tmp, elf, len(image.data), set(sections))
    except ElfError as e:  # name the destination, not our temporary file
        raise ElfError(dst, f"verification failed: {e.reason}",
                       ErrorCode.ELF_WRITE_FAILED) from None
    if image.compression != compression:
        raise ElfError(dst, f"verification failed: compression {image.compression} "
                            f"instead of {compression}", ErrorCode.ELF_WRITE_FAILED)
    for name, contents in sections.items():
        if found.get(name) != (None if contents is None else bytes(contents)):
            raise ElfError(dst, f"verification failed: section {name} not as requested",
                           ErrorCode.ELF_WRITE_FAILED)


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
    from .cache import atomic_output, write_all  # (cache imports json, tempfile: not at start-up)

    try:
        with atomic_output(target, mode=None, verify=verify) as f:
            write_all(f, payload)
            _copy_owner_and_mode(f.fileno(), like)
    except ElfError:
        raise
    except OSError as e:
        raise ElfError(dst, f"cannot write: {e.strerror or e}",
                       ErrorCode.ELF_WRITE_FAILED) from None


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

