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


# ------------------------------------------------------------------ reading a hostile cache

def _plant_all_kinds(d: Path, victim: Path) -> dict[str, Path]:
    """A symlink, a FIFO, a unix socket and a directory (holding a link) in `d`."""
    import stat

    out = {"link": d / "a.json", "fifo": d / "b.json", "sock": d / "c.btf",
           "dir": d / "d.btf"}
    os.symlink(victim, out["link"])
    os.mkfifo(out["fifo"])
    os.mknod(out["sock"], stat.S_IFSOCK | 0o600)  # a socket's inode (bind's paths are short)
    out["dir"].mkdir()
    os.symlink(victim, out["dir"] / "inner")
    return out


def test_read_helpers_refuse_what_is_not_a_regular_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text('{"verdict": "ok"}')
    planted = _plant_all_kinds(tmp_path, victim)
    for what, p in planted.items():
        with pytest.raises(cache_mod.CacheFileError) as e:  # never blocks on the FIFO
            cache_mod.load_json(p, 1 << 20)
        kind = {"link": "a symlink", "fifo": "a FIFO", "sock": "a socket",
                "dir": "a directory"}[what]
        assert str(e.value) == f"{p}: is {kind}, not a regular file"
        assert cache_mod.verify_file(p, 0, "0" * 64) == f"is {kind}, not a regular file"
    with pytest.raises(FileNotFoundError):
        cache_mod.load_json(tmp_path / "missing", 10)
    assert cache_mod.verify_file(tmp_path / "missing", 0, "0" * 64) == "missing"


def test_read_helpers_cap_sizes_and_nesting(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(300 << 20)
    with pytest.raises(cache_mod.CacheFileError) as e:
        cache_mod.load_json(big, cache_mod.MAX_RECORD_BYTES)
    assert str(e.value) == (f"{big}: {300 << 20} bytes, more than the "
                            f"{cache_mod.MAX_RECORD_BYTES} a cache file of this kind may "
                            "have; refused")
    nested = tmp_path / "nested.json"
    nested.write_bytes(b"[" * 100000)
    with pytest.raises(cache_mod.CacheFileError, match="nested too deep"):
        cache_mod.load_json(nested, 1 << 20)
    for bad in (b"{", b"\xff", b'{"a": ' + b"9" * 5000 + b"}"):
        nested.write_bytes(bad)
        with pytest.raises(cache_mod.CacheFileError, match="not valid JSON"):
            cache_mod.load_json(nested, 1 << 20)
    # verify_file: the size first (a huge file is never hashed), then the sha256
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    sha = cache_mod.sha256_hex(b"abc")
    assert cache_mod.verify_file(f, 3, sha) is None
    assert cache_mod.verify_file(f, 4, sha) == "3 bytes, not the 4 recorded"
    assert cache_mod.verify_file(f, 3, "0" * 64) == "its sha256 is not the one recorded"


def test_daemon_reads_never_block_or_follow(tmp_path: Path) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    victim = tmp_path / "victim.json"
    victim.write_text('{"format": 2, "modules": {}}')
    os.mkfifo(c.record_path("foo"))
    os.symlink(victim, c.merged_dir / "index.json")
    os.mkfifo(c.manifest_path)
    assert c.read_record("foo") is None
    assert c.read_merged_index() is None
    assert c.read_manifest() is None
    with pytest.raises(cache_mod.CacheFileError, match="is a symlink"):
        c.load_merged_index()


@pytest.mark.parametrize("when", ["prepare", "repair"])
def test_planted_entries_in_modules_and_merged_are_removed_never_followed(
        tmp_path: Path, when: str) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    c.publish("good", {"verdict": "ok"}, b"BTF")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("not the daemon's")
    mods = _plant_all_kinds(c.modules_dir, victim)
    merged = _plant_all_kinds(c.merged_dir, victim)
    (c.kernel_dir / "elsewhere").mkdir()  # outside modules/ and merged/: left alone
    os.symlink(victim, c.kernel_dir / "elsewhere" / "link")
    notes = c.prepare() if when == "prepare" else c.repair()
    assert all(not os.path.lexists(p) for p in mods.values())
    assert victim.read_text() == "not the daemon's" and sorted(os.listdir(outside)) == ["victim"]
    assert c.btf_path("good").read_bytes() == b"BTF" and c.read_record("good")
    assert os.path.islink(c.kernel_dir / "elsewhere" / "link")
    if when == "prepare":
        assert all(not os.path.lexists(p) for p in merged.values())
        assert f"{merged['fifo']} was a FIFO; removed" in notes
    else:  # merged/ is its writer's to repair, in its own thread
        assert all(os.path.lexists(p) for p in merged.values())
    assert f"{mods['link']} was a symlink; removed" in notes
    assert f"{mods['dir']} was a directory; removed" in notes


def test_repair_replaces_planted_directories_and_current(tmp_path: Path) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    c.modules_dir.rmdir()
    os.symlink(elsewhere, c.modules_dir)
    (tmp_path / "current").unlink()
    os.symlink(OTHER, tmp_path / "current")
    (c.kernel_dir / cache_mod.KERNEL_MARKER).unlink()
    notes = c.repair()
    assert c.modules_dir.is_dir() and not c.modules_dir.is_symlink()
    assert any("was a symlink; replaced by a directory" in n for n in notes)
    assert os.readlink(tmp_path / "current") == KID
    assert (c.kernel_dir / cache_mod.KERNEL_MARKER).read_text() == f"{KID}\n"
    assert os.listdir(elsewhere) == []


def test_check_published(tmp_path: Path) -> None:
    c = Cache(tmp_path, KID)
    c.prepare()
    rec = {"verdict": "ok", "btf_sha256": cache_mod.sha256_hex(b"BTF"), "btf_size": 3,
           "key": ("a", 1)}  # a tuple in memory is a list on disk: the same record
    c.publish("m", rec, b"BTF")
    assert c.check_published("m", rec) is None
    c.btf_path("m").write_bytes(b"XYZ")
    assert "its sha256 is not the one recorded" in (c.check_published("m", rec) or "")
    c.publish("m", rec, b"BTF")
    c.record_path("m").write_text('{"verdict": "rescued"}')
    assert c.check_published("m", rec) == f"{c.record_path('m')} is not the record published"
    c.record_path("m").unlink()
    os.symlink(tmp_path, c.record_path("m"))
    assert "is a symlink" in (c.check_published("m", rec) or "")
    c.publish("n", {"verdict": "incompatible"}, None)
    c.btf_path("n").write_bytes(b"stale")
    assert "names no BTF" in (c.check_published("n", {"verdict": "incompatible"}) or "")
