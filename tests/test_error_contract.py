"""The CLI's error contract, held against hostile inputs (SPEC §10).

Exit 0 or 1 with the answer on stdout, or exit 2 with exactly one line on stderr and nothing
on stdout; never a traceback; nothing lost on disk when a rewrite fails; nothing read from a
file that only looks like one (/proc); and no control character from a file name, a module
or the daemon reaching the terminal raw.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_doctor import _classic  # noqa: E402
from test_fuzz_elf import (  # noqa: E402
    Seed,
    build_module,
    m_btf_header,
    m_btf_words,
    m_flip,
    m_truncate,
    run_cli,
)
from test_reconcile import _with_expects, module, reparse, vmlinux  # noqa: E402
from test_trust_control import FakeDaemon  # noqa: E402

import btfreconciled.elfwrite as elfwrite  # noqa: E402
from btfreconciled.cli.errors import printable  # noqa: E402
from btfreconciled.elf import ElfError  # noqa: E402

ESC = "\x1b]0;pwned\x07"  # sets the terminal's title: must never be printed raw


def assert_error_line(rc: int | str, out: str, err: str, *needles: str) -> None:
    """Exit 2, nothing on stdout, one non-empty line on stderr holding every needle."""
    assert rc == 2, (rc, out, err)
    assert out == "", out
    assert err.endswith("\n") and len(err.splitlines()) == 1, repr(err)
    assert err.startswith("btfreconcilectl: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------ rescue --in-place


@pytest.fixture
def classic(tmp_path: Path) -> tuple[Path, Path]:
    """A module with classic split BTF and a directory holding its build."""
    base = reparse(vmlinux())
    ko = _classic(tmp_path, base)
    cands = tmp_path / "boot"
    cands.mkdir()
    (cands / "vmlinux-old.btf").write_bytes(base.to_bytes())
    return ko, cands


def _signed(ko: Path) -> bytes:
    with open(ko, "ab") as f:
        f.write(b"\0" * 12 + b"~Module signature appended~\n")
    return ko.read_bytes()


def _rescue_in_place(ko: Path, cands: Path, *extra: str) -> tuple[int | str, str, str]:
    return run_cli(["rescue", str(ko), "--search", str(cands), "--in-place", "--signed-ok",
                    *extra])


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling-symlink", "directory"])
def test_rescue_in_place_refuses_an_existing_backup_name(classic, kind: str) -> None:
    """An earlier backup (or anything else of that name) stays, and so does the signed
    original: both used to be lost or overwritten while the command said success."""
    ko, cands = classic
    signed = _signed(ko)
    backup = Path(f"{ko}.btfr-orig")
    elsewhere = ko.parent / "elsewhere"
    elsewhere.write_bytes(b"an older original")
    if kind == "file":
        backup.write_bytes(b"an older original")
    elif kind == "symlink":
        backup.symlink_to(elsewhere)
    elif kind == "dangling-symlink":
        backup.symlink_to(ko.parent / "nothing-here")
    else:
        backup.mkdir()
    before = sorted(p.name for p in ko.parent.iterdir())
    rc, out, err = _rescue_in_place(ko, cands)
    assert_error_line(rc, out, err, str(backup), "already exists")
    assert ko.read_bytes() == signed  # the signed original is untouched
    assert sorted(p.name for p in ko.parent.iterdir()) == before
    assert elsewhere.read_bytes() == b"an older original"
    if kind == "file":
        assert backup.read_bytes() == b"an older original"
    # another name, when asked for, is fine
    rc, out, _ = _rescue_in_place(ko, cands, "--backup-suffix", ".orig2")
    assert rc == 0 and f"original kept as {ko}.orig2" in out
    assert Path(f"{ko}.orig2").read_bytes() == signed


def test_rescue_in_place_keeps_the_original_as_a_link_then_rewrites(classic) -> None:
    ko, cands = classic
    signed = _signed(ko)
    ino = ko.stat().st_ino
    rc, out, err = _rescue_in_place(ko, cands)
    assert (rc, err) == (0, ""), err
    backup = Path(f"{ko}.btfr-orig")
    assert f"original kept as {backup}" in out
    assert backup.read_bytes() == signed and backup.stat().st_ino == ino  # link(2), no copy
    assert ko.read_bytes() != signed and ko.stat().st_ino != ino


def test_rescue_in_place_copies_exclusively_across_file_systems(classic, monkeypatch) -> None:
    ko, cands = classic
    signed = _signed(ko)
    ko.chmod(0o640)

    def no_link(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", no_link)
    rc, _out, err = _rescue_in_place(ko, cands)
    assert (rc, err) == (0, ""), err
    backup = Path(f"{ko}.btfr-orig")
    assert backup.read_bytes() == signed and backup.stat().st_mode & 0o777 == 0o640


def test_a_failed_rescue_in_place_leaves_no_backup_and_the_original(classic,
                                                                    monkeypatch) -> None:
    ko, cands = classic
    signed = _signed(ko)
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if Path(dst) == ko:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    # after the backup was made: replacing the module fails
    monkeypatch.setattr(os, "replace", failing_replace)
    rc, out, err = _rescue_in_place(ko, cands)
    assert_error_line(rc, out, err, str(ko))
    assert ko.read_bytes() == signed
    assert sorted(p.name for p in ko.parent.iterdir() if p.name.startswith(ko.name)) == \
        [ko.name]
    monkeypatch.setattr(os, "replace", real_replace)

    # before it: building the new file fails
    def broken(src: Path, _sections: Any) -> Any:
        raise ElfError(src, "cannot write sections into this file")

    monkeypatch.setattr(elfwrite, "_rewritten_payload", broken)
    rc, out, err = _rescue_in_place(ko, cands)
    assert_error_line(rc, out, err, str(ko))
    assert ko.read_bytes() == signed and not Path(f"{ko}.btfr-orig").exists()


# ------------------------------------------------------------------ inputs that are not files


def _input_commands(p: str, good_btf: str, good_ko: str, tmp: Path) -> list[list[str]]:
    return [["dump", p], ["dump", good_ko, "-B", p], ["inspect", p],
            ["check", p, "--vmlinux", good_btf], ["check", good_ko, "--vmlinux", p],
            ["doctor", p, "--vmlinux", good_btf], ["doctor", good_ko, "--vmlinux", p],
            ["rescue", p, "-o", str(tmp / "out.ko")],
            ["rescue", good_ko, "--base", p, "-o", str(tmp / "out.ko")],
            ["distill", good_ko, "--base", p, "-o", str(tmp / "out.ko")],
            ["reconcile", good_ko, "--vmlinux", p, "-o", str(tmp / "out.btf")]]


@pytest.mark.parametrize("path", ["/proc/kmsg", "/proc/self/status", "/proc/version"])
def test_proc_files_are_refused_unread(classic, tmp_path: Path, path: str,
                                       monkeypatch) -> None:
    """/proc files claim to be regular files of size 0; reading /proc/kmsg consumes the
    kernel's pending log messages (and used to end in a TypeError traceback)."""
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")  # /proc/kmsg without CONFIG_PRINTK
    ko, cands = classic
    good_btf = str(cands / "vmlinux-old.btf")
    # every input is read through a file object made on the checked descriptor: none may
    # ever be made for this one
    opened: list[str] = []
    real_open = builtins.open

    def watched_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else str(file)
        if name == os.path.realpath(path):
            opened.append(name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watched_open)
    for argv in _input_commands(path, good_btf, str(ko), tmp_path):
        rc, out, err = run_cli(argv)
        assert_error_line(rc, out, err, path)
        # opening /proc/kmsg needs CAP_SYSLOG: without it the open fails, which is fine too
        assert "/proc file" in err or "Operation not permitted" in err, (argv, err)
    assert not opened
    assert not (tmp_path / "out.ko").exists() and not (tmp_path / "out.btf").exists()


def test_empty_files_and_sysfs_btf(classic, tmp_path: Path) -> None:
    ko, cands = classic
    empty = tmp_path / "empty.ko"
    empty.touch()
    for argv in _input_commands(str(empty), str(cands / "vmlinux-old.btf"), str(ko),
                                tmp_path):
        rc, out, err = run_cli(argv)
        assert_error_line(rc, out, err, str(empty), "empty file")
    # sysfs binary attributes report their real size: still read
    if Path("/sys/kernel/btf/vmlinux").exists():
        rc, out, err = run_cli(["inspect", "/sys/kernel/btf/vmlinux"])
        assert rc == 0 and out and not err, err


# ------------------------------------------------------------------ control characters


@pytest.mark.parametrize("name", ["a\nb.ko", "a\rb.ko", f"t{ESC}.ko", "x\u2028y.ko"])
def test_a_control_character_in_a_file_name_stays_on_one_line(classic, tmp_path: Path,
                                                             name: str) -> None:
    ko, cands = classic
    good_btf = str(cands / "vmlinux-old.btf")
    bad = tmp_path / name
    bad.write_bytes(b"not a module at all")
    missing = tmp_path / f"missing-{name}"
    for p in (bad, missing):
        for argv in [["dump", str(p)], ["inspect", str(p)],
                     ["check", str(p), "--vmlinux", good_btf],
                     ["doctor", str(p), "--vmlinux", good_btf],
                     ["rescue", str(p), "-o", str(tmp_path / "o.ko")],
                     ["distill", str(p), "--base", good_btf, "-o", str(tmp_path / "o.ko")],
                     ["rescue", str(ko), "-o", str(tmp_path / "sub" / name / "o.ko")]]:
            rc, out, err = run_cli(argv)
            assert_error_line(rc, out, err, printable(name))
            assert "\x1b" not in err and "\x07" not in err


def test_printable_escapes_only_what_a_terminal_acts_on() -> None:
    assert printable("plain ascii, ünïcödé, tab\tnl\n") == \
        "plain ascii, ünïcödé, tab\\tnl\\n"
    assert printable(ESC) == "\\x1b]0;pwned\\x07"
    assert printable("\x9b31m\x7f\u202e") == "\\x9b31m\\x7f\\u202e"


# ------------------------------------------------------------------ mutated modules


@pytest.fixture(scope="module")
def seeds() -> tuple[list[Seed], bytes]:
    """Module files as the build leaves them (distilled with and without
    .BTF.base_expects, and classic split BTF), and the vmlinux BTF they were built for."""
    base = reparse(vmlinux())
    mod = module(base)
    dbase, dsplit, expects = _with_expects((base, mod))
    return [
        build_module("full", {".BTF": dsplit.to_bytes(), ".BTF.base": dbase.to_bytes(),
                              ".BTF.base_expects": expects.to_bytes()}),
        build_module("dist", {".BTF": dsplit.to_bytes(), ".BTF.base": dbase.to_bytes()}),
        build_module("plain", {".BTF": mod.to_bytes()}),
    ], base.to_bytes()


N_MUTANTS = 120
MUTANT_SEED = 20261207


def test_doctor_and_rescue_keep_the_contract_on_mutated_modules(seeds, tmp_path: Path
                                                                ) -> None:
    """Bit flips, header and record edits and truncations of real module files: each run
    ends in an answer (exit 0/1, stdout) or one error line (exit 2, stderr only). Doctor
    used to exit 2 with its error on stdout and nothing on stderr, and rescue to report a
    corrupt .BTF as a module it merely cannot rescue."""
    mods, base = seeds
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinux-build.btf").write_bytes(base)
    vm = tmp_path / "vm.btf"
    vm.write_bytes(base)
    rng = random.Random(MUTANT_SEED)
    mutators = [m_flip, m_truncate, m_btf_header, m_btf_words]
    outcomes: dict[str, int] = {}
    problems = []
    started = time.monotonic()
    for n in range(N_MUTANTS):
        seed = mods[n % len(mods)]
        data = bytearray(seed.data)
        what = rng.choice(mutators)(rng, seed, data)
        ko = tmp_path / f"m{n}.ko"
        ko.write_bytes(bytes(data))
        out_ko = tmp_path / "rescued.ko"
        for argv in (["doctor", str(ko), "--vmlinux", str(vm), "--search", str(boot)],
                     ["rescue", str(ko), "--search", str(boot), "-o", str(out_ko)]):
            rc, out, err = run_cli(argv)
            outcomes[f"{argv[0]}:{rc}"] = outcomes.get(f"{argv[0]}:{rc}", 0) + 1
            answer = rc in (0, 1) and out.strip() and not err
            error = (rc == 2 and out == "" and len(err.splitlines()) == 1 and err.strip()
                     and "Traceback" not in err)
            if not (answer or error):
                problems.append(f"mutant {n} [{what}] {argv[0]}: exit {rc}, stdout "
                                f"{out[:200]!r}, stderr {err[:300]!r}")
            if rc == 1 and argv[0] == "rescue" and "BTF sections run past" in out:
                problems.append(f"mutant {n} [{what}]: corrupt .BTF reported as a "
                                f"module that cannot be rescued: {out!r}")
            out_ko.unlink(missing_ok=True)
        ko.unlink()
    assert not problems, "\n".join(problems[:20])
    # the mutants reach every outcome, errors included
    assert outcomes.get("doctor:2", 0) > 10 and outcomes.get("rescue:2", 0) > 10, outcomes
    assert outcomes.get("doctor:0", 0) + outcomes.get("doctor:1", 0) > 5, outcomes
    assert time.monotonic() - started < 20


def test_doctor_on_a_directory_says_on_stderr_that_some_failed(seeds, tmp_path: Path) -> None:
    mods, base = seeds
    vm = tmp_path / "vm.btf"
    vm.write_bytes(base)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.ko").write_bytes(mods[0].data)
    (tree / "bad.ko").write_bytes(mods[0].data[:100])
    rc, out, err = run_cli(["doctor", str(tree), "--vmlinux", str(vm),
                            "--search", str(tmp_path / "none")])
    assert rc == 2 and "bad.ko" in out
    assert len(err.splitlines()) == 1 and "1 of 2 modules could not be diagnosed" in err


# ------------------------------------------------------------------ what the daemon says


def _status(text: str) -> dict[str, Any]:
    return {"ok": True,
            "daemon": {"version": f"1{text}", "pid": 1, "uptime": 5, "events": "poll",
                       "events_detail": text},
            "kernel": {"release": text, "id": "0" * 64, "vmlinux": text},
            "cache": {"kernel_dir": text}, "counts": {"ok": 1, text: 2},
            "queue": {"pending": 0, "busy": text},
            "merged": {"files": 1, "bytes": 10, "all_modules": 1, "errors": 1,
                       "last_error": text, "dir": text},
            "module_files": {"problems": [text]},
            "last_events": [{"time": 0, "action": text, "module": text}]}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], Path]]:
    """A unix socket at a fresh path, answering each request with `serve`."""
    servers: list[FakeDaemon] = []

    def make(serve: Callable[[socket.socket, bytes], None]) -> Path:
        path = tmp_path / f"ctl{len(servers)}.sock"
        servers.append(FakeDaemon(path, serve))
        return path

    yield make
    for s in servers:
        s.close()


ANSWERS: list[tuple[list[str], dict[str, Any]]] = [
    (["status"], _status(ESC)),
    (["list"], {"ok": True, "modules": [{"module": f"m{ESC}", "verdict": f"ok{ESC}",
                                         "summary": f"{ESC}\nsecond line"}]}),
    (["show", "m"], {"ok": True, "record": {
        "module": "m", "verdict": "error", "summary": ESC, "path": ESC,
        "publish_error": ESC, "cross_check": {"result": ESC, "detail": ESC},
        "diagnostics": [{"severity": ESC, "summary": f"{ESC}\nmore",
                         "candidates": [{"id": 1, "name": ESC, "why_not": ESC}],
                         "paths": [ESC]}, ESC]}}),
    (["path", "m"], {"ok": True, "module": "m", "verdict": "ok", "summary": ESC,
                     "btf": f"/cache/{ESC}"}),
    (["path", "m"], {"ok": True, "module": "m", "verdict": "incompatible", "summary": ESC,
                     "reason": f"{ESC}\nx"}),
    (["path", "--merged"], {"ok": True, "merged": f"/cache/{ESC}", "modules": [ESC]}),
    (["status"], {"ok": False, "error": ESC}),
]


@pytest.mark.parametrize(("verb", "answer"), ANSWERS,
                         ids=[f"{' '.join(v)}-{i}" for i, (v, _a) in enumerate(ANSWERS)])
def test_strings_from_the_daemon_reach_the_terminal_escaped(fake, verb, answer) -> None:
    def serve(conn: socket.socket, _req: bytes) -> None:
        conn.sendall(json.dumps(answer).encode() + b"\n")

    sock = fake(serve)
    rc, out, err = run_cli(["--socket", str(sock), *verb])
    assert rc in (0, 1, 2), (rc, err)
    assert "\x1b" not in out + err and "\x07" not in out + err, (out, err)
    assert "\\x1b]0;pwned\\x07" in out + err
    if rc == 2:
        assert_error_line(rc, out, err)
    else:
        assert all(not line.startswith("second") and not line.startswith("more")
                   for line in out.splitlines()), out
    # --json: the same strings, JSON-escaped (and intact once decoded)
    if rc != 2 and verb[0] != "path":
        rc, out, err = run_cli(["--socket", str(sock), *verb, "--json"])
        assert rc == 0 and "\x1b" not in out and "\x07" not in out
        sent = {k: v for k, v in answer.items() if k != "ok"}
        assert json.loads(out) == {"list": sent.get("modules"),
                                   "show": sent.get("record")}.get(verb[0], sent)
