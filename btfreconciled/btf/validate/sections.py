"""VAR, DATASEC and DECL_TAG: linkage, section entries and tag targets (kernel:
btf_var_check_meta, btf_var_resolve, btf_datasec_check_meta, btf_datasec_resolve,
btf_decl_tag_check_meta, btf_decl_tag_resolve)."""

from __future__ import annotations

from ...errors import ErrorCode
from ..layout import (
    DECL_TAG_COMPONENT,
    ITEMS,
    SECINFO_OFFSET,
    SECINFO_SIZE,
    SECINFO_TYPE,
    SECINFO_WORDS,
    VAR_LINKAGE,
)
from ..record import vlen_of
from .core import (
    _SECTION_RE,
    DATASEC,
    DECL_TAG,
    DECL_TAG_TARGETS,
    FUNC,
    SIZED,
    SOURCE_ONLY,
    TYPEDEF,
    U32_MAX,
    VAR,
    _first,
    _g,
)


class Sections:
    """Sections checks (a mixin of _Validator: the state lives in core.Core)."""

    # ------------------------------------------------------------ meta: vars
    def meta_vars(self) -> None:
        """Mirrors btf_var_check_meta."""
        locs = self.loc(VAR)
        if not locs:
            return
        ofs = _g(self.offs, locs)
        self.check_bound(_g(self.sw, locs), locs, "type", zero_ok=False)
        link = self.field(ofs, VAR_LINKAGE)
        if not set(link) <= {0, 1}:
            i = next(i for i, v in enumerate(link) if v > 1)
            self.fail_local(locs[i], f"has linkage {link[i]} (must be static (0) or global "
                            "allocated (1))", ofs[i] + VAR_LINKAGE)

    # ------------------------------------------------------------ meta: datasecs
    def meta_datasecs(self) -> None:
        """Mirrors btf_datasec_check_meta."""
        w, T = self.w, self.T
        for local in self.loc(DATASEC):
            o = self.offs[local]
            size = w[o + 2]
            if not size:
                self.fail_local(local, "has size 0", o + 2)
            raw = self._name_bytes(w[o])
            if not raw or not _SECTION_RE.fullmatch(raw):
                self.fail_local(local, "needs a section name of 1 to 512 printable characters")
            last_end = total = 0
            for j in range(vlen_of(w[o + 1])):
                p = o + ITEMS + SECINFO_WORDS * j
                vt, off, sz = w[p + SECINFO_TYPE], w[p + SECINFO_OFFSET], w[p + SECINFO_SIZE]
                what = f"entry {j}"
                if not vt or vt >= T:
                    self.fail_local(local, self.past_end(what, vt) if vt else
                                    f"{what} is void (type [0])", p + SECINFO_TYPE,
                                    ErrorCode.BTF_BAD_TYPE_ID if vt else ErrorCode.BTF_INVALID)
                if off < last_end or off >= size:
                    self.fail_local(local, f"{what} at offset {off} overlaps the previous "
                                    f"entry (which ends at {last_end}) or lies outside the "
                                    f"{size}-byte section", p + SECINFO_OFFSET)
                if not sz or sz > size:
                    self.fail_local(local, f"{what} has size {sz} (must be 1..{size})",
                                    p + SECINFO_SIZE)
                last_end = off + sz
                if last_end > size:
                    self.fail_local(local, f"{what} ends at {last_end}, past the {size}-byte "
                                    "section", p + SECINFO_SIZE)
                total += sz
            if total > size:
                self.fail_local(local, f"entries total {total} bytes, more than its size {size}")

    # ------------------------------------------------------------ meta: decl tags
    def meta_decl_tags(self) -> None:
        """Mirrors btf_decl_tag_check_meta."""
        w = self.w
        for local in self.loc(DECL_TAG):
            o = self.offs[local]
            idx = w[o + DECL_TAG_COMPONENT]
            if 0x80000000 <= idx < U32_MAX:
                self.fail_local(local, f"has component_idx {idx - (1 << 32)} (must be >= -1)",
                                o + DECL_TAG_COMPONENT)
            if w[o + 2] >= self.T:
                self.fail_local(local, self.past_end("", w[o + 2]), o + 2,
                                ErrorCode.BTF_BAD_TYPE_ID)

    def resolve_vars(self) -> None:
        """Mirrors btf_var_resolve."""
        locs = self.loc(VAR)
        if not locs:
            return
        vt = _g(self.sw, locs)
        dl, dk, rl, rk = self.resolved(vt)
        bad = {d for d, k, r in zip(dl, dk, rk, strict=True) if k in SOURCE_ONLY or r not in SIZED}
        if bad:
            i = _first(map(bad.__contains__, vt))
            self.fail_local(locs[i], f"has type {self._ref(vt[i])}, which has no size",
                            self.offs[locs[i]] + 2)

    def resolve_datasecs(self) -> None:
        """Mirrors btf_datasec_resolve."""
        w, KT, SW, RID, SIZE = self.w, self.KT, self.SW, self.RID, self.SIZE
        for local in self.loc(DATASEC):
            o = self.offs[local]
            for j in range(vlen_of(w[o + 1])):
                p = o + ITEMS + SECINFO_WORDS * j
                vt = w[p + SECINFO_TYPE]
                if KT[vt] != VAR:
                    self.fail_local(local, f"entry {j} is {self._ref(vt)}, not a VAR",
                                    p + SECINFO_TYPE)
                need = SIZE[RID[SW[vt]]]
                size = w[p + SECINFO_SIZE]
                if size < need:
                    self.fail_local(local, f"entry {j} ({self._ref(vt)}) has size {size} "
                                    f"but its type needs {need} bytes", p + SECINFO_SIZE)

    def resolve_decl_tags(self) -> None:
        """Mirrors btf_decl_tag_resolve."""
        w, KT, start = self.w, self.KT, self.start
        for local in self.loc(DECL_TAG):
            o = self.offs[local]
            target = w[o + 2]
            kind = KT[target]
            if target == 0 or kind not in DECL_TAG_TARGETS:
                self.fail_local(local, f"tags {self._ref(target)}; only a FUNC, STRUCT, UNION, "
                                "VAR or TYPEDEF can be tagged", o + 2)
            idx = w[o + DECL_TAG_COMPONENT]
            if idx == U32_MAX:
                continue
            if kind in (VAR, TYPEDEF):
                self.fail_local(local, f"has component_idx {idx} but its target "
                                f"{self._ref(target)} has no components", o + DECL_TAG_COMPONENT)
            if kind == FUNC:
                proto = self.SW[target] if target >= start else self.base.type(target).type
                vlen = self.vlen_of(proto)
            else:
                vlen = self.vlen_of(target)
            if idx >= vlen:
                self.fail_local(local, f"has component_idx {idx} but {self._ref(target)} has "
                                f"only {vlen} components", o + DECL_TAG_COMPONENT)
