"""Reconciliation engine: distill a module's base expectations, reconcile its split
BTF onto any vmlinux exactly as libbpf/the kernel would, and explain every rejection.

The daemon's entry points::

    target = VmlinuxIndex.load()                  # once per running kernel
    res = reconcile_module_file(path, target)     # per module; never raises for bad input
    res.verdict, res.summary, res.diagnostics, res.btf, res.to_json()
"""

from __future__ import annotations

from .diagnostics import Problem
from .distill import DistillError, DistillResult, distill
from .module import ModuleResult, Verdict, load_module, reconcile_module_file
from .relocate import EMBEDDED_KERNEL, EMBEDDED_LIBBPF_1_5, RelocateResult, relocate
from .target import VmlinuxIndex

__all__ = [
    "EMBEDDED_KERNEL",
    "EMBEDDED_LIBBPF_1_5",
    "DistillError",
    "DistillResult",
    "ModuleResult",
    "Problem",
    "RelocateResult",
    "Verdict",
    "VmlinuxIndex",
    "distill",
    "load_module",
    "reconcile_module_file",
    "relocate",
]
