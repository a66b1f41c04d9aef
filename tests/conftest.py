"""Shared fixtures for the fast tests."""

from __future__ import annotations

import pytest
from oracle_tools import VMLINUX


@pytest.fixture(scope="session")
def vmlinux_bytes() -> bytes:
    if not VMLINUX.exists():
        pytest.fail("/sys/kernel/btf/vmlinux is missing: these tests need a kernel with "
                    "CONFIG_DEBUG_INFO_BTF", pytrace=False)
    return VMLINUX.read_bytes()
