#!/usr/bin/env python3
"""Decompress the vmlinux ELF out of a bzImage (vmlinuz).

Looks for the zstd / xz / gzip / lzma / lz4 / bzip2 magic inside the image and
decompresses from each candidate offset with the command-line tool until the
output is an ELF file.  Usage: extract-vmlinux.py VMLINUZ OUT
"""

import os
import subprocess
import sys
from pathlib import Path

# (magic, command); the command reads the compressed stream on stdin.
CANDIDATES = [
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
    (b"\xfd7zXZ\x00", ["xz", "-dcq"]),
    (b"\x1f\x8b\x08", ["gzip", "-dcq"]),
    (b"\x5d\x00\x00\x00", ["xz", "--format=lzma", "-dcq"]),
    (b"\x02\x21\x4c\x18", ["lz4", "-dcq"]),
    (b"BZh", ["bzip2", "-dcq"]),
]


def main() -> int:
    src, out = sys.argv[1], sys.argv[2]
    data = Path(src).read_bytes()
    if data[:4] == b"\x7fELF":
        Path(out).write_bytes(data)
        return 0
    tmp = out + ".tmp"
    for magic, cmd in CANDIDATES:
        pos = data.find(magic)
        tried = 0
        while pos >= 0 and tried < 8:
            tried += 1
            with open(tmp, "wb") as f:
                try:
                    subprocess.run(cmd, input=data[pos:], stdout=f,
                                   stderr=subprocess.DEVNULL, check=False)
                except FileNotFoundError:
                    break
            with open(tmp, "rb") as f:
                head = f.read(4)
            if head == b"\x7fELF":
                os.replace(tmp, out)
                print(f"extract-vmlinux: {cmd[0]} payload at offset {pos}")
                return 0
            pos = data.find(magic, pos + 1)
    if os.path.exists(tmp):
        os.unlink(tmp)
    print(f"extract-vmlinux: no compressed ELF payload found in {src}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
