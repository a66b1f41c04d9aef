"""`bpftool btf dump ... format raw`, line for line.

Works on the wire words rather than on decoded types: formatting every record of a vmlinux
(~300k lines) is the whole cost of a dump, so each kind is formatted straight from its words.
The reference is bpftool's dump_btf_type() in tools/bpf/bpftool/btf.c.
"""

from __future__ import annotations

import bisect
import errno
import os
import signal
from array import array
from collections.abc import Callable
from typing import BinaryIO, NoReturn

from .btf import Btf
from .kinds import (
    FUNC_EXTERN,
    FUNC_GLOBAL,
    FUNC_STATIC,
    INT_BOOL,
    INT_CHAR,
    INT_SIGNED,
    K_ARRAY,
    K_CONST,
    K_DATASEC,
    K_DECL_TAG,
    K_ENUM,
    K_ENUM64,
    K_FLOAT,
    K_FUNC,
    K_FUNC_PROTO,
    K_FWD,
    K_INT,
    K_PTR,
    K_RESTRICT,
    K_TYPE_TAG,
    K_TYPEDEF,
    K_VAR,
    K_VOLATILE,
    MAX_TYPE,
    Kind,
)
from .record import COMPOSITE_KINDS

# bpftool's btf_kind_str[]: the kind's name, "UNKNOWN" for 0.
KIND_STR = ("UNKNOWN", *(k.name for k in Kind if k))
_INT_ENC = {0: "(none)", INT_SIGNED: "SIGNED", INT_CHAR: "CHAR", INT_BOOL: "BOOL"}
# Kinds printed alike (frozensets of plain ints: one test in the hot loop)
_TYPE_ID_ONLY = frozenset({K_PTR, K_TYPEDEF, K_CONST, K_VOLATILE, K_RESTRICT, K_TYPE_TAG})
_ENUMS = frozenset({K_ENUM, K_ENUM64})
# FUNC linkage (in vlen) and VAR linkage share numbers and names
_LINKAGE = {FUNC_STATIC: "static", FUNC_GLOBAL: "global", FUNC_EXTERN: "extern"}


class _Strings:
    """The string sections of a BTF and its bases as one str, indexed by string offset.

    Decoded as latin-1 (one char per byte) so that offsets need no translation and the
    dump's bytes come back exactly on encoding; bpftool prints names as raw bytes too.
    A name is `text[off:text.index("\\0", off)]`: that costs ~0.15 us more per lookup than
    a dict of every string, but building such a dict for a vmlinux (124k strings) costs
    ~35 ms before the first line can be printed, more than the lookups it saves in either
    of the two dump processes."""

    def __init__(self, btf: Btf) -> None:
        chain: list[bytes] = []
        b: Btf | None = btf
        while b is not None:
            chain.append(b.strings)
            b = b.base
        # A split BTF's offsets continue its base's, so the sections simply concatenate.
        self.text = b"".join(reversed(chain)).decode("latin-1")

    def name(self, off: int) -> str:
        """bpftool's btf_str(): '(anon)' for 0, '(invalid)' past the end."""
        if not off:
            return "(anon)"
        if off >= len(self.text):
            return "(invalid)"
        return self.text[off : self.text.index("\0", off)]


class _CheckedText(str):
    """The string text for BTF whose name offsets may run past the end (never the case once
    validated or kernel-verified): the hot loop's `text[off:text.index("\\0", off)]` then
    gives '(invalid)' as bpftool does, instead of raising."""

    def index(self, sub: str, start: int = 0, *args: int) -> int:  # type: ignore[override]
        return start if start >= len(self) else super().index(sub, start, *args)

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        if isinstance(key, slice) and key.start is not None and key.start >= len(self):
            return "(invalid)"
        return super().__getitem__(key)


def dump_raw_lines(btf: Btf, first: int = 0, last: int | None = None) -> list[str]:
    """The raw dump of `btf`'s own types, one string per line; a split BTF prints only its
    split types, numbered from its first split id, like `bpftool btf dump file X -B BASE`.
    `first`/`last` select a range of this BTF's own records (local indexes)."""
    return _decode(_encode(_record_texts(btf, first, last))).split("\n")[:-1]


def _record_texts(btf: Btf, first: int = 0, last: int | None = None,
                  strings: _Strings | None = None) -> list[str]:
    """One latin-1 string per record (its line and its member lines, joined by newlines)
    for this BTF's own records `first` to `last` (local indexes)."""
    w, offs = btf.wire_records()
    if last is None:
        last = len(offs)
    start = offs[first] if first < len(offs) else len(w)
    stop = offs[last] if last < len(offs) else len(w)
    texts, _ = _format_words(btf, w, start, stop, btf.start_id + first,
                             strings or _Strings(btf))
    return texts


def _format_words(btf: Btf, w: array, start: int, stop: int, tid: int, strings: _Strings,
                  limit: int = MAX_TYPE) -> tuple[list[str], int]:
    """The texts of the records that start in words [start, stop), at most `limit` of them,
    the first being type `tid`; and the word where the next record starts."""
    try:
        return _format(btf, w, start, stop, tid, limit, strings.text, strings)
    except ValueError:  # a name offset past the end of the strings: legal only unvalidated
        return _format(btf, w, start, stop, tid, limit, _CheckedText(strings.text), strings)


def _format(btf: Btf, w: array, i: int, stop: int, tid: int, limit: int,  # noqa: C901
            T: str, strings: _Strings) -> tuple[list[str], int]:  # noqa: N803
    # Hot loop: ~300k lines for a vmlinux. Each record is formatted from its wire words
    # into one string, and records are tested in order of frequency in kernel BTF. A name
    # is inlined as `T[o:fi(Z, o)] if o else A`: a call per name would cost more than the
    # rest of its line.
    fi = T.index
    Z = "\0"  # noqa: N806
    A = "(anon)"  # noqa: N806
    out: list[str] = []
    emit = out.append
    tid -= 1
    last_tid = tid + limit
    while i < stop and tid < last_tid:
        tid += 1
        o = w[i]
        info = w[i + 1]
        st = w[i + 2]
        # inline info-word fields (record.kind_of & co.): per record of a vmlinux
        kind = info >> 24 & 0x1F
        name = T[o:fi(Z, o)] if o else A
        i += 3
        if kind == K_FUNC:
            emit(f"[{tid}] FUNC '{name}' type_id={st} linkage="
                 f"{_LINKAGE.get(info & 0xFFFF, '(unknown)')}")
        elif kind == K_FUNC_PROTO:
            vlen = info & 0xFFFF
            end = i + 2 * vlen
            emit(f"[{tid}] FUNC_PROTO '{name}' ret_type_id={st} vlen={vlen}" + "".join([
                f"\n\t'{T[p:fi(Z, p)] if p else A}' type_id={t}"
                for p, t in zip(w[i:end:2], w[i + 1 : end : 2])]))
            i = end
        elif kind in _TYPE_ID_ONLY:
            emit(f"[{tid}] {KIND_STR[kind]} '{name}' type_id={st}")
        elif kind in COMPOSITE_KINDS:
            vlen = info & 0xFFFF
            end = i + 3 * vlen
            head = f"[{tid}] {KIND_STR[kind]} '{name}' size={st} vlen={vlen}"
            members = zip(w[i:end:3], w[i + 1 : end : 3], w[i + 2 : end : 3])
            if info >> 31:  # kind_flag: bitfield size in the top 8 bits of the offset
                emit(head + "".join([
                    f"\n\t'{T[m:fi(Z, m)] if m else A}' type_id={t} bits_offset={b & 0xFFFFFF}"
                    + (f" bitfield_size={b >> 24}" if b >> 24 else "")
                    for m, t, b in members]))
            else:
                emit(head + "".join([
                    f"\n\t'{T[m:fi(Z, m)] if m else A}' type_id={t} bits_offset={b}"
                    for m, t, b in members]))
            i = end
        elif kind == K_ARRAY:
            emit(f"[{tid}] ARRAY '{name}' type_id={w[i]} index_type_id={w[i + 1]} "
                 f"nr_elems={w[i + 2]}")
            i += 3
        elif kind in _ENUMS:
            vlen = info & 0xFFFF
            signed = info >> 31
            head = (f"[{tid}] {KIND_STR[kind]} '{name}' encoding="
                    f"{'SIGNED' if signed else 'UNSIGNED'} size={st} vlen={vlen}")
            if kind == K_ENUM:
                end = i + 2 * vlen
                values = zip(w[i:end:2], w[i + 1 : end : 2])
                if signed:
                    values = ((e, v - (v >> 31 << 32)) for e, v in values)
                emit(head + "".join([f"\n\t'{T[e:fi(Z, e)] if e else A}' val={v}"
                                     for e, v in values]))
            else:  # bpftool: %lldLL when signed, %lluULL otherwise
                end = i + 3 * vlen
                values = ((e, lo | hi << 32) for e, lo, hi in
                          zip(w[i:end:3], w[i + 1 : end : 3], w[i + 2 : end : 3]))
                if signed:
                    emit(head + "".join([f"\n\t'{T[e:fi(Z, e)] if e else A}' "
                                         f"val={v - (v >> 63 << 64)}LL" for e, v in values]))
                else:
                    emit(head + "".join([f"\n\t'{T[e:fi(Z, e)] if e else A}' val={v}ULL"
                                         for e, v in values]))
            i = end
        elif kind == K_VAR:
            emit(f"[{tid}] VAR '{name}' type_id={st}, linkage={_LINKAGE.get(w[i], '(unknown)')}")
            i += 1
        elif kind == K_DECL_TAG:
            idx = w[i]
            emit(f"[{tid}] DECL_TAG '{name}' type_id={st} "
                 f"component_idx={idx - (idx >> 31 << 32)}")
            i += 1
        elif kind == K_INT:
            v = w[i]
            i += 1
            emit(f"[{tid}] INT '{name}' size={st} bits_offset={v >> 16 & 0xFF} "
                 f"nr_bits={v & 0xFF} encoding={_INT_ENC.get(v >> 24 & 0x0F, 'UNKN')}")
        elif kind == K_FWD:
            emit(f"[{tid}] FWD '{name}' fwd_kind={'union' if info >> 31 else 'struct'}")
        elif kind == K_DATASEC:
            vlen = info & 0xFFFF
            end = i + 3 * vlen
            lines = [f"[{tid}] DATASEC '{name}' size={st} vlen={vlen}"]
            for j in range(i, end, 3):
                vt = w[j]
                line = f"\ttype_id={vt} offset={w[j + 1]} size={w[j + 2]}"
                if vt < btf.type_count:
                    vk, vno = _kind_and_name_off(btf, vt)
                    line += f" ({KIND_STR[vk]} '{strings.name(vno) if vno else ''}')"
                lines.append(line)
            emit("\n".join(lines))
            i = end
        elif kind == K_FLOAT:
            emit(f"[{tid}] FLOAT '{name}' size={st}")
        else:
            emit(f"[{tid}] {KIND_STR[kind]} '{name}'")
    return out, i


def _kind_and_name_off(btf: Btf, type_id: int) -> tuple[int, int]:
    """What a DATASEC entry's line names: its type's kind and name offset (void: 0, 0)."""
    if type_id == 0:
        return 0, 0
    return int(btf.kind_of(type_id)), btf.name_off_of(type_id)


# Below this many type-section words (a ~20k-type BTF) a second process costs more than it
# saves.
PARALLEL_MIN_WORDS = 100_000
# Records rendered, encoded and written at a time. Holding a whole vmlinux dump (~300k line
# strings, then their join and its encoding: ~50 MB) costs more in first-touch page faults
# than in formatting; chunks this size keep reusing the same few hundred KiB instead.
CHUNK_TYPES = 2048
# The parent renders the records that start in the first SPLIT_AT of the type section's
# words, the child the rest. Measured on the vmlinux BTF of Linux 6.1, 6.12 and 6.18: the
# formatting work is even at 52-57% of the words (structs, whose member lines cost the most
# per word, come first), and the child also runs the record scan, ~8% of the work.
SPLIT_AT = 0.6
# When this process must first validate the BTF (write_raw's `before_output`), it renders a
# smaller first part. Measured on a 6.18 vmlinux (CPU time): validation 245 ms, formatting
# everything 320 ms, the scan 40 ms; at 20% of the words both processes finish together.
SPLIT_AT_AFTER_CHECK = 0.2


def write_raw(btf: Btf, out: BinaryIO, *,
              before_output: Callable[[], None] | None = None) -> None:
    """Write the raw dump to a binary stream. A large BTF (a vmlinux: ~300k lines, where
    formatting is the whole cost) is rendered by two processes: a forked child renders the
    later records into a memfd while this process renders and writes the first ones; the
    child's text then goes to `out` by sendfile(), without passing through Python.

    Neither process needs the record scan to start: this one walks the words from the first
    record, and only the child, which must find where its records begin, scans (for a
    parse(defer_scan=True), that is the first scan).

    `before_output` (strict validation of a BTF parsed unvalidated) runs in this process
    before anything is written to `out`, while the child is already rendering into its
    memfd; when it raises, the child is killed and `out` gets nothing."""
    w = btf.wire_words()
    strings = _Strings(btf)
    if (len(w) < PARALLEL_MIN_WORDS or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork")
            or not hasattr(os, "memfd_create")):
        if before_output is not None:
            before_output()
        _render(btf, w, 0, len(w), btf.start_id, strings, out.write)
        return
    split = int(len(w) * (SPLIT_AT if before_output is None else SPLIT_AT_AFTER_CHECK))
    spill = os.memfd_create("btf-dump", os.MFD_CLOEXEC)
    failure_r, failure_w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            _render_later_records(btf, split, strings, spill, failure_w)
        os.close(failure_w)
        failure_w = -1
        try:
            if before_output is not None:
                before_output()
            _render(btf, w, 0, split, btf.start_id, strings, out.write)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            _, status = os.waitpid(pid, 0)
        if status:
            raise _received_failure(failure_r, status)
        out.flush()
        _copy_out(spill, out)
    finally:
        for fd in (spill, failure_r, failure_w):
            if fd >= 0:
                os.close(fd)


def _render_later_records(btf: Btf, split: int, strings: _Strings, spill: int,
                          failure_w: int) -> NoReturn:
    """The forked child's part of write_raw: the records from the first one at or after
    word `split` into the memfd `spill`, then exit without cleanup (a failure goes to the
    parent through `failure_w`)."""
    status = 1
    try:
        w, offs = btf.wire_records()
        mid = bisect.bisect_left(offs, split)
        start = offs[mid] if mid < len(offs) else len(w)
        _render(btf, w, start, len(w), btf.start_id + mid, strings,
                lambda data: _write_all(spill, data))
        status = 0
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
        if isinstance(e, OSError) and e.filename is None:
            e.filename = "memfd:btf-dump"  # not the caller's output: say which file
        _send_failure(failure_w, e)
    finally:
        os._exit(status)


def _send_failure(fd: int, exc: BaseException) -> None:
    """In the child: the exception, pickled (BtfError and OSError keep what and where)."""
    import pickle

    try:
        data = pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception still has a message
        data = b""
    if not data or len(data) > 4096:  # one write into the pipe, which nobody drains yet
        data = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {str(exc)[:2000]}"))
    os.write(fd, data)


def _received_failure(fd: int, status: int) -> BaseException:
    import pickle

    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    try:
        return pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - killed before it could say why
        return RuntimeError(f"dump worker process failed (wait status {status:#x})")


def _render(btf: Btf, w: array, start: int, stop: int, tid: int, strings: _Strings,
            write) -> None:  # noqa: ANN001
    """Format the records that start in words [start, stop) and write them, chunk by
    chunk; `tid` is the first one's type id."""
    while start < stop:
        texts, start = _format_words(btf, w, start, stop, tid, strings, CHUNK_TYPES)
        tid += len(texts)
        write(_encode(texts))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_out(spill: int, out: BinaryIO) -> None:
    size = os.lseek(spill, 0, os.SEEK_END)
    try:
        out_fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (e.g. BytesIO)
        out.write(os.pread(spill, size, 0))
        return
    sent = 0
    while sent < size:
        try:
            done = os.sendfile(out_fd, spill, sent, size - sent)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS) or sent:
                raise
            out.write(os.pread(spill, size, 0))  # an output sendfile() cannot write to
            return
        if done == 0:
            raise OSError(errno.EIO, "sendfile made no progress")
        sent += done


def _encode(texts: list[str]) -> bytes:
    if not texts:
        return b""
    texts.append("")
    return "\n".join(texts).encode("latin-1")


def _decode(data: bytes) -> str:
    """The dump as text, names decoded as UTF-8 like everything else we print."""
    return data.decode("utf-8", "surrogateescape")


def dump_raw(btf: Btf) -> str:
    return _decode(_encode(_record_texts(btf)))
