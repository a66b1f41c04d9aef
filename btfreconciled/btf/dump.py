"""`bpftool btf dump ... format raw`, line for line.

Works on the wire words rather than on decoded types: formatting every record of a vmlinux
(~300k lines) is the whole cost of a dump, so each kind is formatted straight from its words.
The reference is bpftool's dump_btf_type() in tools/bpf/bpftool/btf.c.
"""

from __future__ import annotations

import os
from collections import ChainMap
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
_MEMBER = "\t'%s' type_id=%d bits_offset=%d"
_PARAM = "\t'%s' type_id=%d"


class _Names:
    """Offset -> printable name for a BTF and its bases, as bpftool's btf_str() prints it."""

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
        lookup = maps[0] if len(maps) == 1 else ChainMap(*maps)
        self.get = lookup.get
        self.getitem = lookup.__getitem__

    def __call__(self, off: int) -> str:
        """Slow path: offset 0, offsets into the middle of a string, invalid offsets."""
        s = self._extra.get(off)
        if s is not None:
            return s
        if off >= self._end:
            return "(invalid)"
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
    parts = strs.split(b"\0")[:-1]
    starts = accumulate(map(_PLUS_ONE, map(len, parts)), initial=btf.start_str_off)
    if strs.isascii():
        by_off = dict(zip(starts, strs.decode("ascii").split("\0")[:-1], strict=False))
    else:
        by_off = {st: p.decode("utf-8", "surrogateescape")
                  for st, p in zip(starts, parts, strict=False)}
    if btf.start_str_off == 0:
        by_off[0] = "(anon)"
    btf._dump_names = by_off  # type: ignore[attr-defined]
    return by_off


def dump_raw_lines(btf: Btf, first: int = 0, last: int | None = None,
                   names: _Names | None = None) -> list[str]:
    """The raw dump of `btf`'s own types, one string per line; a split BTF prints only its
    split types, numbered from its first split id, like `bpftool btf dump file X -B BASE`.
    `first`/`last` select a range of this BTF's own records (local indexes)."""
    if names is None:
        names = _Names(btf)
    nm = names.get
    total = btf.type_count
    w, offs = btf.wire_records()
    if last is None:
        last = len(offs)
    kinds_of = _kind_lookup(btf)
    out: list[str] = []
    emit = out.append
    extend = out.extend
    nmx = names.getitem
    i = offs[first] if first < len(offs) else len(w)
    n = offs[last] if last < len(offs) else len(w)
    tid = btf.start_id + first - 1
    while i < n:
        tid += 1
        no = w[i]
        info = w[i + 1]
        st = w[i + 2]
        kind = (info >> 24) & 0x1F
        name = nm(no)
        if name is None:
            name = names(no)
        i += 3
        if kind == 12:  # FUNC, the most common kind by far
            emit(f"[{tid}] FUNC '{name}' type_id={st} linkage="
                 f"{_LINKAGE.get(info & 0xFFFF, '(unknown)')}")
        elif kind == 13:  # FUNC_PROTO
            vlen = info & 0xFFFF
            emit(f"[{tid}] FUNC_PROTO '{name}' ret_type_id={st} vlen={vlen}")
            end = i + 2 * vlen
            try:
                extend(map(_PARAM.__mod__, zip(map(nmx, w[i:end:2]), w[i + 1 : end : 2])))
            except KeyError:
                for j in range(i, end, 2):
                    pno = w[j]
                    pname = nm(pno)
                    if pname is None:
                        pname = names(pno)
                    emit(f"\t'{pname}' type_id={w[j + 1]}")
            i += 2 * vlen
        elif kind == 4 or kind == 5:  # STRUCT UNION
            vlen = info & 0xFFFF
            emit(f"[{tid}] {'STRUCT' if kind == 4 else 'UNION'} '{name}' size={st} vlen={vlen}")
            kflag = info >> 31
            end = i + 3 * vlen
            if not kflag:
                # Whole member list formatted by C-level map/zip; KeyError = a name offset
                # that is not a string start, which the slow path below handles.
                try:
                    extend(map(_MEMBER.__mod__, zip(map(nmx, w[i:end:3]), w[i + 1 : end : 3],
                                                    w[i + 2 : end : 3])))
                    i = end
                    continue
                except KeyError:
                    pass
            for j in range(i, end, 3):
                mno = w[j]
                off = w[j + 2]
                mname = nm(mno)
                if mname is None:
                    mname = names(mno)
                if not kflag:
                    emit(f"\t'{mname}' type_id={w[j + 1]} bits_offset={off}")
                elif off >> 24:
                    emit(f"\t'{mname}' type_id={w[j + 1]} bits_offset={off & 0xFFFFFF}"
                         f" bitfield_size={off >> 24}")
                else:
                    emit(f"\t'{mname}' type_id={w[j + 1]} bits_offset={off & 0xFFFFFF}")
            i += 3 * vlen
        elif kind == 2 or kind == 8 or kind == 9 or kind == 10 or kind == 11 or kind == 18:
            emit(f"[{tid}] {KIND_STR[kind]} '{name}' type_id={st}")
        elif kind == 1:  # INT
            v = w[i]
            i += 1
            emit(f"[{tid}] INT '{name}' size={st} bits_offset={v >> 16 & 0xFF} "
                 f"nr_bits={v & 0xFF} encoding={_INT_ENC.get(v >> 24 & 0x0F, 'UNKN')}")
        elif kind == 3:  # ARRAY
            emit(f"[{tid}] ARRAY '{name}' type_id={w[i]} index_type_id={w[i + 1]} "
                 f"nr_elems={w[i + 2]}")
            i += 3
        elif kind == 6 or kind == 19:  # ENUM ENUM64
            vlen = info & 0xFFFF
            kflag = info >> 31
            emit(f"[{tid}] {KIND_STR[kind]} '{name}' encoding={'SIGNED' if kflag else 'UNSIGNED'}"
                 f" size={st} vlen={vlen}")
            step = 2 if kind == 6 else 3
            for j in range(i, i + step * vlen, step):
                eno = w[j]
                ename = nm(eno)
                if ename is None:
                    ename = names(eno)
                if kind == 6:
                    val = w[j + 1]
                    if kflag and val & 0x80000000:
                        val -= 1 << 32
                    emit(f"\t'{ename}' val={val}")
                else:
                    # bpftool: %lldLL when signed, %lluULL otherwise
                    val = w[j + 1] | w[j + 2] << 32
                    if kflag:
                        if val >> 63:
                            val -= 1 << 64
                        emit(f"\t'{ename}' val={val}LL")
                    else:
                        emit(f"\t'{ename}' val={val}ULL")
            i += step * vlen
        elif kind == 7:  # FWD
            emit(f"[{tid}] FWD '{name}' fwd_kind={'union' if info >> 31 else 'struct'}")
        elif kind == 14:  # VAR
            emit(f"[{tid}] VAR '{name}' type_id={st}, linkage={_LINKAGE.get(w[i], '(unknown)')}")
            i += 1
        elif kind == 15:  # DATASEC
            vlen = info & 0xFFFF
            emit(f"[{tid}] DATASEC '{name}' size={st} vlen={vlen}")
            for j in range(i, i + 3 * vlen, 3):
                vt = w[j]
                line = f"\ttype_id={vt} offset={w[j + 1]} size={w[j + 2]}"
                if vt < total:
                    vk, vno = kinds_of(vt)
                    line += f" ({KIND_STR[vk]} '{names(vno) if vno else ''}')"
                emit(line)
            i += 3 * vlen
        elif kind == 16:  # FLOAT
            emit(f"[{tid}] FLOAT '{name}' size={st}")
        elif kind == 17:  # DECL_TAG
            idx = w[i]
            if idx & 0x80000000:
                idx -= 1 << 32
            emit(f"[{tid}] DECL_TAG '{name}' type_id={st} component_idx={idx}")
            i += 1
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


def write_raw(btf: Btf, out: BinaryIO) -> None:
    """Write the raw dump to a binary stream. A large BTF (a vmlinux: ~300k lines, where
    formatting is the whole cost) is rendered by two processes: a forked child formats the
    second half of the records while this process formats and writes the first, then the
    child's text is copied through a pipe."""
    n = len(btf)
    names = _Names(btf)  # built before fork(): the child shares it copy-on-write
    if n < PARALLEL_MIN_TYPES or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        out.write(_encode(dump_raw_lines(btf, names=names)))
        return
    mid = n // 2
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: second half into the pipe, then exit without cleanup handlers
        status = 0
        try:
            os.close(rfd)
            data = memoryview(_encode(dump_raw_lines(btf, mid, n, names)))
            while data:
                data = data[os.write(wfd, data):]
        except BaseException:  # noqa: BLE001 - reported through the exit status
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        out.write(_encode(dump_raw_lines(btf, 0, mid, names)))
        with os.fdopen(rfd, "rb", closefd=True) as pipe:
            while chunk := pipe.read(1 << 20):
                out.write(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
    if status:
        raise RuntimeError("dump worker process failed")


def _encode(lines: list[str]) -> bytes:
    if not lines:
        return b""
    lines.append("")
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def dump_raw(btf: Btf) -> str:
    lines = dump_raw_lines(btf)
    lines.append("")
    return "\n".join(lines)
