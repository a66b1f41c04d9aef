"""Which opened files a command may read as input (modules, vmlinux, kernel images, BTF).

Decided on the open descriptor's fstat, before a byte is read: a name can be swapped between
a stat and an open, a descriptor cannot. Only regular files with a size qualify. A FIFO or
device would block or never end; a file in /proc is a kernel interface that only looks like
a file (S_ISREG with st_size 0, and reading some of them has side effects: every read of
/proc/kmsg consumes kernel log messages nobody else will see). The files in /sys/kernel/btf
are sysfs binary attributes, which report their real size, and stay readable.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from .errors import ErrorCode

_KIND_OF_MODE = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO"),
                 (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
                 (stat.S_ISSOCK, "is a socket"))


@functools.cache
def _procfs_device() -> int | None:
    try:
        return os.stat("/proc").st_dev
    except OSError:
        return None


def input_refusal(st: os.stat_result) -> str | None:
    """Why the file `st` (an fstat of the opened input) must not be read, or None."""
    if not stat.S_ISREG(st.st_mode):
        why = next((w for test, w in _KIND_OF_MODE if test(st.st_mode)), "not a regular file")
        return f"{why}, not a regular file"
    if st.st_dev == _procfs_device():
        return "a /proc file, not a regular file: refusing to read it"
    if st.st_size == 0:
        # also kernel files elsewhere (debugfs, another /proc instance) report size 0
        return "empty file (size 0): refusing to read it"
    return None


class ElfError(Exception):
    """A file could not be read or written as BTF-carrying ELF; message is one line, `code`
    (errors.py) says whether the file could not be read, was refused (not a regular file,
    too large), is not valid, or could not be written."""

    def __init__(self, path: str | os.PathLike[str], reason: str,
                 code: ErrorCode = ErrorCode.ELF_INVALID) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        self.code = code
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple:
        # Exception's default would call ElfError(message): keep path, reason and code
        return (type(self), (self.path, self.reason, self.code))


def open_regular(path: Path, *, follow_symlinks: bool = True) -> tuple[int, int]:
    """(fd, size) of a regular file. O_NONBLOCK: opening a FIFO must not wait for a writer;
    the type is then checked on the open descriptor (no stat-then-open race)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ElfError(path, f"cannot read: {e.strerror or e}",
                       ErrorCode.INPUT_UNREADABLE) from None
    try:
        st = os.fstat(fd)
        why = input_refusal(st)
        if why is not None:
            raise ElfError(path, why, ErrorCode.INPUT_NOT_REGULAR)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size
