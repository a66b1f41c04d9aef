"""vm/run failure modes: clear errors, the guest's exit status, a timeout that kills QEMU."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

pytestmark = pytest.mark.vm


def run(tc, *args, env=None, timeout=200):
    return subprocess.run([str(tc.VM_DIR / "run"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_missing_kernel_is_a_clear_error(tc):
    t0 = time.monotonic()
    res = run(tc, "--kernel", "5.99", "--", "true", timeout=30)
    assert res.returncode == 125
    assert "kernel '5.99' not found" in res.stderr and "vm/setup" in res.stderr
    assert time.monotonic() - t0 < 10


def test_missing_rootfs_is_a_clear_error(tc, tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "6.12").symlink_to(tc.kernel_dir("6.12"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BTFRECONCILED_CACHE_ROOT": str(tmp_path)}
    res = run(tc, "--", "true", env=env, timeout=30)
    assert res.returncode == 125
    assert "root filesystem not found" in res.stderr


def test_guest_output_and_failing_status(tc):
    """Output comes back, the status is the guest command's, the checkout is importable."""
    res = tc.run_in_vm(
        "6.12",
        "echo hello-from-guest; uname -r; "
        "python3 -c 'import btfreconciled, elftools, structlog, pyroute2, watchdog, zstandard; "
        "print(\"imports-ok\", btfreconciled.__file__)'; exit 42",
        timeout=200)
    assert res.returncode == 42, res.stderr
    assert "hello-from-guest" in res.stdout
    assert tc.kernel_release("6.12") in res.stdout
    assert f"imports-ok {tc.REPO}/btfreconciled/__init__.py" in res.stdout


def test_hanging_guest_is_killed_at_timeout(tc, tmp_path):
    marker = tmp_path / "hang-marker"
    marker.mkdir()
    t0 = time.monotonic()
    # 20 s: the guest is still booting then, and the kill must work at any point
    res = run(tc, "--timeout", "20", "--rwdir", f"/run/hang={marker}", "--", "sleep 1000",
              timeout=200)
    elapsed = time.monotonic() - t0
    assert res.returncode == 124
    assert "did not finish within 20 s" in res.stderr
    assert 19 < elapsed < 50
    # no QEMU left behind
    left = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


# ------------------------------------------------------------------ --init systemd


def test_systemd_init_runs_the_command_after_boot(tc, cache_root):
    """systemd is PID 1, the command runs once the boot is finished, its output and status
    come back, and what it writes lands in the guest's overlay, not in the shared root."""
    probe = f"btfr-overlay-probe-{time.monotonic_ns()}"
    res = tc.run_in_vm(
        "6.12",
        f"echo pid1=$(cat /proc/1/comm); systemctl is-system-running; uname -r; "
        f"touch /etc/{probe} /usr/{probe} && echo wrote-root; echo to-stderr >&2; exit 42",
        timeout=300, extra_args=["--init", "systemd"])
    assert res.returncode == 42, res.stderr
    out = res.stdout.splitlines()
    assert out[:3] == ["pid1=systemd", "running", tc.kernel_release("6.12")], res.stdout
    assert "wrote-root" in out
    assert "to-stderr" in res.stderr
    assert not (tc.rootfs() / "etc" / probe).exists()
    assert not (tc.rootfs() / "usr" / probe).exists()
    m = re.search(r"multi-user\.target reached (\d+\.\d+) s after kernel start; system running",
                  res.stderr)
    assert m, res.stderr
    assert "guest command exited with status 42" in res.stderr


def test_systemd_init_hanging_guest_is_killed_at_timeout(tc, tmp_path):
    marker = tmp_path / "hang-marker-systemd"
    marker.mkdir()
    t0 = time.monotonic()
    res = run(tc, "--init", "systemd", "--timeout", "20", "--rwdir", f"/run/hang={marker}",
              "--", "sleep 1000", timeout=200)
    elapsed = time.monotonic() - t0
    assert res.returncode == 124, res.stderr
    assert "did not finish within 20 s" in res.stderr
    assert 19 < elapsed < 50
    left = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_systemd_init_missing_kernel_is_a_clear_error(tc):
    res = run(tc, "--init", "systemd", "--kernel", "5.99", "--", "true", timeout=30)
    assert res.returncode == 125
    assert "kernel '5.99' not found" in res.stderr
