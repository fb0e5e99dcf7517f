"""cleanup after a successful update: back to DEBUG = 0, the sleep lines restored, a summary of the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import engine_sleep, update_env
from ispcp_lib.sandbox import dns as sdns
from ispcp_lib.sandbox import postfix as spf
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import cleanup, engine_speedup, ispcp_install_check, ispcp_update, mail_guard
from ispcp_lib.system import postfix_guard as guard
from tests.integration.recovered_world import (  # noqa: F401 (fixtures)
    FAST,
    open_ctx,
    recovered_fixture,
    recovered_template_fixture,
    sync_proftpd,
)

ENGINE = "var/www/ispcp/engine"


def debug_values(world) -> tuple[str | None, str | None]:
    etc = world.target_root / "etc/ispcp"
    return IspcpConf.load(etc / "ispcp.conf").get("DEBUG"), IspcpConf.load(etc / "ispcp.old.conf").get("DEBUG")


def test_cleanup_restores_the_previous_state(recovered, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISPCP_SANDBOX_SLEEP_SCALE", str(FAST))
    world = recovered
    sync_proftpd(world)
    managers = {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_sleep.MANAGERS}
    ctx = open_ctx(world, apply=True, cleanup_restore_sleep=True)
    speed = engine_speedup.run(ctx)
    update = ispcp_update.run(ctx)
    assert update.status == "done", update.errors
    assert debug_values(world) == ("1", "1")
    root_cnf = world.state_dir / "mysql-root.cnf"  # as mysql_maintainer's root reset leaves it
    root_cnf.write_text("[client]\nuser=root\npassword=x\n")
    root_cnf.chmod(0o600)

    before = stable_fingerprint(world)
    ctx.default_apply = False
    dry = cleanup.run(ctx)
    assert dry.status == "planned"
    assert stable_fingerprint(world) == before
    assert any("DEBUG = 0" in c for c in dry.changes) and any("restore sleep(1)" in c for c in dry.changes)
    dry_summary = {r["step"]: r for r in dry.tables[-1].frame.to_dict("records")}
    assert dry_summary["cleanup"]["status"] == "planned"

    ctx.default_apply = True
    done = cleanup.run(ctx)
    assert done.status == "done", done.errors
    assert debug_values(world) == ("0", "0")
    assert {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_sleep.MANAGERS} == managers
    # The admin still needs the new root password: the file stays, and the report says where and what it is.
    assert root_cnf.read_text() == "[client]\nuser=root\npassword=x\n"
    assert any(str(root_cnf) in w and "mode 0600" in w and "delete the file" in w for w in done.warnings)
    tasks = {r["task"]: r["outcome"] for r in done.tables[0].frame.to_dict("records")}
    assert tasks["credential files left for the admin (state dir)"] == "mysql-root.cnf (see the warnings)"
    health = {r["check"]: r["result"] for r in done.tables[1].frame.to_dict("records")}
    assert health["ispCP logs into its database"] == "ok" and health["vftp logs in (ProFTPd)"] == "ok"
    summary = {r["step"]: r for r in done.tables[-1].frame.to_dict("records")}
    assert list(summary) == list(__import__("ispcp_lib.steps", fromlist=["STEP_ORDER"]).STEP_ORDER)
    assert summary["engine_speedup"]["status"] == "done" and summary["engine_speedup"]["changes"] == 7
    assert summary["engine_speedup"]["safety copies"].endswith("(7 copies)")
    assert str(ctx.backup_dir) in summary["engine_speedup"]["safety copies"]
    assert summary["ispcp_update"]["status"] == "done"
    assert summary["cleanup"]["status"] == "done"
    assert summary["inventory"]["status"] == "not run"
    assert speed.backups and all(str(ctx.backup_dir) in b for b in speed.backups)

    again = cleanup.run(ctx)
    assert again.status == "noop" and "nothing left to clean up" in again.noop_reason


def test_cleanup_keeps_the_sleep_lines_out_by_default(recovered) -> None:
    world = recovered
    ctx = open_ctx(world, apply=True)
    engine_speedup.run(ctx)
    commented = {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_sleep.MANAGERS}
    done = cleanup.run(ctx)
    assert {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_sleep.MANAGERS} == commented
    tasks = {r["task"]: r["outcome"] for r in done.tables[0].frame.to_dict("records")}
    assert "kept out" in tasks["restore the sleep(1) lines"]
    # the update has not run here: the health table says so instead of pretending
    health = {r["check"]: r for r in done.tables[1].frame.to_dict("records")}
    assert health["Apache vhosts written for every domain"]["result"] == "FAIL"
    assert any("Apache vhosts" in w for w in done.warnings)


def test_cleanup_removes_root_mycnf_written_by_register_accounts(recovered) -> None:
    from ispcp_lib.ispcp import root_mycnf

    world = recovered
    mycnf = world.target_root / "root/.my.cnf"
    mycnf.parent.mkdir(exist_ok=True)
    mycnf.write_text(root_mycnf.MARKER + "\n[client]\nuser=root\npassword=Xyz123\n")
    mycnf.chmod(0o600)
    done = cleanup.run(open_ctx(world, apply=True))
    assert not mycnf.exists()
    assert any(".my.cnf" in c for c in done.changes)
    assert "Xyz123" not in done._repr_html_()


@pytest.fixture
def guarded(recovered: World) -> Iterator[tuple[World, dict[str, Any]]]:
    """The recovered world with its private Postfix and dnsmasq, and the mail guard set (soft_bounce)."""
    try:
        params = {**spf.start_for_world(recovered), **sdns.start_for_world(recovered)}
        assert mail_guard.run(open_ctx(recovered, apply=True, **params)).status == "done"
        yield recovered, params
    finally:
        sdns.stop_for_world(recovered)
        spf.stop_for_world(recovered)


def _attempts(world: World, numbers: list[int], succeeded: int | None) -> None:
    """ispcp_update's records as it leaves them: one transcript per attempt, the last success's record."""
    logs = world.state_dir / update_env.LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        (logs / f"attempt-{n:03d}-run.log").write_text("transcript\n")
    if succeeded is not None:
        (logs / update_env.SUCCESS_FILE).write_text(
            json.dumps({"attempt": succeeded, "ts": "2026-01-01T00:00:00", "run_id": "run", "inputs": "x"})
        )


def _guard_outcome(result) -> str:
    return {r["task"]: r["outcome"] for r in result.tables[0].frame.to_dict("records")}["lift the mail guard"]


@pytest.mark.parametrize("history", ["never ran", "only failures", "failed after a success"])
def test_the_guard_stays_while_the_update_has_not_succeeded(guarded, history: str) -> None:
    world, params = guarded
    if history == "only failures":
        _attempts(world, [1, 2], None)
    elif history == "failed after a success":
        _attempts(world, [1, 2], 1)
    main_cf = (world.target_root / "etc/postfix/main.cf").read_bytes()
    done = cleanup.run(open_ctx(world, apply=True, **params))
    assert guard.guard_state(open_ctx(world)) is not None
    assert guard.check_guard(open_ctx(world, **params))[0]
    assert (world.target_root / "etc/postfix/main.cf").read_bytes() == main_cf
    assert _guard_outcome(done).startswith("kept")
    expected = {
        "never ran": "ispcp_update never ran",
        "only failures": "none of ispcp_update's 2 attempt(s)",
        "failed after a success": "last attempt (2) failed after attempt 1",
    }[history]
    assert any(w.startswith("MAIL GUARD KEPT") and expected in w for w in done.warnings), done.warnings


def test_the_guard_is_lifted_after_a_successful_update(guarded) -> None:
    world, params = guarded
    _attempts(world, [1, 2], 2)
    done = cleanup.run(open_ctx(world, apply=True, **params))
    assert _guard_outcome(done) == "done"
    assert guard.guard_state(open_ctx(world)) is None
    assert not any("MAIL GUARD" in w for w in done.warnings)
    # A later look at the install says the guard was lifted on purpose, instead of warning that none is set.
    check = ispcp_install_check.run(open_ctx(world, **params))
    assert not any("mail guard" in w for w in check.warnings), check.warnings
    assert any("lifted by cleanup" in n for n in check.notes)


def test_the_guard_lift_can_be_forced_or_refused(guarded) -> None:
    world, params = guarded
    kept = cleanup.run(open_ctx(world, apply=True, cleanup_lift_guard="never", **params))
    assert _guard_outcome(kept) == "kept (cleanup_lift_guard = never)"
    assert guard.guard_state(open_ctx(world)) is not None

    forced = cleanup.run(open_ctx(world, apply=True, cleanup_lift_guard="always", **params))
    assert _guard_outcome(forced) == "done"
    assert guard.guard_state(open_ctx(world)) is None
    assert any("lifted although ispcp_update never ran" in w for w in forced.warnings)


def test_an_unknown_lift_mode_is_refused(recovered) -> None:
    from ispcp_lib.core.errors import InputError

    with pytest.raises(InputError) as info:  # refused when the run opens, before any step
        open_ctx(recovered, apply=True, cleanup_lift_guard="sometimes")
    assert "cleanup_lift_guard" in str(info.value) and "after_update, always, never" in str(info.value)
