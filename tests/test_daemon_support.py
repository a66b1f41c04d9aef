"""Helpers for the daemon tests: a fake engine (tests only) and a fake sysfs/module tree.

The fake engine stands in for ``btfreconciled.reconcile`` while the daemon's own behaviour
(events, queueing, cache, socket) is tested; it is injected through ``main(engine=...)``.
A fake module file is text: its first word picks the verdict, the rest is a payload; the
"reconciled BTF" is a deterministic function of the file, so a test can tell a complete
``.btf`` from a torn one.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.types import Int, Member, Ptr, Struct

REPO = Path(__file__).resolve().parent.parent
# btfreconcilectl as the console script runs it (`python -m btfreconciled.cli.main` would
# import cli/main.py twice, as __main__ and as a module, with two distinct CliError classes).
CTL = [sys.executable, "-c", "import sys; from btfreconciled.cli.main import main; "
       "sys.exit(main())"]


class FakeVerdict(enum.Enum):
    OK = "ok"
    INCOMPATIBLE = "incompatible"
    NO_BASE = "no-base"
    ERROR = "error"


@dataclass
class FakeIndex:
    path: str
    sha256: str
    btf: Any = None


@dataclass
class FakeResult:
    module: str
    path: str
    verdict: FakeVerdict
    summary: str
    diagnostics: list[dict] = field(default_factory=list)
    btf: bytes | None = None
    module_sha256: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    build_id: str | None = None
    srcversion: str | None = None
    base_sections: list[str] | None = None

    def to_json(self) -> dict:
        return {"module": self.module, "path": self.path, "verdict": self.verdict.value,
                "summary": self.summary, "diagnostics": self.diagnostics,
                "module_sha256": self.module_sha256, "timings": self.timings,
                "build_id": self.build_id, "srcversion": self.srcversion,
                "base_sections": self.base_sections}


def _fake_vmlinux() -> bytes:
    """A tiny but real vmlinux BTF: the daemon indexes it and merges modules onto it."""
    b = Btf()
    b.add(Int(b.add_str("int"), 0, 4, 1, 0, 32))  # [1]
    b.add(Struct(b.add_str("list_head"), 0, 16, (
        Member(b.add_str("next"), 3, 0), Member(b.add_str("prev"), 3, 64))))  # [2]
    b.add(Ptr(0, 0, 2))  # [3]
    return b.to_bytes()


FAKE_VMLINUX = _fake_vmlinux()
_FAKE_VML_TYPES = 4  # void + 3
_FAKE_VML_STR_LEN = struct.unpack_from("<I", FAKE_VMLINUX, 20)[0]


def expected_btf(content: bytes, size: int = 0) -> bytes:
    """The fake engine's output for a module file: real split BTF on FAKE_VMLINUX (one
    struct embedding list_head, named after the file's sha256) whose string section carries
    `size` (default 4096) sha-derived bytes, so a torn or stale file is told apart."""
    seed = hashlib.sha256(content).digest()
    n = size or 4096
    name = b"m" + seed.hex().encode() + b"\0"
    strs = name + b"node\0" + (seed * (n // len(seed) + 1))[:n] + b"\0"
    types = struct.pack("<IIIIII", _FAKE_VML_STR_LEN, (4 << 24) | 1, 16,
                        _FAKE_VML_STR_LEN + len(name), 2, 0)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs))
    return hdr + types + strs


class FakeEngine:
    name = "fake"

    def __init__(self, delay: float = 0.0, size: int = 0) -> None:
        self.delay = delay
        self.size = size
        self.calls: list[str] = []

    def load_index(self, path: str) -> FakeIndex:
        data = Path(path).read_bytes()
        return FakeIndex(path, hashlib.sha256(data).hexdigest(),
                         Btf.parse(data, source=path, validate=False))

    def reconcile(self, path: str, index: Any, *, strict: str, module_name: str,
                  max_bytes: int | None = None) -> FakeResult:
        self.calls.append(module_name)
        if self.delay:
            time.sleep(self.delay)
        content = Path(path).read_bytes()
        word = content.split(b" ", 1)[0].strip()
        sha = hashlib.sha256(content).hexdigest()
        if word == b"RAISE":
            raise RuntimeError("fake engine bug")
        if word.startswith(b"SLOW"):  # "SLOW3.5": a pathological input taking 3.5 s
            time.sleep(float(word[4:]))
            word = b"OK"
        if word == b"OK":
            # "OK name BUILDID=abcd SRCVERSION=XYZ ...": the file's build id (what the kernel
            # shows in /sys/module/<m>/notes/.note.gnu.build-id for the loaded module) and
            # srcversion; "EXPECTSONLY": it carries .BTF.base_expects but no .BTF.base
            words = content.split()
            bid = next((w[8:].decode() for w in words if w.startswith(b"BUILDID=")), None)
            sv = next((w[11:].decode() for w in words if w.startswith(b"SRCVERSION=")), None)
            bases = [".BTF.base_expects"] if b"EXPECTSONLY" in words else [".BTF.base"]
            return FakeResult(module_name, path, FakeVerdict.OK, "reconciled (fake)",
                              btf=expected_btf(content, self.size), module_sha256=sha,
                              timings={"fake": 0.0}, build_id=bid, srcversion=sv,
                              base_sections=bases)
        if word == b"INCOMPATIBLE":
            return FakeResult(module_name, path, FakeVerdict.INCOMPATIBLE,
                              "STRUCT foo size=16: vmlinux has size=24",
                              diagnostics=[{
                                  "code": "unmapped", "severity": "error",
                                  "summary": "struct foo (size 16) expected by the module: "
                                             "vmlinux has no compatible type",
                                  "expected": {"id": 3, "kind": "struct", "name": "foo",
                                               "size": 16},
                                  "candidates": [{"id": 7, "kind": "struct", "name": "foo",
                                                  "size": 24, "why_not": "size 24 != 16"}],
                                  "embedded": True, "paths": ["struct obj.f -> struct foo"]}],
                              module_sha256=sha)
        if word == b"NOBTF":  # no .BTF section at all: the real engine's result for it
            return FakeResult(module_name, path, FakeVerdict.NO_BASE,
                              f"{path}: no .BTF section: the module has no BTF at all, "
                              "nothing to reconcile",
                              diagnostics=[{"code": "no-btf", "severity": "info",
                                            "summary": f"{path}: no .BTF section"}],
                              module_sha256=sha, base_sections=[])
        if word in (b"NOBASE", b"CLASSIC"):
            return FakeResult(module_name, path, FakeVerdict.NO_BASE,
                              "no .BTF.base section: not split-distilled", module_sha256=sha)
        return FakeResult(module_name, path, FakeVerdict.ERROR, f"not a module: {word!r}",
                          module_sha256=sha)


@dataclass
class FakeRescue:
    summary: str
    btf: bytes
    build: str


def _fake_rescue(self: FakeEngine, path: str, index: Any, candidates: Any, *,
                 module_name: str) -> FakeRescue:
    """"CLASSIC name BUILD=/boot/x": rescued against /boot/x; without BUILD=, not found."""
    content = Path(path).read_bytes()
    build = next((w[6:].decode() for w in content.split() if w.startswith(b"BUILD=")), None)
    if build is None:
        raise RuntimeError("built against a vmlinux with 123 types and 456 string bytes; "
                           "none of the kernel files searched is that build")
    return FakeRescue(f"{module_name}: rescued against {build}", expected_btf(content), build)


def _fake_built_for(self: FakeEngine, path: str, index: Any) -> tuple[bool, str]:
    """"CLASSIC name FOREIGN": built for another vmlinux (the kernel may take it anyway)."""
    if b"FOREIGN" in Path(path).read_bytes().split():
        return False, "built against a vmlinux with 123 types and 456 string bytes"
    return True, ""


FakeEngine.rescue = _fake_rescue  # type: ignore[attr-defined]
FakeEngine.built_for = _fake_built_for  # type: ignore[attr-defined]


class FakeSystem:
    """A fake /sys (module/, kernel/btf/vmlinux) and a module directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        self.mods = root / "mods"
        self.cache = root / "cache"
        self.socket = root / "run" / "control.sock"
        (self.sysfs / "module").mkdir(parents=True)
        (self.sysfs / "kernel" / "btf").mkdir(parents=True)
        self.vmlinux = self.sysfs / "kernel" / "btf" / "vmlinux"
        self.vmlinux.write_bytes(FAKE_VMLINUX)
        self.mods.mkdir()
        self.cache.mkdir()

    def put(self, path: Path, data: bytes | str) -> None:
        """Replace a sysfs file in one step: the kernel creates its files with their content,
        and a daemon polling beside a truncate-then-write would read an empty file."""
        tmp = self.root / f".put-{path.name}"
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)

    def add_file(self, name: str, word: str = "OK", payload: str = "") -> Path:
        p = self.mods / f"{name}.ko"
        p.write_text(f"{word} {name} {payload}")
        return p

    def load(self, name: str) -> None:
        d = self.sysfs / "module" / name
        d.mkdir(exist_ok=True)
        self.put(d / "initstate", "live\n")

    def loaded_build_id(self, name: str, build_id: str) -> None:
        """The loaded module's /sys/module/<m>/notes/.note.gnu.build-id (a GNU note)."""
        notes = self.sysfs / "module" / name / "notes"
        notes.mkdir(exist_ok=True)
        desc = bytes.fromhex(build_id)
        (notes / ".note.gnu.build-id").write_bytes(
            struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc)

    def loaded_srcversion(self, name: str, srcversion: str) -> None:
        (self.sysfs / "module" / name / "srcversion").write_text(f"{srcversion}\n")

    def coming(self, name: str) -> None:
        """Loaded and still initialising (initstate "coming")."""
        self.load(name)
        self.put(self.sysfs / "module" / name / "initstate", "coming\n")

    def kernel_btf(self, name: str, data: bytes) -> None:
        self.put(self.sysfs / "kernel" / "btf" / name, data)

    def builtin(self, name: str) -> None:
        (self.sysfs / "module" / name).mkdir(exist_ok=True)

    def unload(self, name: str) -> None:
        import shutil

        shutil.rmtree(self.sysfs / "module" / name)
        (self.sysfs / "kernel" / "btf" / name).unlink(missing_ok=True)

    def config(self, **extra: Any) -> Path:
        values: dict[str, Any] = {
            "cache_dir": str(self.cache), "socket": str(self.socket),
            "sysfs": str(self.sysfs), "vmlinux": str(self.vmlinux),
            "modules_root": str(self.root / "nolib"),
            "extra_module_dirs": [str(self.mods)], "release": "6.18.0-test",
        }
        values.update(extra)
        p = self.root / "btfreconciled.toml"
        p.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        return p


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))


def daemon_argv(cfg: Path, *extra: str) -> list[str]:
    """A python command line running the daemon with the fake engine."""
    here = str(Path(__file__).parent)
    code = (f"import os, sys; sys.path.insert(0, {here!r}); "
            "from test_daemon_support import FakeEngine; "
            "from btfreconciled.daemon.main import main; "
            "eng = FakeEngine(delay=float(os.environ.get('FAKE_DELAY', '0')), "
            "size=int(os.environ.get('FAKE_SIZE', '0'))); "
            "sys.exit(main(sys.argv[1:], engine=eng))")
    return [sys.executable, "-c", code, "--foreground", "--config", str(cfg), *extra]


def wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def env_for_daemon(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
