"""Hooks for every test directory (tests/ and integration/): CI's rules and time budget.

* ``BTFRECONCILED_REQUIRE_ORACLES=1`` (set by scripts/setup-and-test): a skipped test fails.
  Tests skip where a tool or privilege they compare against is missing (``bpf()`` not
  permitted, not root, ...); on a developer's laptop that is a convenience, in CI it would be
  a test that silently checked nothing.  Skips from ``pytest.skip`` (in a test or a fixture),
  ``skipif``/``skip`` marks and ``importorskip`` (also at module level) all count; ``xfail``
  does not.
* ``--file-times``: after the run, one line per test file (slowest first) with its summed
  set-up + call + tear-down time, its number of tests and how many passed, failed, errored or
  skipped, then the totals including the number of skips.
* Under pytest-xdist with ``--dist loadfile`` (as scripts/setup-and-test runs the suite) a
  test file is one unit of work, so that its module fixtures (a whole tree's parse) are built
  once, on one worker; and the files of the ``guest_files`` ini option (pyproject.toml) are
  one unit together: their guests share boots (``guest_session``) and must not compete with
  each other for the two cores under TCG (two SMP guests side by side measured slower than
  one after the other), while the CPU-bound tree tests run beside them.  A test that boots a
  guest (the ``vm`` mark, or ``guest_session``) in a file not listed there stops the run
  with the file's name.
* The collection starts with the longest work -- the guest files, then integration/ (real
  tools over whole kernel trees) -- and ends with the fast tests, which fill the end of the
  run on whichever worker is free first (xdist is told to keep this order: by default it
  sorts the units by their number of tests, which put a 1,600-test file of microsecond tests
  first and the 8 slowest tests of the suite last).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import pytest

REQUIRE_ORACLES = "BTFRECONCILED_REQUIRE_ORACLES"


def _require_oracles() -> bool:
    return os.environ.get(REQUIRE_ORACLES, "") not in ("", "0")


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, lineno, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    return str(longrepr)


_MISSING = "oracle or privilege missing in CI: "


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    where = ""
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        where = f" ({report.longrepr[0]}:{report.longrepr[1]})"
    report.outcome = "failed"
    report.longrepr = (f"{_MISSING}{_skip_reason(report.longrepr)}"
                       f"{where}; {REQUIRE_ORACLES}=1 makes a skip a failure")


def _was_skip(report: pytest.TestReport | pytest.CollectReport) -> bool:
    # Told by the text: under xdist the report was made on a worker, and only the report
    # (its longrepr serialised as text) reaches the process that prints the summary.
    return report.failed and str(report.longrepr).startswith(_MISSING)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                      pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and _require_oracles():
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
        collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                  pytest.CollectReport]:
    report = yield
    if report.skipped and _require_oracles():
        _fail_skip(report)
    return report


def pytest_report_header(config: pytest.Config) -> str | None:
    if _require_oracles():
        return f"{REQUIRE_ORACLES}=1: a skipped test (missing oracle or privilege) fails"
    return None


# ------------------------------------------------------------------ time per test file
# A test's outcome is its worst phase's: a failure in set-up or tear-down is an error.
_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


@dataclass
class FileTimes:
    seconds: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> worst outcome


class FileTimer:
    """Sums report durations per test file; prints the table when pytest is done."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.files: dict[str, FileTimes] = {}
        self.skips_failed = 0

    def file(self, nodeid: str) -> FileTimes:
        return self.files.setdefault(nodeid.split("::", 1)[0], FileTimes())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.skips_failed += _was_skip(report)
        ft = self.file(report.nodeid)
        ft.seconds += report.duration
        if hasattr(report, "wasxfail"):
            outcome = "passed"  # an expected failure (or a tolerated pass) is not a problem
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = report.outcome
        old = ft.outcomes.get(report.nodeid, "passed")
        ft.outcomes[report.nodeid] = max(old, outcome, key=_RANK.__getitem__)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.skips_failed += _was_skip(report)
        if report.nodeid and not report.passed:
            outcome = "error" if report.failed else "skipped"
            self.file(report.nodeid).outcomes[report.nodeid] = outcome

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # Runs after pytest's own summary line, so that the table ends the log.
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or not self.files:
            return
        w = tr.write_line
        w("")
        w("time per test file, slowest first (set-up + call + tear-down):")
        totals = dict.fromkeys(_RANK, 0)
        seconds = 0.0
        for name, ft in sorted(self.files.items(), key=lambda kv: -kv[1].seconds):
            counts = dict.fromkeys(_RANK, 0)
            for outcome in ft.outcomes.values():
                counts[outcome] += 1
            for k, v in counts.items():
                totals[k] += v
            seconds += ft.seconds
            w(f"{ft.seconds:8.1f} s {len(ft.outcomes):5d} tests  {_counts(counts):<28} {name}")
        n = sum(totals.values())
        w(f"{seconds:8.1f} s {n:5d} tests  {_counts(totals):<28} all {len(self.files)} files, "
          f"pytest wall time {time.monotonic() - self.started:.0f} s")
        note = ""
        if _require_oracles():
            note = (f" ({self.skips_failed} skip(s) turned into failures by "
                    f"{REQUIRE_ORACLES}=1)")
        w(f"skipped: {totals['skipped']}{note}")


def _counts(counts: dict[str, int]) -> str:
    parts = [f"{counts['passed']} passed"]
    parts += [f"{v} {'errors' if k == 'error' else k}" for k, v in counts.items()
              if k != "passed" and v]
    return ", ".join(parts)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("guest_files", type="linelist", default=[],
                  help="test files whose tests boot guests: one unit of work under xdist "
                       "(--dist loadfile), started first, so that they share boots and never "
                       "run two guests at once")
    parser.addoption("--file-times", action="store_true", default=False,
                     help="print the time, test count and outcomes of every test file, "
                          "slowest first, at the end of the run")


GUEST_UNIT = "guest files"


def _boots(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("vm")) or "guest_session" in getattr(
        item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    guest_files = set(config.getini("guest_files"))
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if _boots(item) and path not in guest_files:
            raise pytest.UsageError(
                f"{path} boots a guest ({item.name}) but is not in the guest_files ini option "
                f"(pyproject.toml): under xdist it would boot beside the other guests")
    items.sort(key=lambda item: _run_order(item.nodeid.split("::", 1)[0], guest_files))


def _run_order(path: str, guest_files: set[str]) -> int:
    # sort() is stable: the tests of a file keep their order, and so do the files of a class
    if path in guest_files:
        return 0
    return 1 if path.startswith("integration/") else 2


# A test may also ask for a guest at run time (request.getfixturevalue), which the collection
# check above cannot see: the fixture's set-up is checked against the test that asked.
_RUNNING = pytest.StashKey[pytest.Item]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[
        None, object, object]:
    item.config.stash[_RUNNING] = item
    try:
        return (yield)
    finally:
        del item.config.stash[_RUNNING]


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object],
                         request: pytest.FixtureRequest) -> None:
    if fixturedef.argname != "guest_session":
        return
    item = request.config.stash.get(_RUNNING, None)
    path = item.nodeid.split("::", 1)[0] if item else "?"
    if path not in set(request.config.getini("guest_files")):
        raise pytest.UsageError(
            f"{path} boots a guest (guest_session, asked for at run time) but is not in the "
            f"guest_files ini option (pyproject.toml): under xdist it would boot it again")


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent when xdist is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    guest_files = set(config.getini("guest_files"))
    config.option.loadscopereorder = False  # --no-loadscope-reorder: the collection's order

    class GuestFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return GUEST_UNIT if path in guest_files else path

    return GuestFilesTogether(config, log)


def pytest_configure(config: pytest.Config) -> None:
    # Under xdist the controller sees every worker's reports: the table is made there only.
    if config.getoption("--file-times") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FileTimer(config), "btfreconciled-file-times")
