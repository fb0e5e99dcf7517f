"""mysql_restore against real private MariaDB instances: the old server wrote the backup, the target is new.

Dry run (nothing changes), apply (the data is back, every table checks, counts match the old server),
apply again (a no-op), and the bad-input corpus (a clear error, the target untouched).
"""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.fileops import fingerprint, fingerprint_diff
from ispcp_lib.facts import mysql_state as ms
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import dumps
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import mysql_restore
from ispcp_lib.system import disk_space
from tests.helpers import ctx_for, fetch, operations, planned_then_applied, read_cnf

BACKUP_DB = "var/lib/mysql"


def datadir(world: World) -> Path:
    return Path(world.mysql_params["datadir"])


def old_root(world: World) -> Login:
    return Login("root", world.credentials["old"]["root_password"], "test")


def query(world: World, login: Login, sql: str) -> list[tuple]:
    return fetch(world, login.user, login.password, sql)


def work_dirs(world: World) -> list[Path]:
    return sorted(datadir(world).parent.glob("mysql.restore-*"))


def counts_frame(result):
    return next(t.frame for t in result.tables if t.title.startswith("Row counts"))


def test_dry_run_plans_everything_and_changes_nothing(world: World) -> None:
    before, backup_before = stable_fingerprint(world), fingerprint(world.backup_root)
    result = mysql_restore.run(ctx_for(world))
    assert result.status == "planned", result.errors
    text = "\n".join(result.changes)
    for expected in (
        "cp -a",
        "chown -R",
        "stop MySQL",
        "aside",
        "start MySQL",
        "system InnoDB tables behind",
    ):
        assert expected in text, expected
    # The verification only reads: a note of the plan, not a change to count.
    assert "CHECK TABLE" not in text and any("CHECK TABLE" in n for n in result.notes)
    assert result.commands and all(c.planned for c in result.commands)
    frame = counts_frame(result)
    domain = frame[(frame["database"] == "ispcp") & (frame["table"] == "domain")].iloc[0]
    assert domain["old rows"] == len(world.domains)
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert fingerprint(world.backup_root) == backup_before
    assert world.target_mysql().status() and work_dirs(world) == []


def test_apply_restores_the_old_databases_and_a_second_apply_is_a_noop(world: World) -> None:
    data = datadir(world)
    own_ispcp = fingerprint(data / "ispcp")
    target = read_cnf(world.target_root / "etc/mysql/debian.cnf")
    own_stats = query(world, target, "SELECT database_name, table_name FROM mysql.innodb_table_stats ORDER BY 1, 2")
    assert own_stats  # a fresh MariaDB keeps statistics of its own InnoDB tables
    planned = mysql_restore.run(ctx_for(world))
    ctx = ctx_for(world, apply=True)
    result = mysql_restore.run(ctx)
    assert result.status == "done", result.errors
    assert planned.changed == result.changed  # the plan counts what applying does

    # The old server's data answers through the old server's own login.
    names = [r[0] for r in query(world, old_root(world), "SELECT domain_name FROM ispcp.domain ORDER BY domain_id")]
    assert names == [d["name"] for d in world.domains]
    frame = counts_frame(result)
    assert set(frame["CHECK TABLE"]) == {"OK"}
    assert set(frame["match"]) <= {"yes", "view", "target's own"}
    domain = frame[(frame["database"] == "ispcp") & (frame["table"] == "domain")].iloc[0]
    assert domain["old rows"] == domain["restored rows"] == len(world.domains)
    mails = frame[(frame["database"] == "ispcp") & (frame["table"] == "mail_users")].iloc[0]
    assert mails["restored rows"] == world.manifest["counts"]["mailboxes"] + world.manifest["counts"]["forwards"]
    logins = next(t.frame for t in result.tables if t.title.startswith("Logins"))
    assert list(logins["result"]) == ["works", "works"]

    # Owner from the target's passwd/group, data files byte for byte the backup's.
    uid, gid = ms.mysql_owner(LocalConnection(world.target_root))
    for name in ("ispcp", "mysql"):
        for p in (data / name).iterdir():
            st = p.stat()
            assert (st.st_uid, st.st_gid) == (uid, gid), p
    for p in (world.backup_root / BACKUP_DB / "ispcp").glob("*.MYD"):
        assert (data / "ispcp" / p.name).read_bytes() == p.read_bytes()
    # The backup's InnoDB system tables stayed behind; the target's own are in place and work.
    assert (
        query(world, old_root(world), "SELECT database_name, table_name FROM mysql.innodb_table_stats ORDER BY 1, 2")
        == own_stats
    )

    # The target's own folders are kept, unchanged, and listed.
    [work] = work_dirs(world)
    assert fingerprint(work / "kept/ispcp") == own_ispcp
    assert sorted(result.backups) == [str(work / "kept/ispcp"), str(work / "kept/mysql")]
    assert not (work / "staging").exists()

    # Secrets never reach the journal.
    journal = ctx.journal_path.read_text()
    assert not [s for s in world.secrets if s in journal]

    before = stable_fingerprint(world)
    again = mysql_restore.run(ctx)
    assert again.status == "noop" and "restored in run" in again.noop_reason
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert work_dirs(world) == [work]


def _rm(path: Path) -> None:
    path.unlink()


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def _innodb_table(world: World, with_ibdata: bool) -> None:
    """An InnoDB table in the backup's ispcp folder (a real .frm/.ibd pair of a 10.11 server)."""
    own = datadir(world) / "mysql"
    dest = world.backup_root / BACKUP_DB / "ispcp"
    for suffix in (".frm", ".ibd"):
        shutil.copy2(own / f"innodb_table_stats{suffix}", dest / f"legacy_stats{suffix}")
    if with_ibdata:
        (world.backup_root / BACKUP_DB / "ibdata1").write_bytes(b"\0" * 4096)


BAD_INPUTS = {
    "missing .MYD": (
        lambda w: _rm(w.backup_root / BACKUP_DB / "ispcp/domain.MYD"),
        ["domain", ".MYD", "mysql_restore_source = dump"],
    ),
    "missing .frm in mysql": (lambda w: _rm(w.backup_root / BACKUP_DB / "mysql/db.frm"), ["db", "no .frm"]),
    "truncated .MYI": (
        lambda w: _truncate(w.backup_root / BACKUP_DB / "ispcp/domain.MYI", 2048),
        ["domain", "offline CHECK verdict", "myisamchk -r"],
    ),
    "truncated .MAD": (
        lambda w: _truncate(w.backup_root / BACKUP_DB / "mysql/global_priv.MAD", 100),
        ["global_priv", "aria_chk -r"],
    ),
    "InnoDB without ibdata1": (lambda w: _innodb_table(w, False), ["legacy_stats", "InnoDB", "ibdata1"]),
    "InnoDB with ibdata1": (lambda w: _innodb_table(w, True), ["legacy_stats", "shared tablespace", "mariadb-dump"]),
    "newer server": (
        lambda w: (w.backup_root / BACKUP_DB / "mysql_upgrade_info").write_text("11.8.2-MariaDB"),
        ["MySQL versions", "11.8.2", "at least as new"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_backup_is_refused_before_anything_changes(world: World, case: str) -> None:
    damage, words = BAD_INPUTS[case]
    damage(world)
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        mysql_restore.run(ctx_for(world, apply=True))
    error = info.value.result.errors[0]
    for word in words:
        assert word in error, (word, error)
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert world.target_mysql().status() and work_dirs(world) == []
    if case == "truncated .MYI":  # the offline CHECK verdict is in the report
        frame = next(t.frame for t in info.value.result.tables if "offline check" in t.title)
        assert frame[frame["table"] == "domain"]["verdict"].tolist() == ["corrupt"]


def test_unknown_source_parameter(world: World) -> None:
    with pytest.raises(InputError) as info:  # refused when the run opens, before any step
        ctx_for(world, apply=True, mysql_restore_source="tape")
    assert "mysql_restore_source" in str(info.value) and "auto, binary, dump" in str(info.value)


def test_read_only_datadir_is_refused(world: World) -> None:
    data = datadir(world)
    if subprocess.run(["mount", "--bind", str(data), str(data)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(data)], check=True)
        before = stable_fingerprint(world)
        with pytest.raises(StepFailed) as info:
            mysql_restore.run(ctx_for(world, apply=True))
        assert "read-only filesystem" in info.value.result.errors[0]
        assert "remount" in info.value.result.errors[0]
    finally:
        subprocess.run(["umount", str(data)], check=True)
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert world.target_mysql().status()


def test_server_that_does_not_start_gets_its_own_folders_back(world: World) -> None:
    mysql_dir = world.backup_root / BACKUP_DB / "mysql"
    for p in [*mysql_dir.glob("global_priv.*"), mysql_dir / "user.frm"]:
        p.unlink()  # no privilege tables: mariadbd refuses to start
    own = {name: sorted(p.name for p in (datadir(world) / name).iterdir()) for name in ("ispcp", "mysql")}
    with pytest.raises(StepFailed) as info:
        mysql_restore.run(ctx_for(world, apply=True))
    result = info.value.result
    assert "original folders were put back" in result.errors[0]
    assert any("rolled back" in w for w in result.warnings)
    assert world.target_mysql().status()
    assert {name: sorted(p.name for p in (datadir(world) / name).iterdir()) for name in ("ispcp", "mysql")} == own
    target = read_cnf(world.target_root / "etc/mysql/debian.cnf")
    assert query(world, target, "SELECT COUNT(*) FROM ispcp.domain") == [("0",)]  # the client returns strings
    [work] = work_dirs(world)
    assert (work / "failed/mysql").is_dir() and not (work / "kept/mysql").exists()


def test_older_backup_runs_mariadb_upgrade(world: World) -> None:
    (world.backup_root / BACKUP_DB / "mysql_upgrade_info").write_text("10.5.23-MariaDB")
    planned, result = planned_then_applied(mysql_restore, ctx_for(world))
    assert result.status == "done", result.errors
    assert ("procedure", mysql_restore.UPGRADE_WHAT) in operations(planned)
    [upgrade] = [c for c in result.commands if "mariadb-upgrade" in c.argv[0] or "mysql_upgrade" in c.argv[0]]
    assert upgrade.rc == 0 and upgrade.argv[1].startswith("--defaults-extra-file=")
    assert not Path(upgrade.argv[1].split("=", 1)[1]).exists()  # the 0600 credentials file is gone
    assert not [s for s in world.secrets if s in " ".join(upgrade.argv)]


def test_without_a_working_login_the_check_runs_in_a_grantless_session(world: World) -> None:
    (world.backup_root / "etc/mysql/debian.cnf").unlink()
    for logical in (
        "var/www/ispcp/gui/include/ispcp-db-keys.php",
        "var/www/ispcp/engine/ispcp-db-keys.pl",
        "var/www/ispcp/engine/messenger/ispcp-db-keys.pl",
    ):
        (world.backup_root / logical).unlink()
    result = mysql_restore.run(ctx_for(world, apply=True))
    assert result.status == "done", result.errors
    assert any("no login that the backup implies works" in w for w in result.warnings)
    assert set(counts_frame(result)["CHECK TABLE"]) == {"OK"}
    assert world.target_mysql().status()
    assert world.target_mysql().login_error("root", "") is not None  # grant tables are back in force
    assert query(world, old_root(world), "SELECT COUNT(*) FROM ispcp.domain") == [(str(len(world.domains)),)]


def _dump(world: World, login: Login, database: str) -> bytes:
    here = LocalConnection("/")
    with dumps.defaults_file(here, login, world.mysql_params["socket"]) as cnf:
        out = subprocess.run(
            dumps.client_argv(here, cnf, "--skip-dump-date", database, program="mariadb-dump"),
            capture_output=True,
            check=True,
        )
    return out.stdout


def test_sql_dumps_as_the_source(world: World, world_template: World, sandbox_dir: Path) -> None:
    """ispcp-backup-ispcp's bzip2 dump plus a gzip dump of `mysql`, taken from a restored old database."""
    assert mysql_restore.run(ctx_for(world, apply=True)).status == "done"
    ispcp_sql, mysql_sql = _dump(world, old_root(world), "ispcp"), _dump(world, old_root(world), "mysql")
    world.stop()

    other = world_template.clone(sandbox_dir / "w2")
    try:
        other.start()
        shutil.rmtree(other.backup_root / BACKUP_DB / "ispcp")
        shutil.rmtree(other.backup_root / BACKUP_DB / "mysql")
        dumps = other.backup_root / "var/www/ispcp/backups"
        dumps.mkdir(parents=True)
        (other.backup_root / "var/backups/mysql/mysql.sql.gz").write_bytes(gzip.compress(mysql_sql))
        cut = dumps / "ispcp-2010.05.16-03.00.sql.bz2"
        cut.write_bytes(bz2.compress(ispcp_sql[: len(ispcp_sql) // 2]))
        before = stable_fingerprint(other)
        with pytest.raises(StepFailed) as info:
            mysql_restore.run(ctx_for(other, apply=True))
        assert "cut off" in info.value.result.errors[0] and cut.name in info.value.result.errors[0]
        assert fingerprint_diff(before, stable_fingerprint(other)) == []

        cut.write_bytes(bz2.compress(ispcp_sql))
        ctx = ctx_for(other)
        planned, result = planned_then_applied(mysql_restore, ctx)
        assert result.status == "done", result.errors
        assert ("procedure", "load the dump(s) of ispcp, mysql") in operations(planned)
        plan = next(t.frame for t in result.tables if t.title == "What is restored")
        assert list(plan["source"]) == ["dump", "dump"]
        frame = counts_frame(result)
        assert set(frame["CHECK TABLE"]) == {"OK"} and "NO" not in set(frame["match"])
        names = [r[0] for r in query(other, old_root(other), "SELECT domain_name FROM ispcp.domain ORDER BY 1")]
        assert names == sorted(d["name"] for d in other.domains)
        old_cnf = read_cnf(other.backup_root / "etc/mysql/debian.cnf")
        assert other.target_mysql().login_error(old_cnf.user, old_cnf.password) is None
        [work] = sorted(datadir(other).parent.glob("mysql.restore-*"))
        assert (work / "kept/ispcp/domain.frm").is_file() and (work / "kept/mysql/global_priv.frm").is_file()
        journal = ctx.journal_path.read_text()
        assert not [s for s in other.secrets if s in journal]
        again = mysql_restore.run(ctx)
        assert again.status == "noop", again.errors
    finally:
        other.stop()


def test_dry_run_names_the_dump_it_would_load(world: World) -> None:
    dumps = world.backup_root / "var/www/ispcp/backups"
    dumps.mkdir(parents=True)
    (dumps / "ispcp-2010.05.16.sql").write_text(
        "-- MySQL dump 10.11\n-- Host: localhost    Database: ispcp\n"
        "CREATE TABLE `domain` (`id` int);\n"
        "INSERT INTO `domain` VALUES (1),(2);\n"
        "-- Dump completed on 2010-05-16\n"
    )
    before = stable_fingerprint(world)
    result = mysql_restore.run(ctx_for(world, mysql_restore_source="dump"))
    assert result.status == "planned", result.errors
    assert any("ispcp-2010.05.16.sql" in c and "mariadb client" in c for c in result.changes)
    assert os.path.basename(str(result.tables[0].frame["from"][0])) == "ispcp-2010.05.16.sql"
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


def test_backup_without_a_mysql_database_keeps_the_targets_logins(world: World) -> None:
    shutil.rmtree(world.backup_root / BACKUP_DB / "mysql")
    own_mysql = sorted(p.name for p in (datadir(world) / "mysql").iterdir())
    result = mysql_restore.run(ctx_for(world, apply=True))
    assert result.status == "done", result.errors
    assert any("no `mysql` database" in w for w in result.warnings)
    plan = next(t.frame for t in result.tables if t.title == "What is restored")
    assert list(plan["source"]) == ["binary", "keep"]
    assert sorted(p.name for p in (datadir(world) / "mysql").iterdir()) == own_mysql
    logins = next(t.frame for t in result.tables if t.title.startswith("Logins"))
    assert dict(zip(logins["from"], logins["result"]))["the target's debian.cnf (its grants were kept)"] == "works"
    target = read_cnf(world.target_root / "etc/mysql/debian.cnf")
    assert query(world, target, "SELECT COUNT(*) FROM ispcp.domain") == [(str(len(world.domains)),)]


def test_binary_source_without_the_folder_names_the_way_out(world: World) -> None:
    shutil.rmtree(world.backup_root / BACKUP_DB / "ispcp")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        mysql_restore.run(ctx_for(world, apply=True, mysql_restore_source="binary"))
    error = info.value.result.errors[0]
    assert "database ispcp (binary copy)" in error and "mysql_restore_source = dump" in error
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


@pytest.mark.parametrize("points", ["inside the backup", "outside the backup"])
def test_a_symlinked_database_folder_is_refused(world: World, sandbox_dir: Path, points: str) -> None:
    """A symlinked `ispcp` folder would put the link's target (maybe anything) into the live datadir."""
    folder = world.backup_root / BACKUP_DB / "ispcp"
    real = folder.with_name("ispcp.real") if points == "inside the backup" else sandbox_dir / "elsewhere-ispcp"
    shutil.move(folder, real)
    folder.symlink_to(real)
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        mysql_restore.run(ctx_for(world, apply=True))
    error = info.value.result.errors[0]
    assert str(folder) in error, error
    if points == "inside the backup":
        assert "database ispcp (binary copy)" in error and "is a symlink" in error and "cp -a" in error
    else:
        assert "outside the backup root" in error and "replace the symlink" in error
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert world.target_mysql().status() and work_dirs(world) == []


def test_ispcp_dump_with_a_binary_mysql_folder(world: World, world_template: World, sandbox_dir: Path) -> None:
    """The dump is loaded after the swap, when the old grants are live: with a login the backup implies."""
    assert mysql_restore.run(ctx_for(world, apply=True)).status == "done"
    ispcp_sql = _dump(world, old_root(world), "ispcp")
    world.stop()

    other = world_template.clone(sandbox_dir / "w2")
    try:
        other.start()
        shutil.rmtree(other.backup_root / BACKUP_DB / "ispcp")
        dumps = other.backup_root / "var/www/ispcp/backups"
        dumps.mkdir(parents=True)
        (dumps / "ispcp-2010.05.16-03.00.sql").write_bytes(ispcp_sql)
        dry = mysql_restore.run(ctx_for(other))
        assert dry.status == "planned" and any("backup's grants are live" in n for n in dry.notes)
        ctx = ctx_for(other, apply=True)
        result = mysql_restore.run(ctx)
        assert result.status == "done", result.errors
        plan = next(t.frame for t in result.tables if t.title == "What is restored")
        assert list(plan["source"]) == ["dump", "binary"]
        assert any("loaded with the login from the backup's debian.cnf" in n for n in result.notes)
        assert not any("rolled back" in w for w in result.warnings)
        names = [r[0] for r in query(other, old_root(other), "SELECT domain_name FROM ispcp.domain ORDER BY 1")]
        assert names == sorted(d["name"] for d in other.domains)
        frame = counts_frame(result)
        assert set(frame["CHECK TABLE"]) == {"OK"} and "NO" not in set(frame["match"])
        assert not [s for s in other.secrets if s in ctx.journal_path.read_text()]
    finally:
        other.stop()


def test_a_datadir_filesystem_without_room_is_refused_before_any_change(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk-space pre-check on the real `df -P` of the datadir's filesystem, its free space faked through
    the documented hook (ISPCP_DF_AVAILABLE_KB) to 1 KiB."""
    (mount,) = {fs.mount for fs in disk_space.filesystems(LocalConnection("/"), [str(datadir(world))])}
    monkeypatch.setenv(disk_space.FAKE_ENV, f"{mount}=1")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        mysql_restore.run(ctx_for(world, apply=True))
    message = info.value.result.errors[0]
    assert f"disk space on {mount}" in message and "1.0 KiB free" in message
    assert "staged copies of the backup's databases" in message and "run mysql_restore again" in message
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert work_dirs(world) == []
    mysql = ctx_for(world).mysql
    assert mysql is not None and mysql.status()  # MySQL was never stopped
