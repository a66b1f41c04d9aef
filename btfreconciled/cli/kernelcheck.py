"""`btfreconcilectl kernel-check VERSION [--image FILE]`: before rebooting into a new kernel,
which of the out-of-tree modules built for it will not have usable BTF there."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cache import DEFAULT_CACHE_DIR, atomic_write_json
from ..kconfig import ALLOW_MISMATCH, DROP, IGNORE, REFUSE, config_files, find_policy
from ..reconcile.doctor import (
    DOES_NOT_FIT,
    ERROR,
    Candidates,
    Diagnosis,
    candidate_files,
    diagnose,
)
from ..reconcile.target import VmlinuxIndex
from .check import find_modules
from .errors import EXIT_OK, CliError, printable

PRE_REBOOT_DIR = "pre-reboot"  # <cache>/pre-reboot/<version>.json, shown by `status`
OUT_OF_TREE = ("updates", "extra")  # where DKMS and out-of-tree installs put modules


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kernel-check",
        help="before a reboot: which out-of-tree modules built for a new kernel will lack BTF",
        description=(
            "Check the out-of-tree modules installed for kernel VERSION (/lib/modules/VERSION/"
            "updates and extra, where DKMS puts them) against that kernel's own BTF (its image,"
            " default /boot/vmlinuz-VERSION, else /lib/modules/VERSION/vmlinuz) and print one"
            " warning per module whose BTF will not fit: the kernel would drop its BTF or,"
            " with CONFIG_MODULE_ALLOW_BTF_MISMATCH off (read from /boot/config-VERSION or"
            " MODULES-ROOT/VERSION/config), refuse the module. The report also"
            " goes to the cache, where `status` shows it. Installed as"
            " /etc/kernel/postinst.d/zz-btfreconciled by scripts/install-service: it never"
            " fails a package installation."),
        epilog="exit status: 0 all fit (or nothing to check), 1 some will not fit, 2 error.",
    )
    p.add_argument("version", metavar="VERSION", help="kernel release, as in /lib/modules")
    p.add_argument("--image", metavar="FILE", help="the kernel's image or vmlinux (default "
                   "/boot/vmlinuz-VERSION, else MODULES-ROOT/VERSION/vmlinuz as Debian sid, "
                   "Fedora and Arch install it)")
    p.add_argument("--modules-root", metavar="DIR", default="/lib/modules",
                   help="where module trees live (default /lib/modules)")
    p.add_argument("--cache-dir", metavar="DIR", default=str(DEFAULT_CACHE_DIR),
                   help=f"where the report goes (default {DEFAULT_CACHE_DIR}; '' for none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def default_image(version: str, tree: Path) -> Path:
    """/boot/vmlinuz-VERSION, or where Debian sid (linux-binary-*), Fedora and Arch put the
    image: the module tree's own vmlinuz. The /boot path when neither exists (for the
    message)."""
    boot = Path(f"/boot/vmlinuz-{version}")
    if not boot.exists() and (tree / "vmlinuz").exists():
        return tree / "vmlinuz"
    return boot


# What loading a module that does not fit will do, in the report's "on_load"
REFUSED = "refused"  # insmod fails: "failed to validate module [m] BTF: -22"
NO_BTF = "no-btf"  # loads; no /sys/kernel/btf/<m> (or none worth having)
WRONG_BTF = "wrong-btf"  # loads; the kernel binds its BTF to the wrong vmlinux types
UNKNOWN = "unknown"  # its config was not found, or the module could not be diagnosed


def outcome(d: Diagnosis, policy: str | None) -> str:
    """What loading module `d` (which does not fit) does on a kernel with `policy`
    (kconfig.py; None: its config was not found)."""
    if d.result == ERROR:
        return UNKNOWN
    if d.kind == "no-btf" or policy == IGNORE:
        return NO_BTF
    if not d.kernel_rejects:  # classic BTF that passes the kernel's checks there
        return WRONG_BTF
    return {DROP: NO_BTF, REFUSE: REFUSED}.get(policy or "", UNKNOWN)


def run(args: argparse.Namespace) -> int:
    if "/" in args.version or args.version in ("", ".", ".."):
        raise CliError(f"invalid kernel version {args.version!r}")
    tree = Path(args.modules_root) / args.version
    image = Path(args.image) if args.image else default_image(args.version, tree)
    if not image.exists():
        raise CliError(f"{image}: no such file (give the kernel's image with --image)")
    mods = [m for d in OUT_OF_TREE if (tree / d).is_dir() for m in find_modules(tree / d)]
    target = VmlinuxIndex.load(str(image))
    # the module's build, when it is not this kernel: the other kernels on this machine
    cands = Candidates(candidate_files(["/boot", str(image.parent)]))
    results = [diagnose(m, target, cands) for m in mods]
    bad = [d for d in results if d.result in (DOES_NOT_FIT, ERROR)]
    # what that kernel does about it: drop the BTF, or refuse the module (Debian's 7.2)
    policy, config = find_policy(config_files(args.version, image, Path(args.modules_root)))
    on_load = {d.path: outcome(d, policy) for d in bad}
    report = {"version": args.version, "image": str(image), "checked": time.time(),
              "config": str(config) if config else None, "btf_mismatch": policy,
              "modules": len(results),
              "will_not_fit": [{**d.to_json(), "on_load": on_load[d.path]} for d in bad]}
    if args.cache_dir:
        out = Path(args.cache_dir) / PRE_REBOOT_DIR
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / f"{args.version}.json", report)
        except OSError as e:
            print("btfreconcilectl: warning: "
                  + printable(f"cannot save the report in {out}: {e.strerror or e}"),
                  file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for d in bad:
            fix = (f"; fix: btfreconcilectl rescue {d.path} --base {d.build} --in-place"
                   if d.build and d.kind == "classic" else "")
            if on_load[d.path] == REFUSED:
                print(printable(
                    f"btfreconciled: warning: {d.module} ({d.path}) will not load on "
                    f"{args.version}: {d.summary}; that kernel refuses modules whose BTF "
                    f"it cannot use ({ALLOW_MISMATCH} is not set in {config}){fix}"))
            else:
                print(printable(f"btfreconciled: warning: {d.module} ({d.path}) will have no "
                                f"usable BTF on {args.version}: {d.summary}{fix}"))
        if not mods:
            print(f"btfreconciled: no out-of-tree modules for {args.version} "
                  f"({', '.join(str(tree / d) for d in OUT_OF_TREE)})")
        elif not bad:
            print(f"btfreconciled: {len(mods)} out-of-tree module(s) for {args.version}: "
                  "all fit")
    return 1 if bad else EXIT_OK
