"""integration/guest/ctl.sh + ctl_zygote.py: the warm btfreconcilectl of the VM guest scripts.

The VM tests judge what `ctl ...` printed and returned as if `btfreconcilectl ...` had run,
so the zygote must hand back the same stdout, stderr and exit status, in the caller's
directory, for every kind of call (success, handled error, usage error, --help)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_sh(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    py = bindir / "python3"  # ctl.sh starts the zygote with the guest's python3
    if not py.exists():
        py.symlink_to(sys.executable)
    script = f"REPO={REPO}\n. $REPO/integration/guest/ctl.sh\n{body}\nkill $CTL_ZYGOTE\n"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=str(REPO))
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)


def direct(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c",
                           "import sys; from btfreconciled.cli.main import main; "
                           "sys.exit(main())", *argv],
                          capture_output=True, text=True, cwd=cwd, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("argv", [
    ["show", "--socket", "/nonexistent/control.sock", "btfr_embed"],  # handled error: 2
    ["no-such-command"],                                               # argparse usage: 2
    ["dump", "--help"],                                                # SystemExit(0)
    ["inspect", "vmlinux.btf"],                                        # relative to cwd
])
def test_ctl_answers_like_btfreconcilectl(tmp_path: Path, argv: list[str]) -> None:
    vml = Path("/sys/kernel/btf/vmlinux")
    if argv[-1] == "vmlinux.btf":
        (tmp_path / "vmlinux.btf").write_bytes(vml.read_bytes())
    quoted = " ".join(f"'{a}'" for a in argv)
    got = run_sh(tmp_path, f"ctl {quoted} > out.txt 2> err.txt; echo $? > rc.txt")
    assert got.returncode == 0, got.stderr
    want = direct(*argv, cwd=tmp_path)
    assert (tmp_path / "rc.txt").read_text().strip() == str(want.returncode)
    # `inspect` times its load: the one line that differs between two runs
    def untimed(text: str) -> str:
        return re.sub(r" in \d+\.\d ms", " in N ms", text)
    assert untimed((tmp_path / "out.txt").read_text()) == untimed(want.stdout)
    assert (tmp_path / "err.txt").read_text() == want.stderr


def test_ctl_in_a_command_substitution_field_and_settled(tmp_path: Path) -> None:
    (tmp_path / "pending.json").write_text('{"pending": true, "cross_check": {"result": "match"}}')
    (tmp_path / "done.json").write_text('{"pending": false}')
    got = run_sh(tmp_path, 'x=$(ctl --help | head -n 1); echo "[$x]"\n'
                           "settled pending.json; echo pending=$?\n"
                           "settled done.json; echo done=$?\n"
                           "settled missing.json; echo missing=$?\n"
                           'echo "cc=$(ctl field pending.json cross_check.result)"\n'
                           "ctl field done.json cross_check.result; echo nofield=$?")
    assert got.returncode == 0, got.stderr
    assert "[usage: btfreconcilectl" in got.stdout
    assert "pending=1" in got.stdout and "done=0" in got.stdout
    assert "missing=1" in got.stdout
    assert "cc=match" in got.stdout and "nofield=1" in got.stdout
