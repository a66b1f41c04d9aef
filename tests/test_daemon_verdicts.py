"""The daemon's verdicts mean what they say: `ok` only once the kernel's own verdict was
looked at (kernel-dropped, pending), every record says whether its file was proven to be the
loaded module, and loaders get BTF for exactly the served verdicts (cache.SERVED_VERDICTS).

The engine is the fake one of test_daemon_support.py; the kernel is a fake sysfs.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon import make_daemon  # noqa: E402
from test_daemon_support import (  # noqa: E402
    CTL,
    REPO,
    FakeEngine,
    FakeSystem,
    env_for_daemon,
    expected_btf,
    wait_for,
)

from btfreconciled.cache import SERVED_VERDICTS  # noqa: E402
from btfreconciled.daemon import core  # noqa: E402
from btfreconciled.daemon.control import handle_request  # noqa: E402
from btfreconciled.daemon.core import Daemon  # noqa: E402
from btfreconciled.daemon.policy import release_tuple  # noqa: E402

DROP_LINE = "BPF: [12] STRUCT foo: Invalid member; failed to validate module [dropped] BTF: -22"
GENERIC = ("Kernel module BTF mismatch detected, BTF debug info may be unavailable for some "
           "modules")


@pytest.fixture
def fs(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


def ours(fs: FakeSystem, name: str) -> bytes:
    return expected_btf((fs.mods / f"{name}.ko").read_bytes())


def other_module_with_btf(fs: FakeSystem) -> None:
    """A module whose BTF the kernel registered: this kernel makes module BTF."""
    fs.add_file("other")
    fs.load("other")
    fs.kernel_btf("other", ours(fs, "other"))


def daemon(fs: FakeSystem, log: dict[str, str] | None = None, **cfg: Any) -> Daemon:
    d = make_daemon(fs, **cfg)
    d.kernel_log = lambda names: dict(log or {})  # type: ignore[method-assign]
    return d


def served_names(d: Daemon) -> set[str]:
    return {m["module"] for m in d.list_modules() if m["verdict"] in SERVED_VERDICTS}


# ------------------------------------------------------------------ kernel-dropped


def test_module_whose_btf_the_kernel_dropped_is_not_ok(fs: FakeSystem) -> None:
    """Linux >= 6.11 relocates a .BTF.base module itself; a live module without
    /sys/kernel/btf/<m> (while other modules have theirs) was refused by the kernel."""
    other_module_with_btf(fs)
    fs.add_file("dropped")
    fs.load("dropped")
    d = daemon(fs, {"dropped": DROP_LINE})
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("dropped")
        assert rec["verdict"] == "kernel-dropped", rec
        assert rec["engine_verdict"] == "ok"
        (diag,) = [x for x in rec["diagnostics"] if x["code"] == "kernel-dropped-btf"]
        assert diag["kernel_log"] == DROP_LINE and diag["severity"] == "error"
        assert DROP_LINE in rec["summary"]
        assert rec["cross_check"]["result"] == "dropped"
        # nothing served: no file, no path, not in all.btf
        assert rec["btf"] is None and not d.cache.btf_path("dropped").exists()
        assert d.published_btf("dropped") is None
        assert d.merged_path("dropped")[0] is None
        assert d.counts()["kernel-dropped"] == 1 and d.counts()["ok"] == 1
        assert d.status()["counts"]["kernel-dropped"] == 1
        assert "1 kernel-dropped" in d.status_line()
        assert d.merged.wait_idle()
        assert d.all_merged_path()[1] == ["other"]
        assert d.cache.read_record("dropped")["verdict"] == "kernel-dropped"
        d.flush_manifest()
        assert d.cache.read_manifest()["counts"]["kernel-dropped"] == 1
    finally:
        d.stop()


def test_kernel_dropped_names_the_once_per_boot_line(fs: FakeSystem) -> None:
    """6.12 with CONFIG_MODULE_ALLOW_BTF_MISMATCH logs one line naming no module."""
    other_module_with_btf(fs)
    fs.add_file("dropped")
    fs.load("dropped")
    d = daemon(fs, {"": GENERIC})
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("dropped")
        assert rec["verdict"] == "kernel-dropped"
        assert rec["diagnostics"][-1]["kernel_log"] == \
            f"{GENERIC} (logged once per boot, naming no module)"
    finally:
        d.stop()


def test_where_the_kernel_does_not_relocate_absence_is_no_refusal(fs: FakeSystem) -> None:
    """Before 6.11, and for a module with only .BTF.base_expects, the kernel relocates
    nothing: no /sys/kernel/btf/<m> is expected, the verdict stays ok."""
    other_module_with_btf(fs)
    fs.add_file("expects", payload="EXPECTSONLY")
    fs.load("expects")
    fs.add_file("plain")
    fs.load("plain")
    fs.kernel_btf("expects", b"classic split BTF the kernel bound to vmlinux ids")
    d = daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        # the kernel's file for a .BTF.base_expects-only module is no truth of ours
        rec = d.show("expects")
        assert rec["verdict"] == "ok" and "cross_check" not in rec, rec
        assert d.show("plain")["verdict"] == "kernel-dropped"
    finally:
        d.stop()
    d = daemon(fs, release="6.1.0-56-amd64")
    try:
        d._memo.clear()
        d.rescan("t", force=True)
        assert d.wait_idle()
        rec = d.show("plain")
        assert rec["verdict"] == "ok" and "cross_check" not in rec, rec
    finally:
        d.stop()


def test_no_module_btf_at_all_is_undecided_not_dropped(fs: FakeSystem) -> None:
    """A kernel that shows no module's BTF may be built without it: the record says the
    cross-check could not be decided (and why) instead of calling it a refusal."""
    fs.add_file("alone")
    fs.load("alone")
    d = daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("alone")
        assert rec["verdict"] == "ok"
        assert rec["cross_check"]["result"] == "undecided"
        assert "CONFIG_DEBUG_INFO_BTF_MODULES" in rec["cross_check"]["detail"]
        assert rec["diagnostics"][-1]["code"] == "cross-check-undecided"
    finally:
        d.stop()


def test_unparsable_release_does_not_skip_the_cross_check(fs: FakeSystem) -> None:
    assert release_tuple("custom-kernel") is None
    other_module_with_btf(fs)
    fs.add_file("differs")
    fs.load("differs")
    fs.kernel_btf("differs", expected_btf(b"the kernel's own"))
    fs.add_file("absent")
    fs.load("absent")
    d = daemon(fs, release="custom-kernel")
    try:
        d.rescan("t")
        assert d.wait_idle()
        # the kernel registered BTF for it: compared, and a difference is no ok
        assert d.show("other")["cross_check"]["result"] == "match"
        bad = d.show("differs")
        assert bad["verdict"] == "error" and bad["cross_check"]["result"] == "mismatch", bad
        assert "cannot be parsed" in bad["cross_check"]["note"]
        # absent: whether this kernel relocates .BTF.base cannot be told; the record says so
        rec = d.show("absent")
        assert rec["cross_check"]["result"] == "undecided", rec
        assert "'custom-kernel' cannot be parsed" in rec["cross_check"]["detail"]
        assert rec["diagnostics"][-1]["code"] == "cross-check-undecided"
    finally:
        d.stop()


# ------------------------------------------------------------------ pending


def test_module_still_initialising_is_pending_then_decided(fs: FakeSystem,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(core, "CROSS_CHECK_TRIES", 10)  # 0.5 s of looks
    other_module_with_btf(fs)
    fs.add_file("slow")
    fs.coming("slow")
    fs.add_file("stuck")
    fs.coming("stuck")
    d = daemon(fs)
    try:
        d.on_event("add", "slow")
        d.on_event("add", "stuck")
        assert wait_for(lambda: d.show("slow") is not None)
        rec = d.cache.read_record("slow")
        # published at once, but not as ok: nothing is served before the kernel decided
        assert rec["verdict"] == "pending", rec
        assert rec["waiting_for"] == str(fs.sysfs / "kernel" / "btf" / "slow")
        assert rec["btf"] is None and not d.cache.btf_path("slow").exists()
        assert d.show("slow")["pending"] is True  # `path --wait` and scripts keep waiting
        assert d.published_btf("slow") is None
        # the kernel registers its BTF, the module goes live: decided, ok
        fs.kernel_btf("slow", ours(fs, "slow"))
        fs.put(fs.sysfs / "module" / "slow" / "initstate", "live\n")
        assert wait_for(lambda: d.show("slow")["verdict"] == "ok", 5)
        assert d.show("slow")["cross_check"]["result"] == "match"
        assert d.cache.btf_path("slow").read_bytes() == ours(fs, "slow")
        # still initialising, no BTF, after every look: a final verdict that says so
        assert wait_for(lambda: d.show("stuck")["verdict"] != "pending", 5)
        rec = d.show("stuck")
        assert rec["verdict"] == "kernel-dropped", rec
        assert "still initialising 0.5 s after the load" in rec["summary"]
        assert rec["pending"] is False
    finally:
        d.stop()


def test_classic_module_still_initialising_is_pending(fs: FakeSystem,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "CROSS_CHECK_TRIES", 10)
    other_module_with_btf(fs)
    fs.add_file("classic", "CLASSIC")
    fs.coming("classic")
    d = daemon(fs)
    try:
        d.on_event("add", "classic")
        assert wait_for(lambda: d.show("classic") is not None)
        assert d.cache.read_record("classic")["verdict"] == "pending"
        fs.kernel_btf("classic", b"the kernel registered it")
        fs.put(fs.sysfs / "module" / "classic" / "initstate", "live\n")
        assert wait_for(lambda: d.show("classic")["verdict"] == "no-base", 5)
    finally:
        d.stop()


def test_classic_module_on_its_own_build_without_kernel_btf_is_kernel_dropped(
        fs: FakeSystem) -> None:
    """A classic split module built for this very vmlinux: the kernel registers its BTF
    itself, so its absence is a refusal, not something to rescue."""
    other_module_with_btf(fs)
    fs.add_file("own", "CLASSIC", payload="BUILD=/boot/vmlinuz-this")
    fs.load("own")
    d = daemon(fs, {"own": "failed to validate module [own] BTF: -22"})
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("own")
        assert rec["verdict"] == "kernel-dropped" and rec["engine_verdict"] == "no-base", rec
        assert rec["diagnostics"][-1]["kernel_log"] == \
            "failed to validate module [own] BTF: -22"
        assert not d.cache.btf_path("own").exists()
    finally:
        d.stop()


def test_built_for_failing_is_not_taken_as_fits(fs: FakeSystem) -> None:
    """Whether a classic module's registered BTF was made for this vmlinux cannot be told
    when the check raises: the record says so (it used to count as "fits")."""
    fs.add_file("registered", "CLASSIC")
    fs.load("registered")
    fs.kernel_btf("registered", b"the kernel took it")
    eng = FakeEngine()

    def broken(path: str, index: Any) -> tuple[bool, str]:
        raise OSError(5, "Input/output error")
    eng.built_for = broken  # type: ignore[attr-defined]
    d = make_daemon(fs, eng)
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("registered")
        assert rec["verdict"] == "no-base"
        (diag,) = [x for x in rec["diagnostics"] if x["code"] == "built-for-unknown"]
        assert "could not tell whether the BTF the kernel registered for it was made for " \
               "this vmlinux: OSError" in diag["summary"], diag
    finally:
        d.stop()


# ------------------------------------------------------------------ identity


def test_every_record_says_whether_its_file_is_the_loaded_module(fs: FakeSystem) -> None:
    fs.add_file("byid", payload="BUILDID=aaaa1111")
    fs.load("byid")
    fs.loaded_build_id("byid", "aaaa1111")
    fs.add_file("bysrc", payload="SRCVERSION=0123ABCD")
    fs.load("bysrc")
    fs.loaded_srcversion("bysrc", "0123ABCD")
    fs.add_file("nothing")
    fs.load("nothing")
    fs.add_file("kernelsilent", payload="BUILDID=bbbb2222")  # the kernel shows no build id
    fs.load("kernelsilent")
    fs.builtin("vt")
    fs.load("nofile")
    d = daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        assert d.show("byid")["identity"] == {"state": "verified", "by": "build id",
                                              "value": "aaaa1111"}
        assert d.show("bysrc")["identity"] == {"state": "verified", "by": "srcversion",
                                               "value": "0123ABCD"}
        ident = d.show("nothing")["identity"]
        assert ident["state"] == "unverified"
        assert "the file has neither a build id nor a srcversion" in ident["why"]
        ident = d.show("kernelsilent")["identity"]
        assert ident["state"] == "unverified", ident
        assert ident["why"] == ("nothing to compare: the file has build id; /sys/module/"
                                "kernelsilent shows neither a build id nor a srcversion")
        assert d.show("vt")["identity"]["state"] == "not-applicable"
        assert d.show("nofile")["identity"]["state"] == "unverified"
        # the build id and srcversion stay in the record (the client compares them itself)
        assert d.cache.read_record("byid")["build_id"] == "aaaa1111"
        assert d.cache.read_record("bysrc")["srcversion"] == "0123ABCD"
        assert d.status()["identity"] == {"verified": 2, "unverified": 3, "not-applicable": 1}
        listed = {m["module"]: m["identity"] for m in d.list_modules()}
        assert listed["byid"] == "verified" and listed["nothing"] == "unverified"
        d.flush_manifest()
        assert d.cache.read_manifest()["identity"]["verified"] == 2
    finally:
        d.stop()


# ------------------------------------------------------------------ what is served


def test_all_btf_holds_exactly_the_served_verdicts(fs: FakeSystem,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One module of each kind; all.btf, `path --merged` (no module) and `path MODULE`
    serve exactly the modules whose verdict is in SERVED_VERDICTS."""
    monkeypatch.setattr(core, "CROSS_CHECK_DELAY", 1.0)  # `waiting` stays pending here
    monkeypatch.setattr(core, "CROSS_CHECK_TRIES", 1000)
    fs.add_file("good")  # ok, the kernel's BTF matches
    fs.load("good")
    fs.kernel_btf("good", ours(fs, "good"))
    fs.add_file("rescued", "CLASSIC", payload="BUILD=/boot/vmlinuz-prev FOREIGN")
    fs.load("rescued")
    fs.add_file("differs")  # error: the kernel's BTF differs from ours
    fs.load("differs")
    fs.kernel_btf("differs", expected_btf(b"the kernel's own"))
    fs.add_file("waiting")  # pending
    fs.coming("waiting")
    fs.add_file("dropped")  # kernel-dropped
    fs.load("dropped")
    fs.add_file("bad", "INCOMPATIBLE")
    fs.load("bad")
    d = daemon(fs)
    try:
        d.rescan("t")
        assert wait_for(lambda: len(d.list_modules()) == 6 and d.wait_idle(), 10)
        verdicts = {m["module"]: m["verdict"] for m in d.list_modules()}
        assert verdicts == {"good": "ok", "rescued": "rescued", "differs": "error",
                            "waiting": "pending", "dropped": "kernel-dropped",
                            "bad": "incompatible"}
        served = served_names(d)
        assert served == {"good", "rescued"}
        assert d.merged.wait_idle()
        path, members, why = d.all_merged_path()
        assert path and set(members) == served, (members, why)
        idx = d.cache.read_merged_index()
        assert {m["name"] for m in idx["all"]["modules"]} == served
        # the control socket answers from the same list
        resp = handle_request(d, {"cmd": "path", "merged": True})
        assert set(resp["modules"]) == served
        for name in verdicts:
            r = handle_request(d, {"cmd": "path", "module": name, "merged": True})
            assert bool(r["btf"]) == (name in served), r
            assert bool(r["merged"]) == (name in served), r
            assert d.cache.btf_path(name).exists() == (name in served)
    finally:
        d.stop()


def test_docs_and_help_name_the_served_verdicts_in_the_same_words() -> None:
    words = " or ".join(SERVED_VERDICTS)
    readme = (REPO / "README.md").read_text()
    assert f"every module whose verdict is {words}" in readme
    env = env_for_daemon()
    r = subprocess.run([*CTL, "path", "--help"], capture_output=True, text=True, env=env,
                       timeout=60)
    flat = " ".join(r.stdout.split())
    assert f"every module whose verdict is {words} (merged/all.btf)" in flat, flat
    r = subprocess.run([*CTL, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert f"only for a module whose verdict is {words}" in " ".join(r.stdout.split())
    # every verdict the daemon can reach is in the README's table
    from btfreconciled.daemon.record import DAEMON_VERDICTS, ENGINE_VERDICTS
    for v in (*ENGINE_VERDICTS, *DAEMON_VERDICTS):
        assert f"| `{v}` |" in readme, v


def test_sha_of_served_file_is_in_the_record(fs: FakeSystem) -> None:
    """A served record names the sha256 of exactly the bytes served (no byte swap)."""
    other_module_with_btf(fs)
    d = daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("other")
        assert rec["btf_sha256"] == hashlib.sha256(ours(fs, "other")).hexdigest()
        assert d.cache.btf_path("other").read_bytes() == ours(fs, "other")
    finally:
        d.stop()
