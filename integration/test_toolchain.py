"""The toolchain that vm/setup builds: kernels, fixture modules, the libbpf oracle."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import toolchain

MODS = toolchain.FIXTURE_MODULES
BTF_MAGIC = b"\x9f\xeb"


def sections(path: Path) -> set[str]:
    out = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return set(re.findall(r"^\s*\[\s*\d+\]\s+(\S+)", out, re.M))


@pytest.mark.parametrize("series", ["6.12", "6.1"])
def test_kernel_dir_complete(tc, series):
    kd = tc.kernel_dir(series)
    release = tc.kernel_release(series)
    assert kd.name == release and release.startswith(series + ".")
    for f in ("vmlinuz", "config", "System.map", "vmlinux", "vmlinux.btf"):
        assert (kd / f).is_file() and (kd / f).stat().st_size > 0, f
    assert (kd / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert {".BTF"} <= sections(kd / "vmlinux")
    assert (kd / "vmlinux.btf").read_bytes()[:2] == BTF_MAGIC
    assert (kd / "lib/modules" / release / "modules.dep").stat().st_size > 0
    assert "CONFIG_DEBUG_INFO_BTF_MODULES=y" in (kd / "config").read_text()
    # the VM's root has the same module tree
    assert (tc.rootfs() / "usr/lib/modules" / release / "modules.dep").is_file()


@pytest.mark.parametrize("mod", MODS)
def test_612_fixture_has_btf_and_btf_base(tc, mod):
    ko = tc.fixtures_dir("6.12") / f"{mod}.ko"
    assert {".BTF", ".BTF.base"} <= sections(ko)
    plain = tc.fixtures_dir("6.12") / "plain" / f"{mod}.ko"
    assert ".BTF" in sections(plain) and ".BTF.base" not in sections(plain)


@pytest.mark.parametrize("mod", MODS)
def test_61_fixture_has_btf_and_btf_base(tc, mod):
    """6.1 Kbuild knows no distilled_base: vm/setup adds .BTF.base with pahole 1.30."""
    ko = tc.fixtures_dir("6.1") / f"{mod}.ko"
    assert {".BTF", ".BTF.base"} <= sections(ko)
    assert ".BTF.base" not in sections(tc.fixtures_dir("6.1") / "plain" / f"{mod}.ko")


@pytest.mark.chroot
@pytest.mark.parametrize("series", ["6.12", "6.1"])
@pytest.mark.parametrize("mod", MODS)
def test_btf_base_content_with_bpftool(tc, series, mod, tmp_path):
    """bpftool 7.5 reads .BTF.base: only named INT/FLOAT/ENUM/FWD/STRUCT/UNION, vlen=0."""
    ko = tc.fixtures_dir(series) / f"{mod}.ko"
    raw = tmp_path / "base.btf"
    subprocess.run(["objcopy", f"--dump-section=.BTF.base={raw}", str(ko), "/dev/null"],
                   check=True)
    res = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(raw), "format", "raw"])
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
    assert lines
    for ln in lines:
        m = re.match(r"\[\d+\] (\w+) '([^']*)'", ln)
        assert m, ln
        kind, name = m.groups()
        assert kind in {"INT", "FLOAT", "ENUM", "FWD", "STRUCT", "UNION"}, ln
        assert name and name != "(anon)", ln
        if kind in {"STRUCT", "UNION", "ENUM"}:
            assert "vlen=0" in ln, ln
    names = {re.match(r"\[\d+\] \w+ '([^']*)'", ln).group(1) for ln in lines}
    expect = {
        "btfr_embed": {"list_head", "work_struct", "completion"},
        "btfr_ptr": {"task_struct", "sk_buff", "file"},
        "btfr_types": {"spinlock", "hrtimer_restart"},
        "btfr_kfunc": {"task_struct"},
        "btfr_loader": {"list_head"},
    }[mod]
    assert expect <= names, res.stdout
    if mod == "btfr_types":
        # atomic_t is a typedef of an anonymous struct: copied into the split BTF whole
        assert "atomic_t" not in names


@pytest.mark.chroot
@pytest.mark.parametrize("mod", MODS)
def test_oracle_parse_split_612(tc, mod, tmp_path):
    """libbpf 1.5 btf__parse_split of each fixture on the 6.12 vmlinux (relocates
    .BTF.base); the result dumps like bpftool's own view of the .ko."""
    kd = tc.kernel_dir("6.12")
    ko = tc.fixtures_dir("6.12") / f"{mod}.ko"
    out = tmp_path / f"{mod}.btf"
    res = tc.oracle("parse-split", str(ko), str(kd / "vmlinux"), str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:2] == BTF_MAGIC
    ours = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(out), "-B",
                             str(kd / "vmlinux.btf"), "format", "raw"], check=True).stdout
    theirs = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(ko), "-B",
                               str(kd / "vmlinux.btf"), "format", "raw"], check=True).stdout
    assert ours == theirs
    # split ids continue after the real vmlinux, not after the distilled base
    first_id = int(re.match(r"\[(\d+)\]", ours).group(1))
    info = tc.oracle("info", str(kd / "vmlinux.btf"), check=True).stdout
    assert first_id == int(re.search(r"types=(\d+)", info).group(1)) + 1


@pytest.mark.chroot
def test_oracle_distill_relocate_roundtrip(tc, tmp_path):
    kd = tc.kernel_dir("6.12")
    ko = tc.fixtures_dir("6.12") / "btfr_embed.ko"
    db, ds, rel, ref = (tmp_path / n for n in ("db", "ds", "rel", "ref"))
    assert tc.oracle("parse-split", str(ko), str(kd / "vmlinux"), str(ref)).returncode == 0
    res = tc.oracle("distill", str(ko), str(kd / "vmlinux.btf"), str(db), str(ds))
    assert res.returncode == 0, res.stderr
    res = tc.oracle("relocate", str(ds), str(db), str(kd / "vmlinux.btf"), str(rel))
    assert res.returncode == 0, res.stderr
    assert rel.read_bytes() == ref.read_bytes()
    # the module's own .BTF.base ('-') relocates onto the 6.1 vmlinux too
    res = tc.oracle("relocate", str(ko), "-", str(tc.kernel_dir("6.1") / "vmlinux.btf"),
                    str(tmp_path / "on61"))
    assert res.returncode == 0, res.stderr


@pytest.mark.chroot
def test_oracle_relocate_rejects_with_message(tc, tmp_path):
    """btfr_embed needs list_head; btfr_ptr's distilled base has none: libbpf says so."""
    fx = tc.fixtures_dir("6.12")
    res = tc.oracle("relocate", str(fx / "btfr_embed.ko"), "-",
                    str(fx / "btfr_ptr.btf.base"), str(tmp_path / "out"))
    assert res.returncode == 1
    assert "list_head" in res.stderr and "btf__relocate rejected" in res.stderr
    assert not (tmp_path / "out").exists()


def test_oracle_usage_error(tc):
    assert tc.oracle("parse-split").returncode == 2


def test_chroot_missing_rootfs_is_a_clear_error(tc, tmp_path):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BTFRECONCILED_CACHE_ROOT": str(tmp_path)}
    res = subprocess.run([str(tc.VM_DIR / "chroot"), "--", "true"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert res.returncode == 125
    assert "root filesystem missing" in res.stderr and "vm/setup" in res.stderr


@pytest.mark.chroot
def test_chroot_sees_checkout_and_tools(tc):
    res = tc.run_in_chroot(
        "pwd && pahole --version && bpftool version | head -n1 && "
        "python3 -c 'import btfreconciled, elftools, structlog, pyroute2, watchdog, zstandard'")
    assert res.returncode == 0, res.stderr
    assert "v1.30" in res.stdout and "v7.5" in res.stdout
