"""What went wrong, per expected type, in a form people (and --json) can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .wire import kind_name

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True, slots=True)
class CandidateInfo:
    """A vmlinux type considered for an expected type."""

    id: int
    kind: str
    name: str
    size: int | None
    why_not: str = ""  # empty when it matched

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "name": self.name,
                             "size": self.size}
        if self.why_not:
            d["why_not"] = self.why_not
        return d

    def text(self) -> str:
        size = "" if self.size is None else f" size={self.size}"
        why = f" ({self.why_not})" if self.why_not else ""
        return f"[{self.id}] {self.kind} {self.name or '(anon)'}{size}{why}"


@dataclass(slots=True)
class Problem:
    """One rejection or warning.

    code: unmapped | ambiguous | invalid-base | unmapped-string | field | no-base | no-btf |
    error
    """

    code: str
    severity: str
    summary: str  # one line, names the type
    expected: dict[str, Any] | None = None  # {"id", "kind", "name", "size"} in .BTF.base
    candidates: list[CandidateInfo] = field(default_factory=list)
    embedded: bool | None = None
    paths: list[str] = field(default_factory=list)  # module types that embed it
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"code": self.code, "severity": self.severity,
                             "summary": self.summary}
        if self.expected is not None:
            d["expected"] = self.expected
        if self.candidates or self.code in ("unmapped", "ambiguous"):
            d["candidates"] = [c.to_dict() for c in self.candidates]
        if self.embedded is not None:
            d["embedded"] = self.embedded
            d["paths"] = list(self.paths)
        if self.details:
            d.update(self.details)
        return d

    def text(self) -> str:
        lines = [f"{self.severity}: {self.summary}"]
        if self.expected is not None:
            e = self.expected
            size = "" if e.get("size") is None else f" size={e['size']}"
            lines.append(f"  expected: {e['kind']} {e['name']}{size}"
                         f" (.BTF.base id {e.get('id')})")
        if self.candidates:
            lines.append("  vmlinux has:")
            lines += [f"    {c.text()}" for c in self.candidates]
        elif self.code == "unmapped":
            lines.append("  vmlinux has: no type of that name")
        if self.embedded is not None:
            if self.embedded:
                lines.append("  embedded by value through:")
                lines += [f"    {p}" for p in self.paths] or ["    (unknown)"]
            else:
                lines.append("  referenced by pointer only (size need not match)")
        for m in self.details.get("members", []):
            lines.append(f"  {m['text']}")
        return "\n".join(lines)


def expected_dict(dist_id: int, kind: int, name: str, size: int | None) -> dict[str, Any]:
    return {"id": dist_id, "kind": kind_name(kind), "name": name, "size": size}


def type_label(kind: int, name: str) -> str:
    """`struct foo`, `union bar`, `int`, `enum baz` as C would spell it."""
    k = kind_name(kind)
    if k in ("struct", "union", "enum"):
        return f"{k} {name or '(anon)'}"
    if k == "enum64":
        return f"enum {name or '(anon)'}"
    if k == "fwd":
        return f"fwd {name}"
    return name or f"(anon {k})"


def render_text(problems: list[dict[str, Any]] | list[Problem]) -> str:
    out = []
    for p in problems:
        out.append(p.text() if isinstance(p, Problem) else problem_text(p))
    return "\n".join(out)


def problem_text(d: dict[str, Any]) -> str:
    """Text for a problem already turned into a dict (e.g. read back from JSON)."""
    cands = [CandidateInfo(c["id"], c["kind"], c["name"], c.get("size"), c.get("why_not", ""))
             for c in d.get("candidates", [])]
    known = {"code", "severity", "summary", "expected", "candidates", "embedded", "paths"}
    p = Problem(d["code"], d["severity"], d["summary"], d.get("expected"), cands,
                d.get("embedded"), list(d.get("paths", [])),
                {k: v for k, v in d.items() if k not in known})
    return p.text()
