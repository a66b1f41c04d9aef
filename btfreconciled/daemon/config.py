"""Daemon configuration: a TOML file (``--config``), overridden by command-line options.

Every key is optional::

    cache_dir = "/var/cache/btfreconciled"          # where reconciled BTF is published
    socket = "/run/btfreconciled/control.sock"      # control socket of btfreconcilectl
    socket_mode = "0600"                            # octal string or integer
    socket_group = "bpf"                            # group owning the socket (with 0660)
    extra_module_dirs = ["/opt/modules"]            # searched after modules.dep
    strict = "embedded"                             # off | embedded | all (field checks)
    log_format = "auto"                             # auto | json | console
    log_level = "info"                              # debug | info | warning | error
    events = "auto"                                 # auto (netlink, else poll) | netlink | poll
    poll_interval = 2.0                             # seconds, polling fallback
    gc = true                                       # remove other kernels' cache entries
    module_timeout = 60                             # seconds one module may take
    max_module_bytes = 134217728                    # read from / decompressed of one module
    search_dirs = ["/boot", ...]                    # where classic-split modules' builds are
    merged_btf = "modules"                          # loader-ready BTF: modules (merged/<m>.btf
                                                    # and all.btf) | all (all.btf only) | off
    watch_files = true                              # watchdog on module dirs and this file
    control_timeout = 10.0                          # seconds a control client has to send
                                                    # a request line / read its answer

Advanced (tests, chroots): ``vmlinux`` (raw BTF of the running kernel), ``sysfs`` (``/sys``),
``modules_root`` (``/lib/modules/<release>``), ``release`` (``uname -r``), ``netlink_rcvbuf``.

Test-only: ``accept_user_uevents = true`` also takes module uevents sent by user-space
processes (benches and tests send synthetic ones in a private network namespace).  The
default, false, accepts only the kernel's (sender port id 0): anyone able to send to the
uevent multicast group could otherwise make the daemon publish for modules never loaded.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/btfreconciled/btfreconciled.toml")
DEFAULT_SOCKET = Path("/run/btfreconciled/control.sock")
DEFAULT_CACHE_DIR = Path("/var/cache/btfreconciled")
STRICT_POLICIES = ("off", "embedded", "all")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_SOURCES = ("auto", "netlink", "poll")
# merged/<m>.btf costs a vmlinux (~5 MB) of disk per ok module; all.btf one in total.
MERGED_CHOICES = ("modules", "all", "off")


class ConfigError(Exception):
    """The configuration is unusable; the message is one line naming the file and key."""


@dataclass
class Config:
    cache_dir: Path = DEFAULT_CACHE_DIR
    socket: Path = DEFAULT_SOCKET
    socket_mode: int = 0o600
    socket_group: str | None = None
    extra_module_dirs: list[Path] = field(default_factory=list)
    strict: str = "embedded"
    log_format: str = "auto"
    log_level: str = "info"
    events: str = "auto"
    poll_interval: float = 2.0
    gc: bool = True
    watch_files: bool = True
    merged_btf: str = "modules"
    module_timeout: float = 60.0
    max_module_bytes: int = 128 << 20
    # where a classic-split module's build may be found (doctor's defaults)
    search_dirs: list[Path] = field(default_factory=lambda: [Path(d) for d in (
        "/boot", "/usr/lib/debug/boot", "/usr/lib/modules/*", "/usr/lib/modules/*/build",
        "/usr/src/linux-headers-*")])
    vmlinux: Path = Path("/sys/kernel/btf/vmlinux")
    sysfs: Path = Path("/sys")
    modules_root: Path | None = None
    release: str | None = None
    netlink_rcvbuf: int = 4 * 1024 * 1024
    control_timeout: float = 10.0
    accept_user_uevents: bool = False  # test-only, see the module docstring
    source: Path | None = None  # the file this came from, if any

    def kernel_release(self) -> str:
        return self.release or os.uname().release

    def modules_dir(self) -> Path:
        return self.modules_root or Path("/lib/modules") / self.kernel_release()

    def socket_gid(self) -> int | None:
        if self.socket_group is None:
            return None
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError:
            raise ConfigError(f"socket_group: no such group {self.socket_group!r}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, list):
                v = [str(x) for x in v]
            out[f.name] = v
        out["socket_mode"] = f"{self.socket_mode:04o}"
        return out


_PATH_KEYS = {"cache_dir", "socket", "vmlinux", "sysfs", "modules_root"}


def _want(where: str, key: str, value: Any, types: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{where}: {key}: expected {_tname(types)}, got a boolean")
    if not isinstance(value, types):
        raise ConfigError(f"{where}: {key}: expected {_tname(types)}, got {type(value).__name__}")
    return value


def _tname(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    _want(where, key, value, str)
    if value not in choices:
        raise ConfigError(f"{where}: {key}: {value!r} is not one of {', '.join(choices)}")
    return value


def parse_mode(where: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ConfigError(f"{where}: socket_mode: {value!r} is not an octal mode") from None
    else:
        mode = _want(where, "socket_mode", value, int)
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{where}: socket_mode: {value!r} is out of range (0000-0777)")
    return mode


@dataclass(frozen=True)
class _Range:
    """A number key: its type, the range it must be in, and how the error names the range."""

    integer: bool  # int only; else int or float, stored as float
    low: float
    high: float | None
    says: str


_NUMBERS = {
    "poll_interval": _Range(False, 0.05, 3600, "is out of range (0.05-3600)"),
    "control_timeout": _Range(False, 0.1, 3600, "is out of range (0.1-3600)"),
    "module_timeout": _Range(False, 0.1, 3600, "is out of range (0.1-3600)"),
    "max_module_bytes": _Range(True, 1 << 20, 4 << 30, "is out of range (1 MiB - 4 GiB)"),
    "netlink_rcvbuf": _Range(True, 4096, None, "is too small (>= 4096)"),
}
_CHOICES = {"strict": STRICT_POLICIES, "log_format": LOG_FORMATS, "log_level": LOG_LEVELS,
            "events": EVENT_SOURCES, "merged_btf": MERGED_CHOICES}
_BOOLS = {"gc", "watch_files", "accept_user_uevents"}
_STRINGS = {"socket_group", "release"}


def apply(cfg: Config, data: dict[str, Any], where: str) -> Config:
    """Apply the keys of ``data`` (parsed TOML) to ``cfg``; unknown keys are errors."""
    base = cfg.source.parent if cfg.source else Path.cwd()
    for key, value in data.items():
        setattr(cfg, key, _value(key, value, where, base))
    return cfg


def _value(key: str, value: Any, where: str, base: Path) -> Any:
    """The checked value of config key `key` (relative paths are taken from `base`)."""
    if key in _PATH_KEYS:
        p = Path(_want(where, key, value, str))
        return p if p.is_absolute() else base / p
    if key in _NUMBERS:
        r = _NUMBERS[key]
        v = _want(where, key, value, int) if r.integer else \
            float(_want(where, key, value, (int, float)))
        if not (r.low <= v and (r.high is None or v <= r.high)):  # (NaN fails too)
            raise ConfigError(f"{where}: {key}: {value!r} {r.says}")
        return v
    if key in _CHOICES:
        return _choice(where, key, value, _CHOICES[key])
    if key in _BOOLS:
        return _want(where, key, value, bool)
    if key in _STRINGS:
        return _want(where, key, value, str)
    if key == "socket_mode":
        return parse_mode(where, value)
    if key == "extra_module_dirs":
        paths = [Path(_want(where, key, v, str)) for v in _want(where, key, value, list)]
        return [p if p.is_absolute() else base / p for p in paths]
    if key == "search_dirs":
        dirs = _want(where, key, value, list)
        if not all(isinstance(d, str) for d in dirs):
            raise ConfigError(f"{where}: search_dirs: expected a list of directories")
        return [Path(d) for d in dirs]
    raise ConfigError(f"{where}: unknown key {key!r}")


def load(path: str | os.PathLike[str] | None, *, required: bool) -> Config:
    """Read the TOML config at ``path`` (the default file may be absent)."""
    cfg = Config()
    if path is None:
        return cfg
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{p}: no such file") from None
        return cfg
    except OSError as e:
        raise ConfigError(f"{p}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    cfg.source = p.resolve()
    return apply(cfg, data, str(p))
