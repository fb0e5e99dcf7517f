"""Every change is an operation: Context.sql, save_state, remove, do and precondition plan in a dry run
(change line rendered from the operation, nothing done) and act, journaled, when applying."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.action import StepFailed, action, read_journal
from ispcp_lib.core.connection import ChrootConnection
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import SecretRegistry
from tests.unit.test_operations import make_ctx


class Session:
    """A DB-API session that records what it is sent (the SQL client itself is tested against MariaDB)."""

    opened = 0

    def __init__(self, sent: list[tuple[str, Any]]) -> None:
        Session.opened += 1
        self.sent = sent

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def cursor(self) -> Session:
        return self

    def execute(self, sql: str, args: Any = None) -> int:
        self.sent.append((sql, args))
        return 1


def _journal_ops(ctx: Context) -> list[dict[str, Any]]:
    return [r for r in read_journal(ctx) if r.get("type") == "operation"]


def _run(ctx: Context, body: Any) -> Result:
    @action("demo_ops")
    def step(ctx: Context, result: Result) -> None:
        body(ctx, result)

    ctx.force_steps.add("demo_ops")
    return step(ctx)


@pytest.mark.parametrize("apply", [False, True])
def test_sql_connects_only_when_applying_and_journals_statements_without_values(tmp_path: Path, apply: bool) -> None:
    ctx = make_ctx(tmp_path, apply)
    ctx.secrets.add("s3cret-value", "a password")
    sent: list[tuple[str, Any]] = []
    Session.opened = 0

    def body(ctx: Context, result: Result) -> None:
        rows = ctx.sql(
            "set the password of u@localhost",
            [("SET PASSWORD FOR %s@%s = PASSWORD(%s)", ("u", "localhost", "s3cret-value")), ("FLUSH PRIVILEGES", ())],
            connect=lambda: Session(sent),
        )
        result.data["rows"] = rows

    result = _run(ctx, body)
    assert result.changes == ["set the password of u@localhost"]
    assert [op.kind for op in result.operations] == ["sql"]
    if not apply:
        assert Session.opened == 0 and sent == [] and result.data["rows"] is None
        assert _journal_ops(ctx) == []
        return
    assert Session.opened == 1 and result.data["rows"] == 2
    assert sent == [
        ("SET PASSWORD FOR %s@%s = PASSWORD(%s)", ("u", "localhost", "s3cret-value")),
        ("FLUSH PRIVILEGES", None),
    ]
    ops = _journal_ops(ctx)
    assert [(r["phase"], r["op"]["kind"]) for r in ops] == [("intent", "sql"), ("done", "sql")]
    assert ops[0]["op"]["statements"][0].startswith("SET PASSWORD FOR %s@%s")
    assert "s3cret-value" not in ctx.journal_path.read_text()


def test_sql_wants_one_way_to_reach_the_server(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, True)
    with pytest.raises(TypeError):
        ctx.sql("x", [("SELECT 1", ())])


@pytest.mark.parametrize("apply", [False, True])
def test_state_record_and_removal(tmp_path: Path, apply: bool) -> None:
    ctx = make_ctx(tmp_path, apply)
    record = f"{ctx.state_dir}/demo/record.json"

    def body(ctx: Context, result: Result) -> None:
        ctx.save_state(record, json.dumps({"a": 1}), what="record the demo", announce=True)
        ctx.remove("/etc/x.conf", what="remove /etc/x.conf")

    result = _run(ctx, body)
    assert result.changes == ["record the demo", "remove /etc/x.conf"]
    target_file = ctx.target_root / "etc/x.conf"
    if not apply:
        assert not Path(record).exists() and target_file.exists()
        return
    assert json.loads(Path(record).read_text()) == {"a": 1}
    assert stat.S_IMODE(Path(record).stat().st_mode) == 0o600
    assert not target_file.exists()


@pytest.mark.parametrize("apply", [False, True])
def test_precondition_stops_an_apply_and_blocks_a_dry_run(tmp_path: Path, apply: bool) -> None:
    ctx = make_ctx(tmp_path, apply)
    seen: list[str] = []

    def body(ctx: Context, result: Result) -> None:
        ctx.precondition("MySQL server", "is not running", "start it", dry_run="the login is not proven")
        seen.append("went on")

    if apply:
        with pytest.raises(StepFailed) as failed:
            _run(ctx, body)
        assert "MySQL server: is not running. Fix: start it" in str(failed.value.result.errors)
        assert seen == []
        return
    result = _run(ctx, body)
    assert seen == ["went on"]
    assert result.blocked == ["MySQL server"]
    assert result.warnings == [
        "MySQL server: is not running; the login is not proven. Applying stops here, before anything is "
        "written. Fix: start it"
    ]


def test_a_procedure_is_one_planned_operation_and_its_parts_are_journaled(tmp_path: Path) -> None:
    for apply in (False, True):
        ctx = make_ctx(tmp_path / str(apply), apply)

        def body(ctx: Context, result: Result) -> None:
            def parts() -> str:
                ctx.write_file("/etc/x.conf", "A = 2\n", what="part one")
                ctx.runner.run(["touch", ctx.target.path("/etc/y")], mutates=True, what="part two")
                return "value"

            result.data["value"] = ctx.do("the whole procedure", parts)

        result = _run(ctx, body)
        assert [(op.kind, op.what) for op in result.operations] == [("procedure", "the whole procedure")]
        assert result.changes == ["the whole procedure"]
        kinds = [(r["phase"], r["op"]["kind"]) for r in _journal_ops(ctx)]
        if apply:
            assert result.data["value"] == "value"
            assert kinds[0] == ("intent", "procedure") and kinds[-1] == ("done", "procedure")
            assert ("intent", "write") in kinds and ("intent", "command") in kinds
        else:
            assert result.data["value"] is None and kinds == []


def test_a_failed_operation_journals_its_completion_with_the_failure(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, True)

    def body(ctx: Context, result: Result) -> None:
        def fail() -> None:
            raise PreconditionFailed("demo", "fails", "nothing")

        ctx.do("a procedure that fails", fail)

    with pytest.raises(StepFailed):
        _run(ctx, body)
    ops = _journal_ops(ctx)
    assert [(r["phase"], r["op"].get("failed")) for r in ops] == [("intent", None), ("done", "PreconditionFailed")]


def test_a_dry_run_plans_each_safety_copy_once(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, False)

    def body(ctx: Context, result: Result) -> None:
        ctx.keep("/etc/x.conf")
        ctx.keep("/etc/x.conf")

    result = _run(ctx, body)
    assert [op.kind for op in result.operations] == ["keep"]
    assert not (ctx.backup_dir).exists()


def test_a_write_over_a_shell_keeps_a_private_copy_first_and_the_journal_outlives_a_lost_state_dir(
    tmp_path: Path,
) -> None:
    conn = ChrootConnection("/")  # a shell on the target, as over SSH: every command is a round trip
    target = tmp_path / "etc" / "x.conf"
    target.parent.mkdir()
    target.write_text("A = 1\n")
    target.chmod(0o640)
    ctx = Context(
        target_root=Path("/"),
        backup_root=None,
        state_dir=tmp_path / "state",
        run_id="r1",
        target=conn,
        default_apply=True,
        secrets=SecretRegistry(),
        runner=Runner(True),
    )
    seen: dict[str, Any] = {}

    other = target.with_name("y.conf")
    other.write_text("B = 1\n")

    def body(ctx: Context, result: Result) -> None:
        ctx.write_file(other, "B = 2\n", what="set B")  # the run's first record makes the state dir
        before = conn.round_trips
        ctx.write_file(target, "A = 2\n", mode=0o640, what="set A")
        seen["trips"] = conn.round_trips - before
        kept = Path(f"{ctx.backup_dir}/demo_ops{target}")
        seen["kept"] = (kept.read_text(), stat.S_IMODE(kept.parent.stat().st_mode), stat.S_IMODE(kept.stat().st_mode))
        shutil.rmtree(ctx.state_dir)  # gone during the run (a full disk cleaned by hand, say)
        ctx.write_file(target, "A = 3\n", mode=0o640, what="set A again")

    result = _run(ctx, body)
    conn.close()
    assert result.status == "done" and target.read_text() == "A = 3\n"
    assert seen["kept"] == ("A = 1\n", 0o700, 0o640)  # the old file, its mode, in a folder only root reads
    # read, copy there yet?, copy (folder + cp in one), write, and one append per journal record (four)
    assert seen["trips"] <= 8, seen["trips"]
    after_loss = [(r["phase"], r["op"]["kind"], r["op"].get("what")) for r in _journal_ops(ctx)]
    assert after_loss == [("intent", "write", "set A again"), ("done", "write", None)]
    assert stat.S_IMODE(ctx.state_dir.stat().st_mode) == 0o700
