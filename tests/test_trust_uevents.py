"""Uevents are accepted only from the kernel (sender port id 0), SPEC §10."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon_support import env_for_daemon  # noqa: E402

from btfreconciled.daemon.config import ConfigError, load  # noqa: E402
from btfreconciled.daemon.events import UeventListener  # noqa: E402

ADD_A = b"add@/module/a\0ACTION=add\0DEVPATH=/module/a\0SUBSYSTEM=module\0SEQNUM=1\0"


class FakeNetlink:
    """recvfrom() answers like a NETLINK_KOBJECT_UEVENT socket: (data, (nl_pid, groups))."""

    def __init__(self, msgs: list[tuple[bytes, int]]) -> None:
        self.msgs = list(msgs)

    def recvfrom(self, _n: int) -> tuple[bytes, tuple[int, int]]:
        if not self.msgs:
            raise BlockingIOError
        data, pid = self.msgs.pop(0)
        return data, (pid, 1)


@pytest.mark.parametrize("accept_user", [False, True])
def test_listener_takes_kernel_uevents_and_user_ones_only_when_configured(
        accept_user: bool) -> None:
    got: list[tuple[str, str]] = []
    ignored: list[int] = []
    lis = UeventListener(lambda a, n, _t: got.append((a, n)), lambda: None,
                         accept_user=accept_user, on_ignored=ignored.append)
    lis.sock = FakeNetlink([(ADD_A, 0), (ADD_A.replace(b"/a", b"/b"), 4242),
                            (ADD_A.replace(b"/a", b"/c"), 0)])  # type: ignore[assignment]
    lis._readable()
    if accept_user:
        assert got == [("add", "a"), ("add", "b"), ("add", "c")]
        assert ignored == [] and lis.ignored == 0
    else:
        assert got == [("add", "a"), ("add", "c")]
        assert ignored == [4242] and lis.ignored == 1


def test_accept_user_uevents_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    assert load(None, required=False).accept_user_uevents is False
    cfg.write_text("accept_user_uevents = true\n")
    assert load(cfg, required=True).accept_user_uevents is True
    cfg.write_text('accept_user_uevents = "yes"\n')
    with pytest.raises(ConfigError, match="accept_user_uevents"):
        load(cfg, required=True)


DRIVER = r'''
import json, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_daemon_support import FakeSystem, daemon_argv, env_for_daemon, wait_for
from btfreconciled.daemon.control import request
root = Path(sys.argv[2]); accept = sys.argv[3] == "accept"
fs = FakeSystem(root)
fs.add_file("a")
extra = {"accept_user_uevents": True} if accept else {}
cfg = fs.config(log_format="json", log_level="debug", **extra)
p = subprocess.Popen(daemon_argv(cfg), env=env_for_daemon(), stderr=subprocess.PIPE, text=True)
def up():
    try:
        return request(fs.socket, {"cmd": "ping"}, timeout=2)["ok"]
    except Exception:
        return False
assert wait_for(up, 20)
fs.load("a")
tx = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
tx.bind((0, 0))  # a user-space sender: the kernel assigns our pid as the port id
tx.sendto(b"add@/module/a\0ACTION=add\0DEVPATH=/module/a\0SUBSYSTEM=module\0SEQNUM=1\0",
          (0, 1))
def listed():
    return [m["module"] for m in request(fs.socket, {"cmd": "list"})["modules"]]
def ignored():
    return request(fs.socket, {"cmd": "status"})["stats"].get("user_uevents_ignored", 0)
wait_for(lambda: ignored() >= 1 or "a" in listed(), 10)
time.sleep(0.3)  # an accepted event would be processed by now
out = {"listed": listed(), "stats": request(fs.socket, {"cmd": "status"})["stats"]}
p.terminate()
_, err = p.communicate(timeout=15)
out["rc"] = p.returncode
out["debug_lines"] = [json.loads(l)["event"] for l in err.splitlines()
                      if l.startswith("{") and "user space" in l]
print(json.dumps(out))
'''


def _run(tmp_path: Path, mode: str) -> dict[str, Any]:
    here = str(Path(__file__).resolve().parent)
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", DRIVER, here, str(tmp_path),
                        mode], capture_output=True, text=True, env=env_for_daemon(),
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_daemon_ignores_a_forged_uevent_from_user_space(tmp_path: Path) -> None:
    """A process in the daemon's network namespace sends `add@/module/a` to group 1: by
    default nothing is reconciled for it; it is counted and logged at debug level."""
    out = _run(tmp_path, "default")
    assert out["listed"] == [], out
    assert out["stats"]["user_uevents_ignored"] == 1, out
    assert out["debug_lines"] == ["ignored a uevent from user space"], out
    assert out["rc"] == 0


def test_daemon_takes_user_uevents_when_configured_for_tests(tmp_path: Path) -> None:
    out = _run(tmp_path, "accept")
    assert out["listed"] == ["a"], out
    assert out["stats"]["user_uevents_ignored"] == 0, out
