"""customer_databases against real private MariaDB instances: every restore strategy, refusals, verification.

The old server of the sandbox wrote a MyISAM database (example001_shop) and an InnoDB file-per-table one
(example002_blog), their users through real GRANTs, and their passwords into sql_user encrypted with the
old keys. Each test restores `ispcp` and `mysql` first (the guide's binary copy, or the real mysql_restore
step where the whole-datadir strategy needs its record), then runs the step: dry run, apply, apply again.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.fileops import fingerprint, fingerprint_diff
from ispcp_lib.core.result import Result
from ispcp_lib.mysql import customer_dbs
from ispcp_lib.mysql.customer_dbs import Strategy
from ispcp_lib.sandbox.world import World, build_world, stable_fingerprint
from ispcp_lib.steps import customer_databases, mysql_maintainer, mysql_restore
from tests.helpers import (
    assert_no_secret,
    ctx_for,
    fetch,
    planned_then_applied,
    read_cnf,
    restore_databases,
    running_clone,
)
from tests.reliability.harness import KILLED, differences, end_state, journal, run_steps

SHOP, BLOG = "example001_shop", "example002_blog"
ROWS = {(SHOP, "products"): 20, (SHOP, "orders"): 50, (BLOG, "posts"): 10, (BLOG, "comments"): 30}
BACKUP_DATADIR = "var/lib/mysql"
DUMPS = "var/backups/mysql"


def old_root(world: World) -> tuple[str, str]:
    return "root", world.credentials["old"]["root_password"]


def query(world: World, sql: str, database: str | None = None) -> list[tuple]:
    return fetch(world, *old_root(world), sql, database)


def counts(world: World, database: str) -> dict[str, int]:
    tables = [r[0] for r in query(world, f"SHOW TABLES FROM `{database}`")]
    return {t: int(query(world, f"SELECT COUNT(*) FROM `{database}`.`{t}`")[0][0]) for t in tables}


def databases(world: World) -> set[str]:
    return {r[0] for r in query(world, "SHOW DATABASES")}


def plan_of(result: Result) -> dict[str, dict[str, Any]]:
    frame = result.tables[0].frame
    return {r["database"]: r for r in frame.to_dict("records")}


def logins_of(result: Result) -> dict[str, dict[str, Any]]:
    frame = next(t.frame for t in result.tables if t.title.startswith("SQL users"))
    return {r["SQL user"]: r for r in frame.to_dict("records")}


def work_dirs(world: World) -> list[Path]:
    return sorted(Path(world.mysql_params["datadir"]).parent.glob("mysql.customer-*"))


# --- the normal path: directory copy and tablespace import -------------------------------------------


def test_dry_run_apply_and_again(restored: World) -> None:
    world = restored
    before, backup_before = stable_fingerprint(world), fingerprint(world.backup_root)
    ctx = ctx_for(world)
    planned = customer_databases.run(ctx)
    assert planned.status == "planned", planned.errors
    plan = plan_of(planned)
    assert plan[SHOP]["strategy"] == Strategy.DIRECTORY_COPY.label and plan[SHOP]["engines (from files)"] == "2 MyISAM"
    assert (
        plan[BLOG]["strategy"] == Strategy.TABLESPACE_IMPORT.label and plan[BLOG]["engines (from files)"] == "2 InnoDB"
    )
    assert plan[SHOP]["domain"] == "example-001.test" and plan[BLOG]["SQL users"] == "ex002blog"
    assert "if that fails, the dump example002_blog.sql" in plan[BLOG]["how / why"]
    text = "\n".join(planned.changes)
    for expected in (
        "cp -a",
        "chown -R",
        "rename the staged example001_shop",
        "DISCARD TABLESPACE",
        "IMPORT TABLESPACE",
    ):
        assert expected in text, expected
    assert "verify" not in text and any("CHECK TABLE" in n for n in planned.notes)  # reads, not changes
    assert all(c.planned for c in planned.commands)
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert work_dirs(world) == [] and not {SHOP, BLOG} & databases(world)

    ctx.default_apply = True
    done = customer_databases.run(ctx)
    assert done.status == "done", done.errors
    assert done.changes == planned.changes  # the plan counts what applying does
    assert done.summary == "2 of 2 customer database(s) restored" and not done.warnings
    for (database, table), n in ROWS.items():
        assert counts(world, database)[table] == n
    assert query(world, f"SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{BLOG}'") == [
        ("InnoDB",),
        ("InnoDB",),
    ]
    rows = {(r["database"], r["table"]): r for r in done.data["row_counts"]}
    assert all(r["CHECK TABLE"] == "OK" for r in rows.values())
    assert rows[(SHOP, "orders")]["old rows"] == 50 and rows[(SHOP, "orders")]["match"] == "yes"
    logins = logins_of(done)
    assert {u: (r["login"], r["reads its database"]) for u, r in logins.items()} == {
        "ex001shop": ("works", "yes"),
        "ex002blog": ("works", "yes"),
    }
    assert fingerprint(world.backup_root) == backup_before  # the backup is only read
    assert plan_of(done)[BLOG]["result"] == "restored"

    again = customer_databases.run(ctx)
    assert again.status == "noop" and again.changed == 0
    assert "2 customer database(s) restored by an earlier run are live" in again.noop_reason
    assert {r["plan"] for r in plan_of(again).values()} == {"already restored"}
    assert all(r["login"] == "works" for r in logins_of(again).values())
    assert_no_secret(world, ctx, planned, done, again)


def test_prefer_dump_loads_the_per_database_dumps(restored: World) -> None:
    world = restored
    ctx = ctx_for(world, apply=True, customer_databases_prefer="dump")
    done = customer_databases.run(ctx)
    assert done.status == "done", done.errors
    assert {r["strategy"] for r in plan_of(done).values()} == {Strategy.SQL_DUMP.label}
    assert any("load " in c and "example001_shop.sql" in c for c in done.changes)
    for (database, table), n in ROWS.items():
        assert counts(world, database)[table] == n
    rows = {(r["database"], r["table"]): r for r in done.data["row_counts"]}
    assert rows[(BLOG, "comments")]["old rows"] == 30 and rows[(BLOG, "comments")]["match"] == "yes"
    assert customer_databases.run(ctx).status == "noop"


# --- refusals: a clear row, the others go on -----------------------------------------------------------


def test_innodb_without_its_tablespace_is_refused_and_the_others_restored(restored: World) -> None:
    world = restored
    for ibd in (world.backup_root / BACKUP_DATADIR / BLOG).glob("*.ibd"):
        ibd.unlink()
    (world.backup_root / DUMPS / f"{BLOG}.sql").unlink()
    before = stable_fingerprint(world)
    planned = customer_databases.run(ctx_for(world))
    assert stable_fingerprint(world) == before
    row = plan_of(planned)[BLOG]
    assert row["plan"] == "cannot restore" and row["strategy"] == Strategy.CANNOT.label
    assert (
        "holds InnoDB tables (comments, posts) whose data lives in the old server's shared tablespace (ibdata1)"
        in row["how / why"]
    )
    assert (
        "Needs: a SQL dump of the database, or the old server's complete datadir (ibdata1 and ib_logfile*"
        in row["how / why"]
    )
    assert any(w.startswith(f"customer database {BLOG}: ") for w in planned.warnings)

    done = customer_databases.run(ctx_for(world, apply=True))
    assert done.status == "done" and done.summary == "1 of 1 customer database(s) restored"
    assert SHOP in databases(world) and BLOG not in databases(world)
    assert logins_of(done)["ex002blog"]["login"] == "not tried"
    # whole-datadir restore is the only other way back, and the backup does not allow it
    assert any("Whole-datadir restore: not possible: the backup's datadir has no ibdata1" in n for n in done.notes)


def test_innodb_without_tablespace_falls_back_to_its_dump(restored: World) -> None:
    world = restored
    for ibd in (world.backup_root / BACKUP_DATADIR / BLOG).glob("*.ibd"):
        ibd.unlink()
    done = customer_databases.run(ctx_for(world, apply=True))
    assert (
        plan_of(done)[BLOG]["strategy"] == Strategy.SQL_DUMP.label
        and "shared tablespace" in plan_of(done)[BLOG]["how / why"]
    )
    assert counts(world, BLOG) == {"comments": 30, "posts": 10}


def test_ibd_without_frm_takes_its_definition_from_the_dump(restored: World) -> None:
    world = restored
    (world.backup_root / BACKUP_DATADIR / BLOG / "posts.frm").unlink()
    done = customer_databases.run(ctx_for(world, apply=True))
    assert plan_of(done)[BLOG]["strategy"] == Strategy.TABLESPACE_IMPORT.label
    assert "1 from .frm, 1 from a dump" in plan_of(done)[BLOG]["how / why"]
    assert any("posts` (definition from its dump)" in c for c in done.changes)
    assert counts(world, BLOG) == {"comments": 30, "posts": 10}


def test_ibd_without_any_definition_is_refused(restored: World) -> None:
    world = restored
    (world.backup_root / BACKUP_DATADIR / BLOG / "posts.frm").unlink()
    (world.backup_root / DUMPS / f"{BLOG}.sql").unlink()
    row = plan_of(customer_databases.run(ctx_for(world)))[BLOG]
    assert row["plan"] == "cannot restore"
    assert "definition of InnoDB table(s) posts is unavailable" in row["how / why"]
    assert "mariadb-dump --no-data" in row["how / why"]


def test_failed_import_is_rolled_back_and_the_dump_loaded(restored: World) -> None:
    world = restored
    ibd = world.backup_root / BACKUP_DATADIR / BLOG / "posts.ibd"
    ibd.write_bytes(b"\x00" * ibd.stat().st_size)  # a tablespace no server can import
    done = customer_databases.run(ctx_for(world, apply=True))
    assert done.status == "done", done.errors
    row = plan_of(done)[BLOG]
    assert row["strategy"] == Strategy.SQL_DUMP.label and row["result"].startswith(
        "restored by SQL dump after the tablespace"
    )
    assert any("rolled back, trying the SQL dump" in w for w in done.warnings)
    assert counts(world, BLOG) == {"comments": 30, "posts": 10}
    assert list(Path(world.mysql_params["datadir"]).joinpath(BLOG).glob("*.ibd"))  # the dump's own tables


def test_a_failed_restore_without_a_fallback_fails_the_step(restored: World) -> None:
    """All databases are tried; one whose restore failed (nothing to fall back to) makes the step fail."""
    world = restored
    ibd = world.backup_root / BACKUP_DATADIR / BLOG / "posts.ibd"
    ibd.write_bytes(b"\x00" * ibd.stat().st_size)  # a tablespace no server can import
    (world.backup_root / DUMPS / f"{BLOG}.sql").unlink()
    with pytest.raises(StepFailed) as info:
        customer_databases.run(ctx_for(world, apply=True))
    result = info.value.result
    assert "1 of 2 failed to restore" in result.errors[0] and BLOG in result.errors[0]
    assert "repair its backup" in result.errors[0]
    rows = plan_of(result)  # the per-database table is still in the report
    assert rows[SHOP]["result"] == "restored" and rows[BLOG]["result"].startswith("failed and rolled back")
    assert SHOP in databases(world) and BLOG not in databases(world)
    assert counts(world, SHOP) == {"orders": 50, "products": 20}


def test_a_database_that_exists_on_the_target_is_left_alone(restored: World) -> None:
    world = restored
    query(world, f"CREATE DATABASE `{SHOP}`")
    query(world, f"CREATE TABLE `{SHOP}`.mine (id INT) ENGINE=MyISAM")
    done = customer_databases.run(ctx_for(world, apply=True))
    row = plan_of(done)[SHOP]
    assert row["plan"] == "left alone" and "already exists on the target with 1 table(s)" in row["how / why"]
    assert counts(world, SHOP) == {"mine": 0}
    assert counts(world, BLOG) == {"comments": 30, "posts": 10}


def test_unlisted_databases_and_skip(restored: World) -> None:
    world = restored
    extra = world.backup_root / BACKUP_DATADIR / "roundcube"
    shutil.copytree(world.backup_root / BACKUP_DATADIR / SHOP, extra, symlinks=True)
    shutil.copystat(world.backup_root / BACKUP_DATADIR / SHOP, extra)
    planned = customer_databases.run(ctx_for(world, customer_databases_skip=[BLOG]))
    plan = plan_of(planned)
    assert plan["roundcube"]["domain"] == "not in sql_database" and plan["roundcube"]["plan"] == "restore"
    assert plan[BLOG]["plan"] == "skipped"
    assert any("sql_database does not list" in n and "roundcube" in n for n in planned.notes)
    left_out = plan_of(customer_databases.run(ctx_for(world, customer_databases_include_unlisted=False)))
    assert "roundcube" not in left_out


def test_bad_parameters_and_a_stopped_server(restored: World) -> None:
    world = restored
    with pytest.raises(InputError, match="customer_databases_whole_datadir"):  # refused when the run opens
        ctx_for(world, customer_databases_whole_datadir="sometimes")
    with pytest.raises(InputError, match="customer_databases_prefer.*binary, dump"):
        ctx_for(world, customer_databases_prefer="tape")
    world.stop()
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed, match="MySQL server.*is not running.*run mysql_restore first"):
        customer_databases.run(ctx_for(world, apply=True))
    assert stable_fingerprint(world) == before


# --- a backup that holds the old datadir whole, and an --all-databases dump ----------------------------


@pytest.fixture(scope="session")
def full_template(sandbox_root: Path) -> World:
    """The small world whose backup is the old datadir whole, with one --all-databases dump instead of per-db ones."""
    return build_world(
        sandbox_root / "full-template",
        "small",
        seed=1,
        variant={"backup_full_datadir": True, "customer_dumps": "all_databases"},
    )


@pytest.fixture
def full(full_template: World, sandbox_dir: Path) -> Iterator[World]:
    with running_clone(full_template, sandbox_dir / "w") as w:
        yield w


def guide_restore(world: World, **options: Any) -> Context:
    """The real mysql_restore and mysql_maintainer steps, applied: what the runbook does before this step."""
    ctx = ctx_for(world, apply=True, **options)
    assert mysql_restore.run(ctx).status == "done"
    assert mysql_maintainer.run(ctx).status in ("done", "noop")
    return ctx


def test_whole_datadir_restore_keeps_the_maintainer_login(full: World) -> None:
    world = full
    # Without the old debian.cnf, mysql_maintainer sets a new debian-sys-maint password into the restored
    # grants; the swap brings back the old grants, so this step must set it again.
    (world.backup_root / "etc/mysql/debian.cnf").unlink()
    guide_restore(world)
    cnf = read_cnf(world.target_root / "etc/mysql/debian.cnf")
    assert cnf is not None and world.target_mysql().login_error(cnf.user, cnf.password) is None

    before = stable_fingerprint(world)
    ctx = ctx_for(world, customer_databases_whole_datadir="always")
    planned = customer_databases.run(ctx)
    assert planned.status == "planned", planned.errors
    assert {r["strategy"] for r in plan_of(planned).values()} == {Strategy.WHOLE_DATADIR.label}
    assert any("copy the backup's whole datadir" in c for c in planned.changes)
    assert stable_fingerprint(world) == before and work_dirs(world) == []

    _, done = planned_then_applied(customer_databases, ctx)  # the swap's procedures: planned as performed
    assert done.status == "done", done.errors
    for (database, table), n in ROWS.items():
        assert counts(world, database)[table] == n
    assert world.target_mysql().login_error(cnf.user, cnf.password) is None  # set again after the swap
    assert any("old grants lacked the current password of debian-sys-maint" in n for n in done.notes)
    kept = work_dirs(world)[0] / "kept" / "datadir"
    assert (kept / "ibdata1").is_file() and (kept / "ispcp").is_dir() and str(kept) in done.backups
    assert all(r["login"] == "works" for r in logins_of(done).values())
    assert int(query(world, "SELECT COUNT(*) FROM domain", "ispcp")[0][0]) == len(world.domains)

    assert customer_databases.run(ctx).status == "noop"
    assert mysql_restore.run(ctx_for(world, apply=True)).status == "noop"  # its record still holds
    assert_no_secret(world, ctx, planned, done)


def test_whole_datadir_auto_is_not_needed_and_all_databases_dump_is_split(full: World) -> None:
    world = full
    guide_restore(world)
    ctx = ctx_for(world, apply=True, customer_databases_prefer="dump")
    done = customer_databases.run(ctx)
    assert done.status == "done", done.errors
    assert {r["strategy"] for r in plan_of(done).values()} == {Strategy.ALL_DATABASES_DUMP.label}
    assert any("not needed, every database has a way back of its own" in n for n in done.notes)
    for (database, table), n in ROWS.items():
        assert counts(world, database)[table] == n
    rows = {(r["database"], r["table"]): r for r in done.data["row_counts"]}
    assert rows[(SHOP, "orders")]["old rows"] == 50 and rows[(SHOP, "orders")]["match"] == "yes"
    assert customer_databases.run(ctx).status == "noop"


def test_whole_datadir_refused_when_mysql_restore_used_other_sources(full: World) -> None:
    world = full
    restore_databases(world)  # by hand: mysql_restore left no record of what it restored
    result = customer_databases.run(ctx_for(world, customer_databases_whole_datadir="always"))
    assert any(
        "not possible: mysql_restore has not restored ispcp and mysql into this datadir" in n for n in result.notes
    )
    assert {r["strategy"] for r in plan_of(result).values()} == {
        Strategy.DIRECTORY_COPY.label,
        Strategy.TABLESPACE_IMPORT.label,
    }

    guide_restore(world)  # now with mysql_restore's record, but the target has a database of its own
    query(world, "CREATE DATABASE new_only")
    result = customer_databases.run(ctx_for(world, customer_databases_whole_datadir="always"))
    assert any("the target has database(s) the backup's datadir lacks (new_only)" in n for n in result.notes)
    assert Strategy.WHOLE_DATADIR.label not in {r["strategy"] for r in plan_of(result).values()}


def test_a_swapped_datadir_that_does_not_start_is_undone(full: World) -> None:
    world = full
    guide_restore(world)
    before = (databases(world), counts(world, "ispcp"))
    ibdata = world.backup_root / "var/lib/mysql/ibdata1"
    ibdata.write_bytes(b"\0" * ibdata.stat().st_size)  # the backup's system tablespace, unreadable
    with pytest.raises(StepFailed) as info:
        customer_databases.run(ctx_for(world, apply=True, customer_databases_whole_datadir="always"))
    error = info.value.result.errors[0]
    assert "whole-datadir restore" in error and "the target's own datadir was put back" in error, error
    assert world.target_mysql().status() and (databases(world), counts(world, "ispcp")) == before
    [work] = work_dirs(world)
    assert (work / "failed/ibdata1").is_file() and not (work / "kept/datadir/ibdata1").exists()


def _release(ctx: Context) -> None:
    assert ctx.lock is not None
    ctx.lock.release()


def _swap_moves(world: World) -> dict[str, int]:
    """The newest run's first move out of the live datadir and first move in from the staged copy (seqs)."""
    ops = [r for r in journal(world) if r.get("type") == "operation" and r["step"] == "customer_databases"]
    run = ops[-1]["run_id"]
    live = str(world.mysql_params["datadir"]).rstrip("/") + "/"
    firsts: dict[str, int] = {}
    for r in ops:
        argv = r["op"].get("argv") or []
        if r["run_id"] != run or r["phase"] != "intent" or argv[:3] != ["mv", "-T", "--"]:
            continue
        kind = "moving out" if argv[3].startswith(live) else "moving in" if "/staging/datadir/" in argv[3] else None
        if kind is not None:
            firsts.setdefault(kind, r["seq"])
    return firsts


def test_runs_killed_inside_the_whole_datadir_swap_resume_to_the_uninterrupted_end(
    full_template: World, sandbox_dir: Path
) -> None:
    """A kill -9 (the executor's fault hook) after the first entry of the live datadir moved aside, and after
    the first entry of the backup's moved in: the resumed run puts the target's own datadir back, starts
    MySQL (the killed run had stopped it) and swaps again, ending where an uninterrupted run ends."""
    options = {"customer_databases_whole_datadir": "always"}
    with running_clone(full_template, sandbox_dir / "clean") as clean:
        _release(guide_restore(clean))  # the steps below run in processes of their own
        rc, err = run_steps(clean, options, ["customer_databases"])
        assert rc == 0, err
        points = _swap_moves(clean)
        want = end_state(clean)
    assert set(points) == {"moving out", "moving in"}, points
    for kind, seq in points.items():
        with running_clone(full_template, sandbox_dir / kind.replace(" ", "-")) as world:
            _release(guide_restore(world))
            rc, _ = run_steps(world, options, ["customer_databases"], fault=f"after:customer_databases:{seq}")
            assert rc == KILLED, kind
            rc, err = run_steps(world, options, ["customer_databases"])
            assert rc == 0, (kind, err)
            # The backup's entries the killed run had moved in stay in its folder's failed/ (post-mortem).
            assert [d for d in differences(want, end_state(world)) if "-RUN/failed" not in d] == [], kind
            for killed_work in work_dirs(world)[:-1]:  # run ids sort by time: the last is the resumed run's
                assert not (killed_work / "kept").exists() and not (killed_work / "staging").exists(), kind


# --- discovery for the inventory --------------------------------------------------------------------


def test_show_reads_the_backup_before_any_restore(stopped_world: World) -> None:
    world = stopped_world
    ctx = ctx_for(world)
    result = Result("inventory")
    found = customer_dbs.show(ctx, result)
    assert "throwaway server" in found.listing.source
    frame = result.tables[0].frame.set_index("database")
    assert (
        frame.loc[SHOP, "restore"] == Strategy.DIRECTORY_COPY.label
        and frame.loc[BLOG, "restore"] == Strategy.TABLESPACE_IMPORT.label
    )
    assert frame.loc[BLOG, "folder in backup"] == "yes" and frame.loc[BLOG, "dumps"] == f"{BLOG}.sql (dump)"
    assert any("Customer databases listed in sql_database: 2" in n for n in result.notes)
    assert found is not None and not found.datadir_complete
    with pytest.raises(InputError, match="customer_databases_prefer"):  # refused before anything reads the backup
        ctx_for(world, customer_databases_prefer="tape")


def test_failing_logins_are_listed_with_the_reason(restored: World) -> None:
    world = restored
    query(world, "ALTER USER 'ex001shop'@'localhost' IDENTIFIED BY 'changed-after-the-backup'")
    query(world, "UPDATE ispcp.sql_user SET sqlu_pass = 'bm90IGVuY3J5cHRlZA==' WHERE sqlu_name = 'ex002blog'")
    done = customer_databases.run(ctx_for(world, apply=True))
    assert done.status == "done" and done.summary == "2 of 2 customer database(s) restored"
    logins = logins_of(done)
    assert (
        logins["ex001shop"]["login"] == "REFUSED"
        and "Access denied for user 'ex001shop'" in logins["ex001shop"]["detail"]
    )
    assert logins["ex002blog"]["login"] == "not tried" and "does not decrypt to text" in logins["ex002blog"]["detail"]
    assert any(w.startswith("1 SQL user login(s) fail: ex001shop: Access denied") for w in done.warnings)
    assert any(
        "1 SQL user login(s) cannot be tried, their password does not decrypt: ex002blog" in w for w in done.warnings
    )
