"""The daemon's trust boundaries (SPEC §10, issue 11): each finding as a test.

- the file on disk must be the loaded module (build id / srcversion) -> `stale-file`;
- where the kernel relocated /sys/kernel/btf/<m> itself, a difference is an error and
  nothing of ours is served;
- results of another engine build are never reused;
- the cache belongs to one daemon: a lock, no symlink followed, the root's mode left alone,
  GC only of what the daemon made;
- the memo of engine results is bounded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon import make_daemon, start, stop  # noqa: E402
from test_daemon_support import (  # noqa: E402
    FAKE_VMLINUX,
    FakeEngine,
    FakeSystem,
    daemon_argv,
    env_for_daemon,
    expected_btf,
)

from btfreconciled.cache import KERNEL_MARKER  # noqa: E402
from btfreconciled.daemon import results  # noqa: E402


@pytest.fixture
def fs(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


def kernel_id() -> str:
    return hashlib.sha256(FAKE_VMLINUX).hexdigest()


def test_file_replaced_under_a_loaded_module_publishes_nothing(fs: FakeSystem) -> None:
    fs.add_file("dkms", payload="BUILDID=aaaa1111")
    fs.load("dkms")
    fs.loaded_build_id("dkms", "bbbb2222")  # the kernel runs another build
    d = make_daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("dkms")
        assert rec is not None and rec["verdict"] == "stale-file", rec
        assert "aaaa1111" in rec["summary"] and "bbbb2222" in rec["summary"]
        assert str(fs.mods / "dkms.ko") in rec["summary"]
        assert rec["btf"] is None and not d.cache.btf_path("dkms").exists()
        assert d.counts()["stale-file"] == 1
        # reloaded from the file on disk: now it is the loaded module
        fs.loaded_build_id("dkms", "aaaa1111")
        d.on_event("add", "dkms")
        assert d.wait_idle()
        rec = d.show("dkms")
        assert rec["verdict"] == "ok"
        assert rec["identity"] == {"state": "verified", "by": "build id", "value": "aaaa1111"}
        assert d.cache.btf_path("dkms").read_bytes() == expected_btf(
            (fs.mods / "dkms.ko").read_bytes())
    finally:
        d.stop()


def test_kernel_btf_is_the_truth(fs: FakeSystem) -> None:
    fs.add_file("same")
    fs.add_file("differs")
    for n in ("same", "differs"):
        fs.load(n)
    fs.kernel_btf("same", expected_btf((fs.mods / "same.ko").read_bytes()))
    theirs = expected_btf(b"the kernel's own")
    fs.kernel_btf("differs", theirs)
    d = make_daemon(fs)  # release 6.18: the kernel relocates .BTF.base itself
    try:
        d.rescan("t")
        assert d.wait_idle()
        ok = d.show("same")
        assert ok["verdict"] == "ok" and ok["cross_check"]["result"] == "match"
        bad = d.show("differs")
        assert bad["verdict"] == "error" and bad["engine_verdict"] == "ok", bad
        assert "differs from the kernel's" in bad["summary"]
        assert bad["cross_check"]["result"] == "mismatch"
        # an error is not served: neither ours nor the kernel's bytes (loaders reading
        # /sys/kernel/btf natively have the kernel's own)
        assert not d.cache.btf_path("differs").exists()
        assert d.published_btf("differs") is None
        assert bad["btf"] is None and bad["btf_sha256"] is None
    finally:
        d.stop()


def test_another_engine_builds_results_are_not_reused(fs: FakeSystem,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fs.add_file("a")
    fs.load("a")
    d = make_daemon(fs)
    d.rescan("t")
    assert d.wait_idle()
    d.stop()
    eng = FakeEngine()
    d2 = make_daemon(fs, eng)  # same engine build: reused from disk
    d2.rescan("t")
    assert d2.wait_idle()
    d2.stop()
    assert eng.calls == []
    monkeypatch.setattr(results, "ENGINE_ID", "0.1.0+upgraded")
    eng3 = FakeEngine()
    d3 = make_daemon(fs, eng3)
    try:
        d3.rescan("t")
        assert d3.wait_idle()
        assert eng3.calls == ["a"]
    finally:
        d3.stop()


def test_second_daemon_on_the_same_cache_exits_2_naming_the_holder(fs: FakeSystem) -> None:
    p = start(fs, fs.config(log_format="json"))
    try:
        other = fs.config(log_format="json", socket=str(fs.root / "other.sock"))
        r = subprocess.run(daemon_argv(other), env=env_for_daemon(), capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2
        assert f"in use by another btfreconciled (pid {p.pid})" in r.stderr
        assert r.stderr.count("\n") == 1
    finally:
        assert stop(p)[0] == 0


def test_shared_cache_root_is_left_as_found(fs: FakeSystem) -> None:
    os.chmod(fs.cache, 0o1777)
    stranger = fs.cache / ("ab" * 32)  # looks like a kernel id, is someone else's
    stranger.mkdir()
    (stranger / "data").write_text("not ours")
    ours_old = fs.cache / ("cd" * 32)  # another kernel's directory the daemon made
    ours_old.mkdir()
    (ours_old / KERNEL_MARKER).write_text("cd" * 32 + "\n")
    d = make_daemon(fs)
    d.stop()
    assert oct(os.stat(fs.cache).st_mode & 0o7777) == "0o1777"
    assert (stranger / "data").read_text() == "not ours"
    assert not ours_old.exists()


def test_symlinks_in_the_cache_are_replaced_never_followed(fs: FakeSystem) -> None:
    elsewhere = fs.root / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, fs.cache / kernel_id())
    fs.add_file("a")
    fs.load("a")
    d = make_daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        kdir = fs.cache / kernel_id()
        assert kdir.is_dir() and not kdir.is_symlink()
        assert list(elsewhere.iterdir()) == [] and oct(elsewhere.stat().st_mode & 0o777) == "0o700"
        # a published .btf replaced by a symlink: not handed out, published again
        btf = d.cache.btf_path("a")
        btf.unlink()
        os.symlink("/etc/passwd", btf)
        assert d.published_btf("a") is None
        assert d.wait_idle()
        assert not btf.is_symlink() and btf.read_bytes() == expected_btf(
            (fs.mods / "a.ko").read_bytes())
        btf.unlink()
        os.symlink("/etc/passwd", btf)
        d.rescan("t")  # a rescan notices it too
        assert d.wait_idle()
        assert not btf.is_symlink()
    finally:
        d.stop()


def test_memo_is_bounded(fs: FakeSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "MEMO_BYTES", 20_000)
    names = [f"m{i}" for i in range(12)]
    for n in names:
        fs.add_file(n)
        fs.load(n)
    d = make_daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        assert d._memo_bytes <= 20_000 and len(d._memo) < len(names)
        assert d.counts()["ok"] == len(names)
    finally:
        d.stop()


def test_one_slow_module_does_not_hold_the_worker(fs: FakeSystem) -> None:
    fs.add_file("stuck", "SLOW3")
    for n in ("a_first", "z_last"):
        fs.add_file(n)
    for n in ("a_first", "stuck", "z_last"):
        fs.load(n)
    d = make_daemon(fs, module_timeout=0.5)
    try:
        d.rescan("t")
        assert d.wait_idle(10)
        assert d.show("z_last")["verdict"] == "ok"  # queued behind it, done anyway
        rec = d.show("stuck")
        assert rec["verdict"] == "error" and "did not finish within 0.5 s" in rec["summary"]
        assert not d.cache.btf_path("stuck").exists()
        assert d.stats.timeouts == 1
        import time
        time.sleep(3.5)  # the abandoned thread finishes: its result is dropped
        assert d.show("stuck")["verdict"] == "error"
        assert not d.cache.btf_path("stuck").exists()
    finally:
        d.stop()


def test_restart_reuses_published_files_without_rewriting(fs: FakeSystem) -> None:
    """A restart (kill -9 under systemd) reuses what is on disk: same files, same inodes."""
    for n in ("a", "b"):
        fs.add_file(n)
        fs.load(n)
    for n in ("a", "b"):  # cross-check: match
        fs.kernel_btf(n, expected_btf((fs.mods / f"{n}.ko").read_bytes()))
    d = make_daemon(fs)
    d.rescan("t")
    assert d.wait_idle()
    inodes = {n: os.stat(d.cache.btf_path(n)).st_ino for n in ("a", "b")}
    records = {n: os.stat(d.cache.record_path(n)).st_mtime_ns for n in ("a", "b")}
    d.stop()
    eng = FakeEngine()
    d2 = make_daemon(fs, eng)
    try:
        d2.rescan("t")
        assert d2.wait_idle()
        assert eng.calls == []
        assert {n: os.stat(d2.cache.btf_path(n)).st_ino for n in ("a", "b")} == inodes
        assert {n: os.stat(d2.cache.record_path(n)).st_mtime_ns for n in ("a", "b")} == records
        assert d2.show("a")["cross_check"]["result"] == "match"
    finally:
        d2.stop()
