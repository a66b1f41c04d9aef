"""`btfreconcilectl headers VERSION`: put kernel VERSION's own BTF base into its build
directory as `vmlinux`, so that out-of-tree modules built for it (DKMS) get BTF.

Kbuild writes module BTF only when `$(objtree)/vmlinux` exists; otherwise it prints
"Skipping BTF generation for X.ko due to unavailability of vmlinux". The file it needs is
tiny (basefile.py says exactly what pahole and resolve_btfids read); what matters is that its
BTF is VERSION's, not the running kernel's: DKMS builds for a new kernel while the old one
runs, so copying /sys/kernel/btf/vmlinux gives the new modules BTF split against the wrong
types. The BTF therefore comes from VERSION's own image, whose release string must be
VERSION, and the running kernel's BTF is used only for the running kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, NamedTuple

from .. import basefile
from ..cache import sha256_hex, unlink_durable
from ..elf import ElfError, read_btf_sections, read_elf_sections
from ..errors import ErrorCode
from ..kimage import BZIMAGE_PROBE_LEN, is_bzimage
from .errors import EXIT_INCOMPATIBLE, EXIT_OK, CliError

SYS_BTF = Path("/sys/kernel/btf/vmlinux")
EXIT_NOTHING = EXIT_INCOMPATIBLE  # 1: nothing done; the message says which input is missing
_BTF_MAGICS = (b"\x9f\xeb", b"\xeb\x9f")
_MAX_LINKS = 40  # symlinks followed resolving the build directory (as the kernel's ELOOP)
# Kbuild's resolve_btfids, relative to the build directory ($(objtree)): see _has_resolve_btfids
RESOLVE_BTFIDS = "tools/bpf/resolve_btfids/resolve_btfids"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "headers",
        help="give kernel VERSION's build directory its own BTF base (vmlinux) so that "
             "modules built for it get BTF",
        description=(
            "Write kernel VERSION's BTF base into its build directory (default "
            "/lib/modules/VERSION/build) as vmlinux: the smallest ELF that pahole "
            "(--btf_base) and resolve_btfids (-b) read, holding VERSION's own .BTF. Without "
            "it Kbuild prints 'Skipping BTF generation for X.ko due to unavailability of "
            "vmlinux' and out-of-tree modules (DKMS) get no BTF. The BTF comes from --image, "
            "else /boot/vmlinuz-VERSION, /usr/lib/modules/VERSION/vmlinuz, a debug vmlinux "
            "(/usr/lib/debug/boot/vmlinux-VERSION, /usr/lib/debug/lib/modules/VERSION/"
            "vmlinux), or /sys/kernel/btf/vmlinux when VERSION is the running kernel. An "
            "image whose release string is not the headers' (UTS_RELEASE in "
            "include/generated/utsrelease.h, else include/config/kernel.release) is "
            "refused. An existing vmlinux holding "
            "VERSION's BTF (Debian 13 ships one) is left alone; one holding other BTF (a "
            "copy of the running kernel's /sys/kernel/btf/vmlinux) is replaced only with "
            "--force. Nothing is written where the build directory has no "
            "tools/bpf/resolve_btfids/resolve_btfids (Debian 12's headers): Kbuild runs it "
            "whenever a vmlinux is there, and without it every module build would fail. "
            "The file written is marked as ours: --remove deletes only that."),
        epilog="exit status: 0 written, removed or already right; 1 nothing done (an input "
               "is missing: headers, image, resolve_btfids; or a vmlinux that is not ours "
               "is in the way); 2 error.",
    )
    p.add_argument("version", metavar="VERSION", help="kernel release, as in /lib/modules")
    p.add_argument("--image", metavar="FILE",
                   help="where VERSION's BTF comes from: a bzImage (vmlinuz), a vmlinux ELF "
                        "or a raw BTF file")
    p.add_argument("--build-dir", metavar="DIR",
                   help="VERSION's build directory (default /lib/modules/VERSION/build)")
    p.add_argument("--root", metavar="DIR", default="/",
                   help="look for the kernel's files below DIR (a chroot or an image being "
                        "built; default /)")
    p.add_argument("--remove", action="store_true",
                   help="delete the build directory's vmlinux if this command wrote it")
    p.add_argument("--force", action="store_true",
                   help="replace a vmlinux that is not ours and holds other BTF; use an "
                        "image whose release cannot be read")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=run)


class Source(NamedTuple):
    path: Path
    kind: str  # "bzImage", "vmlinux" (ELF) or "raw BTF"
    btf: bytes
    release: str | None  # what the image says it is; None: it says nothing
    shape: basefile.ElfShape


class Existing(NamedTuple):
    btf: bytes | None  # its .BTF (the whole file when raw BTF); None: has none
    ours: bool
    kind: str  # "ELF", "raw BTF", "symlink to ELF"..., or a reason it is unreadable


def run(args: argparse.Namespace) -> int:
    version = _check_version(args.version)
    root = Path(args.root)
    report: dict[str, Any] = {"version": version}

    def done(status: int, action: str, message: str, **extra: Any) -> int:
        report.update(action=action, message=message, **extra)
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print(f"btfreconcilectl headers: {message}",
                  file=sys.stdout if status == EXIT_OK else sys.stderr)
        return status

    build = _build_dir(args.build_dir, root, version)
    if build is None:
        where = args.build_dir or _under(root, f"/lib/modules/{version}/build")
        return done(EXIT_NOTHING, "no-headers",
                    f"nothing to do: the headers of {version} are not installed ({where} "
                    "does not exist)")
    target = build / "vmlinux"
    report.update(build_dir=str(build), vmlinux=str(target))
    headers_release = _headers_release(build)
    if headers_release != version:
        raise CliError(f"{build}: these headers are kernel {headers_release!r}, not "
                       f"{version!r} (include/generated/utsrelease.h, "
                       "include/config/kernel.release)")
    existing = _existing(target)

    if args.remove:
        if existing is None:
            return done(EXIT_NOTHING, "absent", f"nothing to remove: {target} does not exist")
        if not existing.ours:
            return done(EXIT_NOTHING, "not-ours",
                        f"left {target} alone: it was not written by btfreconcilectl")
        unlink_durable(target)
        return done(EXIT_OK, "removed", f"removed {target}")

    source = _find_source(args.image, root, version)
    if source is None:
        looked = ", ".join(str(p) for p in _candidates(root, version))
        if version == running_release():
            looked += f", {SYS_BTF}"
        return done(EXIT_NOTHING, "no-image",
                    f"nothing to do: no kernel image of {version} found (looked at {looked}); "
                    "its BTF is needed (--image FILE)")
    _check_release(source, version, args.force)
    _check_btf(source)
    sha = sha256_hex(source.btf)
    report.update(source=str(source.path), source_kind=source.kind, btf_sha256=sha,
                  btf_bytes=len(source.btf))

    action = "written"
    if existing is not None:
        if existing.btf == source.btf:
            if existing.ours:
                return done(EXIT_OK, "up-to-date",
                            f"{target} already holds {version}'s BTF (written earlier by "
                            "btfreconcilectl)")
            return done(EXIT_OK, "kept",
                        f"{target} ({existing.kind}, not ours: the distribution's or the "
                        f"user's) already holds {version}'s BTF; left alone")
        if existing.ours:
            action = "updated"
        elif not args.force:
            what = "no .BTF" if existing.btf is None else "the BTF of another kernel build"
            hint = (" (a copy of the running kernel's /sys/kernel/btf/vmlinux?)"
                    if existing.btf is not None and existing.btf == _running_btf() else "")
            return done(EXIT_NOTHING, "wrong-vmlinux",
                        f"{target} ({existing.kind}, not ours) holds {what}{hint}, not "
                        f"{version}'s: modules built against it get wrong BTF; left alone, "
                        "pass --force to replace it")
        else:
            action = "replaced"

    if not _has_resolve_btfids(build, root):
        return done(EXIT_NOTHING, "no-resolve-btfids",
                    f"nothing written: {build} has no {RESOLVE_BTFIDS}, and with a vmlinux "
                    "there Kbuild runs it on every module it gives BTF, so every module build "
                    "would fail (Debian 12's linux-kbuild-6.1 ships none); modules keep building "
                    f"without BTF. A resolve_btfids built from {version}'s source (make -C "
                    f"tools/bpf/resolve_btfids) at {build / RESOLVE_BTFIDS} lifts this")
    mark = basefile.mark_text(version, str(source.path), sha)
    data = basefile.build_base_elf(source.btf, source.shape, mark)
    _write(target, data, source.btf)
    report["bytes"] = len(data)
    verb = {"written": "wrote", "updated": "updated", "replaced": "replaced"}[action]
    return done(EXIT_OK, action,
                f"{verb} {target}: {version}'s BTF ({len(source.btf)} bytes) from "
                f"{source.path} ({source.kind})")


class BuildDirState(NamedTuple):
    """What a kernel's build directory holds for Kbuild's module BTF (build_dir_state)."""

    state: str  # no-headers | no-vmlinux | other-btf | right | unknown
    detail: str  # one line saying so


NO_HEADERS, NO_VMLINUX, OTHER_BTF, RIGHT, UNKNOWN = (
    "no-headers", "no-vmlinux", "other-btf", "right", "unknown")


def build_dir_state(version: str, root: Path = Path("/")) -> BuildDirState:
    """Whether kernel `version`'s build directory (/lib/modules/VERSION/build below `root`)
    has the vmlinux that gives out-of-tree modules their BTF, and whether that holds
    `version`'s own BTF: the same check `headers` makes before writing, for `doctor` to say
    why a module has none. Never raises: what cannot be told is state `unknown`."""
    try:
        where = _under(root, f"/lib/modules/{_check_version(version)}/build")
        build = _build_dir(None, root, version)
        if build is None:
            return BuildDirState(NO_HEADERS, f"{where} does not exist: the headers of "
                                              f"{version} are not installed")
        target = build / "vmlinux"
        shown = f"{where}/vmlinux" + ("" if build == where else f" ({target})")
        existing = _existing(target)
    except CliError as e:
        return BuildDirState(UNKNOWN, str(e))
    if existing is None:
        return BuildDirState(NO_VMLINUX, f"no vmlinux in {where}"
                                         + ("" if build == where else f" ({build})"))
    if existing.btf is None:
        return BuildDirState(OTHER_BTF, f"{shown} ({existing.kind}) holds no .BTF, not "
                                        f"{version}'s BTF")
    try:
        source = _find_source(None, root, version)
        why = f"no image of {version} found to compare it with (looked at " + \
            ", ".join(str(p) for p in _candidates(root, version)) + ")"
    except (CliError, ElfError) as e:
        source, why = None, str(e)
    if source is None:
        if existing.ours:  # `headers` checked the image's release before writing it
            return BuildDirState(RIGHT, f"{shown} was written by btfreconcilectl headers "
                                        f"from {version}'s image")
        return BuildDirState(UNKNOWN, f"{shown} is there, but whether it holds {version}'s "
                                      f"BTF cannot be told: {why}")
    if existing.btf == source.btf:
        return BuildDirState(RIGHT, f"{shown} holds {version}'s BTF (the same as "
                                    f"{source.path}'s)")
    copied = existing.btf == _running_btf() and version != running_release()
    hint = (f"the running kernel's ({running_release()}), copied from {SYS_BTF}" if copied
            else "another kernel build's")
    return BuildDirState(OTHER_BTF, f"{shown} holds BTF that is not {version}'s ({source.path}"
                                    f" differs): it is {hint}")


# --------------------------------------------------------------------------- inputs


def running_release() -> str:
    return os.uname().release


def _check_version(version: str) -> str:
    if not version or version in (".", "..") or "/" in version or "\0" in version \
            or not version.isprintable() or " " in version:
        raise CliError(f"{version!r} is not a kernel release (as in /lib/modules/VERSION)")
    return version


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _build_dir(given: str | None, root: Path, version: str) -> Path | None:
    """The build directory as a real directory path, or None when there is none. The
    default is a symlink (to /usr/src/linux-headers-VERSION on Debian); absolute links are
    taken relative to `root`, so a chroot's headers never resolve into the host's."""
    if given is not None:
        p = Path(given)
        if not p.exists():
            return None
        if not p.is_dir():
            raise CliError(f"{given}: not a directory")
        return Path(os.path.realpath(p))
    p = _resolve_under(root, f"/lib/modules/{version}/build")
    if p is None:
        return None
    try:
        st = os.stat(p)
    except OSError as e:
        raise CliError(f"{p}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{p}: not a directory")
    return p


def _resolve_under(root: Path, path: str) -> Path | None:
    """`path` (absolute, as seen from inside `root`) resolved as in a chroot at `root`: the
    symlinks of every component, absolute ones taken relative to `root`, ".." never above
    it. Debian 13's /usr/lib/modules/V/build -> ../../../src/linux-headers-V is reached
    through /lib -> usr/lib: resolving the link next to its unresolved name gives /src.
    None when a component does not exist."""
    todo = [c for c in path.split("/") if c not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        c = todo.pop(0)
        if c == "..":
            if done:
                done.pop()
            continue
        p = root.joinpath(*done, c)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise CliError(f"{p}: {e.strerror or e}") from None
        if not stat.S_ISLNK(st.st_mode):
            done.append(c)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise CliError(f"{_under(root, path)}: too many levels of symbolic links")
        link = os.readlink(p)
        if link.startswith("/"):
            done = []
        todo = [x for x in link.split("/") if x not in ("", ".")] + todo
    return root.joinpath(*done)


def _has_resolve_btfids(build: Path, root: Path) -> bool:
    """Whether Kbuild's $(objtree)/tools/bpf/resolve_btfids/resolve_btfids is there: its
    Makefile.modfinal runs `pahole -J --btf_base vmlinux` and then that program on every
    module as soon as a vmlinux is in the build directory, and a missing one fails the
    module's build (exit 127) instead of skipping its BTF. Links inside `root` resolve as in
    a chroot (Debian's headers link tools/ into linux-kbuild-V)."""
    try:
        rel = build.relative_to(root)
    except ValueError:
        prog: Path | None = build / RESOLVE_BTFIDS
    else:
        prog = _resolve_under(root, f"/{rel / RESOLVE_BTFIDS}")
    return prog is not None and prog.is_file() and os.access(prog, os.X_OK)


def _headers_release(build: Path) -> str:
    """The release the headers were made for: UTS_RELEASE in include/generated/utsrelease.h
    (what the kernel's own version string is made of), else include/config/kernel.release.
    Debian 12's headers need the first: their kernel.release says "6.1.192" where the
    kernel is "6.1.0-57-amd64"."""
    uts = _read_small(build / "include/generated/utsrelease.h")
    if uts is not None:
        m = re.search(r'^#define UTS_RELEASE "([^"]*)"', uts, re.MULTILINE)
        if m:
            return m.group(1)
    text = _read_small(build / "include/config/kernel.release")
    if text is None:
        raise CliError(f"{build}: not a kernel build directory (neither "
                       "include/generated/utsrelease.h nor include/config/kernel.release)")
    return text.strip()


def _read_small(path: Path) -> str | None:
    """A small regular file's text; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}") from None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CliError(f"{path}: not a regular file")
        try:
            return f.read(4096).decode("utf-8", "replace")
        except OSError as e:
            raise CliError(f"{path}: {e.strerror or e}") from None


def _candidates(root: Path, version: str) -> list[Path]:
    return [_under(root, p) for p in (
        f"/boot/vmlinuz-{version}", f"/usr/lib/modules/{version}/vmlinuz",
        f"/usr/lib/debug/boot/vmlinux-{version}",
        f"/usr/lib/debug/lib/modules/{version}/vmlinux")]


def _find_source(image: str | None, root: Path, version: str) -> Source | None:
    if image is not None:
        return _read_source(Path(image))
    for candidate in _candidates(root, version):
        if candidate.exists():
            return _read_source(candidate)
    if version == running_release() and SYS_BTF.exists():
        return _read_source(SYS_BTF)
    return None


def _read_source(path: Path) -> Source:
    try:
        with open(path, "rb") as f:
            head = f.read(BZIMAGE_PROBE_LEN + 0x40)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None
    sections = read_btf_sections(path, digest=False)
    if sections.btf is None:
        raise ElfError(path, "has no .BTF section: the kernel was built without "
                             "CONFIG_DEBUG_INFO_BTF, so its modules cannot have BTF")
    if is_bzimage(head):
        return Source(path, "bzImage", sections.btf, basefile.bzimage_release(path, head),
                      basefile.bzimage_shape(head, sections.btf))
    shape = basefile.elf_shape(head)
    if shape is not None and sections.compression is None:
        return Source(path, "vmlinux", sections.btf, basefile.vmlinux_release(path), shape)
    if sections.is_elf:
        raise ElfError(path, f"a {sections.compression}-compressed ELF: decompress it first")
    return Source(path, "raw BTF", sections.btf, None, basefile.host_shape(sections.btf))


def _running_btf() -> bytes | None:
    try:
        with open(SYS_BTF, "rb") as f:
            return f.read()
    except OSError:
        return None


def _check_release(source: Source, version: str, force: bool) -> None:
    """Refuse another kernel's BTF: an image that says it is another release, the running
    kernel's BTF for any other kernel, or (without --force) an image that says nothing."""
    if source.release is not None:
        if source.release != version:
            raise CliError(f"{source.path}: this {source.kind} is kernel {source.release}, "
                           f"not {version}: refusing to give {version}'s modules its BTF")
        return
    running = running_release()
    if source.btf == _running_btf():
        if version == running:
            return
        raise CliError(f"{source.path}: this is the running kernel's BTF ({running}), not "
                       f"{version}'s: modules built for {version} against it would get wrong "
                       f"BTF; use {version}'s image (--image /boot/vmlinuz-{version})")
    if not force:
        raise CliError(f"{source.path}: this {source.kind} does not say which kernel it is "
                       f"(no release string): pass --force if it is {version}'s")


def _check_btf(source: Source) -> None:
    """The kernel verifier's checks on the base BTF, so that what lands in the build
    directory is a vmlinux BTF pahole can split against (~0.8 s on a 5 MiB BTF)."""
    from ..btf.btf import Btf

    Btf.parse(source.btf, source=f"{source.path}:.BTF", validate=True)


def _existing(target: Path) -> Existing | None:
    """What `target` holds now (None: nothing). A directory, device or FIFO is an error:
    nothing this command writes may replace it."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CliError(f"{target}: {e.strerror or e}") from None
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(target)
        except OSError:
            return Existing(None, False, "dangling symlink")
    if not stat.S_ISREG(st.st_mode):
        raise CliError(f"{target}: not a regular file: refusing to replace it")
    prefix = "symlink to " if link else ""
    try:
        with open(target, "rb") as f:
            head = f.read(20)
    except OSError as e:
        raise CliError(f"{target}: {e.strerror or e}") from None
    shape = basefile.elf_shape(head)
    if shape is not None:
        try:
            found = read_elf_sections(target, {".BTF", basefile.MARK_SECTION})
        except ElfError as e:
            return Existing(None, False, f"{prefix}unreadable ELF: {e.reason}")
        ours = not link and basefile.parse_mark(found.get(basefile.MARK_SECTION),
                                                shape.little) is not None
        return Existing(found.get(".BTF"), ours, f"{prefix}ELF")
    if head[:2] in _BTF_MAGICS:
        try:
            return Existing(read_btf_sections(target, digest=False).btf, False,
                            f"{prefix}raw BTF")
        except ElfError as e:
            return Existing(None, False, f"{prefix}unreadable raw BTF: {e.reason}")
    return Existing(None, False, f"{prefix}neither ELF nor BTF")


def _write(target: Path, data: bytes, btf: bytes) -> None:
    """Atomically replace `target` (a symlink there is replaced, never written through: it
    may point at a debug vmlinux), checking what was written reads back as `btf`."""
    from ..cache import atomic_output, write_all

    def verify(tmp: Path) -> None:
        if read_elf_sections(tmp, {".BTF"}).get(".BTF") != btf:
            raise CliError(f"{target}: the file written does not read back as the BTF given")

    with atomic_output(target, mode=0o644, verify=verify) as f:
        write_all(f, data)

