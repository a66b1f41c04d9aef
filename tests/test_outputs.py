"""`reconcile -o` and `distill -o` / `--in-place`: what an output path may be (SPEC §10:
inputs are untrusted, outputs must not clobber what is not ours)."""

from __future__ import annotations

import os
import stat
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_reconcile import _elf, _module_file, module, reparse, vmlinux  # noqa: E402

from btfreconciled.cli.main import main as ctl  # noqa: E402
from btfreconciled.elf import read_btf_sections  # noqa: E402
from btfreconciled.elfwrite import write_btf_sections  # noqa: E402


@pytest.fixture(scope="module")
def built():
    base = reparse(vmlinux())
    return base, module(base)


@pytest.fixture
def world(tmp_path: Path, built) -> dict[str, Path]:
    base, mod = built
    vm = tmp_path / "vmlinux.btf"
    vm.write_bytes(base.to_bytes())
    ko = _module_file(tmp_path, built)  # distilled: reconcile writes
    plain = tmp_path / "plain_mod.ko"  # not distilled yet: distill writes
    write_btf_sections(_elf(tmp_path), plain, {".BTF": mod.to_bytes()})
    os.chmod(plain, 0o640)
    return {"vm": vm, "ko": ko, "plain": plain, "dir": tmp_path}


def _reconcile(w: dict[str, Path], out: Path | str) -> list[str]:
    return ["reconcile", str(w["ko"]), "--vmlinux", str(w["vm"]), "-o", str(out)]


def _distill(w: dict[str, Path], out: Path | str) -> list[str]:
    return ["distill", str(w["plain"]), "--base", str(w["vm"]), "-o", str(out)]


def _rescue(w: dict[str, Path], out: Path | str) -> list[str]:
    return ["rescue", str(w["plain"]), "--base", str(w["vm"]), "-o", str(out)]


COMMANDS = {"reconcile": _reconcile, "distill": _distill, "rescue": _rescue}


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert ctl(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("btfreconcilectl: error: "), err
    assert "Traceback" not in err and ".tmp" not in err
    return err


def _no_temporaries(d: Path) -> None:
    assert not [p.name for p in d.iterdir() if p.name.startswith(".") and "tmp" in p.name]


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("kind", ["chardev", "fifo"])
def test_output_never_replaces_a_device_or_fifo(world, capsys, cmd: str, kind: str) -> None:
    """As root, `-o /dev/null` used to replace the null device with a regular file (tested
    on a private copy of the device: never on the real one)."""
    special = world["dir"] / "special"
    if kind == "chardev":
        os.mknod(special, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null
        check = stat.S_ISCHR
    else:
        os.mkfifo(special)
        check = stat.S_ISFIFO
    err = _one_line_error(capsys, COMMANDS[cmd](world, special))
    assert f"{special}: is a " in err and "refusing to replace it" in err
    assert check(os.lstat(special).st_mode)
    # also through a symlink to it
    link = world["dir"] / "link"
    link.symlink_to(special)
    err = _one_line_error(capsys, COMMANDS[cmd](world, link))
    assert f"{link}: is a " in err
    assert check(os.lstat(special).st_mode) and link.is_symlink()
    _no_temporaries(world["dir"])


@pytest.mark.parametrize("cmd", COMMANDS)
def test_output_through_a_symlink_writes_its_target(world, capsys, cmd: str) -> None:
    real = world["dir"] / "sub" / "real.out"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = world["dir"] / "link.out"
    link.symlink_to(Path("sub") / "real.out")  # relative, as in module trees
    assert ctl(COMMANDS[cmd](world, link)) == 0
    assert link.is_symlink() and os.readlink(link) == str(Path("sub") / "real.out")
    assert real.read_bytes() != b"old"
    if cmd == "distill":
        assert read_btf_sections(real).base is not None
    _no_temporaries(world["dir"])
    _no_temporaries(real.parent)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_output_symlink_loop_and_dangling_link_are_one_line_errors(world, capsys,
                                                                   cmd: str) -> None:
    a, b = world["dir"] / "loop_a", world["dir"] / "loop_b"
    a.symlink_to(b)
    b.symlink_to(a)
    err = _one_line_error(capsys, COMMANDS[cmd](world, a))
    assert f"{a}: too many levels of symbolic links" in err
    assert a.is_symlink() and b.is_symlink()
    dangling = world["dir"] / "dangling"
    dangling.symlink_to(world["dir"] / "nowhere")
    err = _one_line_error(capsys, COMMANDS[cmd](world, dangling))
    assert f"{dangling}: not writing through a dangling symlink" in err
    assert dangling.is_symlink() and not (world["dir"] / "nowhere").exists()


def test_distill_in_place_through_a_symlink_keeps_the_link(world, capsys) -> None:
    link = world["dir"] / "linked.ko"
    link.symlink_to(world["plain"].name)
    assert ctl(["distill", str(link), "--base", str(world["vm"]), "--in-place"]) == 0
    assert link.is_symlink() and read_btf_sections(world["plain"]).base is not None
    assert stat.S_IMODE(os.stat(world["plain"]).st_mode) == 0o640


def test_distill_output_gets_the_modules_mode_not_the_replaced_files(world, capsys) -> None:
    """The 0666 of a scratch file (or a device) must not become a kernel module's mode."""
    out = world["dir"] / "scratch.ko"
    out.write_bytes(b"scratch")
    os.chmod(out, 0o666)
    assert ctl(_distill(world, out)) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    fresh = world["dir"] / "fresh.ko"
    assert ctl(_distill(world, fresh)) == 0
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o640


def test_reconcile_output_is_0644(world, capsys) -> None:
    out = world["dir"] / "out.btf"
    out.write_bytes(b"x")
    os.chmod(out, 0o600)
    assert ctl(_reconcile(world, out)) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


@pytest.mark.parametrize("cmd", COMMANDS)
def test_output_errors_name_the_path_the_user_gave(world, capsys, cmd: str) -> None:
    err = _one_line_error(capsys, COMMANDS[cmd](world, world["dir"] / "nodir" / "x"))
    assert f"{world['dir'] / 'nodir' / 'x'}: no such directory" in err
    err = _one_line_error(capsys, COMMANDS[cmd](world, world["dir"]))
    assert f"{world['dir']}: is a directory" in err
    # /proc/version is a regular file in a directory where nothing can be created
    err = _one_line_error(capsys, COMMANDS[cmd](world, "/proc/version"))
    assert err.startswith("btfreconcilectl: error: /proc/version: "), err


def _set_addralign(path: Path, name: str, align: int) -> None:
    """Patch sh_addralign of section `name` in an ELF64 little-endian file."""
    data = bytearray(path.read_bytes())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    str_off, = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)
    for i in range(shnum):
        hdr = shoff + i * shentsize
        name_off, = struct.unpack_from("<I", data, hdr)
        start = str_off + name_off
        if data[start:data.index(b"\0", start)] == name.encode():
            struct.pack_into("<Q", data, hdr + 0x30, align)
            path.write_bytes(data)
            return
    raise AssertionError(f"no section {name}")


@pytest.mark.parametrize("align", [1 << 30, 1 << 63])
def test_distill_never_pads_to_a_huge_sh_addralign(world, capsys, align: int) -> None:
    """sh_addralign comes from the file: 2**30 used to make a 1 GiB module (2**63 a
    MemoryError traceback)."""
    _set_addralign(world["plain"], ".BTF", align)
    out = world["dir"] / "aligned.ko"
    assert ctl(_distill(world, out)) == 0, capsys.readouterr().err
    assert out.stat().st_size < 64 * 1024
    assert ctl(["check", str(out), "--vmlinux", str(world["vm"])]) == 0
