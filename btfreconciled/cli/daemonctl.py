"""`btfreconcilectl list | show MODULE | path MODULE`: what the daemon published."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .status import add_socket_option, ask, print_json

EXIT_OK, EXIT_NOT_RECONCILED = 0, 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="every loaded module and its verdict",
                       description="List the modules the daemon knows (loaded modules) with "
                       "their verdicts: ok, incompatible, no-base, error, builtin, no-file.")
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

    p = sub.add_parser("path", help="where BPF loaders find a module's reconciled BTF",
                       description="Print the path of MODULE's reconciled split BTF (base: "
                       "/sys/kernel/btf/vmlinux). Exit status 1 when the module has none "
                       "(not compatible, no .BTF.base, built in), 2 on errors.")
    add_socket_option(p)
    p.add_argument("module", metavar="MODULE")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(handler=run_path)


def run_list(args: argparse.Namespace) -> int:
    mods = ask(args, {"cmd": "list"})["modules"]
    if args.json:
        print_json(mods)
        return EXIT_OK
    if not mods:
        print("no modules known yet")
        return EXIT_OK
    w = max(len("MODULE"), *(len(m["module"]) for m in mods))
    v = max(len("VERDICT"), *(len(m["verdict"]) for m in mods))
    lines = [f"{'MODULE':<{w}}  {'VERDICT':<{v}}  SUMMARY"]
    for m in mods:
        summary = m["summary"] if m.get("published", True) else \
            f"{m['summary']} [NOT PUBLISHED: see status]"
        lines.append(f"{m['module']:<{w}}  {m['verdict']:<{v}}  {summary}")
    sys.stdout.write("\n".join(lines) + "\n")
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
    out = [f"  - {sev + ': ' if sev else ''}{text}"]
    exp = d.get("expected")
    if isinstance(exp, dict):
        out.append(f"      expected: {exp.get('kind', '')} {exp.get('name', '')} "
                   f"size={exp.get('size')}")
    for c in d.get("candidates") or []:
        if isinstance(c, dict):
            why = f" ({c['why_not']})" if c.get("why_not") else ""
            out.append(f"      vmlinux has: [{c.get('id')}] {c.get('kind', '')} "
                       f"{c.get('name', '')} size={c.get('size')}{why}")
    for path in d.get("paths") or []:
        out.append(f"      embedded through: {path}")
    return out


def run_show(args: argparse.Namespace) -> int:
    rec = ask(args, {"cmd": "show", "module": args.module})["record"]
    if args.json:
        print_json(rec)
        return EXIT_OK
    out = [f"module:   {rec['module']}", f"verdict:  {rec['verdict']}",
           f"summary:  {rec['summary']}"]
    if rec.get("path"):
        sha = f"  (sha256 {rec['module_sha256'][:16]})" if rec.get("module_sha256") else ""
        out.append(f"file:     {rec['path']}{sha}")
    if rec.get("btf") and rec.get("published"):
        out.append(f"btf:      {rec['btf']}  ({rec.get('btf_size')} bytes; "
                   f"base /sys/kernel/btf/vmlinux)")
    elif rec["verdict"] == "ok":
        out.append(f"btf:      not published: {rec.get('publish_error', 'see status')}")
    else:
        out.append("btf:      none (only compatible modules get one)")
    cc = rec.get("cross_check")
    if cc:
        out.append(f"kernel:   {cc['result']}: {cc.get('detail', '')}")
    out.append(f"strict:   {rec.get('strict')}")
    diags = rec.get("diagnostics") or []
    if diags:
        out.append("diagnostics:")
        for d in diags:
            out += _diag_lines(d)
    sys.stdout.write("\n".join(out) + "\n")
    return EXIT_OK


def run_path(args: argparse.Namespace) -> int:
    resp = ask(args, {"cmd": "path", "module": args.module})
    if args.json:
        print_json(resp)
        return EXIT_OK if resp.get("btf") else EXIT_NOT_RECONCILED
    if resp.get("btf"):
        print(resp["btf"])
        return EXIT_OK
    print(f"btfreconcilectl: {resp['module']}: no reconciled BTF ({resp['verdict']}: "
          f"{resp['summary']})", file=sys.stderr)
    return EXIT_NOT_RECONCILED
