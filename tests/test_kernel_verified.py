"""Which BTF skips strict validation as "already verified by the kernel": only bytes read from
the kernel's own /sys/kernel/btf/<name>, as identified by the file that was opened (device
and inode), never by what a path names. CI runs these as root (the mount namespace case
needs it); they fail, not skip, when that is not possible."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from oracle_tools import VMLINUX
from test_untrusted_inputs import one_line_error

from btfreconciled import elf
from btfreconciled.btf.errors import BtfError
from btfreconciled.btf.load import is_kernel_verified, load_base, load_btf
from btfreconciled.cli.main import main as ctl_main
from btfreconciled.elf import read_btf_sections
from btfreconciled.reconcile.target import VmlinuxIndex

REPO = Path(__file__).resolve().parent.parent

# [1] INT 'int', [2] PTR named 'int' -> [1]: well-formed enough to decode and dump, but the
# kernel's verifier (and ours) refuses a named PTR.
_TYPES = (struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
          + struct.pack("<III", 1, 2 << 24, 1))
_STRINGS = b"\0int\0"
INVALID = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(_TYPES), len(_TYPES),
                      len(_STRINGS)) + _TYPES + _STRINGS


def test_invalid_blob_is_rejected_only_by_strict_validation(tmp_path: Path) -> None:
    f = tmp_path / "vmlinux"
    f.write_bytes(INVALID)
    with pytest.raises(BtfError, match="PTR"):
        load_btf(f)
    assert len(load_btf(f, validate=False)) == 2


def test_the_kernels_own_file_is_trusted_and_copies_are_not(tmp_path: Path,
                                                            vmlinux_bytes: bytes) -> None:
    genuine = read_btf_sections(VMLINUX, digest=False)
    assert is_kernel_verified(genuine)
    assert not is_kernel_verified(genuine, load_base(VMLINUX))  # vmlinux is no split BTF
    copy = tmp_path / "vmlinux"
    copy.write_bytes(vmlinux_bytes)
    assert not is_kernel_verified(read_btf_sections(copy, digest=False))
    # a link to the real file opens the real file: that is the kernel's BTF
    link = tmp_path / "link" / "vmlinux"
    link.parent.mkdir()
    link.symlink_to(VMLINUX)
    assert is_kernel_verified(read_btf_sections(link, digest=False))


def test_split_btf_is_trusted_only_on_the_kernels_own_vmlinux(tmp_path: Path,
                                                              vmlinux_bytes: bytes) -> None:
    modules = [p for p in VMLINUX.parent.iterdir() if p.name != "vmlinux"]
    copy = tmp_path / "vmlinux"
    copy.write_bytes(vmlinux_bytes)
    other_base = load_base(copy)
    assert not is_kernel_verified(read_btf_sections(VMLINUX, digest=False), other_base)
    if modules:  # (a kernel with every BTF module built in has none)
        sections = read_btf_sections(modules[0], digest=False)
        assert is_kernel_verified(sections, load_base(VMLINUX))
        assert not is_kernel_verified(sections, other_base)
        assert not is_kernel_verified(sections)


def test_symlink_swapped_to_sysfs_after_the_read_is_validated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path names /sys/kernel/btf/vmlinux by the time the trust decision is made, but
    the bytes came from an invalid file: they must be validated, and refused."""
    bad = tmp_path / "bad.btf"
    bad.write_bytes(INVALID)
    link = tmp_path / "vmlinux"
    real_read = elf._read_capped

    def read_then_swap(path: Path, f, cap: int) -> bytes:  # noqa: ANN001
        data = real_read(path, f, cap)
        if link.is_symlink():
            link.unlink()
            link.symlink_to(VMLINUX)
        return data

    monkeypatch.setattr(elf, "_read_capped", read_then_swap)
    for load in (lambda: load_btf(link), lambda: VmlinuxIndex.load(str(link))):
        link.unlink(missing_ok=True)
        link.symlink_to(bad)
        with pytest.raises(BtfError, match="PTR"):
            load()
        assert link.resolve() == VMLINUX.resolve()  # the swap did happen
    for argv in (["dump", str(link)], ["inspect", str(link)]):
        link.unlink()
        link.symlink_to(bad)
        capsys.readouterr()
        assert ctl_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "PTR" in err and str(link) in err, err


def _require_root_and_unshare() -> str:
    if os.geteuid() != 0:
        pytest.fail("must run as root: it mounts over /sys/kernel/btf in a private mount "
                    "namespace (CI runs the fast tests as root)", pytrace=False)
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare(1) (util-linux) is not on PATH", pytrace=False)
    return unshare


def test_sysfs_path_of_another_mount_namespace_is_validated(tmp_path: Path) -> None:
    """A process in its own mount namespace (an unprivileged user gets one with
    `unshare -Urm`) mounts a tmpfs over /sys/kernel/btf holding an invalid "vmlinux"; root
    reading /proc/<pid>/root/sys/kernel/btf/vmlinux reads that file, not the kernel's."""
    unshare = _require_root_and_unshare()
    bad = tmp_path / "bad.btf"
    bad.write_bytes(INVALID)
    script = (f"mount -t tmpfs btfr-test /sys/kernel/btf && cp {bad} /sys/kernel/btf/vmlinux"
              " && echo ready && exec sleep 120")
    child = subprocess.Popen([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stderr is not None
        if child.stdout.readline().strip() != "ready":
            child.wait(timeout=10)
            pytest.fail("cannot mount a tmpfs over /sys/kernel/btf in a new mount namespace: "
                        f"{child.stderr.read().strip() or 'exit ' + str(child.returncode)}",
                        pytrace=False)
        theirs = f"/proc/{child.pid}/root/sys/kernel/btf/vmlinux"
        assert Path(theirs).read_bytes() == INVALID
        module = tmp_path / "mod.ko"
        subprocess.run(["objcopy", "--add-section", f".BTF={bad}", "--set-section-flags",
                        ".BTF=readonly", _object(tmp_path), module], check=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for argv in (["dump", theirs], ["inspect", theirs],
                     ["check", str(module), "--vmlinux", theirs]):
            r = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", *argv],
                               capture_output=True, text=True, timeout=60, env=env)
            one_line_error(r, theirs, "PTR")
        assert not is_kernel_verified(read_btf_sections(theirs, digest=False))
    finally:
        child.kill()
        child.wait()
    # the kernel's own file is untouched in this namespace, and still trusted
    assert is_kernel_verified(read_btf_sections(VMLINUX, digest=False))


def _object(tmp_path: Path) -> Path:
    src = tmp_path / "mod.c"
    src.write_text("int entry(int y) { return y * 3; }\n")
    obj = tmp_path / "mod.o"
    subprocess.run(["gcc", "-c", "-O1", "-o", obj, src], check=True)
    return obj


def test_dump_of_an_invalid_vmlinux_file_writes_nothing(tmp_path: Path,
                                                        vmlinux_bytes: bytes) -> None:
    """A dump validates a file while its forked renderer works: a flaw anywhere, even in
    the records the child renders, means exit 2, one line, and no output at all."""
    b = load_base(VMLINUX)
    words = bytearray(vmlinux_bytes)
    hdr_len, type_off = struct.unpack_from("<I", words, 4)[0], struct.unpack_from("<I", words, 8)[0]
    ptr_ids = [tid for tid in range(1, b.type_count) if b.kind_of(tid).name == "PTR"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for tid in (ptr_ids[0], ptr_ids[-1]):  # rendered by this process / by the child
        bad = bytearray(words)
        at = hdr_len + type_off + 4 * b._offs[tid - 1]
        struct.pack_into("<I", bad, at, 1)  # a PTR with a name
        f = tmp_path / "vmlinux.btf"
        f.write_bytes(bytes(bad))
        r = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", "dump", str(f)],
                           capture_output=True, text=True, timeout=120, env=env)
        one_line_error(r, str(f), f"[{tid}]", "PTR")
        assert r.stdout == ""


def test_inspect_says_what_was_trusted(tmp_path: Path, vmlinux_bytes: bytes,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    copy = tmp_path / "vmlinux"
    copy.write_bytes(vmlinux_bytes)
    seen = {}
    for f in (VMLINUX, copy):
        capsys.readouterr()
        assert ctl_main(["inspect", "--json", str(f)]) == 0
        seen[f] = json.loads(capsys.readouterr().out)["validated"]
    assert seen == {VMLINUX: False, copy: True}
