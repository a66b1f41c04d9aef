"""scripts/install-deps skips pip when the virtualenv already holds this checkout's files,
and runs it again once any of them changed (the systemd VM test relies on the first: its
guests' setup-and-run find a virtualenv made natively from the same files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAMP = ".btfreconciled-source"


def _checkout_copy(dst: Path) -> Path:
    shutil.copytree(REPO / "btfreconciled", dst / "btfreconciled",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "scripts", dst / "scripts")
    shutil.copy2(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _install_deps(repo: Path, venv: Path, bindir: Path, *args: str
                  ) -> subprocess.CompletedProcess:
    """install-deps offline with no wheels: a pip run fails fast (no flit_core to build with)."""
    env = dict(os.environ, BTFRECONCILED_VENV=str(venv), BTFRECONCILED_BINDIR=str(bindir),
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(repo / "no-wheels-here"))
    return subprocess.run(["bash", str(repo / "scripts" / "install-deps"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def installed(tmp_path):
    """A copy of the checkout and a virtualenv holding a stand-in btfreconcilectl; each test
    writes the stamp it needs (a real pip install of the checkout is the systemd VM test's)."""
    if os.geteuid() != 0:
        pytest.fail("install-deps runs as root (apt-get, pip); run the tests as root")
    repo = _checkout_copy(tmp_path / "checkout")
    venv, bindir = tmp_path / "venv", tmp_path / "bin"
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", "--without-pip",
                    str(venv)], check=True)
    ctl = venv / "bin" / "btfreconcilectl"
    ctl.write_text("#!/bin/sh\nexit 0\n")
    ctl.chmod(0o755)
    return repo, venv, bindir


def _source_hash(repo: Path) -> str:
    """The hash install-deps stamps, computed by its own code (the heredoc in the script)."""
    text = (repo / "scripts" / "install-deps").read_text()
    code = text.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    out = subprocess.run([sys.executable, "-", str(repo), ""], input=code, text=True,
                         capture_output=True, check=True)
    return out.stdout.strip()


def test_same_files_skip_pip(installed) -> None:
    repo, venv, bindir = installed
    (venv / STAMP).write_text(_source_hash(repo) + "\n")
    res = _install_deps(repo, venv, bindir)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{venv} already holds this checkout's btfreconciled" in res.stdout
    assert "pip skipped" in res.stdout
    assert os.readlink(bindir / "btfreconcilectl") == str(venv / "bin" / "btfreconcilectl")


@pytest.mark.parametrize("change", ["package file", "new file", "pyproject", "extra"])
def test_any_change_runs_pip_again(installed, change) -> None:
    repo, venv, bindir = installed
    (venv / STAMP).write_text(_source_hash(repo) + "\n")
    if change == "package file":
        with (repo / "btfreconciled" / "cache.py").open("a") as f:
            f.write("\n# edited\n")
    elif change == "new file":
        (repo / "btfreconciled" / "btf" / "extra.py").write_text("X = 1\n")
    elif change == "pyproject":
        with (repo / "pyproject.toml").open("a") as f:
            f.write("\n")
    res = _install_deps(repo, venv, bindir, *(["--test"] if change == "extra" else []))
    # pip ran (and, offline with no wheels, could not build): no skip, and the stale stamp
    # is gone, so a half-done install is never taken for this checkout's
    assert "pip skipped" not in res.stdout
    assert res.returncode != 0, res.stdout + res.stderr
    assert "flit_core" in res.stdout + res.stderr
    assert not (venv / STAMP).exists()


def test_pycache_does_not_count(installed) -> None:
    """Byte-compiled files appear when the checkout is imported (the tests run from it):
    they are not the checkout's files and must not force a reinstall."""
    repo, venv, bindir = installed
    (venv / STAMP).write_text(_source_hash(repo) + "\n")
    pc = repo / "btfreconciled" / "__pycache__"
    pc.mkdir(exist_ok=True)
    (pc / "cache.cpython-311.pyc").write_bytes(b"\0" * 16)
    res = _install_deps(repo, venv, bindir)
    assert res.returncode == 0 and "pip skipped" in res.stdout, res.stdout + res.stderr
