"""kernel-check against the real Debian kernels: what each will do with a module whose
.BTF.base does not fit it.  6.12 (CONFIG_MODULE_ALLOW_BTF_MISMATCH=y) loads it without BTF,
7.2 (option not set) refuses it: the mutated builds test_daemon_vm.py loads into those
kernels, where `insmod` shows exactly that."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import toolchain
from guest_session import mutated_fixture

from btfreconciled.cli.main import main as ctl


@pytest.mark.parametrize("series", toolchain.RELOCATING_SERIES)
def test_kernel_check_predicts_what_insmod_does(tc, series, tmp_path: Path, capsys) -> None:
    release = tc.kernel_release(series)
    kdir = tc.kernel_dir(series)
    tree = tmp_path / "modules" / release
    (tree / "updates").mkdir(parents=True)
    # the kernel's own files, where Debian sid installs them (image and config in the tree)
    (tree / "vmlinuz").symlink_to(kdir / "vmlinuz")
    (tree / "config").symlink_to(kdir / "config")
    mutated_fixture(tc, series, tree / "updates" / "btfr_embed.ko")  # work_struct grown
    shutil.copyfile(tc.fixtures_dir(series) / "btfr_types.ko", tree / "updates" / "btfr_types.ko")
    cache = tmp_path / "cache"
    rc = ctl(["kernel-check", release, "--modules-root", str(tmp_path / "modules"),
              "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert rc == 1, out
    rep = json.loads((cache / "pre-reboot" / f"{release}.json").read_text())
    assert rep["modules"] == 2 and rep["config"] == str(tree / "config")
    [bad] = rep["will_not_fit"]
    assert bad["module"] == "btfr_embed" and "work_struct" in bad["summary"]
    path = tree / "updates" / "btfr_embed.ko"
    if tc.allows_btf_mismatch(series):
        assert rep["btf_mismatch"] == "drop" and bad["on_load"] == "no-btf"
        assert f"btfr_embed ({path}) will have no usable BTF on {release}" in out
    else:
        assert rep["btf_mismatch"] == "refuse" and bad["on_load"] == "refused"
        assert f"btfr_embed ({path}) will not load on {release}" in out
        assert "CONFIG_MODULE_ALLOW_BTF_MISMATCH is not set" in out
    assert "btfr_types" not in out
