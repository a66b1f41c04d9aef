"""vm/run against a fake virtme-ng: a virtme-ng that fails before the guest command starts is
booted again (3 attempts in all); one that fails after the command started is not, because
the command may have had effects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RELEASE = "6.12.0-fake"

FAKE_VNG = r"""#!/bin/sh
# One word of $FAKE_VNG_PLAN per call: fail (virtme-ng dies before the guest runs anything),
# crash (the guest command started, then the guest died), ok (run the guest script).
n=$(cat "$FAKE_VNG_COUNT" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$FAKE_VNG_COUNT"
plan=$(echo "$FAKE_VNG_PLAN" | cut -d' ' -f$n)
status=""; script=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rwdir) case "$2" in /run/btfr-status=*) status=${2#*=};; esac; shift;;
    --exec) script=$2; shift;;
  esac
  shift
done
case "$plan" in
  fail) echo "qemu-system-x86_64: fake start failure $n" >&2; exit 255;;
  crash) : > "$status/started"; echo "fake guest panic" >&2; exit 0;;
  ok) sh -c "$(printf '%s' "$script" | sed "s#/run/btfr-status#$status#g")";;
esac
"""


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    kdir = root / "kernels" / "6.12"
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"fake")
    (kdir / "release").write_text(RELEASE + "\n")
    fs = root / "rootfs" / "trixie"
    for d in ("bin", "usr/bin", f"usr/lib/modules/{RELEASE}"):
        (fs / d).mkdir(parents=True)
    (fs / "bin" / "sh").write_text("")
    (fs / "usr/bin/python3").write_text("")
    (fs / "usr/lib/modules" / RELEASE / "modules.dep").write_text("")
    vng = root / "venv" / "bin" / "vng"
    vng.parent.mkdir(parents=True)
    vng.write_text(FAKE_VNG)
    vng.chmod(0o755)
    return root


def run(cache: Path, plan: str, *command: str) -> tuple[subprocess.CompletedProcess, int]:
    count = cache / "calls"
    env = dict(os.environ, BTFRECONCILED_CACHE_ROOT=str(cache), FAKE_VNG_PLAN=plan,
               FAKE_VNG_COUNT=str(count))
    p = subprocess.run([sys.executable, str(REPO / "vm" / "run"), "--timeout", "60", "--",
                        *command], env=env, capture_output=True, text=True, timeout=120)
    return p, int(count.read_text())


def test_a_start_failure_is_booted_again(cache: Path) -> None:
    p, calls = run(cache, "fail ok", "exit 7")
    assert p.returncode == 7, p.stderr
    assert calls == 2
    assert "virtme-ng failed before the guest command started (virtme-ng exit status 255" \
        in p.stderr
    assert "fake start failure 1" in p.stderr  # virtme-ng's own words reach our stderr
    assert "attempt 2 of 3" in p.stderr
    assert "guest command exited with status 7" in p.stderr


def test_three_start_failures_fail_the_runner(cache: Path) -> None:
    p, calls = run(cache, "fail fail fail ok", "true")
    assert p.returncode == 125, p.stderr
    assert calls == 3
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("vm/run: error: virtme-ng failed 3 times before the guest command "
                           "started"), last
    assert "fake start failure 3" in last


def test_a_guest_that_died_after_the_command_started_is_not_booted_again(cache: Path) -> None:
    p, calls = run(cache, "crash ok", "true")
    assert p.returncode == 125, p.stderr
    assert calls == 1
    last = p.stderr.strip().splitlines()[-1]
    assert "the guest command did not run to completion" in last
    assert "fake guest panic" in last


def test_the_guest_script_marks_its_start_and_status(cache: Path) -> None:
    p, calls = run(cache, "ok", "echo hello; exit 3")
    assert (p.returncode, calls) == (3, 1), p.stderr
    assert p.stdout.strip() == "hello"


# ------------------------------------------------------------------ --init systemd


def _systemd_boot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outcomes: list[str]):
    """vm/lib/systemd_boot.run with QEMU's boot replaced: each entry of `outcomes` is one
    boot, "died" (the guest ended before the command started), "ok" (status 0) or "crash"
    (died after the command started)."""
    sys.path.insert(0, str(REPO / "vm" / "lib"))
    import systemd_boot

    rootfs = tmp_path / "root"
    (rootfs / "sbin").mkdir(parents=True)
    (rootfs / "sbin" / "init").write_text("")
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/dbus-daemon").write_text("")
    boots: list[str] = []

    def boot(*_a, **_k) -> int:
        what = outcomes[len(boots)]
        boots.append(what)
        if what == "died":
            raise systemd_boot._NotStarted(f"QEMU exit status 0, 1.{len(boots)} s: Kernel panic")
        if what == "crash":
            raise SystemExit(125)  # _boot's die(): not a start failure
        return 0

    monkeypatch.setattr(systemd_boot, "build_initramfs", lambda *a: tmp_path / "initrd")
    monkeypatch.setattr(systemd_boot.shutil, "which", lambda name: "/usr/bin/true")
    monkeypatch.setattr(systemd_boot, "_boot", boot)

    def die(msg: str, status: int):
        raise SystemExit((status, msg))

    class Args:
        timeout = 300.0

    def run() -> int:
        return systemd_boot.run(Args(), tmp_path, RELEASE, repo=REPO, cache=tmp_path,
                                rootfs=rootfs, die=die, kill_group=lambda p: None,
                                timed_out=124, runner_failed=125, attempts=3)
    return run, boots


def test_systemd_guest_that_died_before_the_command_is_booted_again(monkeypatch, tmp_path,
                                                                     capsys) -> None:
    run, boots = _systemd_boot(monkeypatch, tmp_path, ["died", "ok"])
    assert run() == 0
    assert boots == ["died", "ok"]
    err = capsys.readouterr().err
    assert "the guest died before the command started" in err and "attempt 2 of 3" in err


def test_systemd_guest_dying_three_times_is_one_error(monkeypatch, tmp_path) -> None:
    run, boots = _systemd_boot(monkeypatch, tmp_path, ["died"] * 3)
    with pytest.raises(SystemExit) as e:
        run()
    status, msg = e.value.code
    assert status == 125 and boots == ["died"] * 3
    assert msg.startswith("the guest died before the command started, 3 times (last: ")
    assert "\n" not in msg


def test_systemd_guest_failing_after_start_is_not_booted_again(monkeypatch, tmp_path) -> None:
    run, boots = _systemd_boot(monkeypatch, tmp_path, ["crash", "ok"])
    with pytest.raises(SystemExit):
        run()
    assert boots == ["crash"]
