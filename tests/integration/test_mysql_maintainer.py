"""mysql_maintainer on a restored sandbox world: the backup's debian.cnf back, or a proven reset."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.context import Context
from ispcp_lib.core.fileops import fingerprint_diff
from ispcp_lib.mysql import accounts
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import mysql_maintainer, mysql_restore
from tests.helpers import ctx_for, read_cnf

DEBIAN_CNF = "etc/mysql/debian.cnf"


@pytest.fixture
def mysql_restored(world: World) -> World:
    """The world after a real mysql_restore: the old server's grants are live."""
    assert mysql_restore.run(ctx_for(world, apply=True)).status == "done"
    return world


def assert_private(path: Path) -> None:
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)


def assert_no_secret(ctx: Context, result, values: list[str]) -> None:
    shown = (
        ctx.journal_path.read_text()
        + result._repr_html_()
        + repr(result)
        + "".join(c.stdout + c.stderr + " ".join(c.argv) for c in result.commands)
    )
    assert values and not [v for v in values if v in shown]


def test_dry_run_changes_nothing(mysql_restored: World) -> None:
    before = stable_fingerprint(mysql_restored)
    result = mysql_maintainer.run(ctx_for(mysql_restored))
    assert result.status == "planned"
    assert result.changes == ["put the backup's debian.cnf back (mode 0600, root)"]
    assert fingerprint_diff(before, stable_fingerprint(mysql_restored)) == []


def test_the_backups_debian_cnf_comes_back_and_a_second_apply_is_a_noop(mysql_restored: World) -> None:
    ctx = ctx_for(mysql_restored, apply=True)
    result = mysql_maintainer.run(ctx)
    assert result.status == "done", result.errors
    target = mysql_restored.target_root / DEBIAN_CNF
    assert target.read_bytes() == (mysql_restored.backup_root / DEBIAN_CNF).read_bytes()
    assert_private(target)
    assert len(result.backups) == 1 and Path(result.backups[0]).read_bytes() != target.read_bytes()
    login = read_cnf(target)
    assert mysql_restored.target_mysql().login_error(login.user, login.password) is None
    again = mysql_maintainer.run(ctx)
    assert again.status == "noop" and "is the backup's and logs in" in again.noop_reason


def test_reset_when_the_backup_has_no_debian_cnf(mysql_restored: World) -> None:
    (mysql_restored.backup_root / DEBIAN_CNF).unlink()
    target = mysql_restored.target_root / DEBIAN_CNF
    stale = read_cnf(target)  # the new server's file: its password fits the replaced grants no more
    assert mysql_restored.target_mysql().login_error(stale.user, stale.password) is not None
    ctx = ctx_for(mysql_restored, apply=True)
    known = set(ctx.secrets.values())
    result = mysql_maintainer.run(ctx)
    assert result.status == "done", result.errors
    assert "proven" in result.summary and "debian-sys-maint" in result.summary

    text = target.read_text()
    assert text.startswith("# Automatically generated for Debian scripts. DO NOT TOUCH!\n[client]\n")
    assert "[mysql_upgrade]" in text and "basedir  = /usr" in text and "socket   = /var/run/mysqld/mysqld.sock" in text
    assert_private(target)
    login = read_cnf(target)
    assert login.user == "debian-sys-maint" and login.password != stale.password
    assert mysql_restored.target_mysql().login_error(login.user, login.password) is None
    assert login.password in ctx.secrets and login.password not in known
    assert_no_secret(ctx, result, [login.password])
    logins = next(t.frame for t in result.tables if t.title == "MySQL logins")
    assert "proven with the client as debian-sys-maint@localhost" in " ".join(logins["result"])
    # Back to normal: networking on, grant tables enforced.
    socket.create_connection(("127.0.0.1", int(mysql_restored.mysql_params["port"])), timeout=5).close()
    assert mysql_restored.target_mysql().login_error("root", "") is not None

    again = mysql_maintainer.run(ctx)
    assert again.status == "noop" and "the target's debian.cnf logs in" in again.noop_reason


def test_lost_root_password_is_reset_with_the_same_mechanism(mysql_restored: World) -> None:
    old_root = mysql_restored.credentials["old"]["root_password"]
    ctx = ctx_for(mysql_restored, apply=True, mysql_reset_root=True)
    result = mysql_maintainer.run(ctx)
    assert result.status == "done", result.errors
    saved = ctx.state_dir / accounts.ROOT_CNF
    assert_private(saved)
    root = read_cnf(saved)
    assert root.user == "root" and root.password != old_root
    srv = mysql_restored.target_mysql()
    assert srv.login_error("root", root.password) is None and srv.login_error("root", old_root) is not None
    assert any("DATABASE_USER" in w for w in result.warnings)
    backup_cnf = (mysql_restored.backup_root / DEBIAN_CNF).read_bytes()
    assert (mysql_restored.target_root / DEBIAN_CNF).read_bytes() == backup_cnf
    assert_no_secret(ctx, result, [root.password])
    again = mysql_maintainer.run(ctx)
    assert again.status == "noop" and "the saved root login works" in again.noop_reason


def test_dry_run_before_the_restore_says_the_plan_depends_on_it(world: World) -> None:
    ctx = ctx_for(world)
    mysql_restore.run(ctx)
    result = mysql_maintainer.run(ctx)
    assert any("mysql_restore is only planned" in n for n in result.notes)


def test_server_not_running(stopped_world: World) -> None:
    before = stable_fingerprint(stopped_world)
    with pytest.raises(StepFailed) as info:
        mysql_maintainer.run(ctx_for(stopped_world, apply=True))
    assert "not running" in info.value.result.errors[0] and "mysql_restore" in info.value.result.errors[0]
    assert fingerprint_diff(before, stable_fingerprint(stopped_world)) == []


def test_reset_creates_the_maintainer_when_the_old_grants_lack_it(mysql_restored: World) -> None:
    """An old server without Debian's maintainer account: the grant-less session creates it."""
    old_root = mysql_restored.credentials["old"]["root_password"]
    conn = mysql_restored.target_mysql().connect("root", old_root)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP USER 'debian-sys-maint'@'localhost'")
    finally:
        conn.close()
    (mysql_restored.backup_root / DEBIAN_CNF).unlink()
    result = mysql_maintainer.run(ctx_for(mysql_restored, apply=True))
    assert result.status == "done", result.errors
    logins = next(t.frame for t in result.tables if t.title == "MySQL logins")
    assert "localhost (created)" in " ".join(logins["result"])
    login = read_cnf(mysql_restored.target_root / DEBIAN_CNF)
    conn = mysql_restored.target_mysql().connect(login.user, login.password)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GRANTS")
            grants = " ".join(r[0] for r in cur.fetchall())
    finally:
        conn.close()
    assert "GRANT ALL PRIVILEGES ON *.* TO `debian-sys-maint`@`localhost`" in grants and "WITH GRANT OPTION" in grants


def test_a_failed_grantless_start_ends_in_a_normal_server(
    mysql_restored: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grant-less restart fails (an option the server refuses): the server must come back normally."""
    (mysql_restored.backup_root / DEBIAN_CNF).unlink()
    target_cnf = (mysql_restored.target_root / DEBIAN_CNF).read_bytes()
    monkeypatch.setattr(accounts, "GRANTLESS_ARGS", (*accounts.GRANTLESS_ARGS, "--no-such-option"))
    with pytest.raises(StepFailed) as info:
        mysql_maintainer.run(ctx_for(mysql_restored, apply=True))
    assert "did not come up" in info.value.result.errors[0]
    srv = mysql_restored.target_mysql()
    assert srv.status()
    assert srv.login_error("root", "") is not None  # grant tables in force, not a --skip-grant-tables server
    assert srv.login_error("root", mysql_restored.credentials["old"]["root_password"]) is None
    assert (mysql_restored.target_root / DEBIAN_CNF).read_bytes() == target_cnf


def test_root_without_a_local_account_is_refused_before_any_password_changes(mysql_restored: World) -> None:
    old = mysql_restored.credentials["old"]
    srv = mysql_restored.target_mysql()
    conn = srv.connect("root", old["root_password"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT Host FROM mysql.user WHERE User = 'root'")
            for (host,) in cur.fetchall():
                if host in ("localhost", "127.0.0.1", "::1"):
                    cur.execute("DROP USER 'root'@%s", (host,))
    finally:
        conn.close()
    (mysql_restored.backup_root / DEBIAN_CNF).unlink()  # the maintainer is reset too, in the same session
    target_cnf = (mysql_restored.target_root / DEBIAN_CNF).read_bytes()
    ctx = ctx_for(mysql_restored, apply=True, mysql_reset_root=True)
    with pytest.raises(StepFailed) as info:
        mysql_maintainer.run(ctx)
    assert "MySQL root" in info.value.result.errors[0] and "no local account" in info.value.result.errors[0]
    # Nothing changed: the maintainer still has its old password, no file holds a password MySQL lacks.
    assert srv.status() and srv.login_error("debian-sys-maint", old["debian_sys_maint"]) is None
    assert (mysql_restored.target_root / DEBIAN_CNF).read_bytes() == target_cnf
    assert not (ctx.state_dir / accounts.ROOT_CNF).exists()
