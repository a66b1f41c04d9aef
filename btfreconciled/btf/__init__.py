"""BTF: parsing, validation, writing and dumping (see include/uapi/linux/btf.h).

Import from the modules (``btf.btf.Btf``, ``btf.errors.BtfError``, ``btf.kinds.Kind``): the
package itself imports nothing, so that a command needing only the error class (every
btfreconcilectl start) does not pay for the parser."""
