"""The executor journals every applied change write-ahead; a dry run journals none; kills are visible."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ispcp_lib.core.action import action, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.operations import unfinished
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import SecretRegistry

REPO = Path(__file__).resolve().parents[2]


def make_ctx(base: Path, apply: bool) -> Context:
    target = base / "target"
    (target / "etc").mkdir(parents=True, exist_ok=True)
    if not (target / "etc" / "x.conf").exists():
        (target / "etc" / "x.conf").write_text("A = 1\n")
    return Context(
        target_root=target,
        backup_root=None,
        state_dir=base / "state",
        run_id="r1",
        default_apply=apply,
        secrets=SecretRegistry(),
        runner=Runner(apply),
    )


@action("demo_change")
def change(ctx: Context, result) -> None:
    ctx.write_file("/etc/x.conf", "A = 9\n")
    ctx.runner.run(["touch", ctx.target.path("/etc/y")], mutates=True)


def _ops(ctx: Context) -> list[tuple[str, str]]:
    return [(r["phase"], r["op"]["kind"]) for r in read_journal(ctx) if r.get("type") == "operation"]


def test_dry_run_journals_no_operation(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, apply=False)
    change(ctx)
    assert _ops(ctx) == []
    assert (ctx.target_root / "etc" / "x.conf").read_text() == "A = 1\n"


def test_every_change_has_intent_before_and_completion_after(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, apply=True)
    change(ctx)
    assert _ops(ctx) == [
        ("intent", "keep"),
        ("done", "keep"),
        ("intent", "write"),
        ("done", "write"),
        ("intent", "command"),
        ("done", "command"),
    ]
    assert unfinished(read_journal(ctx), "demo_change") == []
    assert "A = 9" not in ctx.state.read_text(str(ctx.journal_path))  # file contents stay out


def _killed_run(tmp_path: Path, fault: str) -> int:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from tests.unit.test_operations import change, make_ctx
        change(make_ctx(Path({str(tmp_path)!r}), apply=True))
    """)
    env = {**os.environ, "ISPCP_FAULT": fault}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, cwd=REPO).returncode


def test_a_kill_after_an_intent_leaves_it_unfinished(tmp_path: Path) -> None:
    # Killed right after the write's intent was journaled, before the write happened.
    assert _killed_run(tmp_path, "before:demo_change:2") == 137
    ctx = make_ctx(tmp_path, apply=True)
    pending = unfinished(read_journal(ctx), "demo_change")
    assert [(r["op"]["kind"], r["op"]["path"]) for r in pending] == [("write", "/etc/x.conf")]
    assert (ctx.target_root / "etc" / "x.conf").read_text() == "A = 1\n"


def test_a_kill_after_a_completed_write_shows_it_done(tmp_path: Path) -> None:
    assert _killed_run(tmp_path, "after:demo_change:2") == 137
    ctx = make_ctx(tmp_path, apply=True)
    assert _ops(ctx)[-1] == ("done", "write")
    assert (ctx.target_root / "etc" / "x.conf").read_text() == "A = 9\n"
    assert not (ctx.target_root / "etc" / "y").exists()


def test_each_step_records_its_round_trips_to_the_target(tmp_path: Path) -> None:
    """The journal says how many commands a step sent to the target (benchmarks/remote.py prints them)."""
    ctx = make_ctx(tmp_path, apply=True)
    before = ctx.target.round_trips + ctx.state.round_trips  # the state dir's journal is on the target too
    result = change(ctx)
    sent = ctx.target.round_trips + ctx.state.round_trips - before
    assert sent >= 1  # the touch (the local connection writes files itself)
    assert result.round_trips == sent
    assert read_journal(ctx)[-1]["round_trips"] == sent
    ctx.resume = True
    assert change(ctx).round_trips == 0  # skipped: the journal shows it applied, nothing is sent
