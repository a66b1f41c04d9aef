"""The daemon's view of the reconciliation engine (``btfreconciled.reconcile``).

The daemon only needs two calls; tests inject another object with the same shape.
"""

from __future__ import annotations

from typing import Any, Protocol


class Engine(Protocol):
    name: str

    def load_index(self, path: str) -> Any:
        """The running kernel's vmlinux index (built once); has ``.btf``."""

    def reconcile(self, path: str, index: Any, *, strict: str, module_name: str,
                  max_bytes: int | None = None) -> Any:
        """A ``ModuleResult``-shaped object: module, path, verdict (enum with ``.value``),
        summary, diagnostics, btf, module_sha256, timings, ``to_json()``."""


    def rescue(self, path: str, index: Any, candidates: Any, *, module_name: str) -> Any:
        """Classic split BTF distilled against its build among `candidates`, reconciled
        onto `index`: an object with summary, btf, build; raises with the reason."""

    def built_for(self, path: str, index: Any) -> tuple[bool, str]:
        """(whether the module's classic split BTF was built against `index`'s vmlinux,
        why not; False for a module without BTF). The kernel may register such BTF on
        another build all the same. Raises when the file cannot be read."""


class ReconcileEngine:
    """The real engine: :mod:`btfreconciled.reconcile`."""

    name = "btfreconciled.reconcile"

    def __init__(self) -> None:
        from .. import reconcile  # imported here: the daemon's --help works without it

        self._mod = reconcile

    def load_index(self, path: str) -> Any:
        return self._mod.VmlinuxIndex.load(path)

    def rescue(self, path: str, index: Any, candidates: Any, *, module_name: str) -> Any:
        from ..reconcile.rescue import rescue_onto

        return rescue_onto(path, index, candidates, module=module_name)

    def built_for(self, path: str, index: Any) -> tuple[bool, str]:
        from ..elf import read_btf_sections
        from ..reconcile.origin import check_base, infer_shape

        btf = read_btf_sections(path, digest=False).btf
        if btf is None:  # nothing the kernel could have registered or refused
            return False, "the module has no .BTF section"
        shape = infer_shape(btf, f"{path}:.BTF")
        if shape.matches(index.btf.type_count, index.btf.str_end):
            # asked for every classic module the kernel registered (most of a machine's):
            # the counts it was built for are this kernel's, and the kernel's checks
            # passed; the full check stays doctor's
            return True, ""
        fit = check_base(btf, shape, index.btf, source=f"{path}:.BTF", base_name="this kernel")
        return fit.fits, fit.reason

    def reconcile(self, path: str, index: Any, *, strict: str, module_name: str,
                  max_bytes: int | None = None) -> Any:
        return self._mod.reconcile_module_file(path, index, strict=strict,
                                               module_name=module_name, max_bytes=max_bytes)
