"""The whole-tree dump tests read bpftool's dumps out of one batch process
(oracle_tools.bpftool_batch): each output must be exactly what a single call prints, and a
failing command must fail the batch, not shift the outputs."""

from __future__ import annotations

from pathlib import Path

import malformed
import pytest
from oracle_tools import VMLINUX, bpftool_batch, bpftool_batch_halves, bpftool_raw, require_tool


def blobs(tmp_path: Path) -> list[str]:
    plain = malformed.valid_blob()
    paths = []
    for i, data in enumerate((plain, malformed.with_layout(plain), plain)):
        p = tmp_path / f"{i}.btf"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def test_batch_outputs_are_the_single_calls(tmp_path: Path) -> None:
    paths = blobs(tmp_path)
    dumps = bpftool_batch([require_tool("bpftool", "bpftool")], paths, None,
                          tmp_path / "cmds")
    assert dumps == [bpftool_raw(p) for p in paths]
    assert dumps[0] and dumps[0] == dumps[2]


def test_a_failing_command_fails_the_batch(tmp_path: Path) -> None:
    paths = blobs(tmp_path)
    bad = tmp_path / "bad.btf"
    bad.write_bytes(b"\x9f\xeb\x01\x00garbage")
    with pytest.raises(AssertionError, match=r"bpftool batch over 4 files \(status \d+\): "
                                             r"1 outputs; Error: .*bad\.btf"):
        bpftool_batch([require_tool("bpftool", "bpftool")], [paths[0], str(bad), *paths[1:]],
                      None, tmp_path / "cmds")


def test_halves_come_back_in_file_order(tmp_path: Path) -> None:
    """Two processes, one per half (every other file): the dumps in the order of the files."""
    plain, layout, _ = blobs(tmp_path)
    files = [plain, str(VMLINUX), layout, plain, str(VMLINUX)]
    dumps = bpftool_batch_halves([require_tool("bpftool", "bpftool")], files, None,
                                 tmp_path / "cmds")
    assert dumps == [bpftool_raw(p) for p in files]
    assert dumps[1] != dumps[0]
