"""The target kernel's BTF and the name index reconciliation looks types up in.

Built once per kernel (one pass over the type section, ~0.1 s for a 126k-type vmlinux) and
reused for every module: libbpf's btf__relocate() sorts and scans all of vmlinux on every call,
we look each expected type up by name instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..btf.kinds import K_INT
from ..btf.load import load_btf, parse_btf
from ..btf.record import COMPOSITE_KINDS, MATCHABLE_KINDS, kflag_of, kind_of
from ..cache import sha256_hex
from ..elf import read_btf_sections
from ..errors import ErrorCode

SYSFS_VMLINUX = "/sys/kernel/btf/vmlinux"
# Kinds btf_relocate.c considers in the base (everything else is skipped).


@dataclass(frozen=True, slots=True)
class Candidate:
    """One named type of the target that an expected type could map to."""

    id: int
    kind: int
    name_off: int
    size: int  # the size word (for FWD: whatever the record holds, normally 0)
    kflag: int
    encoding: int  # INT encoding bits (0 for other kinds)


@dataclass
class VmlinuxIndex:
    """A target vmlinux BTF with the lookups reconciliation needs."""

    btf: Btf
    sha256: str = ""
    path: str = "<memory>"
    # Candidates are made on first lookup of a name, from the Btf's name index (built once):
    # a module asks for a few hundred names, and 126k Candidate objects made up front cost
    # ~40 ms and ~18 MB that the daemon then holds for good.
    _cands: dict[bytes, tuple[Candidate, ...]] = field(default_factory=dict, repr=False)
    _composites: dict[int, int] = field(default_factory=dict, repr=False)
    # vmlinux structs/unions flattened by fields.check_fields, once per target: every module
    # that records, say, struct work_struct compares against the same layout
    flat_layouts: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.btf.base is not None:
            raise BtfError("the target must be a base BTF (vmlinux), not split BTF",
                           source=self.btf.source, code=ErrorCode.BTF_NOT_BASE)
        self.btf.build_index()

    @classmethod
    def load(cls, path: str = SYSFS_VMLINUX, *, validate: bool = True) -> VmlinuxIndex:
        """Target BTF from /sys/kernel/btf/vmlinux, a raw BTF file or a vmlinux ELF.
        /sys/kernel/btf/* is never re-validated (the kernel verified it); `validate=False`
        also skips it for other files (e.g. deliberately mutated BTF in tests)."""
        sections = read_btf_sections(path)
        btf = load_btf(path, sections=sections, validate=None if validate else False)
        return cls(btf, sha256=sections.sha256 or "", path=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str = "<memory>") -> VmlinuxIndex:
        btf = parse_btf(data, source=path)
        return cls(btf, sha256=sha256_hex(data), path=path)

    @property
    def type_count(self) -> int:
        return self.btf.type_count

    @property
    def str_len(self) -> int:
        return self.btf.str_end

    def candidates(self, name: bytes) -> tuple[Candidate, ...]:
        """Named INT/FLOAT/ENUM/ENUM64/FWD/STRUCT/UNION types called `name`, by id."""
        got = self._cands.get(name)
        if got is None:
            words, offs = self.btf.wire_records()
            start = self.btf.start_id
            out = []
            for tid in self.btf.layout_ids(name):
                o = offs[tid - start]
                info = words[o + 1]
                kind = kind_of(info)
                if kind in MATCHABLE_KINDS:
                    enc = (words[o + 3] >> 24) & 0x0F if kind == K_INT else 0
                    out.append(Candidate(tid, kind, words[o], words[o + 2], kflag_of(info), enc))
            got = self._cands[name] = tuple(out)
        return got

    def composites_named(self, name_off: int) -> int:
        """How many STRUCT/UNION types carry this name offset (btf_relocate's base_name_cnt)."""
        n = self._composites.get(name_off)
        if n is None:
            # every type with this name offset has its name, so is among its candidates
            n = sum(1 for c in self.candidates(self.btf.str_bytes(name_off))
                    if c.name_off == name_off and c.kind in COMPOSITE_KINDS)
            self._composites[name_off] = n
        return n
