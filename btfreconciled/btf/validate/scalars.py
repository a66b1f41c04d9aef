"""INT, FLOAT, ENUM, ENUM64 and FWD: the kinds without type references (kernel:
btf_int_check_meta, btf_float_check_meta, btf_enum_check_meta, btf_enum64_check_meta,
btf_fwd_check_meta; btf_type_int_is_regular)."""

from __future__ import annotations

from ..layout import INT_DATA, LAYOUT
from .core import (
    ENUM,
    ENUM64,
    FLOAT,
    FWD,
    INT,
    INT_MASK,
    U32_MAX,
    _first,
    _g,
    _int_regular,
)


class Scalars:
    """Scalars checks (a mixin of _Validator: the state lives in core.Core)."""

    def meta_scalars(self) -> None:
        """FWD, INT, FLOAT, ENUM/ENUM64 sizes and data (btf_fwd_check_meta,
        btf_int_check_meta, btf_float_check_meta, btf_enum_check_meta,
        btf_enum64_check_meta)."""
        sw, w, offs = self.sw, self.w, self.offs
        locs = self.loc(FWD)
        size = _g(sw, locs)
        if any(size):
            local = locs[_first(size)]
            self.fail_local(local, f"has size/type word {sw[local]} (must be 0)",
                            offs[local] + 2)
        for local in self.loc(INT):
            o = offs[local]
            msg = _int_problem(sw[local], w[o + INT_DATA])
            if msg:
                self.fail_local(local, msg, o + INT_DATA)
        for local in self.loc(FLOAT):
            if sw[local] not in (2, 4, 8, 12, 16):
                self.fail_local(local, f"has size {sw[local]} (must be 2, 4, 8, 12 or 16)",
                                offs[local] + 2)
        for kind in (ENUM, ENUM64):
            locs = self.loc(kind)
            if not set(_g(sw, locs)) <= {1, 2, 4, 8}:
                local = next(lo for lo in locs if sw[lo] not in (1, 2, 4, 8))
                self.fail_local(local, f"has size {sw[local]} (must be 1, 2, 4 or 8)",
                                offs[local] + 2)

    # ------------------------------------------------------------ meta: enums
    def meta_enums(self) -> None:
        """Mirrors btf_enum_check_meta, btf_enum64_check_meta (enumerators)."""
        for kind in (ENUM, ENUM64):
            lay = LAYOUT[kind]  # type: ignore[index]
            locs = self.loc(kind)
            if locs:
                e = self.items(locs, lay.item_words)
                names = self.flat(e)[lay.item_word("name_off")::lay.item_words].tolist()
                self.check_item_names(e, names, "enumerator", required=True)

    def int_regular(self, tid: int) -> bool:
        return _int_regular(*self.int_bits(tid))

    def int_bits(self, tid: int) -> tuple[int, int]:
        if tid < self.start:
            t = self.base.type(tid)
            return t.nr_bits, t.bits_offset
        d = self.w[self.offs[tid - self.start] + INT_DATA]
        return d & 0xFF, (d >> 16) & 0xFF


def _int_problem(size: int, data: int) -> str | None:
    """btf_int_check_meta."""
    if data & ~INT_MASK & U32_MAX:
        return f"has int data {data:#010x} with reserved bits set"
    bits = data & 0xFF
    off = (data >> 16) & 0xFF
    enc = (data >> 24) & 0x0F
    if bits + off > 128:
        return f"has {bits} bits at bit offset {off}: more than 128 bits"
    if (bits + off + 7) >> 3 > size:
        return f"has {bits} bits at bit offset {off}, more than its size of {size} bytes"
    if enc not in (0, 1, 2, 4):
        return f"has encoding {enc:#x} (must be none, signed, char or bool)"
    return None

