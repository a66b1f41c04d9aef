"""btfreconcilectl: the command-line face of btfreconciled.

Each subcommand lives in its own module with `register(subparsers)`; the handler it sets
returns the exit status. Every anticipated failure becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..btf.errors import BtfError
from ..elf import ElfError
from ..output import OutputError
from .errors import EXIT_ERROR, EXIT_OK, CliError, printable

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ("dump", "inspect", "status", "daemonctl", "check", "doctor", "rescue",
            "kernelcheck", "headers", "reconcile", "distill", "mincore")
# Which module registers each subcommand name (daemonctl holds list/show/path).
MODULE_OF = {"dump": "dump", "inspect": "inspect", "status": "status", "list": "daemonctl",
             "show": "daemonctl", "path": "daemonctl", "check": "check",
             "doctor": "doctor", "rescue": "rescue", "kernel-check": "kernelcheck",
             "headers": "headers",
             "reconcile": "reconcile",
             "distill": "distill", "min-core-btf": "mincore"}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when `argv` names a subcommand only its module is imported (the
    reconciliation engine costs ~25 ms to import, which `dump` or `status` need not pay)."""
    parser = argparse.ArgumentParser(
        prog="btfreconcilectl",
        description="Inspect, check and reconcile kernel-module BTF against a kernel.",
    )
    parser.add_argument("--socket", metavar="PATH", help="btfreconciled's control socket")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((MODULE_OF[a] for a in argv or () if a in MODULE_OF), None)
    for name in (chosen,) if chosen else COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    _tolerant_streams()
    try:
        return int(args.handler(args))
    except (BtfError, ElfError, CliError, OutputError) as exc:
        print(f"btfreconcilectl: error: {printable(str(exc))}", file=sys.stderr)
    except BrokenPipeError:
        # `btfreconcilectl dump ... | head`: not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    except OSError as exc:
        name = exc.filename
        where = f"{os.fsdecode(name) if isinstance(name, bytes) else name}: " if name else ""
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        print(f"btfreconcilectl: error: {printable(where + reason)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("btfreconcilectl: interrupted", file=sys.stderr)
    return EXIT_ERROR


def _tolerant_streams() -> None:
    """Names in a module's BTF are bytes from the file, decoded with surrogateescape: one
    that is not UTF-8 must print (as a visible \\udcXX escape), not raise
    UnicodeEncodeError from the middle of a report."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


def console_main() -> NoReturn:
    """The `btfreconcilectl` executable: main(), then exit without tearing the interpreter
    down. After a vmlinux dump that teardown frees ~100 MB of objects one at a time (~10 ms,
    5% of the command) for nothing: every file a command writes is closed by the time it
    returns, so only the standard streams are left to flush."""
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away (`| head`), as in main()
    except OSError as exc:  # e.g. ENOSPC on the last buffered block of a redirected dump
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        print(f"btfreconcilectl: error: standard output: {reason}", file=sys.stderr)
        status = EXIT_ERROR
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    console_main()
