"""Where a command's output file goes (`reconcile -o`, `distill -o` / `--in-place`).

Every output is written to a temporary file in the target's directory and renamed over the
target.  A rename replaces whatever directory entry has that name, so the target must be
chosen with care: as root, `-o /dev/null` would otherwise replace the null device with a
regular file.  The rules, the same for every command:

* a character or block device, FIFO or socket is never replaced (one-line error);
* a symlink is written through to the regular file it points to, as `cp` does (module trees
  link into DKMS directories; the link stays a link); a dangling link or a loop is an error;
* a directory is an error; a name that does not exist yet is created.

Errors name the path the user gave, not the resolved target or a temporary file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class OutputError(Exception):
    """The output path cannot be written; ``str()`` is one line naming the user's path."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))


def output_target(path: str | os.PathLike[str]) -> Path:
    """The file to replace for the user's output ``path`` (see the module docstring).

    Returns ``path`` itself when nothing exists there yet, else the regular file it names
    with every symlink resolved.  Raises :class:`OutputError`.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        try:
            if stat.S_ISLNK(os.lstat(p).st_mode):
                # cp refuses too: the link's target may be meant to be somewhere else
                raise OutputError(p, "not writing through a dangling symlink") from None
        except FileNotFoundError:
            pass
        except OSError as e:
            raise OutputError(p, _reason(e)) from None
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(p, f"no such directory {parent}") from None
        return p
    except OSError as e:  # ELOOP, ENOTDIR, EACCES, ENAMETOOLONG
        raise OutputError(p, _reason(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(p, "is a directory")
    for test, what in _KINDS:
        if test(st.st_mode):
            raise OutputError(p, f"is {what}, not a regular file: refusing to replace it")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(p, "not a regular file: refusing to replace it")
    # a link in a parent directory needs no resolving: the rename goes through it
    return Path(os.path.realpath(p)) if p.is_symlink() else p
