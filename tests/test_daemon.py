"""btfreconciled: event handling, crash safety, signals, sd_notify, polling, config.

The reconciliation engine is replaced by a fake (tests/test_daemon_support.py) so that these
tests exercise the daemon itself; the real engine runs in integration/test_daemon_vm.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon_support import (  # noqa: E402
    CTL,
    FakeEngine,
    FakeSystem,
    daemon_argv,
    env_for_daemon,
    expected_btf,
    wait_for,
)

from btfreconciled.daemon import config as config_mod  # noqa: E402
from btfreconciled.daemon.control import request  # noqa: E402
from btfreconciled.daemon.core import Daemon  # noqa: E402
from btfreconciled.daemon.events import parse_uevent, scan_sysfs  # noqa: E402
from btfreconciled.daemon.modfind import build_index, module_name_of  # noqa: E402
from btfreconciled.daemon.policy import release_tuple  # noqa: E402


@pytest.fixture
def fs(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


def make_daemon(fs: FakeSystem, engine: FakeEngine | None = None, **cfg: object) -> Daemon:
    c = config_mod.load(fs.config(**cfg), required=True)
    d = Daemon(c, engine or FakeEngine())
    d.load_kernel()
    d.start_worker()
    return d


def cache_state(d: Daemon) -> dict[str, str]:
    """module -> verdict, from the files on disk."""
    assert d.cache is not None
    out = {}
    for name in d.cache.published_modules():
        rec = d.cache.read_record(name)
        assert rec is not None, f"{name}.json does not parse"
        out[name] = rec["verdict"]
    return out


def start(fs: FakeSystem, cfg: Path, *extra: str, **env: str) -> subprocess.Popen:
    p = subprocess.Popen(daemon_argv(cfg, *extra), env=env_for_daemon(**env),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait_for(lambda: answers(fs.socket) or p.poll() is not None, 20):
        p.kill()
        raise AssertionError("daemon did not answer on its socket")
    assert p.poll() is None, p.communicate()[1]
    return p


def answers(sock: Path) -> bool:
    try:
        return request(sock, {"cmd": "ping"}, timeout=2)["ok"] is True
    except Exception:
        return False


def stop(p: subprocess.Popen) -> tuple[int, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err


def wait_idle_remote(fs: FakeSystem, timeout: float = 30) -> dict:
    def idle() -> bool:
        st = request(fs.socket, {"cmd": "status"})
        return st["queue"]["pending"] == 0 and st["queue"]["busy"] is None
    assert wait_for(idle, timeout, 0.02)
    return request(fs.socket, {"cmd": "status"})


# ------------------------------------------------------------------ pure helpers


def test_parse_uevent() -> None:
    msg = b"add@/module/foo_bar\0ACTION=add\0DEVPATH=/module/foo_bar\0SUBSYSTEM=module\0SEQNUM=7\0"
    assert parse_uevent(msg) == [("add", "foo_bar")]
    msg = b"remove@/module/x-y\0ACTION=remove\0DEVPATH=/module/x-y\0SUBSYSTEM=module\0"
    assert parse_uevent(msg) == [("remove", "x_y")]
    # other subsystems, other actions, garbage: ignored
    assert parse_uevent(b"add@/devices/virtual/net/lo\0ACTION=add\0DEVPATH=/devices/virtual/"
                        b"net/lo\0SUBSYSTEM=net\0") == []
    assert parse_uevent(b"change@/module/foo\0ACTION=change\0DEVPATH=/module/foo\0"
                        b"SUBSYSTEM=module\0") == []
    assert parse_uevent(b"\xff\xfe\0\0") == []
    assert parse_uevent(b"") == []


def test_module_lookup(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "kernel" / "fs").mkdir(parents=True)
    (lib / "modules.dep").write_text("kernel/fs/ext4.ko.xz: kernel/fs/jbd2.ko.xz\n"
                                     "kernel/drivers/snd-hda-intel.ko.zst:\n")
    (lib / "modules.builtin").write_text("kernel/drivers/tty/vt.ko\n")
    extra = tmp_path / "extra" / "sub"
    extra.mkdir(parents=True)
    (extra / "my-mod.ko").write_text("x")
    (extra / "ext4.ko").write_text("shadow")
    (extra / "notes.txt").write_text("x")
    idx = build_index(lib, [tmp_path / "extra", tmp_path / "missing"])
    assert idx.lookup("ext4") == lib / "kernel/fs/ext4.ko.xz"  # modules.dep first
    assert idx.lookup("snd_hda_intel") == lib / "kernel/drivers/snd-hda-intel.ko.zst"
    assert idx.lookup("snd-hda-intel") == idx.lookup("snd_hda_intel")
    assert idx.lookup("my_mod") == extra / "my-mod.ko"
    assert idx.is_builtin("vt") and idx.lookup("vt") is None
    assert any("missing" in p for p in idx.problems)
    assert module_name_of("a/b/c-d.ko.gz") == "c_d" and module_name_of("x.o") is None


def test_release_tuple() -> None:
    assert release_tuple("6.12.57+deb13-amd64") == (6, 12)
    assert release_tuple("6.1.0-56-amd64") == (6, 1)
    assert release_tuple("6.18.44-fc-v657") >= (6, 11) > release_tuple("5.15.0")


def test_scan_sysfs(fs: FakeSystem) -> None:
    fs.load("a")
    fs.builtin("kernel")
    fs.load("b")
    fs.put(fs.sysfs / "module" / "b" / "initstate", "going\n")
    assert scan_sysfs(fs.sysfs) == {"a": "loadable", "kernel": "builtin", "b": "going"}


# ------------------------------------------------------------------ daemon core, in-process


def test_verdicts_builtin_nofile_and_engine_failure(fs: FakeSystem) -> None:
    fs.add_file("good")
    fs.add_file("bad", "INCOMPATIBLE")
    fs.add_file("plain", "NOBASE")
    fs.add_file("crash", "RAISE")
    fs.add_file("dash-name")
    for m in ("good", "bad", "plain", "crash", "dash_name", "nofile"):
        fs.load(m)
    fs.builtin("vt")
    d = make_daemon(fs)
    try:
        d.rescan("test")
        assert d.wait_idle()
        assert cache_state(d) == {"good": "ok", "bad": "incompatible", "plain": "no-base",
                                  "crash": "error", "dash_name": "ok", "nofile": "no-file",
                                  "vt": "builtin"}
        assert d.cache is not None
        assert d.cache.btf_path("good").read_bytes() == expected_btf(
            (fs.mods / "good.ko").read_bytes())
        assert not d.cache.btf_path("bad").exists()
        bad = d.cache.read_record("bad")
        assert bad and bad["diagnostics"][0]["expected"]["name"] == "foo"
        man = d.cache.read_manifest()
        assert man and man["modules"]["good"]["verdict"] == "ok"
        assert man["counts"]["incompatible"] == 1
        # a module that becomes incompatible loses its .btf
        fs.add_file("good", "INCOMPATIBLE")
        d.on_event("add", "good")
        assert d.wait_idle()
        assert not d.cache.btf_path("good").exists()
        assert d.cache.read_record("good")["verdict"] == "incompatible"  # type: ignore[index]
        # unload removes both files
        fs.unload("bad")
        d.on_event("remove", "bad")
        assert d.wait_idle()
        assert "bad" not in cache_state(d)
    finally:
        d.stop()


def test_thousand_load_unload_events_lose_no_module(fs: FakeSystem) -> None:
    """1,000 synthetic add/remove events interleaved with the worker: final state exact."""
    rng = random.Random(5)
    names = [f"m{i:02d}" for i in range(40)]
    for n in names:
        fs.add_file(n, rng.choice(["OK", "OK", "INCOMPATIBLE", "NOBASE"]))
    eng = FakeEngine(delay=0.0005)
    d = make_daemon(fs, eng)
    loaded: set[str] = set()
    try:
        for _ in range(1000):
            n = rng.choice(names)
            if n in loaded:
                fs.unload(n)
                loaded.discard(n)
                d.on_event("remove", n)
            else:
                fs.load(n)
                loaded.add(n)
                d.on_event("add", n)
            if rng.random() < 0.05:
                time.sleep(0.002)  # let the worker interleave
        assert d.wait_idle(60)
        state = cache_state(d)
        assert set(state) == loaded
        assert {m["module"] for m in d.list_modules()} == loaded
        assert d.cache is not None
        for n in loaded:
            content = (fs.mods / f"{n}.ko").read_bytes()
            if content.startswith(b"OK"):
                assert d.cache.btf_path(n).read_bytes() == expected_btf(content)
            else:
                assert not d.cache.btf_path(n).exists()
        assert d.stats.events == 1000
        # coalescing: far fewer reconciliations than events, thanks to memo and dedup
        assert len(eng.calls) <= len(names)
    finally:
        d.stop()


def test_restart_reuses_published_results(fs: FakeSystem) -> None:
    for n in ("a", "b"):
        fs.add_file(n)
        fs.load(n)
    eng = FakeEngine()
    d = make_daemon(fs, eng)
    d.rescan("start-up")
    assert d.wait_idle()
    d.stop()
    assert sorted(eng.calls) == ["a", "b"]
    eng2 = FakeEngine()
    d2 = make_daemon(fs, eng2)
    try:
        d2.rescan("start-up")
        assert d2.wait_idle()
        assert eng2.calls == []  # same files, same kernel, same policy: nothing to redo
        assert cache_state(d2) == {"a": "ok", "b": "ok"}
        (fs.mods / "a.ko").write_text("OK a changed")
        d2.rescan("again")
        assert d2.wait_idle()
        assert eng2.calls == ["a"]
    finally:
        d2.stop()


def test_publish_error_enospc_daemon_continues(fs: FakeSystem) -> None:
    """A full cache filesystem: logged, counted, no .btf without a record; later ok."""
    fs.cache.rmdir()
    fs.cache.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(fs.cache)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        fs.add_file("small")
        fs.add_file("huge")
        fs.load("small")
        d = make_daemon(fs, FakeEngine())
        try:
            d.rescan("t")
            assert d.wait_idle()
            d.engine = FakeEngine(size=300_000)  # type: ignore[assignment]
            d._memo.clear()
            fs.load("huge")
            d.on_event("add", "huge")
            assert d.wait_idle()
            assert d.stats.publish_errors >= 1
            assert d.cache is not None
            assert not d.cache.btf_path("huge").exists()
            view = d.show("huge")
            assert view and view["published"] is False and "ENOSPC" in view["publish_error"]
            assert d.cache.read_record("small")["verdict"] == "ok"  # type: ignore[index]
            # the daemon keeps working
            d.engine = FakeEngine()  # type: ignore[assignment]
            d._memo.clear()
            d.on_event("add", "huge")
            assert d.wait_idle()
            assert d.cache.read_record("huge")["verdict"] == "ok"  # type: ignore[index]
        finally:
            d.stop()
    finally:
        subprocess.run(["umount", str(fs.cache)], check=True)


def test_cross_check_with_kernel_btf(fs: FakeSystem) -> None:
    fs.add_file("same")
    fs.add_file("diff")
    for n in ("same", "diff"):
        fs.load(n)
    fs.kernel_btf("same", expected_btf((fs.mods / "same.ko").read_bytes()))
    fs.kernel_btf("diff", b"something else")
    d = make_daemon(fs, release="6.12.57+deb13-amd64")
    try:
        d.rescan("t")
        assert d.wait_idle()
        assert d.cache is not None
        assert d.cache.read_record("same")["cross_check"]["result"] == "match"  # type: ignore
        assert d.cache.read_record("diff")["cross_check"]["result"] == "mismatch"  # type: ignore
    finally:
        d.stop()
    # a module still initialising: published at once as pending (nothing served), decided
    # when its BTF appears
    fs.add_file("slow")
    fs.load("slow")
    fs.put(fs.sysfs / "module" / "slow" / "initstate", "coming\n")
    d = make_daemon(fs, release="6.12.57+deb13-amd64")
    try:
        d.on_event("add", "slow")
        assert wait_for(lambda: d.cache is not None and d.cache.read_record("slow") is not None)
        first = d.cache.read_record("slow")  # type: ignore
        assert first["verdict"] == "pending" and "cross_check" not in first, first
        assert not d.cache.btf_path("slow").exists()  # type: ignore
        time.sleep(0.3)
        fs.kernel_btf("slow", expected_btf((fs.mods / "slow.ko").read_bytes()))
        fs.put(fs.sysfs / "module" / "slow" / "initstate", "live\n")
        assert wait_for(lambda: (d.cache.read_record("slow") or {})  # type: ignore
                        .get("cross_check", {}).get("result") == "match", 5)
        assert d.wait_idle()
    finally:
        d.stop()
    # before 6.11 the kernel does not relocate: no cross-check
    d = make_daemon(fs, release="6.1.0-56-amd64")
    try:
        d._memo.clear()
        d.rescan("t", force=True)
        assert d.wait_idle()
        assert "cross_check" not in d.cache.read_record("same")  # type: ignore
    finally:
        d.stop()


# ------------------------------------------------------------------ the daemon process


def test_kill_9_during_publish_burst_leaves_no_torn_file(tmp_path: Path) -> None:
    fs = FakeSystem(tmp_path)
    names = [f"mod{i:03d}" for i in range(300)]
    for n in names:
        fs.add_file(n, "OK" if int(n[3:]) % 3 else "INCOMPATIBLE", payload="p" * (int(n[3:])))
        fs.load(n)
    cfg = fs.config(log_format="json")
    size = 512 * 1024
    kid_dir: Path | None = None
    kills = 0
    at_kill: list[int] = []
    for round_ in range(4):
        p = subprocess.Popen(daemon_argv(cfg), env=env_for_daemon(FAKE_SIZE=str(size)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: any(fs.cache.glob("*/modules")), 20)
        kid_dir = next(fs.cache.glob("*/modules")).parent
        # kill while the worker is in the middle of the burst
        before = len(list((kid_dir / "modules").glob("*.json")))
        target = before + 10 + 15 * round_
        mdir = kid_dir / "modules"
        wait_for(lambda t=target, m=mdir: len(list(m.glob("*.json"))) >= t, 30, 0.001)
        time.sleep(random.Random(round_).random() * 0.02)
        p.kill()
        p.wait()
        kills += 1
        at_kill.append(len(list(mdir.glob("*.json"))))
        check_cache_consistent(fs, kid_dir, size)
        # remove some results so the next run publishes again (some over existing files)
        for j, f in enumerate(sorted((kid_dir / "modules").glob("*.json"))):
            if j % 2 == round_ % 2:
                f.unlink()
    # a clean run afterwards completes everything and removes temporary files
    p = start(fs, cfg, FAKE_SIZE=str(size))
    st = wait_idle_remote(fs, 60)
    assert stop(p)[0] == 0
    assert kid_dir is not None
    check_cache_consistent(fs, kid_dir, size)
    assert not [f for f in kid_dir.rglob(".tmp-*")], "temporary files left after restart"
    assert len(list((kid_dir / "modules").glob("*.json"))) == len(names)
    assert st["counts"]["ok"] == 200 and st["counts"]["incompatible"] == 100
    assert kills == 4
    assert all(n < len(names) for n in at_kill), f"killed after the burst, not during: {at_kill}"


def check_cache_consistent(fs: FakeSystem, kid_dir: Path, size: int) -> None:
    mods = kid_dir / "modules"
    for f in mods.glob("*.json"):
        rec = json.loads(f.read_text())  # a torn record would not parse
        assert rec["module"] == f.stem
    for f in mods.glob("*.btf"):
        content = (fs.mods / f"{f.stem}.ko").read_bytes()
        assert f.read_bytes() == expected_btf(content, size), f"{f.name} is torn or stale"
        assert content.startswith(b"OK"), f"{f.name} published for an incompatible module"
    if (kid_dir / "manifest.json").exists():
        json.loads((kid_dir / "manifest.json").read_text())


NETLINK_DRIVER = r'''
import json, os, random, signal, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_daemon_support import FakeSystem, daemon_argv, env_for_daemon, wait_for
from btfreconciled.daemon.control import request
root = Path(sys.argv[2]); n_events = int(sys.argv[3]); freeze = sys.argv[4] == "freeze"
fs = FakeSystem(root)
names = [f"nl{i:02d}" for i in range(30)]
for n in names:
    fs.add_file(n)
cfg = fs.config(log_format="json", netlink_rcvbuf=4096 if freeze else 4 * 1024 * 1024,
                accept_user_uevents=True)
p = subprocess.Popen(daemon_argv(cfg), env=env_for_daemon(), stderr=subprocess.DEVNULL)
assert wait_for(lambda: fs.socket.exists(), 20)
tx = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
tx.bind((0, 0))
def send(action, name, seq):
    m = (f"{action}@/module/{name}\0ACTION={action}\0DEVPATH=/module/{name}\0"
         f"SUBSYSTEM=module\0SEQNUM={seq}\0")
    tx.sendto(m.encode(), (0, 1))
rng = random.Random(7); loaded = set()
if freeze:
    os.kill(p.pid, signal.SIGSTOP)
for i in range(n_events):
    n = rng.choice(names)
    if n in loaded:
        fs.unload(n); loaded.discard(n); send("remove", n, i)
    else:
        fs.load(n); loaded.add(n); send("add", n, i)
if freeze:
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGCONT)
def settled():
    st = request(fs.socket, {"cmd": "status"})
    mods = {m["module"] for m in request(fs.socket, {"cmd": "list"})["modules"]}
    return st["queue"]["pending"] == 0 and st["queue"]["busy"] is None and mods == loaded
ok = wait_for(settled, 30, 0.05)
st = request(fs.socket, {"cmd": "status"})
mods = {m["module"] for m in request(fs.socket, {"cmd": "list"})["modules"]}
kid = next(fs.cache.glob("*/modules"))
on_disk = {f.stem for f in kid.glob("*.json")}
p.send_signal(signal.SIGTERM); rc = p.wait(15)
print(json.dumps({"ok": ok, "loaded": sorted(loaded), "listed": sorted(mods),
                  "on_disk": sorted(on_disk), "stats": st["stats"],
                  "events": st["daemon"]["events"],
                  "rc": rc}))
'''


@pytest.mark.parametrize("mode", ["live", "freeze"])
def test_real_netlink_uevents_in_a_network_namespace(tmp_path: Path, mode: str) -> None:
    """1,000 real NETLINK_KOBJECT_UEVENT messages (sent to group 1 inside a private network
    namespace); "freeze" stops the daemon meanwhile so its 4 KiB queue overflows (ENOBUFS)
    and the rescan must recover the exact final state."""
    here = str(Path(__file__).resolve().parent)
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", NETLINK_DRIVER, here,
                        str(tmp_path), "1000", mode], capture_output=True, text=True,
                       env=env_for_daemon(), timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["events"] == "netlink"
    assert out["ok"], out
    assert out["listed"] == out["loaded"] == out["on_disk"]
    assert out["rc"] == 0
    if mode == "freeze":
        assert out["stats"]["overflows"] >= 1, out["stats"]
        assert out["stats"]["rescans"] >= 2
    else:
        assert out["stats"]["events"] >= 1000 or out["stats"]["overflows"] >= 1


def test_sighup_reloads_config_and_sigterm_stops_cleanly(fs: FakeSystem) -> None:
    fs.add_file("a")
    fs.load("a")
    cfg = fs.config(log_format="json")
    p = start(fs, cfg)
    try:
        wait_idle_remote(fs)
        assert request(fs.socket, {"cmd": "status"})["daemon"]["strict"] == "embedded"
        # a new module directory and a new policy, picked up on SIGHUP
        other = fs.root / "more"
        other.mkdir()
        (other / "b.ko").write_text("OK b")
        fs.load("b")
        text = cfg.read_text().replace(f'extra_module_dirs = ["{fs.mods}"]',
                                       f'extra_module_dirs = ["{fs.mods}", "{other}"]')
        cfg.write_text(text + 'strict = "all"\n')
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: request(fs.socket, {"cmd": "status"})["daemon"]["strict"]
                        == "all", 10)
        wait_idle_remote(fs)
        rec = request(fs.socket, {"cmd": "show", "module": "b"})["record"]
        assert rec["verdict"] == "ok" and rec["strict"] == "all"
        # a broken config on SIGHUP is reported and the old one kept
        cfg.write_text(cfg.read_text() + "bogus = 1\n")
        p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert p.poll() is None
        assert request(fs.socket, {"cmd": "status"})["daemon"]["strict"] == "all"
    finally:
        rc, err = stop(p)
    assert rc == 0
    assert not fs.socket.exists(), "socket left behind after SIGTERM"
    assert "unknown key 'bogus'" in err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert lines and lines[-1]["event"] == "stopped"


def test_config_file_change_is_picked_up_by_watchdog(fs: FakeSystem) -> None:
    fs.add_file("a")
    fs.load("a")
    cfg = fs.config(log_format="json")
    p = start(fs, cfg)
    try:
        wait_idle_remote(fs)
        cfg.write_text(cfg.read_text() + 'strict = "off"\n')
        assert wait_for(lambda: request(fs.socket, {"cmd": "status"})["daemon"]["strict"]
                        == "off", 10)
        # a module file appearing in a watched dir is found without any event
        fs.load("late")
        request(fs.socket, {"cmd": "rescan"})
        wait_idle_remote(fs)
        assert request(fs.socket, {"cmd": "show", "module": "late"})["record"]["verdict"] \
            == "no-file"
        fs.add_file("late")
        assert wait_for(lambda: request(fs.socket, {"cmd": "show", "module": "late"})
                        ["record"]["verdict"] == "ok", 10)
    finally:
        assert stop(p)[0] == 0


def test_sd_notify_ready_status_watchdog_stopping(fs: FakeSystem, tmp_path: Path) -> None:
    fs.add_file("a")
    fs.load("a")
    addr = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(addr)
    rx.settimeout(10)
    p = start(fs, fs.config(log_format="json"), NOTIFY_SOCKET=addr, WATCHDOG_USEC="200000")
    msgs: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in msgs) < 3:
            msgs.append(rx.recv(4096).decode())
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            while True:
                msgs.append(rx.recv(4096).decode())
                if "STOPPING=1" in msgs[-1]:
                    break
        except TimeoutError:
            pass
        stop(p)
        rx.close()
    joined = "\n".join(msgs)
    assert "READY=1" in joined and "STATUS=" in joined
    assert sum("WATCHDOG=1" in m for m in msgs) >= 3
    assert "STOPPING=1" in joined
    assert msgs.index(next(m for m in msgs if "READY=1" in m)) < len(msgs) - 1


def test_poll_fallback_is_shown_and_works(fs: FakeSystem) -> None:
    fs.add_file("a")
    p = start(fs, fs.config(log_format="json", events="poll", poll_interval=0.1))
    try:
        st = wait_idle_remote(fs)
        assert st["daemon"]["events"] == "poll"
        fs.load("a")
        assert wait_for(lambda: any(m["module"] == "a" for m in
                                    request(fs.socket, {"cmd": "list"})["modules"]), 10)
        fs.unload("a")
        assert wait_for(lambda: not request(fs.socket, {"cmd": "list"})["modules"], 10)
        out = subprocess.run([*CTL, "--socket",
                              str(fs.socket), "status"], capture_output=True, text=True,
                             env=env_for_daemon())
        assert out.returncode == 0 and "events:  poll" in out.stdout
    finally:
        assert stop(p)[0] == 0


def test_netlink_unavailable_falls_back_to_polling(fs: FakeSystem,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: when the uevent socket cannot be opened the daemon polls and says why."""
    import asyncio
    import threading

    from btfreconciled.daemon import events, service

    def refuse(self: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(events.UeventListener, "open", refuse)
    cfg = config_mod.load(fs.config(log_format="json", poll_interval=0.1), required=True)
    svc = service.Service(cfg, FakeEngine())
    seen: dict = {}

    def client() -> None:
        try:
            wait_for(lambda: fs.socket.exists(), 10)
            seen.update(request(fs.socket, {"cmd": "status"}))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=client)
    t.start()
    assert asyncio.run(svc.run()) == 0
    t.join()
    assert seen["daemon"]["events"] == "poll"
    assert "Operation not permitted" in seen["daemon"]["events_detail"]


def test_host_without_lib_modules(tmp_path: Path) -> None:
    """This machine's real /sys (kernel BTF, built-in modules) and no /lib/modules.

    The modules root is pointed at an empty directory, so the case runs on every host,
    with or without a real /lib/modules/<release>."""
    sock = tmp_path / "c.sock"
    cache = tmp_path / "cache"
    extra = tmp_path / "extra"
    extra.mkdir()
    empty_root = tmp_path / "lib-modules"
    empty_root.mkdir()
    cfgf = tmp_path / "c.toml"
    cfgf.write_text(f'extra_module_dirs = ["{extra}"]\nlog_format = "json"\n'
                    f'modules_root = "{empty_root / os.uname().release}"\n')
    p = subprocess.Popen(daemon_argv(cfgf, "--socket", str(sock), "--cache-dir", str(cache)),
                         env=env_for_daemon(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert wait_for(lambda: sock.exists() or p.poll() is not None, 20)
        assert p.poll() is None, p.communicate()
        def settled() -> bool:
            q = request(sock, {"cmd": "status"})["queue"]
            return q["pending"] == 0 and q["busy"] is None
        assert wait_for(settled, 20)
        st = request(sock, {"cmd": "status"})
        assert any("modules.dep: not found" in x for x in st["module_files"]["problems"])
        assert st["kernel"]["release"] == os.uname().release
        mods = request(sock, {"cmd": "list"})["modules"]
        builtin = {d.name for d in Path("/sys/module").iterdir()
                   if not (d / "initstate").exists()}
        assert {m["module"] for m in mods if m["verdict"] == "builtin"} == builtin
        assert os.readlink(cache / "current") == st["kernel"]["id"]
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=15)
    assert p.returncode == 0


def test_second_daemon_on_same_socket_refuses(fs: FakeSystem) -> None:
    cfg = fs.config(log_format="json")
    p = start(fs, cfg)
    try:
        other = fs.config(log_format="json", cache_dir=str(fs.root / "cache2"))
        r = subprocess.run(daemon_argv(other), env=env_for_daemon(), capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2
        assert "already listening" in r.stderr
    finally:
        assert stop(p)[0] == 0


def test_stale_socket_is_replaced(fs: FakeSystem) -> None:
    fs.socket.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(fs.socket))
    s.close()  # a socket file nobody listens on: what kill -9 leaves
    p = start(fs, fs.config(log_format="json"))
    try:
        assert request(fs.socket, {"cmd": "ping"}) == {"ok": True}
        assert oct(os.stat(fs.socket).st_mode & 0o777) == "0o600"
    finally:
        assert stop(p)[0] == 0


def test_daemon_help_and_config_errors(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "btfreconciled.daemon.main"]
    h = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env_for_daemon())
    assert h.returncode == 0
    for word in ("--foreground", "--config", "--cache-dir", "--socket", "extra_module_dirs",
                 "SIGHUP", "btfreconcilectl"):
        assert word in h.stdout
    missing = subprocess.run([*run, "--config", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, env=env_for_daemon())
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"btfreconciled: error: {tmp_path / 'nope.toml'}: no such file"
    bad = tmp_path / "bad.toml"
    for text, msg in [("strict = 'loose'", "strict: 'loose' is not one of off, embedded, all"),
                      ("cache_dir = 3", "cache_dir: expected str, got int"),
                      ("socket_mode = '999'", "socket_mode: '999' is not an octal mode"),
                      ("socket_group = 'no-such-group-x'", "no such group"),
                      ("poll_interval = 0", "poll_interval: 0 is out of range"),
                      ("gc = 'yes'", "gc: expected bool"),
                      ("[section]\nx=1", "unknown key 'section'"),
                      ("x = [", "invalid TOML")]:
        bad.write_text(text + "\n")
        r = subprocess.run([*run, "--config", str(bad)], capture_output=True, text=True,
                           env=env_for_daemon())
        assert r.returncode == 2, text
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert msg in r.stderr, (text, r.stderr)
    good = tmp_path / "good.toml"
    good.write_text('cache_dir = "rel/cache"\nsocket_mode = "0660"\nextra_module_dirs = ["m"]\n'
                    'strict = "all"\n')
    r = subprocess.run([*run, "--config", str(good), "--socket", "/tmp/x.sock", "--check-config"],
                       capture_output=True, text=True, env=env_for_daemon())
    assert r.returncode == 0, r.stderr
    eff = json.loads(r.stdout)
    assert eff["cache_dir"] == str(tmp_path / "rel/cache")  # relative to the config file
    assert eff["socket"] == "/tmp/x.sock" and eff["socket_mode"] == "0660"
    assert eff["extra_module_dirs"] == [str(tmp_path / "m")] and eff["strict"] == "all"


UNPRIVILEGED = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
import test_daemon_support as t
import btfreconciled.daemon.main as m
import btfreconciled.daemon.service, btfreconciled.daemon.control, btfreconciled.daemon.core
import pyroute2.netlink, pyroute2.netlink.uevent
import watchdog.events, watchdog.observers, watchdog.observers.inotify
import ctypes, ctypes.util, json, tomllib, socket, asyncio, concurrent.futures.thread
# Everything is imported while root (this host's Python lives under /root, mode 0700);
# from here on the daemon is uid/gid 65534, as DynamicUser=yes runs it.
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(m.main(sys.argv[2:], engine=t.FakeEngine()))
'''


def test_daemon_runs_unprivileged_as_the_unit_runs_it() -> None:
    """The unit's DynamicUser=yes: an ordinary uid, a cache and runtime directory it owns,
    a private network namespace; uevents still arrive and results are published."""
    root = Path(tempfile.mkdtemp(prefix="btfr-unpriv-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        fs = FakeSystem(root)
        fs.add_file("a")
        fs.socket.parent.mkdir()
        for d in (fs.cache, fs.socket.parent):
            os.chown(d, 65534, 65534)
        cfg = fs.config(log_format="json", accept_user_uevents=True)
        here = str(Path(__file__).resolve().parent)
        p = subprocess.Popen(["unshare", "-n", sys.executable, "-c", UNPRIVILEGED, here,
                              "--foreground", "--config", str(cfg)], env=env_for_daemon(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: answers(fs.socket) or p.poll() is not None, 30)
            assert p.poll() is None, p.communicate()[1][-3000:]
            st = os.stat(fs.socket)
            assert (st.st_uid, oct(st.st_mode & 0o777)) == (65534, "0o600")
            assert request(fs.socket, {"cmd": "status"})["daemon"]["events"] == "netlink"
            fs.load("a")
            send = ("import socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15); "
                    "s.bind((0, 0)); s.sendto(b'add@/module/a\\0ACTION=add\\0DEVPATH=/module/a"
                    "\\0SUBSYSTEM=module\\0SEQNUM=1\\0', (0, 1))")
            subprocess.run(["nsenter", f"--net=/proc/{p.pid}/ns/net", sys.executable, "-c",
                            send], check=True)
            assert wait_for(lambda: any(m["module"] == "a" and m["verdict"] == "ok" for m in
                                        request(fs.socket, {"cmd": "list"})["modules"]), 10)
            btf = Path(request(fs.socket, {"cmd": "path", "module": "a"})["btf"])
            assert btf.stat().st_uid == 65534
            assert btf.read_bytes() == expected_btf((fs.mods / "a.ko").read_bytes())
        finally:
            rc, err = stop(p)
        assert rc == 0, err[-3000:]
        assert not fs.socket.exists()
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_unprivileged_start_without_access_says_what_to_do() -> None:
    """An ordinary user starting the daemon on the system paths gets one line naming the
    option that gives it an instance of its own."""
    root = Path(tempfile.mkdtemp(prefix="btfr-noaccess-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        fs = FakeSystem(root)  # cache/ and run/ belong to root: not writable for 65534
        (fs.cache / "x").mkdir()
        cfg = fs.config(log_format="json", cache_dir=str(fs.cache / "x"))
        here = str(Path(__file__).resolve().parent)
        run = [sys.executable, "-c", UNPRIVILEGED, here, "--foreground", "--config", str(cfg)]
        r = subprocess.run(run, env=env_for_daemon(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1].startswith(
            f"btfreconciled: error: {fs.cache / 'x'}")
        assert "permission denied (run as root, or give an instance of your own --cache-dir" \
            in r.stderr
        os.chown(fs.cache / "x", 65534, 65534)
        r = subprocess.run(run, env=env_for_daemon(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1] == (
            f"btfreconciled: error: {fs.socket}: permission denied (run as root, or give an "
            "instance of your own --socket PATH)")
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_log_format_choice() -> None:
    from btfreconciled.daemon.logs import use_json

    class Tty:
        def isatty(self) -> bool:
            return True

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert use_json("auto", Tty(), env={}) is False  # type: ignore[arg-type]
    assert use_json("auto", Pipe(), env={}) is True  # type: ignore[arg-type]
    assert use_json("auto", Tty(), env={"JOURNAL_STREAM": "8:123"}) is True  # type: ignore
    assert use_json("console", Pipe(), env={}) is False  # type: ignore[arg-type]
    assert use_json("json", Tty(), env={}) is True  # type: ignore[arg-type]


def test_notifier_environment() -> None:
    from btfreconciled.daemon.notify import Notifier

    n = Notifier(env={"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "30000000",
                      "WATCHDOG_PID": str(os.getpid())})
    assert n.address == "\0abstract" and n.watchdog_interval == 30.0
    assert Notifier(env={"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    off = Notifier(env={})
    assert not off.enabled and off.send("READY=1") is False
    # an abstract-namespace listener receives the datagram
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(f"\0btfr-test-{os.getpid()}")
    rx.settimeout(5)
    n = Notifier(env={"NOTIFY_SOCKET": f"@btfr-test-{os.getpid()}"})
    assert n.ready("hello")
    assert rx.recv(1024).decode().startswith("READY=1\nSTATUS=hello\nMAINPID=")
    rx.close()


def test_cache_inside_a_watched_module_dir_does_not_feed_back(fs: FakeSystem) -> None:
    """extra_module_dirs may contain the cache (or the log): the daemon's own writes must not
    look like module-tree changes, and re-checking unchanged modules rewrites nothing."""
    for n in ("a", "b"):
        fs.add_file(n)
        fs.load(n)
    fs.builtin("vt")
    p = start(fs, fs.config(log_format="json", extra_module_dirs=[str(fs.root)]))
    try:
        wait_idle_remote(fs)
        before = request(fs.socket, {"cmd": "status"})["stats"]["processed"]
        rec = request(fs.socket, {"cmd": "show", "module": "a"})["record"]
        time.sleep(1.5)
        st = wait_idle_remote(fs)
        assert st["stats"]["processed"] == before, "the daemon reacted to its own writes"
        # a real module-tree change re-checks, but unchanged results are not rewritten
        (fs.mods / "new.ko").write_text("OK new")
        assert wait_for(lambda: request(fs.socket, {"cmd": "status"})["stats"]["processed"]
                        > before, 10)
        wait_idle_remote(fs)
        again = request(fs.socket, {"cmd": "show", "module": "a"})["record"]
        assert again["published_at"] == rec["published_at"]
        time.sleep(1.0)
        st2 = wait_idle_remote(fs)
        assert st2["stats"]["processed"] <= before + 3  # one re-check of a, b, vt; no loop
    finally:
        assert stop(p)[0] == 0
