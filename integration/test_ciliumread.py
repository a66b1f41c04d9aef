"""examples/ciliumread (cilium/ebpf 0.11, built by vm/setup's cilium-example step) without a VM.

The VM tests (test_daemon_vm.py) read btfr_loader's counter with it; here, in the trixie
chroot on the host's kernel, what needs no btfr_loader: its command line, its one-line
errors, that it is one static binary (only the binary goes into a guest), and which BTF
lets cilium/ebpf load the program.  The host kernel has no btfr_loader, but loading comes
before attaching: with a merged file (the 6.12 vmlinux followed by the reconciled
btfr_loader fixture) as KernelTypes the CO-RE relocation resolves, the kernel accepts the
program, and only the kprobe finds no btfr_loader_poke; with a vmlinux-only BTF, or none
(cilium/ebpf then takes the host's vmlinux BTF), the relocation is poisoned and the kernel's
verifier rejects the program: the text test_daemon_vm.py expects in the guests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from btfreconciled.reconcile import Verdict, VmlinuxIndex, reconcile_module_file
from btfreconciled.reconcile.merge import merged_bytes

pytestmark = pytest.mark.chroot


@pytest.fixture(scope="module")
def ciliumread(tc) -> str:
    exe = tc.ciliumread_binary()
    if not exe.is_file():
        pytest.fail(f"{exe} missing: vm/setup's cilium-example step builds it")
    return str(exe)


def run(tc, *argv: str):
    return tc.run_in_chroot(list(argv), timeout=120)


def one_line(res) -> str:
    assert res.stdout == "", res.stdout  # never printed "attached"
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_help(tc, ciliumread) -> None:
    res = run(tc, ciliumread, "--help")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.startswith("usage: ciliumread [--btf FILE] [--timeout SEC]\n")
    assert "btfreconcilectl path --merged btfr_loader" in res.stdout


def test_is_one_static_binary(tc, ciliumread) -> None:
    """No program interpreter, no shared libraries: the guest needs nothing else of Go."""
    res = run(tc, "readelf", "-lW", ciliumread)
    assert res.returncode == 0, res.stderr
    assert "LOAD" in res.stdout
    assert "INTERP" not in res.stdout and "interpreter" not in res.stdout


def test_missing_btf_file_is_one_line(tc, ciliumread, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.btf"
    res = run(tc, ciliumread, "--btf", str(missing))
    assert res.returncode == 1
    assert one_line(res) == f"ciliumread: {missing}: no such file or directory"


def test_not_a_btf_file_is_one_line(tc, ciliumread, tmp_path: Path) -> None:
    junk = tmp_path / "junk.btf"
    junk.write_bytes(b"not BTF at all\n")
    res = run(tc, ciliumread, "--btf", str(junk))
    assert res.returncode == 1
    assert one_line(res).startswith(f"ciliumread: {junk}: not a BTF file: ")


@pytest.mark.parametrize("argv", [["--timeout", "soon"], ["--timeout", "-1"], ["--bogus"],
                                  ["--btf", ""], ["extra"]])
def test_usage_errors_exit_2(tc, ciliumread, argv: list[str]) -> None:
    res = run(tc, ciliumread, *argv)
    assert res.returncode == 2
    assert one_line(res).endswith(" (see ciliumread --help)")


def load_or_skip(res) -> None:
    # bpf() needs CAP_BPF/CAP_SYS_ADMIN: skipped without it (a failure in CI, see conftest)
    if "operation not permitted" in res.stderr:
        pytest.skip(f"bpf() not permitted: {res.stderr.strip()}")


def test_merged_btf_lets_cilium_load_the_program(tc, ciliumread, tmp_path: Path) -> None:
    """KernelTypes = merged 6.12 vmlinux + btfr_loader: the relocation resolves and the host
    kernel loads the program; attaching then fails, the host has no btfr_loader."""
    target = VmlinuxIndex.load(str(tc.kernel_dir("6.12") / "vmlinux.btf"))
    res = reconcile_module_file(str(tc.fixtures_dir("6.12") / "btfr_loader.ko"), target)
    assert res.verdict is Verdict.OK and res.btf is not None, res.summary
    merged = tmp_path / "btfr_loader.merged.btf"
    merged.write_bytes(merged_bytes(target.btf, [("btfr_loader", res.btf)]))
    run_res = run(tc, ciliumread, "--btf", str(merged), "--timeout", "5")
    load_or_skip(run_res)
    assert run_res.returncode == 1
    assert one_line(run_res).startswith(
        "ciliumread: cannot attach the kprobe to btfr_loader_poke (is btfr_loader loaded?): ")


@pytest.mark.parametrize("with_btf", [False, True], ids=["kernel-btf", "vmlinux-only-file"])
def test_without_module_btf_the_load_fails(tc, ciliumread, with_btf: bool) -> None:
    """No btfr_loader_state in the CO-RE target: cilium/ebpf's poisoned-relocation error,
    the one test_daemon_vm.py asserts for `cilium.kernel` in the guests."""
    vmlinux = str(tc.kernel_dir("6.12") / "vmlinux.btf")
    argv = ["--btf", vmlinux] if with_btf else []
    res = run(tc, ciliumread, *argv, "--timeout", "5")
    load_or_skip(res)
    assert res.returncode == 1
    target = vmlinux if with_btf else "the kernel's vmlinux BTF"
    pattern = tc.CILIUM_POISONED.format(target=re.escape(target))
    assert re.fullmatch(pattern, one_line(res)), res.stderr
