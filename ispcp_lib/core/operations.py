"""Typed operations and the one executor that runs them: the plan is data.

Every change a step makes on the target is an operation (run a command, write a file, keep a safety
copy, run SQL statements, write or remove a file of the tool's own state). `Executor.perform` is the
only place that acts: the step's change line is rendered from the operation's `what` there, in a dry
run and when applying alike; a dry run stops at that and does nothing; applying writes the
operation's *intent* to the journal first, acts through the connection, then writes its
*completion* (write-ahead, so a resumed run knows exactly what a killed one had started). So the plan
shown and the act performed cannot drift. This is pyinfra's split of operations from connectors, and
Ansible's check mode on one code path.

A fault-injection hook (`ISPCP_FAULT`) kills the process at a chosen operation boundary, for the
reliability suite: `ISPCP_FAULT=before:STEP:N` or `after:STEP:N` (N counts the step's operations
from 1).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from ispcp_lib.core.context import Context

FAULT_ENV = "ISPCP_FAULT"
T = TypeVar("T")
# Payload fields the journal never keeps: file contents and SQL arguments (secrets, customer data).
PAYLOAD = ("data", "input", "args")


@dataclass(frozen=True)
class Operation:
    """One change on the target. `what` is the operator's sentence for it."""

    kind: ClassVar[str] = "operation"
    what: str

    def record(self) -> dict[str, Any]:
        """The operation as the journal keeps it (no payload: file contents stay out)."""
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k not in PAYLOAD}}


@dataclass(frozen=True)
class RunCommand(Operation):
    kind: ClassVar[str] = "command"
    argv: tuple[str, ...] = ()
    where: str = "target"  # or "controller" (rsync pushing over SSH)


@dataclass(frozen=True)
class WriteFile(Operation):
    kind: ClassVar[str] = "write"
    path: str = ""
    data: bytes = field(default=b"", repr=False)
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class KeepCopy(Operation):
    kind: ClassVar[str] = "keep"
    path: str = ""
    dest: str = ""


@dataclass(frozen=True)
class RunSql(Operation):
    """Statements sent in one session, in order. The journal keeps their text (placeholders, not values)."""

    kind: ClassVar[str] = "sql"
    statements: tuple[str, ...] = ()
    args: tuple[Any, ...] = field(default=(), repr=False)

    def record(self) -> dict[str, Any]:
        rec = super().record()
        rec["statements"] = [s if len(s) <= 300 else s[:300] + " ..." for s in self.statements]
        return rec


@dataclass(frozen=True)
class Procedure(Operation):
    """Commands and statements that only make sense together (restart MySQL without grant tables,
    set passwords, restart it normally): one intent and one completion around all of them; the
    file writes inside are operations of their own."""

    kind: ClassVar[str] = "procedure"


@dataclass(frozen=True)
class RemovePath(Operation):
    kind: ClassVar[str] = "remove"
    path: str = ""
    where: str = "target"  # or "state": a file of the tool's own in the state dir


@dataclass(frozen=True)
class WriteState(Operation):
    """A file of the tool's own in the state dir (a record for a later step or for cleanup)."""

    kind: ClassVar[str] = "state"
    path: str = ""
    data: bytes = field(default=b"", repr=False)


class Executor:
    """Runs operations for one Context: dry run records, apply journals intent, acts, journals done."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.counts: dict[str, int] = {}
        self.depth = 0  # > 0 while a procedure acts: its inner operations are journaled, not planned apart

    def perform(
        self,
        op: Operation,
        act: Callable[[], T],
        *,
        announce: bool = True,
        apply: bool | None = None,
        outcome: Callable[[T], dict[str, Any]] | None = None,
    ) -> T | None:
        """Plan or perform one operation: the only place a step's change happens.

        announce: the running step's change line is op.what (rendered here, for the plan and the act
        alike). apply: whether to act (default: the running step's mode). A dry run returns None
        without acting; applying journals the intent, acts, journals the completion (with
        outcome(act's value)), and returns what act returned. Inside another operation's act (a
        procedure) an operation is journaled as usual but neither listed nor announced apart: the
        dry run plans the procedure as one.
        """
        result = self.ctx.current
        if result is not None and not self.depth:  # an operation inside a procedure is a part of it
            result.operations.append(op)
            if announce:
                result.change(op.what)
        if not (self.ctx.apply if apply is None else apply):
            return None
        seq = self.begin(op)
        self.depth += 1
        try:
            value = act()
        except Exception as exc:  # it ended, failing: not a kill (an intent without completion is one)
            self.end(op, seq, {"failed": type(exc).__name__})
            raise
        finally:
            self.depth -= 1
        self.end(op, seq, outcome(value) if outcome is not None else None)
        return value

    def planned(self, match: Callable[[Operation], bool]) -> bool:
        """Whether the running step has planned (or, applying, performed) an operation like this already."""
        result = self.ctx.current
        return result is not None and any(match(op) for op in result.operations)

    def begin(self, op: Operation) -> int:
        """Journal the intent of op (apply only); returns its number within the step."""
        step = self._step()
        seq = self.counts[step] = self.counts.get(step, 0) + 1
        self._journal("intent", step, seq, op.record())
        self._fault("before", step, seq)  # after the intent, before the act: the crash resume must handle
        return seq

    def end(self, op: Operation, seq: int, outcome: dict[str, Any] | None = None) -> None:
        step = self._step()
        self._journal("done", step, seq, {"kind": op.kind, **(outcome or {})})
        self._fault("after", step, seq)

    def _step(self) -> str:
        return self.ctx.current.step if self.ctx.current is not None else "outside-steps"

    def _journal(self, phase: str, step: str, seq: int, body: dict[str, Any]) -> None:
        ctx = self.ctx
        ts = dt.datetime.now().isoformat(timespec="seconds")
        record = {"type": "operation", "phase": phase, "ts": ts, "run_id": ctx.run_id, "step": step, "seq": seq}
        ctx.journal({**record, "op": body})

    @staticmethod
    def _fault(phase: str, step: str, seq: int) -> None:
        if os.environ.get(FAULT_ENV) == f"{phase}:{step}:{seq}":
            os._exit(137)  # a kill -9 at this boundary: no cleanup, no journal, as a power failure


def operation_records(journal: list[dict[str, Any]], run_id: str | None = None) -> list[dict[str, Any]]:
    """The operation records of a journal (all runs, or one): intents whose completion is missing
    are the operations a killed run had started."""
    return [r for r in journal if r.get("type") == "operation" and (run_id is None or r.get("run_id") == run_id)]


def unfinished(journal: list[dict[str, Any]], step: str) -> list[dict[str, Any]]:
    """Intents of `step` without a completion, in the order they were started (newest run only)."""
    ops = [r for r in operation_records(journal) if r.get("step") == step]
    if not ops:
        return []
    last_run = ops[-1]["run_id"]
    done = {r["seq"] for r in ops if r["run_id"] == last_run and r["phase"] == "done"}
    return [r for r in ops if r["run_id"] == last_run and r["phase"] == "intent" and r["seq"] not in done]


def killed_run(journal: list[dict[str, Any]], step: str, current: str) -> str | None:
    """The newest run (not `current`) whose operations of step started but whose step record is missing:
    it was killed in that step."""
    ops = [r for r in operation_records(journal) if r.get("step") == step and r.get("run_id") != current]
    if not ops:
        return None
    run = ops[-1]["run_id"]
    ended = any(r.get("name") == step and r.get("run_id") == run for r in journal if r.get("type") != "operation")
    return None if ended else run
