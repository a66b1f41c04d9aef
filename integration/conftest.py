"""Session fixtures for the real-kernel integration tests (see vm/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guest_session as guest_session_mod  # noqa: E402
import toolchain  # noqa: E402


@pytest.fixture(scope="session")
def tc(request):
    """The toolchain module, after making sure vm/setup has built everything.

    vm/setup's progress is shown live (pytest's output capture is suspended meanwhile):
    the first build takes minutes and should not look like a hang."""
    if not toolchain.toolchain_ready():
        capman = request.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            with capman.global_and_fixture_disabled():
                toolchain.require_toolchain()
        else:
            toolchain.require_toolchain()
    return toolchain


@pytest.fixture(scope="session")
def cache_root(tc) -> Path:
    return tc.cache_root()


@pytest.fixture(scope="session")
def rootfs(tc) -> Path:
    return tc.rootfs()


@pytest.fixture(scope="session")
def kernel_612(tc) -> Path:
    return tc.kernel_dir("6.12")


@pytest.fixture(scope="session")
def kernel_61(tc) -> Path:
    return tc.kernel_dir("6.1")


@pytest.fixture(scope="session")
def fixtures_612(tc) -> Path:
    return tc.fixtures_dir("6.12")


@pytest.fixture(scope="session")
def fixtures_61(tc) -> Path:
    return tc.fixtures_dir("6.1")


@pytest.fixture(scope="session")
def guest_session(tc, tmp_path_factory):
    """``guest_session(series)``: the one shared virtme boot of ``series`` per session (see
    guest_session.py: every fixture through the kernel, then the daemon end to end);
    whichever test asks first boots."""
    booted: dict[str, dict | Exception] = {}

    def boot(series: str) -> dict:
        if series not in booted:
            try:
                booted[series] = guest_session_mod.boot(tc, series, tmp_path_factory)
            except Exception as e:  # every test of the kernel fails with it, none reboots
                booted[series] = e
        got = booted[series]
        if isinstance(got, Exception):
            raise RuntimeError(f"the shared boot of {series} failed: {got}") from got
        return got
    return boot


@pytest.fixture(scope="session")
def vm_boot(guest_session):
    """``vm_boot(series)``: what the kernel made of every fixture in the boot of ``series``
    (verdicts saved under verdicts/<release>/)."""
    return lambda series: guest_session(series)["kernel"]


@pytest.fixture(scope="session")
def daemon_guest(guest_session):
    """``daemon_guest(series)``: the daemon's end-to-end run in the boot of ``series``."""
    return lambda series: guest_session(series)["daemon"]


@pytest.fixture(scope="session")
def vm_612(vm_boot) -> dict:
    """One 6.12 boot for the whole session: every fixture loaded, verdicts saved."""
    return vm_boot("6.12")


@pytest.fixture(scope="session")
def vm_61(vm_boot) -> dict:
    """One 6.1 boot for the whole session: what an old kernel does with .BTF.base modules."""
    return vm_boot("6.1")


@pytest.fixture(scope="session", params=toolchain.RELOCATING_SERIES)
def vm_relocating(request, vm_boot) -> dict:
    """The boot of each kernel that relocates .BTF.base itself (6.12, 7.2), with its series."""
    return {**vm_boot(request.param), "series": request.param}
