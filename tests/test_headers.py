"""`btfreconcilectl headers VERSION` and the kernel hooks that run it (scripts/kernel/
btfreconciled-headers), on crafted build directories, images and roots.

The images are test_kimage's: a small vmlinux-like ELF (a .BTF holding one INT) behind an
x86 boot header, here with the setup header's kernel_version string that real bzImages
carry. Real kernels and pahole/resolve_btfids reading the written file: integration/
test_headers.py.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_kimage import BTF, compress, make_bzimage, make_vmlinux

from btfreconciled import basefile
from btfreconciled.cli import headers
from btfreconciled.cli.main import main
from btfreconciled.elf import read_btf_sections, read_elf_sections

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "scripts" / "kernel" / "btfreconciled-headers"
V = "6.99.0-test"
SYS_BTF = Path("/sys/kernel/btf/vmlinux")
# Another kernel's BTF: the same INT, named differently.
_OTHER_TYPES = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
_OTHER_STRINGS = b"\0long\0"
OTHER_BTF = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(_OTHER_TYPES),
                        len(_OTHER_TYPES), len(_OTHER_STRINGS)) + _OTHER_TYPES + _OTHER_STRINGS


def with_version_string(image: bytes, text: bytes) -> bytes:
    """A bzImage whose setup header points (kernel_version, 0x20e) at `text`, placed in the
    setup code as the kernel build does."""
    out = bytearray(image)
    at = 0x400  # inside the setup sectors, past the header
    out[at:at + len(text) + 1] = text + b"\0"
    struct.pack_into("<H", out, 0x20E, at - 0x200)
    return bytes(out)


def bzimage(release: str, btf: bytes = BTF, *, bits64: bool = True) -> bytes:
    image = bytearray(make_bzimage(compress("gzip", make_vmlinux(btf))))
    struct.pack_into("<H", image, 0x236, int(bits64))  # xloadflags: XLF_KERNEL_64
    return with_version_string(bytes(image),
                               f"{release} (builder@host) #1 SMP PREEMPT_DYNAMIC".encode())


def make_root(tmp_path: Path, release: str = V, *, image: bytes | None = None,
              headers_release: str | None = None) -> Path:
    """A root as Debian lays it out: /lib/modules/V/build -> /usr/src/linux-headers-V (an
    absolute link, taken inside the root) and /boot/vmlinuz-V."""
    root = tmp_path / "root"
    src = root / "usr/src" / f"linux-headers-{release}"
    (src / "include/config").mkdir(parents=True)
    (src / "include/config/kernel.release").write_text((headers_release or release) + "\n")
    with_resolve_btfids(src)
    mods = root / "lib/modules" / release
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(f"/usr/src/linux-headers-{release}")
    if image is not None:
        (root / "boot").mkdir()
        (root / "boot" / f"vmlinuz-{release}").write_bytes(image)
    return root


def with_resolve_btfids(build: Path) -> Path:
    """Kbuild's resolve_btfids in `build` (…/usr/src/linux-headers-V), as Debian 13's headers
    link it: tools -> ../../lib/linux-kbuild-V/tools (the kbuild package's directory)."""
    tools = build.parent.parent / "lib" / f"linux-kbuild-{build.name}" / "tools"
    prog = tools / "bpf" / "resolve_btfids" / "resolve_btfids"
    prog.parent.mkdir(parents=True, exist_ok=True)
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o755)
    if not (build / "tools").is_symlink():
        (build / "tools").symlink_to(f"../../lib/linux-kbuild-{build.name}/tools")
    return prog


def build_dir(root: Path, release: str = V) -> Path:
    return root / "usr/src" / f"linux-headers-{release}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["headers", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def written_btf(path: Path) -> bytes | None:
    return read_elf_sections(path, {".BTF"}).get(".BTF")


def is_ours(path: Path) -> bool:
    note = read_elf_sections(path, {basefile.MARK_SECTION}).get(basefile.MARK_SECTION)
    return basefile.parse_mark(note, True) is not None


@pytest.fixture(autouse=True)
def not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """V is never the running kernel unless a test says so."""
    monkeypatch.setattr(headers, "running_release", lambda: "0.0.0-running")


# --------------------------------------------------------------------------- the file


def test_written_file_is_the_smallest_base_elf(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V))
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 0, err
    target = build_dir(root) / "vmlinux"
    assert f"wrote {target}" in out
    from elftools.elf.elffile import ELFFile

    with open(target, "rb") as f:
        elf = ELFFile(f)
        names = [(s.name, s["sh_type"]) for s in elf.iter_sections()]
        assert names == [("", "SHT_NULL"), (".BTF", "SHT_PROGBITS"),
                         (basefile.MARK_SECTION, "SHT_NOTE"), (".shstrtab", "SHT_STRTAB")]
        assert elf["e_machine"] == "EM_X86_64" and elf.elfclass == 64 and elf.little_endian
        assert elf.num_segments() == 0
    # what libbpf's btf__parse takes: the .BTF bytes, exactly the image's
    assert read_btf_sections(target, digest=False).btf == BTF
    mark = basefile.parse_mark(read_elf_sections(target, {basefile.MARK_SECTION})
                               [basefile.MARK_SECTION], True)
    assert mark is not None and mark["release"] == V
    assert mark["source"] == str(root / "boot" / f"vmlinuz-{V}")
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    # again: nothing to do, said so, exit 0, file untouched
    before = target.stat().st_mtime_ns
    rc, out, _ = run(capsys, V, "--root", str(root))
    assert rc == 0 and "already holds" in out and target.stat().st_mtime_ns == before
    # no temporary file left behind
    assert sorted(p.name for p in build_dir(root).iterdir()) == ["include", "tools", "vmlinux"]


def test_debian_13_merged_usr_relative_build_link(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Debian 13: /lib -> usr/lib, and /usr/lib/modules/V/build -> ../../../src/linux-headers-V
    (relative to where the link really is, not to /lib/modules/V: that would be /src)."""
    root = tmp_path / "root"
    src = build_dir(root)
    (src / "include/config").mkdir(parents=True)
    (src / "include/config/kernel.release").write_text(V + "\n")
    with_resolve_btfids(src)
    (root / "usr/lib/modules" / V).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/modules" / V / "build").symlink_to(f"../../../src/linux-headers-{V}")
    (root / "boot").mkdir()
    (root / "boot" / f"vmlinuz-{V}").write_bytes(bzimage(V))
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 0, err
    assert written_btf(src / "vmlinux") == BTF
    # an absolute /lib link is taken inside the root too; a dangling build link is no headers
    (root / "lib").unlink()
    (root / "lib").symlink_to("/usr/lib")
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 0 and "already holds" in out, err
    (root / "usr/lib/modules" / V / "build").unlink()
    (root / "usr/lib/modules" / V / "build").symlink_to("../../../src/nothing")
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 1, err


def test_a_32_bit_kernel_gets_a_32_bit_elf(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V, bits64=False))
    assert run(capsys, V, "--root", str(root))[0] == 0
    head = (build_dir(root) / "vmlinux").read_bytes()[:20]
    assert basefile.elf_shape(head) == basefile.ElfShape(False, True, basefile.EM_386)
    assert written_btf(build_dir(root) / "vmlinux") == BTF


def test_running_kernel_from_sys(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """This host's own BTF, VERSION = uname -r, no image anywhere: /sys/kernel/btf/vmlinux."""
    if not SYS_BTF.exists():
        pytest.skip("this kernel has no /sys/kernel/btf/vmlinux")
    release = os.uname().release
    monkeypatch.setattr(headers, "running_release", lambda: release)
    build = tmp_path / "build"
    (build / "include/config").mkdir(parents=True)
    (build / "include/config/kernel.release").write_text(release + "\n")
    with_resolve_btfids(build)
    rc, out, err = run(capsys, release, "--build-dir", str(build), "--root",
                       str(tmp_path / "empty"), "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["action"] == "written" and report["source"] == str(SYS_BTF)
    assert written_btf(build / "vmlinux") == SYS_BTF.read_bytes()


def test_vmlinux_elf_source_by_its_banner(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    banner = f"Linux version {V} (builder@host) (gcc) #1 SMP\n".encode()
    root = make_root(tmp_path)
    good = tmp_path / "vmlinux"
    good.write_bytes(make_vmlinux(BTF, filler=b"\x90" * 4096 + banner + b"\0" * 64))
    rc, out, err = run(capsys, V, "--root", str(root), "--image", str(good))
    assert rc == 0, err
    assert "(vmlinux)" in out and written_btf(build_dir(root) / "vmlinux") == BTF
    other = tmp_path / "vmlinux-other"
    other.write_bytes(make_vmlinux(OTHER_BTF, filler=banner.replace(V.encode(), b"6.99.1")))
    rc, _, err = run(capsys, V, "--root", str(root), "--image", str(other))
    assert rc == 2 and "is kernel 6.99.1, not 6.99.0-test" in err
    assert err.count("\n") == 1
    assert written_btf(build_dir(root) / "vmlinux") == BTF  # untouched


def test_debug_vmlinux_found_when_no_image(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    debug = root / "usr/lib/debug/boot" / f"vmlinux-{V}"
    debug.parent.mkdir(parents=True)
    debug.write_bytes(make_vmlinux(BTF, filler=f"Linux version {V} (x@y) #1\n".encode()))
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 0, err
    assert str(debug) in out


def test_refuses_a_foreign_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage("6.99.1-other"))
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 2
    assert err == (f"btfreconcilectl: error: {root}/boot/vmlinuz-{V}: this bzImage is kernel "
                   f"6.99.1-other, not {V}: refusing to give {V}'s modules its BTF\n")
    assert not (build_dir(root) / "vmlinux").exists()
    # --force does not override a release that says it is another kernel
    rc, _, err = run(capsys, V, "--root", str(root), "--force")
    assert rc == 2 and not (build_dir(root) / "vmlinux").exists()


def test_refuses_headers_of_another_kernel(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V), headers_release="6.99.2")
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 2 and "these headers are kernel '6.99.2', not '6.99.0-test'" in err


def test_the_headers_release_is_uts_release(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Debian 12's headers: kernel.release "6.1.192", the kernel (and utsrelease.h)
    "6.1.0-57-amd64"."""
    root = make_root(tmp_path, image=bzimage(V), headers_release="6.99.192")
    (build_dir(root) / "include/generated").mkdir()
    (build_dir(root) / "include/generated/utsrelease.h").write_text(
        f'#define UTS_RELEASE "{V}"\n')
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 0, err


def test_raw_btf_image_needs_force_and_never_the_running_kernels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path)
    raw = tmp_path / "btf"
    raw.write_bytes(BTF)
    rc, _, err = run(capsys, V, "--root", str(root), "--image", str(raw))
    assert rc == 2 and "does not say which kernel it is" in err and "--force" in err
    rc, out, err = run(capsys, V, "--root", str(root), "--image", str(raw), "--force")
    assert rc == 0, err
    # the running kernel's BTF for another kernel: refused even with --force
    sys_copy = tmp_path / "sys-vmlinux"
    sys_copy.write_bytes(OTHER_BTF)
    monkeypatch.setattr(headers, "SYS_BTF", sys_copy)
    rc, _, err = run(capsys, V, "--root", str(root), "--image", str(sys_copy), "--force")
    assert rc == 2 and "this is the running kernel's BTF (0.0.0-running), not" in err


def test_nothing_to_do_says_which_input_is_missing(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, V, "--root", str(tmp_path))
    assert rc == 1 and f"the headers of {V} are not installed" in err
    root = make_root(tmp_path)
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 1 and f"no kernel image of {V} found" in err
    assert f"{root}/boot/vmlinuz-{V}" in err and "--image" in err
    assert not (build_dir(root) / "vmlinux").exists()


@pytest.mark.parametrize("bad", ["", "..", "a/b", "6.1 x"])
def test_bad_version(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, bad)
    assert rc == 2 and "is not a kernel release" in err


# --------------------------------------------------------------------------- what is there


def test_wrong_vmlinux_replaced_only_with_force(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The copied-from-/sys workaround: a raw BTF of the running kernel in V's build dir."""
    root = make_root(tmp_path, image=bzimage(V))
    sys_copy = tmp_path / "sys-vmlinux"
    sys_copy.write_bytes(OTHER_BTF)
    monkeypatch.setattr(headers, "SYS_BTF", sys_copy)
    target = build_dir(root) / "vmlinux"
    target.write_bytes(OTHER_BTF)
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 1
    assert "(raw BTF, not ours) holds the BTF of another kernel build (a copy of the running " \
           "kernel's /sys/kernel/btf/vmlinux?)" in err and "--force" in err
    assert target.read_bytes() == OTHER_BTF
    rc, out, err = run(capsys, V, "--root", str(root), "--force", "--json")
    assert rc == 0, err
    assert json.loads(out)["action"] == "replaced"
    assert written_btf(target) == BTF and is_ours(target)


def test_an_elf_with_other_btf_is_wrong_too(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V))
    target = build_dir(root) / "vmlinux"
    target.write_bytes(make_vmlinux(OTHER_BTF))
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 1 and "(ELF, not ours) holds the BTF of another kernel build, not" in err


def test_the_distributions_right_vmlinux_is_left_alone(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    root = make_root(tmp_path, image=bzimage(V))
    target = build_dir(root) / "vmlinux"
    shipped = make_vmlinux(BTF)  # Debian 13's: .BTF (+ .BTF_ids, symbols), not ours
    target.write_bytes(shipped)
    rc, out, err = run(capsys, V, "--root", str(root), "--force")
    assert rc == 0, err
    assert "not ours: the distribution's or the user's) already holds" in out
    assert target.read_bytes() == shipped
    # and --remove never deletes it
    rc, _, err = run(capsys, V, "--root", str(root), "--remove")
    assert rc == 1 and "left" in err and "not written by btfreconcilectl" in err
    assert target.read_bytes() == shipped


def test_a_symlinked_vmlinux_is_replaced_not_written_through(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V))
    elsewhere = tmp_path / "debug-vmlinux"
    elsewhere.write_bytes(OTHER_BTF)
    target = build_dir(root) / "vmlinux"
    target.symlink_to(elsewhere)
    rc, _, err = run(capsys, V, "--root", str(root), "--force")
    assert rc == 0, err
    assert not target.is_symlink() and written_btf(target) == BTF
    assert elsewhere.read_bytes() == OTHER_BTF


def test_ours_with_stale_btf_is_updated(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V, OTHER_BTF))
    assert run(capsys, V, "--root", str(root))[0] == 0
    (root / "boot" / f"vmlinuz-{V}").write_bytes(bzimage(V))  # the same release rebuilt
    rc, out, _ = run(capsys, V, "--root", str(root))
    assert rc == 0 and "updated" in out
    assert written_btf(build_dir(root) / "vmlinux") == BTF


def test_remove_only_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V))
    rc, _, err = run(capsys, V, "--root", str(root), "--remove")
    assert rc == 1 and "nothing to remove" in err
    assert run(capsys, V, "--root", str(root))[0] == 0
    target = build_dir(root) / "vmlinux"
    rc, out, _ = run(capsys, V, "--root", str(root), "--remove")
    assert rc == 0 and f"removed {target}" in out and not target.exists()


def test_a_directory_in_the_way_is_an_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, image=bzimage(V))
    (build_dir(root) / "vmlinux").mkdir()
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 2 and "not a regular file" in err


def test_kernel_without_btf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_bzimage(compress("gzip", make_vmlinux(None)))
    root = make_root(tmp_path, image=with_version_string(image, f"{V} (x@y)".encode()))
    rc, _, err = run(capsys, V, "--root", str(root))
    assert rc == 2 and err.count("\n") == 1 and "no .BTF" in err


# --------------------------------------------------------------------------- hooks


@pytest.fixture
def hook_env(tmp_path: Path) -> dict[str, str]:
    """The hook's btfreconcilectl: this checkout, through a wrapper."""
    wrapper = tmp_path / "btfreconcilectl"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m btfreconciled.cli.main \"$@\"\n")
    wrapper.chmod(0o755)
    return dict(os.environ, PYTHONPATH=str(REPO), BTFRECONCILECTL=str(wrapper))


def install_hook(root: Path, directory: str) -> Path:
    d = root / "etc/kernel" / directory
    d.mkdir(parents=True, exist_ok=True)
    path = d / "btfreconciled-headers"
    path.write_bytes(HOOK.read_bytes())
    path.chmod(0o755)
    return path


def run_hook(hook: Path, env: dict[str, str], root: Path, *args: str
             ) -> subprocess.CompletedProcess:
    return subprocess.run([str(hook), *args], capture_output=True, text=True, timeout=60,
                          env=dict(env, BTFRECONCILED_ROOT=str(root)))


def test_hooks_whichever_arrives_second_writes(tmp_path: Path,
                                               hook_env: dict[str, str]) -> None:
    root = make_root(tmp_path)
    target = build_dir(root) / "vmlinux"
    header_hook = install_hook(root, "header_postinst.d")
    image_hook = install_hook(root, "postinst.d")
    remove_hook = install_hook(root, "postrm.d")
    # headers first: no image yet, nothing done, exit 0 saying so
    r = run_hook(header_hook, hook_env, root, V)
    assert r.returncode == 0 and f"no kernel image of {V} found" in r.stderr
    assert not target.exists()
    # then the image: its postinst hook (VERSION IMAGE) writes
    image = root / "boot" / f"vmlinuz-{V}"
    image.parent.mkdir()
    image.write_bytes(bzimage(V))
    r = run_hook(image_hook, hook_env, root, V, str(image))
    assert r.returncode == 0 and f"wrote {target}" in r.stderr, r.stderr
    assert written_btf(target) == BTF
    # removing the image removes ours
    r = run_hook(remove_hook, hook_env, root, V, str(image))
    assert r.returncode == 0 and f"removed {target}" in r.stderr and not target.exists()
    # image first, headers second: the headers' hook does the work
    r = run_hook(header_hook, hook_env, root, V)
    assert r.returncode == 0 and f"wrote {target}" in r.stderr


def test_hooks_never_fail_an_installation(tmp_path: Path, hook_env: dict[str, str]) -> None:
    root = make_root(tmp_path, image=bzimage("6.99.9-foreign"))
    hook = install_hook(root, "postinst.d")
    r = run_hook(hook, hook_env, root, V)
    assert r.returncode == 0
    assert "is kernel 6.99.9-foreign" in r.stderr and "failed (exit 2)" in r.stderr
    r = run_hook(hook, hook_env, root)  # no version at all
    assert r.returncode == 0 and "no kernel version given" in r.stderr
    r = run_hook(hook, dict(hook_env, BTFRECONCILECTL="", PATH="/nonexistent"), root, V)
    assert r.returncode == 0 and "btfreconcilectl not found" in r.stderr
    assert not (build_dir(root) / "vmlinux").exists()


def test_run_parts_runs_ours_before_dkms(tmp_path: Path) -> None:
    d = tmp_path / "header_postinst.d"
    d.mkdir()
    for name in ("dkms", "btfreconciled-headers", "zz-btfreconciled"):
        (d / name).write_text("#!/bin/sh\n")
        (d / name).chmod(0o755)
    r = subprocess.run(["run-parts", "--test", str(d)], capture_output=True, text=True,
                       env=dict(os.environ, LC_ALL="C.UTF-8"))
    assert r.returncode == 0, r.stderr
    assert [Path(p).name for p in r.stdout.split()] == \
        ["btfreconciled-headers", "dkms", "zz-btfreconciled"]


def test_install_service_installs_the_hooks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bindir = root / "opt/btfr/bin"
    bindir.mkdir(parents=True)
    for name in ("btfreconciled", "btfreconcilectl"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    r = subprocess.run([str(REPO / "scripts/install-service"), "--root", str(root),
                        "--bindir", "/opt/btfr/bin"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for d in ("header_postinst.d", "postinst.d", "postrm.d"):
        hook = root / "etc/kernel" / d / "btfreconciled-headers"
        assert hook.read_bytes() == HOOK.read_bytes() and os.access(hook, os.X_OK)


def test_no_resolve_btfids_nothing_written(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Debian 12's headers (linux-kbuild-6.1) have no resolve_btfids: a vmlinux there would
    make Kbuild run it on every module and fail the build (found by DKMS through the real
    hooks, integration/test_dkms.py), so nothing is written and the reason is said."""
    root = make_root(tmp_path, image=bzimage(V))
    build = build_dir(root)
    (build / "tools").unlink()
    rc, out, err = run(capsys, V, "--root", str(root), "--json")
    assert rc == 1, err
    report = json.loads(out)
    assert report["action"] == "no-resolve-btfids"
    assert "tools/bpf/resolve_btfids/resolve_btfids" in report["message"]
    assert not (build / "vmlinux").exists()
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "every module build would fail" in err
    # a resolve_btfids that is there but not executable is no resolve_btfids either
    prog = with_resolve_btfids(build)
    prog.chmod(0o644)
    assert run(capsys, V, "--root", str(root))[0] == 1
    prog.chmod(0o755)
    rc, out, err = run(capsys, V, "--root", str(root))
    assert rc == 0 and written_btf(build / "vmlinux") == BTF, err
