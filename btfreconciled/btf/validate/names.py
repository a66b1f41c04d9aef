"""Names: which kinds must be anonymous, named by a C identifier, optionally named, or carry
non-empty text, and the identifier check itself (kernel: btf_name_valid_identifier,
btf_name_valid_section with lib/ctype.c's Latin-1 classes; libbpf: btf_validate_str)."""

from __future__ import annotations

from ..layout import LAYOUT
from ..record import vlen_of
from .core import (
    _IDCLASS,
    _IDENT_RE,
    _LONG,
    _NONNUL,
    ANONYMOUS,
    BAD_NAME,
    DECL_TAG,
    ENUM,
    ENUM64,
    FUNC_PROTO,
    NAMED_IDENT,
    OPTIONAL_IDENT,
    STRUCT,
    TYPE_TAG,
    UNION,
    _first,
    _g,
)

# Items whose names must be identifiers, as messages call them.
_ITEM_NAMES = {STRUCT: "member", UNION: "member", FUNC_PROTO: "parameter", ENUM: "enumerator",
               ENUM64: "enumerator"}


class Names:
    """Names checks (a mixin of _Validator: the state lives in core.Core)."""

    def meta_names(self) -> None:
        """Names by kind: absent, a C identifier, optional identifier, non-empty tag text
        (btf_ref_type_check_meta, btf_fwd_check_meta, btf_func_check_meta, btf_var_check_meta,
        btf_type_tag/decl_tag_check_meta: the btf_name_valid_identifier / !name_off rules)."""
        names = self.names
        for kind in ANONYMOUS:
            locs = self.loc(kind)
            nm = _g(names, locs)
            if any(nm):
                local = locs[_first(nm)]
                self.fail_local(local, f"must be anonymous but has name offset {names[local]:#x}")
        for kind in NAMED_IDENT:
            locs = self.loc(kind)
            nm = _g(names, locs)
            if 0 in nm:
                self.fail_local(locs[nm.index(0)], "needs a name")
            self.idents.append((nm, True, None))  # (names: checked in check_name_offsets)
        for kind in OPTIONAL_IDENT:
            self.idents.append((_g(names, self.loc(kind)), False, None))
        for kind in (TYPE_TAG, DECL_TAG):
            for local in self.loc(kind):
                if not self._name_bytes(names[local]):
                    self.fail_local(local, "needs a non-empty " +
                                    ("name" if kind == TYPE_TAG else "value"))

    # ------------------------------------------------------------ names
    def check_identifiers(self) -> None:
        """Every name that must be a C identifier is one. One byte per string offset says
        whether a name starting there is fine: 'a' (an identifier starts here: the rest
        of its string is identifier characters, at most 512 of them), 'Z' (offset 0, the
        empty name), '?' (inside a string that is no identifier: check that suffix on its
        own), anything else (not an identifier). Each column then costs one gather.
        Mirrors btf_name_valid_identifier (lib/ctype.c)."""
        if not self.idents:
            return
        end = self.str_end
        lut = self.ident_lut()
        if lut is None:  # strings we cannot lay out in one piece: check one by one
            for col, _, past_end in self.idents:
                if col and max(col) >= end:
                    past_end(_first(map(end.__le__, col)))
            offsets = set().union(*(set(c) for c, _, _ in self.idents))
            offsets.discard(0)
            bad = {o for o in offsets if not _IDENT_RE.fullmatch(self._name_bytes(o) or b"")}
            if bad:
                self.report_bad_identifier(bad)
            return
        ok_required, ok_optional = {0x61}, {0x61, 0x5A}
        for col, required, past_end in self.idents:
            allowed = ok_required if required else ok_optional
            try:
                classes = _g(lut, col)  # (the lookup table ends where the strings end)
            except IndexError:
                past_end(_first(map(end.__le__, col)))
                raise
            good = classes.count(0x61) if required else classes.count(0x61) + classes.count(0x5A)
            if good == len(classes):
                continue
            bad = set()
            for o in set(col):
                c = lut[o]
                if c in allowed or (c == 0x3F and _IDENT_RE.fullmatch(self._name_bytes(o))):
                    continue
                bad.add(o)
            if bad:
                self.report_bad_identifier(bad)

    def ident_lut(self) -> bytearray | None:
        strs = [self.strs]
        base = self.base
        while base is not None:
            strs.append(base._strs)
            base = base.base
        full = b"".join(reversed(strs))
        if len(full) != self.str_end:
            return None
        t = full.translate(_IDCLASS)
        lut = bytearray(t)
        lut[0] = 0x5A
        # strings with a character no identifier has, or longer than 512 bytes
        spans = []
        i = t.find(b"!")
        while i >= 0:
            end = t.index(b"\0", i)
            spans.append((t.rfind(b"\0", 0, i) + 1, end))
            i = t.find(b"!", end)
        tx = t.translate(_NONNUL)
        i = tx.find(_LONG)
        while i >= 0:
            end = tx.index(b"\0", i)
            spans.append((i, end))
            i = tx.find(_LONG, end)
        for a, b in spans:
            lut[a:b] = b"?" * (b - a)
        return lut

    def report_bad_identifier(self, bad: set[int]) -> None:
        """Find the first type that uses one of the `bad` name offsets, and say so."""
        names, offs, w = self.names, self.offs, self.w
        for local in range(self.n):
            kind = self.kl[local]
            o = offs[local]
            if (kind in NAMED_IDENT or kind in OPTIONAL_IDENT) and names[local] in bad:
                self.fail_local(local, BAD_NAME)
            what = _ITEM_NAMES.get(kind)
            if what is None:
                continue
            lay = LAYOUT[kind]  # type: ignore[index]
            first = o + lay.first_item + lay.item_str
            for j, p in enumerate(range(first, first + lay.item_words * vlen_of(w[o + 1]),
                                        lay.item_words)):
                if w[p] in bad:
                    n = j + 1 if kind == FUNC_PROTO else j  # parameters count from 1
                    self.fail_local(local, f"{what} {n}{self._label(w[p])} {BAD_NAME}", p)
        raise self.btf._err("invalid identifier", offset=0)  # not reached
