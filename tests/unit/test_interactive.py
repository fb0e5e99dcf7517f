"""Interactive stepping: the apply gate, the status panel and progress, driven through the widget objects."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import nbformat
import pytest

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.fileops import fingerprint
from ispcp_lib.core.progress import progress_bar
from ispcp_lib.core.result import Result
from ispcp_lib.runbook import interactive
from ispcp_lib.runbook.interactive import HEADLESS_ENV, StepGate, start_interactive
from ispcp_lib.runbook.record import RUN_RECORD_MIME
from ispcp_lib.runbook.session import summary_dict
from ispcp_lib.steps import STEP_ORDER

# -- test-only actions: they act on the target tree like any changing step ------------------------


@action("test_write")
def write_conf(ctx: Context, result: Result, text: str = "wanted\n") -> None:
    changed = ctx.write_file("/etc/test.conf", text, mode=0o644)
    result.summary = "test.conf written" if changed else "test.conf as wanted"
    if not changed:
        result.noop_reason = "test.conf already holds the wanted text"


@action("test_progress")
def long_copy(ctx: Context, result: Result) -> None:
    tick = progress_bar(ctx, 3, "copying")
    for n in range(1, 4):
        if ctx.apply:
            (Path(ctx.target.path("/srv")) / f"f{n}").parent.mkdir(parents=True, exist_ok=True)
            (Path(ctx.target.path("/srv")) / f"f{n}").write_text("x")
        result.change(f"copy f{n}")
        tick(n, f"f{n}")


@action("test_fail_on_apply")
def fail_on_apply(ctx: Context, result: Result) -> None:
    result.change("would do something")
    if ctx.apply:
        raise InputError("test item", "is broken", "repair the test item", path="/nowhere")


RUNNING_SEEN: list[str] = []


@action("test_observe", mutating=False)
def observe(ctx: Context, result: Result) -> None:
    RUNNING_SEEN.append(ctx.interactive_session.panel.state("test_observe"))
    result.summary = "looked"


def _ctx(tmp_path: Path, **kw) -> Context:
    target = tmp_path / "target"
    (target / "etc").mkdir(parents=True)
    (target / "etc/test.conf").write_text("old\n")
    return Context(target_root=target, backup_root=None, state_dir=tmp_path / "state", run_id="t1", **kw)


def _session(ctx: Context) -> tuple[interactive.InteractiveSession, list]:
    shown: list = []
    session = start_interactive(ctx, True, display=shown.append)
    assert session is not None
    return session, shown


def _journal(ctx: Context) -> list[dict]:
    """The step records (operation records of the write-ahead log left out)."""
    records = [json.loads(line) for line in ctx.journal_path.read_text().splitlines()]
    return [r for r in records if "name" in r]


# -- the apply gate ------------------------------------------------------------------------------


def test_button_gates_the_change(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (tmp_path / "target/etc/hostname").write_text("srv-new\n")
    session, shown = _session(ctx)
    # the setup cell shows the run's record (where its journal is) and the panel, nothing else
    assert [type(o).__name__ for o in shown] == ["RunRecord", "HTML"] and shown[1] is session.panel.widget
    record = shown[0]._repr_mimebundle_()[RUN_RECORD_MIME]
    assert record["state_dir"] == str(ctx.state_dir)
    assert record["facts"]["new_hostname"] == "srv-new"  # read in the kernel, through the target connection
    before = fingerprint(ctx.target_root, exclude=[ctx.state_dir])

    gate = write_conf(ctx)

    assert isinstance(gate, StepGate)
    assert fingerprint(ctx.target_root, exclude=[ctx.state_dir]) == before, "the dry run changed the target"
    assert Path(ctx.target.path("/etc/test.conf")).read_text() == "old\n"
    assert gate.status == "planned" and gate.changed == 1 and gate.apply is False
    assert gate.dry.diffs and "+wanted" in gate.dry.diffs[0].text  # the plan shows the diff
    assert not gate.button.disabled and gate.button.description == "Apply this step"
    assert summary_dict(ctx)["apply"] is False
    assert session.panel.state("test_write") == "planned"
    row = next(r for r in session.panel.rows() if r["step"] == "test_write")
    assert row["changes"] == 1 and "Apply" in row["note"]

    gate.button.click()

    assert Path(ctx.target.path("/etc/test.conf")).read_text() == "wanted\n"
    assert gate.applied is not None and gate.status == "done" and gate.apply is True
    assert gate.button.disabled and gate.button.description == "Applied"
    assert session.panel.state("test_write") == "done"
    assert ctx.results["test_write"] is gate.applied
    shown_html = [o["data"]["text/html"] for o in gate.output.outputs if o["output_type"] == "display_data"]
    assert any("DONE" in h and "test_write" in h for h in shown_html)  # the new result under the button
    assert summary_dict(ctx)["apply"] is True  # the record says something was applied
    # apply for that step only, for that press only: the context is as the parameters left it
    assert ctx.default_apply is False and ctx.apply_steps == {}
    records = [(r["name"], r["status"], r["apply"]) for r in _journal(ctx)]
    assert records == [("test_write", "planned", False), ("test_write", "done", True)]
    assert len(list(ctx.backup_dir.rglob("test.conf"))) == 1  # the replaced file was kept

    gate.button.click()  # a second press does nothing: the button is spent
    assert len(_journal(ctx)) == 2


def test_gate_renders_plan_then_button(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    session, shown = _session(ctx)
    gate = write_conf(ctx)
    gate._ipython_display_()
    assert type(shown[2]).__name__ == "StatusLine" and "now: test_write" in repr(shown[2])  # where it stands
    assert shown[-2] is gate.dry and shown[-1] is gate.widget  # the plan first, then the button row
    assert "planned changes (dry run)" in gate.dry._repr_html_()
    assert "Nothing has changed yet" in gate.note.value
    assert repr(gate).startswith("[planned] test_write")


def test_noop_and_resume_skip_need_no_button(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    Path(ctx.target.path("/etc/test.conf")).write_text("wanted\n")
    session, _ = _session(ctx)
    result = write_conf(ctx)
    assert isinstance(result, Result) and result.status == "noop"
    assert session.panel.state("test_write") == "no-op"
    assert "already holds" in next(r for r in session.panel.rows() if r["step"] == "test_write")["note"]


def test_apply_steps_exclusion_disables_the_button(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, apply_steps={"test_write": False})
    session, _ = _session(ctx)
    gate = write_conf(ctx)
    assert gate.button.disabled and "excludes" in gate.note.value
    gate.button.click()
    gate.press()
    assert Path(ctx.target.path("/etc/test.conf")).read_text() == "old\n"
    assert session.panel.state("test_write") == "planned"
    assert ctx.apply_steps == {"test_write": False}


def test_failed_apply_is_shown_and_can_be_retried(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    session, _ = _session(ctx)
    gate = fail_on_apply(ctx)
    assert gate.status == "planned"
    gate.button.click()
    assert gate.status == "failed" and "repair the test item" in gate.errors[0]
    assert session.panel.state("test_fail_on_apply") == "failed"
    assert "is broken" in next(r for r in session.panel.rows() if r["step"] == "test_fail_on_apply")["note"]
    assert not gate.button.disabled and gate.button.description.startswith("Retry")
    assert ctx.default_apply is False and ctx.apply_steps == {}


def test_panel_states_over_a_run(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, steps=["test_observe"])
    session, _ = _session(ctx)
    rows = {r["step"]: r for r in session.panel.rows()}
    assert list(rows)[: len(STEP_ORDER)] == list(STEP_ORDER)
    for name in STEP_ORDER:
        assert rows[name]["state"] == "not run"

    RUNNING_SEEN.clear()
    observe_result = observe(ctx)  # read-only: runs as it is, returns its Result
    assert isinstance(observe_result, Result) and RUNNING_SEEN == ["running"]
    skipped = write_conf(ctx)  # not in the steps parameter
    states = {r["step"]: r["state"] for r in session.panel.rows()}
    assert states["test_observe"] == "done" and states["test_write"] == "skipped"
    assert skipped.status == "skipped" and Path(ctx.target.path("/etc/test.conf")).read_text() == "old\n"
    html = session.panel.widget.value
    assert "test_observe" in html and "skipped" in html and "dry run" in html
    assert next(r for r in session.panel.rows() if r["step"] == "test_observe")["duration_s"] is not None


def test_nested_action_is_part_of_the_outer_step(tmp_path: Path) -> None:
    @action("test_outer")
    def outer(ctx: Context, result: Result) -> None:
        inner = write_conf(ctx)
        assert isinstance(inner, Result)  # not gated on its own
        result.changes += inner.changes

    ctx = _ctx(tmp_path)
    _session(ctx)
    gate = outer(ctx)
    assert isinstance(gate, StepGate) and Path(ctx.target.path("/etc/test.conf")).read_text() == "old\n"
    gate.press()
    assert Path(ctx.target.path("/etc/test.conf")).read_text() == "wanted\n"


# -- progress --------------------------------------------------------------------------------------


def test_progress_bar_in_a_gated_apply(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    session, shown = _session(ctx)
    gate = long_copy(ctx)
    dry_bar = [o for o in shown if type(o).__name__ == "HBox"]
    assert len(dry_bar) == 1 and dry_bar[0].children[0].value == 3  # the dry run's bar, in its cell
    assert not Path(ctx.target.path("/srv")).exists()
    gate.press()
    assert sorted(p.name for p in Path(ctx.target.path("/srv")).iterdir()) == ["f1", "f2", "f3"]
    outputs = gate.output.outputs
    bars = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert bars, "the applying run's progress bar goes under its button"
    logged = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert "copying: 3 of 3 (100%) f3" in logged  # the final line, also kept as text


def test_progress_headless_prints_periodic_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = _ctx(tmp_path)
    now = [0.0]
    tick = progress_bar(ctx, 100, "copying mail", every_s=10, clock=lambda: now[0])
    for n in range(1, 101):
        now[0] = n * 0.5  # 50 s of work, a tick every half second
        tick(n, f"file {n}")
    tick(100, "file 100")  # a repeated final call prints nothing more
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "copying mail" in ln]
    assert len(lines) == 6, lines  # the first, one per 10 s, and the final one
    assert lines[0].endswith("copying mail: 1 of 100 (1%) file 1")
    assert lines[-1].endswith("copying mail: 100 of 100 (100%) file 100")


def test_headless_run_has_no_gate(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert start_interactive(ctx, False) is None
    assert getattr(ctx, "interactive_session", None) is None
    result = write_conf(ctx)
    assert isinstance(result, Result) and result.status == "planned"  # apply=False decides
    ctx.default_apply = True
    assert write_conf(ctx).status == "done" and Path(ctx.target.path("/etc/test.conf")).read_text() == "wanted\n"


@action("mail_guard")
def guard_stand_in(ctx: Context, result: Result) -> None:
    """Named like the guide's third step, for the status line's "next"."""
    result.change("set soft_bounce = yes")


def test_headless_steps_show_where_the_recovery_stands(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    shown: list = []
    assert start_interactive(ctx, False, display=shown.append) is None
    ctx.state_dir.mkdir()
    earlier = [{"ts": "2024-01-01T10:00:00", "run_id": "t1", "name": n, "status": "done"} for n in STEP_ORDER[:2]]
    other_run = {"ts": "2024-01-01T09:00:00", "run_id": "t0", "name": "keys", "status": "done"}
    ctx.journal_path.write_text("".join(json.dumps(r) + "\n" for r in [other_run, *earlier]))

    guard_stand_in(ctx)
    line = repr(shown[-1])
    assert type(shown[-1]).__name__ == "StatusLine"
    assert f"2 of {len(STEP_ORDER)} steps through" in line and "2 done" in line
    assert "now: mail_guard" in line and f"next: {STEP_ORDER[3]}" in line and "planned" not in line

    write_conf(ctx)  # the journal now holds mail_guard's dry run
    line = repr(shown[-1])
    assert "planned, not applied: mail_guard" in line and "next: the summary" in line
    assert sum(type(o).__name__ == "StatusLine" for o in shown) == 2  # one per step, none for the setup


# -- detection in a real kernel ----------------------------------------------------------------------


_KERNEL_RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell("from ispcp_lib.runbook.interactive import detect\\nprint(detect(None))")]
NotebookClient(nb, kernel_name="python3", timeout=60, startup_timeout=60).execute()
print(nb.cells[0].outputs[0]["text"].strip())
"""


def _detect_in_kernel(env_value: str | None, parent_is_jupyter_server: bool) -> bool:
    """Run detect(None) in a real IPython ZMQ kernel, started by a parent that does or does not look like a
    Jupyter server (its command line names jupyter-lab), with or without ISPCP_HEADLESS."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != HEADLESS_ENV}
    if env_value is not None:
        env[HEADLESS_ENV] = env_value
    argv = [sys.executable, "-c", _KERNEL_RUNNER] + (["jupyter-lab"] if parent_is_jupyter_server else [])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_detection_needs_a_jupyter_server_kernel_and_no_headless_flag() -> None:
    assert interactive.detect(None) is False  # plain Python (pytest): no kernel, no frontend
    assert interactive.detect(False) is False
    assert _detect_in_kernel(None, parent_is_jupyter_server=True) is True
    assert _detect_in_kernel("1", parent_is_jupyter_server=True) is False
    # papermill/nbclient kernels: nobody can press a button, so no gate
    assert _detect_in_kernel(None, parent_is_jupyter_server=False) is False


# -- on the sandbox world, with the real read-only steps -----------------------------------------------


def test_session_on_the_world_with_real_steps(world, tmp_path: Path) -> None:
    from ispcp_lib.runbook.session import open_run
    from ispcp_lib.sandbox.world import stable_fingerprint
    from ispcp_lib.steps import inventory, preflight

    ctx = open_run(**world.runbook_params(), resume=False)
    session, _ = _session(ctx)
    before = stable_fingerprint(world)
    assert isinstance(inventory.run(ctx), Result) and isinstance(preflight.run(ctx), Result)
    gate = write_conf(ctx)  # a changing step on the world's target
    assert stable_fingerprint(world) == before
    states = {r["step"]: r["state"] for r in session.panel.rows()}
    assert states["inventory"] == "done" and states["preflight"] == "done" and states["test_write"] == "planned"
    assert states["mysql_restore"] == "not run"
    gate.press()
    assert Path(ctx.target.path("/etc/test.conf")).read_text() == "wanted\n"
    assert stable_fingerprint(world) != before
    assert session.panel.state("test_write") == "done"


# -- a notebook stepped through by hand, saved with its widget state, becomes a static report --------------


def test_saved_widget_state_becomes_static_report_output(tmp_path: Path) -> None:
    import ipywidgets
    from IPython.core.interactiveshell import InteractiveShell

    from ispcp_lib.runbook.report import html_report

    ctx = _ctx(tmp_path)
    session, _ = _session(ctx)
    gate = long_copy(ctx)
    gate.press()  # applied: result and progress bar inside the gate's Output widget

    fmt = InteractiveShell.instance().display_formatter.format

    def shown(obj) -> dict:
        data, metadata = fmt(obj)
        return nbformat.v4.new_output("display_data", data=data, metadata=metadata)

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("backup_root = None\napply = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "session = start_interactive(ctx, interactive)", outputs=[shown(session.panel.widget)]
        ),
        nbformat.v4.new_code_cell("long_copy(ctx)", outputs=[shown(gate.dry), shown(gate.widget)]),
    ]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": ipywidgets.Widget.get_manager_state()}
    executed = tmp_path / "by-hand.ipynb"
    nbformat.write(nb, executed)

    html = html_report(executed, tmp_path / "by-hand.html").read_text()
    # the live panel's hints are stale in an archive: the summary at the top is the final status
    assert "Recovery status" not in html and "wait for their" not in html
    assert "final status of every step is the" in html
    assert "planned changes (dry run)" in html  # the plan shown before the press
    assert "DONE" in html and "done: 3 change(s) applied." in html  # the result under the button
    assert "copying: 3 of 3 (100%) f3" in html  # the progress label and the logged line
    assert "HBox(" not in html and "Loading widgets" not in html and "widget-view" not in html
    assert "<button" not in html and "the plan above is what it changes" not in html  # no controls


# -- the journal is the record ---------------------------------------------------------------------


def test_cell_run_again_after_apply_shows_the_applied_result(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    session, _ = _session(ctx)
    long_copy(ctx).press()
    again = long_copy(ctx)  # Shift+Enter in the same cell: the journal shows the step applied in this run

    assert isinstance(again, Result) and again.status == "done" and again.changed == 3
    assert again.notes[0].startswith("Applied earlier in this run")
    assert "Applied earlier in this run" in again._repr_html_() and "copy f3" in again._repr_html_()
    row = next(r for r in session.panel.rows() if r["step"] == "test_progress")
    assert row["state"] == "done" and row["changes"] == 3 and row["note"].startswith("applied earlier")
    assert ctx.results["test_progress"].status == "done"
    assert [(r["status"], r["apply"]) for r in _journal(ctx)] == [
        ("planned", False),
        ("done", True),
        ("skipped", False),
    ]


def test_cell_run_again_in_a_new_session_takes_the_result_from_the_journal(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _session(ctx)
    write_conf(ctx).press()
    fresh = _ctx_again(ctx)  # the same run id, a new kernel: no gate in memory
    _session(fresh)
    again = write_conf(fresh)
    assert again.status == "done" and again.changed == 1
    assert "Applied earlier in this run" in again.notes[0]


def _ctx_again(ctx: Context) -> Context:
    return Context(target_root=ctx.target_root, backup_root=None, state_dir=ctx.state_dir, run_id=ctx.run_id)


@action("test_blocked")
def blocked_step(ctx: Context, result: Result) -> None:
    result.change("run the thing")
    result.blocked.append("pre-check 'thing'")
    result.warn("pre-check 'thing' fails now: it is missing")


def test_no_apply_button_when_the_steps_own_checks_fail(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    session, _ = _session(ctx)
    gate = blocked_step(ctx)
    assert gate.button.disabled and gate.button.layout.display == "none"
    assert "No Apply button" in gate.note.value and "pre-check 'thing'" in html.unescape(gate.note.value)
    assert gate.press().status == "planned"  # pressing it anyway does nothing
    assert "applying would stop at: pre-check" in gate.dry._repr_html_()
    assert "blocked" in next(r for r in session.panel.rows() if r["step"] == "test_blocked")["note"]


def test_a_failed_step_ends_its_cell_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shown: list[list[str]] = []  # what the kernel sends as the cell's error (ipykernel overrides the same method)
    monkeypatch.setattr(shell, "_showtraceback", lambda etype, value, stb: shown.append(stb))
    interactive.quiet_step_failures()
    try:
        outcome = shell.run_cell(
            "from ispcp_lib.core.action import StepFailed\nfrom ispcp_lib.core.result import Result\n"
            "raise StepFailed(Result(step='keys', errors=['keys: the key files are missing']))"
        )
    finally:
        shell.set_custom_exc((), None)
    assert not outcome.success  # the cell still fails: papermill stops, the CLI exits non-zero
    assert shown == [
        [
            "StepFailed: step keys failed: keys: the key files are missing (the result above says what "
            "failed and the fix)"
        ]
    ]


def test_planned_progress_says_so_in_bytes(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _session(ctx)
    tick = progress_bar(ctx, 3 * 1024 * 1024, "user data", unit="bytes", planned=True)
    tick(3 * 1024 * 1024, "· 3405 of 3405 files")
    assert tick.label.value == "user data (dry run: planned, not done): 3.0 MiB of 3.0 MiB (100%) · 3405 of 3405 files"
    assert tick.bar.bar_style == "info"  # not the green of work done
