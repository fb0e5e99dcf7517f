"""Stepping through the runbook by hand in JupyterLab: a status panel, an apply gate, progress bars.

Only with a live frontend. `detect(None)` is True inside an IPython ZMQ kernel unless the
environment variable ISPCP_HEADLESS is set (`ispcp-recover run` sets it before papermill starts
the kernel, and also passes `interactive=False`; plain papermill users pass `-p interactive False`).
Headless runs get no widgets at all: the `apply` and `apply_steps` parameters decide, progress is
printed as plain log lines, and the summary table at the end is the static status panel.

In interactive mode every changing step (a mutating @action) first runs as a dry run and shows its
plan with an "Apply this step" button; nothing changes until the operator presses it. Pressing runs
the same step once more with apply for that step only. The gate hooks in through
`ctx.interactive_session`, which `ispcp_lib.core.action` consults for every step.

ipywidgets is imported lazily: headless runs and the steps' progress calls never need it.
"""

from __future__ import annotations

import copy
import html
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ispcp_lib.core.action import STEP_START, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.result import NEUTRAL_COLOUR, STATUS_COLOURS, Result
from ispcp_lib.runbook.record import (
    RUN_RECORD_MIME,
    StepOutcome,
    outcomes,
    result_from_record,
    run_record,
    status_line,
    step_states,
)
from ispcp_lib.runbook.session import read_run_facts
from ispcp_lib.steps import STEP_ORDER

if TYPE_CHECKING:
    import ipywidgets

HEADLESS_ENV = "ISPCP_HEADLESS"

# Result.status -> what the panel shows.
STATE_LABELS = {
    "done": "done",
    "noop": "no-op",
    "planned": "planned",
    "skipped": "skipped",
    "failed": "failed",
    "running": "running",
}
_MISSING = object()


def detect(flag: bool | None = None) -> bool:
    """Whether to use widgets: an explicit flag wins; None means "a live Jupyter frontend"."""
    if flag is not None:
        if flag:
            _require_widgets()
        return bool(flag)
    if os.environ.get(HEADLESS_ENV, "") not in ("", "0"):
        return False
    try:
        from ipykernel.zmqshell import ZMQInteractiveShell
        from IPython import get_ipython
    except ImportError:
        return False
    if not isinstance(get_ipython(), ZMQInteractiveShell):
        return False
    if not _launched_by_jupyter_server():
        # A kernel run by papermill or nbclient has nobody to press a button: a gate there would
        # silently turn an apply run into a dry run.
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


JUPYTER_SERVERS = (
    "jupyter-lab",
    "jupyter-notebook",
    "jupyter-server",
    "jupyter_server",
    "jupyterlab",
    "notebook.app",
    "nbclassic",
    "voila",
)


def _launched_by_jupyter_server(pid: int | None = None) -> bool:
    """Whether this kernel's parent process is a Jupyter server (a frontend can be attached)."""
    ppid = os.getppid() if pid is None else pid
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return any(name in cmdline for name in JUPYTER_SERVERS)


def _require_widgets() -> None:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        raise InputError(
            "interactive",
            "is True but ipywidgets is not installed",
            "pip install 'ispcp-recovery[interactive]', or set interactive = False",
        ) from None


def start_interactive(
    ctx: Context, interactive: bool | None = None, display: Callable[[Any], None] | None = None
) -> InteractiveSession | None:
    """The setup cell's call: in JupyterLab, show the status panel and gate changing steps.

    Both ways it shows the run's record line (run id, state dir, connection: how `ispcp-recover report`
    finds the journal) and makes a failed step's cell end with one line instead of a traceback (its
    result box above says what failed and the fix). Returns None when headless.
    """
    show = display or _ipython_display
    show(RunRecord(ctx))
    quiet_step_failures()
    if not detect(interactive):
        show_status_lines(ctx, show)
        return None
    session = InteractiveSession(ctx, display=display)
    ctx.interactive_session = session
    session.display(session.panel.widget)
    return session


def show_status_lines(ctx: Context, show: Callable[[Any], None]) -> None:
    """Headless: the status line above every step's output too, from the journal (a session shows its own).

    The hook answers for this run's Context only; a setup cell run again replaces it."""

    def hook(step_ctx: Context, name: str) -> None:
        if step_ctx is ctx and ctx.interactive_session is None:
            states = step_states(read_journal(ctx), ctx.run_id, ctx.results)
            show(StatusLine(status_line(states, ctx.steps, name, "planned, not applied")))

    hook.status_lines = True  # type: ignore[attr-defined]
    STEP_START[:] = [h for h in STEP_START if not getattr(h, "status_lines", False)] + [hook]


class RunRecord:
    """The setup cell's record of the run; kept in the saved notebook as an ordinary output.

    It holds the run's facts (versions, hostnames) as read in the kernel through its connections:
    `ispcp-recover report` on another machine then describes the target, not "unknown"."""

    def __init__(self, ctx: Context) -> None:
        self.data = run_record(ctx.params, ctx.run_id, str(ctx.state_dir))
        self.data["facts"] = read_run_facts(ctx.target, ctx.backup)
        self.where = ctx.target.describe()

    def text(self) -> str:
        return f"run {self.data['run_id']} · journal in {self.data['state_dir']} on {self.where}"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {
            RUN_RECORD_MIME: self.data,
            "text/html": f"<div class='ir-run-record'><small>{_e(self.text())}</small></div>",
            "text/plain": self.text(),
        }


def quiet_step_failures() -> None:
    """In a kernel, a StepFailed ends its cell with one line: its result box above already shows the
    error and the fix, a traceback through the tool's own frames would only bury it. The cell still
    fails (papermill stops, the CLI exits non-zero)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from ispcp_lib.core.action import StepFailed

    def one_line(_shell: Any, etype: type, value: BaseException, _tb: Any, tb_offset: Any = None) -> list[str]:
        stb = [f"{etype.__name__}: {value} (the result above says what failed and the fix)"]
        shell._showtraceback(etype, value, stb)  # IPython shows nothing itself for a custom exception
        return stb

    shell.set_custom_exc((StepFailed,), one_line)


def private_after_save(os_path: str, **_: Any) -> None:
    """JupyterLab's post-save hook: a saved runbook holds the same record as the report, so it is
    0600 like the report (jupyter lab --FileContentsManager.post_save_hook=ispcp_lib.runbook.interactive.
    private_after_save; JupyterLab itself saves with the umask, usually 0644)."""
    os.chmod(os_path, 0o600)


def _ipython_display(obj: Any) -> None:
    from IPython.display import display

    display(obj)


class StatusPanel:
    """Where the recovery stands: one row per step with its state, changes and duration."""

    def __init__(self, ctx: Context, session: InteractiveSession | None = None) -> None:
        import ipywidgets as w

        self.ctx = ctx
        self.session = session
        self.running: str | None = None
        self.widget: ipywidgets.HTML = w.HTML()
        self.refresh()

    def rows(self) -> list[dict[str, Any]]:
        """One row per step, from the journal of this run; steps this kernel left out without a
        record (the steps parameter) from ctx.results."""
        found = outcomes(read_journal(self.ctx), self.ctx.run_id)
        # actions outside the guide's steps (helpers, tests) get rows too, once they run
        extra = [n for n in [*found, *self.ctx.results, self.running] if n and n not in STEP_ORDER]
        rows = []
        for name in [*STEP_ORDER, *dict.fromkeys(extra)]:
            got, r = found.get(name), self.ctx.results.get(name)
            row = {"step": name, "state": "not run", "status": "", "changes": 0, "duration_s": None, "note": ""}
            if got is not None:
                rec = got.record
                row.update(
                    state=STATE_LABELS.get(rec["status"], rec["status"]),
                    status=rec["status"],
                    changes=rec.get("changed", 0),
                    duration_s=round(float(rec.get("duration_s") or 0), 2),
                    note=_note(got, self.session, name),
                )
            elif r is not None:
                row.update(
                    state=STATE_LABELS.get(r.status, r.status),
                    status=r.status,
                    duration_s=round(r.duration_s, 2),
                    note=r.noop_reason or "",
                )
            if name == self.running:
                row["state"] = row["status"] = "running"
            rows.append(row)
        return rows

    def status_line(self, current: str) -> str:
        """Where the recovery stands and what comes next, in one line (shown above each step's output)."""
        states = {r["step"]: r["status"] for r in self.rows() if r["step"] in STEP_ORDER and r["status"]}
        return status_line(states, self.ctx.steps, current, "waiting for Apply")

    def state(self, name: str) -> str:
        return next(r["state"] for r in self.rows() if r["step"] == name)

    def refresh(self) -> None:
        self.widget.value = self.render()

    def render(self) -> str:
        mode = "APPLY" if self.ctx.default_apply else "dry run"
        head = (
            f"<div style='font-weight:bold;margin-bottom:4px'>Recovery status · run {_e(self.ctx.run_id)}"
            f" · apply parameter: {mode} · changing steps wait for their <i>Apply this step</i> button</div>"
        )
        body = []
        for row in self.rows():
            colour = STATUS_COLOURS.get(row["state"], NEUTRAL_COLOUR)
            duration = "" if row["duration_s"] is None else f"{row['duration_s']:.2f} s"
            changes = row["changes"] if row["state"] != "not run" else ""
            body.append(
                f"<tr><td><code>{_e(row['step'])}</code></td>"
                f"<td style='color:{colour};font-weight:bold'>{_e(row['state'])}</td>"
                f"<td style='text-align:right'>{changes}</td><td style='text-align:right'>{duration}</td>"
                f"<td>{_e(row['note'])}</td></tr>"
            )
        return (
            f"<div class='ir-status-panel'>{head}<table><thead><tr><th>step</th><th>state</th>"
            f"<th>changes</th><th>duration</th><th>note</th></tr></thead><tbody>{''.join(body)}</tbody>"
            "</table></div>"
        )


def _note(got: StepOutcome, session: InteractiveSession | None, name: str) -> str:
    rec = got.record
    if rec["status"] == "planned":
        gate = session.gates.get(name) if session is not None else None
        if gate is not None and gate.applied is None:
            return "blocked: its own checks fail" if gate.dry.blocked else "waiting for its Apply this step button"
        return "dry run"
    if got.note:
        return _short(got.note)
    if rec.get("warnings"):
        return f"{len(rec['warnings'])} warning(s)"
    return ""


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


class InteractiveSession:
    """Attached to a Context as ctx.interactive_session; ispcp_lib.core.action hands every step to run_step."""

    def __init__(self, ctx: Context, display: Callable[[Any], None] | None = None) -> None:
        _require_widgets()
        self.ctx = ctx
        self.display = display or _ipython_display
        self.gates: dict[str, StepGate] = {}
        self.panel = StatusPanel(ctx, self)
        self.output: ipywidgets.Output | None = None  # where an applying step's output goes
        self._depth = 0

    def progress_widget(
        self, ctx: Context, total: int | None, label: str, line: Callable[..., str], planned: bool
    ) -> Callable[[int, str], None]:
        """core.progress.progress_bar in JupyterLab: a bar (IntProgress + label) in the running cell or
        under the Apply button."""
        import ipywidgets as w

        bar = w.IntProgress(value=0, min=0, max=max(total or 0, 1), layout=w.Layout(width="40%"))
        text = w.Label(value=f"{label}: starting")
        box = w.HBox([bar, text])
        if self.output is not None:
            self.output.append_display_data(box)
        else:
            self.display(box)
        state = {"finished": False}

        def tick(done: int, detail: str = "") -> None:
            bar.value = min(done, bar.max)
            text.value = line(done, detail=detail)
            if total and done >= total and not state["finished"]:
                state["finished"] = True
                bar.bar_style = "info" if planned else "success"
                ctx.log(line(done, detail=detail))

        tick.bar = bar  # type: ignore[attr-defined]  # for tests and callers that want to restyle it
        tick.label = text  # type: ignore[attr-defined]
        return tick

    def run_step(
        self, run: Callable[..., Result], ctx: Context, name: str, mutating: bool, kw: dict[str, Any]
    ) -> Result | StepGate:
        """Read-only steps run as they are; a changing step runs dry and returns its gate."""
        if self._depth:  # an action called from inside another step belongs to that step's run
            return run(ctx, **kw)
        self.display(StatusLine(self.panel.status_line(name)))
        self._depth += 1
        self.panel.running = name
        self.panel.refresh()
        try:
            if not mutating:
                return run(ctx, **kw)
            with _apply_override(ctx, name, False):
                dry = run(ctx, **kw)
        finally:
            self._depth -= 1
            self.panel.running = None
            self.panel.refresh()
        if dry.status == "skipped":
            earlier = self.applied_earlier(name)
            if earlier is not None:
                return earlier
        if dry.status != "planned":  # nothing to apply: no-op, skipped by resume or by steps
            return dry
        gate = StepGate(self, run, name, kw, dry)
        self.gates[name] = gate
        self.panel.refresh()
        return gate

    def applied_earlier(self, name: str) -> Result | None:
        """A cell run again after its Apply: the journal shows the step applied in this run, so the
        cell shows that applied result (this kernel's, else the journal's), not "skipped, 0"."""
        got = outcomes(read_journal(self.ctx), self.ctx.run_id).get(name)
        if got is None or not got.earlier:
            return None
        gate = self.gates.get(name)
        applied = gate.applied if gate is not None and gate.applied is not None else None
        shown = copy.copy(applied) if applied is not None else result_from_record(got.record)
        shown.notes = [
            f"Applied earlier in this run, at {got.record.get('ts', '?')}: this cell ran again and the journal "
            "shows the step applied, so nothing ran now. Below is the applied result."
        ] + list(shown.notes)
        self.ctx.results[name] = applied if applied is not None else shown
        self.panel.refresh()
        return shown

    def apply_step(
        self, run: Callable[..., Result], name: str, kw: dict[str, Any], output: ipywidgets.Output
    ) -> Result:
        """The button's action: the same step once more, with apply for this step only."""
        from ispcp_lib.core.action import StepFailed

        ctx = self.ctx
        saved_default, saved_progress, saved_output = ctx.default_apply, ctx.progress, self.output
        ctx.default_apply = True
        ctx.progress = lambda line: output.append_stdout(line + "\n")
        self.output = output
        self._depth += 1
        self.panel.running = name
        self.panel.refresh()
        try:
            with _apply_override(ctx, name, True):
                result = run(ctx, **kw)
        except StepFailed as exc:
            result = exc.result
        finally:
            ctx.default_apply, ctx.progress, self.output = saved_default, saved_progress, saved_output
            self._depth -= 1
            self.panel.running = None
        self.panel.refresh()
        return result


class _apply_override:
    """Temporarily set apply_steps[name] (the per-step override Context.apply_for reads)."""

    def __init__(self, ctx: Context, name: str, value: bool) -> None:
        self.ctx, self.name, self.value = ctx, name, value
        self.saved: Any = _MISSING

    def __enter__(self) -> None:
        self.saved = self.ctx.apply_steps.get(self.name, _MISSING)
        self.ctx.apply_steps[self.name] = self.value

    def __exit__(self, *exc: object) -> None:
        if self.saved is _MISSING:
            self.ctx.apply_steps.pop(self.name, None)
        else:
            self.ctx.apply_steps[self.name] = self.saved


class StatusLine:
    """The compact line above a step's output: where the recovery stands and what comes next."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return f"<div class='ir-status-line' style='color:{NEUTRAL_COLOUR};font-size:90%'>▸ {_e(self.text)}</div>"

    def __repr__(self) -> str:
        return f"▸ {self.text}"


class StepGate:
    """A changing step's dry-run plan plus the button that applies it. Behaves like its latest Result."""

    def __init__(
        self, session: InteractiveSession, run: Callable[..., Result], name: str, kw: dict[str, Any], dry: Result
    ) -> None:
        import ipywidgets as w

        self.session, self.run, self.name, self.kw = session, run, name, kw
        self.dry = dry
        self.applied: Result | None = None
        excluded = session.ctx.apply_steps.get(name) is False
        self.button = w.Button(
            description="Apply this step",
            button_style="warning",
            icon="play",
            disabled=excluded or bool(dry.blocked),
            layout=w.Layout(width="auto", display="none" if dry.blocked else ""),
            tooltip=f"run {name} again with apply=True; the plan above is what it changes",
        )
        if dry.blocked:
            text = (
                f"No Apply button: the step's own checks fail ({'; '.join(dry.blocked)}), so applying would stop "
                "before any change. Fix what the result above says, then run this cell again."
            )
        elif excluded:
            text = f"apply_steps excludes {name}: this step stays a dry run."
        else:
            text = (
                f"Dry run: {dry.changed} planned change(s) above. Nothing has changed yet; "
                "press the button to apply this step only."
            )
        self.note = w.HTML(value=f"<span>{_e(text)}</span>")
        self.output = w.Output()
        self.button.on_click(lambda _button: self.press())
        self.widget = w.VBox([w.HBox([self.button, self.note]), self.output])

    @property
    def result(self) -> Result:
        """The applied Result once the button was pressed, else the dry run's."""
        return self.applied if self.applied is not None else self.dry

    def press(self) -> Result:
        """What the button does (tests call it directly): apply this step once, show the new result."""
        if self.button.disabled:
            return self.result
        self.button.disabled = True
        self.button.description = "Applying…"
        result = self.session.apply_step(self.run, self.name, self.kw, self.output)
        self.applied = result
        self.output.append_display_data(result)
        if result.status == "failed":
            self.button.disabled = False
            self.button.description = "Retry: apply this step"
            self.note.value = "<span style='color:#cf222e'>Applying failed; see the result below.</span>"
        else:
            self.button.description = "Applied"
            self.button.button_style = "success"
            self.note.value = f"<span>{_e(f'{result.status}: {result.changed} change(s) applied.')}</span>"
        self.session.panel.refresh()
        return result

    def __getattr__(self, attr: str) -> Any:  # r.data, r.status, ... as on a Result
        if attr.startswith("_") or attr in ("dry", "applied", "session"):
            raise AttributeError(attr)
        return getattr(self.result, attr)

    def _ipython_display_(self) -> None:
        self.session.display(self.dry)
        self.session.display(self.widget)

    def __repr__(self) -> str:
        return repr(self.result)
