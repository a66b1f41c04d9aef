"""`dump`/`inspect` of a module that carries .BTF.base read it as bpftool 7.5 does (issue 11):
split BTF on the embedded distilled base, or relocated onto -B BASE. Before, both failed on
every such module ("string section does not start with a NUL byte"). bpftool 7.5 parity on
the real fixtures and a whole distilled tree is in integration/test_dump_base_parity.py."""

from __future__ import annotations

import json
from pathlib import Path

from test_reconcile import _module_file, distilled, module, reparse, vmlinux

from btfreconciled.btf.dump import dump_raw
from btfreconciled.cli.main import main as ctl


def test_dump_module_with_btf_base(tmp_path: Path, capsys) -> None:
    base = reparse(vmlinux())
    built = (base, module(base))
    ko = _module_file(tmp_path, built, expects=False)
    vm = tmp_path / "vmlinux.btf"
    vm.write_bytes(base.to_bytes())
    dbase, dsplit = distilled(built)
    assert ctl(["dump", str(ko)]) == 0
    out = capsys.readouterr().out
    assert out == dump_raw(dsplit)  # split ids start after the distilled base
    assert out.startswith(f"[{dbase.type_count}] STRUCT 'my_dev'")
    assert ctl(["dump", str(ko), "-B", str(vm)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"[{base.type_count}] STRUCT 'my_dev'")  # relocated onto vmlinux
    assert ctl(["inspect", str(ko), "-B", str(vm), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"] and rep["first_type_id"] == base.type_count
    # onto a vmlinux it does not fit: one line naming the problem, exit 2
    from dataclasses import replace
    grown = vmlinux()
    grown.replace(5, replace(grown.type(5), size=40))
    vm2 = tmp_path / "grown.btf"
    vm2.write_bytes(grown.to_bytes())
    assert ctl(["dump", str(ko), "-B", str(vm2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not relocate onto" in err and "work_struct" in err
