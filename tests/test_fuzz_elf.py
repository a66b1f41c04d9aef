"""Fuzzing the CLI with mutated module files (SPEC §10: module files are untrusted input).

Seeds are made here, in Python, with no toolchain: a relocatable x86-64 ELF module with
.text, .rela.text, .modinfo, .symtab/.strtab and real split BTF (.BTF on a distilled
.BTF.base, with and without .BTF.base_expects, and a not-yet-distilled one whose .BTF is
split on the vmlinux).  Each case mutates one seed (ELF header, section header table,
section contents incl. the BTF headers and type records, truncation, SHF_COMPRESSED .BTF,
huge or odd sh_addralign, duplicate/overlapping sections), optionally compresses it
(.ko.xz/.zst/.gz, then maybe corrupts or truncates the stream), plus decompression bombs,
and runs it through `check`, `dump`, `reconcile` and `distill` in-process.

Every run must: return 0, 1 or 2 (never raise: no traceback), finish within a per-case
time guard, print an exit-2 error as exactly one line on stderr, and leave no output file
(nor a temporary) behind when it failed.  Seeds are fixed, so a failure is reproducible:
the assertion names the case number, its mutations and the command.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import lzma
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_reconcile import _with_expects, module, reparse, vmlinux  # noqa: E402

import btfreconciled.elf as elf  # noqa: E402
from btfreconciled.cli.main import main as ctl  # noqa: E402

N_CASES = 3000
SEED = 20261126
CASE_SECONDS = 10.0  # per CLI run; a hang fails the case instead of the whole suite
# CPU seconds for everything (seeds, bombs, 4 commands x N_CASES; ~35 s): the CLI runs in this
# process, so its CPU time is the work done, whatever else a shared machine is running (wall
# time doubled under the load of a parallel build and failed a correct run).
SUITE_CPU_SECONDS = 90.0
# The decompression cap while fuzzing (the real one is 128 MiB): the same code refuses a
# bomb either way, but a real-size bomb would take this pytest process to ~300 MB, and every
# child forked afterwards reports that peak as its own ru_maxrss (Linux keeps the high-water
# mark across fork and exec), which breaks tests that measure a child's memory.
FUZZ_DECOMPRESSED_CAP = 8 << 20

# ------------------------------------------------------------------ a module, by hand

_SHT = {"NULL": 0, "PROGBITS": 1, "SYMTAB": 2, "STRTAB": 3, "RELA": 4}
_SHF_ALLOC, _SHF_EXEC, _SHF_INFO_LINK, _SHF_COMPRESSED = 0x2, 0x4, 0x40, 0x800
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SHDR_FIELDS = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size",
                "sh_link", "sh_info", "sh_addralign", "sh_entsize")
_EHDR_FIELDS = {  # name: (offset, size)
    "ei_class": (4, 1), "ei_data": (5, 1), "ei_version": (6, 1), "e_type": (16, 2),
    "e_machine": (18, 2), "e_version": (20, 4), "e_phoff": (32, 8), "e_shoff": (40, 8),
    "e_ehsize": (52, 2), "e_phentsize": (54, 2), "e_phnum": (56, 2),
    "e_shentsize": (58, 2), "e_shnum": (60, 2), "e_shstrndx": (62, 2)}
_BTF_HDR_FIELDS = {  # name: (offset, size) in struct btf_header
    "magic": (0, 2), "version": (2, 1), "flags": (3, 1), "hdr_len": (4, 4),
    "type_off": (8, 4), "type_len": (12, 4), "str_off": (16, 4), "str_len": (20, 4)}


@dataclass
class Seed:
    """An ELF image and where its parts are (for targeted mutations)."""

    name: str
    data: bytes
    shoff: int
    names: list[str]
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (off, size)


def build_module(name: str, sections: dict[str, bytes]) -> Seed:
    """A relocatable x86-64 module: .text with a relocation and a symbol, .modinfo, and
    `sections` (the .BTF* ones) as SHT_PROGBITS, like pahole/resolve_btfids leave them."""
    strtab = b"\0init_module\0"
    symtab = bytes(24)  # the null symbol
    symtab += struct.pack("<IBBHQQ", 0, 3, 0, 1, 0, 0)  # STT_SECTION for .text
    symtab += struct.pack("<IBBHQQ", 1, 0x12, 0, 1, 0, 16)  # GLOBAL FUNC init_module
    rela = struct.pack("<QQq", 4, (2 << 32) | 2, -4)  # R_X86_64_PC32 against init_module
    modinfo = (b"license=GPL\0name=" + name.encode() + b"\0srcversion=0123456789ABCDEF012345"
               b"\0vermagic=6.12.0 SMP preempt mod_unload modversions \0")
    # (name, type, flags, data, link, info, align, entsize)
    specs: list[tuple[str, str, int, bytes, int, int, int, int]] = [
        ("", "NULL", 0, b"", 0, 0, 0, 0),
        (".text", "PROGBITS", _SHF_ALLOC | _SHF_EXEC, b"\x90" * 15 + b"\xc3", 0, 0, 16, 0),
        (".rela.text", "RELA", _SHF_INFO_LINK, rela, 4, 1, 8, 24),
        (".modinfo", "PROGBITS", _SHF_ALLOC, modinfo, 0, 0, 1, 0),
        (".symtab", "SYMTAB", 0, symtab, 5, 2, 8, 24),
        (".strtab", "STRTAB", 0, strtab, 0, 0, 1, 0),
    ]
    specs += [(n, "PROGBITS", 0, d, 0, 0, 4, 0) for n, d in sections.items()]
    shstrtab = bytearray(b"\0")
    name_offs = []
    for spec in specs:
        name_offs.append(len(shstrtab) if spec[0] else 0)
        if spec[0]:
            shstrtab += spec[0].encode() + b"\0"
    name_offs.append(len(shstrtab))
    shstrtab += b".shstrtab\0"
    specs.append((".shstrtab", "STRTAB", 0, bytes(shstrtab), 0, 0, 1, 0))
    out = bytearray(_EHDR.size)
    offsets: dict[str, tuple[int, int]] = {}
    headers = []
    for (sname, kind, flags, data, link, info, align, entsize), noff in zip(specs, name_offs,
                                                                          strict=True):
        if kind == "NULL":
            headers.append(_SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            continue
        out += bytes(-len(out) % max(align, 1))
        offsets[sname] = (len(out), len(data))
        headers.append(_SHDR.pack(noff, _SHT[kind], flags, 0, len(out), len(data), link, info,
                                  align, entsize))
        out += data
    out += bytes(-len(out) % 8)
    shoff = len(out)
    for h in headers:
        out += h
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    out[:_EHDR.size] = _EHDR.pack(ident, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(specs),
                                  len(specs) - 1)
    return Seed(name, bytes(out), shoff, [s[0] for s in specs], offsets)


@pytest.fixture(scope="module")
def seeds() -> tuple[list[Seed], bytes]:
    """The seed modules and the vmlinux (raw BTF) they were built for."""
    base = reparse(vmlinux())
    mod = module(base)
    dbase, dsplit, expects = _with_expects((base, mod))
    return [
        build_module("fuzz_full", {".BTF": dsplit.to_bytes(), ".BTF.base": dbase.to_bytes(),
                                   ".BTF.base_expects": expects.to_bytes()}),
        build_module("fuzz_dist", {".BTF": dsplit.to_bytes(), ".BTF.base": dbase.to_bytes()}),
        build_module("fuzz_plain", {".BTF": mod.to_bytes()}),
    ], base.to_bytes()


# ------------------------------------------------------------------ mutations

_MAX64 = (1 << 64) - 1


def _interesting(rng: random.Random, size: int, file_size: int) -> int:
    values = [0, 1, 2, 3, 4, 7, 8, 0x10, 0x18, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000,
              0xFF00, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 30,
              1 << 62, 1 << 63, _MAX64, file_size, file_size - 1, file_size + 1,
              file_size // 2, rng.getrandbits(size * 8)]
    return rng.choice(values) & ((1 << (size * 8)) - 1)


def _put(data: bytearray, off: int, size: int, value: int) -> None:
    if off >= 0 and off + size <= len(data):
        data[off:off + size] = value.to_bytes(size, "little")


def m_ehdr(rng: random.Random, s: Seed, d: bytearray) -> str:
    name, (off, size) = rng.choice(list(_EHDR_FIELDS.items()))
    _put(d, off, size, _interesting(rng, size, len(d)))
    return f"ehdr.{name}"


def m_shdr(rng: random.Random, s: Seed, d: bytearray) -> str:
    i = rng.randrange(len(s.names))
    j = rng.randrange(len(_SHDR_FIELDS))
    sizes = (4, 4, 8, 8, 8, 8, 4, 4, 8, 8)
    off = s.shoff + i * _SHDR.size + sum(sizes[:j])
    _put(d, off, sizes[j], _interesting(rng, sizes[j], len(d)))
    return f"shdr[{s.names[i]}].{_SHDR_FIELDS[j]}"


def _btf_sections(s: Seed) -> list[str]:
    return [n for n in s.offsets if n.startswith(".BTF")]


def m_btf_header(rng: random.Random, s: Seed, d: bytearray) -> str:
    sec = rng.choice(_btf_sections(s))
    name, (off, size) = rng.choice(list(_BTF_HDR_FIELDS.items()))
    base, length = s.offsets[sec]
    _put(d, base + off, size, _interesting(rng, size, length))
    return f"{sec}.hdr.{name}"


def m_btf_words(rng: random.Random, s: Seed, d: bytearray) -> str:
    """Type records and strings: an interesting u32 at a few aligned places."""
    sec = rng.choice(_btf_sections(s))
    base, length = s.offsets[sec]
    for _ in range(rng.randint(1, 4)):
        off = 24 + 4 * rng.randrange(max(1, (length - 24) // 4))
        _put(d, base + off, 4, _interesting(rng, 4, length))
    return f"{sec}.words"


def m_btf_strings(rng: random.Random, s: Seed, d: bytearray) -> str:
    """Bytes that are not UTF-8, newlines, NULs and format characters inside names."""
    sec = rng.choice(_btf_sections(s))
    base, length = s.offsets[sec]
    hdr_len, str_off, str_len = (int.from_bytes(s.data[base + o:base + o + 4], "little")
                                 for o in (4, 16, 20))
    start = base + hdr_len + str_off
    for _ in range(rng.randint(1, 3)):
        i = start + 1 + rng.randrange(max(str_len - 1, 1))
        if i < len(d):
            d[i] = rng.choice([0xFF, 0x80, 0xC3, 0x0A, 0x0D, 0x00, 0x25, 0x7B, 0x1B])
    return f"{sec}.strings"


def m_flip(rng: random.Random, s: Seed, d: bytearray) -> str:
    where = rng.choice(["any", "btf"])
    if where == "btf":
        base, length = s.offsets[rng.choice(_btf_sections(s))]
    else:
        base, length = 0, len(d)
    for _ in range(rng.randint(1, 8)):
        i = base + rng.randrange(max(length, 1))
        if i < len(d):
            d[i] ^= 1 << rng.randrange(8)
    return f"flip.{where}"


def m_truncate(rng: random.Random, s: Seed, d: bytearray) -> str:
    cut = rng.choice([rng.randrange(len(d) + 1), len(d) - rng.randint(1, 80),
                      rng.randint(0, 80)])
    del d[max(cut, 0):]
    return f"truncate@{cut}"


def _shdr_at(s: Seed, name: str) -> int:
    return s.shoff + s.names.index(name) * _SHDR.size


def m_compressed_btf(rng: random.Random, s: Seed, d: bytearray) -> str:
    """SHF_COMPRESSED .BTF: the flag alone, or a real Elf64_Chdr + zlib stream claiming
    anything up to 2**64 bytes."""
    sec = rng.choice(_btf_sections(s))
    hdr = _shdr_at(s, sec)
    flags = int.from_bytes(d[hdr + 8:hdr + 16], "little") | _SHF_COMPRESSED
    _put(d, hdr + 8, 8, flags)
    if rng.random() < 0.5:
        off, length = s.offsets[sec]
        claimed = rng.choice([length, 1 << 30, _MAX64, 0])
        payload = struct.pack("<IIQQ", 1, 0, claimed, 1) + zlib.compress(d[off:off + length])
        d[off:off + length] = payload[:length].ljust(length, b"\0")
    return f"{sec}.SHF_COMPRESSED"


def m_addralign(rng: random.Random, s: Seed, d: bytearray) -> str:
    i = rng.randrange(1, len(s.names))
    value = rng.choice([1 << 30, 1 << 63, 1 << 40, 3, 6, _MAX64, 0])
    _put(d, s.shoff + i * _SHDR.size + 48, 8, value)
    return f"shdr[{s.names[i]}].sh_addralign={value:#x}"


def m_alias(rng: random.Random, s: Seed, d: bytearray) -> str:
    """Two sections share a name (duplicate .BTF) or share their bytes (overlap)."""
    a, b = rng.sample(range(1, len(s.names)), 2)
    ha, hb = s.shoff + a * _SHDR.size, s.shoff + b * _SHDR.size
    if rng.random() < 0.5:
        d[ha:ha + 4] = d[hb:hb + 4]
        return f"name[{s.names[a]}]=name[{s.names[b]}]"
    d[ha + 24:ha + 40] = d[hb + 24:hb + 40]  # sh_offset and sh_size
    return f"bytes[{s.names[a]}]=bytes[{s.names[b]}]"


MUTATORS: list[Callable[[random.Random, Seed, bytearray], str]] = [
    m_ehdr, m_shdr, m_shdr, m_btf_header, m_btf_header, m_btf_words, m_btf_words,
    m_btf_strings, m_btf_strings, m_flip,
    m_truncate, m_compressed_btf, m_addralign, m_alias]


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0)
    if kind == "zst":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return gzip.compress(data, compresslevel=1, mtime=0)


def make_case(rng: random.Random, seeds: list[Seed]) -> tuple[str, bytes, str]:
    """(file suffix, contents, description) of one fuzz case."""
    s = rng.choice(seeds)
    d = bytearray(s.data)
    what = [s.name]
    chosen = [rng.choice(MUTATORS) for _ in range(rng.choice([1, 1, 1, 2, 2, 3]))]
    chosen.sort(key=lambda m: m is m_truncate)  # the others address the full-size image
    for mutate in chosen:
        what.append(mutate(rng, s, d))
    r = rng.random()
    if r < 0.7:
        return ".ko", bytes(d), " ".join(what)
    kind = rng.choice(["xz", "zst", "gz"])
    packed = bytearray(_compress(kind, bytes(d)))
    what.append(kind)
    r = rng.random()
    if r < 0.25:
        for _ in range(rng.randint(1, 4)):
            packed[rng.randrange(len(packed))] ^= 1 << rng.randrange(8)
        what.append("stream-flip")
    elif r < 0.4:
        del packed[rng.randrange(1, max(len(packed), 2)):]
        what.append("stream-truncate")
    elif r < 0.5:
        packed += rng.choice([b"\0" * 7, b"garbage", _compress(kind, b"\x7fELF")])
        what.append("stream-trailer")
    return f".ko.{kind}", bytes(packed), " ".join(what)


def bombs() -> Iterator[tuple[str, bytes, str]]:
    """Small files that decompress past elf.MAX_DECOMPRESSED_SIZE (zeros after an ELF
    header), in every format, made in streaming fashion (never the whole payload in
    memory)."""
    total = elf.MAX_DECOMPRESSED_SIZE + (16 << 20)
    chunk = bytes(4 << 20)
    head = b"\x7fELF\x02\x01\x01" + bytes(57)
    makers: dict[str, Callable[[], tuple[Callable[[bytes], bytes], Callable[[], bytes]]]] = {
        "gz": lambda: _gz_stream(),
        "zst": lambda: _zst_stream(),
        "xz": lambda: _xz_stream(),
    }
    for kind, make in makers.items():
        feed, finish = make()
        out = bytearray(feed(head))
        for _ in range(total // len(chunk)):
            out += feed(chunk)
        out += finish()
        yield f".ko.{kind}", bytes(out), f"bomb {kind} {len(out)} -> {total} bytes"


def _gz_stream() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress, c.flush


def _zst_stream() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = zstandard.ZstdCompressor(level=1).compressobj()
    return c.compress, c.flush


def _xz_stream() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0)
    return c.compress, c.flush


# ------------------------------------------------------------------ running the CLI


class Hang(BaseException):
    """Raised by the per-case timer; a BaseException so no `except Exception` swallows it."""


@contextlib.contextmanager
def time_guard(seconds: float) -> Iterator[None]:
    def ring(_sig: int, _frame: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str]) -> tuple[int | str, str, str]:
    """(exit status or the failure's name, stdout, stderr) of btfreconcilectl in-process."""
    # dump writes bytes to sys.stdout.buffer: a text wrapper over bytes, like a real stdout
    out, err = io.TextIOWrapper(io.BytesIO(), write_through=True), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                time_guard(CASE_SECONDS):
            rc: int | str = ctl(argv)
    except Hang:
        rc = "hang"
    except BaseException as e:  # noqa: BLE001 - a traceback is what we are looking for
        import traceback

        rc = f"traceback {type(e).__name__}: {e}"
        err.write("".join(traceback.format_exception(e))[-3000:])
    out.flush()
    return rc, out.buffer.getvalue().decode(errors="replace"), err.getvalue()


def check_run(case: str, argv: list[str], out_path: Path | None,
              results: dict[str, int]) -> list[str]:
    """Run one command on one case; the problems found (empty when all is well)."""
    rc, _stdout, err = run_cli(argv)
    problems = []
    where = f"{case} :: {' '.join(argv[:1])}"
    if rc not in (0, 1, 2):
        problems.append(f"{where}: {rc}\n{err}")
    elif rc == 2 and (err.count("\n") != 1 or not err.startswith("btfreconcilectl: error: ")):
        problems.append(f"{where}: exit 2 without exactly one error line: {err!r}")
    elif "Traceback" in err:
        problems.append(f"{where}: traceback on stderr: {err}")
    if out_path is not None:
        if rc != 0 and out_path.exists():
            problems.append(f"{where}: exit {rc} but {out_path.name} was written")
        leftovers = [p.name for p in out_path.parent.iterdir() if p.name.startswith(".")]
        if leftovers:
            problems.append(f"{where}: temporary files left: {leftovers}")
            for p in out_path.parent.iterdir():
                if p.name.startswith("."):
                    p.unlink()
    results[f"{argv[0]}:{rc if isinstance(rc, int) else 'bad'}"] = \
        results.get(f"{argv[0]}:{rc if isinstance(rc, int) else 'bad'}", 0) + 1
    return problems


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """Outputs go to tmpfs when there is one: distill fsyncs every file it writes, which on
    a disk is most of a case's time and tests nothing the fuzzer is after."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="btfr-fuzz-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def run_case(work: Path, vm: Path, n: int, suffix: str, data: bytes, what: str,
             results: dict[str, int]) -> list[str]:
    case = f"case {n} [{what}]"
    src = work / f"m{n}{suffix}"
    src.write_bytes(data)
    outdir = work / "out"
    outdir.mkdir(exist_ok=True)
    problems = []
    problems += check_run(case, ["check", str(src), "--vmlinux", str(vm)], None, results)
    # dump alone (a distilled module splits on its own .BTF.base) and relocated onto -B
    dump_base = ["-B", str(vm)] if n % 2 else []
    problems += check_run(case, ["dump", str(src), *dump_base], None, results)
    out = outdir / f"r{n}.btf"
    problems += check_run(case, ["reconcile", str(src), "--vmlinux", str(vm), "-o", str(out)],
                          out, results)
    out.unlink(missing_ok=True)
    dist = outdir / f"d{n}{suffix}"
    problems += check_run(case, ["distill", str(src), "--base", str(vm), "-o", str(dist)],
                          dist, results)
    dist.unlink(missing_ok=True)
    src.unlink()
    return problems


def test_seeds_are_valid_modules(seeds, scratch: Path) -> None:
    """Unmutated, every seed passes every command: the mutations start from real modules."""
    mods, vm_bytes = seeds
    vm = scratch / "vmlinux.btf"
    vm.write_bytes(vm_bytes)
    results: dict[str, int] = {}
    for i, s in enumerate(mods):
        for suffix, data in ((".ko", s.data), (".ko.xz", _compress("xz", s.data)),
                             (".ko.zst", _compress("zst", s.data)),
                             (".ko.gz", _compress("gz", s.data))):
            assert not run_case(scratch, vm, i, suffix, data, f"seed {s.name}{suffix}", results)
    # fuzz_plain is not distilled: check/reconcile say "no .BTF.base" (exit 2), and its
    # split .BTF cannot be dumped without its base (n = 2 is even: no -B)
    assert results == {"check:0": 8, "check:2": 4, "dump:0": 8, "dump:2": 4,
                       "reconcile:0": 8, "reconcile:2": 4, "distill:0": 12}, results


def test_fuzz_cli_with_mutated_modules(seeds, scratch: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elf, "MAX_DECOMPRESSED_SIZE", FUZZ_DECOMPRESSED_CAP)
    # Objects the earlier tests left (vmlinux indexes...) need not be traversed by every
    # garbage collection of 12,000 CLI runs: in the full suite that doubled the time.
    gc.freeze()
    try:
        _fuzz(seeds, scratch)
    finally:
        gc.unfreeze()


def _fuzz(seeds: tuple[list[Seed], bytes], scratch: Path) -> None:
    mods, vm_bytes = seeds
    vm = scratch / "vmlinux.btf"
    vm.write_bytes(vm_bytes)
    rng = random.Random(SEED)
    t0, cpu0 = time.monotonic(), time.process_time()
    problems: list[str] = []
    results: dict[str, int] = {}
    cases = [make_case(rng, mods) for _ in range(N_CASES)]
    for n, (suffix, data, what) in enumerate([*cases, *bombs()]):
        problems += run_case(scratch, vm, n, suffix, data, what, results)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    print(f"\nfuzz: {N_CASES} mutated modules + 3 bombs x 4 commands in {elapsed:.1f} s "
          f"({cpu:.1f} s CPU): "
          f"{dict(sorted(results.items()))}")
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:10])
    # the mutations reach past the first checks: some cases still succeed, many fail
    assert results.get("check:0", 0) > N_CASES // 20 and results.get("check:2", 0) > N_CASES // 5
    assert results.get("distill:0", 0) > N_CASES // 20
    assert cpu < SUITE_CPU_SECONDS, f"fuzzing took {cpu:.0f} s of CPU"


def test_a_name_that_is_not_utf8_prints_instead_of_raising(seeds, scratch: Path) -> None:
    """Found by the fuzzer (seed 2, cases 1587/2005/3750): a member name in
    .BTF.base_expects with a byte that is not UTF-8 made `check` and `reconcile` die with
    UnicodeEncodeError while printing the diagnostic."""
    mods, vm_bytes = seeds
    vm = scratch / "vmlinux.btf"
    vm.write_bytes(vm_bytes)
    full = mods[0]
    off, _size = full.offsets[".BTF.base_expects"]
    d = bytearray(full.data)
    d[d.index(b"\0prev\0", off) + 1] = 0xFF  # list_head.prev -> "\xffrev"
    ko = scratch / "utf.ko"
    ko.write_bytes(d)
    for argv in (["check", str(ko), "--vmlinux", str(vm), "--strict", "all"],
                 ["reconcile", str(ko), "--vmlinux", str(vm), "--strict", "all", "-o",
                  str(scratch / "utf.btf")]):
        rc, out, err = run_cli(argv)
        assert rc == 1, (rc, err)
        assert "struct list_head.\\udcffrev: gone" in out
