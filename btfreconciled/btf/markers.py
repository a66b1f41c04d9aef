"""Validated-markers: "these exact BTF bytes passed strict validation", kept by root.

Strict validation of a vmlinux BTF file costs ~130 ms, and every `btfreconcilectl check` or
`dump` against the same file (a kernel image in /boot, the vmlinux of another machine) would
pay it again for identical bytes. After a successful validation, a process running as root
leaves an empty file named after the sha256 of the bytes (and a digest of the validator's
sources, so another validator never trusts it) in `<trust root>/validated/`; a later load of
the same bytes skips validation when that marker is there *and trustworthy*:

- the trust root is the daemon's cache directory (/var/cache/btfreconciled, or
  $BTFRECONCILED_TRUST_DIR); it must already exist (it is never created here), so a
  machine without btfreconciled installed gets no markers;
- the marker, `validated/` and every directory above them must be owned by root and not
  writable by group or others (a root-owned sticky directory such as /tmp is accepted: no one
  else can replace what root created in it), checked with lstat on the resolved path: a
  symlink or a file another user could have planted means "not validated";
- only a process with euid 0 writes markers (atomically, O_EXCL + rename).

Anything unexpected (unreadable directory, a race) simply means "validate again".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

DEFAULT_TRUST_ROOT = "/var/cache/btfreconciled"
_DIR = "validated"
_validator_digest: str | None = None


def trust_root() -> Path:
    return Path(os.environ.get("BTFRECONCILED_TRUST_DIR") or DEFAULT_TRUST_ROOT)


def validator_digest() -> str:
    """Digest of this package's BTF sources (parser and validator live in btf/)."""
    global _validator_digest
    if _validator_digest is None:
        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for f in sorted(here.rglob("*.py")):
            try:
                h.update(f.relative_to(here).as_posix().encode() + b"\0" + f.read_bytes())
            except OSError:
                h.update(b"?")
        _validator_digest = h.hexdigest()[:16]
    return _validator_digest


def marker_name(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{validator_digest()}"


def _root_only(st: os.stat_result, *, directory: bool) -> bool:
    if st.st_uid != 0:
        return False
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            return False
        return not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX)
    return stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022


def _trusted_dir(d: Path) -> bool:
    """`d` (resolved) and every directory above it are root's alone."""
    try:
        for p in (d, *d.parents):
            if not _root_only(os.lstat(p), directory=True):
                return False
    except OSError:
        return False
    return True


def _marker_dir() -> Path | None:
    try:
        root = trust_root().resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return root / _DIR


def is_validated(name: str) -> bool:
    """A trustworthy marker `name` exists (see the module docstring)."""
    d = _marker_dir()
    if d is None:
        return False
    try:
        st = os.lstat(d / name)
    except OSError:
        return False
    return _root_only(st, directory=False) and _trusted_dir(d)


def needs_validation(data: bytes) -> str | None:
    """The marker name to record once `data` has passed validation, or None when a
    trustworthy marker says it already has."""
    name = marker_name(data)
    return None if is_validated(name) else name


def record_validated(name: str, source: str) -> None:
    """Leave marker `name` (root only; never raises: a missing marker costs time, no more)."""
    if os.geteuid() != 0:
        return
    d = _marker_dir()
    if d is None or not _trusted_dir(d.parent):
        return
    tmp = d / f".{name}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o755)
        if not _trusted_dir(d):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            os.write(fd, f"{source}\n".encode("utf-8", "replace"))
        finally:
            os.close(fd)
        os.rename(tmp, d / name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
