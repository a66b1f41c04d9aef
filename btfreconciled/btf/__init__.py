"""BTF: parsing, validation, writing and dumping (see include/uapi/linux/btf.h)."""

from .btf import Btf
from .errors import BtfError
from .kinds import Kind

__all__ = ["Btf", "BtfError", "Kind"]
