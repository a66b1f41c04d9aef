"""The control socket as a trust boundary (SPEC §10), both ways: the daemon bounds what a
client may hold (time, connections, fds, privileges) and the client trusts no answer."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon_support import FakeSystem, daemon_argv, env_for_daemon, wait_for  # noqa: E402

from btfreconciled.cli.main import main as ctl  # noqa: E402
from btfreconciled.daemon.control import ClientError, request  # noqa: E402

# ------------------------------------------------------------------ client: fake daemons


class FakeDaemon:
    """A unix socket server answering each connection with `serve(conn, request_line)`."""

    def __init__(self, path: Path, serve: Callable[[socket.socket, bytes], None]) -> None:
        self.path = path
        self.serve = serve
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            conn.settimeout(5)
            try:
                while b"\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                self.serve(conn, buf)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], Path]]:
    servers: list[FakeDaemon] = []

    def make(serve: Callable[[socket.socket, bytes], None]) -> Path:
        path = tmp_path / f"ctl{len(servers)}.sock"
        servers.append(FakeDaemon(path, serve))
        return path

    yield make
    for s in servers:
        s.close()


def answering(obj: Any) -> Callable[[socket.socket, bytes], None]:
    def serve(conn: socket.socket, _req: bytes) -> None:
        conn.sendall(json.dumps(obj).encode() + b"\n")
    return serve


VERBS = [["status"], ["list"], ["show", "m"], ["path", "m"], ["path", "--merged"],
         ["path", "m", "--merged"], ["status", "--json"], ["list", "--json"],
         ["show", "m", "--json"], ["path", "m", "--json"]]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert ctl(argv) == 2, argv
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and cap.err.startswith("btfreconcilectl: error: "), cap
    assert cap.out == ""
    return cap.err


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_a_daemon_of_another_version_answering_only_ok(fake, capsys, verb) -> None:
    """`{"ok": true}` and nothing else: one line naming what is missing, no KeyError."""
    sock = fake(answering({"ok": True}))
    err = _one_line_error(capsys, ["--socket", str(sock), *verb])
    assert "unexpected answer from btfreconciled (another version?)" in err
    assert "is missing" in err


def _answers(*objs: Any) -> Callable[[socket.socket, bytes], None]:
    """Answers `objs` in turn, one per connection; the last one from then on."""
    todo = list(objs)

    def serve(conn: socket.socket, _req: bytes) -> None:
        obj = todo.pop(0) if len(todo) > 1 else todo[0]
        conn.sendall(json.dumps(obj).encode() + b"\n")
    return serve


_OK_PATH = {"ok": True, "module": "m", "verdict": "ok", "summary": "s", "btf": "/c/m.btf"}


def test_path_waits_on_the_pending_code(fake, capsys) -> None:
    """`path --wait` asks again while the daemon's answer has code "pending"."""
    sock = fake(_answers({"ok": False, "error": "module m is being processed", "code": "pending"},
                         _OK_PATH))
    assert ctl(["--socket", str(sock), "path", "m", "--wait", "10"]) == 0
    assert capsys.readouterr().out == "/c/m.btf\n"


def test_path_decides_by_the_code_not_the_words(fake, capsys) -> None:
    """Another code with the same words is a refusal: one line, exit 2, no waiting."""
    sock = fake(_answers({"ok": False, "error": "module m is being processed",
                          "code": "unknown-module"}, _OK_PATH))
    t0 = time.monotonic()
    err = _one_line_error(capsys, ["--socket", str(sock), "path", "m", "--wait", "10"])
    assert "module m is being processed" in err and time.monotonic() - t0 < 5


WRONG = [
    (["status"], {"daemon": "x"}),
    (["status"], {"daemon": {"version": "9", "pid": "1", "uptime": 1, "events": "poll"},
                  "kernel": {}, "cache": {}, "counts": {}, "queue": {}}),
    (["status"], {"daemon": {"version": "9", "pid": 1, "uptime": 1, "events": "poll"},
                  "kernel": {"release": "r", "id": "i", "vmlinux": "v"}, "cache": {},
                  "counts": {"ok": "many"}, "queue": {"pending": 0}}),
    (["list"], {"modules": {"m": "ok"}}),
    (["list"], {"modules": [{"module": 5, "verdict": "ok", "summary": ""}]}),
    (["list"], {"modules": [None]}),
    (["show", "m"], {"record": []}),
    (["show", "m"], {"record": {"module": "m", "verdict": "ok", "summary": "s",
                                "cross_check": "yes"}}),
    (["path", "m"], {"module": "m", "verdict": True, "summary": "s"}),
    (["path", "--merged"], {"merged": 7}),
]


@pytest.mark.parametrize(("verb", "answer"), WRONG, ids=range(len(WRONG)))
def test_answers_of_the_wrong_shape_are_one_line_errors(fake, capsys, verb, answer) -> None:
    sock = fake(answering({"ok": True, **answer}))
    err = _one_line_error(capsys, ["--socket", str(sock), *verb])
    assert "unexpected answer from btfreconciled" in err


def test_a_well_formed_odd_answer_still_prints(fake, capsys) -> None:
    """Optional parts absent, free-form diagnostics of any shape, NaN/Infinity numbers."""
    st = {"ok": True, "daemon": {"version": "9", "pid": 1, "uptime": float("inf"),
                                 "events": "poll"},
          "kernel": {"release": "r", "id": "i", "vmlinux": "v"}, "cache": {},
          "counts": {"ok": 1}, "queue": {"pending": 0},
          "last_events": [{"time": 1e300, "action": "rescan"}]}
    sock = fake(answering(st))
    assert ctl(["--socket", str(sock), "status"]) == 0
    assert "up ?" in capsys.readouterr().out
    rec = {"ok": True, "record": {"module": "m", "verdict": "incompatible", "summary": "s",
                                  "diagnostics": [3, {"summary": "x", "severity": 5,
                                                      "candidates": 7, "paths": "p"}]}}
    sock = fake(answering(rec))
    assert ctl(["--socket", str(sock), "show", "m"]) == 0
    assert "5: x" in capsys.readouterr().out


def test_a_multi_line_error_from_the_daemon_is_printed_as_one_line(fake, capsys) -> None:
    sock = fake(answering({"ok": False, "error": "first\nsecond\n" + "x" * 5000}))
    err = _one_line_error(capsys, ["--socket", str(sock), "status"])
    assert "first second" in err and len(err) < 700


def test_client_gives_up_on_a_dripping_peer_after_its_overall_timeout(fake) -> None:
    """One byte at a time, never a newline: each read succeeds, so a per-read timeout
    never fires.  The peer stops after 6 s; the client must be gone long before."""
    def drip(conn: socket.socket, _req: bytes) -> None:
        for _ in range(30):
            conn.sendall(b" ")
            time.sleep(0.2)

    sock = fake(drip)
    t0 = time.monotonic()
    with pytest.raises(ClientError, match="did not answer within 1 s"):
        request(sock, {"cmd": "status"}, timeout=1.0)
    assert time.monotonic() - t0 < 2.5


def test_client_bounds_the_answer_size(fake) -> None:
    def flood(conn: socket.socket, _req: bytes) -> None:
        chunk = b"x" * 65536
        for _ in range(64):  # 4 MiB, then the peer gives up
            conn.sendall(chunk)

    sock = fake(flood)
    with pytest.raises(ClientError, match="longer than 1048576 bytes"):
        request(sock, {"cmd": "list"}, timeout=10, max_answer=1 << 20)


# ------------------------------------------------------------------ server: a real daemon


def _start(fs: FakeSystem, **cfg: Any) -> subprocess.Popen[str]:
    p = subprocess.Popen(daemon_argv(fs.config(log_format="json", events="poll", **cfg)),
                         env=env_for_daemon(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)

    def up() -> bool:
        try:
            return request(fs.socket, {"cmd": "ping"}, timeout=2)["ok"] is True
        except Exception:
            return False
    assert wait_for(up, 20), "daemon did not start"
    return p


def _stop(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    assert p.returncode == 0, err[-3000:]
    return err


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def _read_line(s: socket.socket) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf) if buf else {}


@pytest.fixture
def world() -> Iterator[FakeSystem]:
    root = Path(tempfile.mkdtemp(prefix="btfr-trust-", dir="/tmp"))
    os.chmod(root, 0o755)
    fs = FakeSystem(root)
    fs.add_file("a")
    fs.load("a")
    yield fs
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_idle_and_slow_clients_time_out_and_the_65th_evicts_the_oldest_idle(world) -> None:
    p = _start(world, control_timeout=1.5)
    try:
        # _start's own ping connection is gone: only the asking one is open
        assert wait_for(lambda: request(world.socket, {"cmd": "status"})["stats"]
                        ["control_connections"] == 1, 10)
        time.sleep(0.3)  # and the asking one has closed too
        held = [_connect(world.socket) for _ in range(65)]
        answers = [_read_line(s) for s in held]  # the evicted one at once, the rest idle
        codes = [a.get("code") for a in answers]
        # the 65th took the slot of the oldest idle one
        assert codes[0] == "evicted" and codes.count("timeout") == 64, answers
        assert answers[0]["ok"] is False and "closed while idle" in answers[0]["error"]
        for s in held:
            s.close()
        # a dripping client: one byte every 0.3 s never completes a line in 1.5 s
        drip = _connect(world.socket)
        t0 = time.monotonic()
        for ch in b'{"cmd": "status"':
            try:
                drip.send(bytes([ch]))
            except OSError:
                break
            time.sleep(0.3)
        assert _read_line(drip)["code"] == "timeout"
        assert time.monotonic() - t0 < 6
        drip.close()
        # slots free again: status answers and counts what happened
        assert wait_for(lambda: _status_ok(world.socket), 10)
        st = request(world.socket, {"cmd": "status"})["stats"]
        assert st["control_refused"] == 0 and st["control_evicted"] == 1, st
        assert st["control_timeouts"] == 65, st
    finally:
        _stop(p)


def test_status_answers_during_a_flood_of_idle_connections(world) -> None:
    """2,000 idle connections of the same user: the oldest idle ones make room, so a real
    `status` is answered at once (it waited 10 s for the idle ones to time out)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    p = _start(world, control_timeout=30)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while len(held) < min(2000, want - 100) and time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(world.socket))
            except BlockingIOError:  # the backlog is full: the daemon is accepting
                s.close()
                time.sleep(0.001)
                continue
            s.setblocking(True)
            s.settimeout(10)
            held.append(s)
        t0 = time.monotonic()
        answer = request(world.socket, {"cmd": "status"}, timeout=5)
        took = time.monotonic() - t0
        assert answer["ok"] is True, answer
        assert took < 2, f"status took {took:.2f} s during the flood"
        assert answer["stats"]["control_evicted"] > 1000, answer["stats"]
        assert _read_line(held[0])["code"] == "evicted"  # told why it was closed
    finally:
        for s in held:
            s.close()
        _stop(p)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_errors_back_off_log_once_and_status_answers_again(world) -> None:
    """EMFILE: asyncio's server logged every retry (with a traceback).  We log once per
    interval and answer again as soon as descriptors come back."""
    p = _start(world, control_timeout=30)
    try:
        n_fds = len(os.listdir(f"/proc/{p.pid}/fd"))
        soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
        # only the soft limit: raising it back needs no privilege
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (n_fds + 4, hard))
        conns = [_connect(world.socket) for _ in range(12)]  # beyond the limit: backlog
        time.sleep(2.5)  # the daemon retries accept() meanwhile
        for s in conns:
            s.close()
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert wait_for(lambda: _status_ok(world.socket), 10)
        st = request(world.socket, {"cmd": "status"})["stats"]
        assert st["control_accept_errors"] >= 2, st
    finally:
        err = _stop(p)
    lines = [line for line in err.splitlines() if "accept" in line]
    assert len(lines) == 1, lines
    assert "cannot accept control connections" in lines[0]
    assert "Traceback" not in err


def _status_ok(path: Path) -> bool:
    try:
        return request(path, {"cmd": "status"}, timeout=2)["ok"] is True
    except ClientError:
        return False


USER_REQUEST = r'''
import json, os, sys
from btfreconciled.daemon.control import request
os.setgroups([]); os.setgid(65534); os.setuid(65534)
print(json.dumps([request(sys.argv[1], {"cmd": c}) for c in ("status", "rescan")]))
'''


def test_rescan_stays_root_only_when_the_socket_is_opened_to_others(world) -> None:
    p = _start(world, socket_mode="0666")
    try:
        os.chmod(world.socket.parent, 0o755)
        r = subprocess.run([sys.executable, "-c", USER_REQUEST, str(world.socket)],
                           capture_output=True, text=True, env=env_for_daemon(), timeout=60)
        assert r.returncode == 0, r.stderr
        status, rescan = json.loads(r.stdout)
        assert status["ok"] is True
        assert rescan == {"ok": False, "code": "permission-denied",
                          "error": "rescan: permission denied (only root may ask for it)"}
        assert request(world.socket, {"cmd": "rescan"})["ok"] is True  # root may
    finally:
        _stop(p)


def _fill_backlog(path: str) -> list[socket.socket]:
    """Connections to ``path`` until its (not accepting) listener's backlog is full."""
    fillers: list[socket.socket] = []
    while True:
        f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        f.setblocking(False)
        try:
            f.connect(path)
        except BlockingIOError:
            f.close()
            return fillers
        fillers.append(f)


def test_the_client_waits_for_a_full_backlog_instead_of_failing(tmp_path) -> None:
    """With its listen backlog full, an AF_UNIX connect under a timeout fails at once with
    EAGAIN: the client used to report "Resource temporarily unavailable" (seen once in CI,
    during the flood above).  It must wait, within its timeout, for the daemon to accept."""
    path = str(tmp_path / "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    fillers = _fill_backlog(path)
    try:
        assert fillers, "the backlog took no connection at all"

        def serve() -> None:
            time.sleep(0.3)
            for _ in range(len(fillers) + 1):
                c, _addr = srv.accept()
                c.settimeout(5)
                with contextlib.suppress(OSError):
                    if c.recv(1 << 16):
                        c.sendall(b'{"ok": true}\n')
                    c.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        for f in fillers:  # their requests are answered too, so the server moves on
            f.setblocking(True)
            f.sendall(b'{"cmd": "status"}\n')
        assert request(path, {"cmd": "status"}, timeout=5) == {"ok": True}
        t.join(5)
    finally:
        for f in fillers:
            f.close()
        srv.close()


def test_the_client_gives_up_on_a_full_backlog_at_its_deadline(tmp_path) -> None:
    path = str(tmp_path / "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    fillers = _fill_backlog(path)
    try:
        t0 = time.monotonic()
        with pytest.raises(ClientError, match=r"did not answer within 0.5 s"):
            request(path, {"cmd": "status"}, timeout=0.5)
        assert time.monotonic() - t0 < 1.5
    finally:
        for f in fillers:
            f.close()
        srv.close()
