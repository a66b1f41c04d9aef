"""Tests for btfreconciled.elf: reading/writing BTF sections of ELF files.

Needs gcc and binutils (readelf, objcopy, objdump) plus xz, zstd and gzip on PATH.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import os
import platform
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from btfreconciled import elf as elfmod
from btfreconciled import elfwrite
from btfreconciled.elf import (
    BtfSections,
    ElfError,
    read_btf_sections,
)
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.errors import ErrorCode

C_SOURCE = """
extern int ext_counter;
int global_value = 42;
static int local_state;
const char banner[] = "btfreconciled";
int helper(int x) { return x * 3 + local_state; }
int entry(int y) { ext_counter++; return helper(y) + global_value + banner[y & 7]; }
"""

PROGRAM_SOURCE = """
#include <stdio.h>
__attribute__((section(".mydata"), used)) const char mydata[8] = "ABCDEFG";
int main(void) { puts("hello from rewritten elf"); return mydata[0] == 'A' ? 0 : 1; }
"""

FAKE_BTF = b"\x9f\xeb\x01\x00" + bytes(range(60))
BTF_LE = b"\x9f\xeb\x01\x00\x18\x00\x00\x00" + bytes(16) + b"\x00"
BTF_BE = b"\xeb\x9f\x01\x00\x00\x00\x00\x18" + bytes(16) + b"\x00"


def run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True,
                          text=True).stdout


def readelf_clean(path: Path, *args: str) -> str:
    """readelf output; fails the test if readelf prints any warning about the file."""
    proc = subprocess.run(["readelf", "-W", *args, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def dump_section(path: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / "dumped.bin"
    out.unlink(missing_ok=True)
    run("objcopy", f"--dump-section={name}={out}", path, tmp_path / "objcopy-scratch.o")
    return out.read_bytes()


def section_snapshot(path: Path) -> list[tuple[str, dict[str, int | str], bytes]]:
    """Every section's name, header and contents, for before/after comparisons."""
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    snapshot = []
    for section in elf.iter_sections():
        data = b"" if section["sh_type"] in ("SHT_NOBITS", "SHT_NULL") else section.data()
        snapshot.append((section.name, dict(section.header), data))
    return snapshot


@pytest.fixture
def module(tmp_path: Path) -> Path:
    """A relocatable object with symbols, relocations and a fake .BTF, like a .ko."""
    src = tmp_path / "mod.c"
    src.write_text(C_SOURCE)
    obj = tmp_path / "mod.o"
    run("gcc", "-c", "-O1", "-ffunction-sections", "-o", obj, src)
    btf = tmp_path / "btf.bin"
    btf.write_bytes(FAKE_BTF)
    ko = tmp_path / "mod.ko"
    run("objcopy", f"--add-section=.BTF={btf}", obj, ko)
    return ko


def assert_original_sections_unchanged(before: Path, after: Path, *,
                                       disassemble: bool = True) -> None:
    old, new = section_snapshot(before), section_snapshot(after)
    shstrndx = ELFFile(io.BytesIO(before.read_bytes())).get_shstrndx()
    for index, (name, header, data) in enumerate(old):
        if name.startswith(".BTF.base"):
            continue
        new_name, new_header, new_data = new[index]
        assert new_name == name
        if index == shstrndx:  # may be a grown copy elsewhere
            assert new_data.startswith(data)
            continue
        if index == 0:  # sh_size holds the section count under extended numbering
            header, new_header = dict(header, sh_size=0), dict(new_header, sh_size=0)
        assert new_header == header, name
        assert new_data == data, name
    assert readelf_clean(before, "-s", "-r") == readelf_clean(after, "-s", "-r")
    if not disassemble:  # host objdump cannot disassemble foreign crafted machines
        return
    objdump_old = run("objdump", "-dr", before).replace(str(before), "F")
    objdump_new = run("objdump", "-dr", after).replace(str(after), "F")
    assert objdump_old == objdump_new


def assert_kernel_would_accept(path: Path) -> None:
    """The section-table checks of the kernel's module loader (elf_validity_cache_*)."""
    data = path.read_bytes()
    elf = ELFFile(io.BytesIO(data))
    assert elf["e_shentsize"] == elf.structs.Elf_Shdr.sizeof()
    assert elf["e_shoff"] + elf["e_shnum"] * elf["e_shentsize"] <= len(data)
    null = elf.get_section(0).header
    assert (null["sh_type"], null["sh_size"], null["sh_addr"]) == ("SHT_NULL", 0, 0)
    strtab = elf.get_section(elf["e_shstrndx"]).header
    names = data[strtab["sh_offset"]:strtab["sh_offset"] + strtab["sh_size"]]
    assert names.endswith(b"\0")
    for section in elf.iter_sections():
        assert section["sh_name"] < strtab["sh_size"]
        if section["sh_type"] not in ("SHT_NULL", "SHT_NOBITS"):
            assert section["sh_offset"] + section["sh_size"] <= len(data)


def assert_one_line(err: ElfError, path: Path) -> None:
    message = str(err)
    assert "\n" not in message
    assert str(path) in message


# ----------------------------------------------------------------------------- reading


def test_read_relocatable(module: Path) -> None:
    got = read_btf_sections(module)
    assert got == BtfSections(
        path=module, compression=None, btf=FAKE_BTF, base=None, base_expects=None,
        is_elf=True, sha256=hashlib.sha256(module.read_bytes()).hexdigest())


@pytest.mark.parametrize("payload", [BTF_LE, BTF_BE], ids=["le", "be"])
def test_read_raw_btf(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(payload)
    got = read_btf_sections(path)
    assert not got.is_elf
    assert got.btf == payload
    assert got.base is None and got.base_expects is None and got.compression is None


def test_read_sysfs_vmlinux_or_fixture(tmp_path: Path) -> None:
    """The running kernel's raw BTF is read to EOF (sysfs sizes are not trusted)."""
    sysfs = Path("/sys/kernel/btf/vmlinux")
    if not os.access(sysfs, os.R_OK):
        sysfs = tmp_path / "vmlinux"
        sysfs.write_bytes(BTF_LE)
    expected = bytearray()
    with open(sysfs, "rb", buffering=0) as f:
        while chunk := f.read(1 << 16):
            expected += chunk
    got = read_btf_sections(sysfs)
    assert not got.is_elf
    assert got.btf == bytes(expected)
    assert got.btf[:2] in (b"\x9f\xeb", b"\xeb\x9f")


def _host_module_with_btf() -> Path | None:
    moddir = Path("/lib/modules") / platform.release()
    try:
        lines = (moddir / "modules.dep").read_text().splitlines()
    except OSError:
        return None
    for line in lines[:200]:
        candidate = moddir / line.split(":", 1)[0]
        try:
            if read_btf_sections(candidate).btf:
                return candidate
        except ElfError:
            continue
    return None


def test_read_host_module_or_fixture(module: Path) -> None:
    """A real module of the running kernel when the host has them, else the gcc fixture."""
    path = _host_module_with_btf() or module
    got = read_btf_sections(path)
    assert got.is_elf
    assert got.btf and got.btf[:2] in (b"\x9f\xeb", b"\xeb\x9f")
    assert got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("suffix", "tool", "compression"), [
    (".xz", ["xz", "--check=crc32", "-k"], "xz"),
    (".zst", ["zstd", "-q", "-k"], "zst"),
    (".gz", ["gzip", "-k", "-n"], "gz"),
])
def test_read_compressed(module: Path, suffix: str, tool: list[str], compression: str) -> None:
    run(*tool, module)
    compressed = module.with_name(module.name + suffix)
    got = read_btf_sections(compressed)
    assert got.compression == compression
    assert got.btf == FAKE_BTF and got.is_elf
    assert got.sha256 == hashlib.sha256(compressed.read_bytes()).hexdigest()
    # Detection is by magic, not by name.
    renamed = module.with_name("no-suffix.bin")
    compressed.rename(renamed)
    assert read_btf_sections(renamed).compression == compression


def test_read_multi_stream_compressed(module: Path, tmp_path: Path) -> None:
    import gzip
    import lzma

    data = module.read_bytes()
    half = len(data) // 2
    for name, blob in {
        "two.xz": lzma.compress(data[:half]) + lzma.compress(data[half:]),
        "two.gz": gzip.compress(data[:half]) + gzip.compress(data[half:]),
    }.items():
        path = tmp_path / name
        path.write_bytes(blob)
        assert read_btf_sections(path).btf == FAKE_BTF


# ----------------------------------------------------------------------------- writing


def test_add_base_section(module: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ko"
    base = b"\x9f\xeb\x01\x00distilled-base" * 3
    write_btf_sections(module, out, {".BTF.base": base})
    got = read_btf_sections(out)
    assert (got.btf, got.base, got.base_expects) == (FAKE_BTF, base, None)
    headers = readelf_clean(out, "-S")
    assert ".BTF.base" in headers
    line = next(ln for ln in headers.splitlines() if ".BTF.base" in ln)
    assert "PROGBITS" in line
    assert dump_section(out, ".BTF.base", tmp_path) == base
    readelf_clean(out, "-a")
    assert_original_sections_unchanged(module, out)
    assert_kernel_would_accept(out)
    assert read_btf_sections(module).base is None  # src untouched


def test_replace_bigger_smaller_and_remove(module: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ko"
    write_btf_sections(module, out, {".BTF.base": b"a" * 16, ".BTF.base_expects": b"e" * 8})
    first_size = out.stat().st_size
    for size in (4096, 3, 17, 4096):
        write_btf_sections(out, out, {".BTF.base": b"b" * size})
        got = read_btf_sections(out)
        assert (got.base, got.base_expects, got.btf) == (b"b" * size, b"e" * 8, FAKE_BTF)
        assert dump_section(out, ".BTF.base", tmp_path) == b"b" * size
        assert_original_sections_unchanged(module, out)
        assert_kernel_would_accept(out)
    # Rewrites drop the previous tail: no unbounded growth.
    assert out.stat().st_size < first_size + 4096 + 2 * 1024

    write_btf_sections(out, out, {".BTF.base": None})
    got = read_btf_sections(out)
    assert (got.base, got.base_expects) == (None, b"e" * 8)
    assert ".BTF.base " not in readelf_clean(out, "-S")
    assert_original_sections_unchanged(module, out)
    assert_kernel_would_accept(out)  # the SHT_NULL placeholder is fine for the loader

    write_btf_sections(out, out, {".BTF.base_expects": None, ".BTF.base": None})
    got = read_btf_sections(out)
    assert (got.base, got.base_expects, got.btf) == (None, None, FAKE_BTF)
    assert_original_sections_unchanged(module, out)
    # Removing what is not there is a no-op.
    write_btf_sections(out, out, {".BTF.base": None})


def test_replace_btf_itself(module: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ko"
    new_btf = FAKE_BTF * 5
    write_btf_sections(module, out, {".BTF": new_btf})
    assert read_btf_sections(out).btf == new_btf
    assert dump_section(out, ".BTF", tmp_path) == new_btf
    readelf_clean(out, "-a")


def test_trailing_removal_drops_header(module: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ko"
    count = len(section_snapshot(module))
    write_btf_sections(module, out, {".BTF.base": b"x" * 8})
    assert len(section_snapshot(out)) == count + 1
    write_btf_sections(out, out, {".BTF.base": None})
    assert len(section_snapshot(out)) == count
    assert_original_sections_unchanged(module, out)


@pytest.mark.parametrize(("suffix", "tool", "magic"), [
    (".xz", ["xz", "-k"], b"\xfd7zXZ\x00"),
    (".zst", ["zstd", "-q", "-k"], b"\x28\xb5\x2f\xfd"),
    (".gz", ["gzip", "-k", "-n"], b"\x1f\x8b"),
])
def test_compressed_round_trip(module: Path, tmp_path: Path, suffix: str, tool: list[str],
                               magic: bytes) -> None:
    run(*tool, module)
    compressed = module.with_name(module.name + suffix)
    base = b"\x9f\xeb" + b"B" * 30
    write_btf_sections(compressed, compressed, {".BTF.base": base})
    raw = compressed.read_bytes()
    assert raw.startswith(magic)
    if suffix == ".xz":
        assert raw[7] & 0x0F == 0x01  # stream flags: check type CRC32, what kmod accepts
        run("xz", "-t", compressed)
    got = read_btf_sections(compressed)
    assert (got.compression, got.base, got.btf) == (suffix[1:], base, FAKE_BTF)
    plain = tmp_path / "plain.ko"
    decompressor = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"], ".gz": ["gzip", "-dc"]}
    plain.write_bytes(subprocess.run([*decompressor[suffix], str(compressed)], check=True,
                                     capture_output=True).stdout)
    assert dump_section(plain, ".BTF.base", tmp_path) == base
    assert_original_sections_unchanged(module, plain)


def test_write_to_other_destination_keeps_mode(module: Path, tmp_path: Path) -> None:
    module.chmod(0o640)
    out = tmp_path / "sub.ko"
    write_btf_sections(module, out, {".BTF.base": b"q"})
    assert out.stat().st_mode & 0o777 == 0o640


def test_in_place_keeps_owner_and_symlink(module: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(module, 1234, 4321)
    owner = (module.stat().st_uid, module.stat().st_gid)
    link = tmp_path / "link.ko"
    link.symlink_to(module.name)
    write_btf_sections(link, link, {".BTF.base": b"via link"})
    assert link.is_symlink()  # the target was rewritten, the link kept
    assert read_btf_sections(module).base == b"via link"
    assert (module.stat().st_uid, module.stat().st_gid) == owner


def test_executable_stays_runnable(tmp_path: Path) -> None:
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM_SOURCE)
    prog = tmp_path / "prog"
    run("gcc", "-O1", "-o", prog, src)
    write_btf_sections(prog, prog, {".BTF.base": b"base" * 4, ".BTF": FAKE_BTF})
    assert run(prog) == "hello from rewritten elf\n"
    got = read_btf_sections(prog)
    assert (got.base, got.btf) == (b"base" * 4, FAKE_BTF)
    readelf_clean(prog, "-a")
    # An allocated section inside a segment may only be overwritten with the same size.
    write_btf_sections(prog, prog, {".mydata": b"ABCDEFG\0"})
    with pytest.raises(ElfError, match="same|must equal") as err:
        write_btf_sections(prog, prog, {".mydata": b"longer than before"})
    assert_one_line(err.value, prog)
    with pytest.raises(ElfError, match="remove"):
        write_btf_sections(prog, prog, {".mydata": None})
    assert run(prog) == "hello from rewritten elf\n"


# ----------------------------------------------------------------------------- atomicity


def test_in_place_failure_on_replace_leaves_original(module: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = module.read_bytes()

    def no_space(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(elfmod.os, "replace", no_space)
    with pytest.raises(ElfError, match="No space left") as err:
        write_btf_sections(module, module, {".BTF.base": b"z" * 64})
    assert_one_line(err.value, module)
    assert err.value.code is ErrorCode.ELF_WRITE_FAILED
    assert module.read_bytes() == before
    assert sorted(p.name for p in module.parent.iterdir() if p.name.startswith(".")) == []


def test_in_place_failure_on_fsync_leaves_original(module: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = module.read_bytes()

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(elfmod.os, "fsync", no_space)
    with pytest.raises(ElfError) as err:
        write_btf_sections(module, module, {".BTF.base": b"z" * 64})
    assert_one_line(err.value, module)
    assert module.read_bytes() == before
    assert [p.name for p in module.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_verification_failure_publishes_nothing(module: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_compress = elfwrite.compress
    monkeypatch.setattr(elfwrite, "compress",
                        lambda c, data: real_compress(c, data.replace(b"zzzz", b"yyyy")))
    out = tmp_path / "out.ko"
    with pytest.raises(ElfError, match="verification failed") as err:
        write_btf_sections(module, out, {".BTF.base": b"zzzz"})
    assert_one_line(err.value, out)
    assert err.value.code is ErrorCode.ELF_WRITE_FAILED
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------------- errors


def _expect_error(path: Path, match: str) -> None:
    with pytest.raises(ElfError, match=match) as err:
        read_btf_sections(path)
    assert_one_line(err.value, path)


def test_error_missing(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.ko", "No such file")


def test_error_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path, "directory")


def test_error_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.ko"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_error_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "text.ko"
    path.write_bytes(b"hello, this is not an ELF file")
    _expect_error(path, "neither ELF nor BTF")


def test_error_permission_denied(module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:  # root ignores mode bits: simulate what open(2) would raise
        real_open = os.open

        def denied(path: object, *args: object, **kwargs: object) -> int:
            if str(path) == str(module):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(module))
            return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(elfmod.os, "open", denied)
    else:
        module.chmod(0)
    _expect_error(module, "Permission denied")


@pytest.mark.parametrize(("suffix", "tool"), [
    (".xz", ["xz", "-k"]), (".zst", ["zstd", "-q", "-k"]), (".gz", ["gzip", "-k", "-n"]),
])
def test_error_corrupt_compressed(module: Path, suffix: str, tool: list[str]) -> None:
    run(*tool, module)
    compressed = module.with_name(module.name + suffix)
    raw = compressed.read_bytes()
    compressed.write_bytes(raw[: len(raw) // 2])
    _expect_error(compressed, f"corrupt {suffix[1:]} stream")
    garbled = raw[:12] + bytes(b ^ 0x5A for b in raw[12:40]) + raw[40:]
    compressed.write_bytes(garbled)
    _expect_error(compressed, f"corrupt {suffix[1:]} stream")


def test_error_decompression_bomb(module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("zstd", "-q", "-k", module)
    monkeypatch.setattr(elfmod, "MAX_DECOMPRESSED_SIZE", 100)
    _expect_error(module.with_name(module.name + ".zst"), "more than 100 bytes")


def test_error_truncated_header_table(module: Path) -> None:
    data = module.read_bytes()
    elf = ELFFile(io.BytesIO(data))
    module.write_bytes(data[: elf["e_shoff"] + 10])
    _expect_error(module, r"truncated ELF: section header table .* past end of file")


def test_error_truncated_elf_header(module: Path) -> None:
    module.write_bytes(module.read_bytes()[:30])
    _expect_error(module, "truncated or corrupt ELF")


def _patch_btf_header(module: Path, **fields: int) -> None:
    data = bytearray(module.read_bytes())
    elf = ELFFile(io.BytesIO(bytes(data)))
    for index, section in enumerate(elf.iter_sections()):
        if section.name == ".BTF":
            header = copy.copy(section.header)
            for key, value in fields.items():
                header[key] = value
            offset = elf["e_shoff"] + index * elf["e_shentsize"]
            built = elf.structs.Elf_Shdr.build(header)
            data[offset:offset + len(built)] = built
    module.write_bytes(bytes(data))


def test_error_section_past_eof(module: Path) -> None:
    _patch_btf_header(module, sh_size=1 << 20)
    _expect_error(module, r"section \[\d+\] .BTF .* past end of file")


def test_error_nobits_btf(module: Path) -> None:
    _patch_btf_header(module, sh_type="SHT_NOBITS")
    _expect_error(module, "SHT_NOBITS")


def test_error_corrupt_shstrndx(module: Path) -> None:
    data = bytearray(module.read_bytes())
    struct.pack_into("<H", data, 0x3E, 0x7000)  # e_shstrndx far past e_shnum
    module.write_bytes(bytes(data))
    _expect_error(module, "corrupt ELF")


def test_write_errors(module: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw.btf"
    raw.write_bytes(BTF_LE)
    out = tmp_path / "out.ko"
    cases: list[tuple[Path, dict[str, bytes | None], str]] = [
        (raw, {".BTF.base": b"x"}, "raw BTF"),
        (module, {".symtab": b"x"}, "SHT_PROGBITS"),
        (module, {".shstrtab": b"x"}, "name table"),
        (module, {".text.helper": None}, "refer"),  # relocations and symbols point at it
        (module, {".strtab": None}, "remove"),
        (module, {"": b"x"}, "invalid section name"),
        (tmp_path / "missing.ko", {".BTF.base": b"x"}, "No such file"),
    ]
    for src, request, match in cases:
        with pytest.raises(ElfError, match=match) as err:
            write_btf_sections(src, out, request)
        assert_one_line(err.value, src)
        # a missing input is told from one we refuse to rewrite by its code
        assert err.value.code is (ErrorCode.INPUT_UNREADABLE if not src.exists()
                                  else ErrorCode.ELF_INVALID), (err.value.code, match)
        assert not out.exists()
    with pytest.raises(ElfError, match="no such directory") as err:
        write_btf_sections(module, tmp_path / "no-dir" / "x.ko", {".BTF.base": b"x"})
    assert_one_line(err.value, tmp_path / "no-dir" / "x.ko")
    assert err.value.code is ErrorCode.ELF_WRITE_FAILED


# ----------------------------------------------------------------------------- crafted ELF


def craft_elf(*, bits: int, little: bool, extra: int = 0, extended: bool = False) -> bytes:
    """A minimal ET_REL: NULL, .text, .BTF, `extra` empty PROGBITS `.d`, .shstrtab."""
    e = "<" if little else ">"
    shstrtab = b"\0.text\0.BTF\0.shstrtab\0.d\0"
    names = {".text": 1, ".BTF": 7, ".shstrtab": 12, ".d": 22}
    text, btf = b"\x90" * 16, (BTF_LE if little else BTF_BE)
    ehsize, shentsize = (52, 40) if bits == 32 else (64, 64)
    body = bytearray(ehsize)
    offsets = {}
    for name, blob in ((".text", text), (".BTF", btf), (".shstrtab", shstrtab)):
        body += b"\0" * (-len(body) % 4)
        offsets[name] = (len(body), len(blob))
        body += blob
    body += b"\0" * (-len(body) % 8)
    shoff = len(body)
    count = 4 + extra
    shstrndx = count - 1
    shfmt = e + ("10I" if bits == 32 else "IIQQQQIIQQ")

    def shdr(name: int, kind: int, offset: int, size: int, link: int = 0,
             align: int = 1) -> bytes:
        return struct.pack(shfmt, name, kind, 0, 0, offset, size, link, 0, align, 0)

    body += shdr(0, 0, 0, count if extended else 0, shstrndx if extended else 0, 0)
    body += shdr(names[".text"], 1, *offsets[".text"], align=16)
    body += shdr(names[".BTF"], 1, *offsets[".BTF"], align=4)
    for _ in range(extra):
        body += shdr(names[".d"], 1, offsets[".text"][0], 0)
    body += shdr(names[".shstrtab"], 3, *offsets[".shstrtab"])
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1 if little else 2, 1]) + bytes(9)
    e_shnum = 0 if extended else count
    e_shstrndx = 0xFFFF if extended else shstrndx
    machine = 3 if bits == 32 else 62  # EM_386 / EM_X86_64: readelf knows both
    if bits == 32:
        hdr = struct.pack(e + "16sHHIIIIIHHHHHH", ident, 1, machine, 1, 0, 0, shoff, 0,
                          ehsize, 0, 0, shentsize, e_shnum, e_shstrndx)
    else:
        hdr = struct.pack(e + "16sHHIQQQIHHHHHH", ident, 1, machine, 1, 0, 0, shoff, 0,
                          ehsize, 0, 0, shentsize, e_shnum, e_shstrndx)
    body[:ehsize] = hdr
    return bytes(body)


@pytest.mark.parametrize(("bits", "little"), [(32, True), (32, False), (64, False), (64, True)],
                         ids=["elf32-le", "elf32-be", "elf64-be", "elf64-le"])
@pytest.mark.parametrize("extended", [False, True], ids=["plain", "extnum"])
def test_crafted_round_trip(tmp_path: Path, bits: int, little: bool, extended: bool) -> None:
    path = tmp_path / "crafted.ko"
    path.write_bytes(craft_elf(bits=bits, little=little, extended=extended))
    btf = BTF_LE if little else BTF_BE
    got = read_btf_sections(path)
    assert (got.btf, got.base, got.is_elf) == (btf, None, True)
    readelf_clean(path, "-S")

    out = tmp_path / "out.ko"
    write_btf_sections(path, out, {".BTF.base": b"base!", ".BTF.base_expects": b"exp"})
    got = read_btf_sections(out)
    assert (got.btf, got.base, got.base_expects) == (btf, b"base!", b"exp")
    headers = readelf_clean(out, "-S")
    assert ".BTF.base_expects" in headers
    elf = ELFFile(io.BytesIO(out.read_bytes()))
    assert elf.elfclass == bits and elf.little_endian == little
    assert elf.get_shstrndx() == 3  # never renumbered
    assert_original_sections_unchanged(path, out, disassemble=False)

    write_btf_sections(out, out, {".BTF.base": b"B" * 33, ".BTF.base_expects": None})
    got = read_btf_sections(out)
    assert (got.btf, got.base, got.base_expects) == (btf, b"B" * 33, None)
    readelf_clean(out, "-S")


def test_crossing_extended_numbering(tmp_path: Path) -> None:
    """Adding the 0xff00th section switches to e_shnum=0 / section 0 sh_size."""
    path = tmp_path / "many.ko"
    path.write_bytes(craft_elf(bits=64, little=True, extra=0xFF00 - 4 - 1, extended=False))
    assert ELFFile(io.BytesIO(path.read_bytes()))["e_shnum"] == 0xFEFF
    write_btf_sections(path, path, {".BTF.base": b"many"})
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    assert elf["e_shnum"] == 0
    assert elf.num_sections() == 0xFF00
    assert read_btf_sections(path).base == b"many"
    assert "[65279] .BTF.base" in readelf_clean(path, "-S")
    write_btf_sections(path, path, {".BTF.base": None})
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    assert (elf["e_shnum"], elf.num_sections()) == (0xFEFF, 0xFEFF)


def test_fuzzed_inputs_only_raise_elf_error(module: Path, tmp_path: Path) -> None:
    """Random corruption of headers and tables: ElfError or success, never a traceback."""
    import random

    rng = random.Random(1234)
    original = module.read_bytes()
    elf = ELFFile(io.BytesIO(original))
    hot = [*range(64), *range(elf["e_shoff"], len(original))]  # ELF header, section headers
    path, out = tmp_path / "fuzz.ko", tmp_path / "fuzz-out.ko"
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.choice(hot)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        for action in (lambda: read_btf_sections(path),
                       lambda: write_btf_sections(path, out, {".BTF.base": b"x" * 8})):
            try:
                action()
            except ElfError as err:
                assert_one_line(err, path if "fuzz-out" not in str(err) else out)
