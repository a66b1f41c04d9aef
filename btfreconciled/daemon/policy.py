"""Per-module publishing policy (SPEC §10): publish only what is true for the loaded module.

Two checks stand between a reconciliation result and the cache:

- *Identity*: the file found on disk must be the module that is loaded. A DKMS rebuild or a
  package update replaces the file under a loaded module; its BTF then describes other code.
  The kernel shows the loaded module's GNU build id (``/sys/module/<m>/notes/
  .note.gnu.build-id``, the same bytes as the file's section) and, where the module has one,
  its ``srcversion``. A mismatch publishes nothing: verdict ``stale-file``, naming both.
- *Kernel truth*: where the kernel registered ``/sys/kernel/btf/<m>`` (it relocated
  ``.BTF.base`` itself, Linux >= 6.11), that is the module's BTF. Ours must equal it; a
  difference is verdict ``error`` naming the first differing type, and what loaders get is
  the kernel's bytes, never ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cache import describe_os_error
from ..elf import BUILD_ID_SECTION, note_build_id

STALE_FILE = "stale-file"
KERNEL_MISMATCH = "error"
IN_KERNEL_RELOCATION = (6, 11)  # Linux reconciles .BTF.base modules itself from 6.11 on


def release_tuple(release: str) -> tuple[int, int]:
    parts = []
    for p in release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


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


def identity_problem(sysfs: Path, name: str, record: dict[str, Any]) -> str | None:
    """None when the file is the loaded module (or nothing can tell); else why not."""
    loaded = loaded_identity(sysfs, name)
    for key, what in (("build_id", "build id"), ("srcversion", "srcversion")):
        ours, theirs = record.get(key), loaded.get(key)
        if ours and theirs and ours != theirs:
            return (f"{name}: the file on disk is not the loaded module: {record.get('path')} "
                    f"has {what} {ours}, the loaded module has {theirs} (rebuilt or replaced "
                    "since it was loaded; nothing is published until it is reloaded)")
    return None


def identity_note(sysfs: Path, name: str, record: dict[str, Any]) -> str:
    """How the file was matched to the loaded module, for `show`."""
    loaded = loaded_identity(sysfs, name)
    for key, what in (("build_id", "build id"), ("srcversion", "srcversion")):
        if record.get(key) and loaded.get(key):
            return f"{what} {record[key]} matches the loaded module"
    return "unverified: neither a build id nor a srcversion to compare with the loaded module"


def kernel_btf(sysfs: Path, name: str) -> tuple[str, bytes | str]:
    """("btf", bytes) / ("coming", "") while the module initialises / ("absent", why) /
    ("error", why) for /sys/kernel/btf/<name>."""
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
        return "absent", f"{kfile} does not exist: the kernel made no BTF for this module"
    except OSError as e:
        return "error", describe_os_error(e)


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


def cross_check(sysfs: Path, release: str, name: str, btf: bytes, base: Any
                ) -> tuple[dict[str, Any] | None, bytes | None]:
    """On kernels that relocate .BTF.base themselves, compare with /sys/kernel/btf/<mod>:
    (result, the kernel's bytes). ({}, None) when not applicable; (None, None) while the
    module is still initialising (the uevent precedes the kernel's BTF notifier)."""
    if release_tuple(release) < IN_KERNEL_RELOCATION:
        return {}, None
    kfile = sysfs / "kernel" / "btf" / name
    state, data = kernel_btf(sysfs, name)
    if state == "coming":
        return None, None
    if not isinstance(data, bytes):
        return {"result": state, "kernel_file": str(kfile), "detail": data}, None
    res = compare(name, btf, data, base)
    res["kernel_file"] = str(kfile)
    return res, data


def kernel_truth(name: str, record: dict[str, Any], cc: dict[str, Any]) -> dict[str, Any]:
    """The record of a module whose BTF differs from what the kernel registered: an error,
    and the BTF published is the kernel's (the caller swaps the bytes)."""
    rec = dict(record)
    where = f" at type [{cc['first_type_id']}]" if cc.get("first_type_id") else ""
    rec["verdict"] = KERNEL_MISMATCH
    rec["summary"] = (f"{name}: our reconciled BTF differs from the kernel's "
                      f"{cc.get('kernel_file')}{where}: a bug in btfreconciled or the kernel; "
                      "loaders get the kernel's BTF")
    rec["btf_source"] = "kernel"
    rec["diagnostics"] = [*rec.get("diagnostics", []),
                          {"code": "kernel-mismatch", "severity": "error",
                           "summary": rec["summary"], "detail": cc.get("detail")}]
    return rec
