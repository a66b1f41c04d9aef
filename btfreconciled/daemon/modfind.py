"""Module name -> module file: modules.dep / modules.builtin, then configured extra dirs.

/sys/module/<name> carries no file path, so the name is looked up the way modprobe does:
``modules.dep`` under ``/lib/modules/$(uname -r)``, where ``-`` and ``_`` are equivalent.
Extra directories (out-of-tree builds, fixtures, a host without /lib/modules) are walked for
``*.ko``, ``*.ko.xz``, ``*.ko.zst`` and ``*.ko.gz``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import module_name_of, normalize_module_name


@dataclass
class ModuleIndex:
    """What the module trees hold, built in one pass and replaced wholesale on changes."""

    paths: dict[str, list[Path]] = field(default_factory=dict)  # name -> candidates, in order
    builtin: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)  # what was read, for status
    problems: list[str] = field(default_factory=list)  # unreadable trees, for status

    def lookup(self, name: str) -> Path | None:
        found = self.paths.get(normalize_module_name(name))
        return found[0] if found else None

    def is_builtin(self, name: str) -> bool:
        return normalize_module_name(name) in self.builtin

    def _add(self, name: str, path: Path) -> None:
        self.paths.setdefault(name, [])
        if path not in self.paths[name]:
            self.paths[name].append(path)


def build_index(modules_dir: Path, extra_dirs: Iterable[Path]) -> ModuleIndex:
    idx = ModuleIndex()
    dep = modules_dir / "modules.dep"
    try:
        with open(dep, encoding="utf-8", errors="replace") as f:
            for line in f:
                rel, sep, _ = line.partition(":")
                if not sep:
                    continue
                name = module_name_of(rel)
                if name:
                    p = Path(rel)
                    idx._add(name, p if p.is_absolute() else modules_dir / p)
        idx.sources.append(str(dep))
    except FileNotFoundError:
        idx.problems.append(f"{dep}: not found")
    except OSError as e:
        idx.problems.append(f"{dep}: {e.strerror or e}")
    builtin = modules_dir / "modules.builtin"
    try:
        with open(builtin, encoding="utf-8", errors="replace") as f:
            for line in f:
                name = module_name_of(line.strip())
                if name:
                    idx.builtin.add(name)
        idx.sources.append(str(builtin))
    except OSError:
        pass
    for d in extra_dirs:
        if not d.is_dir():
            idx.problems.append(f"{d}: not a directory")
            continue
        idx.sources.append(str(d))
        for root, dirs, files in os.walk(d, onerror=None):
            dirs.sort()
            for fn in sorted(files):
                name = module_name_of(fn)
                if name:
                    idx._add(name, Path(root) / fn)
    return idx
