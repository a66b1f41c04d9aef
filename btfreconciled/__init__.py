"""btfreconciled: reconcile Linux kernel-module BTF with the running kernel."""

# The one place the version is written (pyproject.toml reads it from here): asking
# importlib.metadata instead cost every btfreconcilectl start ~25 ms of imports, and
# answered "0" when run from a checkout.
__version__ = "0.1.0"
