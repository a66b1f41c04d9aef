"""doctor: read the base a classic split BTF was built for off the module itself, and find
that build among candidate files (issue 10). Whole-tree checks on real Debian modules are in
integration/test_doctor.py."""

from __future__ import annotations

import json
from pathlib import Path

from test_reconcile import _elf, module, reparse, vmlinux

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.types import Int
from btfreconciled.cli.main import main as ctl
from btfreconciled.elf import write_btf_sections
from btfreconciled.reconcile.origin import check_base, infer_shape


def _classic(tmp_path: Path, base: Btf, name: str = "my_mod") -> Path:
    ko = tmp_path / f"{name}.ko"
    write_btf_sections(_elf(tmp_path), ko, {".BTF": module(base).to_bytes()})
    return ko


def grown() -> Btf:
    b = vmlinux()
    b.add(Int(b.add_str("extra_int_type"), 0, 4, 1, 0, 32))  # one more type, more strings
    return reparse(b)


def test_infer_shape_reads_the_base_off_the_module() -> None:
    base = reparse(vmlinux())
    split = module(base).to_bytes()
    shape = infer_shape(split)
    assert (shape.base_types, shape.base_str_len) == (base.type_count, base.str_end)
    assert shape.matches(base.type_count, base.str_end)
    g = grown()
    assert not shape.matches(g.type_count, g.str_end)
    assert check_base(split, shape, base).fits
    fit = check_base(split, shape, g)
    assert not fit.fits and "built against a vmlinux with 14 types" in fit.reason


def test_doctor_cli(tmp_path: Path, capsys) -> None:
    base = reparse(vmlinux())
    ko = _classic(tmp_path, base)
    cands = tmp_path / "boot"
    cands.mkdir()
    (cands / "vmlinux-old.btf").write_bytes(base.to_bytes())
    target = tmp_path / "new.btf"
    target.write_bytes(grown().to_bytes())
    # fits its own build
    assert ctl(["doctor", str(ko), "--vmlinux", str(cands / "vmlinux-old.btf"),
                "--search", str(tmp_path / "none")]) == 0
    capsys.readouterr()
    # not the target: says what it was built for and names its build
    assert ctl(["doctor", str(ko), "--vmlinux", str(target), "--search", str(cands)]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT: my_mod: built against a vmlinux with 14 types" in out
    assert f"its build: {cands / 'vmlinux-old.btf'}" in out
    assert f"rescue {ko} --base {cands / 'vmlinux-old.btf'}" in out
    assert ctl(["doctor", str(ko), "--vmlinux", str(target), "--search", str(cands),
                "--json"]) == 1
    d = json.loads(capsys.readouterr().out)["modules"][0]
    assert d["result"] == "does-not-fit" and d["build"] == str(cands / "vmlinux-old.btf")
    assert d["shape"]["base_types"] == 14 and d["shape"]["exact"]
    # no BTF at all: said so, and why
    nobtf = tmp_path / "nobtf.ko"
    nobtf.write_bytes(_elf(tmp_path).read_bytes())
    assert ctl(["doctor", str(nobtf), "--vmlinux", str(target)]) == 1
    out = capsys.readouterr().out
    assert "no BTF at all" in out and "unavailability of vmlinux" in out
    # errors: one line, exit 2
    assert ctl(["doctor", str(tmp_path / "missing.ko"), "--vmlinux", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ko" in err
