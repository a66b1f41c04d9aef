"""The BTF base a kernel's build directory needs: `$(objtree)/vmlinux` as Kbuild reads it.

Kbuild gives a module BTF only when `$(objtree)/vmlinux` exists (scripts/Makefile.modfinal;
Linux 6.19+ through scripts/gen-btf.sh). Both tools it runs open that file the same way:
`pahole -J --btf_base vmlinux` and `resolve_btfids -b vmlinux` (`--btf_base` in 6.19+) call
libbpf's `btf__parse(path, NULL)`, which takes a raw BTF file as it is and, for an ELF, reads
the section named `.BTF` (it must be SHT_PROGBITS since libbpf 1.5), locating it through the
section header table and the section-name table; the ELF class only sets the pointer size.
Nothing reads the base's symbols or `.BTF_ids`: resolve_btfids resolves the *module's*
`.BTF_ids` against the module's own symbol table. Debian 13's shipped file has `.BTF_ids`
and a symbol table only because it was cut from the real vmlinux with objcopy, which keeps
them. So the smallest file both tools read is: an ELF header, `.BTF`, the section names and
the section header table. We add one note section (`.note.btfreconciled`) that marks the
file as ours: `headers --remove` deletes only a file carrying it.

Also here: which kernel release a kernel image says it is (a bzImage's setup-header version
string, a vmlinux ELF's `linux_banner`), to refuse another kernel's image.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from .elf import ElfError
from .errors import ErrorCode

MARK_SECTION = ".note.btfreconciled"
MARK_OWNER = b"btfreconciled"
MARK_TYPE = 1  # our note's type (the owner name scopes it)

_ELF_MAGIC = b"\x7fELF"
_ET_EXEC = 2
_SHT_PROGBITS, _SHT_STRTAB, _SHT_NOTE = 1, 3, 7
EM_NONE, EM_386, EM_X86_64 = 0, 3, 62
# os.uname().machine -> e_machine, for raw BTF that carries no ELF header of its own
_MACHINES = {"x86_64": EM_X86_64, "i686": EM_386, "i386": EM_386, "aarch64": 183,
             "arm64": 183, "riscv64": 243, "s390x": 22, "ppc64le": 21, "ppc64": 21,
             "loongarch64": 258}


class ElfShape(NamedTuple):
    """What our file copies from the kernel's own vmlinux: class, byte order, machine."""

    bits64: bool
    little: bool
    machine: int


def host_shape(btf: bytes) -> ElfShape:
    """The running machine's shape, in `btf`'s byte order (raw BTF has nothing else)."""
    little = btf[:2] == b"\x9f\xeb"
    machine = _MACHINES.get(os.uname().machine, EM_NONE)
    return ElfShape(struct.calcsize("P") == 8, little, machine)


def elf_shape(head: bytes) -> ElfShape | None:
    """The shape of an ELF file from its first 20 bytes; None if it is not ELF."""
    if len(head) < 20 or not head.startswith(_ELF_MAGIC) or head[4] not in (1, 2) \
            or head[5] not in (1, 2):
        return None
    little = head[5] == 1
    (machine,) = struct.unpack_from("<H" if little else ">H", head, 18)
    return ElfShape(head[4] == 2, little, machine)


def bzimage_shape(setup: bytes, btf: bytes) -> ElfShape:
    """An x86 bzImage's vmlinux: 64-bit when xloadflags has XLF_KERNEL_64 (boot protocol
    2.12+; older 64-bit kernels are assumed, the common case)."""
    (protocol,) = struct.unpack_from("<H", setup, 0x206)
    bits64 = True
    if protocol >= 0x20C and len(setup) >= 0x238:
        (xloadflags,) = struct.unpack_from("<H", setup, 0x236)
        bits64 = bool(xloadflags & 1)
    return ElfShape(bits64, btf[:2] == b"\x9f\xeb", EM_X86_64 if bits64 else EM_386)


def mark_text(release: str, source: str, btf_sha256: str) -> bytes:
    """Our note's contents: readable with `readelf -p .note.btfreconciled`."""
    return (f"made by btfreconcilectl headers\nrelease={release}\nsource={source}\n"
            f"btf-sha256={btf_sha256}\n").encode("utf-8", "surrogateescape")


def build_base_elf(btf: bytes, shape: ElfShape, mark: bytes) -> bytes:
    """ELF header | .BTF | .note.btfreconciled | .shstrtab | section headers."""
    order = "<" if shape.little else ">"
    ehsize, shentsize = (64, 64) if shape.bits64 else (52, 40)
    names = b"\0.BTF\0" + MARK_SECTION.encode() + b"\0.shstrtab\0"
    owner = MARK_OWNER + b"\0"
    note = (struct.pack(order + "III", len(owner), len(mark), MARK_TYPE)
            + owner + bytes(-len(owner) % 4) + mark + bytes(-len(mark) % 4))
    out = bytearray(ehsize)
    sections: list[tuple[int, int, int, int, int]] = []  # name, type, offset, size, align

    def put(name: bytes, kind: int, data: bytes, align: int) -> None:
        out.extend(bytes(-len(out) % align))
        sections.append((names.index(b"\0" + name + b"\0") + 1, kind, len(out), len(data),
                         align))
        out.extend(data)

    put(b".BTF", _SHT_PROGBITS, btf, 8)
    put(MARK_SECTION.encode(), _SHT_NOTE, note, 4)
    put(b".shstrtab", _SHT_STRTAB, names, 1)
    out.extend(bytes(-len(out) % 8))
    shoff = len(out)
    out += bytes(shentsize)  # section 0
    for name, kind, offset, size, align in sections:
        if shape.bits64:
            out += struct.pack(order + "IIQQQQIIQQ", name, kind, 0, 0, offset, size, 0, 0,
                               align, 0)
        else:
            out += struct.pack(order + "IIIIIIIIII", name, kind, 0, 0, offset, size, 0, 0,
                               align, 0)
    ident = _ELF_MAGIC + bytes((2 if shape.bits64 else 1, 1 if shape.little else 2, 1)) \
        + bytes(9)
    if shape.bits64:
        header = struct.pack(order + "HHIQQQIHHHHHH", _ET_EXEC, shape.machine, 1, 0, 0,
                             shoff, 0, ehsize, 0, 0, shentsize, len(sections) + 1,
                             len(sections))
    else:
        header = struct.pack(order + "HHIIIIIHHHHHH", _ET_EXEC, shape.machine, 1, 0, 0,
                             shoff, 0, ehsize, 0, 0, shentsize, len(sections) + 1,
                             len(sections))
    out[:ehsize] = ident + header
    return bytes(out)


def parse_mark(note: bytes | None, little: bool) -> dict[str, str] | None:
    """Our note's key=value lines, or None when `note` is not our note."""
    if not note or len(note) < 12:
        return None
    namesz, descsz, ntype = struct.unpack_from("<III" if little else ">III", note, 0)
    desc = 12 + ((namesz + 3) & ~3)
    if ntype != MARK_TYPE or note[12:12 + namesz] != MARK_OWNER + b"\0" \
            or desc + descsz > len(note):
        return None
    text = note[desc:desc + descsz].decode("utf-8", "surrogateescape")
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def rebuild_hint(release: str) -> str:
    """How to build an out-of-tree module for kernel `release` again (DKMS, or by hand)."""
    return (f"rebuild the module: dkms install --force MODULE/MODULE-VERSION -k {release}, "
            f"or make against /lib/modules/{release}/build")


def no_btf_remedy(release: str, *, force: bool = False) -> str:
    """The one-line fix for an out-of-tree module built for kernel `release` without BTF
    (Kbuild found no vmlinux in the build directory): give the build directory `release`'s
    own BTF base, then build the module again. `force`: a vmlinux holding other BTF is in
    the way (`headers` replaces it only when told to)."""
    return (f"btfreconcilectl headers {release}{' --force' if force else ''} (writes "
            f"{release}'s BTF base into /lib/modules/{release}/build/vmlinux), then "
            f"{rebuild_hint(release)}")


# --------------------------------------------------------------------------- releases

_RELEASE = re.compile(rb"\A[0-9][!-~]*\Z")  # printable, no spaces, starts like a version
_BANNER = re.compile(rb"Linux version ([0-9][!-~]*) \(")
_CHUNK = 8 << 20


def bzimage_release(path: Path, setup: bytes) -> str | None:
    """The release in a bzImage's kernel_version string (boot protocol 2.00+: a pointer at
    0x20e, relative to 0x200, to "6.12.48+deb13-amd64 (builder@host) #1 SMP ...")."""
    (protocol,) = struct.unpack_from("<H", setup, 0x206)
    (pointer,) = struct.unpack_from("<H", setup, 0x20E)
    if protocol < 0x200 or not pointer:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(pointer + 0x200)
            text = f.read(256)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None
    first = text.split(b"\0", 1)[0].split(b" ", 1)[0]
    return first.decode("ascii") if _RELEASE.match(first) else None


def vmlinux_release(path: Path) -> str | None:
    """The release in a vmlinux ELF's linux_banner ("Linux version 6.12.48+deb13-amd64
    (..."), found in .rodata (the whole file when there is none)."""
    try:
        with open(path, "rb") as f:
            start, end = _rodata_range(f)
            return _scan_banner(f, start, end)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None


def _rodata_range(f: BinaryIO) -> tuple[int, int]:
    """Where .rodata lies in the file, or the whole file when the table says nothing."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(64)
    shape = elf_shape(head)
    if shape is None:
        return 0, size
    order = "<" if shape.little else ">"
    if shape.bits64:
        shoff, = struct.unpack_from(order + "Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", head, 0x3A)
        fmt = order + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(order + "I", head, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", head, 0x2E)
        fmt = order + "IIIIIIIIII"
    if not shoff or shentsize != struct.calcsize(fmt) or not 0 < shstrndx < shnum \
            or shoff + shnum * shentsize > size:
        return 0, size
    f.seek(shoff)
    table = [h for h in struct.iter_unpack(fmt, f.read(shnum * shentsize))]
    names_off, names_size = table[shstrndx][4], table[shstrndx][5]
    if names_off + names_size > size or names_size > 1 << 20:
        return 0, size
    f.seek(names_off)
    names = f.read(names_size)
    for h in table:
        if names[h[0]:h[0] + 8] == b".rodata\0" and h[1] == _SHT_PROGBITS \
                and h[4] + h[5] <= size:
            return h[4], h[4] + h[5]
    return 0, size


def _scan_banner(f: BinaryIO, start: int, end: int) -> str | None:
    overlap = 256
    carry = b""
    pos = start
    f.seek(start)
    while pos < end:
        chunk = f.read(min(_CHUNK, end - pos))
        if not chunk:
            break
        pos += len(chunk)
        data = carry + chunk
        m = _BANNER.search(data)
        if m:
            return m.group(1).decode("ascii")
        carry = data[-overlap:]
    return None
