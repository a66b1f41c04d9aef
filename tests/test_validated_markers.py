"""Validated-markers (btf/markers.py): a vmlinux file's bytes are strictly validated once,
later loads of the same bytes trust root's marker, and nothing else is trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from btfreconciled.btf import markers
from btfreconciled.btf.btf import Btf
from btfreconciled.btf.errors import BtfError
from btfreconciled.reconcile.target import VmlinuxIndex

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="markers are written by root only: "
                                "run the fast tests as root to cover them")


@pytest.fixture
def trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("BTFRECONCILED_TRUST_DIR", str(root))
    return root


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    seen: list[bool] = []
    real = Btf.parse.__func__  # type: ignore[attr-defined]

    def parse(cls, data, *a, validate=True, **kw):  # noqa: ANN001, ANN202
        seen.append(validate)
        return real(cls, data, *a, validate=validate, **kw)

    monkeypatch.setattr(Btf, "parse", classmethod(parse))
    return seen


def _file(tmp_path: Path, data: bytes) -> Path:
    f = tmp_path / "vmlinux.btf"
    f.write_bytes(data)
    return f


def test_second_load_of_the_same_bytes_skips_validation(trust, validations, tmp_path,
                                                         vmlinux_bytes):
    f = _file(tmp_path, vmlinux_bytes)
    a = VmlinuxIndex.load(str(f))
    assert validations == [True]
    assert (trust / "validated" / markers.marker_name(vmlinux_bytes)).is_file()
    b = VmlinuxIndex.load(str(f))
    assert validations == [True, False]
    assert a.type_count == b.type_count


def test_untrustworthy_markers_are_ignored(trust, validations, tmp_path, vmlinux_bytes):
    f = _file(tmp_path, vmlinux_bytes)
    VmlinuxIndex.load(str(f))
    marker = trust / "validated" / markers.marker_name(vmlinux_bytes)
    marker.chmod(0o666)  # anyone could have written it
    VmlinuxIndex.load(str(f))
    marker.chmod(0o644)
    os.chown(marker, 65534, 65534)  # not root's
    VmlinuxIndex.load(str(f))
    marker.unlink()
    planted = tmp_path / "planted"
    planted.write_text("")
    marker.symlink_to(planted)  # a symlink is never a marker
    VmlinuxIndex.load(str(f))
    marker.unlink()
    (trust / "validated").chmod(0o777)  # a directory others can write to
    VmlinuxIndex.load(str(f))
    assert validations == [True] * 5


def test_other_bytes_are_validated_and_bad_ones_leave_no_marker(trust, validations, tmp_path,
                                                                vmlinux_bytes):
    VmlinuxIndex.load(str(_file(tmp_path, vmlinux_bytes)))
    bad = bytearray(vmlinux_bytes)
    bad[24 + 4:24 + 8] = (0x7FFFFFFF).to_bytes(4, "little")  # first type's info: bogus kind
    f = _file(tmp_path, bytes(bad))
    with pytest.raises(BtfError):
        VmlinuxIndex.load(str(f))
    assert validations == [True, True]
    assert not (trust / "validated" / markers.marker_name(bytes(bad))).exists()


def test_no_trust_root_no_markers(tmp_path, monkeypatch, validations, vmlinux_bytes):
    monkeypatch.setenv("BTFRECONCILED_TRUST_DIR", str(tmp_path / "missing"))
    f = _file(tmp_path, vmlinux_bytes)
    VmlinuxIndex.load(str(f))
    VmlinuxIndex.load(str(f))
    assert validations == [True, True]
    assert not (tmp_path / "missing").exists()
