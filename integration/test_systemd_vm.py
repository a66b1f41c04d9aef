"""btfreconciled.service under a real systemd: one `vm/run --init systemd` boot per kernel.

In each guest (systemd 257 as PID 1 over the trixie root), integration/guest/systemd_service.sh
installs the project as a user does -- `scripts/setup-and-run`, which on a systemd host runs
`scripts/install-service` -- then starts, reloads, kills and stops the unit and loads every
fixture module, recording what systemd and `btfreconcilectl` say.  setup-and-run's first
step, install-deps' pip, runs once natively in a chroot of the same root before the boots
(it is the same pip on any machine, and minutes under TCG); in the guests install-deps finds
that virtualenv holding this checkout and skips pip.  Only 6.12's boot runs the whole of
setup-and-run; 6.1's and 7.2's take its service path (install-service), since the rest of it
is the same Python on every kernel (setup-and-run 51 s against install-service 27-38 s under
TCG alone, 2-3 times that under load).  The tests here judge those
records:

* Type=notify: the unit is "activating" while the daemon runs but has not sent READY=1;
  WatchdogSec=: the watchdog timestamp advances; `systemd-analyze security` <= 2.0;
* PrivateNetwork=yes: the daemon lives in its own network namespace and still gets every
  module's uevent; 6.12 and 7.2 (they relocate .BTF.base themselves): the published BTF is
  the kernel's byte for byte; 6.1: published although the kernel rejected the module's BTF;
* DynamicUser=yes with ProtectSystem=strict: it reads every file it needs and can write
  only its cache and runtime directories;
* `systemctl reload` rescans; the journal holds nothing but JSON lines (library messages
  included); `kill -9` -> Restart=on-failure, cache reused; `systemctl stop` is clean and fast.
"""

from __future__ import annotations

import json
import re
import tarfile

import pytest
import toolchain

from btfreconciled.btf.btf import Btf

pytestmark = pytest.mark.vm

MODS = toolchain.FIXTURE_MODULES
SERIES = toolchain.SERIES
GUEST_OUT = "/run/btfr-sd"
FIXDIR = "/usr/local/lib/btfr-fixtures"
# TCG on two shared cores: every check, setup-and-run included, takes 2-4 minutes per kernel.
VM_TIMEOUT = 1200


# The kernel whose boot installs with the whole of scripts/setup-and-run; the others take its
# service path only (scripts/install-service), see the guest script.
SETUP_AND_RUN_SERIES = "6.12"
VENV_SHARE = "/run/btfr-venv"
# scripts/install-deps in a chroot of the guests' root, natively: the setup-and-run of every
# guest then finds this checkout installed and skips pip (2-8 minutes under TCG otherwise).
# /opt and /usr/local/bin are this run's own directories, so the shared root stays untouched.
NATIVE_INSTALL = r"""
set -eu
work=$1; repo=$2
mkdir -p "$work/opt" "$work/bin"
mount --bind "$work/opt" /opt
mount --bind "$work/bin" /usr/local/bin
sh "$repo/integration/guest/copy_checkout.sh" "$repo" "$work/src"
cd "$work/src"
PIP_NO_INDEX=1 PIP_FIND_LINKS="$BTFRECONCILED_CACHE_ROOT/wheels" scripts/install-deps
tar -C / -cf "$work/venv.tar" opt/btfreconciled
"""


@pytest.fixture(scope="module")
def native_install(tc, tmp_path_factory) -> dict:
    """/opt/btfreconciled made by scripts/install-deps from a copy of this checkout, in a
    chroot of the trixie root the guests boot (same Python, same paths, the same wheels)."""
    work = tmp_path_factory.mktemp("systemd-venv")
    res = tc.run_in_chroot(["sh", "-c", NATIVE_INSTALL, "sh", str(work), str(tc.REPO)])
    if res.returncode != 0 or not (work / "venv.tar").exists():
        raise RuntimeError(f"install-deps in the trixie chroot failed (status "
                           f"{res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return {"dir": work, "out": res.stdout + res.stderr}


@pytest.fixture(scope="module")
def systemd_boots(tc, tmp_path_factory, native_install):
    """``boot(series)``: the one systemd boot of ``series`` per module."""
    booted: dict[str, dict | Exception] = {}

    def boot(series: str) -> dict:
        if series not in booted:
            try:
                booted[series] = run_systemd_guest(tc, series, tmp_path_factory,
                                                   native_install["dir"])
            except Exception as e:  # every test of the kernel fails with it, none reboots
                booted[series] = e
        got = booted[series]
        if isinstance(got, Exception):
            raise RuntimeError(f"the systemd boot of {series} failed: {got}") from got
        return got
    return boot


@pytest.fixture(scope="module", params=SERIES)
def sd(request, systemd_boots) -> dict:
    """One systemd boot of kernel ``series`` running systemd_service.sh (see its header)."""
    return systemd_boots(request.param)


def run_systemd_guest(tc, series: str, tmp_path_factory, venv_dir) -> dict:
    out = tmp_path_factory.mktemp(f"systemd-{series}")
    how = "setup-and-run" if series == SETUP_AND_RUN_SERIES else "install-service"
    cmd = ["env", f"VENV_TAR={VENV_SHARE}/venv.tar", f"INSTALL={how}", "sh",
           "integration/guest/systemd_service.sh", GUEST_OUT, str(tc.fixtures_dir(series)),
           *MODS]
    extra = ["--init", "systemd", "--rodir", f"{VENV_SHARE}={venv_dir}"]
    res = tc.run_in_vm(series, cmd, timeout=VM_TIMEOUT, rwdirs=[f"{GUEST_OUT}={out}"],
                       extra_args=extra)
    if res.returncode != 0 or not (out / "complete").exists():
        logs = ""
        for name in ("install.out", "journal-boot.txt"):
            if (out / name).exists():
                logs += f"\n--- {name} ---\n{(out / name).read_text()[-4000:]}"
        raise RuntimeError(f"systemd VM run for {series} failed (status {res.returncode}):\n"
                           f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}{logs}")
    return {"out": out, "series": series, "release": tc.kernel_release(series),
            "stderr": res.stderr, "tc": tc, "install": how}


def read(sd: dict, name: str) -> str:
    return (sd["out"] / name).read_text()


def props(sd: dict, name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in read(sd, name).splitlines() if "=" in line)


def marks(sd: dict) -> dict[str, float]:
    return {k: float(v) for k, v in (ln.split() for ln in read(sd, "marks").splitlines())}


def journal(sd: dict, name: str = "journal.json") -> list[dict]:
    entries = []
    for line in read(sd, name).splitlines():
        e = json.loads(line)
        msg = e.get("MESSAGE")
        if isinstance(msg, list):  # journald's JSON gives non-UTF-8 messages as byte arrays
            e["MESSAGE"] = bytes(msg).decode("utf-8", "replace")
        entries.append(e)
    return entries


def from_pid1(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("_PID") == "1"]


def from_service(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("_PID") != "1"]


# ------------------------------------------------------------------ install and start


def test_setup_and_run_takes_the_service_path(systemd_boots) -> None:
    sd = systemd_boots(SETUP_AND_RUN_SERIES)
    assert sd["install"] == "setup-and-run"
    out = read(sd, "install.out")
    assert read(sd, "install.rc").strip() == "0", out[-3000:]
    # install-deps recognised the virtualenv the chroot made from these same files
    assert re.search(r"install-deps: /opt/btfreconciled already holds this checkout's "
                     r"btfreconciled \(source [0-9a-f]{12}\): pip skipped", out), out[-3000:]
    assert "creating the virtualenv" not in out
    assert "no systemd on this host" not in out
    # the main job on this machine's kernel, before the service: inspect of its BTF
    inspect = out.split("install-service:")[0]
    assert re.search(r"^file: +/sys/kernel/btf/vmlinux$", inspect, re.M), out[-3000:]
    assert re.search(rf"^kernel: +{re.escape(sd['release'])}$", inspect, re.M), out[-3000:]


def test_the_unit_is_installed_and_enabled(sd) -> None:
    out = read(sd, "install.out")
    assert read(sd, "install.rc").strip() == "0", out[-3000:]
    assert "install-service: installed /etc/systemd/system/btfreconciled.service" in out
    # it ends with the status of the service it started (netlink uevents, this kernel)
    assert "events:  netlink" in out and sd["release"] in out
    assert read(sd, "is-enabled").strip() == "enabled"
    unit = read(sd, "installed.service")
    assert "ExecStart=/opt/btfreconciled/bin/btfreconciled --foreground" in unit
    p = props(sd, "unit.props")
    assert p["Type"] == "notify" and p["NotifyAccess"] == "main"
    assert p["WatchdogUSec"] == "1min" and p["Restart"] == "on-failure"
    assert p["DynamicUser"] == "yes"
    assert p["FragmentPath"] == "/etc/systemd/system/btfreconciled.service"


def test_install_deps_made_the_virtualenv_natively(native_install) -> None:
    """The chroot's install-deps made /opt/btfreconciled with the system's pip and left the
    stamp that the guests' setup-and-run recognises."""
    out = native_install["out"]
    assert "install-deps: creating the virtualenv /opt/btfreconciled" in out, out[-3000:]
    assert "pip skipped" not in out
    with tarfile.open(native_install["dir"] / "venv.tar") as tar:
        names = set(tar.getnames())
    assert {"opt/btfreconciled/bin/btfreconcilectl", "opt/btfreconciled/bin/btfreconciled",
            "opt/btfreconciled/.btfreconciled-source"} <= names
    assert not any("/bin/pip" in n for n in names)  # the system's pip, not a copy inside


def test_systemd_has_no_complaint_about_the_unit(sd) -> None:
    """PID 1's warnings about the unit (unknown or deprecated settings, a missing executable,
    an unsupported sandboxing option): none, except for what the test provokes (kill -9)."""
    provoked = ("Main process exited, code=killed, status=9/KILL", "Failed with result 'signal'")
    complaints = [e["MESSAGE"] for e in journal(sd, "pid1.json")
                  if "btfreconciled" in e["MESSAGE"] and int(e.get("PRIORITY", 6)) <= 4
                  and not any(p in e["MESSAGE"] for p in provoked)]
    assert complaints == []
    assert "warning" not in read(sd, "install.out").lower()  # systemd-analyze verify


def test_active_only_after_ready(sd) -> None:
    samples = []
    for line in read(sd, "start-poll").splitlines():
        _t, _, rest = line.partition(" ")
        samples.append(dict(f.split("=", 1) for f in rest.split("|") if "=" in f))
    first_active = next(i for i, s in enumerate(samples) if s["ActiveState"] == "active")
    before = samples[:first_active]
    assert all(s["ActiveState"] == "activating" for s in before), samples
    # the daemon was running (it has a main PID) but systemd still waited for READY=1
    assert any(s["MainPID"] not in ("", "0") for s in before), samples
    # READY=1 came with STATUS=watching netlink (or a later status line of the daemon's)
    status = samples[first_active]["StatusText"]
    assert status.startswith("watching netlink") or "(netlink)" in status, status
    # ... and by then the control socket answers
    assert read(sd, "status-at-active.rc").strip() == "0", read(sd, "status-at-active.err")
    st = json.loads(read(sd, "status-at-active.json"))
    p = props(sd, "ready.props")
    start_to_ready = (int(p["ActiveEnterTimestampMonotonic"])
                      - int(p["ExecMainStartTimestampMonotonic"])) / 1e6
    assert start_to_ready >= st["index_seconds"] > 0  # READY only after indexing the kernel


def test_watchdog_timestamp_advances(sd) -> None:
    ready = props(sd, "ready.props")
    later = props(sd, "watchdog.props")
    assert later["MainPID"] == ready["MainPID"]
    t0, t1 = int(ready["WatchdogTimestampMonotonic"]), int(later["WatchdogTimestampMonotonic"])
    assert t0 > 0 and t1 > t0, (t0, t1)
    # WatchdogSec=60s: the daemon pings at half of it
    assert t1 - t0 >= 25e6, (t0, t1)


def test_systemd_analyze_security_of_the_live_unit(sd) -> None:
    text = read(sd, "security.txt")
    m = re.search(r"Overall exposure level for btfreconciled\.service: (\d+\.\d+)", text)
    assert m, text[-2000:]
    assert float(m.group(1)) <= 2.0, text


# ------------------------------------------------------------------ uevents and publishing


def test_private_network_namespace_still_gets_uevents(sd) -> None:
    assert read(sd, "netns.service").strip() != read(sd, "netns.init").strip()
    st = json.loads(read(sd, "status1.json"))
    assert st["daemon"]["events"] == "netlink"
    adds = {e["module"] for e in st["last_events"] if e["action"] == "add"
            and e["source"] == "uevent"}
    assert set(MODS) <= adds, st["last_events"]
    assert st["stats"]["overflows"] == 0
    assert st["counts"]["ok"] >= len(MODS)
    text = read(sd, "status1.txt")
    assert "events:  netlink" in text and sd["release"] in text


@pytest.mark.parametrize("mod", MODS)
def test_fixture_published_from_its_uevent(sd, mod) -> None:
    assert read(sd, f"{mod}.insmod.rc").strip() == "0", read(sd, f"{mod}.insmod")
    rec = json.loads(read(sd, f"{mod}.show.json"))
    assert rec["verdict"] == "ok" and not rec["pending"], rec
    assert rec["path"] == f"{FIXDIR}/{mod}.ko"
    show = read(sd, f"{mod}.show.txt")
    assert f"module:   {mod}" in show and "verdict:  ok" in show
    assert read(sd, f"{mod}.path.rc").strip() == "0", read(sd, f"{mod}.path.err")
    path = read(sd, f"{mod}.path.txt").strip()
    assert path == f"/var/cache/btfreconciled/{rec['kernel_id']}/modules/{mod}.btf"
    ours = (sd["out"] / f"{mod}.ours.btf").read_bytes()
    kernel = sd["out"] / f"{mod}.kernel.btf"
    if sd["series"] in toolchain.RELOCATING_SERIES:
        # the kernel relocated .BTF.base itself: ours is the kernel's, byte for byte
        assert ours == kernel.read_bytes()
        assert rec["cross_check"]["result"] == "match", rec["cross_check"]
    else:
        # 6.1 rejected the module's BTF: there is no /sys/kernel/btf/<mod>, ours is the only
        # BTF of this module, and it is split BTF on the running vmlinux
        assert not kernel.exists()
        assert "cross_check" not in rec
        vml = Btf.parse((sd["tc"].kernel_dir(sd["series"]) / "vmlinux.btf").read_bytes())
        split = Btf.parse(ours, base=vml)
        assert len(split) > 0 and split.start_id == len(vml) + 1
        assert any(split.type_name(tid).startswith(mod) for tid, _t in split), mod


# ------------------------------------------------------------------ the dynamic user


def test_dynamic_user_reads_what_it_needs_and_writes_only_its_own(sd) -> None:
    assert read(sd, "access.rc").strip() == "0", read(sd, "access.err")
    acc = json.loads(read(sd, "access.json"))
    uid, gid = (int(x) for x in read(sd, "main.ids").split())
    assert uid != 0 and acc["ids"] == {"uid": uid, "gid": gid, "groups": []}
    assert read(sd, "main.passwd").startswith("btfreconciled:x:")  # DynamicUser=, nss-systemd
    assert {p: r for p, r in acc["read"].items() if r != "ok"} == {}
    fixtures = [p for p in acc["read"] if p.startswith(f"{FIXDIR}/")]
    assert len(fixtures) == len(MODS)
    own = {"/var/cache/btfreconciled", "/run/btfreconciled"}
    assert {p: acc["write"][p] for p in own} == {p: "ok" for p in own}
    for p, r in acc["write"].items():
        if p not in own:
            assert r in ("EROFS", "EACCES", "EPERM", "ENOENT"), (p, r)
    assert acc["append"] and all(r != "ok" for r in acc["append"].values()), acc["append"]
    assert any("/parameters/" in p for p in acc["append"])  # btfr_loader's module parameter


# ------------------------------------------------------------------ reload, journal


def test_reload_rescans(sd) -> None:
    assert read(sd, "reload.rc").strip() == "0", read(sd, "reload.out")
    before = json.loads(read(sd, "before-reload.json"))
    after = json.loads(read(sd, "after-reload.json"))
    assert after["stats"]["rescans"] == before["stats"]["rescans"] + 1
    assert after["daemon"]["pid"] == before["daemon"]["pid"]
    assert any(e["action"] == "rescan" and e["source"] == "SIGHUP"
               for e in after["last_events"])
    assert "(SIGHUP)" in read(sd, "status-after-reload.txt")
    p = props(sd, "after-reload.props")
    assert (p["ActiveState"], p["SubState"]) == ("active", "running")
    msgs = [e["MESSAGE"] for e in from_pid1(journal(sd))]
    assert any(m.startswith("Reloaded btfreconciled.service") for m in msgs), msgs


def test_journal_lines_of_the_service_are_json(sd) -> None:
    entries = from_service(journal(sd))
    assert len(entries) > 20
    records = []
    for e in entries:
        assert e.get("_SYSTEMD_UNIT") == "btfreconciled.service", e
        try:
            records.append(json.loads(e["MESSAGE"]))
        except ValueError:
            pytest.fail(f"not a JSON line in the journal: {e['MESSAGE']!r}")
    assert all(isinstance(r, dict) and "event" in r and "level" in r for r in records)
    events = {r["event"] for r in records}
    assert {"ready", "rescan", "stopping", "stopped"} <= events
    # library messages (stdlib logging) are JSON too: asyncio's start-up line at debug level
    libs = {r.get("logger") for r in records} - {None}
    assert "asyncio" in libs, libs
    assert not [r for r in records if "internal error" in r["event"]]


# ------------------------------------------------------------------ kill -9, stop


def test_kill_9_restarts_and_reuses_the_cache(sd) -> None:
    p = props(sd, "after-kill.props")
    assert p["NRestarts"] == "1" and p["ActiveState"] == "active", p
    assert p["MainPID"] != read(sd, "killed.pid").strip()
    st = json.loads(read(sd, "after-restart.json"))
    assert st["daemon"]["pid"] == int(p["MainPID"])
    assert st["counts"]["ok"] >= len(MODS)
    assert st["stats"]["reconciled"] == 0, st["stats"]  # nothing recomputed ...
    assert st["stats"]["reused"] >= len(MODS), st["stats"]  # ... the published files reused
    # the same files (inode, mtime): not rewritten
    before = read(sd, "cache-before-kill").split("\n")
    assert before == read(sd, "cache-after-restart").split("\n")
    assert sum(f"/{m}.btf " in line for line in before for m in MODS) == len(MODS)
    msgs = [e["MESSAGE"] for e in from_pid1(journal(sd))]
    assert any("Main process exited, code=killed, status=9/KILL" in m for m in msgs)
    assert any("Scheduled restart job, restart counter is at 1" in m for m in msgs)


def _stop_seconds(sd: dict) -> list[float]:
    """How long systemd took from "Stopping" to "Stopped" for each stop (journal clock)."""
    out, t0 = [], None
    for e in from_pid1(journal(sd)):
        if e["MESSAGE"].startswith("Stopping btfreconciled.service"):
            t0 = int(e["__MONOTONIC_TIMESTAMP"])
        elif e["MESSAGE"].startswith("Stopped btfreconciled.service") and t0 is not None:
            out.append((int(e["__MONOTONIC_TIMESTAMP"]) - t0) / 1e6)
            t0 = None
    return out


def test_stop_is_clean_and_within_a_second(sd) -> None:
    p = props(sd, "stop2.props")
    # exited by itself (CLD_EXITED = 1) with status 0: not killed after a stop timeout
    assert (p["Result"], p["ExecMainCode"], p["ExecMainStatus"]) == ("success", "1", "0"), p
    assert p["ActiveState"] == "inactive"
    assert read(sd, "socket-after-stop").strip() == "gone"
    msgs = [e["MESSAGE"] for e in from_pid1(journal(sd))]
    assert not [m for m in msgs if "timed out" in m or "Killing process" in m], msgs
    stops = _stop_seconds(sd)
    assert len(stops) == 2, msgs  # after install-service, and the final one
    assert max(stops) < 1.0, stops
    for name in ("stop1.times", "stop2.times"):  # `systemctl stop` itself, as a user waits
        t0, t1 = (float(x) for x in read(sd, name).split())
        assert t1 - t0 < 3.0, (name, t1 - t0)


def test_boot_and_start_fit_the_ci_budget(sd, request) -> None:
    """Prints the measured numbers with the test run (and into verdicts/<release>/), and
    fails when the systemd boot or the daemon's start-up drift far from them."""
    m = marks(sd)
    p = props(sd, "ready.props")
    boot = re.search(r"multi-user\.target reached (\d+\.\d+) s", sd["stderr"])
    assert boot, sd["stderr"][-2000:]
    start_to_ready = (int(p["ActiveEnterTimestampMonotonic"])
                      - int(p["ExecMainStartTimestampMonotonic"])) / 1e6
    line = (f"systemd VM {sd['release']}: multi-user.target {boot.group(1)} s after kernel "
            f"start; {sd['install']} {m['install-end'] - m['install-start']:.0f} s; "
            f"daemon start -> READY=1 {start_to_ready:.1f} s; "
            f"stops {', '.join(f'{s:.2f}' for s in _stop_seconds(sd))} s; "
            f"whole guest script {m['end'] - m['begin']:.0f} s")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    out = sd["tc"].verdicts_dir(sd["series"]) / "systemd-vm.txt"
    out.write_text(line + "\n")
    # measured on 2 busy cores under TCG: 13-63 s, 10-18 s, 3-6 min (see systemd/README.md)
    assert float(boot.group(1)) < 120 and start_to_ready < 60
    assert m["end"] - m["begin"] < 900
