"""Work and memory that hostile inputs can cause are bounded (SPEC §10).

Each case was a finding: a sparse 100 GiB `.ko` was hashed whole (`check` past 30 s; in the
daemon no module was published for 60 s and the abandoned worker kept hashing); a 33 KB
bzImage claiming a 250 MiB `.BTF` took 545 MB; a 70 KB `.ko.zst` bomb took 538 MB although
the cap is 128 MiB; 2,000 idle control connections made `status` fail for 10 s. Time is
bounded by a timeout, memory by the child's own peak RSS (VmHWM).
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_support import FakeSystem, env_for_daemon, wait_for
from test_elf import module  # noqa: F401 - the gcc-made module fixture
from test_kimage import make_bzimage, make_vmlinux
from test_untrusted_inputs import ctl, one_line_error

from btfreconciled.daemon.control import request
from btfreconciled.elf import (
    MAX_DECOMPRESSED_SIZE,
    MAX_ELF_SIZE,
    MAX_FILE_SIZE,
    ElfError,
    read_btf_sections,
    sha256_file,
)
from btfreconciled.errors import ErrorCode

VMLINUX = "/sys/kernel/btf/vmlinux"
HUGE = 100 << 30  # sparse: costs no disk


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Fail (rather than hang the suite) when the body runs longer than `seconds`: the
    reading and hashing loops are Python loops, so SIGALRM's exception interrupts them."""
    def expired(_sig: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _sparse(path: Path, head: bytes, size: int = HUGE) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


# ------------------------------------------------------------------ a sparse 100 GiB module


@pytest.mark.parametrize("head", ["module", "garbage"])
def test_sparse_huge_module_is_refused_by_its_size(tmp_path: Path, module: Path,  # noqa: F811
                                                   head: str) -> None:
    data = module.read_bytes() if head == "module" else b"\x55" * 4096
    big = _sparse(tmp_path / "xt_huge.ko", data)
    with _within(5):
        for kw in ({}, {"digest": False}):
            with pytest.raises(ElfError, match=f"{HUGE} bytes, larger than") as e:
                read_btf_sections(big, **kw)
            assert e.value.code is ErrorCode.INPUT_TOO_LARGE
        with pytest.raises(ElfError, match=f"{HUGE} bytes, larger than {MAX_ELF_SIZE}") as e:
            sha256_file(big)
        assert e.value.code is ErrorCode.INPUT_TOO_LARGE
    r, dt, _ = ctl("check", str(big), "--vmlinux", VMLINUX, timeout=20)
    assert r.returncode == 2, r
    assert f"xt_huge.ko: {HUGE} bytes, larger than {MAX_FILE_SIZE}; refusing" in r.stderr, r
    assert dt < 10, dt
    for cmd in ("dump", "inspect"):
        r, dt, _ = ctl(cmd, str(big), timeout=20)
        one_line_error(r, "xt_huge.ko", f"{HUGE} bytes, larger than")
        assert dt < 10, dt


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_daemon_refuses_a_sparse_huge_module_at_once(tmp_path: Path, module: Path) -> None:  # noqa: F811
    """The real engine: the oversized module gets verdict error at once (no module_timeout
    give-up), the module queued behind it is published promptly, and nothing keeps working
    afterwards (the daemon's CPU time stays flat)."""
    fs = FakeSystem(tmp_path / "w")
    fs.vmlinux.write_bytes(Path(VMLINUX).read_bytes())
    _sparse(fs.mods / "xt_huge.ko", module.read_bytes())
    (fs.mods / "zz_plain.ko").write_bytes(module.read_bytes())
    for n in ("xt_huge", "zz_plain"):
        fs.load(n)
    p = subprocess.Popen([sys.executable, "-m", "btfreconciled.daemon.main", "--foreground",
                          "--config", str(fs.config(log_format="json", events="poll"))],
                         env=env_for_daemon(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        def verdicts() -> dict[str, str]:
            try:
                mods = request(fs.socket, {"cmd": "list"}, timeout=2)["modules"]
            except Exception:
                return {}
            return {m["module"]: m["verdict"] for m in mods}
        assert wait_for(lambda: len(verdicts()) == 2, 20), verdicts()
        plain = request(fs.socket, {"cmd": "show", "module": "zz_plain"})["record"]
        assert verdicts() == {"xt_huge": "error", "zz_plain": "no-base"}, plain["summary"]
        show = request(fs.socket, {"cmd": "show", "module": "xt_huge"})["record"]
        assert f"{HUGE} bytes, larger than {128 << 20}; refusing" in show["summary"], show
        status = request(fs.socket, {"cmd": "status"})
        assert status["stats"]["timeouts"] == 0, status["stats"]
        before = _cpu_seconds(p.pid)
        time.sleep(1.5)
        assert _cpu_seconds(p.pid) - before < 0.5, "the daemon keeps working"
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err[-2000:]


# ------------------------------------------------------------------ decompression bombs

_ELF_HEAD = b"\x7fELF\x02\x01\x01" + bytes(9)


def _bomb(path: Path, kind: str, size: int) -> Path:
    """An ELF header then `size` bytes of zeros, compressed: concatenated 16 MiB streams (all
    three formats decode concatenated streams as one), except zstd's single frame of RLE
    blocks, the densest bomb (4 bytes per 128 KiB)."""
    step = 16 << 20
    if kind == "zst":
        import zstandard

        c = zstandard.ZstdCompressor(level=19).compressobj()
        zero = bytes(1 << 20)
        with open(path, "wb") as f:
            f.write(c.compress(_ELF_HEAD))
            for _ in range(size >> 20):
                f.write(c.compress(zero))
            f.write(c.flush())
        return path
    comp = {"xz": lambda d: lzma.compress(d, preset=0),
            "gz": lambda d: gzip.compress(d, 9, mtime=0)}[kind]
    path.write_bytes(comp(_ELF_HEAD + bytes(step)) + comp(bytes(step)) * (size // step - 1))
    return path


@pytest.mark.parametrize("kind", ["zst", "xz", "gz"])
def test_decompression_bomb_peaks_near_the_cap(tmp_path: Path, kind: str) -> None:
    size = (2040 << 20) if kind == "zst" else (512 << 20)
    bomb = _bomb(tmp_path / f"xt_bomb.ko.{kind}", kind, size)
    assert bomb.stat().st_size < 4 << 20
    r, dt, peak = ctl("check", str(bomb), "--vmlinux", VMLINUX, timeout=60)
    assert r.returncode == 2 and "decompresses to more than" in r.stdout + r.stderr, r
    print(f"{kind} bomb: {dt:.2f} s, peak RSS {peak:.0f} MiB")
    # the payload buffer up to the cap, a decoder's chunk and the interpreter (~40 MiB)
    assert peak < (MAX_DECOMPRESSED_SIZE >> 20) + 100, f"peak RSS {peak:.0f} MiB"


# ------------------------------------------------------------------ a bzImage's claimed .BTF


def _bzimage_claiming_btf(tmp_path: Path, claimed: int) -> Path:
    """A vmlinux whose .BTF section (a real BTF header declaring `claimed` bytes) is that
    big but all zeros, zstd-compressed into a ~30 KB bzImage."""
    import zstandard

    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, claimed - 24 - 8, claimed - 32, 8)
    elf = bytearray(make_vmlinux(btf=header, filler=b"\0" * 64, relocs=b""))
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    # .BTF is section 2: it now runs `claimed` bytes, with .shstrtab and the table after it
    btf_off = struct.unpack_from("<Q", elf, shoff + 2 * 64 + 0x18)[0]
    grow = claimed - len(header)
    for i in range(1, 4):
        h = shoff + i * 64
        off = struct.unpack_from("<Q", elf, h + 0x18)[0]
        if i == 2:
            struct.pack_into("<Q", elf, h + 0x20, claimed)
        elif off > btf_off:
            struct.pack_into("<Q", elf, h + 0x18, off + grow)
    struct.pack_into("<Q", elf, 0x28, shoff + grow)
    tail = bytes(elf[btf_off + len(header):])
    c = zstandard.ZstdCompressor(level=19).compressobj()
    out = [c.compress(bytes(elf[:btf_off + len(header)]))]
    zero = bytes(1 << 20)
    left = grow
    while left:
        n = min(left, len(zero))
        out.append(c.compress(zero[:n]))
        left -= n
    out += [c.compress(tail), c.flush()]
    total = btf_off + len(header) + grow + len(tail)
    path = tmp_path / "vmlinuz-claims"
    path.write_bytes(make_bzimage(b"".join(out) + struct.pack("<I", total)))
    return path


def test_bzimage_claiming_a_huge_btf_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    from btfreconciled import kimage

    path = _bzimage_claiming_btf(tmp_path, 250 << 20)
    assert path.stat().st_size < 100_000
    with pytest.raises(ElfError, match=f"vmlinux .BTF is {250 << 20} bytes, more than "
                                       f"{kimage.MAX_BTF}; refusing") as e:
        read_btf_sections(path)
    assert e.value.code is ErrorCode.INPUT_TOO_LARGE
    for cmd in (["dump", str(path)], ["inspect", str(path)],
                ["check", str(path), "--vmlinux", str(path)]):
        r, dt, peak = ctl(*cmd, timeout=60)
        one_line_error(r, str(path), "more than")
        print(f"{cmd[0]}: {dt:.2f} s, peak RSS {peak:.0f} MiB")
        assert peak < 150, f"{cmd[0]}: peak RSS {peak:.0f} MiB"


def test_bzimage_btf_under_the_cap_is_still_read(tmp_path: Path) -> None:
    path = _bzimage_claiming_btf(tmp_path, 8 << 20)
    found = read_btf_sections(path)
    assert found.btf is not None and len(found.btf) == 8 << 20


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
