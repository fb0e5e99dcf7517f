"""cleanup after a successful update: back to DEBUG = 0, the sleep lines restored, a summary of the run."""

from __future__ import annotations

import pytest

from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.sandbox.world import stable_fingerprint
from ispcp_lib.steps import cleanup, engine_speedup, ispcp_update
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
    managers = {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_speedup.MANAGERS}
    ctx = open_ctx(world, apply=True, cleanup_restore_sleep=True)
    speed = engine_speedup.run(ctx)
    update = ispcp_update.run(ctx)
    assert update.status == "done", update.errors
    assert debug_values(world) == ("1", "1")
    creds = world.state_dir / cleanup.TEMP_CREDENTIALS
    creds.mkdir(mode=0o700)
    (creds / "root.my.cnf").write_text("[client]\nuser=root\npassword=x\n")

    before = stable_fingerprint(world)
    ctx.default_apply = False
    dry = cleanup.run(ctx)
    assert dry.status == "planned"
    assert stable_fingerprint(world) == before and (creds / "root.my.cnf").exists()
    assert any("DEBUG = 0" in c for c in dry.changes) and any("restore sleep(1)" in c for c in dry.changes)

    ctx.default_apply = True
    done = cleanup.run(ctx)
    assert done.status == "done", done.errors
    assert debug_values(world) == ("0", "0")
    assert {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_speedup.MANAGERS} == managers
    assert not (creds / "root.my.cnf").exists()
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
    commented = {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_speedup.MANAGERS}
    done = cleanup.run(ctx)
    assert {n: (world.target_root / ENGINE / n).read_bytes() for n in engine_speedup.MANAGERS} == commented
    tasks = {r["task"]: r["outcome"] for r in done.tables[0].frame.to_dict("records")}
    assert "kept out" in tasks["restore the sleep(1) lines"]
    # the update has not run here: the health table says so instead of pretending
    health = {r["check"]: r for r in done.tables[1].frame.to_dict("records")}
    assert health["Apache vhosts written for every domain"]["result"] == "FAIL"
    assert any("Apache vhosts" in w for w in done.warnings)


def test_cleanup_removes_root_mycnf_written_by_register_accounts(recovered) -> None:
    ra = pytest.importorskip("ispcp_lib.steps.register_accounts")
    world = recovered
    mycnf = world.target_root / "root/.my.cnf"
    mycnf.parent.mkdir(exist_ok=True)
    mycnf.write_text(ra.MARKER + "\n[client]\nuser=root\npassword=Xyz123\n")
    mycnf.chmod(0o600)
    done = cleanup.run(open_ctx(world, apply=True))
    assert not mycnf.exists()
    assert any(".my.cnf" in c for c in done.changes)
    assert "Xyz123" not in done._repr_html_()
