"""The CI rules of the repository's conftest.py: skips fail under BTFRECONCILED_REQUIRE_ORACLES,
and --file-times prints every test file's time, test count and outcomes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SKIPPING = '''
import pytest

@pytest.fixture
def oracle():
    pytest.skip("no oracle in the fixture")

def test_fixture_skip(oracle):
    pass

def test_inline_skip():
    pytest.skip("bpf() not permitted")

@pytest.mark.skipif(True, reason="not root")
def test_mark_skip():
    pass

def test_importorskip():
    pytest.importorskip("btfreconciled_no_such_module")

@pytest.mark.xfail(reason="expected")
def test_xfail():
    assert False

def test_passes():
    pass
'''

SLOW = '''
import time

def test_slow():
    time.sleep(0.3)

def test_fails():
    assert False
'''


def run_pytest(tmp_path: Path, require: str | None, *args: str) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_slow.py").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if k != "BTFRECONCILED_REQUIRE_ORACLES"}
    if require is not None:
        env["BTFRECONCILED_REQUIRE_ORACLES"] = require
    verbosity = [] if "-v" in args else ["-q"]
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *verbosity,
                           "-rA", *args, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_skips_fail_when_oracles_are_required(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, "1")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    # every kind of skip is a failure or an error, with its reason; the xfail stays one
    for name, reason in [("test_fixture_skip", "no oracle in the fixture"),
                         ("test_inline_skip", "bpf() not permitted"),
                         ("test_mark_skip", "not root"),
                         ("test_importorskip", "btfreconciled_no_such_module")]:
        line = next((x for x in out.splitlines() if f"::{name} - " in x), "")
        assert line.startswith(("FAILED", "ERROR")), (name, out)
        assert "oracle or privilege missing in CI" in out
        assert reason in out, (reason, out)
    assert "XFAIL" in out and "SKIPPED" not in out, out
    assert "skipped" not in out.splitlines()[-1], out


def test_module_level_skip_fails_when_oracles_are_required(tmp_path: Path) -> None:
    (tmp_path / "test_module_skip.py").write_text(
        'import pytest\npytest.importorskip("btfreconciled_no_such_module")\n'
        "def test_x():\n    pass\n")
    res = run_pytest(tmp_path, "1", "--continue-on-collection-errors")
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"ERROR .*test_module_skip.py - oracle or privilege missing in CI",
                     res.stdout), res.stdout


def test_skips_stay_skips_without_the_variable(tmp_path: Path) -> None:
    for require in (None, "0"):
        res = run_pytest(tmp_path, require)
        assert res.returncode == 1, res.stdout  # test_slow.py's failure only
        assert "4 skipped" in res.stdout, res.stdout
        assert "oracle or privilege missing" not in res.stdout


def test_file_times_table(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, "1", "--file-times")
    lines = res.stdout.splitlines()
    head = lines.index("time per test file, slowest first (set-up + call + tear-down):")
    table = lines[head + 1:]
    assert len(table) == 4, res.stdout  # two files, the total, the skip count
    # slowest first: test_slow.py slept 0.3 s
    assert table[0].endswith("test_slow.py"), table
    assert re.match(r"\s*0\.[3-9] s\s+2 tests  1 passed, 1 failed\s", table[0]), table
    assert table[1].endswith("test_skipping.py"), table
    assert re.search(r"\s6 tests  2 passed, 2 failed, 2 errors\s", table[1]), table
    assert re.search(r"\s8 tests  3 passed, 3 failed, 2 errors\s+all 2 files", table[2]), table
    assert table[3] == ("skipped: 0 (4 skip(s) turned into failures by "
                        "BTFRECONCILED_REQUIRE_ORACLES=1)"), table
    # without the variable the skips are counted as such
    res = run_pytest(tmp_path, None, "--file-times")
    assert res.stdout.splitlines()[-1] == "skipped: 4", res.stdout


BOOTING = '''
import os
import pytest

@pytest.fixture(scope="session")
def guest_session():
    return os.environ["PYTEST_XDIST_WORKER"]

@pytest.mark.vm
def test_marked_vm():
    print("worker", os.environ["PYTEST_XDIST_WORKER"])

def test_shares_the_guest(guest_session):
    print("worker", guest_session)
'''


GUEST_FILES = "test_boot0.py\ntest_boot1.py\ntest_boot2.py"


def test_file_times_and_units_under_xdist(tmp_path: Path) -> None:
    """scripts/setup-and-test runs the suite on two xdist workers: the table and the skip count
    are the controller's (made from the workers' reports), a test file stays on one worker,
    and the guest files' tests all run on the same worker."""
    for i in range(3):
        (tmp_path / f"test_boot{i}.py").write_text(BOOTING)
    res = run_pytest(tmp_path, "1", "-n", "2", "--dist", "loadfile", "--file-times", "-v",
                     "-o", "markers=vm: boots a guest", "-o", f"guest_files={GUEST_FILES}")
    out = res.stdout
    lines = out.splitlines()
    head = lines.index("time per test file, slowest first (set-up + call + tear-down):")
    assert len(lines[head + 1:]) == 7, out  # five files, the total, the skip count
    assert re.search(r"\s14 tests  9 passed, 3 failed, 2 errors\s+all 5 files", out), out
    assert lines[-1] == ("skipped: 0 (4 skip(s) turned into failures by "
                         "BTFRECONCILED_REQUIRE_ORACLES=1)"), out
    booted = re.findall(r"\[(gw\d)\] .*PASSED test_boot\d\.py::test_\w+", out)
    assert len(booted) == 6 and len(set(booted)) == 1, out
    for name in ("test_skipping.py", "test_slow.py"):
        on = set(re.findall(rf"\[(gw\d)\] .*{name}::", out))
        assert len(on) == 1, (name, out)


def test_setup_and_test_requires_oracles_and_prints_the_table() -> None:
    script = (ROOT / "scripts" / "setup-and-test").read_text()
    assert "export BTFRECONCILED_REQUIRE_ORACLES=1" in script
    assert re.search(r"pytest -n \S+ --dist loadfile -ra --file-times", script)


def test_a_guest_test_outside_the_guest_files_stops_the_collection(tmp_path: Path) -> None:
    (tmp_path / "test_boot0.py").write_text(BOOTING)
    res = run_pytest(tmp_path, "1", "-o", "markers=vm: boots a guest",
                     "-o", "guest_files=test_boot1.py")
    assert res.returncode == 4, res.stdout + res.stderr
    assert ("test_boot0.py boots a guest (test_marked_vm) but is not in the guest_files ini "
            "option") in res.stderr, res.stderr


def test_the_longest_work_is_collected_first(tmp_path: Path) -> None:
    """Guest files, then integration/, then the rest, each file's tests in their own order;
    under xdist the guest unit starts at once and the other worker takes integration/."""
    (tmp_path / "integration").mkdir()
    (tmp_path / "integration" / "test_a.py").write_text(SLOW)
    (tmp_path / "test_boot0.py").write_text(BOOTING)
    ini = ["-o", "markers=vm: boots a guest", "-o", "guest_files=test_boot0.py"]
    res = run_pytest(tmp_path, None, "--collect-only", *ini)
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    assert ids == [
        "test_boot0.py::test_marked_vm", "test_boot0.py::test_shares_the_guest",
        "integration/test_a.py::test_slow", "integration/test_a.py::test_fails",
        *(f"test_skipping.py::{t}" for t in ("test_fixture_skip", "test_inline_skip",
                                               "test_mark_skip", "test_importorskip",
                                               "test_xfail", "test_passes")),
        "test_slow.py::test_slow", "test_slow.py::test_fails",
    ], res.stdout
    res = run_pytest(tmp_path, None, "-n", "2", "--dist", "loadfile", "-v", *ini)
    done = re.findall(r"\[(gw\d)\] .*? (\S+\.py)::", res.stdout)
    began = {worker: path for worker, path in reversed(done)}  # each worker's first file
    assert sorted(began.values()) == ["integration/test_a.py", "test_boot0.py"], res.stdout


def test_a_guest_asked_for_at_run_time_outside_the_guest_files_fails(tmp_path: Path) -> None:
    """request.getfixturevalue("guest_session") escapes the collection check: the fixture's
    set-up names the file instead (a second boot on another xdist worker otherwise)."""
    (tmp_path / "test_late.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='session')\ndef guest_session():\n"
        "    return 'booted'\n\ndef test_late(request):\n"
        "    assert request.getfixturevalue('guest_session') == 'booted'\n")
    res = run_pytest(tmp_path, "1", "-o", "markers=vm: boots a guest",
                     "-o", "guest_files=test_boot0.py", "-k", "test_late")
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("test_late.py boots a guest (guest_session, asked for at run time) but is not in "
            "the guest_files ini option") in res.stdout, res.stdout
    (tmp_path / "test_late.py").rename(tmp_path / "test_boot0.py")
    res = run_pytest(tmp_path, "1", "-o", "markers=vm: boots a guest",
                     "-o", "guest_files=test_boot0.py", "-k", "test_late")
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout
