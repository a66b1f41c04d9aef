"""Failure classes: one code per kind of failure that a caller (a test, the daemon, the CLI)
tells apart from others.

An error's message is for people (one line naming the file, section, offset or type id) and
may be reworded; its `code` is for programs and stays. Code that decides something by the
kind of failure reads `e.code`, never the message text. The exception classes (`BtfError`,
`RescueError`, `MergeError`, `ControlError`, `CliError`, ...) stay what callers catch; the
code says which failure of that class it was. A code's value is its stable spelling in JSON
(the control protocol's `"code"`).

Only failures something tells apart have their own code; the rest of a class share its
general one (e.g. `BTF_INVALID`: whatever else the kernel's verifier rejects).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    # ---- btf/: the BTF blob (BtfError)
    BTF_TRUNCATED = "btf-truncated"  # header, record or section runs past the data
    BTF_BAD_MAGIC = "btf-bad-magic"  # not BTF at all
    BTF_MISSING = "btf-missing"  # the file has no .BTF section: missing, not corrupt
    BTF_NOT_BASE = "btf-not-base"  # split BTF where a vmlinux (base) BTF is needed
    BTF_BAD_HEADER = "btf-bad-header"  # version, flags, hdr_len, section placement, byte order
    BTF_BAD_STRINGS = "btf-bad-strings"  # string section or a string offset
    BTF_UNKNOWN_KIND = "btf-unknown-kind"
    BTF_RECORD_OVERRUN = "btf-record-overrun"  # a record's vlen runs past the type section
    BTF_TOO_MANY_TYPES = "btf-too-many-types"
    BTF_BAD_TYPE_ID = "btf-bad-type-id"  # a reference past the last type id
    BTF_LOOP = "btf-loop"  # a reference loop, or a type that contains itself by value
    BTF_INVALID = "btf-invalid"  # anything else the kernel's verifier or libbpf rejects
    BTF_NO_RELOCATE = "btf-no-relocate"  # valid, but does not relocate onto the base given

    # ---- inputs.py, elf.py, kimage.py, elfwrite.py: files read or rewritten (ElfError)
    INPUT_UNREADABLE = "input-unreadable"  # cannot open or read it: missing, permissions, I/O
    INPUT_NOT_REGULAR = "input-not-regular"  # a FIFO, device, directory, /proc or empty file
    INPUT_TOO_LARGE = "input-too-large"  # over a size bound, before or after decompression
    ELF_INVALID = "elf-invalid"  # truncated, corrupt, not ELF or BTF, or not rewritable so
    ELF_WRITE_FAILED = "elf-write-failed"  # writing the new file or its backup failed

    # ---- reconcile/rescue.py: a classic module that cannot be rescued (RescueError)
    RESCUE_NO_BTF = "rescue-no-btf"  # the module has no .BTF
    RESCUE_ALREADY_DISTILLED = "rescue-already-distilled"  # it carries .BTF.base already
    RESCUE_CORRUPT_BTF = "rescue-corrupt-btf"  # its .BTF cannot be read (CorruptBtf)
    RESCUE_NOT_THE_BUILD = "rescue-not-the-build"  # the base given is not its build
    RESCUE_NO_BUILD = "rescue-no-build"  # no candidate is its build
    RESCUE_DISTILL_FAILED = "rescue-distill-failed"
    RESCUE_NO_RECONCILE = "rescue-no-reconcile"  # distilled, but does not fit the target

    # ---- reconcile/merge.py: a merged BTF that cannot be written (MergeError)
    MERGE_BASE_NOT_VMLINUX = "merge-base-not-vmlinux"
    MERGE_NOT_SPLIT = "merge-not-split"  # a module's BTF is not split BTF on the vmlinux
    MERGE_CHANGED = "merge-changed"  # a module's file changed while being merged
    MERGE_TOO_MANY_TYPES = "merge-too-many-types"
    MERGE_TOO_MANY_STRINGS = "merge-too-many-strings"

    # ---- daemon/control.py: the control protocol's answers (ControlError); these values
    # are the protocol's `"code"` strings, which clients read
    BAD_REQUEST = "bad-request"
    PERMISSION_DENIED = "permission-denied"
    PENDING = "pending"  # the module is being processed: worth asking again
    UNKNOWN_MODULE = "unknown-module"
    INTERNAL = "internal"  # a bug answering one request
    BUSY = "busy"  # too many control connections: try again
    EVICTED = "evicted"  # an idle connection closed to make room for a new one
    TIMEOUT = "timeout"  # no complete request in time
