"""Minimal BPF ELF objects for the fast tests: `.BTF` plus `.BTF.ext` CO-RE records.

What clang writes for `BPF_CORE_READ(s, x)` on a `preserve_access_index` struct, reduced to
what libbpf's btf__parse() and `bpftool gen min_core_btf` read: an ELF64 relocatable file
with the object's BTF and a `.BTF.ext` whose CO-RE section lists (insn_off, local type id,
access string, kind) per program section. No code, symbols or maps are needed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from btfreconciled.btf.btf import Btf

EM_BPF = 247
SHT_PROGBITS, SHT_STRTAB = 1, 3


def btf_ext(local: Btf, relos: Sequence[tuple[str, int, int, str, int]],
            record_size: int = 16) -> bytes:
    """`.BTF.ext` with CO-RE records (section, insn_off, type_id, access, kind); the
    section names and access strings are added to `local`'s strings first."""
    by_sec: dict[str, list[tuple[int, int, str, int]]] = {}
    for sec, insn, tid, access, kind in relos:
        by_sec.setdefault(sec, []).append((insn, tid, access, kind))
    core = bytearray(struct.pack("<I", record_size))
    for sec, recs in by_sec.items():
        core += struct.pack("<II", local.add_str(sec), len(recs))
        for insn, tid, access, kind in recs:
            core += struct.pack("<IIII", insn, tid, local.add_str(access), kind)
            core += bytes(record_size - 16)
    hdr = struct.pack("<HBBIIIIIII", 0xEB9F, 1, 0, 32, 0, 0, 0, 0, 0, len(core))
    return hdr + bytes(core)


def elf_object(sections: Sequence[tuple[str, bytes]]) -> bytes:
    """An ELF64 little-endian relocatable BPF file holding `sections` (name, bytes)."""
    shstr = bytearray(b"\0")
    names = []
    for name, _ in [*sections, (".shstrtab", b"")]:
        names.append(len(shstr))
        shstr += name.encode() + b"\0"
    body = bytearray()
    offs = []
    for _, data in sections:
        while len(body) % 8:
            body.append(0)
        offs.append(64 + len(body))
        body += data
    offs.append(64 + len(body))
    body += shstr
    while len(body) % 8:
        body.append(0)
    shoff = 64 + len(body)
    shnum = len(sections) + 2
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 1, EM_BPF, 1, 0, 0, shoff, 0, 64, 0, 0,
                               64, shnum, shnum - 1)
    shdrs = bytes(64)
    for i, (_, data) in enumerate(sections):
        shdrs += struct.pack("<IIQQQQIIQQ", names[i], SHT_PROGBITS, 0, 0, offs[i], len(data),
                             0, 0, 4, 0)
    shdrs += struct.pack("<IIQQQQIIQQ", names[-1], SHT_STRTAB, 0, 0, offs[-1], len(shstr),
                         0, 0, 1, 0)
    return ehdr + bytes(body) + shdrs


def bpf_object(local: Btf, relos: Sequence[tuple[str, int, int, str, int]]) -> bytes:
    """A BPF object whose `.BTF` is `local` and whose CO-RE records are `relos`."""
    ext = btf_ext(local, relos)  # adds strings to `local`: before it is serialised
    return elf_object([(".BTF", local.to_bytes()), (".BTF.ext", ext)])
