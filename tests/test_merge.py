"""Merged BTF (SPEC §8): vmlinux + reconciled modules as one standalone BTF.

Checked against bpftool on the running kernel's vmlinux: the merged file dumps exactly as
vmlinux's dump followed by the module's split dump (`-B vmlinux`), and a later module's
part is its own merged part renumbered past the modules before it.
"""

from __future__ import annotations

import re
import struct
from array import array
from pathlib import Path

import pytest
from oracle_tools import VMLINUX, bpftool_raw

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.dump import dump_raw_lines
from btfreconciled.btf.types import Array, Const, FuncProto, Member, Param, Ptr, Struct
from btfreconciled.errors import ErrorCode
from btfreconciled.reconcile.merge import (
    MergeError,
    merged_bytes,
    shift_references,
    write_merged,
)
from btfreconciled.reconcile.wire import record_offsets


@pytest.fixture(scope="module")
def vml(vmlinux_bytes) -> Btf:
    return Btf.parse(vmlinux_bytes, source=str(VMLINUX), validate=False)


def split_module(vml: Btf, tag: str, n_extra: int = 0) -> bytes:
    """A module split on `vml`: embeds list_head, points at task_struct, own strings,
    references between its own types, plus `n_extra` structs (enough records to take the
    lane-wise path)."""
    s = Btf(vml)
    lh = vml.find("list_head")[0]
    task = vml.find("task_struct")[0]
    intid = vml.find("int")[0]
    n = vml.type_count
    s.add(Struct(s.add_str(f"{tag}_state"), 0, 40, (
        Member(s.add_str("node"), lh, 0),
        Member(s.add_str("owner"), n + 1, 128),
        Member(s.add_str("counter"), intid, 192),
        Member(s.add_str("tail"), n + 2, 224))))  # [n]
    s.add(Ptr(0, 0, task))  # [n+1]
    s.add(Array(0, 0, intid, intid, 2))  # [n+2]
    s.add(Const(0, 0, n))  # [n+3]
    s.add(Ptr(0, 0, n + 3))  # [n+4]
    s.add(FuncProto(0, 0, intid, (Param(s.add_str("st"), n + 4),)))  # [n+5]
    for i in range(n_extra):
        s.add(Struct(s.add_str(f"{tag}_extra{i}"), 0, 48, (
            Member(s.add_str(f"x{i}"), n + 1, 0), Member(s.add_str("y"), n, 64))))
    return Btf.parse(s.to_bytes(), base=vml, validate=False).to_bytes()


def renumber(lines: list[str], first: int, shift: int) -> list[str]:
    """Dump lines with every type id >= first moved by shift (ids at line start, type_id=)."""
    def sub(m: re.Match[str]) -> str:
        v = int(m.group(2))
        return f"{m.group(1)}{v + shift if v >= first else v}"
    return [re.sub(r"(^\[|type_id=)(\d+)", sub, ln) for ln in lines]


def test_one_module_is_vmlinux_then_its_split_ids_as_bpftool_dumps_them(vml, tmp_path):
    mod = split_module(vml, "alpha")
    merged = tmp_path / "merged.btf"
    with open(merged, "wb") as f:
        layout = write_merged(f.write, vml, [("alpha", mod)])
    split = tmp_path / "alpha.btf"
    split.write_bytes(mod)
    assert bpftool_raw(merged) == bpftool_raw(VMLINUX) + bpftool_raw(split, VMLINUX)
    # standalone: no base needed, every id the module had is the same id here
    m = Btf.parse(merged.read_bytes(), source="merged", validate=True)
    assert m.base is None and m.type_count == vml.type_count + 6
    assert layout.size == merged.stat().st_size
    (part,) = layout.modules
    assert (part.first_id, part.type_count) == (vml.type_count, 6)
    assert part.str_off == vml.str_end and layout.type_count == m.type_count


@pytest.mark.parametrize("n_extra", [0, 100])  # plain loop, lane-wise rewrite
def test_later_modules_move_past_earlier_ones(vml, n_extra):
    a = split_module(vml, "alpha", n_extra)
    b = split_module(vml, "beta", n_extra)
    c = split_module(vml, "gamma", 3)
    both = merged_bytes(vml, [("alpha", a), ("beta", b), ("gamma", c)])
    m = Btf.parse(both, source="all", validate=True)
    nv = vml.type_count
    parts = [Btf.parse(x, base=vml, validate=False) for x in (a, b, c)]
    assert m.type_count == nv + sum(len(p._offs) for p in parts)
    first = nv
    for p in parts:
        count = len(p._offs)
        own = dump_raw_lines(Btf.parse(merged_bytes(vml, [("x", p.to_bytes())]),
                                       validate=False), nv - 1, nv - 1 + count)
        got = dump_raw_lines(m, first - 1, first - 1 + count)
        assert got == renumber(own, nv, first - nv)
        first += count
    # vmlinux itself is untouched at the front
    assert dump_raw_lines(m, 0, 50) == dump_raw_lines(vml, 0, 50)


def test_lane_rewrite_equals_plain_loop(vml):
    mod = Btf.parse(split_module(vml, "delta", 200), base=vml, validate=False)
    words, offs = mod.wire_records()
    lanes = shift_references(words, offs, vml.type_count, 977, vml.str_end, 12345)
    plain = shift_references(words, offs[:64], vml.type_count, 977, vml.str_end, 12345)
    # the plain path on the first 64 records equals the lane-wise result there
    end = offs[64]
    assert lanes[:end] == plain[:end]
    assert record_offsets(lanes) == offs
    assert lanes != words


def test_module_not_split_on_this_vmlinux_is_a_one_line_error(vml):
    with pytest.raises(MergeError) as e:
        merged_bytes(vml, [("bad", b"\x9f\xeb\x01\x00" + bytes(20) + b"xyz")])
    assert "bad" in str(e.value) and "\n" not in str(e.value)
    assert e.value.code is ErrorCode.MERGE_NOT_SPLIT
    with pytest.raises(MergeError, match="must be a vmlinux") as e:
        split = Btf.parse(split_module(vml, "x"), base=vml, validate=False)
        merged_bytes(split, [])
    assert e.value.code is ErrorCode.MERGE_BASE_NOT_VMLINUX


def test_nothing_written_when_a_module_fails(vml):
    out: list[bytes] = []
    with pytest.raises(MergeError):
        write_merged(out.append, vml, [("ok", split_module(vml, "ok")), ("bad", b"junk")])
    assert out == []


def test_shift_keeps_base_references(vml):
    mod = Btf.parse(split_module(vml, "eps"), base=vml, validate=False)
    words, offs = mod.wire_records()
    out = shift_references(words, offs, vml.type_count, 10, vml.str_end, 20)
    lh = vml.find("list_head")[0]
    # struct eps_state: name, info, size, then members (name, type, offset)
    assert words[0] >= vml.str_end and out[0] == words[0] + 20  # its own name
    assert words[3] < vml.str_end and out[3] == words[3]  # 'node' is a vmlinux string
    assert out[4] == lh == words[4]  # the embedded list_head stays a vmlinux id
    assert out[7] == words[7] + 10  # owner -> the module's own PTR
    assert isinstance(out, array) and Path(VMLINUX).exists()


def test_cli_reconcile_merged_writes_vmlinux_plus_module(tmp_path, capsys):
    from test_reconcile import _module_file, module, reparse, vmlinux

    from btfreconciled.cli.main import main as ctl

    base = reparse(vmlinux())
    ko = _module_file(tmp_path, (base, module(base)))
    vm = tmp_path / "vmlinux.btf"
    vm.write_bytes(base.to_bytes())
    split, merged = tmp_path / "split.btf", tmp_path / "merged.btf"
    assert ctl(["reconcile", str(ko), "-o", str(split), "--vmlinux", str(vm)]) == 0
    assert ctl(["reconcile", str(ko), "-o", str(merged), "--merged", "--vmlinux", str(vm)]) == 0
    assert "merged BTF (vmlinux + module)" in capsys.readouterr().out
    assert merged.read_bytes() == merged_bytes(base, [("my_mod", split.read_bytes())])
    assert bpftool_raw(merged) == bpftool_raw(vm) + bpftool_raw(split, vm)
    # an incompatible target: nothing written, exit 1
    grown = vmlinux()
    from dataclasses import replace
    grown.replace(5, replace(grown.type(5), size=40))
    vm2 = tmp_path / "vmlinux2.btf"
    vm2.write_bytes(grown.to_bytes())
    out2 = tmp_path / "never.btf"
    assert ctl(["reconcile", str(ko), "-o", str(out2), "--merged", "--vmlinux", str(vm2)]) == 1
    assert not out2.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_streamed_write_pauses_before_each_module_and_equals_merged_bytes(vml):
    mods = [(t, split_module(vml, t, n)) for t, n in (("a", 80), ("b", 0), ("c", 70))]
    calls: list[int] = []
    chunks: list[bytes] = []
    layout = write_merged(lambda b: (calls.append(len(chunks)), chunks.append(bytes(b))),
                          vml, mods, lambda: calls.append(-1))
    assert calls.count(-1) == 3
    data = b"".join(chunks)
    assert data == merged_bytes(vml, mods) and layout.size == len(data)
    # each module's types went out before the next module was parsed (streamed, not held)
    pauses = [i for i, c in enumerate(calls) if c == -1]
    assert all(calls[p + 1] != -1 for p in pauses[:-1])
    merged = Btf.parse(data, source="merged")  # strictly valid standalone BTF
    assert merged.type_count == layout.type_count


def test_module_with_bad_records_is_found_while_writing(vml):
    good = split_module(vml, "ok")
    bad = bytearray(split_module(vml, "bad"))
    struct.pack_into("<I", bad, 24 + 4, (31 << 24))  # first record: kind 31 does not exist
    with pytest.raises(MergeError, match="bad: ") as e:
        merged_bytes(vml, [("ok", good), ("bad", bytes(bad))])
    assert "\n" not in str(e.value) and e.value.code is ErrorCode.MERGE_NOT_SPLIT


def test_type_limit_names_the_module(vml, monkeypatch):
    import btfreconciled.reconcile.merge as merge_mod

    monkeypatch.setattr(merge_mod, "MAX_TYPE", vml.type_count + 8)
    with pytest.raises(MergeError, match="with two") as e:
        merged_bytes(vml, [("one", split_module(vml, "one")), ("two", split_module(vml, "two"))])
    assert e.value.code is ErrorCode.MERGE_TOO_MANY_TYPES


def test_positional_write_reads_each_module_when_needed(vml, tmp_path):
    """With place(): strings go straight to their offsets, modules are read on demand
    (twice: header, then contents), and the file equals merged_bytes()."""
    import os

    from btfreconciled.cache import pwrite_all, write_all

    mods = {t: split_module(vml, t, n) for t, n in (("a", 80), ("b", 0), ("c", 70))}
    reads: list[str] = []

    def reader(t: str):
        return lambda: (reads.append(t), mods[t])[1]

    out = tmp_path / "all.btf"
    with open(out, "wb", buffering=0) as f:
        fd = f.fileno()
        layout = write_merged(lambda b: write_all(f, b), vml,
                              [(t, reader(t)) for t in mods],
                              place=lambda off, b: pwrite_all(fd, b, off))
    assert out.read_bytes() == merged_bytes(vml, list(mods.items()))
    assert os.path.getsize(out) == layout.size
    assert sorted(reads) == ["a", "a", "b", "b", "c", "c"]


def test_module_changed_between_passes_is_an_error(vml):
    versions = iter([split_module(vml, "x"), split_module(vml, "x", 3)])
    with pytest.raises(MergeError, match="x: ") as e:
        merged_bytes(vml, [("x", lambda: next(versions))])
    assert e.value.code is ErrorCode.MERGE_CHANGED
