"""btfreconciled end to end in the 6.12 and 6.1 VMs (one boot per kernel).

In each guest: the daemon starts in a private network namespace (as the systemd unit's
PrivateNetwork=yes runs it: kernel uevents still arrive), every fixture is insmod'ed, and
`btfreconcilectl status/list/show/path` must report it from the uevent alone.  The published
`.btf` is loaded by bpftool 7.5 with `-B /sys/kernel/btf/vmlinux`:

* 6.12 relocates `.BTF.base` itself: our BTF must dump exactly like `/sys/kernel/btf/<mod>`,
  and the daemon's own cross-check must say so;
* 6.1 cannot (it rejects the module's BTF): the daemon still publishes BTF that bpftool
  loads and that equals libbpf's relocation of the `.ko`.

Then `btfr_embed` is replaced by a build distilled against a mutated vmlinux (struct
work_struct grown by 8 bytes) and reloaded: the daemon must report it incompatible, with the
diagnostic, and publish no `.btf`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import toolchain

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.kinds import Kind
from btfreconciled.elf import (
    BTF_BASE_EXPECTS_SECTION,
    BTF_BASE_SECTION,
    BTF_SECTION,
    read_btf_sections,
    write_btf_sections,
)
from btfreconciled.reconcile.distill import distill

pytestmark = pytest.mark.vm

MODS = toolchain.FIXTURE_MODULES
GUEST_OUT = "/run/btfr-daemon"

GUEST_SCRIPT = r"""
set -u
O=__OUT__
ctl() { python3 -c 'import sys; from btfreconciled.cli.main import main; sys.exit(main())' "$@"; }
log() { echo "guest: $*" >&2; }
uname -r > $O/uname
# The daemon as the unit runs it: own network namespace, JSON logs, no TTY.
unshare -n python3 -m btfreconciled.daemon.main --foreground --config $O/btfreconciled.toml \
    > $O/daemon.stdout 2> $O/daemon.log &
DPID=$!
i=0
until ctl status > $O/status0.txt 2> $O/status0.err; do
    i=$((i + 1)); [ $i -gt 600 ] && { log "daemon did not come up"; cat $O/daemon.log >&2; exit 3; }
    kill -0 $DPID 2>/dev/null || { log "daemon died"; cat $O/daemon.log >&2; exit 3; }
    sleep 0.1
done
ctl status --json > $O/status0.json
# wait until a module's verdict is published (the uevent is the only trigger)
SETTLED='import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r["pending"])'
wait_verdict() {  # MODULE OUTFILE
    i=0
    until ctl show --json "$1" > "$2" 2>/dev/null && python3 -c "$SETTLED" "$2"; do
        i=$((i + 1)); [ $i -gt 600 ] && { log "no verdict for $1"; return 1; }
        sleep 0.05
    done
}
for m in __MODS__; do
    insmod $O/mods/$m.ko > $O/$m.insmod 2>&1; echo $? > $O/$m.insmod.rc
    wait_verdict $m $O/$m.show.json; echo $? > $O/$m.wait.rc
    ctl show $m > $O/$m.show.txt 2>&1
    ctl path $m > $O/$m.path.txt 2> $O/$m.path.err; echo $? > $O/$m.path.rc
    p=$(cat $O/$m.path.txt)
    if [ -n "$p" ] && [ -f "$p" ]; then
        cp "$p" $O/$m.ours.btf
        bpftool btf dump file "$p" -B /sys/kernel/btf/vmlinux format raw > $O/$m.ours.txt 2>&1
        echo $? > $O/$m.ours.rc
    fi
    if [ -e /sys/kernel/btf/$m ]; then
        cp /sys/kernel/btf/$m $O/$m.kernel.btf
        bpftool btf dump file /sys/kernel/btf/$m -B /sys/kernel/btf/vmlinux format raw \
            > $O/$m.kernel.txt 2>&1
    fi
    bpftool btf dump file $O/mods/$m.ko -B /sys/kernel/btf/vmlinux format raw \
        > $O/$m.libbpf.txt 2>&1
done
ctl status > $O/status1.txt 2>&1
ctl status --json > $O/status1.json 2>&1
ctl list > $O/list.txt 2>&1
ctl list --json > $O/list.json 2>&1
# the incompatible build replaces btfr_embed on disk, then is loaded instead
rmmod btfr_embed; echo $? > $O/rmmod.rc
i=0
until ! ctl show btfr_embed > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.05
done
ctl show btfr_embed > $O/after_rmmod.txt 2>&1; echo $? > $O/after_rmmod.rc
cp $O/mods/btfr_embed.mutated $O/mods/btfr_embed.ko
insmod $O/mods/btfr_embed.ko > $O/bad.insmod 2>&1; echo $? > $O/bad.insmod.rc
wait_verdict btfr_embed $O/bad.show.json; echo $? > $O/bad.wait.rc
ctl show btfr_embed > $O/bad.show.txt 2>&1
ctl path btfr_embed > $O/bad.path.txt 2> $O/bad.path.err; echo $? > $O/bad.path.rc
ls -la /tmp/btfr-cache/current/modules/ > $O/bad.cache-ls.txt 2>&1
[ -e /sys/kernel/btf/btfr_embed ] && echo yes > $O/bad.kernel-btf || echo no > $O/bad.kernel-btf
dmesg | tail -n 30 > $O/dmesg.tail
# clean stop: SIGTERM, socket removed
kill -TERM $DPID; wait $DPID; echo $? > $O/daemon.rc
S=/run/btfreconciled/control.sock
[ -e $S ] && echo present > $O/socket-after-stop || echo gone > $O/socket-after-stop
ctl status > /dev/null 2> $O/status-stopped.err; echo $? > $O/status-stopped.rc
cp -r /tmp/btfr-cache $O/cache
echo done > $O/complete
"""


def mutated_fixture(tc, series: str, out: Path) -> None:
    """btfr_embed distilled against the running kernel's vmlinux with struct work_struct
    grown by 8 bytes (what a module built for another kernel would carry)."""
    vml = Btf.parse((tc.kernel_dir(series) / "vmlinux.btf").read_bytes(), validate=False)
    tid = vml.find("work_struct", Kind.STRUCT)[0]
    t = vml.type(tid)
    vml.replace(tid, dataclasses.replace(t, size=t.size + 8))
    mutated = Btf.parse(vml.to_bytes(), validate=False)
    plain = tc.fixtures_dir(series) / "plain" / "btfr_embed.ko"
    src = Btf.parse(read_btf_sections(plain).btf, base=mutated, validate=False)
    res = distill(src, source=str(plain))
    write_btf_sections(plain, out, {BTF_SECTION: res.split.to_bytes(),
                                    BTF_BASE_SECTION: res.base.to_bytes(),
                                    BTF_BASE_EXPECTS_SECTION: None})


def run_guest(tc, series: str, out: Path) -> dict:
    mods = out / "mods"
    mods.mkdir(parents=True)
    for m in MODS:
        shutil.copyfile(tc.fixtures_dir(series) / f"{m}.ko", mods / f"{m}.ko")
    mutated_fixture(tc, series, mods / "btfr_embed.mutated")
    (out / "btfreconciled.toml").write_text(
        f'extra_module_dirs = ["{GUEST_OUT}/mods"]\n'
        'cache_dir = "/tmp/btfr-cache"\n'
        'log_format = "json"\n')
    (out / "guest.sh").write_text(GUEST_SCRIPT.replace("__OUT__", GUEST_OUT)
                                  .replace("__MODS__", " ".join(MODS)))
    res = tc.run_in_vm(series, f"sh {GUEST_OUT}/guest.sh", timeout=600,
                       rwdirs=[f"{GUEST_OUT}={out}"])
    if res.returncode != 0 or not (out / "complete").exists():
        log = (out / "daemon.log").read_text() if (out / "daemon.log").exists() else ""
        raise RuntimeError(f"daemon VM run for {series} failed (status {res.returncode}):\n"
                           f"{res.stdout}\n{res.stderr}\n--- daemon.log ---\n{log[-5000:]}")
    return {"out": out, "series": series, "release": tc.kernel_release(series)}


@pytest.fixture(scope="session")
def guest_612(tc, tmp_path_factory) -> dict:
    return run_guest(tc, "6.12", tmp_path_factory.mktemp("daemon-6.12"))


@pytest.fixture(scope="session")
def guest_61(tc, tmp_path_factory) -> dict:
    return run_guest(tc, "6.1", tmp_path_factory.mktemp("daemon-6.1"))


def read(out: Path, name: str) -> str:
    return (out / name).read_text()


def common_checks(g: dict) -> None:
    out = g["out"]
    assert read(out, "uname").strip() == g["release"]
    st = json.loads(read(out, "status0.json"))
    assert st["daemon"]["events"] == "netlink", st["daemon"]
    assert st["kernel"]["release"] == g["release"]
    status = read(out, "status0.txt")
    assert "events:  netlink" in status and g["release"] in status
    # the daemon's log is JSON (no TTY) and records no internal error
    for line in read(out, "daemon.log").splitlines():
        rec = json.loads(line)
        assert "internal error" not in rec["event"], rec
    assert read(out, "daemon.rc").strip() == "0"
    assert read(out, "socket-after-stop").strip() == "gone"
    assert read(out, "status-stopped.rc").strip() == "2"
    assert "btfreconciled is not running" in read(out, "status-stopped.err")


def check_fixture_published(g: dict, m: str) -> dict:
    out = g["out"]
    assert read(out, f"{m}.insmod.rc").strip() == "0", read(out, f"{m}.insmod")
    assert read(out, f"{m}.wait.rc").strip() == "0", f"no verdict for {m} after insmod"
    rec = json.loads(read(out, f"{m}.show.json"))
    assert rec["verdict"] == "ok", rec
    assert rec["path"] == f"{GUEST_OUT}/mods/{m}.ko"
    show = read(out, f"{m}.show.txt")
    assert f"module:   {m}" in show and "verdict:  ok" in show
    assert read(out, f"{m}.path.rc").strip() == "0"
    path = read(out, f"{m}.path.txt").strip()
    assert path == f"/tmp/btfr-cache/{rec['kernel_id']}/modules/{m}.btf"
    assert read(out, f"{m}.ours.rc").strip() == "0", read(out, f"{m}.ours.txt")
    # bpftool (libbpf 1.5) parses our file as split BTF on the running vmlinux and gets the
    # same types it gets by relocating the .ko itself
    ours = read(out, f"{m}.ours.txt")
    assert ours.startswith("[") and ours == read(out, f"{m}.libbpf.txt")
    # event -> publish latency inside a TCG guest, as the daemon measured it
    assert rec["timings"]["event_to_write"] < 30
    return rec


def check_list_and_status(g: dict) -> None:
    out = g["out"]
    listed = {m["module"]: m["verdict"] for m in json.loads(read(out, "list.json"))}
    for m in MODS:
        assert listed[m] == "ok"
    text = read(out, "list.txt")
    for m in MODS:
        assert any(ln.split()[:2] == [m, "ok"] for ln in text.splitlines()), text
    st = json.loads(read(out, "status1.json"))
    assert st["counts"]["ok"] >= len(MODS)
    adds = {e["module"] for e in st["last_events"] if e["action"] == "add"}
    assert set(MODS) <= adds  # seen as uevents, not found by a rescan
    assert st["stats"]["overflows"] == 0
    assert st["latency"]["n"] >= len(MODS)  # event -> published, measured by the daemon


def check_mutated(g: dict) -> None:
    out = g["out"]
    assert read(out, "rmmod.rc").strip() == "0"
    assert read(out, "after_rmmod.rc").strip() == "2"  # unloaded -> forgotten
    assert "is not loaded" in read(out, "after_rmmod.txt")
    assert read(out, "bad.insmod.rc").strip() == "0", read(out, "bad.insmod")
    assert read(out, "bad.wait.rc").strip() == "0"
    rec = json.loads(read(out, "bad.show.json"))
    assert rec["verdict"] == "incompatible", rec
    assert "work_struct" in rec["summary"] and "40" in rec["summary"]
    assert rec["diagnostics"], rec
    assert "work_struct" in json.dumps(rec["diagnostics"])
    assert rec["btf"] is None
    show = read(out, "bad.show.txt")
    assert "verdict:  incompatible" in show and "diagnostics:" in show
    assert "btf:      none" in show
    assert read(out, "bad.path.rc").strip() == "1"
    assert read(out, "bad.path.txt") == ""
    assert "btfr_embed: no reconciled BTF (incompatible" in read(out, "bad.path.err")
    listing = read(out, "bad.cache-ls.txt")
    assert "btfr_embed.json" in listing and "btfr_embed.btf" not in listing
    kid = rec["kernel_id"]
    cache = out / "cache" / kid / "modules"
    assert not (cache / "btfr_embed.btf").exists()
    assert json.loads((cache / "btfr_embed.json").read_text())["verdict"] == "incompatible"
    manifest = json.loads((out / "cache" / kid / "manifest.json").read_text())
    assert manifest["modules"]["btfr_embed"]["verdict"] == "incompatible"


# ------------------------------------------------------------------ 6.12


def test_612_daemon_runs_and_stops_cleanly(guest_612) -> None:
    common_checks(guest_612)
    check_list_and_status(guest_612)


@pytest.mark.parametrize("mod", MODS)
def test_612_published_btf_equals_the_kernels(guest_612, mod) -> None:
    out = guest_612["out"]
    rec = check_fixture_published(guest_612, mod)
    # the kernel relocated .BTF.base too: same types, and the daemon's cross-check agrees
    assert read(out, f"{mod}.ours.txt") == read(out, f"{mod}.kernel.txt")
    assert rec["cross_check"]["result"] == "match", rec["cross_check"]
    assert (out / f"{mod}.ours.btf").read_bytes() == (out / f"{mod}.kernel.btf").read_bytes()


def test_612_mutated_fixture_is_incompatible_without_btf(guest_612) -> None:
    check_mutated(guest_612)
    # the kernel could not relocate it either
    assert read(guest_612["out"], "bad.kernel-btf").strip() == "no"


# ------------------------------------------------------------------ 6.1


def test_61_daemon_runs_and_stops_cleanly(guest_61) -> None:
    common_checks(guest_61)
    check_list_and_status(guest_61)


@pytest.mark.parametrize("mod", MODS)
def test_61_daemon_supplies_btf_the_kernel_cannot(guest_61, mod) -> None:
    out = guest_61["out"]
    rec = check_fixture_published(guest_61, mod)
    assert not (out / f"{mod}.kernel.btf").exists(), "6.1 was expected to reject .BTF.base"
    assert "cross_check" not in rec  # 6.1 does not relocate in-kernel: nothing to compare


def test_61_mutated_fixture_is_incompatible_without_btf(guest_61) -> None:
    check_mutated(guest_61)
