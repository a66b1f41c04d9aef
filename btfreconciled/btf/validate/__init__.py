"""Strict validation of untrusted BTF: the kernel's BTF verifier, plus everything libbpf rejects.

Organised like the kernel's verifier (kernel/bpf/btf.c): a check_meta pass per kind, then a
resolve pass per kind; one module per kind family (names, scalars, refs, composites, funcs,
sections), the shared columns and reports in core, tables by type id in tables. RULES below
lists every phase in the order it runs, the kinds it covers and the kernel or libbpf
function it mirrors.

`Btf.parse` (btf.py, header.py) has already checked the header, the section layout, the string
section's NUL rules, that every record has a known kind and fits the type section (kernel:
btf_parse_hdr, btf_check_sec_info, btf_parse_str_sec, btf_check_meta's size checks; libbpf:
btf_parse_hdr, btf_parse_str_sec, btf_parse_type_sec). `validate_btf` then
applies the rules of the kernel's verifier (kernel/bpf/btf.c: btf_check_all_metas with each
kind's check_meta, btf_check_all_types with each kind's resolve, btf_func_proto_check,
btf_func_check, btf_check_type_tags) and of libbpf's btf__new (btf_parse_hdr,
btf_sanity_check):

* info word: no bits outside kind_flag/kind/vlen; vlen and kind_flag only where the kind has
  them (FUNC vlen is the linkage: static or global only, like the kernel).
* names: every name offset inside the string sections (this BTF's or its base's); names that
  must be absent (PTR, ARRAY, CONST, VOLATILE, RESTRICT, FUNC_PROTO), must be C identifiers
  (FWD, TYPEDEF, FUNC, VAR, enumerators; STRUCT/UNION/ENUM names, members and parameters when
  present), section names (DATASEC: printable), non-empty values (TYPE_TAG, DECL_TAG). The
  character classes are the kernel's (lib/ctype.c: Latin-1 letters count, '.' is allowed),
  names are at most KSYM_NAME_LEN (512) bytes.
* per kind: INT encoding/bits/offset/size, ENUM/ENUM64 size 1/2/4/8, FLOAT size
  2/4/8/12/16, FWD and ARRAY size words zero, VAR linkage, DECL_TAG component_idx >= -1,
  DATASEC size and sorted, non-overlapping, in-bounds entries, struct/union member bit
  offsets (non-decreasing, zero in unions).
* type ids: every referenced id exists (in this BTF or its base); void only where allowed
  (pointee, modifier target, return type, a last vararg parameter).
* resolution: what each reference may point to (no VAR/DATASEC/DECL_TAG/FUNC behind a
  modifier or pointer; members, array elements, variables, parameters and return values
  must have a size; array index types are regular ints; FUNC -> FUNC_PROTO whose
  parameters are named; DATASEC entries are VARs that fit their slot; DECL_TAG targets and
  component indexes), the kernel's per-member layout rules (btf_*_check_member and
  btf_*_check_kflag_member: alignment, bitfield sizes, inside the struct), array sizes
  that fit in u32.
* loops: reference loops through modifiers and pointers; structs, unions and arrays that
  contain themselves by value; modifier chains longer than 32; a TYPE_TAG after another
  modifier.
* libbpf: BTF in the other byte order only with the plain 24-byte header.

Where the kernel's answer depends on the order in which it happens to visit types (a
self-embedding struct it can miss, a pointer to a FUNC it accepts once that FUNC is resolved,
its 32-deep resolve stack) we apply the order-independent rule instead. An empty type
section is accepted (the kernel refuses to load one; it is harmless to read).

Speed: a vmlinux has ~127k types, so nothing here creates per-type Python objects. Fields
are gathered with `operator.itemgetter` over the raw u32 words, variable-length parts are cut
out with one slice per record and joined, properties of referenced types are computed once
per distinct id, and the rules run as `map`/`max`/`set` operations over those columns. Only
on failure do we go back to find, and name, the first offending type.
"""

from __future__ import annotations

import gc

from ..errors import BtfError
from .composites import Composites
from .core import Core
from .funcs import Funcs
from .names import Names
from .refs import Refs
from .scalars import Scalars
from .sections import Sections
from .tables import Tables

# (phase, kinds, what it mirrors), in the order they run: structure and names first (the
# kernel's btf_check_all_metas: each kind's check_meta), then what references resolve to
# (btf_check_all_types: each kind's resolve). Each phase raises on the first problem it finds.
RULES: tuple[tuple[str, str, str], ...] = (
    ("gather", "all", "(columns: name, info, size/type word of every record)"),
    ("group", "all", "btf_check_meta: BTF_INFO_MASK, kind range, vlen/kind_flag per kind "
     "(layout.py's table); btf_func_check_meta: linkage; libbpf btf_validate_type"),
    ("check_name_offsets", "all", "btf_name_offset_valid; libbpf btf_validate_str"),
    ("meta_names", "all", "each kind's check_meta name rule: btf_ref_type_check_meta, "
     "btf_fwd_check_meta, btf_func_check_meta, btf_var_check_meta, btf_decl_tag_check_meta"),
    ("meta_refs", "PTR, modifiers, FUNC", "btf_ref_type_check_meta, btf_func_check_meta: "
     "BTF_TYPE_ID_VALID; libbpf btf_validate_id"),
    ("meta_scalars", "FWD, INT, FLOAT, ENUM, ENUM64", "btf_fwd_check_meta, btf_int_check_meta, "
     "btf_float_check_meta, btf_enum_check_meta, btf_enum64_check_meta"),
    ("meta_members", "STRUCT, UNION", "btf_struct_check_meta"),
    ("meta_protos", "FUNC_PROTO", "btf_func_proto_check_meta; btf_func_proto_check (ids, "
     "varargs)"),
    ("meta_enums", "ENUM, ENUM64", "btf_enum_check_meta, btf_enum64_check_meta (enumerators)"),
    ("meta_arrays", "ARRAY", "btf_array_check_meta"),
    ("meta_vars", "VAR", "btf_var_check_meta"),
    ("meta_datasecs", "DATASEC", "btf_datasec_check_meta"),
    ("meta_decl_tags", "DECL_TAG", "btf_decl_tag_check_meta"),
    ("check_identifiers", "named kinds, items", "btf_name_valid_identifier (lib/ctype.c)"),
    ("build_tables", "all", "btf_type_id_size's inputs; libbpf determine_ptr_size"),
    ("resolve_refs", "PTR, modifiers", "btf_modifier_resolve, btf_ptr_resolve, "
     "btf_check_type_tags"),
    ("resolve_arrays", "ARRAY", "btf_array_resolve (index: btf_type_int_is_regular)"),
    ("resolve_member_types", "STRUCT, UNION", "btf_struct_resolve (btf_type_id_size)"),
    ("resolve_embedding", "STRUCT, UNION, ARRAY", "btf_struct_resolve/btf_array_resolve's "
     "resolve stack (a type that contains itself)"),
    ("array_sizes", "ARRAY", "btf_array_resolve: nelems * element size fits u32"),
    ("finish_tables", "all", "btf_type_id_size"),
    ("resolve_members", "STRUCT, UNION", "btf_struct_resolve -> each member type's "
     "check_member / check_kflag_member"),
    ("resolve_protos", "FUNC_PROTO", "btf_func_proto_check"),
    ("resolve_funcs", "FUNC", "btf_func_check, btf_func_resolve"),
    ("resolve_vars", "VAR", "btf_var_resolve"),
    ("resolve_datasecs", "DATASEC", "btf_datasec_resolve"),
    ("resolve_decl_tags", "DECL_TAG", "btf_decl_tag_resolve"),
)
PHASES = tuple(name for name, _, _ in RULES)

# Tests set this so that a bug in the validator shows up as itself, not as a BtfError.
RAISE_INTERNAL_ERRORS = False


class _Validator(Names, Scalars, Refs, Composites, Funcs, Sections, Tables, Core):
    """One validation run over one Btf: the per-kind checks share Core's columns."""

    phases = PHASES


def validate_btf(btf) -> None:  # noqa: ANN001 (a Btf; btf.py imports us lazily)
    """Raise BtfError (one line: source, type id, byte offset, what is wrong) unless `btf`
    passes the kernel's and libbpf's checks. Called by `Btf.parse(..., validate=True)`."""
    # The columns are big, short-lived and acyclic: generational collections in the
    # middle of the work only rescan them (~8% of the time on a vmlinux).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _Validator(btf).run()
    except BtfError:
        raise
    except Exception as exc:  # never a traceback for bad input, whatever the bug
        if RAISE_INTERNAL_ERRORS:
            raise
        raise btf._err(f"cannot validate this BTF ({type(exc).__name__}: {exc})",
                       offset=0) from None
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["PHASES", "RAISE_INTERNAL_ERRORS", "RULES", "validate_btf"]
