"""A warm btfreconcilectl for guest scripts: imported once, forked per call.

Under TCG every `btfreconcilectl` is a Python start plus ~70 ms (host) of imports, 3-5 s
in the guest; a guest script that polls the daemon makes dozens of calls, and they were
most of a VM test's time.  This process imports the CLI with every subcommand once, then
serves calls from the shell function ``ctl`` (ctl.sh, sourced by guest scripts): each
call runs in a fresh fork -- its own process, exit status and file descriptors, exactly
as a separate `btfreconcilectl` would run `main(argv)` -- only the interpreter start and
imports are shared.  The real entry points are still exercised where that is the point
(a loader finding `btfreconcilectl` on PATH, the installed unit).

Protocol: the client makes a directory Q holding ``argv`` (NUL-separated arguments),
``cwd`` (its working directory) and a FIFO ``rc``, and writes Q's path as one line to the
request FIFO.  The call's stdout and stderr go to Q/out and Q/err (the client copies them
to its own), its exit status is written to Q/rc.  A second verb, ``field FILE KEY[.KEY]``, prints
one field of a JSON file (a record's ``pending``, ``verdict``): a check a guest script
otherwise spends a Python start on.

usage: python3 ctl_zygote.py REQUEST_FIFO
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from btfreconciled.cli.main import build_parser, main


def field(path: str, dotted: str) -> int:
    """Print one field of a JSON file (``cross_check.result``): strings as they are, other
    values as JSON (``false``); status 1 when the file or the field is not there."""
    try:
        value = json.loads(Path(path).read_text())
        for key in dotted.split("."):
            value = value[key]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 1
    print(value if isinstance(value, str) else json.dumps(value))
    return 0


def run_call(argv: list[str]) -> int:
    if argv[:1] == ["field"] and len(argv) == 3:
        return field(argv[1], argv[2])
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors and --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def serve_one(q: Path) -> None:
    argv = [a.decode(errors="surrogateescape")
            for a in (q / "argv").read_bytes().split(b"\0")[:-1]]
    cwd = (q / "cwd").read_bytes()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        rc = 125
        try:
            for fd, name, flags in ((0, "/dev/null", os.O_RDONLY),
                                    (1, q / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, q / "err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                new = os.open(name, flags, 0o644)
                os.dup2(new, fd)
                os.close(new)
            os.chdir(cwd)
            rc = run_call(argv)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(rc & 0xFF)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    with open(q / "rc", "w") as f:
        f.write(f"{rc if rc >= 0 else 128 - rc}\n")


def main_loop(fifo: str) -> None:
    build_parser(None)  # every subcommand's module, imported once here
    while True:
        with open(fifo) as requests:  # EOF when the writer closes: reopen and wait
            for line in requests:
                if not line.strip():
                    continue
                q = Path(line.strip())
                try:
                    serve_one(q)
                except OSError as e:  # one broken call must not hang the script on its rc
                    print(f"ctl_zygote: {q}: {e}", file=sys.stderr, flush=True)
                    with contextlib.suppress(OSError), open(q / "rc", "w") as f:
                        f.write("125\n")


if __name__ == "__main__":
    main_loop(sys.argv[1])
