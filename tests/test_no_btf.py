"""Modules with no BTF at all (Kbuild's "Skipping BTF generation ... due to unavailability of
vmlinux"): the engine tells them from classic split BTF, the daemon gives them verdict
`no-btf` with the remedy, and `doctor` names the state of the kernel's build directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_daemon import make_daemon  # noqa: E402
from test_daemon_support import FakeSystem  # noqa: E402
from test_headers import OTHER_BTF, build_dir, bzimage, make_root  # noqa: E402
from test_kimage import make_vmlinux  # noqa: E402
from test_reconcile import _elf, module, reparse, target_of, vmlinux  # noqa: E402

from btfreconciled.cache import SERVED_VERDICTS  # noqa: E402
from btfreconciled.cli import headers  # noqa: E402
from btfreconciled.cli.main import main as ctl  # noqa: E402
from btfreconciled.daemon.control import handle_request  # noqa: E402
from btfreconciled.daemon.engine import ReconcileEngine  # noqa: E402
from btfreconciled.daemon.record import DAEMON_VERDICTS  # noqa: E402
from btfreconciled.elfwrite import write_btf_sections  # noqa: E402
from btfreconciled.reconcile.module import Verdict, reconcile_module_file  # noqa: E402

RELEASE = "6.18.0-test"  # FakeSystem's kernel release


@pytest.fixture
def fs(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


def codes(diags: list[dict]) -> list[str]:
    return [d["code"] for d in diags]


# ------------------------------------------------------------------ the engine


def test_engine_tells_no_btf_from_classic_split_btf(tmp_path: Path) -> None:
    target = target_of(vmlinux())
    bare = tmp_path / "bare.ko"
    bare.write_bytes(_elf(tmp_path).read_bytes())
    res = reconcile_module_file(str(bare), target)
    assert res.verdict is Verdict.NO_BASE and codes(res.diagnostics) == ["no-btf"]
    assert "no .BTF section" in res.summary
    classic = tmp_path / "classic.ko"
    write_btf_sections(_elf(tmp_path), classic,
                       {".BTF": module(reparse(vmlinux())).to_bytes()})
    res = reconcile_module_file(str(classic), target)
    assert res.verdict is Verdict.NO_BASE and codes(res.diagnostics) == ["no-base"]


# ------------------------------------------------------------------ the daemon


def test_no_btf_is_a_daemon_verdict_not_served() -> None:
    assert "no-btf" in DAEMON_VERDICTS and "no-btf" not in SERVED_VERDICTS


def _check_no_btf_record(rec: dict, name: str) -> None:
    assert rec["verdict"] == "no-btf" and rec["engine_verdict"] == "no-base"
    assert rec["btf"] is None and rec["btf_sha256"] is None
    fix = (f"btfreconcilectl headers {RELEASE} (writes {RELEASE}'s BTF base into "
           f"/lib/modules/{RELEASE}/build/vmlinux), then rebuild the module: dkms install "
           f"--force MODULE/MODULE-VERSION -k {RELEASE}")
    assert rec["summary"].startswith(f"{name}: the module has no BTF at all")
    assert fix in rec["summary"]
    diag = [d for d in rec["diagnostics"] if d["code"] == "no-btf"]
    assert len(diag) == 1 and diag[0]["severity"] == "error"
    assert diag[0]["remedy"].startswith(fix)


def test_module_without_btf_gets_no_btf_with_the_remedy(fs: FakeSystem) -> None:
    """The engine says no-base for it (no .BTF.base either); the daemon used to try a rescue
    and publish no-base. Classic split BTF stays no-base."""
    fs.add_file("bare", "NOBTF")
    fs.add_file("plain", "NOBASE")
    fs.add_file("good")
    for m in ("bare", "plain", "good"):
        fs.load(m)
    d = make_daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        assert d.cache is not None
        rec = d.cache.read_record("bare")
        assert rec is not None
        _check_no_btf_record(rec, "bare")
        assert not d.cache.btf_path("bare").exists()
        assert d.cache.read_record("plain")["verdict"] == "no-base"  # type: ignore[index]
        # counted in status, the manifest and the one-line status
        counts = d.counts()
        assert counts["no-btf"] == 1 and counts["no-base"] == 1 and counts["ok"] == 1
        assert handle_request(d, {"cmd": "status"})["counts"]["no-btf"] == 1
        d.flush_manifest()
        man = d.cache.read_manifest()
        assert man and man["counts"]["no-btf"] == 1
        assert man["modules"]["bare"]["verdict"] == "no-btf"
        assert "1 no-btf" in d.status_line()
        # not served: no path answer
        assert "bare" not in {m["module"] for m in d.list_modules()
                              if m["verdict"] in SERVED_VERDICTS}
        # decided again the same way (the engine's result remembered, the policy reapplied)
        d.on_event("add", "bare")
        assert d.wait_idle()
        _check_no_btf_record(d.cache.read_record("bare"), "bare")  # type: ignore[arg-type]
    finally:
        d.stop()


def test_daemon_restart_decides_no_btf_again(fs: FakeSystem) -> None:
    fs.add_file("bare", "NOBTF")
    fs.load("bare")
    for _ in range(2):
        d = make_daemon(fs)
        try:
            d.rescan("t")
            assert d.wait_idle()
            assert d.cache is not None
            _check_no_btf_record(d.cache.read_record("bare"), "bare")  # type: ignore[arg-type]
            assert d.counts()["no-btf"] == 1
        finally:
            d.stop()


def test_real_engine_module_without_btf_is_no_btf(fs: FakeSystem, tmp_path: Path) -> None:
    """With the real engine: the file built by gcc alone has no .BTF section."""
    (fs.mods / "bare.ko").write_bytes(_elf(tmp_path).read_bytes())
    fs.load("bare")
    d = make_daemon(fs, engine=ReconcileEngine())  # type: ignore[arg-type]
    try:
        d.rescan("t")
        assert d.wait_idle()
        assert d.cache is not None
        rec = d.cache.read_record("bare")
        assert rec is not None
        _check_no_btf_record(rec, "bare")
    finally:
        d.stop()


# ------------------------------------------------------------------ doctor

V = "6.99.0-test"


@pytest.fixture
def not_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """V is not the running kernel, whose BTF (/sys/kernel/btf/vmlinux) is OTHER_BTF."""
    monkeypatch.setattr(headers, "running_release", lambda: "0.0.0-running")
    sys_btf = tmp_path / "sys-vmlinux"
    sys_btf.write_bytes(OTHER_BTF)
    monkeypatch.setattr(headers, "SYS_BTF", sys_btf)
    return sys_btf


def bare_module(tmp_path: Path, release: str | None = V, name: str = "rtw_dkms") -> Path:
    """What Kbuild leaves when it skips BTF generation: a module with .modinfo, no .BTF."""
    ko = tmp_path / f"{name}.ko"
    modinfo = b"license=GPL\0"
    if release is not None:
        modinfo += f"vermagic={release} SMP preempt mod_unload modversions \0".encode()
    write_btf_sections(_elf(tmp_path), ko, {".modinfo": modinfo + f"name={name}\0".encode()})
    return ko


def doctor(capsys: pytest.CaptureFixture[str], ko: Path, root: Path, *extra: str
           ) -> tuple[int, str]:
    target = ko.parent / "target.btf"
    target.write_bytes(reparse(vmlinux()).to_bytes())
    rc = ctl(["doctor", str(ko), "--vmlinux", str(target), "--root", str(root), *extra])
    return rc, capsys.readouterr().out


def test_doctor_no_vmlinux_in_the_build_dir(tmp_path: Path, capsys, not_running) -> None:
    root = make_root(tmp_path, V, image=bzimage(V))
    ko = bare_module(tmp_path)
    rc, out = doctor(capsys, ko, root)
    assert rc == 1
    assert "DOES NOT FIT: rtw_dkms: no BTF at all" in out
    assert f"built for {V}; its build directory: no vmlinux in {root}/lib/modules/{V}/build" \
        in out
    assert (f"fix: btfreconcilectl headers {V} (writes {V}'s BTF base into /lib/modules/{V}/"
            f"build/vmlinux), then rebuild the module: dkms install --force "
            f"MODULE/MODULE-VERSION -k {V}") in out
    rc, out = doctor(capsys, ko, root, "--json")
    d = json.loads(out)["modules"][0]
    assert rc == 1 and d["kind"] == "no-btf" and d["result"] == "does-not-fit"
    assert d["built_for"] == V and d["build_dir"]["state"] == "no-vmlinux"
    assert d["fix"].startswith(f"btfreconcilectl headers {V} (")


def test_doctor_vmlinux_of_another_build(tmp_path: Path, capsys, not_running) -> None:
    """The workaround passed around: the running kernel's /sys/kernel/btf/vmlinux copied
    into the build directory of another kernel."""
    root = make_root(tmp_path, V, image=bzimage(V))
    (build_dir(root) / "vmlinux").write_bytes(not_running.read_bytes())
    ko = bare_module(tmp_path)
    rc, out = doctor(capsys, ko, root)
    assert rc == 1
    assert f"{root}/lib/modules/{V}/build/vmlinux ({build_dir(root) / 'vmlinux'}) holds " \
        f"BTF that is not {V}'s" in out
    assert f"it is the running kernel's (0.0.0-running), copied from {not_running}" in out
    assert f"fix: btfreconcilectl headers {V} --force (" in out
    # some other build's vmlinux ELF, not the running kernel's BTF
    not_running.write_bytes(b"")
    (build_dir(root) / "vmlinux").write_bytes(make_vmlinux(OTHER_BTF))
    rc, out = doctor(capsys, ko, root)
    assert rc == 1 and "it is another kernel build's" in out
    assert f"fix: btfreconcilectl headers {V} --force (" in out
    # a file Kbuild cannot take a base from at all
    (build_dir(root) / "vmlinux").write_bytes(b"not a kernel")
    rc, out = doctor(capsys, ko, root)
    assert rc == 1 and f"(neither ELF nor BTF) holds no .BTF, not {V}'s BTF" in out


def test_doctor_right_vmlinux_there_now_says_rebuild(tmp_path: Path, capsys,
                                                      not_running) -> None:
    root = make_root(tmp_path, V, image=bzimage(V))
    assert ctl(["headers", V, "--root", str(root)]) == 0
    capsys.readouterr()
    ko = bare_module(tmp_path)
    rc, out = doctor(capsys, ko, root)
    assert rc == 1
    assert f"holds {V}'s BTF" in out
    assert "a vmlinux is there now: the module was built before it" in out
    assert (f"fix: rebuild the module: dkms install --force MODULE/MODULE-VERSION -k {V}, or "
            f"make against /lib/modules/{V}/build") in out
    assert "btfreconcilectl headers" not in out.split("fix:")[1]
    # ours, and the image is gone: still known to be V's (headers checked it)
    (root / "boot" / f"vmlinuz-{V}").unlink()
    rc, out = doctor(capsys, ko, root)
    assert rc == 1 and "was written by btfreconcilectl headers" in out
    assert "fix: rebuild the module" in out


def test_doctor_no_headers_and_no_vermagic(tmp_path: Path, capsys, not_running) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    rc, out = doctor(capsys, bare_module(tmp_path), root)
    assert rc == 1
    assert f"{root}/lib/modules/{V}/build does not exist: the headers of {V} are not " \
           "installed" in out
    assert f"fix: install the headers of {V}, then btfreconcilectl headers {V} (" in out
    # no vermagic: the running kernel is assumed, and said so
    rc, out = doctor(capsys, bare_module(tmp_path, None, "novermagic"), root)
    assert rc == 1 and "no vermagic" in out and "built for 0.0.0-running" in out
    # a vermagic that is no release cannot lead outside the root
    rc, out = doctor(capsys, bare_module(tmp_path, "../../etc", "evil"), root)
    assert rc == 1 and "is not a kernel release" in out and "fix: btfreconcilectl" in out
