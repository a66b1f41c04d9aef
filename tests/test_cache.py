"""The cache: layout, atomic writes, ordering of .btf vs record, GC, errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from btfreconciled import cache as cache_mod
from btfreconciled.cache import Cache, CacheError, atomic_write, check_module_name, kernel_id_of

KID = kernel_id_of(b"vmlinux")
OTHER = kernel_id_of(b"another kernel")


def test_layout_and_current_link(tmp_path: Path) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    assert (tmp_path / KID / "modules").is_dir()
    assert os.readlink(tmp_path / "current") == KID  # relative: the cache can move
    c.publish("foo", {"verdict": "ok"}, b"BTFDATA")
    assert (tmp_path / "current" / "modules" / "foo.btf").read_bytes() == b"BTFDATA"
    assert json.loads((tmp_path / KID / "modules" / "foo.json").read_text()) == {"verdict": "ok"}
    c.write_manifest({"kernel_id": KID})
    assert c.read_manifest() == {"kernel_id": KID}
    assert list(c.published_modules()) == ["foo"]
    # re-pointing `current` at another kernel replaces the link atomically
    Cache(tmp_path, OTHER).prepare()
    assert os.readlink(tmp_path / "current") == OTHER


def test_failed_reconciliation_removes_stale_btf_before_record(tmp_path: Path) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    c.publish("foo", {"verdict": "ok"}, b"old")
    c.publish("foo", {"verdict": "incompatible"}, None)
    assert not c.btf_path("foo").exists()
    assert c.read_record("foo") == {"verdict": "incompatible"}
    assert c.remove("foo")
    assert not c.record_path("foo").exists()
    assert not c.remove("foo")


def test_name_normalization_and_rejection(tmp_path: Path) -> None:
    assert check_module_name("snd-hda-intel") == "snd_hda_intel"
    c = Cache(tmp_path, KID)
    assert c.btf_path("a-b").name == "a_b.btf"
    for bad in ("../etc/passwd", "a/b", "", ".", "x" * 80, "a\nb"):
        with pytest.raises(CacheError):
            check_module_name(bad)
    with pytest.raises(CacheError):
        Cache(tmp_path, "../x")


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"old")

    def enospc(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "write", enospc)
    with pytest.raises(OSError) as info:
        atomic_write(target, b"new" * 1000)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_prepare_removes_temporary_leftovers(tmp_path: Path) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    junk = c.modules_dir / ".tmp-foo.btf.abc123"
    junk.write_bytes(b"partial")
    removed = c.prepare()
    assert junk.name in removed and not junk.exists()


def test_gc_removes_only_other_kernel_dirs(tmp_path: Path) -> None:
    Cache(tmp_path, OTHER).prepare()
    (tmp_path / OTHER / "modules" / "x.json").write_text("{}")
    (tmp_path / "README").write_text("not ours to delete")
    (tmp_path / "notakernel").mkdir()
    c = Cache(tmp_path, KID)
    c.prepare()
    assert c.gc() == [OTHER]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [KID, "current", "README", "notakernel"])


def test_enospc_on_a_full_filesystem(tmp_path: Path) -> None:
    """A real full filesystem: the write fails cleanly, nothing torn, the old file intact."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"mounting a small tmpfs needs root: {r.stderr}"
    try:
        c = Cache(mnt, KID)
        c.prepare()
        c.publish("small", {"verdict": "ok"}, b"x" * 1000)
        with pytest.raises(OSError) as info:
            c.publish("big", {"verdict": "ok"}, b"y" * 200_000)
        assert info.value.errno == errno.ENOSPC
        assert not c.btf_path("big").exists() and not c.record_path("big").exists()
        assert c.btf_path("small").read_bytes() == b"x" * 1000
        assert not [p for p in c.modules_dir.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
