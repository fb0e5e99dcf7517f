"""mysql_maintainer: a working /etc/mysql/debian.cnf for the restored grants (and, on request, a new root password)."""

from __future__ import annotations

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import ispcp_login, mysql_creds
from ispcp_lib.facts.mysql_creds import DEBIAN_CNF, Login
from ispcp_lib.ispcp.crypto import random_password
from ispcp_lib.mysql import accounts
from ispcp_lib.mysql.accounts import MAINT_USER

TITLE = "Restore or reset the MySQL maintainer login"
GUIDE = (
    "the passages on /etc/mysql/debian.cnf: put the old maintainer file back after the databases, or, "
    "without it, start the server with --skip-grant-tables, set a new debian-sys-maint password and fill "
    "in the file from the guide's template"
)
EXPLANATION = """
Debian's own scripts (start, stop, log rotation, upgrades) log into MySQL as `debian-sys-maint` with
the password in `/etc/mysql/debian.cnf`. That account lives in the `mysql` database, so after the
restore the grants are the **old** server's: the new server's `debian.cnf` no longer fits, and the
service scripts start failing in ways that look unrelated.

* When the backup has the old `debian.cnf` and its login works against the restored grants, the file
  is put back as it was (mode 0600, owner root; the new server's file is kept as a safety copy).
* Otherwise the password is reset, as the guide describes, but more carefully: the server is restarted
  with `--skip-grant-tables` **and** `--skip-networking` (while the grant tables are off, anyone who
  reaches the server is administrator, so only the local socket is open, and only for seconds),
  `FLUSH PRIVILEGES` re-enables account management, `debian-sys-maint` gets a new random password,
  the server is restarted normally, and `debian.cnf` is written in the guide's layout. The new login
  is then proven, with the file itself and the real `mariadb` client.
* With `mysql_reset_root = True` the same restart also gives MySQL's `root` a new random password, for
  the case where the old one is lost too. It is written to `mysql-root.cnf` in the state directory
  (mode 0600), never shown. If ispCP's `DATABASE_USER` is `root`, its stored password no longer
  matches afterwards; the `keys` step then has to set it (`keys_lost_reset`).

New passwords are registered as secrets at once and appear nowhere in the report. Run again, the step
finds the login working and changes nothing.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "mysql_reset_root",
        bool,
        False,
        "also give MySQL's root a new random password (saved to <state_dir>/mysql-root.cnf, "
        "mode 0600) when its old one is lost",
    ),
)


def _login_row(who: str, source: str, outcome: str) -> dict[str, str]:
    return {"login": who, "from": source, "result": outcome}


def _outcome(login: Login | None, works: bool) -> str:
    if login is None:
        return "absent"
    return "works" if works else "refused"


@action("mysql_maintainer")
def run(ctx: Context, result: Result) -> None:
    if ctx.mysql is None or not ctx.mysql.status():
        raise PreconditionFailed(
            "MySQL server",
            "is not running, so no login can be tried",
            "run mysql_restore first (it starts the server), or start MySQL",
        )
    restore = ctx.results.get("mysql_restore")
    if restore is not None and restore.status == "planned":
        result.note(
            "mysql_restore is only planned in this dry run. After it, the grants are the old server's: "
            "this step will then put the backup's debian.cnf back if it logs in, or reset the password. "
            "What follows judges the grants as they are now."
        )
    rows: list[dict[str, str]] = []
    socket = accounts.socket_of(ctx.target.read_text(DEBIAN_CNF)) or ctx.display_path(ctx.mysql.socket)
    resets: list[str] = []

    backup_login = mysql_creds.backup_admin(ctx)
    target_login = mysql_creds.target_admin(ctx)
    backup_ok = backup_login is not None and ctx.mysql.login_error(backup_login.user, backup_login.password) is None
    target_ok = target_login is not None and ctx.mysql.login_error(target_login.user, target_login.password) is None
    who = backup_login.user if backup_login else MAINT_USER
    rows.append(_login_row(who, "backup's debian.cnf", _outcome(backup_login, backup_ok)))
    who = target_login.user if target_login else MAINT_USER
    rows.append(_login_row(who, "target's debian.cnf", _outcome(target_login, target_ok)))

    if backup_ok:
        assert ctx.backup is not None
        data = ctx.backup.read_bytes(DEBIAN_CNF) or b""
        if ctx.write_file(DEBIAN_CNF, data, 0o600, 0, 0, what="put the backup's debian.cnf back (mode 0600, root)"):
            result.summary = "the backup's debian.cnf logs in: restored"
        else:
            result.summary = "debian.cnf is the backup's and logs in"
    elif target_ok:
        data = ctx.target.read_bytes(DEBIAN_CNF) or b""
        ctx.write_file(DEBIAN_CNF, data, 0o600, 0, 0, what="set debian.cnf to mode 0600, owner root")
        result.summary = "the target's debian.cnf logs in"
    else:
        resets.append(MAINT_USER)

    root_path = accounts.root_cnf_path(ctx)
    if ctx.param("mysql_reset_root"):
        saved = accounts.saved_root(ctx)
        if saved is not None and ctx.mysql.login_error(saved.user, saved.password) is None:
            rows.append(_login_row("root", root_path, "works"))
        else:
            rows.append(_login_row("root", root_path, "absent" if saved is None else "refused"))
            resets.append("root")

    if resets:
        _reset(ctx, result, resets, socket, rows)
    result.table("MySQL logins", pd.DataFrame(rows))
    if not result.changes and not resets:
        result.noop_reason = (result.summary or "the maintainer login works") + (
            "; the saved root login works" if ctx.param("mysql_reset_root") else ""
        )


def _reset(ctx: Context, result: Result, users: list[str], socket: str, rows: list[dict[str, str]]) -> None:
    passwords = {user: random_password(24) for user in users}
    for user, password in passwords.items():
        ctx.secrets.add(password, f"new MySQL password of {user}")
    if "root" in users:
        old_conf = ispcp_login.load_conf(ctx, "target")
        if old_conf is not None and old_conf.get("DATABASE_USER") == "root":
            result.warn(
                "ispCP logs in as root (DATABASE_USER): after the reset its stored DATABASE_PASSWORD no "
                "longer matches; set it with the keys step (keys_lost_reset = True)"
            )
    what = (
        f"restart MySQL with {' '.join(accounts.GRANTLESS_ARGS)} and set a new random password for "
        f"{', '.join(users)}, then restart it normally"
    )
    changed_hosts = ctx.do(what, lambda: _set_in_grantless_session(ctx, passwords, socket))
    if changed_hosts is None:  # a dry run: the files the reset writes first are planned too
        _write_logins(ctx, passwords, socket)
        result.summary = f"planned: new password for {', '.join(users)} (no working login found)"
        return
    proofs = []
    for user, password in passwords.items():
        reason = ctx.mysql.login_error(user, password)
        if reason is not None:
            raise PreconditionFailed(
                f"MySQL login {user}",
                f"still refused after the reset: {reason}",
                "look at the server's error log; the grant tables may be damaged",
            )
        cnf = ctx.target.path(DEBIAN_CNF) if user == MAINT_USER else ctx.state.path(accounts.root_cnf_path(ctx))
        who = accounts.prove_with_client(ctx, cnf)
        if not who.startswith(f"{user}@"):
            raise PreconditionFailed(
                f"MySQL login {user}",
                f"the client logged in as {who!r} with {cnf}",
                "check the file's [client] section",
            )
        hosts = ", ".join(changed_hosts.get(user, []))
        shown = DEBIAN_CNF if user == MAINT_USER else accounts.root_cnf_path(ctx)
        rows.append(_login_row(user, shown, f"reset ({hosts}); proven with the client as {who}"))
        proofs.append(user)
    result.summary = f"new password set and proven for {', '.join(proofs)}"


def _set_in_grantless_session(ctx: Context, passwords: dict[str, str], socket: str) -> dict[str, list[str]]:
    """The new passwords, files first, then MySQL (as the keys step does): a password set in MySQL is never lost."""
    changed: dict[str, list[str]] = {}
    with accounts.grantless_session(ctx) as conn:
        sql = accounts.dialect(ctx)
        hosts = {user: accounts.local_hosts(conn, sql, user) for user in passwords}
        if "root" in passwords and not hosts["root"]:  # before any change: nothing has changed yet
            raise PreconditionFailed(
                "MySQL root",
                "has no local account (localhost, 127.0.0.1, ::1) to reset",
                "create one with CREATE USER in a --skip-grant-tables session",
            )
        _write_logins(ctx, passwords, socket)
        for user, password in passwords.items():
            create = user == MAINT_USER
            changed[user] = accounts.set_password(conn, sql, user, password, create_admin=create, hosts=hosts[user])
    return changed


def _write_logins(ctx: Context, passwords: dict[str, str], socket: str) -> None:
    """debian.cnf on the target and mysql-root.cnf in the state directory (planned in a dry run)."""
    if MAINT_USER in passwords:
        ctx.write_file(
            DEBIAN_CNF,
            accounts.debian_cnf_text(passwords[MAINT_USER], socket),
            0o600,
            0,
            0,
            what=f"write {DEBIAN_CNF} in the guide's layout with the new password",
        )
    if "root" in passwords:
        path = accounts.root_cnf_path(ctx)
        text = accounts.root_cnf_text(passwords["root"], socket)
        ctx.save_state(path, text, what=f"save the new root login to {path} (mode 0600)", announce=True)
