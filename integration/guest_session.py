"""One guest boot per kernel for the VM checks that can share it (issue 22).

Each boot of the virtme guest runs, one after the other, every guest-side part that needs
nothing but the kernel and the trixie root:

* ``kernel``: integration/guest/load_fixtures.sh -- what the kernel itself makes of every
  fixture (the .BTF.base build, then the plain one), saved under verdicts/<release>/;
  judged by test_vm_kernels.py and test_libbpf_parity.py;
* ``daemon``: integration/guest/daemon.sh -- the daemon end to end (uevents, published
  and merged BTF, real loaders, incompatible builds); judged by test_daemon_vm.py.

The kernel part runs first and removes its modules again, so the daemon part starts from
a kernel with no fixture loaded, as a boot of its own would.  Booting is 20-40 s of each
guest under TCG; a new check added to a part costs seconds.  The guest copies out the BTF it
saw (/sys/kernel/btf/*, the daemon's published and merged files) and the host dumps them
with the guest root's own bpftool (trixie's 7.5, in its chroot): a dump parses the whole
vmlinux BTF, 0.1-0.3 s natively and seconds under TCG, ~30 of them per boot.  What needs a
boot of its own says why where it boots: systemd as PID 1 (test_systemd_vm.py), a kernel
log line printed once per boot (test_popos_vm.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
from pathlib import Path

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.kinds import Kind
from btfreconciled.elf import (
    BTF_BASE_EXPECTS_SECTION,
    BTF_BASE_SECTION,
    BTF_SECTION,
    read_btf_sections,
)
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.reconcile.distill import distill

KERNEL_OUT = "/run/btfr-out"
DAEMON_OUT = "/run/btfr-daemon"
# load_fixtures.sh: ~1 min; daemon.sh: 3-6 min on 2 busy cores (every `ctl` forks a
# Python process under TCG, every loader start loads BTF)
TIMEOUT = 1500


def mutated_fixture(tc, series: str, out: Path, module: str = "btfr_embed",
                    struct: str = "work_struct") -> None:
    """`module` distilled against the running kernel's vmlinux with `struct` grown by 8
    bytes (what a module built for another kernel would carry)."""
    vml = Btf.parse((tc.kernel_dir(series) / "vmlinux.btf").read_bytes(), validate=False)
    tid = vml.find(struct, Kind.STRUCT)[0]
    t = vml.type(tid)
    vml.replace(tid, dataclasses.replace(t, size=t.size + 8))
    mutated = Btf.parse(vml.to_bytes(), validate=False)
    plain = tc.fixtures_dir(series) / "plain" / f"{module}.ko"
    src = Btf.parse(read_btf_sections(plain).btf, base=mutated, validate=False)
    res = distill(src, source=str(plain))
    write_btf_sections(plain, out, {BTF_SECTION: res.split.to_bytes(),
                                    BTF_BASE_SECTION: res.base.to_bytes(),
                                    BTF_BASE_EXPECTS_SECTION: None})


def prepare_daemon(tc, series: str, out: Path) -> None:
    """What daemon.sh expects in its OUT: the fixtures, two incompatible builds, a config."""
    mods = out / "mods"
    mods.mkdir(parents=True)
    for m in tc.FIXTURE_MODULES:
        shutil.copyfile(tc.fixtures_dir(series) / f"{m}.ko", mods / f"{m}.ko")
    mutated_fixture(tc, series, mods / "btfr_embed.mutated")
    # btfr_loader_state embeds a list_head: a grown one makes the module incompatible
    mutated_fixture(tc, series, mods / "btfr_loader.mutated", "btfr_loader", "list_head")
    (out / "btfreconciled.toml").write_text(
        f'extra_module_dirs = ["{DAEMON_OUT}/mods"]\n'
        'cache_dir = "/tmp/btfr-cache"\n'
        'log_format = "json"\n')


def boot(tc, series: str, tmp_factory) -> dict[str, dict]:
    """Boot ``series`` once and run every part; returns ``{"kernel": ..., "daemon": ...}``.
    A part that did not complete raises, naming the part and with the guest's output."""
    kout = tmp_factory.mktemp(f"vm-{series}")
    dout = tmp_factory.mktemp(f"daemon-{series}")
    prepare_daemon(tc, series, dout)
    fx = tc.fixtures_dir(series)
    mods = list(tc.FIXTURE_MODULES)
    kernel_cmd = ["integration/guest/load_fixtures.sh", KERNEL_OUT,
                  "distilled", str(fx), *mods, "--", "plain", str(fx / "plain"), *mods]
    # bpftrace (~20 s per run under TCG) only where the kernel has no module BTF of its
    # own: that is where a second loader reading the merged file proves something
    daemon_cmd = ["sh", "integration/guest/daemon.sh", DAEMON_OUT, str(tc.modread_binary()),
                  str(tc.ciliumread_binary()), "yes" if series == "6.1" else "no", *mods]
    script = f"{shlex.join(kernel_cmd)}; {shlex.join(daemon_cmd)}"
    res = tc.run_in_vm(series, script, timeout=TIMEOUT,
                       rwdirs=[f"{KERNEL_OUT}={kout}", f"{DAEMON_OUT}={dout}"])
    for part, out in (("kernel (load_fixtures.sh)", kout), ("daemon (daemon.sh)", dout)):
        if not (out / "complete").exists():
            log = (out / "daemon.log").read_text() if (out / "daemon.log").exists() else ""
            raise RuntimeError(f"{series} guest: the {part} part did not complete (guest "
                               f"status {res.returncode}):\n{res.stdout[-5000:]}\n"
                               f"{res.stderr[-5000:]}\n--- daemon.log ---\n{log[-5000:]}")
    dump_on_host(tc, series, kout, dout)
    return {"kernel": save_kernel_verdicts(tc, series, kout, res.stdout, res.stderr),
            "daemon": {"out": dout, "series": series, "release": tc.kernel_release(series)}}


def _dump(src: Path, out: Path, rc: Path | None, base: Path | None = None,
          err: Path | None = None) -> str:
    """One bpftool raw dump as a shell line: stdout (and stderr, unless ``err``) to ``out``,
    the exit status to ``rc``."""
    q = shlex.quote
    line = f"bpftool btf dump file {q(str(src))}"
    if base is not None:
        line += f" -B {q(str(base))}"
    line += f" format raw > {q(str(out))} " + (f"2> {q(str(err))}" if err else "2>&1")
    return line + (f"; echo $? > {q(str(rc))}" if rc else "")


def dump_on_host(tc, series: str, kout: Path, dout: Path) -> None:
    """The bpftool dumps of what the guest copied out, written where the guest scripts used
    to write them (the tests read the same files): what the kernel registered, the .ko as
    libbpf relocates it onto the running vmlinux, the daemon's published BTF, and each merged
    file, whose first lines must be the running vmlinux's dump and the rest the module's."""
    vml = kout / "vmlinux.btf"  # the running kernel's /sys/kernel/btf/vmlinux
    fx = tc.fixtures_dir(series)
    lines = []
    for phase, src in (("distilled", fx), ("plain", fx / "plain")):
        d = kout / phase
        for m in tc.FIXTURE_MODULES:
            if (d / f"{m}.btf").exists():
                lines.append(_dump(d / f"{m}.btf", d / f"{m}.sysfs.txt", d / f"{m}.sysfs.rc",
                                   vml))
            lines.append(_dump(src / f"{m}.ko", d / f"{m}.ko.txt", d / f"{m}.ko.rc", vml))
    for m in tc.FIXTURE_MODULES:
        if (dout / f"{m}.ours.btf").exists():
            lines.append(_dump(dout / f"{m}.ours.btf", dout / f"{m}.ours.txt",
                               dout / f"{m}.ours.rc", vml))
        if (dout / f"{m}.kernel.btf").exists():
            lines.append(_dump(dout / f"{m}.kernel.btf", dout / f"{m}.kernel.txt", None, vml))
        # the module file as it was loaded (daemon.sh later puts another build in its place)
        lines.append(_dump(fx / f"{m}.ko", dout / f"{m}.libbpf.txt", None, vml))
    merged = [n for n in (*tc.FIXTURE_MODULES, "all") if (dout / f"{n}.merged.btf").exists()]
    raw = kout / "vmlinux.raw.txt"
    lines.append(_dump(vml, raw, None))
    for n in merged:
        lines.append(_dump(dout / f"{n}.merged.btf", dout / f"{n}.merged.raw.txt",
                           dout / f"{n}.merged.dump.rc", err=dout / f"{n}.merged.dump.err"))
    res = tc.run_in_chroot("\n".join(lines), timeout=600)
    if res.returncode != 0 or not raw.exists():
        raise RuntimeError(f"{series}: bpftool in the trixie chroot failed on the guest's "
                           f"files (status {res.returncode}):\n{res.stderr[-3000:]}")
    vmlinux_lines = raw.read_text().splitlines(keepends=True)
    (dout / "vmlinux.raw.lines").write_text(f"{len(vmlinux_lines)}\n")
    for n in merged:
        dumped = dout / f"{n}.merged.raw.txt"
        got = dumped.read_text().splitlines(keepends=True)
        head_ok = got[:len(vmlinux_lines)] == vmlinux_lines
        (dout / f"{n}.merged.head.rc").write_text("0\n" if head_ok else "1\n")
        (dout / f"{n}.merged.tail.txt").write_text("".join(got[len(vmlinux_lines):]))
        dumped.unlink()
    raw.unlink()


def save_kernel_verdicts(tc, series: str, out: Path, stdout: str, stderr: str) -> dict:
    """Save what the kernel made of the fixtures under verdicts/<release>/ (summary.json and
    the kernel's own module BTF), replacing the previous verdicts as a whole."""
    mods = list(tc.FIXTURE_MODULES)
    release = tc.kernel_release(series)
    vd = tc.cache_root() / "verdicts" / release
    tmp = vd.with_name(f"{vd.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out, tmp)
    summary = {"release": release, "uname": (out / "uname").read_text().strip(),
               "modules": {}}
    for phase in ("distilled", "plain"):
        for m in mods:
            d = out / phase
            dmesg = (d / f"{m}.dmesg").read_text(errors="replace").splitlines()
            summary["modules"].setdefault(m, {})[phase] = {
                "insmod_status": int((d / f"{m}.insmod.rc").read_text()),
                "sysfs_btf": (d / f"{m}.btf").exists(),
                "sysfs_btf_size": (d / f"{m}.btf").stat().st_size if (d / f"{m}.btf").exists()
                else None,
                "bpftool_ko_status": int((d / f"{m}.ko.rc").read_text()),
                "dmesg": [ln for ln in dmesg if "BTF" in ln or "BPF" in ln or "kfunc" in ln],
            }
            if phase == "distilled" and (d / f"{m}.btf").exists():
                shutil.copyfile(d / f"{m}.btf", tmp / f"{m}.btf")
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # replace the previous verdicts as a whole (another session may be doing the same)
    old = vd.with_name(f"{vd.name}.old{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        vd.rename(old)
    try:
        tmp.rename(vd)
    except OSError:  # someone else's verdicts landed in between: ours are as new
        shutil.rmtree(vd, ignore_errors=True)
        tmp.rename(vd)
    shutil.rmtree(old, ignore_errors=True)
    return {"release": release, "verdicts": vd, "out": out, "summary": summary,
            "stdout": stdout, "stderr": stderr}


