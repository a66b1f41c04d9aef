"""Kernel images (x86 bzImage) as BTF input: btfreconciled.kimage through read_btf_sections.

Every image is made here: a small vmlinux-like ELF (code-like filler, a .BTF section, the
section names, the section header table at the end, then "relocs" after the ELF as x86
kernels have) compressed by the same command-line tools and flags the kernel build uses
(scripts/Makefile.lib), with the 4-byte size trailer, behind a boot header. Needs gzip, xz,
zstd, lz4, bzip2 and lzma (xz-utils) on PATH.
"""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
from pathlib import Path

import pytest
from oracle_tools import ctl_hwm
from test_untrusted_inputs import ctl, one_line_error

from btfreconciled import kimage
from btfreconciled.elf import ElfError, read_btf_sections
from btfreconciled.errors import ErrorCode

# One INT type "int": enough for `dump` to print something real.
_TYPES = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
_STRINGS = b"\0int\0"
BTF = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(_TYPES), len(_TYPES),
                  len(_STRINGS)) + _TYPES + _STRINGS
BTF_DUMP = "[1] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED\n"

# What the kernel's Makefile.lib runs for each (xz_wrap.sh: CRC32 check, BCJ x86 filter).
COMPRESSORS = {
    "gzip": ["gzip", "-n", "-9", "-c"],
    "xz": ["xz", "--check=crc32", "--x86", "--lzma2=dict=1MiB", "-c"],
    "zstd": ["zstd", "-q", "-19", "-c"],
    "lz4": ["lz4", "-q", "-l", "-9", "-c"],
    "bzip2": ["bzip2", "-9", "-c"],
    "lzma": ["lzma", "-9", "-c"],
}
FORMATS = list(COMPRESSORS)


def make_vmlinux(btf: bytes | None = BTF, *, filler: bytes | None = None,
                 shstrtab_first: bool = False, relocs: bytes = b"\x01\x02\x03\x04" * 64
                 ) -> bytes:
    """ELF64 little-endian: header | [.shstrtab] | .text filler | .BTF | [.shstrtab] |
    section headers | relocs (outside the ELF, as vmlinux.bin + vmlinux.relocs)."""
    if filler is None:
        rng = random.Random(1)
        # random bytes with decoys: a BTF header whose declared size runs past the ELF, one
        # with an impossible hdr_len, and the magic split across any chunk boundary
        filler = (rng.randbytes(150_000)
                  + struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 1 << 30, 1 << 30, 8)
                  + rng.randbytes(70_000)
                  + struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 3, 0, 16, 16, 5)
                  + bytes(300_000) + rng.randbytes(20_000))
    names = b"\0.text\0.BTF\0.shstrtab\0"
    out = bytearray(64)
    sections: list[tuple[int, int, int, int, int]] = []  # name, type, flags, offset, size

    def put(name: bytes, kind: int, flags: int, data: bytes, align: int = 1) -> None:
        out.extend(b"\0" * (-len(out) % align))
        sections.append((names.index(name + b"\0"), kind, flags, len(out), len(data)))
        out.extend(data)

    if shstrtab_first:
        put(b".shstrtab", 3, 0, names)
    put(b".text", 1, 0x6, filler, 16)
    if btf is not None:
        put(b".BTF", 1, 0x2, btf, 4)
    if not shstrtab_first:
        put(b".shstrtab", 3, 0, names)
    out.extend(b"\0" * (-len(out) % 8))
    shoff = len(out)
    out += bytes(64)  # section 0
    for name, kind, flags, offset, size in sections:
        out += struct.pack("<IIQQQQIIQQ", name, kind, flags, 0, offset, size, 0, 0, 1, 0)
    shstrndx = 1 + next(i for i, s in enumerate(sections) if s[0] == names.index(b".shstrtab"))
    struct.pack_into("<16sHHIQQQIHHHHHH", out, 0, b"\x7fELF\x02\x01\x01", 2, 62, 1, 0, 0,
                     shoff, 0, 64, 0, 0, 64, len(sections) + 1, shstrndx)
    return bytes(out) + relocs


def compress(fmt: str, data: bytes) -> bytes:
    """The payload as the kernel build makes it: the stream, then (except gzip, whose ISIZE
    already is) the decompressed size as a little-endian u32."""
    stream = subprocess.run(COMPRESSORS[fmt], input=data, capture_output=True,
                            check=True).stdout
    return stream if fmt == "gzip" else stream + struct.pack("<I", len(data) & 0xFFFFFFFF)


def make_bzimage(payload: bytes, *, setup_sects: int = 4, version: int = 0x20F,
                 payload_offset: int | None = None, payload_length: int | None = None) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0:2] = b"MZ"
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    # decompressor code before the payload, with the magics a scanner would trip over
    head = b"\x28\xb5\x2f\xfd\xfd7zXZ\x00\x1f\x8b\x08BZh" + bytes(0x3E0)
    struct.pack_into("<II", setup, 0x248,
                     len(head) if payload_offset is None else payload_offset,
                     len(payload) if payload_length is None else payload_length)
    return bytes(setup) + head + payload + b"\xcc" * 100  # the rest of the decompressor


@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    return make_vmlinux()


@pytest.fixture(scope="module")
def payloads(vmlinux: bytes) -> dict[str, bytes]:
    return {fmt: compress(fmt, vmlinux) for fmt in FORMATS}


def write(tmp_path: Path, data: bytes, name: str = "vmlinuz-6.99.0-test") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def expect_error(path: Path, match: str, **kw: int) -> ElfError:
    with pytest.raises(ElfError, match=match) as info:
        read_btf_sections(path, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return info.value


# ----------------------------------------------------------------------------- good images


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_compression(tmp_path: Path, payloads: dict[str, bytes], fmt: str) -> None:
    path = write(tmp_path, make_bzimage(payloads[fmt]))
    found = read_btf_sections(path)
    assert found.btf == BTF
    assert found.compression == f"bzImage+{fmt}"
    # callers treat it as raw BTF: no module sections, no split base
    assert not found.is_elf and found.base is None and found.base_expects is None
    assert found.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_setup_sects_zero_means_four(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    image = bytearray(make_bzimage(payloads["zstd"], setup_sects=4))
    image[0x1F1] = 0
    assert read_btf_sections(write(tmp_path, bytes(image))).btf == BTF


def test_lz4_several_blocks_and_big_filler(tmp_path: Path) -> None:
    # > 8 MiB: the legacy format's block size, so several blocks; .BTF after a block border
    elf = make_vmlinux(filler=random.Random(2).randbytes(4096) + bytes(9 << 20))
    path = write(tmp_path, make_bzimage(compress("lz4", elf)))
    assert read_btf_sections(path).btf == BTF


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = kimage._Image.decode

    def counting(self: kimage._Image, sink):  # noqa: ANN001, ANN202
        calls[0] += 1
        return original(self, sink)

    monkeypatch.setattr(kimage._Image, "decode", counting)
    return calls


def test_one_decode_normally(tmp_path: Path, payloads: dict[str, bytes],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_decodes(monkeypatch)
    assert read_btf_sections(write(tmp_path, make_bzimage(payloads["xz"]))).btf == BTF
    assert calls == [1]


def test_second_decode_when_the_scan_kept_nothing(tmp_path: Path, payloads: dict[str, bytes],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream scan is only a shortcut: with no candidate budget the answer is the same,
    from a second decode that keeps exactly the range the section table names."""
    calls = count_decodes(monkeypatch)
    monkeypatch.setattr(kimage, "_CANDIDATE_BUDGET", 0)
    assert read_btf_sections(write(tmp_path, make_bzimage(payloads["gzip"]))).btf == BTF
    assert calls == [2]


def test_section_names_far_from_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """.shstrtab before everything (outside the window kept before the section headers) and
    .BTF's bytes not kept: one decode to learn the names, one for .BTF."""
    calls = count_decodes(monkeypatch)
    monkeypatch.setattr(kimage, "_CANDIDATE_BUDGET", 0)
    elf = make_vmlinux(shstrtab_first=True, filler=random.Random(3).randbytes(100_000))
    assert read_btf_sections(write(tmp_path, make_bzimage(compress("zstd", elf)))).btf == BTF
    assert calls == [3]


def test_dump_and_inspect_cli(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    path = write(tmp_path, make_bzimage(payloads["bzip2"]))
    r, _, _ = ctl("dump", str(path))
    assert (r.returncode, r.stdout, r.stderr) == (0, BTF_DUMP, "")
    r, _, _ = ctl("inspect", "--json", str(path))
    assert r.returncode == 0, r.stderr
    assert f'"btf_sha256": "{hashlib.sha256(BTF).hexdigest()}"' in r.stdout


# ----------------------------------------------------------------------------- bad images


def test_not_a_bzimage(tmp_path: Path) -> None:
    path = write(tmp_path, b"MZ" + bytes(0x300))
    with pytest.raises(ElfError, match="not a bzImage"):
        kimage.read_kernel_image_btf(path)


def test_old_boot_protocol(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    path = write(tmp_path, make_bzimage(payloads["gzip"], version=0x207))
    expect_error(path, "boot protocol 2.7 is older than 2.08")


def test_unknown_compression(tmp_path: Path) -> None:
    lzo = b"\x89LZO\x00\r\n\x1a\n" + bytes(100)  # the kernel's other format: not supported
    expect_error(write(tmp_path, make_bzimage(lzo)),
                 r"unknown compression \(starts with 894c5a4f000d;")


def test_wrong_compression_magic(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    """A gzip payload behind an xz magic: detected as xz, which then fails to decode."""
    payload = b"\xfd7zXZ\x00" + payloads["gzip"][6:]
    expect_error(write(tmp_path, make_bzimage(payload)), "corrupt xz payload")


def test_payload_offset_past_eof(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    path = write(tmp_path, make_bzimage(payloads["zstd"], payload_offset=1 << 30))
    expect_error(path, "payload_offset points to 0x40000a00, past the end of the file")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(tmp_path: Path, payloads: dict[str, bytes], fmt: str) -> None:
    image = make_bzimage(payloads[fmt])
    path = write(tmp_path, image[: 0xA00 + 0x3F0 + len(payloads[fmt]) // 2])
    expect_error(path, "truncated payload: .* past the end of the file")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_stream(tmp_path: Path, payloads: dict[str, bytes], fmt: str) -> None:
    """payload_length inside the file but the compressed stream cut short (the size word
    kept at the end so only the stream is short)."""
    payload = payloads[fmt]
    cut = payload[: len(payload) // 2] + payload[-4:]
    expect_error(write(tmp_path, make_bzimage(cut)),
                 rf"truncated payload: the {fmt} stream ends early \(payload_length {len(cut)}\)")


def test_size_trailer_disagrees(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    payload = payloads["lz4"][:-4] + struct.pack("<I", 12345)
    expect_error(write(tmp_path, make_bzimage(payload)),
                 r"truncated payload: decompressed \d+ bytes, the image declares 12345")


def test_bytes_after_the_stream(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    payload = payloads["xz"][:-4] + b"junk" + payloads["xz"][-4:]
    expect_error(write(tmp_path, make_bzimage(payload)),
                 "4 bytes of the xz payload follow the end of the compressed stream")


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "lz4"])
def test_corrupt_stream(tmp_path: Path, payloads: dict[str, bytes], fmt: str) -> None:
    """gzip, xz, zstd and bzip2 carry checksums; lzma (no checksum) detects flipped bits as
    corrupt range-coder input here. Legacy lz4 has no checksum at all: see the next test."""
    payload = bytearray(payloads[fmt])
    middle = len(payload) // 2
    payload[middle:middle + 64] = bytes(b ^ 0x5A for b in payload[middle:middle + 64])
    expect_error(write(tmp_path, make_bzimage(bytes(payload))), f"corrupt {fmt} payload: ")


def test_corrupt_lz4_block_size(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    """The legacy lz4 format has no checksum (nor does the kernel check one): what can be
    caught is structure, e.g. a block larger than an 8 MiB block can compress to."""
    payload = bytearray(payloads["lz4"])
    struct.pack_into("<I", payload, 4, 0x7FFFFFFF)  # the first block's compressed size
    expect_error(write(tmp_path, make_bzimage(bytes(payload))),
                 "corrupt lz4 payload: lz4 block of 2147483647 bytes exceeds the 8 MiB")


def test_kernel_without_btf(tmp_path: Path) -> None:
    path = write(tmp_path, make_bzimage(compress("gzip", make_vmlinux(btf=None))))
    expect_error(path, r"no \.BTF section in the kernel \(built without CONFIG_DEBUG_INFO_BTF\)")


def test_payload_not_elf(tmp_path: Path) -> None:
    path = write(tmp_path, make_bzimage(compress("zstd", b"\x00" * 100_000)))
    expect_error(path, "decompressed bzImage payload is not an ELF vmlinux")


def test_section_table_past_the_stream(tmp_path: Path) -> None:
    elf = bytearray(make_vmlinux())
    struct.pack_into("<Q", elf, 0x28, len(elf) + 4096)
    path = write(tmp_path, make_bzimage(compress("gzip", bytes(elf))))
    expect_error(path, "truncated vmlinux: section header table")


def test_decompression_bomb_beyond_the_cap(tmp_path: Path) -> None:
    """600 MiB of zeros behind an ELF header claiming its section table at 1 GiB: refused at
    the default cap (512 MiB) in bounded memory, by the CLI in one line (exit 2)."""
    elf_header = bytearray(make_vmlinux()[:64])
    struct.pack_into("<Q", elf_header, 0x28, 1 << 30)
    header = tmp_path / "ehdr"
    header.write_bytes(bytes(elf_header))
    stream = subprocess.run(f"(cat {header}; head -c 600M /dev/zero) | zstd -q -1 -c",
                            shell=True, capture_output=True, check=True).stdout
    path = write(tmp_path, make_bzimage(stream + struct.pack("<I", 64 + (600 << 20))))
    assert path.stat().st_size < 100_000
    with pytest.raises(ElfError, match=f"decompresses to more than {1 << 20} bytes") as e:
        read_btf_sections(path, max_size=1 << 20)  # max_size also bounds the decompression
    assert e.value.code is ErrorCode.INPUT_TOO_LARGE
    r, seconds, peak_mb = ctl_hwm(tmp_path, "inspect", str(path))
    one_line_error(r, str(path), f"zstd payload decompresses to more than {512 << 20} bytes")
    print(f"bomb: refused in {seconds:.2f} s, child peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 80  # the CLI alone is ~34 MB; decoding keeps no more than a chunk


def test_cli_errors_are_one_line(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    bad = write(tmp_path, make_bzimage(payloads["zstd"][:1000] + payloads["zstd"][-4:]))
    no_btf = write(tmp_path, make_bzimage(compress("xz", make_vmlinux(btf=None))), "nobtf")
    good = write(tmp_path, make_bzimage(payloads["zstd"]), "good")
    module = write(tmp_path, make_vmlinux(), "m.ko")  # any ELF: the kernel image is the error
    for args, words in (
        (["inspect", str(bad)], [str(bad), "truncated payload"]),
        (["dump", str(no_btf)], [str(no_btf), "CONFIG_DEBUG_INFO_BTF"]),
        (["dump", str(module), "-B", str(bad)], [str(bad), "truncated payload"]),
        (["check", str(module), "--vmlinux", str(no_btf)], [str(no_btf), "no .BTF section"]),
        (["distill", str(good), "--base", str(good), "-o", str(tmp_path / "x.ko")],
         [str(good), "a kernel image, not a module ELF file"]),
    ):
        r, _, _ = ctl(*args)
        one_line_error(r, *words)
