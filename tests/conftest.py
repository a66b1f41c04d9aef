"""Shared fixtures for the fast tests."""

from __future__ import annotations

import os

import pytest
from oracle_tools import VMLINUX


@pytest.fixture(scope="session")
def vmlinux_bytes() -> bytes:
    if not VMLINUX.exists():
        pytest.fail("/sys/kernel/btf/vmlinux is missing: these tests need a kernel with "
                    "CONFIG_DEBUG_INFO_BTF", pytrace=False)
    return VMLINUX.read_bytes()


# Validated-markers (btf/markers.py) live in the daemon's cache directory: tests never read
# or leave any there (tests of the markers point this at their own directory).
os.environ["BTFRECONCILED_TRUST_DIR"] = "/nonexistent/btfreconciled-tests"
