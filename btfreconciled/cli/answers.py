"""The shapes of the daemon's answers, checked before anything is printed.

The control socket is a trust boundary both ways: a daemon of another version (or anything
else listening on the socket) may answer ``{"ok": true}`` without the keys a command prints,
or with other types.  That must be one line on stderr naming what is missing, never a
KeyError/TypeError traceback.

A schema is a type or tuple of types (``isinstance``), a dict (an object with those keys; a
key ending in ``?`` may be absent or null), a one-element list (an array of that), or
:class:`MapOf` (an object with any keys and values of one schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import CliError

NUM = (int, float)
OPT_STR = (str, type(None))


@dataclass(frozen=True)
class MapOf:
    values: Any


def _what(schema: Any) -> str:
    if isinstance(schema, dict | MapOf):
        return "an object"
    if isinstance(schema, list):
        return "an array"
    types = schema if isinstance(schema, tuple) else (schema,)
    names = {int: "a number", float: "a number", str: "a string", bool: "true/false",
             type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _bad(where: str, why: str) -> CliError:
    return CliError(f"unexpected answer from btfreconciled (another version?): {where} {why}")


def check(obj: Any, schema: Any, where: str) -> Any:
    """``obj`` if it has the shape ``schema``, else a CliError naming the first difference."""
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            raise _bad(where, f"is not {_what(schema)}")
        for key, sub in schema.items():
            name = key.removesuffix("?")
            value = obj.get(name)
            if value is None:
                if key.endswith("?"):
                    continue
                raise _bad(f"{where}.{name}", "is missing")
            check(value, sub, f"{where}.{name}")
        return obj
    if isinstance(schema, list):
        if not isinstance(obj, list):
            raise _bad(where, "is not an array")
        for i, item in enumerate(obj):
            check(item, schema[0], f"{where}[{i}]")
        return obj
    if isinstance(schema, MapOf):
        if not isinstance(obj, dict):
            raise _bad(where, "is not an object")
        for k, v in obj.items():
            check(v, schema.values, f"{where}.{k}")
        return obj
    types = schema if isinstance(schema, tuple) else (schema,)
    # JSON true/false decode as bool, a subclass of int: never accept them as numbers
    if isinstance(obj, bool) and bool not in types:
        raise _bad(where, f"is not {_what(schema)}")
    if not isinstance(obj, types):
        raise _bad(where, f"is not {_what(schema)}")
    return obj


STATUS = {
    "daemon": {"version": str, "pid": int, "uptime": NUM, "events": str,
               "events_detail?": str},
    "kernel": {"release": str, "id": str, "vmlinux": str},
    "cache": {"kernel_dir?": str},
    "counts": MapOf(int),
    "identity?": MapOf(int),
    "served_verdicts?": [str],
    "queue": {"pending": int, "busy?": str},
    "latency?": {"n": int, "p50_ms?": NUM, "p99_ms?": NUM},
    "merged?": {"files": int, "bytes": NUM, "all_modules": int, "errors?": int,
                "last_error?": str, "dir": str},
    "last_rescan?": {"modules": int, "seconds": NUM, "reason": str},
    "stats?": MapOf((int, float, str)),
    "module_files?": {"problems?": [str]},
    "last_events?": [{"time": NUM, "action": str, "module?": str}],
}
MODULE = {"module": str, "verdict": str, "summary": str, "published?": bool,
          "identity?": (str, dict)}
LIST = {"modules": [MODULE]}
SHOW = {"record": {**MODULE, "path?": str, "module_sha256?": str, "btf?": str,
                   "publish_error?": str, "cross_check?": {"result": str},
                   "diagnostics?": list}}
PATH_MODULE = {"module": str, "verdict": str, "summary": str, "btf?": str, "merged?": str,
               "reason?": str}
PATH_ALL = {"merged?": str, "modules": [str], "reason?": str}
