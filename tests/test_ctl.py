"""btfreconcilectl status/list/show/path and the control socket protocol."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon_support import (  # noqa: E402
    CTL,
    FakeSystem,
    daemon_argv,
    env_for_daemon,
    wait_for,
)

from btfreconciled.daemon.control import request  # noqa: E402


def as_user(uid: int, gid: int, args: tuple[str, ...] | list[str]) -> list[str]:
    """btfreconcilectl as an ordinary user.  Everything is imported while still root (this
    host's Python lives under /root, mode 0700), then the process drops to uid/gid before
    main() connects: the socket's permission check is the real one."""
    code = ("import os, sys, json, socket; from btfreconciled.cli import main as m; "
            "import btfreconciled.cli.status, btfreconciled.cli.daemonctl; m.build_parser(); "
            f"os.setgroups([]); os.setgid({gid}); os.setuid({uid}); "
            "sys.exit(m.main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args]


def ctl(*args: str, user: int | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    cmd = [*CTL, *args]
    if user is not None:
        cmd = as_user(user, user, args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env or env_for_daemon(),
                          timeout=60)


@pytest.fixture(scope="module")
def running() -> Iterator[FakeSystem]:
    """One daemon for the whole module, in a world-traversable directory (for the
    permission test), with one module of each verdict."""
    root = Path(tempfile.mkdtemp(prefix="btfr-ctl-", dir="/tmp"))
    os.chmod(root, 0o755)
    fs = FakeSystem(root)
    fs.add_file("good")
    fs.add_file("bad-one", "INCOMPATIBLE")
    fs.add_file("plain", "NOBASE")
    for m in ("good", "bad_one", "plain", "ghost"):
        fs.load(m)
    fs.builtin("vt")
    p = subprocess.Popen(daemon_argv(fs.config(log_format="json")), env=env_for_daemon(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def settled() -> bool:
        try:
            st = request(fs.socket, {"cmd": "status"})
        except Exception:
            return False
        return st["queue"]["pending"] == 0 and st["queue"]["busy"] is None and \
            sum(st["counts"].values()) == 5
    assert wait_for(settled, 30)
    os.chmod(fs.socket.parent, 0o755)
    yield fs
    p.send_signal(signal.SIGTERM)
    p.wait(15)
    subprocess.run(["rm", "-rf", str(root)], check=False)


# ------------------------------------------------------------------ btfreconcilectl


def test_status(running: FakeSystem) -> None:
    r = ctl("--socket", str(running.socket), "status")
    assert r.returncode == 0, r.stderr
    assert "btfreconciled 0.1.0: running (pid " in r.stdout
    assert "events:  netlink" in r.stdout
    assert "modules: 1 ok, 1 incompatible, 1 no-base, 0 error, 1 builtin, 1 no-file" in r.stdout
    assert "files:   0 verified, 4 unverified, 1 not-applicable" in r.stdout
    assert "served:  BTF for verdicts ok, rescued only" in r.stdout
    assert "note:    " in r.stdout  # no modules.dep in this fake world
    j = ctl("status", "--json", "--socket", str(running.socket))  # option after the command
    st = json.loads(j.stdout)
    assert st["counts"]["ok"] == 1 and st["kernel"]["release"] == "6.18.0-test"
    env = env_for_daemon(BTFRECONCILED_SOCKET=str(running.socket))
    assert ctl("status", env=env).returncode == 0


def test_list(running: FakeSystem) -> None:
    r = ctl("--socket", str(running.socket), "list")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["MODULE", "VERDICT", "IDENTITY", "SUMMARY"]
    # no build id in the fake files: nothing proves a file is the loaded module
    assert [ln.split()[:3] for ln in lines[1:]] == [
        ["bad_one", "incompatible", "unverified"], ["ghost", "no-file", "unverified"],
        ["good", "ok", "unverified"], ["plain", "no-base", "unverified"],
        ["vt", "builtin", "not-applicable"]]
    mods = json.loads(ctl("--socket", str(running.socket), "list", "--json").stdout)
    assert {m["module"]: bool(m["btf"]) for m in mods}["good"] is True


def test_show(running: FakeSystem) -> None:
    s = str(running.socket)
    r = ctl("--socket", s, "show", "bad-one")  # '-' and '_' are the same module
    assert r.returncode == 0, r.stderr
    assert "verdict:  incompatible" in r.stdout
    assert "summary:  STRUCT foo size=16: vmlinux has size=24" in r.stdout
    assert "btf:      none (only a module whose verdict is ok or rescued gets one)" in r.stdout
    assert "identity: unverified: nothing to compare: the file has neither a build id nor a " \
        "srcversion" in r.stdout
    assert "diagnostics:\n  - error: struct foo (size 16) expected by the module: vmlinux has " \
        "no compatible type\n      expected: struct foo size=16\n      vmlinux has: [7] " \
        "struct foo size=24 (size 24 != 16)\n      embedded through: struct obj.f -> " \
        "struct foo\n" in r.stdout
    good = ctl("--socket", s, "show", "good")
    assert "verdict:  ok" in good.stdout and "/modules/good.btf" in good.stdout
    rec = json.loads(ctl("--socket", s, "show", "good", "--json").stdout)
    assert rec["verdict"] == "ok" and Path(rec["btf"]).is_file()
    unknown = ctl("--socket", s, "show", "nosuchmod")
    assert unknown.returncode == 2
    assert unknown.stderr == ("btfreconcilectl: error: module nosuchmod is not loaded "
                              "(not in /sys/module)\n")
    evil = ctl("--socket", s, "show", "../../etc/passwd")
    assert evil.returncode == 2 and "invalid module name" in evil.stderr


def test_path(running: FakeSystem) -> None:
    s = str(running.socket)
    r = ctl("--socket", s, "path", "good")
    assert r.returncode == 0
    p = Path(r.stdout.strip())
    assert p.is_file() and p.name == "good.btf" and p.read_bytes().startswith(b"\x9f\xeb")
    assert p.parent.parent.name == json.loads(ctl("--socket", s, "status", "--json").stdout
                                              )["kernel"]["id"]
    bad = ctl("--socket", s, "path", "bad_one")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("btfreconcilectl: bad_one: no reconciled BTF (incompatible: ")
    j = ctl("--socket", s, "path", "plain", "--json")
    assert j.returncode == 1 and json.loads(j.stdout)["btf"] is None


def test_not_running_messages(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    for cmd in (["status"], ["list"], ["show", "x"], ["path", "x"], ["status", "--json"]):
        r = ctl("--socket", str(missing), *cmd)
        assert r.returncode == 2, cmd
        assert r.stdout == ""
        assert r.stderr == (f"btfreconcilectl: error: btfreconciled is not running "
                            f"(no control socket at {missing})\n")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    r = ctl("--socket", str(stale), "status")
    assert r.returncode == 2
    assert r.stderr == (f"btfreconcilectl: error: btfreconciled is not running (nothing "
                        f"listens on {stale}; stale socket)\n")


def test_permission_denied_message(running: FakeSystem) -> None:
    """The socket is 0600 root: an ordinary user gets a clear one-line refusal."""
    assert oct(os.stat(running.socket).st_mode & 0o777) == "0o600"
    r = ctl("--socket", str(running.socket), "status", user=65534)
    assert r.returncode == 2
    assert r.stderr.startswith(f"btfreconcilectl: error: permission denied connecting to "
                               f"{running.socket}: the control socket is root-only by default")
    assert len(r.stderr.splitlines()) == 1


def test_socket_group_and_mode(tmp_path: Path) -> None:
    """socket_mode/socket_group open the socket to a group without opening it to all."""
    root = Path(tempfile.mkdtemp(prefix="btfr-grp-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        fs = FakeSystem(root)
        p = subprocess.Popen(daemon_argv(fs.config(log_format="json", socket_mode="0660",
                                                   socket_group="nogroup")),
                             env=env_for_daemon(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            # bound under umask 0177, then chmod'ed: the socket exists at 0600 for a moment
            assert wait_for(lambda: fs.socket.exists()
                            and fs.socket.stat().st_mode & 0o777 != 0o600, 20)
            os.chmod(fs.socket.parent, 0o755)
            st = os.stat(fs.socket)
            assert oct(st.st_mode & 0o777) == "0o660"
            import grp
            assert st.st_gid == grp.getgrnam("nogroup").gr_gid
            gid = grp.getgrnam("nogroup").gr_gid
            cmd = as_user(65534, gid, ["--socket", str(fs.socket), "status"])
            r = subprocess.run(cmd, capture_output=True, text=True, env=env_for_daemon())
            assert r.returncode == 0, r.stderr
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(15)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


# ------------------------------------------------------------------ raw protocol


def raw(sock: Path, payload: bytes) -> list[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines()]


def test_protocol_one_object_per_line(running: FakeSystem) -> None:
    out = raw(running.socket, b'{"cmd": "ping"}\n{"cmd": "list"}\n\n{"cmd": "path", '
              b'"module": "good"}\n')
    assert len(out) == 3
    assert out[0] == {"ok": True}
    assert out[1]["ok"] and len(out[1]["modules"]) == 5
    assert out[2]["ok"] and out[2]["btf"].endswith("/good.btf") and out[2]["verdict"] == "ok"


def test_protocol_errors(running: FakeSystem) -> None:
    out = raw(running.socket, b'not json\n["cmd"]\n{"cmd": "reboot"}\n{"cmd": "show"}\n'
              b'{"cmd": "show", "module": "nosuch"}\n{"cmd": "status"}\n')
    assert [o["ok"] for o in out] == [False, False, False, False, False, True]
    assert out[0]["code"] == "bad-request" and "invalid JSON" in out[0]["error"]
    assert out[1]["error"] == "request must be a JSON object"
    assert "unknown command 'reboot'" in out[2]["error"]
    assert out[3]["error"] == "show: missing module name"
    assert out[4]["code"] == "unknown-module"
    too_long = raw(running.socket, b'{"cmd": "' + b"x" * 100_000 + b'"}\n')
    assert too_long == [{"ok": False, "error": "request too long", "code": "bad-request"}]
    # the daemon is still fine
    assert request(running.socket, {"cmd": "ping"}) == {"ok": True}


def test_protocol_rescan(running: FakeSystem) -> None:
    r = request(running.socket, {"cmd": "rescan"})
    assert r["ok"] and r["queued"] == 5
    assert wait_for(lambda: request(running.socket, {"cmd": "status"})["queue"]["pending"] == 0)
