"""`btfreconcilectl headers` against the real toolchain: Kbuild, pahole and resolve_btfids
reading our BTF-only vmlinux build modules byte for byte like the full vmlinux.

For each kernel the fixture modules (integration/modules) are built twice with the distro's
own make, pahole and resolve_btfids: against a copy of the headers whose vmlinux is ours
(made from the kernel's image), and against the headers holding the full vmlinux ELF that
vm/setup extracts from that image. Every module's .BTF, .BTF.base and .BTF_ids must be
equal. For 6.12 also Debian 13's shipped vmlinux (from the linux-headers package) is built
against, and its .BTF must equal ours. Also measured: time and peak RSS of `headers` for
each image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import toolchain  # noqa: E402
from oracle_tools import ctl_hwm  # noqa: E402

from btfreconciled.elf import read_btf_sections, read_elf_sections  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SECTIONS = (".BTF", ".BTF.base", ".BTF_ids")


def ctl(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, seconds, peak RSS in MB) of `btfreconcilectl ARGS`."""
    return ctl_hwm(tmp_path, *args, timeout=600)


def image_of(series: str) -> Path:
    kd = toolchain.kernel_dir(series)
    image = kd / "vmlinuz"
    if not image.is_file():
        pytest.fail(f"{image} missing: vm/setup did not finish the {series} kernel")
    return image


def sections_of(ko: Path) -> dict[str, bytes | None]:
    found = read_elf_sections(ko, set(SECTIONS))
    return {name: found.get(name) for name in SECTIONS}


def chroot_ok(cmd: str, **kw: bool) -> str:
    r = toolchain.run_in_chroot(cmd, timeout=1800, **kw)
    if r.returncode != 0:
        pytest.fail(f"in the chroot: {cmd}\n(exit {r.returncode})\n{r.stdout[-3000:]}"
                    f"\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def build_fixtures(root_flags: dict[str, bool], headers: str, out: Path,
                   make_args: str = "", *, expect_skip: bool = False
                   ) -> dict[str, dict[str, bytes | None]]:
    """integration/modules built with Kbuild against `headers` (a path in the chroot) into
    `out`; the sections of each .ko. Kbuild must not have skipped BTF (`expect_skip`: it
    must have, the negative control for a headers directory without vmlinux)."""
    out.mkdir(parents=True)
    src = REPO / "integration" / "modules"
    for f in [src / "Kbuild", src / "Makefile", *src.glob("*.c")]:
        shutil.copy(f, out)
    log = chroot_ok(f"make -s -j2 -C {headers} M={out} {make_args} modules 2>&1",
                    **root_flags)
    skipped = "Skipping BTF generation" in log
    if skipped != expect_skip:
        pytest.fail(f"Kbuild {'did not skip' if expect_skip else 'skipped'} BTF building "
                    f"against {headers}:\n{log[-2000:]}")
    kos = sorted(out.glob("*.ko"))
    if {k.stem for k in kos} != set(toolchain.FIXTURE_MODULES):
        pytest.fail(f"built {[k.name for k in kos]} in {out}, expected "
                    f"{toolchain.FIXTURE_MODULES}")
    return {k.name: sections_of(k) for k in kos}


def headers_copy(root: Path, release: str, tmp_name: str, flags: dict[str, bool],
                 scratch: Path, make_args: str = "") -> Path:
    """A copy of the chroot's /usr/src/linux-headers-RELEASE without its vmlinux, next to
    it (its scripts/tools links are relative), removed by the caller. Debian's 7.x headers
    name their own directory as KBUILD_OUTPUT in their Makefile: the copy names itself.
    Proven to be Kbuild's objtree: without a vmlinux in it, Kbuild skips module BTF."""
    src = root / "usr/src" / f"linux-headers-{release}"
    if not (src / "include/config/kernel.release").is_file():
        pytest.fail(f"{src}: no kernel headers (vm/setup installs them)")
    dst = root / "usr/src" / tmp_name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True,
                    ignore=lambda d, names: ["vmlinux"] if Path(d) == src else [])
    try:
        makefile = dst / "Makefile"
        text = makefile.read_text()
        makefile.write_text(text.replace(f"KBUILD_OUTPUT=/usr/src/{src.name}\n",
                                         f"KBUILD_OUTPUT=/usr/src/{tmp_name}\n"))
        build_fixtures(flags, f"/usr/src/{tmp_name}", scratch / "no-vmlinux", make_args,
                       expect_skip=True)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return dst


def resolve_btfids_in_place(build: Path) -> None:
    """A do-nothing tools/bpf/resolve_btfids/resolve_btfids in `build`, for builds that run
    the real one by hand afterwards (bookworm's linux-kbuild-6.1 ships none) or never
    build: `headers` writes nothing where Kbuild would find none (tests/test_headers.py). A
    `tools` link into the shared root is replaced by a copy of what it points to."""
    tools = build / "tools"
    if tools.is_symlink():
        target = tools.resolve()
        tools.unlink()
        shutil.copytree(target, tools, symlinks=True)
    prog = tools / "bpf" / "resolve_btfids" / "resolve_btfids"
    prog.parent.mkdir(parents=True, exist_ok=True)
    prog.write_text("#!/bin/sh\n# stand-in: this test runs the real resolve_btfids itself\n")
    prog.chmod(0o755)


def write_ours(tmp_path: Path, release: str, image: Path, build: Path) -> None:
    r, secs, mb = ctl(tmp_path, "headers", release, "--image", str(image),
                      "--build-dir", str(build))
    if r.returncode != 0:
        pytest.fail(f"btfreconcilectl headers {release}: exit {r.returncode}: {r.stderr}")
    print(f"\nheaders {release}: {secs:.2f} s, peak RSS {mb:.0f} MB", file=sys.stderr)


def compare(ours: dict[str, dict[str, bytes | None]],
            theirs: dict[str, dict[str, bytes | None]], what: str) -> None:
    assert ours.keys() == theirs.keys()
    for ko, sections in ours.items():
        assert sections[".BTF"], f"{ko}: no .BTF built against our vmlinux"
        for name in SECTIONS:
            assert sections[name] == theirs[ko][name], \
                f"{ko}: {name} differs between our vmlinux and {what}"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory the chroots see at the same path (vm/chroot bind-mounts /tmp)."""
    d = Path("/tmp") / f"btfr-headers-{os.getpid()}-{tmp_path.name}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_612_ours_equals_the_full_vmlinux_and_debians(tc, scratch: Path,
                                                      tmp_path: Path) -> None:
    release = tc.kernel_release("6.12")
    root = tc.rootfs()
    image = image_of("6.12")
    copy = headers_copy(root, release, f"btfr-headers-test-{os.getpid()}", {}, scratch)
    try:
        write_ours(tmp_path, release, image, copy)
        ours_file = copy / "vmlinux"
        want = (tc.kernel_dir("6.12") / "vmlinux.btf").read_bytes()
        assert read_btf_sections(ours_file, digest=False).btf == want
        # pahole and resolve_btfids take our file as a base: libbpf parses it
        chroot_ok(f"bpftool btf dump file {ours_file} format raw | tail -n1")
        built_ours = build_fixtures({}, f"/usr/src/{copy.name}", scratch / "ours")
        built_full = build_fixtures({}, f"/usr/src/linux-headers-{release}", scratch / "full")
        compare(built_ours, built_full, "the full vmlinux")
        assert all(s[".BTF.base"] for s in built_ours.values()), \
            "pahole 1.30 on 6.12 adds .BTF.base to out-of-tree modules"

        # Debian 13's shipped vmlinux, from the headers package itself
        debian = scratch / "debian"
        debian.mkdir()
        deb = f"linux-headers-{release}"
        chroot_ok(f"cd {debian} && (ls /var/cache/apt/archives/{deb}_*.deb >/dev/null 2>&1 "
                  f"&& cp /var/cache/apt/archives/{deb}_*.deb . || apt-get download -qq {deb})"
                  f" && dpkg-deb --fsys-tarfile {deb}_*.deb | tar -x -C {debian} "
                  f"./usr/src/{deb}/vmlinux")
        shipped = debian / "usr/src" / deb / "vmlinux"
        assert read_btf_sections(shipped, digest=False).btf == want, \
            "Debian's shipped vmlinux holds other BTF than the image"
        print(f"sizes: ours {ours_file.stat().st_size}, Debian's {shipped.stat().st_size}, "
              f"full {(root / 'usr/src' / deb / 'vmlinux').stat().st_size}", file=sys.stderr)
        shutil.copy(shipped, ours_file)
        built_debian = build_fixtures({}, f"/usr/src/{copy.name}", scratch / "debian-built")
        compare(built_ours, built_debian, "Debian's shipped vmlinux")
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_72_ours_equals_debians(tc, scratch: Path, tmp_path: Path) -> None:
    """sid's 7.2: its headers ship a BTF-only vmlinux (kept as Debian ships it in the sid
    root); Kbuild 7.2 distills with resolve_btfids --distill_base."""
    release = tc.kernel_release("7.2")
    root = tc.cache_root() / "rootfs" / "sid"
    image = image_of("7.2")
    shipped = root / "usr/src" / f"linux-headers-{release}" / "vmlinux"
    make_args = "KCFLAGS=-DKF_TRUSTED_ARGS=0"  # as vm/setup builds the 7.2 fixtures
    copy = headers_copy(root, release, f"btfr-headers-test-{os.getpid()}", {"sid": True},
                        scratch, make_args)
    try:
        write_ours(tmp_path, release, image, copy)
        want = (tc.kernel_dir("7.2") / "vmlinux.btf").read_bytes()
        ours = read_btf_sections(copy / "vmlinux", digest=False).btf
        assert ours == want
        assert read_btf_sections(shipped, digest=False).btf == ours, \
            "Debian's shipped 7.2 vmlinux holds other BTF than ours"
        print(f"sizes: ours {(copy / 'vmlinux').stat().st_size}, Debian's "
              f"{shipped.stat().st_size}", file=sys.stderr)
        flags = {"sid": True}
        built_ours = build_fixtures(flags, f"/usr/src/{copy.name}", scratch / "ours",
                                    make_args)
        built_debian = build_fixtures(flags, f"/usr/src/linux-headers-{release}",
                                      scratch / "debian", make_args)
        compare(built_ours, built_debian, "Debian's shipped vmlinux")
        assert all(s[".BTF.base"] for s in built_ours.values())
    finally:
        shutil.rmtree(copy, ignore_errors=True)


# What bookworm's scripts/pahole-flags.sh gives pahole 1.24, without "-j": pahole 1.24's
# parallel encoding orders a module's types by which thread finishes first, so two builds
# against the same base are not byte for byte equal.
PAHOLE_61_FLAGS = "--btf_gen_floats --lang_exclude=rust"


def test_61_ours_equals_the_full_vmlinux(tc, scratch: Path, tmp_path: Path) -> None:
    """Debian 12: no vmlinux shipped; bookworm's Kbuild (pahole 1.24) and, as vm/setup does
    (bookworm's kbuild has no resolve_btfids), trixie's resolve_btfids -b afterwards."""
    release = tc.kernel_release("6.1")
    root = tc.cache_root() / "rootfs" / "bookworm"
    image = image_of("6.1")
    copy = headers_copy(root, release, f"btfr-headers-test-{os.getpid()}",
                        {"bookworm": True}, scratch, "RESOLVE_BTFIDS=true")
    full = root / "usr/src" / f"linux-headers-{release}"
    try:
        resolve_btfids_in_place(copy)
        write_ours(tmp_path, release, image, copy)
        want = (tc.kernel_dir("6.1") / "vmlinux.btf").read_bytes()
        assert read_btf_sections(copy / "vmlinux", digest=False).btf == want
        flags = {"bookworm": True}
        # as Debian builds (pahole -j): every module gets BTF against ours
        as_debian = build_fixtures(flags, f"/usr/src/{copy.name}", scratch / "as-debian",
                                   "RESOLVE_BTFIDS=true")
        assert all(s[".BTF"] for s in as_debian.values())
        built = {}
        for name, headers, base in (("ours", copy.name, copy / "vmlinux"),
                                    ("full", full.name, full / "vmlinux")):
            out = scratch / name
            build_fixtures(flags, f"/usr/src/{headers}", out,
                           f"RESOLVE_BTFIDS=true PAHOLE_FLAGS='{PAHOLE_61_FLAGS}'")
            chroot_ok("rbi=$(ls /usr/lib/linux-kbuild-*/tools/bpf/resolve_btfids/"
                      "resolve_btfids | sort -V | tail -n1) && for ko in "
                      f"{out}/*.ko; do $rbi -b {base} $ko || exit 1; done")
            built[name] = {k.name: sections_of(k) for k in sorted(out.glob("*.ko"))}
        compare(built["ours"], built["full"], "the full vmlinux")
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.parametrize("series", ["6.1", "6.12", "7.2"])
def test_headers_time_and_memory(tc, series: str, tmp_path: Path) -> None:
    """Time and peak RSS of `headers` on each real image; the BTF written is the image's."""
    release = tc.kernel_release(series)
    build = tmp_path / "build"
    (build / "include/config").mkdir(parents=True)
    (build / "include/config/kernel.release").write_text(release + "\n")
    resolve_btfids_in_place(build)
    r, secs, mb = ctl(tmp_path, "headers", release, "--image", str(image_of(series)),
                      "--build-dir", str(build))
    assert r.returncode == 0, r.stderr
    want = (tc.kernel_dir(series) / "vmlinux.btf").read_bytes()
    assert read_btf_sections(build / "vmlinux", digest=False).btf == want
    size = (build / "vmlinux").stat().st_size
    print(f"\nheaders {series} ({release}): {secs:.2f} s, peak RSS {mb:.0f} MB, "
          f"vmlinux {size} bytes (.BTF {len(want)})", file=sys.stderr)
    assert mb < 400, f"peak RSS {mb:.0f} MB"


def test_refuses_another_builds_image(tc, tmp_path: Path) -> None:
    """The second 6.12 build's image (6.12.117 vs 6.12.118: same series, other types) for
    the test kernel's headers: refused, nothing written; so is its vmlinux ELF."""
    release = tc.kernel_release("6.12")
    other = tc.kernel_dir("6.12-other")
    other_release = (other / "release").read_text().strip()
    assert other_release != release
    build = tmp_path / "build"
    (build / "include/config").mkdir(parents=True)
    (build / "include/config/kernel.release").write_text(release + "\n")
    for image, kind in ((other / "vmlinuz", "bzImage"), (other / "vmlinux", "vmlinux")):
        r, _, _ = ctl(tmp_path, "headers", release, "--image", str(image),
                      "--build-dir", str(build))
        assert r.returncode == 2
        assert r.stderr == (f"btfreconcilectl: error: {image}: this {kind} is kernel "
                            f"{other_release}, not {release}: refusing to give {release}'s "
                            "modules its BTF\n")
        assert not (build / "vmlinux").exists()
