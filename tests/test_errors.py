"""Typed errors (errors.py): every code is raised somewhere, codes survive a process
boundary, and no code in the package decides by an exception's words."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from test_doctor import _classic, grown
from test_reconcile import module, reparse, vmlinux

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.errors import BtfError
from btfreconciled.btf.types import Int
from btfreconciled.elf import BtfSections
from btfreconciled.errors import ErrorCode
from btfreconciled.reconcile.doctor import Candidates
from btfreconciled.reconcile.merge import MergeError
from btfreconciled.reconcile.rescue import CorruptBtf, RescueError, find_build, rescue_onto
from btfreconciled.reconcile.target import VmlinuxIndex

PKG = Path(__file__).resolve().parent.parent / "btfreconciled"


def _sources() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(PKG.rglob("*.py")) if p.name != "errors.py"
            or p.parent.name != "btfreconciled"}


def test_every_code_is_raised_somewhere() -> None:
    """No dead code: each ErrorCode member is named outside errors.py (at a raise site, or
    where an error or a protocol answer is built)."""
    text = "\n".join(_sources().values())
    dead = [c.name for c in ErrorCode if not re.search(rf"\bErrorCode\.{c.name}\b", text)]
    assert not dead, dead


def test_codes_are_distinct_stable_strings() -> None:
    # an Enum with a repeated value makes the second name an alias of the first
    assert len(ErrorCode.__members__) == len(ErrorCode)
    for c in ErrorCode:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", c.value), c


def test_the_package_never_decides_by_an_exceptions_words() -> None:
    """`"..." in str(e)` and the like classify a failure by its message: read `e.code`."""
    pattern = re.compile(r"""["'][^"']*["']\s+(not\s+)?in\s+str\((e|exc|err|error)\)"""
                         r"""|str\((e|exc|err|error)\)\.(startswith|endswith)\(""")
    found = [f"{p.relative_to(PKG)}:{n}" for p, t in _sources().items()
             for n, line in enumerate(t.splitlines(), 1) if pattern.search(line)]
    assert not found, found


@pytest.mark.parametrize("exc", [
    BtfError("m", source="s", offset=4, type_id=2, code=ErrorCode.BTF_LOOP),
    MergeError("m", ErrorCode.MERGE_CHANGED),
    RescueError("m", ErrorCode.RESCUE_NO_BUILD),
    CorruptBtf("m"),
], ids=lambda e: type(e).__name__)
def test_codes_survive_pickling(exc: Exception) -> None:
    """A worker process hands its error to the parent by pickling it."""
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    assert back.code is exc.code  # type: ignore[attr-defined]


def _sections(path: Path, btf: bytes | None, base: bytes | None = None) -> BtfSections:
    return BtfSections(path, None, btf, base, None, True, None)


@pytest.fixture
def old() -> Btf:
    return reparse(vmlinux())


def test_rescue_codes(tmp_path: Path, old: Btf) -> None:
    ko = tmp_path / "m.ko"
    split = module(old).to_bytes()
    none = Candidates([])
    cases = [
        (_sections(ko, None), None, ErrorCode.RESCUE_NO_BTF),
        (_sections(ko, split, b"base"), None, ErrorCode.RESCUE_ALREADY_DISTILLED),
        (_sections(ko, b"not BTF"), None, ErrorCode.RESCUE_CORRUPT_BTF),
        (_sections(ko, split), grown(), ErrorCode.RESCUE_NOT_THE_BUILD),
        (_sections(ko, split), None, ErrorCode.RESCUE_NO_BUILD),
    ]
    for sections, base, code in cases:
        with pytest.raises(RescueError) as e:
            find_build(ko, sections, none, base, "b.btf")
        assert e.value.code is code, (code, str(e.value))
        assert isinstance(e.value, CorruptBtf) == (code is ErrorCode.RESCUE_CORRUPT_BTF)


def test_rescue_that_does_not_reconcile_has_its_code(tmp_path: Path, old: Btf) -> None:
    ko = _classic(tmp_path, old)
    (tmp_path / "old.btf").write_bytes(old.to_bytes())
    bare = Btf()
    bare.add(Int(bare.add_str("int"), 0, 4, 1, 0, 32))
    with pytest.raises(RescueError) as e:
        rescue_onto(ko, VmlinuxIndex(reparse(bare)), Candidates([tmp_path / "old.btf"]),
                    module="my_mod")
    assert e.value.code is ErrorCode.RESCUE_NO_RECONCILE
    assert "does not reconcile onto" in str(e.value)  # the message says so too


def test_a_daemon_record_of_an_unreadable_module_carries_its_error_code(tmp_path: Path,
                                                                         old: Btf) -> None:
    """The record (modules/<m>.json, `show --json`) keeps the error diagnostic's
    error_code: a program tells a missing file from a corrupt one without reading words."""
    from btfreconciled.daemon.record import result_record
    from btfreconciled.reconcile.module import reconcile_module_file

    target = VmlinuxIndex(old)
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"\x7fELF" + b"\x01" * 60)
    for path, code in ((tmp_path / "gone.ko", ErrorCode.INPUT_UNREADABLE),
                       (junk, ErrorCode.ELF_INVALID)):
        res = reconcile_module_file(str(path), target)
        rec = result_record(path.stem, res, path, ("k",), 0.0, kernel_id="k", release="r",
                            strict="embedded", cache=None)
        assert rec["verdict"] == "error"
        (diag,) = rec["diagnostics"]
        assert diag["code"] == "error" and diag["error_code"] == code.value, diag
