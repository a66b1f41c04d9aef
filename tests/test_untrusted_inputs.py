"""Untrusted inputs are read within bounds and never block (SPEC §10, issue 11).

Each case is a finding from trying the tools as a new user would: FIFOs and devices named
like modules hung `check` and `dump`; a decompression bomb took the daemon to 3.9 GB; a
SHF_COMPRESSED `.BTF` was inflated to whatever it claimed; a sparse 3 GiB file was read whole.
Peak memory is measured in a child process (ru_maxrss), as a user would meet it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_elf import FAKE_BTF, module  # noqa: F401 - the gcc-made module fixture

from btfreconciled.elf import ElfError, read_btf_sections, sha256_file
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.errors import ErrorCode

REPO = Path(__file__).resolve().parent.parent
# btfreconcilectl in a child that records its own peak RSS in a file: VmHWM of its own
# address space (ru_maxrss would include the parent's RSS, copied in at fork before exec)
CTL = [sys.executable, "-c",
       "import os, sys\n"
       "from btfreconciled.cli.main import main\n"
       "try:\n    rc = main()\n"
       "finally:\n"
       "    hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
       "    with open(os.environ['PEAK_FILE'], 'w') as f:\n"
       "        f.write(hwm.split()[1])\n"
       "sys.exit(rc)"]


def ctl(*args: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess, float, float]:
    """btfreconcilectl in a child: (result, seconds, the child's peak RSS in MB)."""
    peak_file = Path(f"/tmp/btfr-peak-{os.getpid()}")
    t0 = time.monotonic()
    r = subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH=str(REPO), PEAK_FILE=str(peak_file)))
    dt = time.monotonic() - t0
    peak = int(peak_file.read_text()) / 1024
    peak_file.unlink()
    return r, dt, peak


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("btfreconcilectl: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_fifo_named_like_a_module_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "xt_FIFO.ko"
    os.mkfifo(fifo)
    with pytest.raises(ElfError, match="is a FIFO, not a regular file") as e:
        read_btf_sections(fifo)
    assert e.value.code is ErrorCode.INPUT_NOT_REGULAR
    with pytest.raises(ElfError, match="is a FIFO") as e:
        sha256_file(fifo)
    assert e.value.code is ErrorCode.INPUT_NOT_REGULAR
    for cmd in (["check", str(fifo), "--vmlinux", "/sys/kernel/btf/vmlinux"],
                ["dump", str(fifo)], ["inspect", str(fifo)]):
        r, dt, _ = ctl(*cmd)
        assert dt < 10
        if cmd[0] == "check":  # check reports a broken module as an error verdict
            assert r.returncode == 2 and "is a FIFO" in r.stdout + r.stderr, r
        else:
            one_line_error(r, "xt_FIFO.ko", "FIFO")


def test_directory_with_a_fifo_module_checks_the_rest(tmp_path: Path, module: Path) -> None:  # noqa: F811
    os.mkfifo(tmp_path / "stall.ko")
    r, dt, _ = ctl("check", str(tmp_path), "--vmlinux", "/sys/kernel/btf/vmlinux", "--json")
    assert dt < 20, "a FIFO held up the directory check"
    assert "stall.ko" in r.stdout + r.stderr and "FIFO" in r.stdout + r.stderr


@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/null"])
def test_devices_are_refused(dev: str) -> None:
    with pytest.raises(ElfError, match="is a character device") as e:
        read_btf_sections(dev)
    assert e.value.code is ErrorCode.INPUT_NOT_REGULAR
    r, dt, _ = ctl("dump", dev)
    one_line_error(r, dev, "character device")
    assert dt < 10


def test_compressed_btf_section_is_rejected_like_the_kernel(module: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "c.ko"
    write_btf_sections(module, out, {".BTF": FAKE_BTF})
    data = bytearray(out.read_bytes())
    # find .BTF's section header and set SHF_COMPRESSED (0x800) in sh_flags
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    str_off = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        h = shoff + i * shentsize
        name_off = struct.unpack_from("<I", data, h)[0]
        name = bytes(data[str_off + name_off:data.index(0, str_off + name_off)])
        if name == b".BTF":
            flags = struct.unpack_from("<Q", data, h + 8)[0]
            struct.pack_into("<Q", data, h + 8, flags | 0x800)
    out.write_bytes(data)
    with pytest.raises(ElfError, match="SHF_COMPRESSED"):
        read_btf_sections(out)


def _zstd_bomb(path: Path, size: int) -> None:
    import zstandard

    c = zstandard.ZstdCompressor(level=19).compressobj()
    zero = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(c.compress(b"\x7fELF\x02\x01\x01" + bytes(9)))
        for _ in range(size >> 20):
            f.write(c.compress(zero))
        f.write(c.flush())


def test_decompression_bomb_is_bounded(tmp_path: Path) -> None:
    bomb = tmp_path / "xt_bomb.ko.zst"
    _zstd_bomb(bomb, 3 << 30)
    assert bomb.stat().st_size < 1 << 20
    r, dt, peak = ctl("check", str(bomb), "--vmlinux", "/sys/kernel/btf/vmlinux", timeout=60)
    assert r.returncode == 2 and "decompresses to more than" in r.stdout + r.stderr, r
    # 128 MiB cap: the payload buffer plus the interpreter, far from the 3 GiB it claims
    assert peak < 512, f"peak RSS {peak:.0f} MB"
    print(f"bomb: {dt:.2f} s, peak RSS {peak:.0f} MB")


def test_sparse_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "huge.ko"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    r, dt, peak = ctl("dump", str(big))
    one_line_error(r, "huge.ko", "larger than")
    assert dt < 10 and peak < 200, (dt, peak)


def test_check_json_on_a_fifo_names_it(tmp_path: Path) -> None:
    fifo = tmp_path / "m.ko"
    os.mkfifo(fifo)
    r, _, _ = ctl("check", str(fifo), "--vmlinux", "/sys/kernel/btf/vmlinux", "--json")
    out = json.loads(r.stdout)
    assert out["verdict"] == "error" and "FIFO" in out["summary"]


def test_daemon_survives_a_fifo_and_a_bomb_within_bounds(tmp_path: Path, module: Path) -> None:  # noqa: F811
    """The real engine in the daemon: a FIFO named like a module and a 3 GiB .ko.zst bomb get
    verdict error quickly, the module queued behind them is processed, and the daemon's peak
    RSS (VmHWM, the running kernel's vmlinux indexed) stays under 512 MB."""
    from test_daemon_support import FakeSystem, env_for_daemon, wait_for

    from btfreconciled.daemon.control import request

    fs = FakeSystem(tmp_path / "w")
    fs.vmlinux.write_bytes(Path("/sys/kernel/btf/vmlinux").read_bytes())
    os.mkfifo(fs.mods / "xt_FIFO.ko")
    _zstd_bomb(fs.mods / "xt_bomb.ko.zst", 3 << 30)
    (fs.mods / "zz_plain.ko").write_bytes(module.read_bytes())
    for n in ("xt_FIFO", "xt_bomb", "zz_plain"):
        fs.load(n)
    cfg = fs.config(log_format="json")
    p = subprocess.Popen([sys.executable, "-m", "btfreconciled.daemon.main", "--foreground",
                          "--config", str(cfg)], env=env_for_daemon(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def verdicts() -> dict[str, str]:
            try:
                mods = request(fs.socket, {"cmd": "list"})["modules"]
            except Exception:
                return {}
            return {m["module"]: m["verdict"] for m in mods}
        t0 = time.monotonic()
        assert wait_for(lambda: len(verdicts()) == 3, 60), verdicts()
        took = time.monotonic() - t0
        v = verdicts()
        assert v == {"xt_FIFO": "error", "xt_bomb": "error", "zz_plain": "no-base"}, v
        show = request(fs.socket, {"cmd": "show", "module": "xt_bomb"})["record"]
        assert "decompresses to more than" in show["summary"]
        show = request(fs.socket, {"cmd": "show", "module": "xt_FIFO"})["record"]
        assert "is a FIFO" in show["summary"]
        status = Path(f"/proc/{p.pid}/status").read_text()
        hwm = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1])
        print(f"daemon: FIFO + bomb + plain in {took:.2f} s, peak RSS {hwm / 1024:.0f} MB")
        assert hwm / 1024 < 512
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err[-2000:]
