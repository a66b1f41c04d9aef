"""`btfreconcilectl dump` of modules that carry .BTF.base equals bpftool 7.5 (issue 11) and, for
the 7.2 kernel (whose Kbuild distills with resolve_btfids, issue 14), sid's bpftool 7.8.

bpftool (libbpf's btf__parse_split) reads such a module as split BTF on its embedded distilled
base, and with `-B BASE` relocates it onto BASE. We must print the same, line for line:

- every fixture (.BTF.base builds for 6.12 and 6.1), without -B and with -B on its own vmlinux;
- every module of the whole Debian 6.12 and 7.2 trees, distilled against its vmlinux (our
  distill, the result written as a small ELF holding .BTF and .BTF.base), without and with -B.

bpftool runs in the trixie chroot (6.x) or the sid chroot (7.2), in batch mode: each half of a
tree in one process, the vmlinux parsed once per process
(tests/oracle_tools.bpftool_batch_halves); our side runs in two worker processes with the
vmlinux index built once each.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import toolchain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracle_tools import bpftool_batch_halves  # noqa: E402

from btfreconciled.btf.btf import Btf  # noqa: E402
from btfreconciled.btf.dump import dump_raw  # noqa: E402
from btfreconciled.cli.dump import load_for_dump  # noqa: E402
from btfreconciled.elf import read_btf_sections  # noqa: E402
from btfreconciled.elfwrite import write_btf_sections  # noqa: E402
from btfreconciled.reconcile import VmlinuxIndex, distill  # noqa: E402
from btfreconciled.reconcile.module import module_btf  # noqa: E402

pytestmark = pytest.mark.chroot

MODS = toolchain.FIXTURE_MODULES
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@pytest.mark.parametrize("series", ["6.12", "6.1", "7.2"])
def test_fixtures_dump_like_chroot_bpftool(tc, series: str) -> None:
    """bpftool 7.5 for the 6.x fixtures, 7.8 for the 7.2 ones (Kbuild-distilled)."""
    vml = str(tc.kernel_dir(series) / "vmlinux.btf")
    for mod in MODS:
        ko = str(tc.fixtures_dir(series) / f"{mod}.ko")
        assert read_btf_sections(ko).base is not None, f"{ko}: fixture without .BTF.base"
        for base in (None, vml):
            cmd = ["bpftool", "btf", "dump", "file", ko, *(["-B", base] if base else []),
                   "format", "raw"]
            ref = tc.run_in_chroot(cmd, **tc.chroot_flags(series))
            assert ref.returncode == 0, ref.stderr
            assert dump_raw(load_for_dump(ko, base)) == ref.stdout, f"{mod} -B {base}"


_state: dict = {}


def _init(vmlinux: str, seed_elf: str, out_dir: str) -> None:
    target = VmlinuxIndex.load(vmlinux)
    _state.update(target=target, seed=seed_elf, out=out_dir)


def _distill_and_dump(args: tuple[int, str]) -> tuple[str, str | None]:
    """Distill one module into out/<i>.ko; write our two dumps next to it."""
    i, path = args
    target: VmlinuxIndex = _state["target"]
    sections = read_btf_sections(path, digest=False)
    if sections.btf is None:
        return path, None
    split = Btf.parse(sections.btf, base=target.btf, source=path, validate=False)
    res = distill(split, source=path)
    ko = Path(_state["out"]) / f"{i:05d}.ko"
    write_btf_sections(_state["seed"], ko, {".BTF": res.split.to_bytes(),
                                            ".BTF.base": res.base.to_bytes()})
    alone = module_btf(ko, None)
    onto = module_btf(ko, target)
    assert alone is not None and onto is not None
    ko.with_suffix(".ours").write_text(dump_raw(alone))
    ko.with_suffix(".oursB").write_text(dump_raw(onto))
    return path, str(ko)


@pytest.mark.parametrize("series,bpftool", [("6.12", "7.5"), ("7.2", "7.8")])
def test_whole_distilled_tree_dumps_like_bpftool(tc, series: str, bpftool: str,
                                                 tmp_path: Path) -> None:
    kdir = tc.kernel_dir(series)
    vml = str(kdir / "vmlinux.btf")
    mods = sorted(str(p) for p in (kdir / "lib" / "modules").rglob("*") if
                  p.name.endswith(SUFFIXES))
    seed_src = tmp_path / "seed.c"
    seed_src.write_text("int btfr_seed;\n")
    seed = tmp_path / "seed.o"
    subprocess.run(["gcc", "-c", "-o", str(seed), str(seed_src)], check=True)
    out = tmp_path / "distilled"
    out.mkdir()
    with multiprocessing.get_context("fork").Pool(
            2, initializer=_init, initargs=(vml, str(seed), str(out))) as pool:
        done = pool.map(_distill_and_dump, list(enumerate(mods)), chunksize=32)
    kos = sorted(ko for _, ko in done if ko)
    assert len(kos) > 4000, len(kos)
    # bpftool over every distilled module, without and with -B: each half of the tree in one
    # batch process (the vmlinux parsed once per process)
    tool = [*tc.chroot_argv(series), "bpftool"]
    bad = []
    for base, ext in ((None, ".ours"), (vml, ".oursB")):
        refs = bpftool_batch_halves(tool, kos, base, out / f"batch{ext}")
        for ko, ref in zip(kos, refs, strict=True):
            if Path(ko[:-3] + ext).read_text() != ref:
                bad.append(f"{ko} ({ext})")
    src = dict((ko, m) for m, ko in done if ko)
    print(f"{series} tree: {len(kos)} distilled modules x 2 dumps, bpftool {bpftool}: "
          f"{len(bad)} differ")
    assert not bad, f"{len(bad)} dumps differ from bpftool {bpftool}; first: {bad[0]} from " \
                    f"{src[bad[0].split(' ')[0]]}"
    assert os.path.exists(vml)
