"""`btfreconcilectl doctor` on real trees (issue 10): the whole Debian 6.1 module tree checked
against the 6.12 kernel, with both kernels' files as candidates. Every module with BTF must be
told it does not fit 6.12 and get its own build (the 6.1 kernel) named -- including those
whose split BTF the kernel would accept against 6.12's vmlinux (the silent case), which are
counted. And the 6.12 tree against its own kernel: every module fits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest


def doctor(*args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", "doctor", *args,
                        "--json"], capture_output=True, text=True, timeout=1800)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout)


def test_whole_61_tree_against_612_names_the_61_build(tc) -> None:
    k61, k612 = tc.kernel_dir("6.1"), tc.kernel_dir("6.12")
    rc, out = doctor(str(k61 / "lib" / "modules"), "--vmlinux", str(k612 / "vmlinux.btf"),
                     "--search", str(k61), "--search", str(k612))
    mods = out["modules"]
    kinds = Counter(m["kind"] for m in mods)
    with_btf = [m for m in mods if m["kind"] == "classic"]
    assert len(with_btf) > 4000, kinds
    assert rc == 1
    wrong = [m for m in with_btf if m["result"] != "does-not-fit"
             or m["build"] is None or not m["build"].startswith(str(k61) + "/")]
    assert not wrong, f"{len(wrong)} modules: first {wrong[0]}"
    silent = [m for m in with_btf if m["silent"]]
    print(f"6.1 tree vs 6.12: {len(mods)} modules ({dict(kinds)}), every one with BTF "
          f"names its 6.1 build; {len(silent)} would pass the kernel's checks on 6.12")
    for m in silent:
        assert "wrong vmlinux types" in " ".join(m["details"])


@pytest.mark.parametrize("series", ["6.12", "6.1"])
def test_whole_tree_fits_its_own_kernel(tc, series: str) -> None:
    k = tc.kernel_dir(series)
    rc, out = doctor(str(k / "lib" / "modules"), "--vmlinux", str(k / "vmlinux.btf"),
                     "--search", str(k))
    bad = [m for m in out["modules"] if m["kind"] == "classic" and m["result"] != "fits"]
    assert not bad, f"{len(bad)} modules said not to fit their own kernel: {bad[0]}"
    assert rc == 0
