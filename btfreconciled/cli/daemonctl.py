"""`btfreconcilectl list | show MODULE | path MODULE`: what the daemon published."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..cache import SERVED_VERDICTS
from ..daemon.policy import PENDING, identity_text
from ..daemon.record import DAEMON_VERDICTS, ENGINE_VERDICTS, SERVED_WORDS
from ..errors import ErrorCode
from .answers import LIST, PATH_ALL, PATH_MODULE, SHOW
from .errors import CliError, printable
from .status import add_socket_option, ask, print_json, write_lines

EXIT_OK, EXIT_NOT_RECONCILED = 0, 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="every loaded module and its verdict",
                       description="List the modules the daemon knows (loaded modules) with "
                       f"their verdicts ({', '.join((*ENGINE_VERDICTS, *DAEMON_VERDICTS))}) "
                       "and whether each file was verified to be the loaded module. Loaders "
                       f"get BTF only for a module whose verdict is {SERVED_WORDS}.")
    add_socket_option(p)
    p.add_argument("--json", action="store_true", help="JSON array of modules")
    p.set_defaults(handler=run_list)

    p = sub.add_parser("show", help="a module's verdict and diagnostics",
                       description="Show the daemon's verdict for MODULE, why, and where its "
                       "reconciled BTF is.")
    add_socket_option(p)
    p.add_argument("module", metavar="MODULE", help="module name (as in /sys/module; - or _)")
    p.add_argument("--json", action="store_true", help="the full JSON record")
    p.set_defaults(handler=run_show)

    p = sub.add_parser(
        "path", help="where BPF loaders find a module's reconciled BTF (only for a module "
        f"whose verdict is {SERVED_WORDS})",
        description="Print the path of MODULE's reconciled split BTF (base: "
        "/sys/kernel/btf/vmlinux), or with --merged the one standalone BTF loaders take "
        "(vmlinux + MODULE: libbpf btf_custom_path, cilium/ebpf KernelTypes, bpftrace "
        "BPFTRACE_BTF); --merged without MODULE: vmlinux + every module whose verdict is "
        f"{SERVED_WORDS} (merged/all.btf). Only a module whose verdict is {SERVED_WORDS} has "
        "a file. Asks the daemon; with --cache-dir, reads that cache directly (no daemon "
        "needed; the file's size and sha256, and the record's build against the loaded "
        "module's, are checked). Exit status 1 when there is no such file (any other verdict: "
        "not compatible, no .BTF.base, built in, the kernel dropped its BTF, still pending; "
        "not written yet; a record of another build), with the reason on stderr; 2 on errors "
        "(a damaged cache, another kernel's).")
    add_socket_option(p)
    p.add_argument("module", metavar="MODULE", nargs="?",
                   help="module name (as in /sys/module); optional with --merged")
    p.add_argument("--merged", action="store_true",
                   help="the merged (standalone) BTF instead of the split BTF")
    p.add_argument("--wait", metavar="SEC", type=float, default=0.0,
                   help="wait up to SEC seconds while the module is still being processed "
                        "or its merged file written (default: answer at once)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="answer from this cache directory instead of asking the daemon")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(handler=run_path)


def run_list(args: argparse.Namespace) -> int:
    mods = ask(args, {"cmd": "list"}, LIST)["modules"]
    if args.json:
        print_json(mods)
        return EXIT_OK
    if not mods:
        print("no modules known yet")
        return EXIT_OK
    names = [printable(m["module"]) for m in mods]
    verdicts = [printable(m["verdict"]) for m in mods]
    idents = [printable(m.get("identity") or "?") for m in mods]
    w = max(len("MODULE"), *map(len, names))
    v = max(len("VERDICT"), *map(len, verdicts))
    i = max(len("IDENTITY"), *map(len, idents))
    lines = [f"{'MODULE':<{w}}  {'VERDICT':<{v}}  {'IDENTITY':<{i}}  SUMMARY"]
    for m, name, verdict, ident in zip(mods, names, verdicts, idents, strict=True):
        summary = m["summary"] if m.get("published", True) else \
            f"{m['summary']} [NOT PUBLISHED: see status]"
        lines.append(f"{name:<{w}}  {verdict:<{v}}  {ident:<{i}}  {summary}")
    write_lines(lines)
    return EXIT_OK


def _diag_lines(d: Any) -> list[str]:
    """One diagnostic of the engine as indented text lines (JSON for unknown shapes)."""
    if not isinstance(d, dict):
        return [f"  - {d}"]
    text = next((d[k] for k in ("summary", "message", "text") if isinstance(d.get(k), str)),
                None)
    if text is None:
        return [f"  - {json.dumps(d, sort_keys=True)}"]
    sev = d.get("severity") or d.get("level")
    out = [f"  - {f'{sev}: ' if sev else ''}{text}"]
    exp = d.get("expected")
    if isinstance(exp, dict):
        out.append(f"      expected: {exp.get('kind', '')} {exp.get('name', '')} "
                   f"size={exp.get('size')}")
    for c in _array(d.get("candidates")):
        if isinstance(c, dict):
            why = f" ({c['why_not']})" if c.get("why_not") else ""
            out.append(f"      vmlinux has: [{c.get('id')}] {c.get('kind', '')} "
                       f"{c.get('name', '')} size={c.get('size')}{why}")
    for path in _array(d.get("paths")):
        out.append(f"      embedded through: {path}")
    return out


def _array(v: Any) -> list[Any]:
    # diagnostics are the engine's free-form JSON: print what has a known shape, skip the rest
    return v if isinstance(v, list) else []


def run_show(args: argparse.Namespace) -> int:
    rec = ask(args, {"cmd": "show", "module": args.module}, SHOW)["record"]
    if args.json:
        print_json(rec)
        return EXIT_OK
    out = [f"module:   {rec['module']}", f"verdict:  {rec['verdict']}",
           f"summary:  {rec['summary']}"]
    if rec.get("path"):
        sha = f"  (sha256 {rec['module_sha256'][:16]})" if rec.get("module_sha256") else ""
        out.append(f"file:     {rec['path']}{sha}")
    if "identity" in rec:
        out.append(f"identity: {identity_text(rec['identity'])}")
    served = rec["verdict"] in SERVED_VERDICTS
    if served and rec.get("btf") and rec.get("published"):
        out.append(f"btf:      {rec['btf']}  ({rec.get('btf_size')} bytes; "
                   f"base /sys/kernel/btf/vmlinux)")
    elif served:
        out.append(f"btf:      not published: {rec.get('publish_error', 'see status')}")
    elif rec["verdict"] == PENDING:
        out.append(f"btf:      none yet (waiting for {rec.get('waiting_for')})")
    else:
        out.append(f"btf:      none (only a module whose verdict is {SERVED_WORDS} gets one)")
    if rec.get("rescue_base"):
        out.append(f"build:    {rec['rescue_base']} (classic split BTF distilled against it "
                   "in memory: `btfreconcilectl rescue` fixes the file)")
    cc = rec.get("cross_check")
    if cc:
        out.append(f"kernel:   {cc['result']}: {cc.get('detail', '')}")
    out.append(f"strict:   {rec.get('strict')}")
    diags = rec.get("diagnostics") or []
    if diags:
        out.append("diagnostics:")
        for d in diags:
            out += _diag_lines(d)
    write_lines(out)
    return EXIT_OK


def _path_from_daemon(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"cmd": "path", "merged": args.merged}
    if args.module is not None:
        req["module"] = args.module
    resp = ask(args, req, PATH_MODULE if args.module is not None else PATH_ALL)
    key = "merged" if args.merged else "btf"
    resp["path"] = resp.get(key)
    if not resp["path"] and not resp.get("reason"):
        resp["reason"] = (f"no reconciled BTF ({resp.get('verdict', 'no verdict')}: "
                          f"{resp.get('summary', '')})")
    # served but not written yet, or not decided yet: worth asking again
    resp["retry"] = resp.get("verdict") in (*SERVED_VERDICTS, PENDING) and not resp["path"]
    return resp


def _path_from_cache(args: argparse.Namespace) -> dict[str, Any]:
    from .. import client
    from ..cache import normalize_module_name

    resp: dict[str, Any] = {"module": args.module, "path": None, "reason": None,
                            "retry": False}
    try:
        pub = client.open_cache(args.cache_dir)
        if args.module is None:
            path, modules = pub.all_merged()
            resp["modules"] = modules
        elif args.merged:
            path = pub.merged_path(args.module)
        else:
            path = pub.split_path(args.module)
        if args.module is not None:
            resp["identity"] = str(pub.identity(args.module))  # how it was matched, or not
        resp["path"] = str(path)
    except client.CacheUnavailable as e:
        raise CliError(str(e)) from None
    except client.NoBtf as e:
        # the module asked for is printed before the reason; another one (all.btf's) is kept
        asked = e.module is not None and args.module is not None and \
            e.module == normalize_module_name(args.module.removesuffix(".ko"))
        resp.update(reason=str(e).removeprefix(f"{e.module}: ") if asked else str(e),
                    verdict=e.verdict, retry=isinstance(e, (client.NotYetWritten,
                                                            client.NotLoaded,
                                                            client.StaleRecord)))
    return resp


def run_path(args: argparse.Namespace) -> int:
    if args.module is None and not args.merged:
        raise CliError("path: give a MODULE (or --merged for the BTF of all modules)")
    lookup = _path_from_cache if args.cache_dir else _path_from_daemon
    deadline = time.monotonic() + max(0.0, args.wait)
    while True:
        try:
            resp = lookup(args)
        except CliError as e:
            # "being processed" is an answer worth waiting for, like "being written"
            if e.code is not ErrorCode.PENDING or time.monotonic() >= deadline:
                raise
        else:
            if resp["path"] or not resp["retry"] or time.monotonic() >= deadline:
                break
        time.sleep(0.05)
    if args.json:
        print_json({k: v for k, v in resp.items() if k != "retry"})
        return EXIT_OK if resp["path"] else EXIT_NOT_RECONCILED
    if resp["path"]:
        write_lines([resp["path"]])
        return EXIT_OK
    what = f"{resp['module']}: " if resp.get("module") else ""
    kind = "merged BTF" if args.merged else "reconciled BTF"
    reason = resp["reason"]
    if reason.startswith("no reconciled BTF"):
        print(printable(f"btfreconcilectl: {what}{reason}"), file=sys.stderr)
    else:
        print(printable(f"btfreconcilectl: {what}no {kind}: {reason}"), file=sys.stderr)
    return EXIT_NOT_RECONCILED
