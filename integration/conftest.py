"""Session fixtures for the real-kernel integration tests (see vm/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolchain  # noqa: E402


@pytest.fixture(scope="session")
def tc():
    """The toolchain module, after making sure vm/setup has built everything."""
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
