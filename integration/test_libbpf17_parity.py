"""Parity with libbpf 1.7 (Debian sid) for our default, the kernel's relocation rule (issue 14).

libbpf 1.5 follows libbpf 1.5.0's shorter embedded-struct scan (`--rule libbpf-1.5`, checked in
test_libbpf_parity.py); libbpf >= 1.6 scans every split type like Linux, which is our default
(`EMBEDDED_KERNEL`). Here the same batch harness (integration/libbpf_harness.py), built in the
sid root against libbpf 1.7, is the oracle:

- fixtures (6.1, 6.12, 7.2): our distill of the plain build == btf__distill_base, our relocate
  of it == btf__relocate; the 7.2 Kbuild's own .BTF.base (resolve_btfids --distill_base) holds
  the same types and strings as libbpf's; the Kbuild-distilled 7.2 modules (sorted by name)
  reconcile onto 7.2 and onto 6.12 exactly as btf__relocate does;
- whole Debian trees: every module distilled on its own vmlinux (== libbpf 1.7's distill),
  then relocated onto its own and onto other builds: 6.12.118 <-> 6.12.117, 6.12 <-> 7.2,
  6.1 -> 6.12. Both accept with the same bytes, or both reject.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest
import toolchain
from libbpf_harness import build, parse_status

from btfreconciled.btf.btf import Btf
from btfreconciled.elf import read_btf_sections
from btfreconciled.reconcile import Verdict, VmlinuxIndex, distill, reconcile_module_file, relocate
from btfreconciled.reconcile.target import parse_btf

pytestmark = pytest.mark.chroot
MODS = toolchain.FIXTURE_MODULES
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@pytest.fixture(scope="session")
def harness17(tc) -> Path:
    ver = tc.run_in_chroot(["dpkg-query", "-W", "-f", "${Version}", "libbpf1"], sid=True)
    assert ver.returncode == 0 and ver.stdout.startswith("1:1.7."), ver.stdout + ver.stderr
    return build(lambda argv: tc.run_in_chroot(list(argv), sid=True),
                 tc.cache_root() / "build" / "harness", tag="sid")


def run17(tc, exe: Path, mode: str, vmlinux: Path, lines: list[str], work: Path,
          out: Path) -> dict[str, tuple[str, ...]]:
    lst = work / f"{mode}-{vmlinux.parent.name}.list"
    lst.write_text("".join(f"{ln}\n" for ln in lines))
    p = tc.run_in_chroot([str(exe), mode, str(vmlinux), str(lst), str(out)], sid=True,
                         timeout=3600)
    assert p.returncode == 0, p.stderr
    return parse_status(p.stdout)


# ----------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("series", ["6.12", "6.1", "7.2"])
def test_fixture_distill_and_relocate_equal_libbpf17(tc, harness17, series, tmp_path):
    vmlinux = tc.kernel_dir(series) / "vmlinux.btf"
    target = VmlinuxIndex.load(str(vmlinux))
    lines = []
    for mod in MODS:
        raw = tmp_path / f"{mod}.btf"
        raw.write_bytes(read_btf_sections(tc.fixtures_dir(series) / "plain" / f"{mod}.ko").btf)
        lines.append(f"{mod}\t{raw}")
    status = run17(tc, harness17, "distill", vmlinux, lines, tmp_path, tmp_path)
    for mod in MODS:
        assert status[mod] == ("ok",), (mod, status)
        res = distill(parse_btf((tmp_path / f"{mod}.btf").read_bytes(), base=target.btf))
        assert res.base.to_bytes() == (tmp_path / f"{mod}.base").read_bytes(), mod
        assert res.split.to_bytes() == (tmp_path / f"{mod}.split").read_bytes(), mod
        rel = relocate(res.split, target)  # the default: the kernel's rule
        assert rel.ok and rel.data == (tmp_path / f"{mod}.rel").read_bytes(), mod
        if series == "7.2":
            # Kbuild 7.2 (resolve_btfids --distill_base): libbpf's distilled base, same
            # types and strings, written with the 32-byte header of Linux 7.x
            kb = Btf.parse(read_btf_sections(tc.fixtures_dir(series) / f"{mod}.ko").base,
                           source=f"{mod}.ko:.BTF.base")
            assert kb.hdr_extra == b"\0" * 8 and kb.layout == b""
            assert kb.types_words() == res.base.types_words()
            assert kb.strings == res.base.strings


@pytest.mark.parametrize("target_series", ["7.2", "6.12"])
def test_kbuild_72_fixtures_reconcile_like_libbpf17(tc, harness17, target_series, tmp_path):
    """The 7.2 fixtures as Kbuild made them (split BTF sorted by name on a distilled base):
    onto their own kernel and onto 6.12 (another kernel's types: accepted or rejected, the
    same way)."""
    vmlinux = tc.kernel_dir(target_series) / "vmlinux.btf"
    lines = []
    for mod in MODS:
        sec = read_btf_sections(tc.fixtures_dir("7.2") / f"{mod}.ko")
        (tmp_path / f"{mod}.d").write_bytes(sec.base)
        (tmp_path / f"{mod}.s").write_bytes(sec.btf)
        lines.append(f"{mod}\t{tmp_path / f'{mod}.d'}\t{tmp_path / f'{mod}.s'}")
    status = run17(tc, harness17, "relocate", vmlinux, lines, tmp_path, tmp_path)
    target = VmlinuxIndex.load(str(vmlinux))
    accepted = 0
    for mod in MODS:
        res = reconcile_module_file(str(tc.fixtures_dir("7.2") / f"{mod}.ko"), target)
        libbpf_ok = status[mod] == ("ok",)
        assert (res.verdict is Verdict.OK) == libbpf_ok, (mod, status[mod], res.summary)
        if libbpf_ok:
            accepted += 1
            assert res.btf == (tmp_path / f"{mod}.rel").read_bytes(), mod
    print(f"\n7.2 fixtures onto {target_series}: {accepted}/{len(MODS)} accepted by both")
    if target_series == "7.2":
        assert accepted == len(MODS)


# ----------------------------------------------------------------------------- trees
def module_tree(tc, series: str) -> Path:
    """The modules of kernel `series`: its package's tree, or (the second 6.12 build, whose
    modules vm/setup installs only into the trixie root) the root's."""
    kdir = tc.kernel_dir(series)
    tree = kdir / "lib" / "modules"
    if tree.is_dir():
        return tree
    tree = tc.rootfs() / "usr" / "lib" / "modules" / tc.kernel_release(series)
    assert tree.is_dir(), f"no module tree for {series}"
    return tree


_st: dict = {}


def _init(vmlinux: str, work: str) -> None:
    _st.clear()
    _st["target"] = VmlinuxIndex.load(vmlinux)
    _st["work"] = work


def _distill_one(job: tuple[int, str]) -> tuple[int, str, str | None]:
    """Module i's .BTF (raw, for libbpf) and our distilled base and split, next to it."""
    i, path = job
    data = read_btf_sections(path).btf
    if data is None:
        return i, path, None
    work = _st["work"]
    Path(work, f"m{i}.btf").write_bytes(data)
    res = distill(parse_btf(data, base=_st["target"].btf, validate=False))
    Path(work, f"m{i}.ours.base").write_bytes(res.base.to_bytes())
    Path(work, f"m{i}.ours.split").write_bytes(res.split.to_bytes())
    return i, path, f"m{i}"


def _relocate_one(name: str) -> tuple[str, str]:
    """sha256 of our relocation of distilled module `name` onto the worker's target."""
    work = _st["work"]
    base = Btf.parse(Path(work, f"{name}.ours.base").read_bytes(), validate=False)
    split = Btf.parse(Path(work, f"{name}.ours.split").read_bytes(), base=base, validate=False)
    rel = relocate(split, _st["target"], diagnose=False)
    return name, hashlib.sha256(rel.data).hexdigest() if rel.ok and rel.data else "rejected"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"


_distilled: dict[str, tuple[Path, list[str], dict[str, str]]] = {}


def distilled_tree(tc, harness17, series: str, tmp_path_factory) -> tuple[Path, list[str]]:
    """Every module of `series` distilled by us, checked byte for byte against libbpf 1.7's
    btf__distill_base (and, on the way, its btf__relocate onto the same vmlinux against
    ours). Once per session and series."""
    if series in _distilled:
        return _distilled[series][:2]
    work = tmp_path_factory.mktemp(f"tree-{series}")
    vmlinux = tc.kernel_dir(series) / "vmlinux.btf"
    mods = sorted(os.path.join(d, f) for d, _, fs in os.walk(module_tree(tc, series))
                  for f in fs if f.endswith(SUFFIXES))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=_init, initargs=(str(vmlinux), str(work))) as pool:
        done = pool.map(_distill_one, list(enumerate(mods)), chunksize=16)
    names = [n for _, _, n in done if n]
    src = {n: p for _, p, n in done if n}
    out = work / "libbpf"
    out.mkdir()
    status = run17(tc, harness17, "distill", vmlinux,
                   [f"{n}\t{work / f'{n}.btf'}" for n in names], work, out)
    bad = [src[n] for n in names if status.get(n, ("missing",))[0] != "ok"
           or (work / f"{n}.ours.base").read_bytes() != (out / f"{n}.base").read_bytes()
           or (work / f"{n}.ours.split").read_bytes() != (out / f"{n}.split").read_bytes()]
    print(f"\n{series}: {len(names)} modules distilled, {len(names) - len(bad)} "
          f"byte-identical to libbpf 1.7's btf__distill_base")
    assert len(names) > 3000 and not bad, bad[:5]
    _distilled[series] = (work, names, {n: _sha(out / f"{n}.rel") for n in names})
    return work, names


# (source tree, target kernel): its own, the other 6.12 build, the other major version
CROSS = [("6.12", "6.12"), ("6.1", "6.1"), ("7.2", "7.2"), ("6.12", "6.12-other"),
         ("6.12-other", "6.12"), ("6.12", "7.2"), ("7.2", "6.12"), ("6.1", "6.12")]


@pytest.mark.parametrize("source,target", CROSS, ids=[f"{s}-onto-{t}" for s, t in CROSS])
def test_tree_relocated_equals_libbpf17(tc, harness17, tmp_path_factory, source, target):
    work, names = distilled_tree(tc, harness17, source, tmp_path_factory)
    vmlinux = tc.kernel_dir(target) / "vmlinux.btf"
    if source == target:
        libbpf = _distilled[source][2]  # relocated onto the same vmlinux by the distill run
    else:
        out = work / f"onto-{target}"
        out.mkdir(exist_ok=True)
        status = run17(tc, harness17, "relocate", vmlinux,
                       [f"{n}\t{work / 'libbpf' / f'{n}.base'}\t{work / 'libbpf' / f'{n}.split'}"
                        for n in names], work, out)
        libbpf = {n: _sha(out / f"{n}.rel") if status.get(n) == ("ok",) else "rejected"
                  for n in names}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=_init, initargs=(str(vmlinux), str(work))) as pool:
        ours = dict(pool.map(_relocate_one, names, chunksize=16))
    differ = [n for n in names if ours[n] != libbpf[n]]
    accepted = sum(1 for n in names if libbpf[n] != "rejected")
    print(f"\n{source} tree onto {target} ({tc.kernel_release(target)}): {len(names)} modules,"
          f" libbpf 1.7 accepts {accepted}, rejects {len(names) - accepted}; "
          f"{len(differ)} differ from ours")
    assert "missing" not in libbpf.values()
    assert not differ, [(n, ours[n], libbpf[n]) for n in differ[:5]]
