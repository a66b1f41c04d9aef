"""Run by systemd_service.sh inside btfreconciled.service's mount namespace with its dynamic
uid/gid (nsenter): which of the files the daemon needs it can read, and which places it can
write.  Prints one JSON object: {"read": {path: result}, "write": {path: result}} where a
result is "ok" or the errno name (EACCES, EROFS, ENOENT ...).

usage: python3 - RELEASE FIXTURE_DIR MODULE... < sandbox_access.py
"""

from __future__ import annotations

import errno
import json
import os
import sys


def attempt(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))


def read_file(path: str) -> None:
    with open(path, "rb") as f:
        f.read(4096)


def create_in(directory: str) -> None:
    path = os.path.join(directory, f".btfr-access-probe-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(path)


def append_to(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.close(fd)


def main(argv: list[str]) -> int:
    rel, fixdir, mods = argv[0], argv[1], argv[2:]
    moddir = f"/usr/lib/modules/{rel}"
    reads = [f"{moddir}/modules.dep", f"{moddir}/modules.dep.bin", f"{moddir}/modules.builtin",
             f"{moddir}/modules.order", "/sys/kernel/btf/vmlinux",
             "/etc/btfreconciled/btfreconciled.toml", "/opt/btfreconciled/bin/btfreconciled"]
    for m in mods:
        reads.append(f"{fixdir}/{m}.ko")
        for p in (f"/sys/kernel/btf/{m}", f"/sys/module/{m}/srcversion"):
            if os.path.exists(p):  # 6.1 has no /sys/kernel/btf/<m> for these modules
                reads.append(p)
    out: dict[str, dict[str, str]] = {"read": {}, "write": {}, "append": {}}
    for p in reads:
        out["read"][p] = attempt(lambda p=p: read_file(p))
    out["read"][f"listdir {fixdir}"] = attempt(lambda: os.listdir(fixdir))
    writes = ["/var/cache/btfreconciled", "/run/btfreconciled",  # its own: must be "ok"
              moddir, fixdir, "/etc", "/etc/btfreconciled", "/etc/systemd/system",
              "/opt/btfreconciled", "/opt/btfreconciled/bin", "/usr/local/bin", "/usr/lib",
              "/var/lib", "/var/log", "/var/cache", "/run", "/root", "/sys/kernel",
              f"/sys/module/{mods[0]}" if mods else "/sys/module"]
    site = [os.path.join(dp, "btfreconciled") for dp, _dn, _fn in
            os.walk("/opt/btfreconciled/lib") if os.path.isdir(os.path.join(dp, "btfreconciled"))
            and dp.endswith("site-packages")]
    writes += site[:1]
    for d in writes:
        out["write"][d] = attempt(lambda d=d: create_in(d))
    appends = [f"{moddir}/modules.dep", "/etc/btfreconciled/btfreconciled.toml",
               "/opt/btfreconciled/bin/btfreconciled"]
    appends += [f"{fixdir}/{m}.ko" for m in mods]
    for m in mods:
        params = f"/sys/module/{m}/parameters"
        if os.path.isdir(params):
            appends += [os.path.join(params, n) for n in sorted(os.listdir(params))]
    for p in appends:
        out["append"][p] = attempt(lambda p=p: append_to(p))
    out["ids"] = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
