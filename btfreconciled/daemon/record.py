"""The per-module record: what the daemon writes next to each module's .btf (``<m>.json``)
and holds in memory for the control socket.

A record is a plain JSON dict; this module is its schema: the fields every record has
(:func:`base_record`), the record of a verdict the daemon reaches on its own
(:func:`daemon_record`) and the record of an engine result (:func:`result_record`).
The verdicts are the engine's plus the daemon's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..cache import SERVED_VERDICTS, Cache, sha256_hex
from .policy import KERNEL_DROPPED, NO_BTF, PENDING, STALE_FILE

VERSION = __version__
RECORD_FORMAT = 1
# Verdicts of the engine plus the daemon's own.
ENGINE_VERDICTS = ("ok", "incompatible", "no-base", "error")
BUILTIN, NO_FILE = "builtin", "no-file"
RESCUED = "rescued"  # classic split BTF, distilled against its build found on disk
DAEMON_VERDICTS = (RESCUED, BUILTIN, NO_FILE, STALE_FILE, PENDING, KERNEL_DROPPED, NO_BTF)
# Only these verdicts' BTF goes to loaders (split file, `path`, merged files, all.btf);
# README and `--help` name them in these words.
SERVED_WORDS = " or ".join(SERVED_VERDICTS)
# The states of a record's ``identity`` (is the file on disk the loaded module?).
IDENTITY_STATES = ("verified", "unverified", "not-applicable")
# Fields that differ between two evaluations of the same unchanged module.
VOLATILE = ("timings", "published_at")


@dataclass
class ModuleView:
    """What the daemon knows about one loaded module (in memory, for the control socket)."""

    name: str
    verdict: str
    summary: str
    path: str | None
    btf_path: str | None
    record: dict[str, Any]
    published: bool = True
    publish_error: str | None = None


def base_record(name: str, path: str | None, *, kernel_id: str, release: str,
                strict: str) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "module": name,
        "path": path,
        "kernel_id": kernel_id,
        "release": release,
        "strict": strict,
        "daemon_version": VERSION,
    }


def daemon_record(name: str, verdict: str, summary: str, *, path: str | None, kernel_id: str,
                  release: str, strict: str) -> dict[str, Any]:
    """A verdict the daemon reached without a reconciliation result (builtin, no-file, ...).
    Nothing compared the loaded module with a file: its identity says why."""
    rec = base_record(name, path, kernel_id=kernel_id, release=release, strict=strict)
    if verdict == BUILTIN:
        ident = {"state": "not-applicable", "why": "built into the kernel: no module file"}
    elif path is None:
        ident = {"state": "unverified", "why": "no module file was found"}
    else:
        ident = {"state": "unverified", "why": "the module file was not read"}
    rec.update(verdict=verdict, summary=summary, diagnostics=[], module_sha256=None,
               btf=None, btf_sha256=None, btf_size=None, timings={}, key=None,
               identity=ident)
    return rec


def result_record(name: str, result: Any, path: Path, key: tuple[Any, ...], elapsed: float, *,
                  cache: Cache | None, kernel_id: str, release: str,
                  strict: str) -> dict[str, Any]:
    """The record of an engine result (a ``ModuleResult``-shaped object, see engine.py);
    its BTF, when the verdict is ok, is published in `cache`."""
    try:
        body = dict(result.to_json())
    except Exception:
        body = {}
    verdict = getattr(result.verdict, "value", result.verdict)
    rec = base_record(name, str(path), kernel_id=kernel_id, release=release, strict=strict)
    for k, v in body.items():
        if k not in ("btf",) and not isinstance(v, bytes | bytearray):
            rec[k] = v
    btf = result.btf if verdict == "ok" else None
    timings = dict(getattr(result, "timings", None) or body.get("timings") or {})
    timings["reconcile"] = round(elapsed, 6)
    rec.update(
        module=name,
        path=str(path),
        verdict=str(verdict),
        summary=str(getattr(result, "summary", "") or body.get("summary", "")),
        diagnostics=list(getattr(result, "diagnostics", None) or []),
        module_sha256=getattr(result, "module_sha256", None),
        btf=str(cache.btf_path(name)) if btf is not None and cache else None,
        btf_sha256=sha256_hex(btf) if btf is not None else None,
        btf_size=len(btf) if btf is not None else None,
        timings=timings,
        key=list(key),
    )
    return rec


def same_record(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records say the same, apart from when and how fast they were made."""
    return ({k: v for k, v in a.items() if k not in VOLATILE}
            == {k: v for k, v in b.items() if k not in VOLATILE})
