"""kconfig.py: what a kernel does with a module whose BTF it cannot use, from its config."""

from __future__ import annotations

from pathlib import Path

from btfreconciled.kconfig import DROP, IGNORE, REFUSE, config_files, find_policy, parse_policy

DEBIAN_612 = "CONFIG_DEBUG_INFO_BTF=y\nCONFIG_DEBUG_INFO_BTF_MODULES=y\n" \
             "CONFIG_MODULE_ALLOW_BTF_MISMATCH=y\n"
DEBIAN_72 = "CONFIG_DEBUG_INFO_BTF=y\nCONFIG_DEBUG_INFO_BTF_MODULES=y\n" \
            "# CONFIG_MODULE_ALLOW_BTF_MISMATCH is not set\n"


def test_parse_policy() -> None:
    assert parse_policy(DEBIAN_612) == DROP
    assert parse_policy(DEBIAN_72) == REFUSE
    # before 5.18 the option did not exist: a bad module BTF failed the load
    assert parse_policy("CONFIG_DEBUG_INFO_BTF_MODULES=y\n") == REFUSE
    assert parse_policy("CONFIG_DEBUG_INFO_BTF=y\n# CONFIG_DEBUG_INFO_BTF_MODULES is not set\n"
                        "CONFIG_MODULE_ALLOW_BTF_MISMATCH=y\n") == IGNORE


def test_config_files_and_find_policy(tmp_path: Path) -> None:
    boot, root = tmp_path / "boot", tmp_path / "lib" / "modules"
    (root / "7.2.0").mkdir(parents=True)
    boot.mkdir()
    files = config_files("7.2.0", boot / "vmlinuz-7.2.0", root)
    assert files == [boot / "config-7.2.0", Path("/boot/config-7.2.0"), root / "7.2.0" / "config"]
    assert find_policy(files) == (None, None)  # nothing there: unknown, not assumed
    (boot / "config-7.2.0").write_text("not a config\n")  # skipped: no CONFIG_ line
    (root / "7.2.0" / "config").write_text(DEBIAN_72)
    assert find_policy(files) == (REFUSE, root / "7.2.0" / "config")
    (boot / "config-7.2.0").write_text(DEBIAN_612)
    assert find_policy(files) == (DROP, boot / "config-7.2.0")
