"""What a kernel does with a module whose BTF it cannot use, read from its build config.

Linux parses a module's BTF in load_module() (btf_module_notify). When that fails (a
``.BTF.base`` it cannot relocate, classic split BTF made for another build), the outcome is a
build option:

- ``CONFIG_MODULE_ALLOW_BTF_MISMATCH=y`` (Debian 6.1, 6.12): the module loads without BTF;
- not set (Debian's 7.2, and every kernel before 5.18, which had no such option): the module
  does not load at all, insmod says "Invalid argument" and the kernel logs
  ``failed to validate module [m] BTF: -22``;
- ``CONFIG_DEBUG_INFO_BTF_MODULES`` off: module BTF is never read, nothing fails.

So the same DKMS module "loses its BTF" on one kernel and "stops loading" on the next.
"""

from __future__ import annotations

from pathlib import Path

DROP = "drop"  # the module loads without BTF
REFUSE = "refuse"  # the module does not load
IGNORE = "ignore"  # the kernel never reads module BTF

ALLOW_MISMATCH = "CONFIG_MODULE_ALLOW_BTF_MISMATCH"
BTF_MODULES = "CONFIG_DEBUG_INFO_BTF_MODULES"
CONFIG_LIMIT = 4 << 20  # a kernel config is ~300 KB; refuse to slurp anything absurd


def config_files(version: str, image: Path | None, modules_root: Path) -> list[Path]:
    """Where distributions put kernel VERSION's config: beside its image
    (``/boot/config-VERSION`` for ``/boot/vmlinuz-VERSION``), else in its module tree
    (``MODULES-ROOT/VERSION/config``: Debian sid's linux-base, Fedora, Arch)."""
    out = []
    if image is not None:
        out.append(image.parent / f"config-{version}")
    out.append(Path("/boot") / f"config-{version}")
    out.append(modules_root / version / "config")
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def parse_policy(text: str) -> str:
    """DROP / REFUSE / IGNORE from the text of a kernel config."""
    opts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            opts[k] = v
    if opts.get(BTF_MODULES) != "y":
        return IGNORE
    return DROP if opts.get(ALLOW_MISMATCH) == "y" else REFUSE


def find_policy(candidates: list[Path]) -> tuple[str | None, Path | None]:
    """(policy, the config it came from) from the first readable candidate; (None, None)
    when there is none: the consequence is then unknown, not assumed."""
    for p in candidates:
        try:
            with open(p, "rb") as f:
                data = f.read(CONFIG_LIMIT + 1)
        except OSError:
            continue
        if len(data) > CONFIG_LIMIT:
            continue
        text = data.decode("utf-8", "replace")
        if "CONFIG_" not in text:
            continue
        return parse_policy(text), p
    return None, None
