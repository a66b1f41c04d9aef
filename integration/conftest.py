"""Session fixtures for the real-kernel integration tests (see vm/README.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolchain  # noqa: E402


@pytest.fixture(scope="session")
def tc(request):
    """The toolchain module, after making sure vm/setup has built everything.

    vm/setup's progress is shown live (pytest's output capture is suspended meanwhile):
    the first build takes minutes and should not look like a hang."""
    if not toolchain.toolchain_ready():
        capman = request.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            with capman.global_and_fixture_disabled():
                toolchain.require_toolchain()
        else:
            toolchain.require_toolchain()
    return toolchain


@pytest.fixture(scope="session")
def cache_root(tc) -> Path:
    return tc.cache_root()


@pytest.fixture(scope="session")
def rootfs(tc) -> Path:
    return tc.rootfs()


@pytest.fixture(scope="session")
def kernel_612(tc) -> Path:
    return tc.kernel_dir("6.12")


@pytest.fixture(scope="session")
def kernel_61(tc) -> Path:
    return tc.kernel_dir("6.1")


@pytest.fixture(scope="session")
def fixtures_612(tc) -> Path:
    return tc.fixtures_dir("6.12")


@pytest.fixture(scope="session")
def fixtures_61(tc) -> Path:
    return tc.fixtures_dir("6.1")


def _boot_and_load(tc, series: str, tmp_factory) -> dict:
    """Boot ``series`` once, insmod every fixture (the .BTF.base build, then the plain
    one), and save what the kernel made of them under verdicts/<release>/."""
    fx = tc.fixtures_dir(series)
    mods = list(tc.FIXTURE_MODULES)
    out = tmp_factory.mktemp(f"vm-{series}")
    guest_out = "/run/btfr-out"
    cmd = ["integration/guest/load_fixtures.sh", guest_out,
           "distilled", str(fx), *mods, "--", "plain", str(fx / "plain"), *mods]
    res = tc.run_in_vm(series, cmd, timeout=400, rwdirs=[f"{guest_out}={out}"])
    if res.returncode != 0 or not (out / "complete").exists():
        raise RuntimeError(f"VM run for {series} failed (status {res.returncode}):\n"
                           f"{res.stdout}\n{res.stderr}")
    release = tc.kernel_release(series)
    vd = tc.cache_root() / "verdicts" / release
    tmp = vd.with_name(f"{vd.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out, tmp)
    summary = {"release": release, "uname": (out / "uname").read_text().strip(),
               "modules": {}}
    for phase in ("distilled", "plain"):
        for m in mods:
            d = out / phase
            dmesg = (d / f"{m}.dmesg").read_text(errors="replace").splitlines()
            summary["modules"].setdefault(m, {})[phase] = {
                "insmod_status": int((d / f"{m}.insmod.rc").read_text()),
                "sysfs_btf": (d / f"{m}.btf").exists(),
                "sysfs_btf_size": (d / f"{m}.btf").stat().st_size if (d / f"{m}.btf").exists()
                else None,
                "bpftool_ko_status": int((d / f"{m}.ko.rc").read_text()),
                "dmesg": [ln for ln in dmesg if "BTF" in ln or "BPF" in ln or "kfunc" in ln],
            }
            if phase == "distilled" and (d / f"{m}.btf").exists():
                shutil.copyfile(d / f"{m}.btf", tmp / f"{m}.btf")
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # replace the previous verdicts as a whole (another session may be doing the same)
    old = vd.with_name(f"{vd.name}.old{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        vd.rename(old)
    try:
        tmp.rename(vd)
    except OSError:  # someone else's verdicts landed in between: ours are as new
        shutil.rmtree(vd, ignore_errors=True)
        tmp.rename(vd)
    shutil.rmtree(old, ignore_errors=True)
    return {"release": release, "verdicts": vd, "out": out, "summary": summary,
            "stdout": res.stdout, "stderr": res.stderr}


@pytest.fixture(scope="session")
def vm_boot(tc, tmp_path_factory):
    """``vm_boot(series)``: the one boot of ``series`` per session (every fixture loaded,
    verdicts saved); test modules share it, whichever asks first boots."""
    booted: dict[str, dict] = {}

    def boot(series: str) -> dict:
        if series not in booted:
            booted[series] = _boot_and_load(tc, series, tmp_path_factory)
        return booted[series]
    return boot


@pytest.fixture(scope="session")
def vm_612(vm_boot) -> dict:
    """One 6.12 boot for the whole session: every fixture loaded, verdicts saved."""
    return vm_boot("6.12")


@pytest.fixture(scope="session")
def vm_61(vm_boot) -> dict:
    """One 6.1 boot for the whole session: what an old kernel does with .BTF.base modules."""
    return vm_boot("6.1")


@pytest.fixture(scope="session", params=toolchain.RELOCATING_SERIES)
def vm_relocating(request, vm_boot) -> dict:
    """The boot of each kernel that relocates .BTF.base itself (6.12, 7.2), with its series."""
    return {**vm_boot(request.param), "series": request.param}
