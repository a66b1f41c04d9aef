"""Access to the real-kernel toolchain built by ``vm/setup`` (for integration tests).

Everything lives under the cache root (``$BTFRECONCILED_CACHE_ROOT`` or
``~/.cache/btfreconciled``); see vm/README.md for the layout.  Tests never skip
because the toolchain is missing: :func:`require_toolchain` builds it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VM_DIR = REPO / "vm"
# Kernels with a systemd VM boot (test_systemd_vm.py).
SERIES = ("6.12", "6.1", "7.2")
# Kernels that relocate a module's .BTF.base themselves (Linux >= 6.11): /sys/kernel/btf/<m>
# must equal ours.  Each gets one fixture-loading boot and one daemon boot per session.
RELOCATING_SERIES = ("6.12", "7.2")
FIXTURE_MODULES = ("btfr_embed", "btfr_ptr", "btfr_types", "btfr_kfunc", "btfr_loader")

# Inputs whose hash vm/setup records in stamps/setup.done (keep in sync with vm/setup).
_SETUP_INPUTS = ("integration/modules", "integration/conflict", "integration/oracle",
                 "examples", "vm/setup", "vm/lib", "pyproject.toml")


def cache_root() -> Path:
    env = os.environ.get("BTFRECONCILED_CACHE_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "btfreconciled"


def rootfs() -> Path:
    """The trixie root filesystem (chroot for the new tools, and the VM's root)."""
    return cache_root() / "rootfs" / "trixie"


# Which chroot's bpftool/libbpf goes with a kernel series: trixie (bpftool 7.5, libbpf 1.5)
# for the Debian 13 kernels, sid (bpftool 7.8, libbpf 1.7) for 7.2.
SID_SERIES = ("7.2",)


def chroot_flags(series: str) -> dict[str, bool]:
    """run_in_chroot keyword arguments for the root whose tools match ``series``."""
    return {"sid": series in SID_SERIES}


def chroot_argv(series: str) -> list[str]:
    """The command prefix that runs a program in the root whose tools match ``series``."""
    return [str(VM_DIR / "chroot"), *(["--sid"] if series in SID_SERIES else []), "--"]


def kernel_dir(series: str) -> Path:
    """``kernels/<release>`` for "6.12" / "6.1" / "7.2" (or a full release): vmlinuz, config,
    System.map, vmlinux, vmlinux.btf, lib/modules/<release>/, release."""
    return (cache_root() / "kernels" / series).resolve()


def allows_btf_mismatch(series: str) -> bool:
    """CONFIG_MODULE_ALLOW_BTF_MISMATCH=y: a module whose BTF the kernel rejects still loads
    (Debian 6.1, 6.12); without it (Debian 7.2) the kernel refuses the module."""
    config = (kernel_dir(series) / "config").read_text()
    return "CONFIG_MODULE_ALLOW_BTF_MISMATCH=y" in config.splitlines()


def kernel_release(series: str) -> str:
    return (kernel_dir(series) / "release").read_text().strip()


def fixtures_dir(series: str) -> Path:
    """``fixtures/<release>``: the fixture ``.ko`` files (``.BTF`` + ``.BTF.base``);
    ``plain/`` below holds the same modules with classic split BTF only."""
    return (cache_root() / "fixtures" / series).resolve()


def modread_binary() -> Path:
    """examples/modread built by vm/setup (runs in the chroot and in the VMs: the cache
    is mounted at the same path in the guest)."""
    return cache_root() / "examples" / "modread" / "modread"


def ciliumread_binary() -> Path:
    """examples/ciliumread built by vm/setup (step cilium-example): a static Go binary
    with modread.bpf.o embedded, so it runs in the chroot and in the VMs alike."""
    return cache_root() / "examples" / "ciliumread" / "ciliumread"


# What ciliumread prints when cilium/ebpf 0.11 relocates modread.bpf.o against BTF without
# btfr_loader_state: it poisons the relocation with `call 0xbad2310` (195896080,
# COREFixup.Apply's badRelo) and the kernel's verifier rejects that call; the message is
# ciliumread's prefix, then cilium/ebpf's own ("program NAME: load program: ERRNO: " + the
# verifier log's last line + how many lines it left out).  TARGET: "the kernel's vmlinux
# BTF" without --btf (0.11 never reads module BTF), or the --btf file.
CILIUM_POISONED = (r"ciliumread: cannot load the BPF program \(CO-RE against {target}\): "
                   r"program modread_poke: load program: invalid argument: "
                   r"invalid func unknown#195896080 \(\d+ line\(s\) omitted\)")


def conflict_dir(series: str = "6.12") -> Path:
    """``conflict/<release>``: btfr_dup_a.ko and btfr_dup_b.ko (each defines ``struct
    btfr_dup``, x at a different offset) and dupread.bpf.o (reads btfr_dup.x by CO-RE)."""
    return (cache_root() / "conflict" / series).resolve()


def verdicts_dir(series: str) -> Path:
    """``verdicts/<release>``: what the kernel itself made of each fixture."""
    d = cache_root() / "verdicts" / kernel_release(series)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _inputs_hash() -> str:
    """Same value as vm/setup's hash_paths over _SETUP_INPUTS (sha256sum of sorted files)."""
    lines = []
    files: list[str] = []
    for top in _SETUP_INPUTS:
        p = REPO / top
        if p.is_file():
            files.append(top)
            continue
        for f in p.rglob("*"):
            if f.is_file() and f.suffix not in (".o", ".ko", ".cmd"):
                files.append(str(f.relative_to(REPO)))
    # find -print0 | sort -z orders by bytes, like sorted() on str for ASCII paths
    for rel in sorted(files):
        digest = hashlib.sha256((REPO / rel).read_bytes()).hexdigest()
        lines.append(f"{digest}  {rel}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def toolchain_ready() -> bool:
    stamp = cache_root() / "stamps" / "setup.done"
    return stamp.is_file() and stamp.read_text().strip() == _inputs_hash()


def require_toolchain() -> None:
    """Run vm/setup unless its completion stamp is present and current."""
    if toolchain_ready():
        return
    bar = "=" * 78
    print(f"\n{bar}\nbtfreconciled integration: toolchain missing or out of date under "
          f"{cache_root()}\nrunning vm/setup (first time: debootstrap, kernels, fixtures; "
          f"about 10 minutes)\n{bar}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    subprocess.run([str(VM_DIR / "setup")], check=True, stdout=sys.stderr)
    print(f"{bar}\nvm/setup finished in {time.monotonic() - t0:.0f} s\n{bar}",
          file=sys.stderr, flush=True)
    if not toolchain_ready():
        raise RuntimeError("vm/setup finished but stamps/setup.done is not current")


def run_in_vm(series: str, cmd: str | Sequence[str], timeout: float = 300, *,
              rwdirs: Sequence[str] = (), check: bool = False,
              extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Boot kernel ``series`` under TCG and run ``cmd`` (a shell string or argv) as root.

    stdout/stderr are captured (text).  ``rwdirs`` are ``GUEST=HOST`` pairs.
    Return code: the guest command's status, 124 timeout, 125 runner failure.
    """
    argv = [str(VM_DIR / "run"), "--kernel", series, "--timeout", str(timeout)]
    for d in rwdirs:
        argv += ["--rwdir", d]
    argv += list(extra_args)
    argv.append("--")
    argv += [cmd] if isinstance(cmd, str) else list(cmd)
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          timeout=timeout + 60)


def run_in_chroot(cmd: str | Sequence[str], *, check: bool = False,
                  timeout: float = 600, bookworm: bool = False,
                  sid: bool = False) -> subprocess.CompletedProcess:
    """Run ``cmd`` (argv, or a shell string) in the trixie chroot (``sid=True``: the sid
    root with libbpf 1.7, bpftool 7.8, pahole 1.32); captures text output."""
    argv = [str(VM_DIR / "chroot")]
    if bookworm:
        argv.append("--bookworm")
    if sid:
        argv.append("--sid")
    argv.append("--")
    argv += ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def oracle(*args: str, check: bool = False, sid_binary: Path | None = None
           ) -> subprocess.CompletedProcess:
    """Run the libbpf 1.5 oracle (``btf_oracle``) in the trixie chroot; with ``sid_binary``
    (from :func:`build_sid_oracle`), the libbpf 1.7 build in the sid root."""
    if sid_binary is not None:
        return run_in_chroot([str(sid_binary), *args], check=check, sid=True)
    return run_in_chroot(["btf_oracle", *args], check=check)


def build_sid_oracle(out_dir: Path) -> Path:
    """integration/oracle/btf_oracle.c compiled in the sid root against its libbpf 1.7, into
    ``out_dir`` (which must be under /tmp or the cache: the chroot sees those paths).  Under
    a second; vm/setup installs only the trixie (libbpf 1.5) build."""
    exe = out_dir / "btf_oracle"
    res = run_in_chroot(["gcc", "-O2", "-Wall", "-o", str(exe),
                         str(REPO / "integration" / "oracle" / "btf_oracle.c"), "-lbpf"],
                        sid=True)
    if res.returncode != 0 or not exe.is_file():
        raise RuntimeError(f"building btf_oracle in the sid root failed:\n{res.stderr}")
    return exe
