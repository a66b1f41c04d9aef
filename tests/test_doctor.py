"""doctor: read the base a classic split BTF was built for off the module itself, and find
that build among candidate files (issue 10). Whole-tree checks on real Debian modules are in
integration/test_doctor.py."""

from __future__ import annotations

import json
from pathlib import Path

from test_reconcile import _elf, module, reparse, vmlinux

from btfreconciled.btf.btf import Btf
from btfreconciled.btf.types import Int
from btfreconciled.cli.main import main as ctl
from btfreconciled.elfwrite import write_btf_sections
from btfreconciled.reconcile.origin import check_base, infer_shape


def _classic(tmp_path: Path, base: Btf, name: str = "my_mod") -> Path:
    ko = tmp_path / f"{name}.ko"
    write_btf_sections(_elf(tmp_path), ko, {".BTF": module(base).to_bytes()})
    return ko


def grown() -> Btf:
    b = vmlinux()
    b.add(Int(b.add_str("extra_int_type"), 0, 4, 1, 0, 32))  # one more type, more strings
    return reparse(b)


def test_infer_shape_reads_the_base_off_the_module() -> None:
    base = reparse(vmlinux())
    split = module(base).to_bytes()
    shape = infer_shape(split)
    assert (shape.base_types, shape.base_str_len) == (base.type_count, base.str_end)
    assert shape.matches(base.type_count, base.str_end)
    g = grown()
    assert not shape.matches(g.type_count, g.str_end)
    assert check_base(split, shape, base).fits
    fit = check_base(split, shape, g)
    assert not fit.fits and "built against a vmlinux with 14 types" in fit.reason


def _world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A classic-split module, its build in a candidate dir, and another kernel's BTF."""
    base = reparse(vmlinux())
    ko = _classic(tmp_path, base)
    cands = tmp_path / "boot"
    cands.mkdir()
    (cands / "vmlinux-old.btf").write_bytes(base.to_bytes())
    target = tmp_path / "new.btf"
    target.write_bytes(grown().to_bytes())
    return ko, cands, target


def test_doctor_cli(tmp_path: Path, capsys) -> None:
    ko, cands, target = _world(tmp_path)
    # fits its own build
    assert ctl(["doctor", str(ko), "--vmlinux", str(cands / "vmlinux-old.btf"),
                "--search", str(tmp_path / "none")]) == 0
    capsys.readouterr()
    # not the target: says what it was built for and names its build
    assert ctl(["doctor", str(ko), "--vmlinux", str(target), "--search", str(cands)]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT: my_mod: built against a vmlinux with 14 types" in out
    assert f"its build: {cands / 'vmlinux-old.btf'}" in out
    assert f"rescue {ko} --base {cands / 'vmlinux-old.btf'}" in out
    assert ctl(["doctor", str(ko), "--vmlinux", str(target), "--search", str(cands),
                "--json"]) == 1
    d = json.loads(capsys.readouterr().out)["modules"][0]
    assert d["result"] == "does-not-fit" and d["build"] == str(cands / "vmlinux-old.btf")
    assert d["shape"]["base_types"] == 14 and d["shape"]["exact"]
    # no BTF at all: said so, and why
    nobtf = tmp_path / "nobtf.ko"
    nobtf.write_bytes(_elf(tmp_path).read_bytes())
    assert ctl(["doctor", str(nobtf), "--vmlinux", str(target)]) == 1
    out = capsys.readouterr().out
    assert "no BTF at all" in out and "unavailability of vmlinux" in out
    # errors: one line, exit 2
    assert ctl(["doctor", str(tmp_path / "missing.ko"), "--vmlinux", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ko" in err


def test_doctor_lists_loaded_modules_whose_file_it_cannot_find(tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    """No MODULE: a loaded module without registered BTF whose file is in neither
    modules.dep nor --module-dir is still listed (with the kernel's log line) and the exit
    status says something does not fit; it used to vanish into 'every loaded module's BTF is
    registered'."""
    from btfreconciled.cli import doctor as doctor_cli

    base = reparse(vmlinux())
    target = tmp_path / "vmlinux.btf"
    target.write_bytes(base.to_bytes())
    log = "failed to validate module [lost_mod] BTF: -22"
    seen: list[list[Path]] = []

    def fake(extra_dirs):
        seen.append(extra_dirs)
        return [], {"lost_mod": log}, ["lost_mod"]

    monkeypatch.setattr(doctor_cli, "_loaded_without_btf", fake)
    assert ctl(["doctor", "--vmlinux", str(target), "--module-dir", str(tmp_path),
                "--search", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert seen == [[tmp_path]]
    assert "DOES NOT FIT: lost_mod: loaded, but the kernel registered no BTF" in out
    assert f"not in modules.dep, {tmp_path}" in out
    assert f"kernel log: {log}" in out
    assert "every loaded module" not in out
    # 6.12 with MODULE_ALLOW_BTF_MISMATCH logs one line per boot that names no module
    generic = "Kernel module BTF mismatch detected, BTF debug info may be unavailable"
    monkeypatch.setattr(doctor_cli, "_loaded_without_btf",
                        lambda extra: ([], {"": generic}, ["lost_mod"]))
    assert ctl(["doctor", "--vmlinux", str(target), "--search", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert f"kernel log: {generic} (logged once per boot, naming no module)" in out


def test_rescue_cli(tmp_path: Path, capsys) -> None:
    ko, cands, target = _world(tmp_path)
    # before: classic split BTF, check says what to do on stderr (one line, exit 2)
    assert ctl(["check", str(ko), "--vmlinux", str(target)]) == 2
    c = capsys.readouterr()
    assert c.out == "" and c.err.count("\n") == 1 and "btfreconcilectl rescue" in c.err
    out = tmp_path / "rescued.ko"
    assert ctl(["rescue", str(ko), "--search", str(cands), "-o", str(out)]) == 0
    assert "distilled against its build" in capsys.readouterr().out
    assert ctl(["check", str(out), "--vmlinux", str(target)]) == 0  # now reconciles
    assert ctl(["check", str(out), "--vmlinux", str(cands / "vmlinux-old.btf")]) == 0
    # the wrong --base is refused with the reason; nothing written
    never = tmp_path / "never.ko"
    assert ctl(["rescue", str(ko), "--base", str(target), "-o", str(never)]) == 1
    assert "is not this module's build" in capsys.readouterr().out and not never.exists()
    # --in-place keeps the original next to it; a second rescue has nothing to do
    orig = ko.read_bytes()
    assert ctl(["rescue", str(ko), "--search", str(cands), "--in-place"]) == 0
    assert Path(f"{ko}.btfr-orig").read_bytes() == orig
    capsys.readouterr()
    assert ctl(["rescue", str(ko), "--search", str(cands), "--in-place"]) == 1
    assert "already carries .BTF.base" in capsys.readouterr().out


def test_rescue_refuses_a_signed_module(tmp_path: Path, capsys) -> None:
    base = reparse(vmlinux())
    ko = _classic(tmp_path, base)
    with open(ko, "ab") as f:
        f.write(b"\0" * 12 + b"~Module signature appended~\n")
    cands = tmp_path / "boot"
    cands.mkdir()
    (cands / "vmlinux.btf").write_bytes(base.to_bytes())
    assert ctl(["rescue", str(ko), "--search", str(cands), "--in-place"]) == 2
    err = capsys.readouterr().err
    assert "signed module" in err and "--signed-ok" in err and err.count("\n") == 1
    assert ctl(["rescue", str(ko), "--search", str(cands), "--in-place", "--signed-ok"]) == 0
    assert "signature was removed" in capsys.readouterr().out
    assert not ko.read_bytes().endswith(b"~Module signature appended~\n")


def test_daemon_rescues_a_classic_module_the_kernel_rejected(tmp_path: Path) -> None:
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_daemon import make_daemon
    from test_daemon_support import FakeSystem, expected_btf

    fs = FakeSystem(tmp_path / "w")
    # built for other vmlinuxes (FOREIGN): why the kernel did not register their BTF
    fs.add_file("dkms_mod", "CLASSIC", payload="BUILD=/boot/vmlinuz-6.12.117 FOREIGN")
    fs.add_file("lost", "CLASSIC", payload="FOREIGN")
    fs.add_file("registered", "CLASSIC", payload="BUILD=/boot/vmlinuz-x")
    # built for another vmlinux, yet the kernel's checks passed by chance (seen with a module
    # built for 6.12.117 forced into 6.12.118): its /sys/kernel/btf file is wrong
    fs.add_file("silent", "CLASSIC", payload="BUILD=/boot/vmlinuz-6.12.117 FOREIGN")
    for n in ("dkms_mod", "lost", "registered", "silent"):
        fs.load(n)
    fs.kernel_btf("registered", b"the kernel took it")
    fs.kernel_btf("silent", b"the kernel took it, against the wrong types")
    d = make_daemon(fs)
    try:
        d.rescan("t")
        assert d.wait_idle()
        rec = d.show("dkms_mod")
        assert rec["verdict"] == "rescued" and rec["rescue_base"] == "/boot/vmlinuz-6.12.117"
        assert d.cache.btf_path("dkms_mod").read_bytes() == expected_btf(
            (fs.mods / "dkms_mod.ko").read_bytes())
        assert d.published_btf("dkms_mod")
        lost = d.show("lost")
        assert lost["verdict"] == "no-base" and "none of the kernel files" in lost["summary"]
        assert d.show("registered")["verdict"] == "no-base"  # the kernel's BTF is fine
        silent = d.show("silent")
        assert silent["verdict"] == "rescued", silent
        assert silent["rescue_base"] == "/boot/vmlinuz-6.12.117"
        assert "/sys/kernel/btf/silent was registered by the kernel, but the module's BTF " \
               "was made for another vmlinux" in silent["summary"]
        assert [x["code"] for x in silent["diagnostics"]][-1] == "kernel-btf-wrong-base"
        assert d.cache.btf_path("silent").read_bytes() == expected_btf(
            (fs.mods / "silent.ko").read_bytes())
        assert d.counts()["rescued"] == 2
        assert d.merged.wait_idle()
        assert d.merged_path("dkms_mod")[0]  # loaders get it like any other
    finally:
        d.stop()


def test_kernel_check_and_its_postinst_hook(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    base = reparse(vmlinux())
    ver = "6.12.999-test"
    dkms = tmp_path / "lib" / "modules" / ver / "updates" / "dkms"
    dkms.mkdir(parents=True)
    src = tmp_path / "src"
    src.mkdir()
    _classic(src, base, "old_build").rename(dkms / "old_build.ko")  # another kernel's build
    image = tmp_path / "boot" / f"vmlinuz-{ver}"
    image.parent.mkdir()
    image.write_bytes(grown().to_bytes())
    cache = tmp_path / "cache"
    # the hook runs the btfreconcilectl it finds on PATH: a wrapper pointing at our tree
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "btfreconcilectl"
    repo = Path(__file__).resolve().parent.parent
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; from btfreconciled."
                       f"cli.main import main; sys.exit(main())' \"$@\" --modules-root "
                       f"{tmp_path / 'lib' / 'modules'} --cache-dir {cache}\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=str(repo))
    r = subprocess.run(["sh", str(repo / "scripts" / "kernel" / "zz-btfreconciled"), ver,
                        str(image)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0  # never fails a package installation
    assert f"warning: old_build ({dkms / 'old_build.ko'}) will have no usable BTF on {ver}" \
        in r.stderr, r.stderr
    rep = json.loads((cache / "pre-reboot" / f"{ver}.json").read_text())
    assert rep["modules"] == 1 and rep["will_not_fit"][0]["module"] == "old_build"
    # nothing built for it yet: says so, exit 0
    r = subprocess.run(["sh", str(repo / "scripts" / "kernel" / "zz-btfreconciled"),
                        "1.2.3-none", str(image)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and "no out-of-tree modules for 1.2.3-none" in r.stderr


def test_engine_built_for_tells_the_modules_build(tmp_path: Path) -> None:
    """The daemon asks this when the kernel registered a classic module's BTF."""
    from types import SimpleNamespace

    from btfreconciled.daemon.engine import ReconcileEngine

    base = reparse(vmlinux())
    ko = _classic(tmp_path, base)
    eng = ReconcileEngine()
    assert eng.built_for(str(ko), SimpleNamespace(btf=base))[0]
    fits, why = eng.built_for(str(ko), SimpleNamespace(btf=grown()))
    assert not fits and "built against a vmlinux with 14 types" in why


def test_candidates_after_the_build_are_not_read(tmp_path: Path) -> None:
    """doctor and rescue stop at the module's build: later kernel files (images to
    decompress, headers' vmlinux) are never read."""
    from btfreconciled.reconcile.doctor import Candidates, diagnose
    from btfreconciled.reconcile.target import VmlinuxIndex

    base = reparse(vmlinux())
    ko = _classic(tmp_path, base)
    (tmp_path / "vmlinux-a.btf").write_bytes(base.to_bytes())
    (tmp_path / "vmlinux-b.btf").write_bytes(b"not read")
    target = tmp_path / "new.btf"
    target.write_bytes(grown().to_bytes())
    cands = Candidates([tmp_path / "vmlinux-a.btf", tmp_path / "vmlinux-b.btf"])
    d = diagnose(ko, VmlinuxIndex.load(str(target)), cands)
    assert d.build == str(tmp_path / "vmlinux-a.btf")
    assert cands.items[1].btf is None and cands.items[1].error is None


def test_kernel_check_finds_the_image_in_the_module_tree(tmp_path: Path) -> None:
    """Debian sid (linux-binary-*), Fedora and Arch install the image as
    /usr/lib/modules/VERSION/vmlinuz, with nothing in /boot: kernel-check's default."""
    from btfreconciled.cli.kernelcheck import default_image
    from btfreconciled.reconcile.doctor import DEFAULT_SEARCH, candidate_files

    base = reparse(vmlinux())
    ver = "7.2.999-sidtest"
    tree = tmp_path / "lib" / "modules" / ver
    dkms = tree / "updates" / "dkms"
    dkms.mkdir(parents=True)
    src = tmp_path / "src"
    src.mkdir()
    _classic(src, base, "old_build").rename(dkms / "old_build.ko")
    assert default_image(ver, tree) == Path(f"/boot/vmlinuz-{ver}")  # nothing there yet
    (tree / "vmlinuz").write_bytes(grown().to_bytes())
    assert default_image(ver, tree) == tree / "vmlinuz"
    cache = tmp_path / "cache"
    rc = ctl(["kernel-check", ver, "--modules-root", str(tmp_path / "lib" / "modules"),
              "--cache-dir", str(cache)])
    assert rc == 1
    rep = json.loads((cache / "pre-reboot" / f"{ver}.json").read_text())
    assert rep["image"] == str(tree / "vmlinuz") and rep["will_not_fit"][0]["module"] == "old_build"
    # doctor and rescue look there too
    assert "/usr/lib/modules/*" in DEFAULT_SEARCH
    assert candidate_files([str(tmp_path / "lib" / "modules" / "*")]) == [tree / "vmlinuz"]


def test_kernel_check_says_which_modules_the_new_kernel_refuses(tmp_path: Path,
                                                               capsys) -> None:
    """Debian's 7.2 is built without CONFIG_MODULE_ALLOW_BTF_MISMATCH: a module whose BTF it
    cannot use does not load at all (seen in integration/test_daemon_vm.py).  kernel-check
    reads the new kernel's config and says "will not load" there, "no usable BTF" where the
    option is set, and the report and `status` carry it."""
    from types import SimpleNamespace

    from btfreconciled.cli.status import pre_reboot_line
    from btfreconciled.daemon.status import StatusApi

    base = reparse(vmlinux())
    ver = "7.2.999-refuses"
    tree = tmp_path / "lib" / "modules" / ver
    (tree / "updates").mkdir(parents=True)
    src = tmp_path / "src"
    src.mkdir()
    _classic(src, base, "old_build").rename(tree / "updates" / "old_build.ko")
    (tree / "vmlinuz").write_bytes(grown().to_bytes())
    cache = tmp_path / "cache"
    argv = ["kernel-check", ver, "--modules-root", str(tmp_path / "lib" / "modules"),
            "--cache-dir", str(cache)]
    cfg = tree / "config"
    for text, on_load, says in (
            ("CONFIG_DEBUG_INFO_BTF_MODULES=y\n# CONFIG_MODULE_ALLOW_BTF_MISMATCH is not set\n",
             "refused", f"will not load on {ver}"),
            ("CONFIG_DEBUG_INFO_BTF_MODULES=y\nCONFIG_MODULE_ALLOW_BTF_MISMATCH=y\n",
             "no-btf", f"will have no usable BTF on {ver}"),
            (None, "unknown", f"will have no usable BTF on {ver}")):
        if text is None:
            cfg.unlink()
        else:
            cfg.write_text(text)
        capsys.readouterr()
        assert ctl(argv) == 1
        out = capsys.readouterr().out
        assert says in out, out
        rep = json.loads((cache / "pre-reboot" / f"{ver}.json").read_text())
        assert rep["will_not_fit"][0]["on_load"] == on_load
        assert rep["config"] == (str(cfg) if text else None)
    # refused: the warning names the option and the config it was read from
    cfg.write_text("CONFIG_DEBUG_INFO_BTF_MODULES=y\n")
    assert ctl(argv) == 1
    out = capsys.readouterr().out
    assert f"CONFIG_MODULE_ALLOW_BTF_MISMATCH is not set in {cfg}" in out
    # what the daemon's status makes of the report (another kernel than the running one)
    api = SimpleNamespace(cfg=SimpleNamespace(cache_dir=cache), release="6.12.0-running")
    reps = StatusApi.pre_reboot_reports(api)
    assert [(r["version"], r["will_not_fit"], r["will_not_load"]) for r in reps] == \
        [(ver, ["old_build"], ["old_build"])]
    assert pre_reboot_line(reps[0]) == (
        f"next kernel {ver}: 1 out-of-tree modules, 1 will have no usable BTF: old_build "
        f"(btfreconcilectl kernel-check {ver}); 1 will not load at all: old_build")


def test_kernel_log_keeps_the_cause_line_before_the_module_line() -> None:
    """Linux 7.2, refusing a module whose .BTF.base does not map (observed in the 7.2 VM):
    the cause names no module and comes right before the line that does."""
    from btfreconciled.cli.doctor import match_log_lines

    cause = "distilled base BTF type 'work_struct' [68] is not mapped to base BTF id"
    failed = "failed to validate module [btfr_embed] BTF: -22"
    texts = ["btfr_embed: loaded, value=2", cause, failed,
             "BTF: unrelated line naming nothing", "some other message",
             "failed to validate module [other] BTF: -22"]
    assert match_log_lines(texts, ["btfr_embed", "other", "absent"]) == {
        "btfr_embed": f"{cause}; {failed}",
        "other": "failed to validate module [other] BTF: -22"}  # a message between: no cause
    generic = "Kernel module BTF mismatch detected, BTF debug info may be unavailable"
    assert match_log_lines([generic, failed], ["btfr_embed"]) == {"": generic,
                                                                    "btfr_embed": failed}


def test_doctor_on_a_file_shows_that_the_running_kernel_refused_it(tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    """`doctor FILE` against the running kernel: a module 7.2 refused leaves only its log
    lines behind; doctor shows them and says the load was refused."""
    from btfreconciled.cli import doctor as doctor_cli

    ko, cands, target = _world(tmp_path)
    line = "failed to validate module [my_mod] BTF: -22"
    monkeypatch.setattr(doctor_cli, "_kernel_log_lines", lambda names: {"my_mod": line, "": "x"})
    monkeypatch.setattr(doctor_cli, "load_target", lambda v: doctor_cli.VmlinuxIndex.load(
        str(target)))
    monkeypatch.setattr(doctor_cli, "find_policy", lambda files: ("refuse", Path("/cfg")))
    assert ctl(["doctor", str(ko), "--search", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert f"kernel log: {line}\n" in out
    assert ("the running kernel refused to load it because of its BTF "
            "(CONFIG_MODULE_ALLOW_BTF_MISMATCH is not set in /cfg; insmod says only "
            "'Invalid parameters')") in out
    assert "naming no module" not in out  # the once-per-boot line is not about this file
    # another kernel given: the running kernel's log is not about it
    assert ctl(["doctor", str(ko), "--vmlinux", str(target), "--search",
                str(tmp_path / "none")]) == 1
    assert "kernel log" not in capsys.readouterr().out
