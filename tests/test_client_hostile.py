"""btfreconciled.client on a hostile or damaged cache (SPEC §8, §10).

A real cache is made once by the daemon (fake engine, fake sysfs: test_merged_cache's
pattern) and copied for each test, which then plants or damages one thing. Whatever is
planted, the client answers at once with a NoBtf subclass and a one-line reason naming the
file; it never blocks, never returns a symlink, a file outside the cache, a file whose bytes
are not the ones recorded, a verdict that is not served, or a record of another build.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon import make_daemon  # noqa: E402
from test_daemon_support import (  # noqa: E402
    FakeSystem,
    daemon_argv,
    env_for_daemon,
    expected_btf,
    wait_for,
)

from btfreconciled import cache as cache_mod  # noqa: E402
from btfreconciled import client  # noqa: E402
from btfreconciled.cache import SERVED_VERDICTS, sha256_hex  # noqa: E402

BID = "0123456789abcdef0123456789abcdef01234567"  # alpha's GNU build id (file and loaded)
OTHER_BID = "fedcba9876543210fedcba9876543210fedcba98"


class Cache:
    """A copy of the daemon-made cache and its fake sysfs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        self.cache = root / "cache"
        self.kdir = self.cache / os.readlink(self.cache / "current")
        self.mods = self.kdir / "modules"
        self.merged = self.kdir / "merged"

    def pub(self) -> client.Published:
        return client.open_cache(self.cache, sysfs=self.sysfs)

    def record(self, name: str) -> dict[str, Any]:
        return json.loads((self.mods / f"{name}.json").read_text())

    def write_record(self, name: str, rec: Any) -> None:
        _replace(self.mods / f"{name}.json", json.dumps(rec).encode())

    def index(self) -> dict[str, Any]:
        return json.loads((self.merged / "index.json").read_text())

    def write_index(self, idx: Any) -> None:
        _replace(self.merged / "index.json", json.dumps(idx).encode())


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def settle(d: Any) -> None:
    assert d.wait_idle()
    assert d.merged.wait_idle()


def _build(root: Path) -> None:
    fs = FakeSystem(root)
    fs.add_file("alpha", payload=f"BUILDID={BID}")
    fs.load("alpha")
    fs.loaded_build_id("alpha", BID)
    fs.add_file("bravo")  # no build id on either side: served, identity unverified
    fs.load("bravo")
    fs.add_file("broken", "INCOMPATIBLE")
    fs.load("broken")
    d = make_daemon(fs)
    try:
        d.rescan("test")
        settle(d)
    finally:
        d.stop()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    _build(root)
    return root


@pytest.fixture
def c(built: Path, tmp_path: Path) -> Cache:
    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    return Cache(root)


def no_hang(fn: Callable[[], Any], fifos: list[Path], timeout: float = 5.0) -> Any:
    """fn() in a thread; a call still blocked after `timeout` fails the test (the FIFOs are
    then opened for writing, so that the blocked open returns and the thread ends)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for p in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"the client blocked on a FIFO ({', '.join(map(str, fifos))})")
    if "error" in out:
        raise out["error"]
    return out["value"]


def one_line(e: pytest.ExceptionInfo[client.NoBtf]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_the_copy_serves_everything(c: Cache) -> None:
    p = c.pub()
    assert p.split_path("alpha") == c.mods / "alpha.btf"
    assert p.merged_path("alpha") == c.merged / "alpha.btf"
    assert p.merged_path("bravo") == c.merged / "bravo.btf"
    assert p.all_merged() == (c.merged / "all.btf", ["alpha", "bravo"])
    with pytest.raises(client.NotReconciled) as e:
        p.merged_path("broken")
    assert e.value.verdict == "incompatible"


# --------------------------------------------------------------------- 1. FIFOs

@pytest.mark.parametrize("where", ["record", "manifest", "index", "split", "merged", "all"])
def test_a_fifo_in_the_cache_never_blocks_the_client(c: Cache, where: str) -> None:
    target = {"record": c.mods / "alpha.json", "manifest": c.kdir / "manifest.json",
              "index": c.merged / "index.json", "split": c.mods / "alpha.btf",
              "merged": c.merged / "alpha.btf", "all": c.merged / "all.btf"}[where]
    target.unlink()
    os.mkfifo(target)
    call: Callable[[], Any] = {
        "record": lambda: c.pub().split_path("alpha"),
        "manifest": c.pub,
        "index": lambda: c.pub().merged_path("alpha"),
        "split": lambda: c.pub().split_path("alpha"),
        "merged": lambda: c.pub().merged_path("alpha"),
        "all": lambda: c.pub().all_merged(),
    }[where]
    expected = client.CacheUnavailable if where in ("record", "manifest", "index") \
        else client.NotYetWritten
    with pytest.raises(expected) as e:
        no_hang(call, [target])
    assert "FIFO" in one_line(e)
    if expected is client.CacheUnavailable:
        assert str(target) in str(e.value)


# --------------------------------------------------------------------- 2. names

@pytest.mark.parametrize("bad", ["../../../x", "bravo", "", 5, None, ["alpha"]])
def test_a_record_naming_another_module_is_damaged(c: Cache, bad: Any) -> None:
    # a file outside the cache holding the very BTF the record names: never handed out
    outside = c.root / "x.btf"
    outside.write_bytes((c.mods / "alpha.btf").read_bytes())
    rec = c.record("alpha")
    rec["module"] = bad
    c.write_record("alpha", rec)
    for lookup in (c.pub().split_path, c.pub().merged_path, c.pub().record):
        with pytest.raises(client.CacheUnavailable) as e:
            lookup("alpha")
        assert "alpha.json: not a btfreconciled record: its module is" in one_line(e)
        assert e.value.module == "alpha"


def test_names_from_the_caller_are_checked(c: Cache) -> None:
    for bad in ("../alpha", "a/b", "", "x" * 80, 5):
        with pytest.raises(client.NotLoaded):
            c.pub().split_path(bad)  # type: ignore[arg-type]
    assert c.pub().split_path("alpha.ko") == c.mods / "alpha.btf"


# --------------------------------------------------------------------- 3. merged bytes

def test_the_index_records_each_merged_files_own_sha256_and_size(c: Cache) -> None:
    idx = c.index()
    for name in ("alpha", "bravo"):
        data = (c.merged / f"{name}.btf").read_bytes()
        info = idx["modules"][name]
        assert info["sha256"] == sha256_hex(data) and info["size"] == len(data)
        assert info["btf_sha256"] == c.record(name)["btf_sha256"]
    data = (c.merged / "all.btf").read_bytes()
    assert idx["all"]["sha256"] == sha256_hex(data) and idx["all"]["size"] == len(data)


@pytest.mark.parametrize("which", ["alpha.btf", "all.btf"])
@pytest.mark.parametrize("how", ["same size", "longer", "truncated", "huge"])
def test_garbage_in_a_merged_file_is_not_handed_out(c: Cache, which: str, how: str) -> None:
    f = c.merged / which
    n = f.stat().st_size
    if how == "same size":
        f.write_bytes(b"\0" * n)
    elif how == "longer":
        f.write_bytes(f.read_bytes() + b"garbage")
    elif how == "truncated":
        f.write_bytes(f.read_bytes()[:-1])
    else:  # sparse: never hashed (the size is compared first)
        with open(f, "r+b") as fh:
            fh.truncate(64 << 30)
    lookup = c.pub().all_merged if which == "all.btf" else lambda: c.pub().merged_path("alpha")
    with pytest.raises(client.NotYetWritten) as e:
        lookup()
    assert str(f) in one_line(e) and "not handed out" in str(e.value)
    if which == "alpha.btf":
        assert e.value.verdict == "ok"


def test_garbage_in_a_split_file_is_not_handed_out(c: Cache) -> None:
    f = c.mods / "alpha.btf"
    f.write_bytes(b"\0" * f.stat().st_size)
    with pytest.raises(client.NotYetWritten) as e:
        c.pub().split_path("alpha")
    assert "sha256" in one_line(e)


# --------------------------------------------------------------------- 4. JSON shapes

_RECORD_DAMAGE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "a list": lambda r: [r],
    "a string": lambda r: "ok",
    "verdict a number": lambda r: {**r, "verdict": 5},
    "verdict missing": lambda r: {k: v for k, v in r.items() if k != "verdict"},
    "verdict two lines": lambda r: {**r, "verdict": "ok\nforged"},
    "btf_sha256 an int": lambda r: {**r, "btf_sha256": 7},
    "btf_sha256 not hex": lambda r: {**r, "btf_sha256": "z" * 64},
    "btf_size a string": lambda r: {**r, "btf_size": "12"},
    "btf_size a bool": lambda r: {**r, "btf_size": True},
    "summary a list": lambda r: {**r, "summary": ["x"]},
    "build_id an int": lambda r: {**r, "build_id": 5},
    "srcversion an object": lambda r: {**r, "srcversion": {"a": 1}},
    "another kernel's": lambda r: {**r, "kernel_id": "0" * 64},
    "ok without btf_sha256": lambda r: {**r, "btf_sha256": None},
}
_RAW_DAMAGE = {
    "nested": b"[" * 100000,
    "nested objects": b'{"a":' * 100000,
    "not JSON": b"{",
    "not UTF-8": b'{"module": "\xff"}',
    "a huge number": b'{"module": ' + b"1" * 5000 + b"}",
    "empty": b"",
}


@pytest.mark.parametrize("damage", sorted(_RECORD_DAMAGE) + sorted(_RAW_DAMAGE))
def test_a_damaged_record_is_cache_unavailable(c: Cache, damage: str) -> None:
    path = c.mods / "alpha.json"
    if damage in _RAW_DAMAGE:
        _replace(path, _RAW_DAMAGE[damage])
    else:
        c.write_record("alpha", _RECORD_DAMAGE[damage](c.record("alpha")))
    for lookup in (c.pub().split_path, c.pub().merged_path):
        with pytest.raises(client.CacheUnavailable) as e:
            lookup("alpha")
        assert one_line(e).startswith(str(path)) and e.value.module == "alpha"
    with pytest.raises(client.CacheUnavailable):
        c.pub().all_merged()  # alpha is in all.btf: its record is read too


_INDEX_DAMAGE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "a list": lambda i: [i],
    "modules a list": lambda i: {**i, "modules": []},
    "entry a number": lambda i: {**i, "modules": {**i["modules"], "alpha": 5}},
    "sha256 an int": lambda i: _set(i, ("modules", "alpha", "sha256"), 1),
    "size a string": lambda i: _set(i, ("modules", "alpha", "size"), "10"),
    "size a bool": lambda i: _set(i, ("modules", "alpha", "size"), True),
    "btf_sha256 a list": lambda i: _set(i, ("modules", "alpha", "btf_sha256"), []),
}
_ALL_DAMAGE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "all a string": lambda i: {**i, "all": "x"},
    "all modules an object": lambda i: _set(i, ("all", "modules"), {}),
    "all member a number": lambda i: _set(i, ("all", "modules"), [5]),
    "all member name a number": lambda i: _set(i, ("all", "modules"),
                                               [{"name": 5, "btf_sha256": "0" * 64}]),
    "all member escapes": lambda i: _set(i, ("all", "modules"),
                                         [{"name": "../x", "btf_sha256": "0" * 64}]),
    "all member twice": lambda i: _set(i, ("all", "modules"),
                                       i["all"]["modules"] + i["all"]["modules"][:1]),
    "all sha256 missing": lambda i: _set(i, ("all", "sha256"), None),
}


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    d = obj
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return obj


@pytest.mark.parametrize("damage", sorted(_INDEX_DAMAGE) + sorted(_ALL_DAMAGE)
                         + sorted(_RAW_DAMAGE))
def test_a_damaged_index_is_cache_unavailable(c: Cache, damage: str) -> None:
    path = c.merged / "index.json"
    if damage in _RAW_DAMAGE:
        _replace(path, _RAW_DAMAGE[damage])
    else:
        c.write_index((_INDEX_DAMAGE | _ALL_DAMAGE)[damage](c.index()))
    lookup = c.pub().all_merged if damage in _ALL_DAMAGE \
        else lambda: c.pub().merged_path("alpha")
    with pytest.raises(client.CacheUnavailable) as e:
        lookup()
    assert one_line(e).startswith(str(path))


@pytest.mark.parametrize("damage", ["a list", "nested", "another kernel's", "not JSON"])
def test_a_damaged_manifest_is_cache_unavailable(c: Cache, damage: str) -> None:
    path = c.kdir / "manifest.json"
    data = {"a list": b"[]", "nested": b"[" * 100000, "not JSON": b"{",
            "another kernel's": json.dumps({"kernel_id": "0" * 64}).encode()}[damage]
    _replace(path, data)
    with pytest.raises(client.CacheUnavailable) as e:
        c.pub()
    assert one_line(e).startswith(str(path))


@pytest.mark.parametrize("target", ["x" * 64, "A" * 64, "../" + "0" * 61, "0" * 63, ""])
def test_current_pointing_at_no_kernel_id(c: Cache, target: str) -> None:
    link = c.cache / "current"
    link.unlink()
    os.symlink(target or "\n", link)
    with pytest.raises(client.CacheUnavailable) as e:
        c.pub()
    assert "not a kernel id" in one_line(e)


def test_current_or_a_cache_directory_that_is_not_one(c: Cache) -> None:
    link = c.cache / "current"
    kid = os.readlink(link)
    # `current` a directory, not a link
    link.unlink()
    link.mkdir()
    with pytest.raises(client.CacheUnavailable):
        c.pub()
    link.rmdir()
    os.symlink(kid, link)
    # each of the kernel's directories replaced by a symlink to a good copy of itself
    for d in (c.kdir, c.mods, c.merged):
        copy = c.root / f"copy-{d.name}"
        d.rename(copy)
        os.symlink(copy, d)
        with pytest.raises(client.CacheUnavailable) as e:
            p = c.pub()
            p.split_path("alpha")
            p.merged_path("alpha")
        assert f"{d}: is a symlink" in one_line(e)
        d.unlink()
        copy.rename(d)


# --------------------------------------------------------------------- 5. sizes

def test_a_huge_record_is_refused_unread(c: Cache) -> None:
    path = c.mods / "alpha.json"
    with open(path, "r+b") as f:
        f.truncate(300 << 20)  # sparse: reading it whole would take 300 MB
    # VmHWM: this process's peak (ru_maxrss would count the forking pytest's too)
    code = ("from btfreconciled import client\n"
            "try:\n"
            f"    client.split_path('alpha', {str(c.cache)!r}, sysfs={str(c.sysfs)!r})\n"
            "except client.CacheUnavailable as e:\n"
            "    print(e)\n"
            "print(next(int(line.split()[1]) for line in open('/proc/self/status')\n"
            "           if line.startswith('VmHWM:')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env_for_daemon(), timeout=60)
    assert r.returncode == 0, r.stderr
    msg, rss_kb = r.stdout.splitlines()
    assert msg.startswith(f"{path}: {300 << 20} bytes, more than the {cache_mod.MAX_RECORD_BYTES}")
    assert int(rss_kb) < 150 << 10, f"{rss_kb} KiB: the record was read"
    # just over the limit, with real bytes: refused too
    _replace(path, b" " * (cache_mod.MAX_RECORD_BYTES + 1))
    with pytest.raises(client.CacheUnavailable, match="more than the"):
        c.pub().split_path("alpha")


# --------------------------------------------------------------------- 6. symlinks

@pytest.mark.parametrize("rel", ["merged/alpha.btf", "merged/all.btf", "modules/alpha.btf",
                                 "modules/alpha.json"])
def test_a_symlink_is_never_returned_nor_followed(c: Cache, rel: str) -> None:
    f = c.kdir / rel
    good = c.root / "good-copy"
    shutil.copyfile(f, good)  # the very bytes the cache vouches for, behind a link
    f.unlink()
    os.symlink(good, f)
    lookups = {"merged/alpha.btf": lambda p: p.merged_path("alpha"),
               "merged/all.btf": lambda p: p.all_merged(),
               "modules/alpha.btf": lambda p: p.split_path("alpha"),
               "modules/alpha.json": lambda p: p.split_path("alpha")}
    expected = client.CacheUnavailable if rel.endswith(".json") else client.NotYetWritten
    with pytest.raises(expected) as e:
        lookups[rel](c.pub())
    assert "symlink" in one_line(e)


def _plant(c: Cache, victim: Path) -> dict[str, Path]:
    """Symlinks, a FIFO and a directory planted in modules/ and merged/."""
    planted = {"merged/alpha.btf": c.merged / "alpha.btf",
               "merged/index.json": c.merged / "index.json",
               "modules/bravo.json": c.mods / "bravo.json",
               "modules/alpha.btf": c.mods / "alpha.btf",
               "merged/bravo.btf": c.merged / "bravo.btf",
               "modules/zz_unknown.json": c.mods / "zz_unknown.json"}
    for rel, p in planted.items():
        p.unlink(missing_ok=True)
        if rel == "modules/alpha.btf":
            os.mkfifo(p)
        elif rel == "merged/bravo.btf":
            p.mkdir()
            os.symlink(victim, p / "link")
        else:
            os.symlink(victim, p)
    return planted


def _all_served(c: Cache) -> bool:
    try:
        p = c.pub()
        return (p.split_path("alpha") and p.split_path("bravo") and p.merged_path("alpha")
                and p.merged_path("bravo") and p.all_merged()[1] == ["alpha", "bravo"]) \
            is not None
    except client.NoBtf:
        return False


def _repaired(c: Cache, planted: dict[str, Path], victim: Path, content: bytes) -> None:
    assert victim.read_bytes() == content and not victim.is_symlink()
    for rel, p in planted.items():
        assert not p.is_symlink() and (not p.exists() or p.is_file()), rel
    assert not (c.mods / "zz_unknown.json").exists()


def test_sighup_repairs_planted_files_in_modules_and_merged(tmp_path: Path) -> None:
    fs = FakeSystem(tmp_path)
    for n in ("alpha", "bravo"):
        fs.add_file(n)
        fs.load(n)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not the daemon's")
    p = subprocess.Popen(daemon_argv(fs.config(log_format="json")), env=env_for_daemon(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        c = Cache.__new__(Cache)
        assert wait_for(lambda: (fs.cache / "current").is_symlink(), 20)
        Cache.__init__(c, tmp_path)
        assert wait_for(lambda: _all_served(c), 20)
        planted = _plant(c, victim)
        assert not _all_served(c)
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: _all_served(c), 20), "SIGHUP did not repair the cache"
        _repaired(c, planted, victim, b"not the daemon's")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=15)
    assert "repaired the cache" in err and "repaired merged BTF" in err


def test_start_up_repairs_planted_files(tmp_path: Path) -> None:
    fs = FakeSystem(tmp_path)
    for n in ("alpha", "bravo"):
        fs.add_file(n)
        fs.load(n)
    d = make_daemon(fs)
    d.rescan("test")
    settle(d)
    d.stop()
    c = Cache(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not the daemon's")
    planted = _plant(c, victim)
    d = make_daemon(fs)
    try:
        d.rescan("test")
        settle(d)
        assert _all_served(c)
        _repaired(c, planted, victim, b"not the daemon's")
    finally:
        d.stop()


def test_repair_rewrites_damaged_regular_files_it_owns(tmp_path: Path) -> None:
    """Not planted but damaged: a record edited, a .btf and a merged file overwritten."""
    fs = FakeSystem(tmp_path)
    for n in ("alpha", "bravo"):
        fs.add_file(n)
        fs.load(n)
    d = make_daemon(fs)
    try:
        d.rescan("test")
        settle(d)
        c = Cache(tmp_path)
        rec = c.record("alpha")
        c.write_record("alpha", {**rec, "verdict": "rescued"})
        (c.mods / "bravo.btf").write_bytes(b"\0" * 10)
        m = c.merged / "alpha.btf"
        m.write_bytes(b"\0" * m.stat().st_size)
        assert not _all_served(c)
        d.repair_cache()  # what SIGHUP does, then a rescan
        d.rescan("SIGHUP")
        settle(d)
        assert _all_served(c)
        assert c.record("alpha")["verdict"] == "ok"
        assert d.status()["merged"]["errors"] == 0
    finally:
        d.stop()


def test_repair_of_an_intact_cache_rewrites_nothing(tmp_path: Path) -> None:
    """After a restart (records reused from disk) a SIGHUP finds nothing to write again."""
    fs = FakeSystem(tmp_path)
    for n in ("alpha", "bravo"):
        fs.add_file(n)
        fs.load(n)
    d = make_daemon(fs)
    d.rescan("test")
    settle(d)
    d.stop()
    d = make_daemon(fs)
    try:
        d.rescan("test")
        settle(d)
        c = Cache(tmp_path)
        files = [*c.mods.iterdir(), *(p for p in c.merged.iterdir() if p.name != "index.json")]
        before = {p: p.stat().st_ino for p in files}
        d.repair_cache()
        d.rescan("SIGHUP")
        settle(d)
        assert {p: p.stat().st_ino for p in files} == before
        assert _all_served(c)
    finally:
        d.stop()


# --------------------------------------------------------------------- 7. served verdicts

def test_served_verdicts_are_the_one_list() -> None:
    assert SERVED_VERDICTS == ("ok", "rescued")
    for doc in (client.__doc__, client.Published.all_merged.__doc__):
        assert doc is not None and "SERVED_VERDICTS" in doc and "ok, rescued" in doc


@pytest.mark.parametrize("verdict", ["error", "incompatible", "stale-file", "pending",
                                     "kernel-dropped", "no-base"])
def test_a_record_with_btf_but_a_verdict_not_served_gets_nothing(c: Cache,
                                                                 verdict: str) -> None:
    c.write_record("alpha", {**c.record("alpha"), "verdict": verdict})  # btf, btf_sha256 kept
    for lookup in (c.pub().split_path, c.pub().merged_path):
        with pytest.raises(client.NotReconciled) as e:
            lookup("alpha")
        assert e.value.verdict == verdict and f"({verdict}: " in one_line(e)
    # all.btf holds alpha: refused until it is written again without it
    with pytest.raises(client.NotYetWritten) as e2:
        c.pub().all_merged()
    assert f"alpha, whose verdict {verdict} is not served" in one_line(e2)


def test_rescued_is_served_and_not_yet_written_carries_the_verdict(c: Cache) -> None:
    c.write_record("alpha", {**c.record("alpha"), "verdict": "rescued"})
    p = c.pub()
    assert p.split_path("alpha") == c.mods / "alpha.btf"
    assert p.merged_path("alpha") == c.merged / "alpha.btf"
    assert p.all_merged()[1] == ["alpha", "bravo"]
    (c.mods / "alpha.btf").write_bytes(b"x")
    with pytest.raises(client.NotYetWritten) as e:
        p.split_path("alpha")
    assert e.value.verdict == "rescued"
    idx = c.index()
    del idx["modules"]["alpha"]
    c.write_index(idx)
    with pytest.raises(client.NotYetWritten) as e:
        p.merged_path("alpha")
    assert e.value.verdict == "rescued"


def test_the_kernels_bytes_under_verdict_error_are_not_served(tmp_path: Path) -> None:
    """Where the kernel registered other BTF than ours, the record says error: not a served
    verdict, so no file (whatever BTF might lie beside it)."""
    fs = FakeSystem(tmp_path)
    fs.add_file("alpha")
    fs.load("alpha")
    fs.kernel_btf("alpha", expected_btf(b"another build"))
    fs.add_file("bravo")
    fs.load("bravo")
    d = make_daemon(fs)
    try:
        d.rescan("test")
        settle(d)
        c = Cache(tmp_path)
        rec = c.record("alpha")
        assert rec["verdict"] == "error"
        (c.mods / "alpha.btf").write_bytes(b"planted beside an error record")
        for lookup in (c.pub().split_path, c.pub().merged_path):
            with pytest.raises(client.NotReconciled) as e:
                lookup("alpha")
            assert e.value.verdict == "error"
        with pytest.raises(client.NoBtf):  # bravo: kernel-dropped, alpha: error
            c.pub().all_merged()
    finally:
        d.stop()


# --------------------------------------------------------------------- 8. identity

def test_identity_verified_by_build_id(c: Cache) -> None:
    ident = c.pub().identity("alpha")
    assert ident.verified and f"build id {BID} match" in str(ident)
    assert str(ident).startswith("verified: ")


def test_a_module_rebuilt_and_reloaded_gets_no_old_btf(c: Cache) -> None:
    """The daemon is not running; the module was rebuilt and loaded again."""
    fs = FakeSystem.__new__(FakeSystem)
    fs.sysfs = c.sysfs
    fs.loaded_build_id("alpha", OTHER_BID)
    for lookup in (c.pub().split_path, c.pub().merged_path, c.pub().record,
                   c.pub().identity):
        with pytest.raises(client.StaleRecord) as e:
            lookup("alpha")
        msg = one_line(e)
        assert BID in msg and OTHER_BID in msg and e.value.module == "alpha"
    with pytest.raises(client.StaleRecord):
        c.pub().all_merged()  # all.btf holds the old build's types
    assert c.pub().merged_path("bravo")  # the others are still served


def test_srcversion_is_compared_too(c: Cache) -> None:
    (c.sysfs / "module" / "alpha" / "srcversion").write_text("0123ABCD\n")
    c.write_record("alpha", {**c.record("alpha"), "srcversion": "0123ABCD"})
    ident = c.pub().identity("alpha")
    assert ident.verified and "srcversion 0123ABCD" in ident.detail
    c.write_record("alpha", {**c.record("alpha"), "srcversion": "FFFF0000"})
    with pytest.raises(client.StaleRecord) as e:
        c.pub().split_path("alpha")
    assert "srcversion FFFF0000" in one_line(e) and "0123ABCD" in str(e.value)


def test_unverified_when_neither_side_can_be_compared(c: Cache) -> None:
    p = c.pub()
    assert p.split_path("bravo")  # served: nothing proves it is another build
    ident = p.identity("bravo")
    assert not ident.verified
    assert str(ident) == "unverified: the record names neither a build id nor a srcversion"
    # the record names one, the kernel shows none
    shutil.rmtree(c.sysfs / "module" / "alpha" / "notes")
    assert p.merged_path("alpha")
    ident = p.identity("alpha")
    assert not ident.verified and "shows neither a build id" in ident.detail
    # the record names a build id, the kernel shows only a srcversion
    (c.sysfs / "module" / "alpha" / "srcversion").write_text("ABC\n")
    assert "names only a build id, the loaded module shows only a srcversion" in \
        str(p.identity("alpha"))


def test_a_stale_file_verdict_is_not_reconciled_not_stale_record(c: Cache) -> None:
    """The daemon's own stale-file record carries the file's ids, which differ from the
    loaded module's by definition: its verdict is the answer."""
    c.write_record("alpha", {**c.record("alpha"), "verdict": "stale-file",
                             "build_id": OTHER_BID})
    with pytest.raises(client.NotReconciled) as e:
        c.pub().split_path("alpha")
    assert e.value.verdict == "stale-file"
    assert not c.pub().identity("alpha").verified


def test_the_client_imports_none_of_the_daemons_machinery() -> None:
    code = ("import sys; import btfreconciled.client; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('btfreconciled', "
            "'structlog', 'pyroute2', 'elftools', 'tomllib', 'asyncio')))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env_for_daemon(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) <= {
        "btfreconciled", "btfreconciled.cache", "btfreconciled.client",
        "btfreconciled.compression", "btfreconciled.elf", "btfreconciled.daemon",
        "btfreconciled.daemon.policy", "btfreconciled.inputs",
        "btfreconciled.errors"}, r.stdout  # (errors.py: the ErrorCode enum, imports only enum)


# --------------------------------------------------------------------- btfreconcilectl

def _ctl_path(c: Cache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              module: str | None, *, merged: bool = False, as_json: bool = False
              ) -> tuple[int, str, str]:
    from btfreconciled.cli import daemonctl

    monkeypatch.setattr(client, "open_cache",
                        lambda d: client.Published(d, sysfs=c.sysfs))  # the fake kernel's
    args = argparse.Namespace(module=module, merged=merged, wait=0.0,
                              cache_dir=str(c.cache), json=as_json)
    rc = daemonctl.run_path(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_ctl_path_from_the_cache(c: Cache, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _ctl_path(c, monkeypatch, capsys, "alpha", merged=True, as_json=True)
    j = json.loads(out)
    assert rc == 0 and j["path"] == str(c.merged / "alpha.btf")
    assert j["identity"].startswith("verified: build id")
    fs = FakeSystem.__new__(FakeSystem)
    fs.sysfs = c.sysfs
    fs.loaded_build_id("alpha", OTHER_BID)
    rc, out, err = _ctl_path(c, monkeypatch, capsys, "alpha", merged=True)
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("btfreconcilectl: alpha: no merged BTF: the cache's record is of "
                          "another build") and OTHER_BID in err
    # all.btf: the module at fault is named
    rc, out, err = _ctl_path(c, monkeypatch, capsys, None, merged=True)
    assert rc == 1 and err.startswith("btfreconcilectl: no merged BTF: alpha: ")
