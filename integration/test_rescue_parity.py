"""Rescue over the whole Debian 6.1 tree onto 6.12 equals libbpf 1.5 (issue 10).

Every 6.1 module carries classic split BTF. Ours: `rescue` finds its build among candidate
files (the 6.1 and 6.12 vmlinux BTF), distills against it, and reconciles the result onto the
6.12 kernel. libbpf 1.5: btf__distill_base on the true base (6.1), then btf__relocate onto
6.12. Same accept/reject for every module, and the same bytes: distilled base, new split BTF,
and the relocated BTF of every module both accept.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest
from test_libbpf_parity import harness, run_harness  # noqa: F401 - the session fixture

from btfreconciled.elf import BTF_BASE_SECTION, BTF_SECTION, read_btf_sections
from btfreconciled.errors import ErrorCode
from btfreconciled.reconcile import EMBEDDED_LIBBPF_1_5, VmlinuxIndex
from btfreconciled.reconcile.doctor import Candidates
from btfreconciled.reconcile.rescue import RescueError, rescue_onto

pytestmark = pytest.mark.chroot
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_st: dict = {}


def _init(target: str, candidates: list[str], work: str) -> None:
    _st.update(target=VmlinuxIndex.load(target), cands=Candidates([Path(c) for c in candidates]),
               work=work)


def _sha(b: bytes | None) -> str:
    return hashlib.sha256(b).hexdigest() if b is not None else "missing"


def _ours(job: tuple[int, str]) -> tuple[int, str, bool, tuple[str, str, str] | str]:
    i, path = job
    data = read_btf_sections(path, digest=False).btf
    if data is None:
        return i, path, False, "no .BTF"
    with open(os.path.join(_st["work"], f"m{i}.btf"), "wb") as f:
        f.write(data)
    try:
        r = rescue_onto(path, _st["target"], _st["cands"], module=f"m{i}",
                        embedded_rule=EMBEDDED_LIBBPF_1_5)
    except RescueError as e:
        if e.code is not ErrorCode.RESCUE_NO_RECONCILE:
            return i, path, True, f"FAIL: {e}"
        return i, path, True, "rejected"
    s = r.distilled.sections
    return i, path, True, (_sha(s[BTF_BASE_SECTION]), _sha(s[BTF_SECTION]), _sha(r.btf))


def test_rescue_of_the_61_tree_onto_612_equals_libbpf(tc, harness, tmp_path) -> None:  # noqa: F811
    k61, k612 = tc.kernel_dir("6.1"), tc.kernel_dir("6.12")
    mods = sorted(os.path.join(d, f) for d, _, fs in os.walk(k61 / "lib" / "modules")
                  for f in fs if f.endswith(SUFFIXES))
    cands = [str(k61 / "vmlinux.btf"), str(k612 / "vmlinux.btf")]
    with multiprocessing.get_context("fork").Pool(
            2, initializer=_init, initargs=(str(k612 / "vmlinux.btf"), cands,
                                            str(tmp_path))) as pool:
        ours = pool.map(_ours, list(enumerate(mods)), chunksize=16)
    fails = [(p, r) for _, p, _, r in ours if isinstance(r, str) and r.startswith("FAIL")]
    assert not fails, fails[:5]
    todo = [(i, p, r) for i, p, has, r in ours if has]
    # libbpf: distill on the true base (6.1), then relocate those onto 6.12
    d = tmp_path / "distilled"
    d.mkdir()
    st1 = run_harness(tc, harness, "distill", k61 / "vmlinux.btf",
                      [f"m{i}\t{tmp_path / f'm{i}.btf'}" for i, _, _ in todo], tmp_path, str(d))
    assert all(st1[f"m{i}"] == ("ok",) for i, _, _ in todo), "libbpf could not distill"
    r = tmp_path / "relocated"
    r.mkdir()
    st2 = run_harness(tc, harness, "relocate", k612 / "vmlinux.btf",
                      [f"m{i}\t{d / f'm{i}.base'}\t{d / f'm{i}.split'}" for i, _, _ in todo],
                      tmp_path, str(r))
    bad = []
    accepted = 0
    for i, p, ours_r in todo:
        rel = r / f"m{i}.rel"
        theirs_ok = st2.get(f"m{i}") == ("ok",)
        if ours_r == "rejected" or not theirs_ok:
            if (ours_r == "rejected") != (not theirs_ok):
                bad.append((p, ours_r, st2.get(f"m{i}")))
            continue
        accepted += 1
        theirs = (_sha((d / f"m{i}.base").read_bytes()), _sha((d / f"m{i}.split").read_bytes()),
                  _sha(rel.read_bytes()))
        if ours_r != theirs:
            bad.append((p, "bytes differ", ours_r, theirs))
    print(f"\n6.1 tree rescued onto 6.12: {len(todo)} modules, {accepted} accepted by both, "
          f"{len(todo) - accepted} rejected by both, {len(bad)} differences")
    assert len(todo) > 4000
    assert not bad, bad[:5]
