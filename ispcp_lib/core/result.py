"""Result: what one action found, planned or did, rendered for humans (HTML) and machines (dict)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from ispcp_lib.core.secrets import REGISTRY, SecretRegistry

# Long outputs are collapsed in the report with this many head and tail lines visible.
PREVIEW_LINES = 6


@dataclass
class CommandRecord:
    argv: list[str]
    rc: int | None
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    planned: bool = False  # dry run: shown, not executed

    def as_dict(self, redact: Any = None) -> dict[str, Any]:
        # Redact before cutting the tail: a secret across the cut would survive in part.
        clean = redact or (lambda text: text)
        return {
            "argv": [clean(a) for a in self.argv],
            "rc": self.rc,
            "planned": self.planned,
            "duration_s": round(self.duration_s, 3),
            "stdout_tail": clean(self.stdout)[-2000:],
            "stderr_tail": clean(self.stderr)[-2000:],
        }


@dataclass
class Diff:
    path: str
    text: str


@dataclass
class Table:
    title: str
    frame: Any  # pandas.DataFrame; kept loose so that facts stay importable without pandas


@dataclass
class Result:
    step: str
    apply: bool = False
    summary: str = ""
    changes: list[str] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    diffs: list[Diff] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Checks of the step's own that fail now and would stop it when applying (JupyterLab then offers
    # no Apply button); each also has its warning or table row with the fix.
    blocked: list[str] = field(default_factory=list)
    noop_reason: str | None = None
    status: str = "running"  # done | noop | planned | skipped | failed
    duration_s: float = 0.0
    round_trips: int = 0  # commands and SQL statements sent to the target (one round trip each over SSH)
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable facts for later steps
    # The operations the step planned (dry run) or performed (apply), in order (core.operations).
    operations: list[Any] = field(default_factory=list, repr=False)
    secrets: SecretRegistry = field(default=REGISTRY, repr=False)

    # -- building --------------------------------------------------------------------------
    def change(self, what: str) -> None:
        """Record one change: planned in a dry run, done when applying."""
        self.changes.append(what)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self, title: str, frame: Any) -> None:
        self.tables.append(Table(title, frame))

    @property
    def changed(self) -> int:
        return len(self.changes)

    # -- output ----------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The journal/summary record; everything passes through redaction."""
        return self.secrets.redact_obj(
            {
                "name": self.step,
                "status": self.status,
                "apply": self.apply,
                "changed": self.changed,
                "duration_s": round(self.duration_s, 3),
                "round_trips": self.round_trips,
                "summary": self.summary,
                "changes": self.changes,
                "warnings": self.warnings,
                "errors": self.errors,
                "noop_reason": self.noop_reason,
                "backups": self.backups,
                "commands": [c.as_dict(self.secrets.redact) for c in self.commands],
            }
        )

    def __repr__(self) -> str:
        lines = [f"[{self.status}] {self.step}: {self.summary}"]
        if self.noop_reason:
            lines.append(f"  no change: {self.noop_reason}")
        lines += [f"  {'planned' if not self.apply else 'changed'}: {c}" for c in self.changes]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  ERROR: {e}" for e in self.errors]
        return self.secrets.redact("\n".join(lines))

    def _repr_html_(self) -> str:
        if self.secrets is not REGISTRY:
            return self.secrets.redact(render_html(self.redacted()))
        return self.secrets.redact(render_html(self))

    def redacted(self) -> Result:
        """A copy whose texts are redacted with this result's own registry (for a private registry)."""
        import copy

        clone = copy.copy(self)
        for name in ("summary", "changes", "warnings", "errors", "notes", "blocked", "noop_reason", "backups"):
            setattr(clone, name, self.secrets.redact_obj(getattr(self, name)))
        clone.diffs = [Diff(self.secrets.redact(d.path), self.secrets.redact_keyed(d.text)) for d in self.diffs]
        clone.commands = [
            CommandRecord(
                [self.secrets.redact(a) for a in c.argv],
                c.rc,
                self.secrets.redact(c.stdout),
                self.secrets.redact(c.stderr),
                c.duration_s,
                c.planned,
            )
            for c in self.commands
        ]
        clone.tables = [Table(self.secrets.redact(t.title), self.secrets.redact_obj(t.frame)) for t in self.tables]
        return clone


# One palette for every place that shows a step's status: result boxes, the panel, the report.
STATUS_COLOURS = {
    "done": "#1a7f37",
    "noop": "#57606a",
    "no-op": "#57606a",
    "planned": "#0969da",
    "skipped": "#57606a",
    "failed": "#cf222e",
    "running": "#9a6700",
    "not run": "#8c959f",
}
NEUTRAL_COLOUR = "#57606a"


def human_size(n: float | None) -> str:
    """Bytes for people: 512 B, 3.4 KiB, 1.2 GiB; a dash for unknown."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def plain_frame(frame: Any) -> Any:
    """A table as people read it: whole numbers without ".0" and empty cells instead of NaN/None
    (pandas turns a column of numbers with a gap into floats)."""
    if not hasattr(frame, "columns"):
        return frame
    out = frame.copy()
    for col in out.columns:
        values = out[col]
        numbers = [v for v in values if isinstance(v, float) and not math.isnan(v)]
        whole = all(v.is_integer() for v in numbers)
        out[col] = values.map(lambda v, whole=whole: _plain(v, whole)).astype(object)
    return out


def _plain(value: Any, whole: bool) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if whole and isinstance(value, float):
        return int(value)
    return value


def esc(text: Any) -> str:
    # Redact before escaping: a key containing < or " would no longer match once escaped.
    return html.escape(REGISTRY.redact(str(text)), quote=True)


def collapsible(title: str, text: str, preview: int = PREVIEW_LINES) -> str:
    """A <details> block that keeps the first and last lines visible when it is long."""
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= 2 * preview + 2:
        return f"<div class='ir-out'><div class='ir-sub'>{esc(title)}</div><pre>{esc(text)}</pre></div>"
    head = "\n".join(lines[:preview])
    tail = "\n".join(lines[-preview:])
    return (
        f"<div class='ir-out'><div class='ir-sub'>{esc(title)}</div><pre>{esc(head)}\n…</pre>"
        f"<details><summary>show all {len(lines)} lines</summary><pre>{esc(text)}</pre></details>"
        f"<pre>…\n{esc(tail)}</pre></div>"
    )


def applied_marker(step: str) -> str:
    """The attribute an applied result's HTML carries, so the report sees which applied results a notebook
    shows (the others it fills in from the journal)."""
    return f"data-applied-step='{html.escape(step, quote=True)}'"


def render_html(r: Result) -> str:
    colour = STATUS_COLOURS.get(r.status, NEUTRAL_COLOUR)
    verb = "changes" if r.apply else "planned changes (dry run)"
    marker = applied_marker(r.step) if r.apply and r.status not in ("skipped", "planned") else ""
    parts = [
        f"<div class='ir-result' {marker} style='border-left:4px solid {colour};padding:4px 10px;margin:6px 0'>",
        f"<div><b style='color:{colour}'>{esc(r.status.upper())}</b> <code>{esc(r.step)}</code>"
        f" · {r.changed} {esc(verb)} · {r.duration_s:.2f} s</div>",
    ]
    if r.summary:
        parts.append(f"<p>{esc(r.summary)}</p>")
    if r.noop_reason:
        parts.append(f"<p><i>Nothing to do: {esc(r.noop_reason)}</i></p>")
    for e in r.errors:
        parts.append(f"<p style='color:#cf222e;font-weight:bold'>✖ {esc(e)}</p>")
    for w in r.warnings:
        parts.append(f"<p style='color:#9a6700'>⚠ {esc(w)}</p>")
    if r.blocked:
        parts.append(f"<p style='color:#cf222e'>⛔ applying would stop at: {esc('; '.join(r.blocked))}</p>")
    for n in r.notes:
        parts.append(f"<p>{esc(n)}</p>")
    if r.changes:
        items = "".join(f"<li>{esc(c)}</li>" for c in r.changes)
        parts.append(f"<div class='ir-sub'>{esc(verb.capitalize())}</div><ul>{items}</ul>")
    for t in r.tables:
        frame = plain_frame(r.secrets.redact_obj(t.frame))
        body = frame.to_html(index=False, escape=True, border=0) if hasattr(frame, "to_html") else esc(frame)
        parts.append(f"<div class='ir-sub'>{esc(t.title)}</div>{body}")
    for d in r.diffs:
        parts.append(collapsible(f"diff {d.path}", r.secrets.redact_keyed(d.text), preview=20))
    for c in r.commands:
        state = "planned (not run)" if c.planned else f"exit {c.rc}, {c.duration_s:.2f} s"
        out = (c.stdout + ("\n" + c.stderr if c.stderr else "")).strip()
        title = f"$ {' '.join(c.argv)}   [{state}]"
        parts.append(collapsible(title, out) if out else f"<div class='ir-sub'>{esc(title)}</div>")
    if r.backups:
        items = "".join(f"<li><code>{esc(b)}</code></li>" for b in r.backups)
        parts.append(f"<div class='ir-sub'>Safety copies</div><ul>{items}</ul>")
    parts.append("</div>")
    return "".join(parts)
