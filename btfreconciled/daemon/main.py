"""``btfreconciled``: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import logs
from .config import (
    DEFAULT_CACHE_DIR,
    DEFAULT_CONFIG,
    DEFAULT_SOCKET,
    EVENT_SOURCES,
    LOG_FORMATS,
    STRICT_POLICIES,
    ConfigError,
)
from .engine import Engine
from .service import Service, StartupError, reload_from

EXIT_ERROR = 2

_DESCRIPTION = """\
Keep reconciled BTF for every loaded kernel module in a cache that BPF loaders read.

At start-up btfreconciled hashes the running kernel's BTF (/sys/kernel/btf/vmlinux), builds
its index once, and reconciles every module listed in /sys/module; then it follows module
load/unload events (kernel uevents over netlink; polling of /sys/module only when netlink is
unavailable). Each module file is found through modules.dep under /lib/modules/$(uname -r)
and the configured extra directories, reconciled against the running kernel and published:

  CACHE/<kernel-id>/modules/<module>.btf   reconciled split BTF (compatible modules only)
  CACHE/<kernel-id>/modules/<module>.json  verdict and diagnostics (every module)
  CACHE/<kernel-id>/manifest.json, CACHE/current -> <kernel-id>

Query it with `btfreconcilectl status|list|show MODULE|path MODULE` (add --socket PATH for a
daemon started with --socket). Signals: SIGHUP reloads the config and rescans, SIGTERM stops.
"""

_EPILOG = f"""\
config file (TOML, every key optional; default {DEFAULT_CONFIG} if it exists):
  cache_dir = "{DEFAULT_CACHE_DIR}"
  socket = "{DEFAULT_SOCKET}"
  socket_mode = "0600"            # root-only by default; "0660" with socket_group = "GROUP"
  extra_module_dirs = ["/opt/modules"]
  strict = "embedded"             # off | embedded | all
  log_format = "auto"             # auto (JSON under systemd/non-TTY) | json | console
  log_level = "info"
  events = "auto"                 # auto | netlink | poll
  poll_interval = 2.0             # seconds, polling fallback only
  gc = true                       # remove other kernels' cache entries
  merged_btf = "modules"          # merged/<m>.btf + all.btf | all (all.btf only) | off
  module_timeout = 60             # seconds one module may take before it is given up
  max_module_bytes = 134217728    # a module file, and its decompressed payload, at most
  search_dirs = ["/boot", "/usr/lib/debug/boot", "/usr/lib/modules/*", "/usr/lib/modules/*/build"]
                                  # where a classic-split module's build is looked for: a
                                  # loaded one the kernel rejected is rescued (verdict rescued)
  watch_files = true              # watch module dirs and this file for changes

an unprivileged instance next to the system one:
  btfreconciled --foreground --cache-dir ~/btf-cache --socket /tmp/btfr.sock
  btfreconcilectl --socket /tmp/btfr.sock status
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="btfreconciled", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--foreground", action="store_true",
                   help="run attached to the terminal (btfreconciled never forks; under "
                        "systemd it runs as Type=notify, so this is what it always does)")
    p.add_argument("--config", metavar="FILE",
                   help=f"TOML configuration file (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--cache-dir", metavar="DIR", help=f"cache root (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--socket", metavar="PATH",
                   help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--extra-module-dir", metavar="DIR", action="append", default=[],
                   help="also look for module files here (repeatable; after modules.dep)")
    p.add_argument("--strict", choices=STRICT_POLICIES, help="field-check policy")
    p.add_argument("--log-format", choices=LOG_FORMATS, help="log format")
    p.add_argument("--events", choices=EVENT_SOURCES, help="event source (default auto)")
    p.add_argument("--check-config", action="store_true",
                   help="print the effective configuration as JSON and exit")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.cache_dir:
        out["cache_dir"] = Path(args.cache_dir).absolute()
    if args.socket:
        out["socket"] = Path(args.socket).absolute()
    if args.extra_module_dir:
        out["extra_module_dirs"] = [Path(d).absolute() for d in args.extra_module_dir]
    if args.strict:
        out["strict"] = args.strict
    if args.log_format:
        out["log_format"] = args.log_format
    if args.events:
        out["events"] = args.events
    return out


def main(argv: Sequence[str] | None = None, *, engine: Engine | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    overrides = _overrides(args)
    required = bool(args.config)
    try:
        cfg = reload_from(config_path, overrides, required=required)
        cfg.socket_gid()  # an unknown group is a configuration error, now
    except ConfigError as e:
        print(f"btfreconciled: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.check_config:
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    logs.configure(cfg.log_format, cfg.log_level)
    if engine is None:
        try:
            from .engine import ReconcileEngine

            engine = ReconcileEngine()
        except ImportError as e:
            print(f"btfreconciled: error: reconciliation engine unavailable: {e}",
                  file=sys.stderr)
            return EXIT_ERROR
    service = Service(cfg, engine,
                      reload_config=lambda: reload_from(cfg.source or config_path, overrides,
                                                        required=required))
    try:
        return asyncio.run(service.run())
    except StartupError as e:
        print(f"btfreconciled: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0


def console_main() -> NoReturn:
    """The `btfreconciled` executable: main(), then exit without tearing the interpreter down.
    Freeing the vmlinux index object by object is most of a `systemctl stop` (measured in the
    TCG VM: ~50 ms from SIGTERM to "stopped", then ~200 ms of teardown, close to a second on
    a busy machine) and does nothing useful: by the time main() returns, the worker thread is
    joined, the cache files are fsync'ed, the manifest flushed and the socket removed; the log
    streams are all that is left to flush."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    console_main()
