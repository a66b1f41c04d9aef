"""The pop-os case for real (issue 10) and a module file replaced under a loaded module
(issue 11 item 2), in ONE 6.12 guest boot (integration/guest/popos.sh).

The guest runs 6.12.118; 6.12.117 (another point release, `kernels/6.12-other`) is installed
in its root too (`/boot/vmlinuz-6.12.117...`), as on a machine whose kernel package was
updated under already-built modules:

1. a module built against .117 with classic split BTF is forced into .118 (`insmod -f`;
   Debian has CONFIG_MODULE_FORCE_LOAD and CONFIG_MODULE_ALLOW_BTF_MISMATCH): the kernel
   loads it without BTF (6.12 logs "Kernel module BTF mismatch detected", once per boot);
2. `btfreconcilectl doctor` names the cause (the base counts) and the build;
3. the daemon rescues it in memory (verdict `rescued`) and publishes exactly libbpf 1.5's
   distill (on .117) + relocate (onto .118), and a merged file;
4. `btfreconcilectl rescue --in-place`, then a reload: the kernel relocates the new
   `.BTF.base` itself, and its BTF equals ours (cross-check match, verdict ok);
5. the kernel postinst hook warns about out-of-tree modules of "the other kernel" that will
   not fit it, and `status` shows the report.

Then a loaded module's file is replaced by another build: `stale-file` naming both build ids
and nothing published, until the module is reloaded from the new file.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import zstandard

from btfreconciled.btf.btf import Btf
from btfreconciled.elf import read_btf_sections

pytestmark = pytest.mark.vm

GUEST_OUT = "/run/btfr-popos"
MODDIR = "/tmp/btfr-mods"  # the daemon's extra_module_dirs in the guest (tmpfs)
MOD = "btfr_types"  # the issue 10 module, built against .117: the kernel rejects its BTF
# also built against .117, but its BTF passes the kernel's checks on .118 by chance (its
# first own types land on vmlinux types the kernel's checks allow): the kernel registers
# wrong BTF for it
SILENT = "btfr_loader"
EMBED = "btfr_embed"  # the issue 11 module (.118 build, replaced by the .117 build)
# what "DKMS" installed for .117: two .118 classic builds (will not fit .117), a .117 classic
# build (fits) and a .118 build with .BTF.base (fits by reconciliation)
DKMS = {"btfr_embed": ("6.12", "plain"), "btfr_ptr": ("6.12", "plain"),
        "btfr_types": ("6.12-other", "plain"), "btfr_kfunc": ("6.12", "")}
WONT_FIT = ("btfr_embed", "btfr_ptr")


@pytest.fixture(scope="module")
def guest(tc, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("popos-6.12")
    other = tc.kernel_release("6.12-other")
    release = tc.kernel_release("6.12")
    assert other != release
    for d in ("mods", "new", "dkms"):
        (out / d).mkdir()
    fx, fo = tc.fixtures_dir("6.12"), tc.fixtures_dir("6.12-other")
    for m in (MOD, SILENT):
        shutil.copyfile(fo / "plain" / f"{m}.ko", out / "mods" / f"{m}.ko")
    shutil.copyfile(fx / "plain" / f"{EMBED}.ko", out / "mods" / f"{EMBED}.ko")
    shutil.copyfile(fo / "plain" / f"{EMBED}.ko", out / "new" / f"{EMBED}.ko")
    for m, (series, sub) in DKMS.items():
        shutil.copyfile(tc.fixtures_dir(series) / sub / f"{m}.ko", out / "dkms" / f"{m}.ko")
    (out / "other-release").write_text(other + "\n")
    (out / "btfreconciled.toml").write_text(
        f'extra_module_dirs = ["{MODDIR}"]\n'
        'search_dirs = ["/boot"]\n'
        # where kernel-check (the postinst hook) writes its report: the default
        'cache_dir = "/var/cache/btfreconciled"\n'
        'log_format = "json"\n'
        # a rescue decompresses kernel images: slow under TCG with other VMs running
        'module_timeout = 300\n')
    t0 = time.monotonic()
    res = tc.run_in_vm("6.12", f"sh integration/guest/popos.sh {GUEST_OUT}", timeout=840,
                       rwdirs=[f"{GUEST_OUT}={out}"])
    elapsed = time.monotonic() - t0
    if res.returncode != 0 or not (out / "complete").exists():
        log = (out / "daemon.log").read_text() if (out / "daemon.log").exists() else ""
        raise RuntimeError(f"pop-os VM run failed (status {res.returncode}, {elapsed:.0f} s):\n"
                           f"{res.stdout}\n{res.stderr}\n--- daemon.log ---\n{log[-5000:]}")
    (out / "host-elapsed").write_text(f"{elapsed:.1f}\n")
    return {"out": out, "release": release, "other": other, "elapsed": elapsed}


def read(g: dict, name: str) -> str:
    return (g["out"] / name).read_text()


def rc(g: dict, name: str) -> int:
    return int(read(g, f"{name}.rc").strip())


def record(g: dict, name: str) -> dict:
    return json.loads(read(g, name))


def build_id(path: Path) -> str:
    bid = read_btf_sections(path, digest=False).build_id
    assert bid
    return bid


@pytest.fixture(scope="module")
def oracle_btf(tc, tmp_path_factory):
    """libbpf 1.5: distill the module on its build (.117), relocate onto .118."""
    tmp = tmp_path_factory.mktemp("popos-oracle")
    base_117 = tc.kernel_dir("6.12-other") / "vmlinux.btf"
    base_118 = tc.kernel_dir("6.12") / "vmlinux.btf"

    def run(ko: Path) -> bytes:
        d = tmp / ko.stem
        d.mkdir(exist_ok=True)
        r = tc.oracle("distill", str(ko), str(base_117), str(d / "base"), str(d / "split"))
        assert r.returncode == 0, r.stderr
        r = tc.oracle("relocate", str(d / "split"), str(d / "base"), str(base_118),
                      str(d / "out"))
        assert r.returncode == 0, r.stderr
        return (d / "out").read_bytes()
    return run


def test_guest_ran_and_daemon_stopped_cleanly(guest) -> None:
    assert read(guest, "uname").strip() == guest["release"]
    assert read(guest, "daemon.rc").strip() == "0"
    for line in read(guest, "daemon.log").splitlines():
        assert "internal error" not in json.loads(line)["event"], line
    # one boot for everything, within the CI budget (the boot included)
    assert guest["elapsed"] < 840


def test_kernel_drops_the_btf_of_a_module_built_for_another_point_release(guest) -> None:
    assert rc(guest, "a.insmod") == 0, read(guest, "a.insmod")
    assert read(guest, "a.kernel-btf").strip() == "no"
    # 6.12 with CONFIG_MODULE_ALLOW_BTF_MISMATCH says so once per boot, without the name
    # (6.1 logs "failed to validate module [m] BTF: -22")
    assert "Kernel module BTF mismatch detected" in read(guest, "a.dmesg")
    assert int(read(guest, "a.tainted")) != 0  # forced load


def test_doctor_names_the_cause_and_the_build(tc, guest) -> None:
    other, release = guest["other"], guest["release"]
    b117 = Btf.parse((tc.kernel_dir("6.12-other") / "vmlinux.btf").read_bytes(), validate=False)
    b118 = Btf.parse((tc.kernel_dir("6.12") / "vmlinux.btf").read_bytes(), validate=False)
    cause = (f"{MOD}: built against a vmlinux with {b117.type_count} types and "
             f"{b117.str_end} string bytes; this kernel has {b118.type_count}/{b118.str_end}")
    build = f"/boot/vmlinuz-{other}"
    assert release not in build
    assert rc(guest, "doctor") == 1, read(guest, "doctor.err")
    out = read(guest, "doctor.txt")
    assert f"DOES NOT FIT: {cause}" in out, out
    assert f"its build: {build} (same counts" in out, out
    assert f"fix: btfreconcilectl rescue {MODDIR}/{MOD}.ko --base {build}" in out
    # no MODULE: every loaded module without registered BTF, with the kernel's log line.
    # The file is not in modules.dep (it sits in the daemon's extra dir): still listed.
    # 6.12 logs the drop once per boot without the module's name (6.1: "failed to validate
    # module [m] BTF: -22", attributed to the module)
    log = "kernel log: Kernel module BTF mismatch detected, BTF debug info may be " \
          "unavailable for some modules (logged once per boot, naming no module)"
    assert rc(guest, "doctor-all") == 1, read(guest, "doctor-all.err")
    out = read(guest, "doctor-all.txt")
    assert f"DOES NOT FIT: {MOD}: loaded, but the kernel registered no BTF" in out, out
    assert log in out


def test_daemon_rescues_it_with_libbpfs_btf(guest, oracle_btf, tc) -> None:
    assert rc(guest, "a.wait") == 0
    rec = record(guest, "a.show.json")
    build = f"/boot/vmlinuz-{guest['other']}"
    assert rec["verdict"] == "rescued", rec
    assert rec["rescue_base"] == build
    show = read(guest, "a.show.txt")
    assert "verdict:  rescued" in show and f"build:    {build}" in show, show
    assert rc(guest, "a.path") == 0, read(guest, "a.path.err")
    ours = (guest["out"] / "a.ours.btf").read_bytes()
    assert ours == oracle_btf(tc.fixtures_dir("6.12-other") / "plain" / f"{MOD}.ko")
    # the merged file: vmlinux, then exactly the module's types
    assert rc(guest, "a.merged") == 0, read(guest, "a.merged.err")
    assert read(guest, "a.merged.txt").strip().endswith(f"/merged/{MOD}.btf")
    # bpftool 7.5 (on the host): the merged file's types from the module's first id on are
    # the published split BTF's on the guest's vmlinux, and everything before is vmlinux
    vmlinux = tc.kernel_dir("6.12") / "vmlinux.btf"
    r = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(guest["out"] / "a.ours.btf"),
                          "-B", str(vmlinux), "format", "raw"], check=True)
    ours_dump = r.stdout.splitlines()
    merged_btf = guest["out"] / "a.merged.btf"
    if not merged_btf.exists():
        merged_btf.write_bytes(zstandard.ZstdDecompressor().decompress(
            (guest["out"] / "a.merged.btf.zst").read_bytes(), max_output_size=1 << 30))
    r = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(merged_btf), "format", "raw"],
                         check=True)
    merged = r.stdout.splitlines()
    first = int(re.match(r"\[(\d+)\]", ours_dump[0]).group(1))
    assert first == Btf.parse(vmlinux.read_bytes(), validate=False).type_count
    at = next(i for i, ln in enumerate(merged) if ln.startswith(f"[{first}] "))
    assert merged[at:] == ours_dump
    r = tc.run_in_chroot(["bpftool", "btf", "dump", "file", str(vmlinux), "format", "raw"],
                         check=True)
    assert merged[:at] == r.stdout.splitlines()


def test_daemon_rescues_a_module_whose_wrong_btf_the_kernel_took(guest, oracle_btf,
                                                                tc) -> None:
    """Classic split BTF for .117 can pass .118's checks: the kernel then registers BTF whose
    types are bound to the wrong vmlinux types. The daemon sees the module was built for
    another vmlinux, says so, and publishes the right BTF (rescued)."""
    assert rc(guest, "s.insmod") == 0, read(guest, "s.insmod")
    assert read(guest, "s.kernel-btf").strip() == "yes"
    assert rc(guest, "s.wait") == 0
    rec = record(guest, "s.show.json")
    assert rec["verdict"] == "rescued", rec
    assert rec["rescue_base"] == f"/boot/vmlinuz-{guest['other']}"
    assert f"/sys/kernel/btf/{SILENT} was registered by the kernel, but the module's BTF " \
           "was made for another vmlinux" in rec["summary"]
    assert "kernel-btf-wrong-base" in [d["code"] for d in rec["diagnostics"]]
    assert rc(guest, "s.path") == 0
    assert (guest["out"] / "s.ours.btf").read_bytes() == \
        oracle_btf(tc.fixtures_dir("6.12-other") / "plain" / f"{SILENT}.ko")


def test_rescued_file_gets_the_kernels_own_btf(guest, oracle_btf, tc) -> None:
    assert rc(guest, "rescue") == 0, read(guest, "rescue.err")
    out = read(guest, "rescue.txt")
    assert f"distilled against its build /boot/vmlinuz-{guest['other']}" in out, out
    assert f"original kept as {MODDIR}/{MOD}.ko.btfr-orig" in out
    assert (guest["out"] / "b.orig.ko").read_bytes() == \
        (tc.fixtures_dir("6.12-other") / "plain" / f"{MOD}.ko").read_bytes()
    assert rc(guest, "b.rmmod") == 0 and rc(guest, "b.gone") == 0
    assert rc(guest, "b.insmod") == 0, read(guest, "b.insmod")
    kernel = (guest["out"] / "b.kernel.btf").read_bytes()  # the kernel relocated it
    assert rc(guest, "b.wait") == 0
    rec = record(guest, "b.show.json")
    assert rec["verdict"] == "ok", rec
    assert rec["cross_check"]["result"] == "match", rec.get("cross_check")
    assert (guest["out"] / "b.ours.btf").read_bytes() == kernel
    # what the kernel made of the rewritten file is what the daemon published from memory
    assert kernel == (guest["out"] / "a.ours.btf").read_bytes()
    assert kernel == oracle_btf(tc.fixtures_dir("6.12-other") / "plain" / f"{MOD}.ko")


def test_postinst_hook_warns_before_the_reboot(guest) -> None:
    other = guest["other"]
    assert read(guest, "hook.mount").strip() in ("overlay", "tmpfs")
    assert rc(guest, "hook") == 0
    warnings = [ln for ln in read(guest, "hook.err").splitlines() if "warning" in ln]
    assert len(warnings) == len(WONT_FIT), warnings
    for m in WONT_FIT:
        (line,) = [ln for ln in warnings if ln.startswith(f"btfreconciled: warning: {m} ")]
        assert f"(/lib/modules/{other}/updates/dkms/{m}.ko) will have no usable BTF on " \
               f"{other}" in line
        assert f"--base /boot/vmlinuz-{guest['release']} --in-place" in line  # built for .118
    rep = record(guest, "hook.report.json")
    assert rep["version"] == other and rep["modules"] == len(DKMS)
    assert sorted(m["module"] for m in rep["will_not_fit"]) == sorted(WONT_FIT)
    st = record(guest, "hook.status.json")
    (pre,) = st["pre_reboot"]
    assert pre["version"] == other and sorted(pre["will_not_fit"]) == sorted(WONT_FIT)
    text = read(guest, "hook.status.txt")
    assert f"next kernel {other}: {len(DKMS)} out-of-tree modules, 2 will have no usable BTF" \
        in text, text


def test_replaced_file_is_stale_until_reloaded(guest, tc, oracle_btf) -> None:
    old = build_id(tc.fixtures_dir("6.12") / "plain" / f"{EMBED}.ko")
    new = build_id(tc.fixtures_dir("6.12-other") / "plain" / f"{EMBED}.ko")
    assert old != new
    assert rc(guest, "c.insmod") == 0, read(guest, "c.insmod")
    assert rc(guest, "c.wait") == 0
    before = record(guest, "c.show.json")
    # a .118 classic build on .118: the kernel registered its BTF, and it is right; nothing
    # for us to publish (loaders use /sys/kernel/btf/<m>)
    assert before["verdict"] == "no-base", before
    assert before["build_id"] == old
    assert rc(guest, "c.path") == 1
    # replaced on disk, not reloaded
    assert rc(guest, "d.wait") == 0
    assert read(guest, "d.trigger").strip() == "watch"  # the daemon noticed by itself
    rec = record(guest, "d.show.json")
    assert rec["verdict"] == "stale-file", rec
    assert new in rec["summary"] and old in rec["summary"], rec["summary"]
    assert rec["btf"] is None
    assert "verdict:  stale-file" in read(guest, "d.show.txt")
    assert rc(guest, "d.path") == 1 and read(guest, "d.path.txt") == ""
    assert f"{EMBED}.btf" not in read(guest, "d.cache-ls.txt")
    # reloaded from the new file (built for .117): its BTF does not fit .118, so the daemon
    # rescues it against /boot/vmlinuz-<.117> (not no-base: its build is in search_dirs).
    # Whether the kernel dropped its BTF or took it by chance (then wrongly), ours is right.
    assert rc(guest, "e.rmmod") == 0
    assert rc(guest, "e.insmod") == 0, read(guest, "e.insmod")
    assert rc(guest, "e.wait") == 0
    rec = record(guest, "e.show.json")
    assert rec["verdict"] == "rescued" and rec["build_id"] == new, rec
    took = read(guest, "e.kernel-btf").strip() == "yes"
    assert took == ("kernel-btf-wrong-base" in [d["code"] for d in rec["diagnostics"]])
    assert rec["rescue_base"] == f"/boot/vmlinuz-{guest['other']}"
    assert rc(guest, "e.path") == 0
    assert (guest["out"] / "e.ours.btf").read_bytes() == \
        oracle_btf(tc.fixtures_dir("6.12-other") / "plain" / f"{EMBED}.ko")
