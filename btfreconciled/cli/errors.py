"""What subcommands raise for a user-facing failure, and the exit statuses they return.

Kept out of main.py: `python -m btfreconciled.cli.main` runs main.py as __main__, and a
subcommand importing `.main` would get a second copy whose CliError the first never catches.
"""

from __future__ import annotations

from ..errors import ErrorCode

EXIT_OK, EXIT_INCOMPATIBLE, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2. `code` is the daemon's
    code for a refused request (errors.py), for a command that waits on some of them."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def _escapes() -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    # Python's splitlines() breaks at these, and bidi overrides reorder what a terminal shows
    for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[c] = f"\\u{c:04x}"
    return table


_ESCAPES = _escapes()


def printable(text: str) -> str:
    """`text` safe to print as (part of) one terminal line: control characters (newlines,
    escape sequences, C1 codes, bidi overrides) become visible backslash escapes. File names
    and anything the daemon or the cache says may hold them; printed raw, a newline splits
    an error in two and an escape sequence reprograms the user's terminal."""
    return text.translate(_ESCAPES)


def printable_lines(text: str) -> str:
    """Like printable(), for text that is several lines on purpose: its own newlines stay."""
    return "\n".join(map(printable, text.split("\n")))
