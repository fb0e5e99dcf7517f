"""@action: timing, journal record, resume/skip, watchdogs and error capture for every step.

No action writes the journal itself; this module is the only writer.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, IspcpError
from ispcp_lib.core.result import Result

# Checks run before every changing step (the mail guard registers its watchdog here).
WATCHDOGS: list[Callable[[Context, Result], None]] = []
# Called with (ctx, step name) before a step that no other step called runs (headless, the runbook shows
# where the recovery stands above the step's output).
STEP_START: list[Callable[[Context, str], None]] = []
# Called with a failed step's exception; a text returned is appended to its error (e.g. the fix for a full disk).
FAILURE_ADVICE: list[Callable[[Context, BaseException], str | None]] = []


class StepFailed(Exception):
    """Raised after a failed step is recorded; carries the Result for the report and tests."""

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(f"step {result.step} failed: " + "; ".join(result.errors))


def read_journal(ctx: Context) -> list[dict[str, Any]]:
    return parse_journal(ctx.state.read_text(str(ctx.journal_path)))


def parse_journal(text: str | None) -> list[dict[str, Any]]:
    """The records of a journal's text (None: no journal yet); a torn last line (a killed run) is left out."""
    out = []
    for line in (text or "").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def last_applied(ctx: Context, step: str) -> dict[str, Any] | None:
    """The journal record that shows step finished with apply=True, if the last one did."""
    for rec in reversed(read_journal(ctx)):
        if rec.get("name") != step or rec.get("status") == "skipped":
            continue
        if rec.get("apply") and rec.get("status") in ("done", "noop"):
            return rec
        return None
    return None


def _append_journal(ctx: Context, result: Result) -> None:
    ctx.journal({"ts": dt.datetime.now().isoformat(timespec="seconds"), "run_id": ctx.run_id, **result.as_dict()})


def action(name: str, *, mutating: bool = True, repeatable: bool = False) -> Callable:
    """Wrap fn(ctx, result, **kw). mutating=False marks read-only steps (never skipped by resume).

    repeatable=True marks steps that are not idempotent by nature (running ispcp-update): resume
    never skips them, and they check a guard fact themselves.
    """

    def deco(fn: Callable[..., None]) -> Callable[..., Result]:
        @functools.wraps(fn)
        def wrapper(ctx: Context, **kw: Any) -> Any:
            # In a live JupyterLab session (ispcp_lib.runbook.interactive) the session decides how the step
            # runs: a changing step as a dry run first, applied only when the operator presses a button.
            if ctx.current is None:
                for hook in STEP_START:
                    hook(ctx, name)
            session = ctx.interactive_session
            if session is not None:
                return session.run_step(run_step, ctx, name, mutating, kw)
            return run_step(ctx, **kw)

        def run_step(ctx: Context, **kw: Any) -> Result:
            result = Result(step=name, apply=ctx.apply_for(name), secrets=ctx.secrets)
            if ctx.steps is not None and name not in ctx.steps:
                result.status = "skipped"
                result.noop_reason = "not selected by the steps parameter"
                ctx.results[name] = result
                return result
            done = last_applied(ctx, name) if (mutating and not repeatable and ctx.resume) else None
            if done is not None and name not in ctx.force_steps:
                result.status = "skipped"
                result.noop_reason = (
                    f"the journal shows this step applied in run {done['run_id']} at {done['ts']}; "
                    f"add '{name}' to force_steps to run it again"
                )
                ctx.results[name] = result
                _append_journal(ctx, result)
                return result
            previous = ctx.current
            ctx.current = result
            ctx.runner.apply = result.apply
            ctx.runner.sink = result.commands
            started, trips = time.monotonic(), _round_trips(ctx)
            failure: BaseException | None = None
            try:
                if mutating and result.apply and ctx.lock is not None and not ctx.lock.held:
                    ctx.lock.acquire(break_lock=bool(ctx.param("break_lock", False)))
                if mutating:
                    for check in WATCHDOGS:
                        check(ctx, result)
                fn(ctx, result, **kw)
            except (IspcpError, CommandFailed) as exc:
                failure = exc
                result.errors.append(ctx.secrets.redact(str(exc) + _advice(ctx, exc)))
            except Exception as exc:  # an unexpected bug still leaves a record
                failure = exc
                result.errors.append(ctx.secrets.redact(f"{type(exc).__name__}: {exc}" + _advice(ctx, exc)))
            finally:
                result.duration_s = time.monotonic() - started
                result.round_trips = _round_trips(ctx) - trips
                ctx.current = previous
                ctx.runner.sink = None
                # Outside a step nothing may change: a stray mutating command is only planned.
                ctx.runner.apply = previous.apply if previous is not None else False
            result.status = _status(result, mutating, failure)
            ctx.results[name] = result
            _append_journal(ctx, result)
            if failure is not None:
                _show(result)
                raise StepFailed(result) from None
            return result

        wrapper.step_name = name  # type: ignore[attr-defined]
        wrapper.mutating = mutating  # type: ignore[attr-defined]
        wrapper.run_step = run_step  # type: ignore[attr-defined]  # the step without the interactive gate
        return wrapper

    return deco


def _round_trips(ctx: Context) -> int:
    """Commands and statements sent so far through the run's connections (each counted once)."""
    seen = [ctx.target, ctx.backup, ctx.state, getattr(ctx.backup, "inner", None)]
    connections = {id(c): c for c in seen if c is not None}
    return sum(c.round_trips for c in connections.values())


def _advice(ctx: Context, exc: BaseException) -> str:
    texts = [text for advise in FAILURE_ADVICE if (text := advise(ctx, exc))]
    return "".join(f"\n{text}" for text in texts)


def _status(result: Result, mutating: bool, failure: BaseException | None) -> str:
    if failure is not None:
        return "failed"
    if not mutating:
        return "done"
    if result.changed:
        return "done" if result.apply else "planned"
    if not result.noop_reason:
        result.noop_reason = "nothing differs from the wanted state"
    return "noop"


def _show(result: Result) -> None:
    """In a notebook, show the failed result before the exception marks the cell."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(result)
