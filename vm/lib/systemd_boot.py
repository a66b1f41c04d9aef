"""`vm/run --init systemd`: boot the trixie root with systemd as PID 1 under QEMU/TCG.

virtme-ng's own `--systemd` runs its init (and the command) from a serial getty, keeps the
root read-only under systemd and skips its --rwdir mounts, so this drives QEMU directly with
the same 9p root: a small initramfs (vm/lib/systemd-guest/init) loads the 9p/virtio/overlay
modules of the kernel under test, overlays a tmpfs on the read-only 9p root (the other VMs
keep booting the same directory), mounts the shares and starts systemd.  The command runs in
btfr-run.service after multi-user.target; it writes its status into a host directory (the
control share) and powers the guest off.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import lzma
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TextIO

GUEST_DIR = Path(__file__).resolve().parent / "systemd-guest"
# What the initramfs needs to mount a 9p root under an overlay.  Built-in ones (6.12 has
# virtio_pci built in, 6.1 does not) are skipped; dependencies come from modules.dep.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# Units a test VM does not need and whose start costs seconds under TCG: no getty (the
# console is a log, nobody logs in).
MASKED_UNITS = ("getty.target",)
CTL = "/run/btfr-ctl"
GUEST_PYCACHE = "/run/btfr-pycache"  # PYTHONPYCACHEPREFIX in the guest, as vm/run sets it


class RunnerError(Exception):
    """The runner failed (vm/run exits 125 with this one-line message)."""


# ------------------------------------------------------------------ initramfs


def _modules_dep(moddir: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        key, _, rest = line.partition(":")
        deps[key] = rest.split()
    return deps


def _modname(path: str) -> str:
    name = Path(path).name
    for ext in (".xz", ".gz", ".zst"):
        name = name.removesuffix(ext)
    return name.removesuffix(".ko").replace("-", "_")


def module_load_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """modules.dep paths of ``wanted`` and their dependencies, each after its dependencies;
    modules built into the kernel are left out, an unknown one is an error."""
    deps = _modules_dep(moddir)
    by_name = {_modname(p): p for p in deps}
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.is_file():
        builtin = {_modname(p) for p in bfile.read_text().split()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in deps.get(path, []):
            visit(d)
        order.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise RunnerError(f"module {name} is neither built into the kernel nor in "
                              f"{moddir}/modules.dep")
        visit(by_name[name])
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise RunnerError(f"{path}: zstd-compressed module and no zstandard module on "
                              "the host") from None
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class _Cpio:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
             nlink: int = 1) -> None:
        nb = name.encode() + b"\0"
        hdr = ("070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)))
        self.ino += 1
        rec = hdr.encode() + nb
        rec += b"\0" * (-len(rec) % 4)
        rec += data + b"\0" * (-len(data) % 4)
        self.parts.append(rec)

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def bytes(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return b"".join(self.parts)


def build_initramfs(kdir: Path, release: str, rootfs: Path, cache: Path) -> Path:
    """The initramfs for ``release`` (cached under cache/initramfs/, keyed by its inputs)."""
    moddir = kdir / "lib" / "modules" / release
    if not (moddir / "modules.dep").is_file():
        raise RunnerError(f"{moddir}/modules.dep is missing (run vm/setup)")
    busybox = rootfs / "usr" / "bin" / "busybox"
    if not busybox.is_file():
        raise RunnerError(f"{busybox} is missing (run vm/setup: busybox-static)")
    order = module_load_order(moddir, INITRAMFS_MODULES)
    inputs = [GUEST_DIR / "init", GUEST_DIR / "btfr-run.service", Path(__file__)]
    h = hashlib.sha256()
    for f in inputs:
        h.update(f.read_bytes())
    st = busybox.stat()
    h.update(f"{release} {' '.join(order)} {st.st_size} {st.st_mtime_ns}".encode())
    out = cache / "initramfs" / f"{release}-{h.hexdigest()[:16]}.cpio"
    if out.is_file():
        return out
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.file("init", (GUEST_DIR / "init").read_bytes(), 0o755)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.file("btfr-run.service", (GUEST_DIR / "btfr-run.service").read_bytes())
    names = []
    for rel in order:
        name = _modname(rel)
        names.append(name)
        c.file(f"modules/{name}.ko", _read_module(moddir / rel))
    c.file("modules/order", ("\n".join(names) + "\n").encode())
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f"{release}-*.cpio"):
        old.unlink(missing_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(c.bytes())
    tmp.rename(out)
    return out


# ------------------------------------------------------------------ the run


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class _Follower(threading.Thread):
    """Copies what the guest appends to stdout/stderr files in the control share to ours."""

    def __init__(self, pairs: list[tuple[Path, TextIO]]) -> None:
        super().__init__(daemon=True)
        self.pairs = pairs
        self.offsets = [0] * len(pairs)
        self.done = threading.Event()

    def pump(self) -> None:
        for i, (path, stream) in enumerate(self.pairs):
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[i])
                    data = f.read()
            except FileNotFoundError:
                continue
            if data:
                self.offsets[i] += len(data)
                buf = stream.buffer
                buf.write(data)
                buf.flush()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.pump()
        self.pump()


Die = Callable[[str, int], NoReturn]
KillGroup = Callable[[subprocess.Popen], None]


def run(args: argparse.Namespace, kdir: Path, release: str, *, repo: Path, cache: Path,
        rootfs: Path, die: Die, kill_group: KillGroup, timed_out: int,
        runner_failed: int, attempts: int) -> int:
    if not (rootfs / "sbin" / "init").exists() or not (rootfs / "usr/bin/dbus-daemon").exists():
        die(f"systemd (systemd-sysv, dbus) is not installed in {rootfs} (run vm/setup)",
            runner_failed)
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        die("qemu-system-x86_64 not found on the host (vm/setup installs qemu-system-x86)",
            runner_failed)
    try:
        initrd = build_initramfs(kdir, release, rootfs, cache)
    except (RunnerError, OSError) as e:
        die(f"cannot build the systemd initramfs for {release}: {e}", runner_failed)

    # A guest that dies before the command started (under TCG a guest kernel has been seen
    # to oops in its timer code 1.7 s into the boot) did nothing yet: it is booted again,
    # within the same timeout, as vm/run does for virtme-ng.  One that died later never is.
    deadline = time.monotonic() + args.timeout
    for attempt in range(1, attempts + 1):
        ctl = Path(tempfile.mkdtemp(prefix="btfr-vmrun-systemd-"))
        try:
            return _boot(args, kdir, release, repo, cache, rootfs, qemu, initrd, ctl, die,
                         kill_group, timed_out, runner_failed)
        except _NotStarted as e:
            left = deadline - time.monotonic()
            if attempt == attempts or left < 30:
                times = "once" if attempt == 1 else f"{attempt} times"
                die(f"the guest died before the command started, {times} (last: {e}); rerun "
                    "with --verbose to see the boot console", runner_failed)
            print(f"vm/run: the guest died before the command started ({e}); booting again "
                  f"(attempt {attempt + 1} of {attempts})", file=sys.stderr, flush=True)
            args.timeout = left
        finally:
            shutil.rmtree(ctl, ignore_errors=True)
    raise AssertionError("unreachable")


class _NotStarted(Exception):
    """The guest ended before the command started; the message says how."""


def _boot(args: argparse.Namespace, kdir: Path, release: str, repo: Path, cache: Path,
          rootfs: Path, qemu: str, initrd: Path, ctl: Path, die: Die, kill_group: KillGroup,
          timed_out: int, runner_failed: int) -> int:
    # Shares: the root (read-only, under the guest's tmpfs overlay), the control directory,
    # the checkout and the cache root read-only at their host paths, then --rodir/--rwdir.
    shares: list[tuple[str, str, str, str]] = []  # tag, host path, guest path, ro|rw
    shares.append(("btfr.repo", str(repo), str(repo), "ro"))
    shares.append(("btfr.cache", str(cache), str(cache), "ro"))
    # byte code of the read-only checkout, kept between boots (see vm/run)
    pycache = cache / "guest-pycache"
    pycache.mkdir(parents=True, exist_ok=True)
    shares.append(("btfr.pyc", str(pycache), GUEST_PYCACHE, "rw"))
    for kind, specs in (("ro", args.rodir), ("rw", args.rwdir)):
        for spec in specs:
            guest, sep, host = spec.partition("=")
            if not sep:
                host = guest
            if not guest.startswith("/") or not Path(host).is_dir():
                die(f"--{kind}dir {spec}: want GUEST=HOST with an absolute guest path and an "
                    "existing host directory", runner_failed)
            shares.append((f"btfr.m{len(shares)}", str(Path(host).resolve()), guest, kind))
    (ctl / "mounts").write_text("".join(f"{t} {m} {g}\n" for t, _h, g, m in shares))

    user_cmd = shlex.join(args.command) if len(args.command) > 1 else args.command[0]
    verbose_extra = (f"systemd-analyze blame > {CTL}/blame 2>&1\n"
                     f"systemd-analyze critical-chain > {CTL}/critical-chain 2>&1\n"
                     if args.verbose else "")
    (ctl / "run.sh").write_text(
        "# written by vm/run --init systemd; run by btfr-run.service\n"
        f"exec > {CTL}/stdout 2> {CTL}/stderr < /dev/null\n"
        # waits for the boot transaction (this unit's own start job included) to finish
        f"systemctl is-system-running --wait > {CTL}/system-state 2>&1\n"
        f"systemctl show -P ActiveEnterTimestampMonotonic multi-user.target > {CTL}/mu-usec\n"
        f"systemctl list-units --failed --no-legend --plain > {CTL}/failed-units 2>&1\n"
        f"{verbose_extra}"
        f"cut -d' ' -f1 /proc/uptime > {CTL}/started\n"
        f"cd {shlex.quote(str(repo))} 2>/dev/null || cd /\n"
        f"export PYTHONPATH={shlex.quote(str(repo))} PYTHONPYCACHEPREFIX={GUEST_PYCACHE} "
        f"BTFRECONCILED_CACHE_ROOT={shlex.quote(str(cache))} HOME=/root\n"
        f"( {user_cmd}\n)\n"
        f"echo $? > {CTL}/rc.tmp && mv {CTL}/rc.tmp {CTL}/rc\n"
        # the guest's state is a tmpfs overlay: nothing to save, no need for a clean shutdown
        "sync\n"
        "systemctl poweroff --force --force > /dev/null 2>&1\n")

    console = ctl / "console.log"
    append = ["console=ttyS0", "rdinit=/init", "panic=-1", "audit=0",
              *(f"systemd.mask={u}" for u in MASKED_UNITS)]
    if not args.verbose:
        append += ["quiet", "loglevel=3", "systemd.show_status=error"]
    cmd = [qemu, "-name", "btfr-systemd", "-machine", "q35", "-cpu", "max",
           "-smp", str(args.cpus), "-m", args.memory, "-nodefaults", "-no-user-config",
           "-display", "none", "-vga", "none", "-no-reboot",
           "-kernel", str(kdir / "vmlinuz"), "-initrd", str(initrd),
           "-append", " ".join(append)]
    if args.verbose:
        cmd += ["-chardev", "file,id=con,path=/proc/self/fd/2", "-serial", "chardev:con"]
    else:
        cmd += ["-serial", f"file:{console}"]
    all_shares = [("btfr.root", str(rootfs), "/", "ro"), ("btfr.ctl", str(ctl), CTL, "rw"),
                  *shares]
    for i, (tag, host, _guest, mode) in enumerate(all_shares):
        ro = ",readonly=on" if mode == "ro" else ""
        cmd += ["-fsdev", f"local,id=fs{i},path={host},security_model=none,multidevs=remap{ro}",
                "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={tag}"]
    cmd += shlex.split(os.environ.get("BTFR_VM_QEMU_OPTS", "-accel tcg,thread=multi,tb-size=256"))

    follower = _Follower([(ctl / "stdout", sys.stdout), (ctl / "stderr", sys.stderr)])
    t0 = time.monotonic()
    print(f"vm/run: booting {release} with systemd as init (TCG, timeout {args.timeout:.0f} s)",
          file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)

    def on_signal(signum: int, _frame: object) -> None:  # QEMU is in its own session
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    follower.start()
    started_at: float | None = None
    rc_seen_at: float | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if started_at is None and (ctl / "started").exists():
                started_at = now
            if rc_seen_at is None and (ctl / "rc").exists():
                rc_seen_at = now
            # poweroff --force --force is immediate; a guest that keeps running after its
            # status is written is stuck in shutdown: the status is what counts.
            if rc_seen_at is not None and now - rc_seen_at > 20:
                kill_group(proc)
                break
            if now - t0 > args.timeout:
                kill_group(proc)
                follower.done.set()
                follower.join()
                die(f"guest did not finish within {args.timeout:.0f} s; QEMU killed", timed_out)
            time.sleep(0.2)
    except KeyboardInterrupt:
        kill_group(proc)
        die("interrupted (signal); QEMU killed", 130)
    finally:
        follower.done.set()
        follower.join()
    elapsed = time.monotonic() - t0
    if started_at is None and (ctl / "started").exists():
        started_at = elapsed + t0
    rc_text = (ctl / "rc").read_text().strip() if (ctl / "rc").exists() else ""
    boot = _boot_report(ctl, started_at - t0 if started_at is not None else None)
    if boot:
        print(f"vm/run: {boot}", file=sys.stderr, flush=True)
    if args.verbose:
        for name in ("failed-units", "blame", "critical-chain"):
            text = _tail(ctl / name, 60)
            if text:
                print(f"vm/run: --- {name} ---\n{text}", file=sys.stderr, flush=True)
    if not rc_text:
        why = _tail(ctl / "init-error", 1) or (
            f"QEMU exit status {proc.returncode}, {elapsed:.1f} s")
        tail = "" if args.verbose else _tail(console, 25)
        if tail:
            print(f"vm/run: --- last console lines ---\n{tail}", file=sys.stderr, flush=True)
        if started_at is None and not (ctl / "init-error").exists():
            panic = [ln for ln in tail.splitlines() if "Kernel panic" in ln]
            raise _NotStarted(why + (f": {panic[-1].split('] ', 1)[-1]}" if panic else ""))
        die(f"the guest command did not run to completion under systemd ({why}); rerun with "
            "--verbose to see the boot console", runner_failed)
    rc = int(rc_text)
    print(f"vm/run: guest command exited with status {rc} after {elapsed:.1f} s",
          file=sys.stderr, flush=True)
    return rc


def _boot_report(ctl: Path, host_started: float | None) -> str:
    """One line: when multi-user.target was reached (guest clock, from kernel start) and when
    the command started (host clock, from QEMU start)."""
    parts = []
    try:
        usec = int((ctl / "mu-usec").read_text().strip() or 0)
    except (OSError, ValueError):
        usec = 0
    if usec:
        parts.append(f"multi-user.target reached {usec / 1e6:.1f} s after kernel start")
    state = _tail(ctl / "system-state", 1).strip()
    if state:
        parts.append(f"system {state}")
    if host_started is not None:
        parts.append(f"command started {host_started:.1f} s after QEMU start")
    failed = [ln.split()[0] for ln in _tail(ctl / "failed-units", 50).splitlines() if ln.strip()]
    if failed:
        parts.append("failed units: " + " ".join(failed))
    return "; ".join(parts)
