"""`btfreconcilectl status [--json]`: the daemon's health, kernel, counts and last events."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ..daemon.config import DEFAULT_SOCKET
from ..daemon.control import ClientError, request
from ..errors import ErrorCode
from .answers import STATUS, check
from .errors import CliError, printable

SOCKET_ENV = "BTFRECONCILED_SOCKET"


def add_socket_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"the daemon's control socket (default ${SOCKET_ENV} or "
                        f"{DEFAULT_SOCKET})")


def socket_path(args: argparse.Namespace) -> str:
    return (getattr(args, "socket", None) or os.environ.get(SOCKET_ENV)
            or str(DEFAULT_SOCKET))


def ask(args: argparse.Namespace, req: dict[str, Any], shape: Any = None) -> dict[str, Any]:
    """Send a request; a daemon that is down, unreachable or says no becomes a CliError, and
    so does an answer without the `shape` (see answers.py) the caller prints."""
    try:
        resp = request(socket_path(args), req)
    except ClientError as e:
        raise CliError(str(e)) from None
    if resp.get("ok") is not True:
        error = resp.get("error")
        raise CliError(_one_line(error) if isinstance(error, str) and error.strip()
                       else "the daemon refused the request", _code(resp.get("code")))
    resp.pop("ok", None)
    if shape is not None:
        check(resp, shape, "answer")
    return resp


def _code(value: Any) -> ErrorCode | None:
    """The answer's "code" as an ErrorCode; None for one we do not know (another version of
    the daemon, or a peer that is not one)."""
    try:
        return ErrorCode(value)
    except ValueError:
        return None


def _one_line(text: str, limit: int = 500) -> str:
    """The daemon's error text as one bounded line (it is not ours to trust)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def write_lines(lines: list[str]) -> None:
    """Text built from the daemon's answer, one line each: every string in it came from
    the other end of the socket and is printed with its control characters escaped."""
    sys.stdout.write("".join(f"{printable(line)}\n" for line in lines))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="daemon health, running kernel, verdict counts, last events",
        description="Ask the running btfreconciled for its health: event source (netlink or "
        "the polling fallback), the running kernel's id, verdict counts and the last events. "
        "Exit status 2 when the daemon is not running or cannot be reached.",
    )
    add_socket_option(p)
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.set_defaults(handler=run)


def _ago(seconds: float) -> str:
    try:
        s = int(seconds)
    except (OverflowError, ValueError):  # json.loads takes Infinity and NaN
        return "?"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(when: float) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(when))
    except (OverflowError, ValueError, OSError):  # a time no clock shows
        return "??:??:??"


def pre_reboot_line(rep: dict[str, Any]) -> str:
    """One `status` line for a kernel-check report of a kernel not yet booted."""
    bad = rep["will_not_fit"]
    what = (f"{len(bad)} will have no usable BTF: {', '.join(bad[:6])}"
            f"{' ...' if len(bad) > 6 else ''} (btfreconcilectl kernel-check "
            f"{rep['version']})" if bad else "all fit")
    refused = rep.get("will_not_load") or []
    if refused:  # a kernel without CONFIG_MODULE_ALLOW_BTF_MISMATCH: worse than no BTF
        what += (f"; {len(refused)} will not load at all: {', '.join(refused[:6])}"
                 f"{' ...' if len(refused) > 6 else ''}")
    return f"next kernel {rep['version']}: {rep['modules']} out-of-tree modules, {what}"


def run(args: argparse.Namespace) -> int:
    st = ask(args, {"cmd": "status"}, STATUS)
    if args.json:
        print_json(st)
        return 0
    d, k, c, q = st["daemon"], st["kernel"], st["counts"], st["queue"]
    out = [f"btfreconciled {d['version']}: running (pid {d['pid']}, up {_ago(d['uptime'])})"]
    events = d["events"]
    if events == "poll":
        events += f" -- {d.get('events_detail')}"
    out.append(f"events:  {events}")
    out.append(f"kernel:  {k['release']}  id {k['id'][:16]}  ({k['vmlinux']})")
    out.append(f"cache:   {st['cache'].get('kernel_dir')}")
    order = ("ok", "incompatible", "no-base", "error", "builtin", "no-file")
    counts = ", ".join(f"{c.get(v, 0)} {v}" for v in order)
    extra = ", ".join(f"{n} {v}" for v, n in c.items() if v not in order and n)
    out.append(f"modules: {counts}{', ' + extra if extra else ''}")
    ident = st.get("identity")
    if ident:
        out.append("files:   " + ", ".join(f"{n} {s}" for s, n in ident.items())
                   + " (is the file on disk the loaded module: build id / srcversion)")
    served = st.get("served_verdicts")
    if served:
        out.append(f"served:  BTF for verdicts {', '.join(served)} only")
    busy = f" (working on {q['busy']})" if q.get("busy") else ""
    out.append(f"queue:   {q['pending']} pending{busy}")
    lat = st.get("latency") or {}
    if lat.get("n") and lat.get("p50_ms") is not None and lat.get("p99_ms") is not None:
        out.append(f"latency: event -> published p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms "
                   f"(last {lat['n']} loads)")
    mg = st.get("merged")
    if mg:
        busy = ", being written" if mg.get("pending") else ""
        err = f", {mg['errors']} errors (last: {mg.get('last_error')})" if mg.get("errors") else ""
        out.append(f"merged:  {mg['files']} files, {mg['bytes'] / 1e6:.1f} MB on disk "
                   f"(all.btf: {mg['all_modules']} modules){busy}{err}  {mg['dir']}")
    for rep in st.get("pre_reboot") or []:
        out.append(pre_reboot_line(rep))
    rs = st.get("last_rescan")
    if rs:
        out.append(f"rescan:  {rs['modules']} modules in {rs['seconds']} s ({rs['reason']})")
    s = st.get("stats") or {}
    if s.get("publish_errors") or s.get("worker_errors"):
        out.append(f"errors:  {s.get('publish_errors', 0)} publish, "
                   f"{s.get('worker_errors', 0)} internal (see the daemon's log)")
    for p in (st.get("module_files") or {}).get("problems") or []:
        out.append(f"note:    {p}")
    last = st.get("last_events") or []
    if last:
        out.append("last events:")
        for ev in last[-10:]:
            when = _clock(ev["time"])
            what = f"{ev['action']} {ev['module']}" if ev.get("module") else ev["action"]
            out.append(f"  {when}  {what} ({ev.get('source')})")
    write_lines(out)
    return 0
