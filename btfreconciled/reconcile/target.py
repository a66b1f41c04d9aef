"""The target kernel's BTF and the name index reconciliation looks types up in.

Built once per kernel (one pass over the type section, ~0.1 s for a 126k-type vmlinux) and
reused for every module: libbpf's btf__relocate() sorts and scans all of vmlinux on every call,
we look each expected type up by name instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..btf.btf import Btf
from ..btf.errors import BtfError
from ..btf.kinds import K_ENUM, K_ENUM64, K_FLOAT, K_FWD, K_INT, K_STRUCT, K_UNION
from ..btf.load import load_btf, parse_btf
from ..cache import sha256_hex
from ..elf import read_btf_sections

SYSFS_VMLINUX = "/sys/kernel/btf/vmlinux"
# Kinds btf_relocate.c considers in the base (everything else is skipped).
_MATCHABLE = frozenset({K_INT, K_FLOAT, K_ENUM, K_ENUM64, K_FWD, K_STRUCT, K_UNION})


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
    by_name: dict[bytes, tuple[Candidate, ...]] = field(default_factory=dict, repr=False)
    composite_count: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.btf.base is not None:
            raise BtfError("the target must be a base BTF (vmlinux), not split BTF",
                           source=self.btf.source)
        if not self.by_name:
            self._build()

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
        return self.by_name.get(name, ())

    def composites_named(self, name_off: int) -> int:
        """How many STRUCT/UNION types carry this name offset (btf_relocate's base_name_cnt)."""
        return self.composite_count.get(name_off, 0)

    def _build(self) -> None:
        words, offs = self.btf.wire_records()
        strs = self.btf.strings
        find = strs.find
        by_name: dict[bytes, list[Candidate]] = {}
        counts: dict[int, int] = {}
        names: dict[int, bytes] = {}
        tid = self.btf.start_id
        for o in offs:
            no = words[o]
            info = words[o + 1]
            kind = (info >> 24) & 0x1F
            if no and kind in _MATCHABLE:
                name = names.get(no)
                if name is None:
                    end = find(b"\0", no)
                    name = strs[no:end] if end >= 0 else strs[no:]
                    names[no] = name
                enc = (words[o + 3] >> 24) & 0x0F if kind == K_INT else 0
                cand = Candidate(tid, kind, no, words[o + 2], info >> 31, enc)
                lst = by_name.get(name)
                if lst is None:
                    by_name[name] = [cand]
                else:
                    lst.append(cand)
                if kind in (K_STRUCT, K_UNION):
                    counts[no] = counts.get(no, 0) + 1
            tid += 1
        self.by_name = {k: tuple(v) for k, v in by_name.items()}
        self.composite_count = counts
