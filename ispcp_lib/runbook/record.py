"""The record of a run, from its journal: the summary, the status panel and the report all come from here.

The journal (journal.jsonl under the state dir, on the target) holds one record per step run plus the
executor's operation records. Stepping through by hand, one step leaves several records in one run: its
dry run, the applied run its button started, and a resume skip when its cell runs again. The step's
outcome is the applied record when there is one, else its latest record, so the by-hand record and a
headless run of the same world say the same.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ispcp_lib.core.result import CommandRecord, Result
from ispcp_lib.steps import STEP_ORDER

# The setup cell shows this output: the notebook then knows its run id, state dir and connection,
# and `ispcp-recover report` finds the journal without widget state or a summary file.
RUN_RECORD_MIME = "application/vnd.ispcp.run+json"
# The run-wide parameters that say where the journal is and how to reach it (no secret among them).
RUN_RECORD_KEYS = (
    "run_id",
    "state_dir",
    "target",
    "target_root",
    "backup_root",
    "backup_location",
    "secrets_file",
    "sandbox",
    "apply",
    "steps",
)
NOT_SELECTED = "not selected by the steps parameter"
NOT_REACHED = "not reached: an earlier cell stopped the run"


@dataclass
class StepOutcome:
    """What one step came to in one run, and the record that says so."""

    record: dict[str, Any]
    earlier: bool = False  # the step's last run was a resume skip of what this same run applied

    @property
    def note(self) -> str:
        rec = self.record
        if self.earlier:
            return f"applied earlier in this run at {rec.get('ts', '?')}"
        if rec.get("errors"):
            return str(rec["errors"][0])
        return str(rec.get("noop_reason") or "")


def step_records(records: Iterable[Mapping[str, Any]], run_id: str) -> dict[str, list[dict[str, Any]]]:
    """The step records (not operation records) of one run, per step, in journal order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("run_id") == run_id and "name" in rec and rec.get("type") != "operation":
            out.setdefault(str(rec["name"]), []).append(dict(rec))
    return out


def outcome(records: list[dict[str, Any]]) -> StepOutcome | None:
    """The record that stands for the step: the last applied one (a later dry run or resume skip does
    not undo it), else the last one."""
    if not records:
        return None
    applied = [r for r in records if r.get("apply") and r.get("status") not in ("skipped", "planned")]
    if not applied:
        return StepOutcome(records[-1])
    last = records[-1]
    return StepOutcome(applied[-1], earlier=last is not applied[-1] and last.get("status") == "skipped")


def outcomes(records: Iterable[Mapping[str, Any]], run_id: str) -> dict[str, StepOutcome]:
    found = {}
    for name, recs in step_records(records, run_id).items():
        got = outcome(recs)
        if got is not None:
            found[name] = got
    return found


def step_states(records: Iterable[Mapping[str, Any]], run_id: str, results: Mapping[str, Result]) -> dict[str, str]:
    """Each step's status in this run (done, noop, planned, skipped, failed), from the journal; a step
    this kernel ran without a record (left out by the steps parameter) from its Result."""
    found = outcomes(records, run_id)
    states = {name: str(r.status) for name, r in results.items()}
    states.update({name: str(got.record["status"]) for name, got in found.items()})
    return states


def status_line(states: Mapping[str, str], steps: list[str] | None, current: str, planned: str) -> str:
    """Where the recovery stands and what comes next, in one line (above each step's output).

    states: step -> status (step_states); planned: how to name the planned steps (in JupyterLab they
    wait for their Apply button, in a headless dry run they are only planned)."""
    shown = {n: states.get(n, "not run") for n in STEP_ORDER if n != current}
    counts = Counter(shown.values())
    through = sum(n for state, n in counts.items() if state not in ("not run", "planned", "running"))
    selected = [n for n in STEP_ORDER if steps is None or n in steps]
    after = selected[selected.index(current) + 1 :] if current in selected else []
    parts = [f"{through} of {len(selected)} steps through"]
    parts += [
        f"{counts[s]} {label}"
        for s, label in (("done", "done"), ("noop", "no-op"), ("skipped", "skipped"))
        if counts[s]
    ]
    waiting = [n for n, state in shown.items() if state == "planned"]
    failed = [n for n, state in shown.items() if state == "failed"]
    if waiting:
        parts.append(f"{planned}: " + ", ".join(waiting))
    if failed:
        parts.append("FAILED: " + ", ".join(failed))
    parts.append(f"now: {current}")
    parts.append(f"next: {after[0]}" if after else "next: the summary")
    return " · ".join(parts)


def run_times(records: Iterable[Mapping[str, Any]], run_id: str) -> tuple[str | None, str | None]:
    """When the run's first step started and its last record was written (ISO, local time)."""
    starts, ends = [], []
    for rec in records:
        if rec.get("run_id") != run_id or not rec.get("ts"):
            continue
        try:
            at = dt.datetime.fromisoformat(str(rec["ts"]))
        except ValueError:
            continue
        ends.append(at)
        starts.append(at - dt.timedelta(seconds=float(rec.get("duration_s") or 0)))
    if not ends:
        return None, None
    return min(starts).isoformat(timespec="seconds"), max(ends).isoformat(timespec="seconds")


def summary_from_records(
    records: list[dict[str, Any]], run_id: str, apply: bool, steps: list[str] | None
) -> dict[str, Any]:
    """The Summary JSON (docs/architecture.md, "Contracts") of one run, from its journal records.

    Besides the contract's fields each row has `reason` (why nothing changed, the first error, or
    "applied earlier in this run") and `at` (when its record was written); the run has `started`
    and `finished`.
    """
    found = outcomes(records, run_id)
    rows = []
    for name in STEP_ORDER:
        got = found.get(name)
        if got is None:
            reason = NOT_SELECTED if steps and name not in steps else NOT_REACHED
            rows.append(
                {"name": name, "status": "skipped", "changed": 0, "duration_s": 0.0, "warnings": [], "reason": reason}
            )
            continue
        rec = got.record
        row = {
            "name": name,
            "status": rec["status"],
            "changed": rec.get("changed", 0),
            "duration_s": rec.get("duration_s", 0.0),
            "round_trips": rec.get("round_trips", 0),
            "warnings": rec.get("warnings", []),
            "at": rec.get("ts"),
        }
        if got.note:
            row["reason"] = got.note
        rows.append(row)
    status = "failed" if any(r["status"] == "failed" for r in rows) else "ok"
    # Stepping through in JupyterLab, an Apply button applies one step while the parameter stays False.
    applied = apply or any(o.record.get("apply") and o.record.get("status") == "done" for o in found.values())
    started, finished = run_times(records, run_id)
    return {
        "status": status,
        "apply": bool(applied),
        "run_id": run_id,
        "started": started,
        "finished": finished,
        "steps": rows,
    }


def result_from_record(rec: Mapping[str, Any]) -> Result:
    """A step's journal record as a Result, to show it where its own output is lost (a re-run cell, a
    notebook saved without widget state). The journal keeps no diffs or tables, only command tails."""
    result = Result(step=str(rec.get("name", "?")), apply=bool(rec.get("apply")))
    result.status = str(rec.get("status", "?"))
    result.summary = str(rec.get("summary") or "")
    result.changes = list(rec.get("changes") or [])
    result.warnings = list(rec.get("warnings") or [])
    result.errors = list(rec.get("errors") or [])
    result.backups = list(rec.get("backups") or [])
    result.noop_reason = rec.get("noop_reason")
    result.duration_s = float(rec.get("duration_s") or 0)
    result.commands = [
        CommandRecord(
            list(c.get("argv") or []),
            c.get("rc"),
            str(c.get("stdout_tail") or ""),
            str(c.get("stderr_tail") or ""),
            float(c.get("duration_s") or 0),
            bool(c.get("planned")),
        )
        for c in rec.get("commands") or []
    ]
    return result


def run_record(params: Mapping[str, Any], run_id: str, state_dir: str) -> dict[str, Any]:
    """Where this run's journal is and how to reach it, for the notebook to keep."""
    values = {k: params.get(k) for k in RUN_RECORD_KEYS}
    values.update(run_id=run_id, state_dir=state_dir)
    return values
