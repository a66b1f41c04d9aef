"""Per-module publishing policy: publish only what is true for the loaded module.

Three checks stand between a reconciliation result and the cache:

- *Identity*: the file found on disk must be the module that is loaded. A DKMS rebuild or a
  package update replaces the file under a loaded module; its BTF then describes other code.
  The kernel shows the loaded module's GNU build id (``/sys/module/<m>/notes/
  .note.gnu.build-id``, the same bytes as the file's section) and, where the module has one,
  its ``srcversion``. A mismatch publishes nothing: verdict ``stale-file``, naming both.
  Every record says whether the file was proven to be the loaded module
  (``identity: {"state": "verified", "by": ...}``) or why not (``"unverified"``).
- *Kernel truth*: where the kernel relocated ``.BTF.base`` itself (Linux >= 6.11, and the
  module carries ``.BTF.base``), ``/sys/kernel/btf/<m>`` is the module's BTF. Ours must equal
  it; a difference is verdict ``error`` naming the first differing type, and nothing of ours
  is served (loaders reading ``/sys/kernel/btf`` natively have the kernel's own).
- *Kernel refusal*: on a kernel that registers the module's BTF itself (the case above, or a
  classic split module on its own build), a live module without ``/sys/kernel/btf/<m>`` means
  the kernel refused BTF we accepted: verdict ``kernel-dropped``, with the kernel's log line
  when one is found. While the module is still initialising the verdict is ``pending``.

A module file with no ``.BTF`` at all (built where the kernel's build directory had no
vmlinux) gets verdict ``no-btf``, with the remedy: that kernel's BTF base, then a rebuild.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import describe_os_error
from ..elf import BUILD_ID_SECTION, note_build_id

STALE_FILE = "stale-file"
KERNEL_MISMATCH = "error"
KERNEL_DROPPED = "kernel-dropped"  # the kernel refused (dropped) BTF that we accepted
PENDING = "pending"  # waiting for the kernel to register the module's BTF (or not)
NO_BTF = "no-btf"  # the module file has no .BTF at all (built with no vmlinux to split on)
IN_KERNEL_RELOCATION = (6, 11)  # Linux reconciles .BTF.base modules itself from 6.11 on
BASE_SECTION, EXPECTS_SECTION = ".BTF.base", ".BTF.base_expects"
NO_BTF_CODE = "no-btf"  # the engine's diagnostic for a module file with no .BTF section
UNDECIDED = "cross-check-undecided"  # diagnostic: whether the kernel refused could not be told


def release_tuple(release: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string; None when it does not start with
    digits.digits (a custom release such as "custom" or "v6.x-rc" says nothing)."""
    head = release.split("-")[0].split("+")[0].split(".")
    if len(head) < 2 or not head[0].isdigit():
        return None
    minor = ""
    for ch in head[1]:
        if not ch.isdigit():
            break
        minor += ch
    if not minor:
        return None
    return int(head[0]), int(minor)


def _read(path: Path, limit: int = 4096) -> bytes | None:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read(limit)
    except OSError:
        return None


def loaded_identity(sysfs: Path, name: str) -> dict[str, str]:
    """What the kernel says about the loaded module: build_id and/or srcversion."""
    out: dict[str, str] = {}
    bid = note_build_id(_read(sysfs / "module" / name / "notes" / BUILD_ID_SECTION))
    if bid:
        out["build_id"] = bid
    sv = _read(sysfs / "module" / name / "srcversion", 256)
    if sv and sv.strip():
        out["srcversion"] = sv.strip().decode("ascii", "replace")
    return out


_IDENTITY_KEYS = (("build_id", "build id"), ("srcversion", "srcversion"))


def identity(sysfs: Path, name: str, record: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the record's ``identity``, None) when the file may be published, or (identity, why
    not) when the file on disk is not the loaded module. ``identity`` is
    ``{"state": "verified", "by": "build id"|"srcversion", "value": ...}`` or
    ``{"state": "unverified", "why": ...}``."""
    loaded = loaded_identity(sysfs, name)
    for key, what in _IDENTITY_KEYS:
        ours, theirs = record.get(key), loaded.get(key)
        if ours and theirs and ours != theirs:
            problem = (f"{name}: the file on disk is not the loaded module: "
                       f"{record.get('path')} has {what} {ours}, the loaded module has "
                       f"{theirs} (rebuilt or replaced since it was loaded; nothing is "
                       "published until it is reloaded)")
            return {"state": "unverified", "why": f"{what} differs: file {ours}, loaded "
                    f"module {theirs}", "file": ours, "loaded": theirs}, problem
    for key, what in _IDENTITY_KEYS:
        if record.get(key) and loaded.get(key):
            return {"state": "verified", "by": what, "value": record[key]}, None
    none = "neither a build id nor a srcversion"
    have = " and ".join(what for key, what in _IDENTITY_KEYS if record.get(key)) or none
    shown = " and ".join(what for key, what in _IDENTITY_KEYS if loaded.get(key)) or none
    why = f"nothing to compare: the file has {have}; /sys/module/{name} shows {shown}"
    return {"state": "unverified", "why": why}, None


def identity_text(ident: Any) -> str:
    """One line for `show`: how (or whether) the file was matched to the loaded module."""
    if not isinstance(ident, dict):
        return "unknown (a record of another version)"
    if ident.get("state") == "verified":
        return f"verified: {ident.get('by')} {ident.get('value')} matches the loaded module"
    if ident.get("state") == "unverified":
        return f"unverified: {ident.get('why')}"
    return f"{ident.get('state')}: {ident.get('why', '')}"


def kernel_btf(sysfs: Path, name: str) -> tuple[str, bytes | str]:
    """("btf", bytes) / ("coming", "") while the module initialises / ("absent", why) for a
    live module / ("gone", why) while it unloads / ("error", why) for
    /sys/kernel/btf/<name>."""
    kfile = sysfs / "kernel" / "btf" / name
    try:
        with open(kfile, "rb", buffering=0) as f:
            return "btf", f.readall()
    except FileNotFoundError:
        try:
            state = (sysfs / "module" / name / "initstate").read_text().strip()
        except OSError:
            state = "gone"
        if state == "coming":
            return "coming", ""
        if state in ("going", "gone"):
            return "gone", f"the module is being unloaded ({state})"
        return "absent", f"{kfile} does not exist: the kernel made no BTF for this module"
    except OSError as e:
        return "error", describe_os_error(e)


def registers_module_btf(sysfs: Path, name: str) -> bool:
    """Whether the kernel shows any other module's BTF in /sys/kernel/btf: it was built with
    module BTF (CONFIG_DEBUG_INFO_BTF_MODULES), so a module without a file there was refused,
    not merely never considered."""
    try:
        with os.scandir(sysfs / "kernel" / "btf") as it:
            return any(e.name not in ("vmlinux", name) for e in it)
    except OSError:
        return False


@dataclass
class Applies:
    """Whether the kernel itself relocates this module's BTF (so /sys/kernel/btf/<m> is the
    truth, and its absence a refusal): yes (True), no (False) or cannot be told (None), and
    why when not yes."""

    relocates: bool | None
    why: str = ""


def kernel_relocates(release: str, record: dict[str, Any]) -> Applies:
    """Does the running kernel relocate this module's ``.BTF.base`` itself?"""
    sections = record.get("base_sections")
    if isinstance(sections, list) and BASE_SECTION not in sections:
        return Applies(False, f"the module carries no {BASE_SECTION} (only "
                       f"{EXPECTS_SECTION}): the kernel does not relocate its BTF")
    rel = release_tuple(release)
    if rel is None:
        return Applies(None, f"the kernel release {release!r} cannot be parsed: cannot tell "
                       f"whether this kernel relocates {BASE_SECTION} itself (Linux >= 6.11)")
    if rel < IN_KERNEL_RELOCATION:
        return Applies(False, f"Linux {rel[0]}.{rel[1]} does not relocate {BASE_SECTION} "
                       "itself (6.11 and later do)")
    return Applies(True)


def compare(name: str, ours: bytes, theirs: bytes, base: Any) -> dict[str, Any]:
    """match / mismatch of our split BTF against the kernel's, with the first difference."""
    if ours == theirs:
        return {"result": "match", "detail": "byte-identical to the kernel's"}
    try:
        from ..btf.btf import Btf
        from ..btf.dump import dump_raw_lines

        a = dump_raw_lines(Btf.parse(ours, base=base, source="ours", validate=False))
        b = dump_raw_lines(Btf.parse(theirs, base=base, source=f"/sys/kernel/btf/{name}",
                                     validate=False))
    except Exception as e:  # noqa: BLE001 - a comparison failure is itself a mismatch
        return {"result": "mismatch", "detail": f"bytes differ and the kernel's could not "
                f"be compared type by type: {type(e).__name__}: {e}"}
    if a == b:
        return {"result": "match", "detail": "same types (raw dumps equal), byte layout differs"}
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                 min(len(a), len(b)))
    ours_l = a[first] if first < len(a) else "<end>"
    theirs_l = b[first] if first < len(b) else "<end>"
    tid = ours_l[1:ours_l.index("]")] if ours_l.startswith("[") else None
    return {"result": "mismatch", "first_type_id": int(tid) if tid and tid.isdigit() else None,
            "detail": f"raw dumps differ ({len(a)} vs {len(b)} lines) at line {first + 1}: "
                      f"ours {ours_l!r}, kernel {theirs_l!r}"}


def cross_check(sysfs: Path, release: str, name: str, btf: bytes, base: Any,
                record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's ``cross_check`` of an ok module against /sys/kernel/btf/<name>:

    - ``{}`` where the kernel does not relocate this module (before 6.11, no .BTF.base);
    - None while the module is still initialising (the uevent precedes the kernel's BTF
      notifier: look again shortly);
    - result ``match`` / ``mismatch`` (the kernel's BTF against ours), ``dropped`` (the
      kernel registers module BTF and made none for this one) or ``undecided`` (with why
      it could not be told)."""
    applies = kernel_relocates(release, record)
    if applies.relocates is False:
        return {}
    kfile = sysfs / "kernel" / "btf" / name
    state, data = kernel_btf(sysfs, name)
    if state == "coming":
        return None
    if isinstance(data, bytes):
        res = compare(name, btf, data, base)
        res["kernel_file"] = str(kfile)
        if applies.why:
            res["note"] = applies.why
        return res
    if state == "absent":
        return absent_result(sysfs, name, applies, data)
    if state == "gone":
        return {"result": "undecided", "kernel_file": str(kfile), "detail": data}
    return {"result": "undecided", "kernel_file": str(kfile),
            "detail": f"cannot read {kfile}: {data}"}


def absent_result(sysfs: Path, name: str, applies: Applies, detail: str) -> dict[str, Any]:
    """``dropped`` or ``undecided`` for a module without /sys/kernel/btf/<name>, on a kernel
    that relocates it (``applies``) or may."""
    kfile = str(sysfs / "kernel" / "btf" / name)
    if applies.relocates is None:
        return {"result": "undecided", "kernel_file": kfile, "detail": f"{detail}; "
                f"{applies.why}"}
    if not registers_module_btf(sysfs, name):
        return {"result": "undecided", "kernel_file": kfile, "detail": f"{detail}; no other "
                "module has BTF in /sys/kernel/btf either (a kernel without "
                "CONFIG_DEBUG_INFO_BTF_MODULES?): cannot tell whether it refused this one"}
    return {"result": "dropped", "kernel_file": kfile, "detail": detail}


def _overridden(record: dict[str, Any], verdict: str, summary: str) -> dict[str, Any]:
    """`record` with the daemon's verdict in place of the engine's, and nothing served."""
    rec = dict(record)
    rec["engine_verdict"] = record.get("engine_verdict") or record["verdict"]
    rec.update(verdict=verdict, summary=summary, btf=None, btf_sha256=None, btf_size=None)
    rec.pop("rescue_base", None)
    return rec


def kernel_mismatch(name: str, record: dict[str, Any], cc: dict[str, Any]) -> dict[str, Any]:
    """The record of a module whose BTF differs from what the kernel relocated itself: an
    error, and nothing of ours is served (loaders that read /sys/kernel/btf natively have
    the kernel's own BTF)."""
    where = f" at type [{cc['first_type_id']}]" if cc.get("first_type_id") else ""
    summary = (f"{name}: our reconciled BTF differs from the kernel's "
               f"{cc.get('kernel_file')}{where}: a bug in btfreconciled or the kernel; "
               "nothing served (the kernel's own BTF is in /sys/kernel/btf)")
    rec = _overridden(record, KERNEL_MISMATCH, summary)
    rec["diagnostics"] = [*rec.get("diagnostics", []),
                          {"code": "kernel-mismatch", "severity": "error",
                           "summary": summary, "detail": cc.get("detail")}]
    return rec


def kernel_dropped(name: str, record: dict[str, Any], detail: str,
                   log: dict[str, str]) -> dict[str, Any]:
    """The record of a loaded module whose BTF the kernel refused although it registers
    such BTF itself: verdict kernel-dropped, with the kernel's own log line when one was
    found (``log``: module -> line, "" -> the once-per-boot line naming no module)."""
    line = log.get(name)
    if line is None and log.get(""):
        line = f"{log['']} (logged once per boot, naming no module)"
    summary = (f"{name}: the kernel registered no BTF for the loaded module ({detail}): it "
               "refused BTF that btfreconciled accepted; nothing served"
               + (f"; kernel log: {line}" if line else ""))
    rec = _overridden(record, KERNEL_DROPPED, summary)
    rec["diagnostics"] = [*rec.get("diagnostics", []),
                          {"code": "kernel-dropped-btf", "severity": "error",
                           "summary": summary, "kernel_log": line}]
    return rec


def pending(name: str, record: dict[str, Any], waiting_for: str, within: float
            ) -> dict[str, Any]:
    """The record published while the kernel may still register the module's BTF."""
    summary = (f"{name}: waiting for {waiting_for} (the module is still initialising); "
               f"decided within {within:g} s")
    rec = _overridden(record, PENDING, summary)
    rec["waiting_for"] = waiting_for
    return rec


def is_without_btf(record: dict[str, Any]) -> bool:
    """Whether the engine found no .BTF section in the module file at all: its verdict is
    no-base, told apart from classic split BTF (which has .BTF) by the diagnostic's code."""
    return record.get("verdict") == "no-base" and any(
        isinstance(d, dict) and d.get("code") == NO_BTF_CODE
        for d in record.get("diagnostics") or [])


def no_btf(name: str, record: dict[str, Any], release: str) -> dict[str, Any]:
    """The record of a loaded module whose file has no BTF: Kbuild skipped BTF generation
    because the build directory of the kernel it was built for held no vmlinux. Nothing can
    be reconciled; the remedy is to give that kernel's build directory its BTF base and
    rebuild the module (the daemon's kernel: a loaded module was built for it)."""
    # imported here: the client imports this module and must stay small
    from ..basefile import no_btf_remedy

    fix = no_btf_remedy(release)
    summary = (f"{name}: the module has no BTF at all (no .BTF section: it was built with no "
               f"vmlinux in the kernel's build directory, Kbuild's 'Skipping BTF generation'); "
               f"nothing to reconcile; fix: {fix}")
    rec = _overridden(record, NO_BTF, summary)
    rec["diagnostics"] = [
        *(d for d in rec.get("diagnostics") or []
          if not (isinstance(d, dict) and d.get("code") == NO_BTF_CODE)),
        {"code": NO_BTF_CODE, "severity": "error", "summary": summary, "remedy": fix}]
    return rec


def undecided_note(cc: dict[str, Any]) -> dict[str, Any]:
    """The diagnostic of an ok module whose cross-check could not be decided."""
    return {"code": UNDECIDED, "severity": "warning",
            "summary": f"not compared with the kernel's BTF: {cc.get('detail')}"}

