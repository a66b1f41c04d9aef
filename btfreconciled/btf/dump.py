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
from collections import ChainMap
from collections.abc import Mapping
from itertools import accumulate
from typing import BinaryIO

from .btf import Btf
from .kinds import FUNC_EXTERN, FUNC_GLOBAL, FUNC_STATIC, INT_BOOL, INT_CHAR, INT_SIGNED

KIND_STR = (
    "UNKNOWN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE",
    "CONST", "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG",
    "ENUM64",
)
_INT_ENC = {0: "(none)", INT_SIGNED: "SIGNED", INT_CHAR: "CHAR", INT_BOOL: "BOOL"}
# FUNC linkage (in vlen) and VAR linkage share numbers and names
_LINKAGE = {FUNC_STATIC: "static", FUNC_GLOBAL: "global", FUNC_EXTERN: "extern"}
_PLUS_ONE = (1).__add__


class _Names:
    """Offset -> printable name for a BTF and its bases, as bpftool's btf_str() prints it.

    `fast` is a plain dict (or, for split BTF, a ChainMap over the base's) of every string
    start; subscripting it raises KeyError for anything else. The _Names object itself
    answers every offset: string starts, offsets into the middle of a string, and invalid
    offsets past the end."""

    def __init__(self, btf: Btf) -> None:
        self._chain: list[tuple[int, bytes]] = []
        maps: list[dict[int, str]] = []
        b: Btf | None = btf
        while b is not None:
            self._chain.append((b.start_str_off, b.strings))
            maps.append(_string_starts(b))
            b = b.base
        self._end = btf.str_end
        self._extra: dict[int, str] = {}
        # A base's map is shared by every split BTF dumped on it, so it is never copied.
        self.fast: Mapping[int, str] = maps[0] if len(maps) == 1 else ChainMap(*maps)

    def __getitem__(self, off: int) -> str:
        s = self.fast.get(off)
        if s is not None:
            return s
        s = self._extra.get(off)
        if s is not None:
            return s
        if off >= self._end:
            s = "(invalid)"
        else:
            for start, strs in self._chain:
                if off >= start:
                    rel = off - start
                    s = strs[rel : strs.find(b"\0", rel)].decode("utf-8", "surrogateescape")
                    break
        self._extra[off] = s
        return s


def _string_starts(btf: Btf) -> dict[int, str]:
    """Every string start of `btf`'s own string section -> its text (cached on the Btf).
    Offset 0 is no name at all, which bpftool prints as '(anon)'."""
    cached = getattr(btf, "_dump_names", None)
    if cached is not None:
        return cached
    strs = btf.strings
    # The section ends with NUL, so split() yields a final '' that is not a string.
    if strs.isascii():  # kernel BTF: split the text once, no per-string bytes objects
        texts = strs.decode("ascii").split("\0")
        texts.pop()
        lengths = map(len, texts)
    else:
        parts = strs.split(b"\0")
        parts.pop()
        texts = [p.decode("utf-8", "surrogateescape") for p in parts]
        lengths = map(len, parts)
    starts = accumulate(map(_PLUS_ONE, lengths), initial=btf.start_str_off)
    by_off = dict(zip(starts, texts, strict=False))
    if btf.start_str_off == 0:
        by_off[0] = "(anon)"
    btf._dump_names = by_off  # type: ignore[attr-defined]
    return by_off


def dump_raw_lines(btf: Btf, first: int = 0, last: int | None = None,
                   names: _Names | None = None) -> list[str]:
    """The raw dump of `btf`'s own types, one string per line; a split BTF prints only its
    split types, numbered from its first split id, like `bpftool btf dump file X -B BASE`.
    `first`/`last` select a range of this BTF's own records (local indexes)."""
    return "\n".join(_record_texts(btf, first, last, names)).split("\n")


def _record_texts(btf: Btf, first: int = 0, last: int | None = None,
                  names: _Names | None = None) -> list[str]:
    """One string per record: its line and its member lines, joined by newlines."""
    if names is None:
        names = _Names(btf)
    try:
        return _format(btf, first, last, names.fast, names)
    except KeyError:
        # A name offset that is no string start (into the middle of a string, or past the
        # end): legal or reported by bpftool alike, and rare enough to redo slowly.
        return _format(btf, first, last, names, names)


def _format(btf: Btf, first: int, last: int | None, N: Mapping[int, str],  # noqa: N803, C901
            names: _Names) -> list[str]:
    # Hot loop: ~300k lines for a vmlinux. Each record is formatted from its wire words
    # into one string, and records are tested in order of frequency in kernel BTF.
    w, offs = btf.wire_records()
    if last is None:
        last = len(offs)
    total = btf.type_count
    kinds_of = _kind_lookup(btf)
    out: list[str] = []
    emit = out.append
    i = offs[first] if first < len(offs) else len(w)
    n = offs[last] if last < len(offs) else len(w)
    tid = btf.start_id + first - 1
    while i < n:
        tid += 1
        info = w[i + 1]
        st = w[i + 2]
        kind = info >> 24 & 0x1F
        name = N[w[i]]
        i += 3
        if kind == 12:  # FUNC
            emit(f"[{tid}] FUNC '{name}' type_id={st} linkage="
                 f"{_LINKAGE.get(info & 0xFFFF, '(unknown)')}")
        elif kind == 13:  # FUNC_PROTO
            vlen = info & 0xFFFF
            head = f"[{tid}] FUNC_PROTO '{name}' ret_type_id={st} vlen={vlen}"
            if vlen == 0:
                emit(head)
            elif vlen == 1:
                emit(f"{head}\n\t'{N[w[i]]}' type_id={w[i + 1]}")
            elif vlen == 2:
                emit(f"{head}\n\t'{N[w[i]]}' type_id={w[i + 1]}"
                     f"\n\t'{N[w[i + 2]]}' type_id={w[i + 3]}")
            else:
                emit(head + "".join([f"\n\t'{N[w[j]]}' type_id={w[j + 1]}"
                                     for j in range(i, i + 2 * vlen, 2)]))
            i += 2 * vlen
        elif kind == 2 or kind == 8 or kind == 10 or kind == 9 or kind == 11 or kind == 18:
            emit(f"[{tid}] {KIND_STR[kind]} '{name}' type_id={st}")
        elif kind == 4 or kind == 5:  # STRUCT UNION
            vlen = info & 0xFFFF
            end = i + 3 * vlen
            head = f"[{tid}] {'STRUCT' if kind == 4 else 'UNION'} '{name}' size={st} vlen={vlen}"
            if info >> 31:  # kind_flag: bitfield size in the top 8 bits of the offset
                emit(head + "".join([
                    f"\n\t'{N[w[j]]}' type_id={w[j + 1]} bits_offset={w[j + 2] & 0xFFFFFF}"
                    + (f" bitfield_size={w[j + 2] >> 24}" if w[j + 2] >> 24 else "")
                    for j in range(i, end, 3)]))
            else:
                emit(head + "".join([f"\n\t'{N[w[j]]}' type_id={w[j + 1]} bits_offset={w[j + 2]}"
                                     for j in range(i, end, 3)]))
            i = end
        elif kind == 3:  # ARRAY
            emit(f"[{tid}] ARRAY '{name}' type_id={w[i]} index_type_id={w[i + 1]} "
                 f"nr_elems={w[i + 2]}")
            i += 3
        elif kind == 6:  # ENUM
            vlen = info & 0xFFFF
            end = i + 2 * vlen
            if info >> 31:  # signed values
                vals = "".join([f"\n\t'{N[w[j]]}' val={w[j + 1] - (w[j + 1] >> 31 << 32)}"
                                for j in range(i, end, 2)])
            else:
                vals = "".join([f"\n\t'{N[w[j]]}' val={w[j + 1]}" for j in range(i, end, 2)])
            emit(f"[{tid}] ENUM '{name}' encoding={'SIGNED' if info >> 31 else 'UNSIGNED'}"
                 f" size={st} vlen={vlen}{vals}")
            i = end
        elif kind == 14:  # VAR
            emit(f"[{tid}] VAR '{name}' type_id={st}, linkage={_LINKAGE.get(w[i], '(unknown)')}")
            i += 1
        elif kind == 17:  # DECL_TAG
            idx = w[i]
            emit(f"[{tid}] DECL_TAG '{name}' type_id={st} "
                 f"component_idx={idx - (idx >> 31 << 32)}")
            i += 1
        elif kind == 1:  # INT
            v = w[i]
            i += 1
            emit(f"[{tid}] INT '{name}' size={st} bits_offset={v >> 16 & 0xFF} "
                 f"nr_bits={v & 0xFF} encoding={_INT_ENC.get(v >> 24 & 0x0F, 'UNKN')}")
        elif kind == 7:  # FWD
            emit(f"[{tid}] FWD '{name}' fwd_kind={'union' if info >> 31 else 'struct'}")
        elif kind == 19:  # ENUM64: bpftool prints %lldLL when signed, %lluULL otherwise
            vlen = info & 0xFFFF
            end = i + 3 * vlen
            signed = info >> 31
            lines = [f"[{tid}] ENUM64 '{name}' encoding={'SIGNED' if signed else 'UNSIGNED'}"
                     f" size={st} vlen={vlen}"]
            for j in range(i, end, 3):
                val = w[j + 1] | w[j + 2] << 32
                if signed:
                    lines.append(f"\t'{N[w[j]]}' val={val - (val >> 63 << 64)}LL")
                else:
                    lines.append(f"\t'{N[w[j]]}' val={val}ULL")
            emit("\n".join(lines))
            i = end
        elif kind == 15:  # DATASEC
            vlen = info & 0xFFFF
            end = i + 3 * vlen
            lines = [f"[{tid}] DATASEC '{name}' size={st} vlen={vlen}"]
            for j in range(i, end, 3):
                vt = w[j]
                line = f"\ttype_id={vt} offset={w[j + 1]} size={w[j + 2]}"
                if vt < total:
                    vk, vno = kinds_of(vt)
                    line += f" ({KIND_STR[vk]} '{names[vno] if vno else ''}')"
                lines.append(line)
            emit("\n".join(lines))
            i = end
        elif kind == 16:  # FLOAT
            emit(f"[{tid}] FLOAT '{name}' size={st}")
        else:
            emit(f"[{tid}] {KIND_STR[kind]} '{name}'")
    return out


def _kind_lookup(btf: Btf):  # noqa: ANN202
    def kinds_of(type_id: int) -> tuple[int, int]:
        if type_id == 0:
            return 0, 0
        return int(btf.kind_of(type_id)), btf.name_off_of(type_id)

    return kinds_of


# Below this many types a second process costs more than it saves.
PARALLEL_MIN_TYPES = 20000
# Records rendered, encoded and written at a time. Holding a whole vmlinux dump (~300k line
# strings, then their join and its encoding: ~50 MB) costs more in first-touch page faults
# than in formatting; chunks this size keep reusing the same few hundred KiB instead.
CHUNK_TYPES = 2048


def write_raw(btf: Btf, out: BinaryIO) -> None:
    """Write the raw dump to a binary stream. A large BTF (a vmlinux: ~300k lines, where
    formatting is the whole cost) is rendered by two processes: a forked child renders the
    second half of the records into a memfd while this process renders and writes the first;
    the child's text then goes to `out` by sendfile(), without passing through Python."""
    n = len(btf)
    names = _Names(btf)  # built before fork(): the child shares it copy-on-write
    if (n < PARALLEL_MIN_TYPES or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork")
            or not hasattr(os, "memfd_create")):
        _render(btf, 0, n, names, out.write)
        return
    mid = _balanced_split(btf)
    spill = os.memfd_create("btf-dump", os.MFD_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # child: second half into the memfd, then exit without cleanup handlers
            status = 1
            try:
                _render(btf, mid, n, names, lambda data: _write_all(spill, data))
                status = 0
            finally:
                os._exit(status)
        try:
            _render(btf, 0, mid, names, out.write)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError("dump worker process failed")
        out.flush()
        _copy_out(spill, out)
    finally:
        os.close(spill)


# Kinds whose records are followed by one line per vlen entry.
_LISTING_KINDS = frozenset({4, 5, 6, 13, 15, 19})  # STRUCT UNION ENUM FUNC_PROTO DATASEC ENUM64


def _balanced_split(btf: Btf, sample: int = 32) -> int:
    """The record index that splits the formatting work in half. Timed in the two
    processes on a vmlinux, a record costs about twice as much as a member line, and member
    lines cluster (the structs come first), so neither the record count nor the word count
    splits evenly; every `sample`-th record is weighed instead."""
    w, offs = btf.wire_records()
    cumulative = []
    cost = 0
    for o in offs[::sample]:
        info = w[o + 1]
        cost += 2
        if info >> 24 & 0x1F in _LISTING_KINDS:
            cost += info & 0xFFFF
        cumulative.append(cost)
    return max(1, min(len(offs) - 1, bisect.bisect_left(cumulative, cost / 2) * sample))


def _render(btf: Btf, first: int, last: int, names: _Names, write) -> None:  # noqa: ANN001
    for a in range(first, last, CHUNK_TYPES):
        write(_encode(_record_texts(btf, a, min(a + CHUNK_TYPES, last), names)))


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


def _encode(lines: list[str]) -> bytes:
    if not lines:
        return b""
    lines.append("")
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def dump_raw(btf: Btf) -> str:
    texts = _record_texts(btf)
    texts.append("")
    return "\n".join(texts)
