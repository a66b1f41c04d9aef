"""The one error type of the BTF layer: a one-line message that says what and where."""

from __future__ import annotations

from ..errors import ErrorCode


class BtfError(Exception):
    """Malformed or unusable BTF.

    `source` names the file (and section), `offset` is a byte offset into that blob and
    `type_id` the type the problem was found in; str() renders them as one line. `code` says
    which kind of malformation it is (errors.py), for callers that tell them apart.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<memory>",
        offset: int | None = None,
        type_id: int | None = None,
        code: ErrorCode = ErrorCode.BTF_INVALID,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.source = source
        self.offset = offset
        self.type_id = type_id

    def __reduce__(self) -> tuple:
        # Pickles with its where-fields (Exception's default keeps only the message), so that
        # a worker process can hand the error to its parent.
        return (_rebuild, (type(self), self.message, self.source, self.offset, self.type_id,
                           self.code))

    def __str__(self) -> str:
        where = [self.source]
        if self.type_id is not None:
            where.append(f"type [{self.type_id}]")
        if self.offset is not None:
            where.append(f"offset {self.offset:#x}")
        return f"{': '.join(where)}: {self.message}"


def _rebuild(cls: type[BtfError], message: str, source: str, offset: int | None,
             type_id: int | None, code: ErrorCode = ErrorCode.BTF_INVALID) -> BtfError:
    return cls(message, source=source, offset=offset, type_id=type_id, code=code)
