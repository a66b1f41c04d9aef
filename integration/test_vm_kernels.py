"""What the real kernels do with the fixture modules (one boot per kernel per session).

6.12 relocates .BTF.base in load_module(): /sys/kernel/btf/<mod> appears and equals what
bpftool 7.5 (libbpf 1.5) makes of the .ko against the running vmlinux.  6.1 does not know
.BTF.base: it validates .BTF as split BTF on the full vmlinux, which fails.  The kernel's
output is kept under <cache>/verdicts/<release>/ for the other test suites.
"""

from __future__ import annotations

import json

import pytest
import toolchain

MODS = toolchain.FIXTURE_MODULES
pytestmark = pytest.mark.vm


def test_612_guest_runs_the_cached_kernel(vm_612, tc):
    assert vm_612["summary"]["uname"] == tc.kernel_release("6.12")
    assert "v7.5" in (vm_612["out"] / "bpftool.version").read_text()
    # /sys/kernel/btf/vmlinux is exactly the .BTF section vm/setup extracted
    assert (vm_612["verdicts"] / "vmlinux.btf").read_bytes() == \
        (tc.kernel_dir("6.12") / "vmlinux.btf").read_bytes()


@pytest.mark.parametrize("mod", MODS)
def test_612_loads_fixture_and_relocates_btf(vm_612, mod):
    d = vm_612["out"] / "distilled"
    assert (d / f"{mod}.insmod.rc").read_text().strip() == "0", (d / f"{mod}.insmod").read_text()
    assert (d / f"{mod}.btf").exists(), f"/sys/kernel/btf/{mod} missing"
    # saved as the kernel's verdict
    verdict = vm_612["verdicts"] / f"{mod}.btf"
    assert verdict.read_bytes()[:2] == b"\x9f\xeb"
    assert verdict.read_bytes() == (d / f"{mod}.btf").read_bytes()
    assert (d / f"{mod}.sysfs.rc").read_text().strip() == "0"
    assert (d / f"{mod}.ko.rc").read_text().strip() == "0"
    sysfs = (d / f"{mod}.sysfs.txt").read_text()
    assert sysfs and sysfs == (d / f"{mod}.ko.txt").read_text()
    dmesg = (d / f"{mod}.dmesg").read_text()
    assert "failed to validate module" not in dmesg
    assert f"{mod}: loaded" in dmesg


@pytest.mark.parametrize("mod", MODS)
def test_612_plain_fixture_also_loads(vm_612, mod):
    d = vm_612["out"] / "plain"
    assert (d / f"{mod}.insmod.rc").read_text().strip() == "0"
    assert (d / f"{mod}.sysfs.txt").read_text() == (d / f"{mod}.ko.txt").read_text()


def test_612_kfunc_registered(vm_612):
    d = vm_612["out"] / "distilled"
    dump = (d / "btfr_kfunc.sysfs.txt").read_text()
    for f in ("btfr_kfunc_add", "btfr_kfunc_sum", "btfr_kfunc_task_pid"):
        assert f"FUNC '{f}'" in dump
    assert "cannot register kfuncs" not in (d / "btfr_kfunc.dmesg").read_text()


@pytest.mark.chroot
@pytest.mark.parametrize("mod", MODS)
def test_612_libbpf_oracle_matches_kernel(vm_612, tc, mod, tmp_path):
    """libbpf's btf__parse_split + btf__raw_data gives the kernel's bytes exactly."""
    out = tmp_path / "o.btf"
    res = tc.oracle("parse-split", str(tc.fixtures_dir("6.12") / f"{mod}.ko"),
                    str(tc.kernel_dir("6.12") / "vmlinux"), str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == (vm_612["verdicts"] / f"{mod}.btf").read_bytes()


def test_61_guest_runs_the_cached_kernel(vm_61, tc):
    assert vm_61["summary"]["uname"] == tc.kernel_release("6.1")
    assert (vm_61["verdicts"] / "vmlinux.btf").read_bytes() == \
        (tc.kernel_dir("6.1") / "vmlinux.btf").read_bytes()
    summary = json.loads((vm_61["verdicts"] / "summary.json").read_text())
    assert set(summary["modules"]) == set(MODS)


@pytest.mark.parametrize("mod", MODS)
def test_61_cannot_use_btf_base(vm_61, mod):
    """Observed on Debian 6.1 (CONFIG_MODULE_ALLOW_BTF_MISMATCH=y): the module loads, the
    kernel reads .BTF as split BTF on its full vmlinux, rejects it ("failed to validate
    module [m] BTF: -22") and publishes no /sys/kernel/btf/<m>.  bpftool 7.5 (libbpf)
    in the same guest does relocate the .ko onto the running vmlinux: user space can
    supply what the kernel cannot."""
    d = vm_61["out"] / "distilled"
    assert (d / f"{mod}.insmod.rc").read_text().strip() == "0"
    assert not (d / f"{mod}.btf").exists()
    assert not (vm_61["verdicts"] / f"{mod}.btf").exists()
    dmesg = (d / f"{mod}.dmesg").read_text()
    assert f"failed to validate module [{mod}] BTF" in dmesg
    assert (d / f"{mod}.ko.rc").read_text().strip() == "0"
    assert (d / f"{mod}.ko.txt").read_text().startswith("[")
    if mod == "btfr_kfunc":
        assert "missing module BTF, cannot register kfuncs" in dmesg


@pytest.mark.parametrize("mod", MODS)
def test_61_plain_module_btf_works(vm_61, mod):
    """Control: the same module with classic split BTF (no .BTF.base) is accepted by 6.1."""
    d = vm_61["out"] / "plain"
    assert (d / f"{mod}.insmod.rc").read_text().strip() == "0"
    assert (d / f"{mod}.btf").exists()
    assert (d / f"{mod}.sysfs.txt").read_text() == (d / f"{mod}.ko.txt").read_text()
    assert "failed to validate module" not in (d / f"{mod}.dmesg").read_text()
