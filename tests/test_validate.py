"""Strict BTF validation: malformed input is one line and exit 2, and we reject all that
libbpf (and the running kernel's verifier) rejects.

Oracles: libbpf's btf__new through ctypes on the system libbpf.so.1 (required: the test
setup installs libbpf1), and, when this process may use bpf(BPF_BTF_LOAD) (root), the
running kernel's BTF verifier itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import malformed
import pytest
from oracle_tools import VMLINUX

from btfreconciled.btf import validate as validate_mod
from btfreconciled.btf.btf import Btf
from btfreconciled.btf.errors import BtfError
from btfreconciled.btf.kinds import Kind
from btfreconciled.btf.types import Const, Func, FuncProto, Member, Param, Ptr, Struct, Typedef
from btfreconciled.cli.main import main as cli_main
from btfreconciled.errors import ErrorCode

HAND = list(malformed.hand_crafted())
TRUNC = list(malformed.truncations())
RANDOM = [*malformed.bit_flips(400, seed=1), *malformed.word_smashes(400, seed=2)]
# Hand-crafted cases the kernel accepts and we reject on purpose (see validate.py).
STRICTER_THAN_KERNEL = {
    # the kernel misses the loop when it meets the const through a pointer first
    "struct containing itself through a const seen first from a pointer",
    # the kernel only counts links that go to higher type ids
    "modifier chain of 33",
    # the kernel takes a modifier of a FUNC when it resolves the FUNC first
    "TYPEDEF of a FUNC",
}
# What those deliberate differences look like in our messages (random blobs may hit them).
DELIBERATE = re.compile(r"points to \[\d+\] FUNC|contains itself by value|"
                        r"chain of more than 32 modifiers")


@pytest.fixture(autouse=True)
def _validator_bugs_are_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the validator must show as itself, not as a tidy BtfError."""
    monkeypatch.setattr(validate_mod, "RAISE_INTERNAL_ERRORS", True)


# ---------------------------------------------------------------- oracles
class Libbpf:
    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            pytest.fail(f"libbpf.so.1 is missing ({exc}): apt-get install libbpf1", pytrace=False)
        lib.btf__new.restype = ctypes.c_void_p
        lib.btf__new.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.btf__free.argtypes = [ctypes.c_void_p]
        lib.libbpf_get_error.restype = ctypes.c_long
        lib.libbpf_get_error.argtypes = [ctypes.c_void_p]
        # keep libbpf's own warnings off the test output
        lib.libbpf_set_print.restype = ctypes.c_void_p
        lib.libbpf_set_print.argtypes = [ctypes.c_void_p]
        lib.libbpf_set_print(None)
        self.lib = lib

    def accepts(self, data: bytes) -> bool:
        buf = ctypes.create_string_buffer(data, len(data))
        p = self.lib.btf__new(buf, len(data))
        # libbpf >= 1.0: NULL and errno on error; libbpf_get_error() also covers the
        # legacy ERR_PTR convention, so both readings agree on what failed.
        if not p or self.lib.libbpf_get_error(p):
            return False
        self.lib.btf__free(p)
        return True


class Kernel:
    """bpf(BPF_BTF_LOAD): the running kernel's verifier, or None where not permitted."""

    SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
    BPF_BTF_LOAD = 18

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)

    def load(self, data: bytes, log_level: int = 0) -> tuple[bool, str, int]:
        """(accepted, last line of the verifier log, errno). The log is only asked for
        on failure: with it the kernel logs every type and runs out of buffer."""
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        size = (1 << 24) if log_level else 0
        log = ctypes.create_string_buffer(max(size, 1))
        attr = struct.pack("<QQIII", ctypes.addressof(buf),
                           ctypes.addressof(log) if log_level else 0, len(data), size,
                           log_level).ljust(128, b"\0")
        abuf = ctypes.create_string_buffer(attr, len(attr))
        fd = self.libc.syscall(self.SYS_BPF, self.BPF_BTF_LOAD, abuf, len(attr))
        err = ctypes.get_errno()
        if fd >= 0:
            os.close(fd)
            return True, "", 0
        if not log_level and err not in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            return self.load(data, 1)
        lines = [x for x in log.value.decode(errors="replace").splitlines() if x.strip()]
        return False, lines[-1] if lines else os.strerror(err), err

    def usable(self) -> bool:
        if self.SYS_BPF is None:
            return False
        ok, _, err = self.load(malformed.valid_blob())
        return ok or err not in (errno.EPERM, errno.EACCES, errno.ENOSYS)


@pytest.fixture(scope="session")
def libbpf() -> Libbpf:
    return Libbpf()


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    k = Kernel()
    if not k.usable():
        pytest.skip("bpf(BPF_BTF_LOAD) is not permitted here (needs root): no kernel oracle")
    return k


def parse_failure(data: bytes, source: str = "bad.btf", base: Btf | None = None
                  ) -> BtfError | None:
    """None if `data` validates, else the BtfError."""
    try:
        Btf.parse(data, base=base, source=source, validate=True)
    except BtfError as exc:
        return exc
    return None


def parse_error(data: bytes, source: str = "bad.btf", base: Btf | None = None) -> str | None:
    """None if `data` validates, else the one-line BtfError text."""
    exc = parse_failure(data, source, base)
    return None if exc is None else str(exc)


def assert_one_line_error(msg: str | None, source: str = "bad.btf") -> None:
    assert msg is not None, "accepted"
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{source}: "), msg
    assert "offset 0x" in msg or "type [" in msg, msg


# ---------------------------------------------------------------- the valid BTF
def test_valid_blob_validates_round_trips_and_both_oracles_agree(libbpf: Libbpf) -> None:
    data = malformed.valid_blob()
    btf = Btf.parse(data, source="valid.btf", validate=True)
    assert btf.to_bytes() == data
    assert libbpf.accepts(data)
    # every kind is in there
    assert {btf.kind_of(i) for i in range(1, btf.type_count)} >= set(range(1, 20)) - {0}


def test_valid_blob_loads_into_the_kernel(kernel: Kernel) -> None:
    ok, log, _ = kernel.load(malformed.valid_blob())
    assert ok, log


def test_corpus_names_are_unique() -> None:
    names = [c.name for c in HAND]
    assert len(names) == len(set(names))
    assert len(HAND) >= 120


# ---------------------------------------------------------------- hand-crafted cases
@pytest.mark.parametrize("case", HAND, ids=[c.name for c in HAND])
def test_hand_crafted_is_rejected_with_a_one_line_error(case: malformed.Case) -> None:
    exc = parse_failure(case.data)
    assert exc is not None, "accepted"
    msg = str(exc)
    assert_one_line_error(msg)
    if case.expect:  # the message says what is wrong, in words
        assert case.expect in msg, msg
    # the failure class, for programs (malformed.CODES)
    assert exc.code is malformed.code_of(case), (exc.code, msg)


def test_we_reject_everything_libbpf_rejects(libbpf: Libbpf) -> None:
    """The whole corpus: hand-crafted, every truncation, random bit flips and words."""
    rejected_by_libbpf = 0
    for case in [*HAND, *TRUNC, *RANDOM]:
        if not libbpf.accepts(case.data):
            rejected_by_libbpf += 1
            assert parse_error(case.data) is not None, f"{case.name}: libbpf rejects, we accept"
    assert rejected_by_libbpf > len(TRUNC)


@pytest.mark.parametrize("case", HAND, ids=[c.name for c in HAND])
def test_hand_crafted_kernel_agrees(case: malformed.Case, kernel: Kernel) -> None:
    ok, log, _ = kernel.load(case.data)
    if case.name in STRICTER_THAN_KERNEL:
        assert ok, "the kernel now rejects this too: drop it from STRICTER_THAN_KERNEL"
    elif case.name == "other byte order with a 32-byte header":
        pass  # the kernel takes only its own byte order; libbpf is the rule here
    else:
        assert not ok, f"the kernel accepts {case.name!r}"


@pytest.mark.parametrize("case", HAND, ids=[c.name for c in HAND])
def test_cli_dump_exits_2_with_one_line(case: malformed.Case, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.btf"
    path.write_bytes(case.data)
    assert cli_main(["dump", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    # (the file loader, before any BTF parsing, rejects a bad magic by naming it)
    assert str(path) in lines[0]
    assert "offset 0x" in lines[0] or "type [" in lines[0] or "magic" in lines[0], lines[0]


@pytest.mark.parametrize("name", [
    "bad magic", "hdr_len past the end", "unterminated string section",
    "type name offset past the end", "member type past the end",
    "reference loop CONST -> TYPEDEF -> CONST", "vlen overflow (struct)",
    "DATASEC entry is an INT", "struct containing itself through an array",
])
def test_cli_process_exits_2_without_traceback(name: str, tmp_path: Path) -> None:
    """The real command line, in its own process."""
    (case,) = [c for c in HAND if c.name == name]
    path = tmp_path / "bad.btf"
    path.write_bytes(case.data)
    proc = subprocess.run([sys.executable, "-m", "btfreconciled.cli.main", "dump", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0], proc.stderr


def test_messages_say_what_and_where() -> None:
    by_name = {c.name: c for c in HAND}
    msg = parse_error(by_name["member type past the end"].data)
    assert "STRUCT 'foo' member 2 'next' refers to type [999999] but the last type id is" in msg
    msg = parse_error(by_name["reference loop CONST -> TYPEDEF -> CONST"].data)
    assert "reference loop: [" in msg and "CONST -> [" in msg and "TYPEDEF 'loop_t'" in msg
    msg = parse_error(by_name["struct containing itself through an array"].data)
    assert "STRUCT 'selfish' contains itself by value" in msg and "ARRAY" in msg
    msg = parse_error(by_name["DATASEC entry is an INT"].data)
    assert "DATASEC '.data' entry 0 is [1] INT 'int', not a VAR" in msg
    # the byte offset points at the offending word: member 2's type word
    built = malformed.Built()
    btf = Btf.parse(built.blob(), validate=False)
    word = btf._offs[built.ids["foo"] - 1] + 3 + 3 * 2 + 1
    assert f"offset {btf._byte(word):#x}:" in parse_error(by_name["member type past the end"].data)


# ---------------------------------------------------------------- truncated and random
@pytest.mark.parametrize("case", TRUNC, ids=[c.name for c in TRUNC])
def test_every_truncation_is_rejected(case: malformed.Case, libbpf: Libbpf) -> None:
    exc = parse_failure(case.data)
    assert_one_line_error(None if exc is None else str(exc))
    assert exc is not None and exc.code is ErrorCode.BTF_TRUNCATED, exc
    assert not libbpf.accepts(case.data)


def test_random_blobs_parse_or_raise_btf_error_and_match_libbpf(libbpf: Libbpf) -> None:
    rejected = 0
    for case in RANDOM:
        try:
            msg = parse_error(case.data)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{case.name}: {type(exc).__name__}: {exc}")
        if msg is None:
            assert libbpf.accepts(case.data), f"{case.name}: libbpf rejects, we accept"
        else:
            rejected += 1
            assert_one_line_error(msg)
    assert 0 < rejected < len(RANDOM)


def test_random_blobs_match_the_kernel(kernel: Kernel) -> None:
    """Whatever the kernel rejects, we reject; whatever it accepts, we accept too, but for
    the deliberate, order-independent differences."""
    diffs = []
    for case in [*TRUNC, *RANDOM, *malformed.word_smashes(600, seed=21)]:
        ok, log, _ = kernel.load(case.data)
        ours = parse_error(case.data)
        if ok and ours is not None and DELIBERATE.search(ours):
            continue
        if ok != (ours is None):
            diffs.append(f"{case.name}: kernel {'accepts' if ok else 'rejects: ' + log}; "
                         f"we {'accept' if ours is None else 'reject: ' + ours}")
    assert not diffs, "\n".join(diffs)


def test_cli_on_rejected_random_blobs(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.btf"
    for case in [c for c in RANDOM if parse_error(c.data)][::4]:
        path.write_bytes(case.data)
        assert cli_main(["dump", str(path)]) == 2, case.name
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1, (case.name, err)


def test_cli_dumps_accepted_random_blobs(tmp_path: Path,
                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Valid BTF may hold names that are not UTF-8 (the kernel's isalpha() takes Latin-1
    letters): dump writes them as bytes, like bpftool."""
    path = tmp_path / "x.btf"
    accepted = [c for c in RANDOM if parse_error(c.data) is None]
    assert accepted
    for case in accepted:
        path.write_bytes(case.data)
        assert cli_main(["dump", str(path)]) == 0, case.name
        out, err = capsysbinary.readouterr()
        assert out.startswith(b"[1] ") and not err, case.name


# ---------------------------------------------------------------- real kernel BTF
@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    if not VMLINUX.exists():
        pytest.fail(f"{VMLINUX} is missing: these tests need a kernel with CONFIG_DEBUG_INFO_BTF")
    return VMLINUX.read_bytes()


def test_running_vmlinux_validates(vmlinux: bytes, libbpf: Libbpf) -> None:
    btf = Btf.parse(vmlinux, source=str(VMLINUX), validate=True)
    assert btf.type_count > 1000
    assert btf.to_bytes() == vmlinux
    assert libbpf.accepts(vmlinux)


def test_big_endian_vmlinux_validates_and_round_trips(vmlinux: bytes) -> None:
    be = malformed.byteswap(vmlinux)
    assert be[:2] == b"\xeb\x9f"
    btf = Btf.parse(be, source="vmlinux.be", validate=True)
    assert btf.byte_order == ">"
    assert btf.to_bytes() == be
    assert malformed.byteswap(btf.to_bytes()) == vmlinux


def test_big_endian_malformed_is_rejected_too() -> None:
    for name in ("member type past the end", "reference loop CONST -> TYPEDEF -> CONST",
                 "struct name: dash", "DATASEC entry is an INT"):
        (case,) = [c for c in HAND if c.name == name]
        assert_one_line_error(parse_error(malformed.byteswap(case.data)))


# ---------------------------------------------------------------- split BTF
@pytest.fixture(scope="module")
def base() -> Btf:
    return Btf.parse(malformed.valid_blob(), source="base.btf", validate=True)


def _split(base: Btf, build) -> bytes:  # noqa: ANN001
    split = Btf(base)
    build(split)
    return split.to_bytes()


def test_split_btf_referring_to_base_validates(base: Btf, libbpf: Libbpf) -> None:
    (foo,) = base.find("foo")
    (i32,) = base.find("int")
    (cchar,) = [t for t in range(1, base.type_count) if base.kind_of(t) == 10]

    def build(s: Btf) -> None:
        td = s.add(Typedef(s.add_str("foo_t"), 0, foo))
        p = s.add(Ptr(0, 0, cchar))
        st = s.add(Struct(s.add_str("mod_state"), 0, 80, (
            Member(s.add_str("a"), i32, 0),          # base name, base type
            Member(s.add_str("foo"), td, 64),        # embeds a base struct via a typedef
            Member(s.add_str("name"), p, 576),
        )))
        proto = s.add(FuncProto(0, 0, i32, (Param(s.add_str("st"), s.add(Ptr(0, 0, st))),)))
        s.add(Func(s.add_str("mod_init"), 0, proto, 1))

    data = _split(base, build)
    btf = Btf.parse(data, base=base, source="mod.btf", validate=True)
    assert btf.to_bytes() == data


SPLIT_CODES = {"base id past the end": ErrorCode.BTF_BAD_TYPE_ID,
               "loop across split types": ErrorCode.BTF_LOOP}


@pytest.mark.parametrize("what", ["base id past the end", "member embeds a base FWD",
                                  "FUNC to a base INT", "base struct too big for its slot",
                                  "bad name in split strings", "loop across split types"])
def test_split_btf_errors(base: Btf, what: str) -> None:
    (foo,) = base.find("foo")
    (i32,) = base.find("int")
    (fwd,) = base.find("opaque")

    def build(s: Btf) -> None:
        if what == "base id past the end":
            s.add(Ptr(0, 0, s.type_count + 5))
        elif what == "member embeds a base FWD":
            s.add(Struct(s.add_str("m"), 0, 8, (Member(s.add_str("x"), fwd, 0),)))
        elif what == "FUNC to a base INT":
            s.add(Func(s.add_str("f"), 0, i32, 1))
        elif what == "base struct too big for its slot":
            s.add(Struct(s.add_str("m"), 0, 8, (Member(s.add_str("x"), foo, 0),)))
        elif what == "bad name in split strings":
            s.add(Typedef(s.add_str("no good"), 0, i32))
        else:
            c = s.add(Const(0, 0, s.type_count + 1))
            s.add(Typedef(s.add_str("t"), 0, c))

    exc = parse_failure(_split(base, build), source="mod.btf", base=base)
    msg = None if exc is None else str(exc)
    assert_one_line_error(msg, "mod.btf")
    assert "type [" in msg
    assert exc is not None and exc.code is SPLIT_CODES.get(what, ErrorCode.BTF_INVALID), exc


def test_split_btf_on_running_vmlinux(vmlinux: bytes) -> None:
    vm = Btf.parse(vmlinux, validate=False)
    (ts,) = vm.find("task_struct", Kind.STRUCT)
    (lh,) = vm.find("list_head", Kind.STRUCT)
    split = Btf(vm)
    s = split.add_str
    lh_size = vm.type(lh).size
    st = split.add(Struct(s("my_mod"), 0, 8 + lh_size, (
        Member(s("task"), split.add(Ptr(0, 0, ts)), 0),
        Member(s("node"), lh, 64),
    )))
    split.add(Ptr(0, 0, st))
    data = split.to_bytes()
    assert Btf.parse(data, base=vm, validate=True).to_bytes() == data
    bad = Btf(vm)
    bad.add(Struct(bad.add_str("tiny"), 0, 4, (Member(bad.add_str("node"), lh, 0),)))
    assert_one_line_error(parse_error(bad.to_bytes(), base=vm))
