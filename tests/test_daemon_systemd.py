"""systemd/btfreconciled.service: `systemd-analyze verify`, security exposure <= 2.0, and
scripts/install-service.  systemd-analyze is required (Debian: apt-get install systemd);
these tests fail, never skip, without it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "btfreconciled.service"
INSTALL = REPO / "scripts" / "install-service"


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze not found: apt-get install systemd (needed to check the unit)"
    return exe


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a real executable btfreconciled."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "btfreconciled"
    exe.write_text("#!/bin/sh\nexec python3 -m btfreconciled.daemon.main \"$@\"\n")
    exe.chmod(0o755)
    out = tmp_path / "btfreconciled.service"
    out.write_text(UNIT.read_text().replace("@BINDIR@", str(bindir)))
    return out


def test_unit_passes_systemd_analyze_verify(unit: Path) -> None:
    r = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "btfreconciled" in ln]
    assert ours == [], ours


def test_unit_security_exposure_at_most_2(unit: Path) -> None:
    r = subprocess.run([analyze(), "security", "--offline=true", "--threshold=20", str(unit)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = re.search(r"Overall exposure level for btfreconciled\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:]
    assert float(m.group(1)) <= 2.0, r.stdout


def test_unit_says_what_the_daemon_needs() -> None:
    text = UNIT.read_text()
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    assert settings["Type"] == ["notify"]
    assert settings["WatchdogSec"]
    assert settings["ExecReload"] == ["/bin/sh -c 'kill -HUP $$MAINPID'"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_NETLINK"]
    assert settings["ProtectSystem"] == ["strict"] and settings["CapabilityBoundingSet"] == [""]
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["CacheDirectory"] == ["btfreconciled"]
    assert settings["RuntimeDirectory"] == ["btfreconciled"]
    assert "PrivateUsers" not in settings  # would cut the service off from kernel uevents
    assert "ExecStart=@BINDIR@/btfreconciled --foreground" in text


def test_install_service_into_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bindir = root / "opt" / "btfr" / "bin"
    bindir.mkdir(parents=True)
    for name in ("btfreconciled", "btfreconcilectl"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    r = subprocess.run([str(INSTALL), "--root", str(root), "--bindir", "/opt/btfr/bin"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    unit = (root / "etc/systemd/system/btfreconciled.service").read_text()
    assert "ExecStart=/opt/btfr/bin/btfreconciled --foreground" in unit
    assert "@BINDIR@" not in unit
    assert (root / "etc/btfreconciled/btfreconciled.toml").is_file()
    assert os.readlink(root / "usr/local/bin/btfreconcilectl") == "/opt/btfr/bin/btfreconcilectl"
    # a second run keeps an edited config
    (root / "etc/btfreconciled/btfreconciled.toml").write_text('strict = "all"\n')
    r = subprocess.run([str(INSTALL), "--root", str(root), "--bindir", "/opt/btfr/bin"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (root / "etc/btfreconciled/btfreconciled.toml").read_text() == 'strict = "all"\n'


def test_install_service_refuses_a_bindir_hidden_by_protecthome(tmp_path: Path) -> None:
    r = subprocess.run([str(INSTALL), "--root", str(tmp_path), "--bindir", "/root/.venv/bin"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "hidden from the service by ProtectHome=yes" in r.stderr
