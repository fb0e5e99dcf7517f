"""mysql_maintainer: a working /etc/mysql/debian.cnf for the restored grants (and, on request, a new root password)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import ispcp_login as il
from ispcp_lib.facts import mysql_creds
from ispcp_lib.ispcp.crypto import random_password
from ispcp_lib.mysql import dumps as sql_dumps

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

DEBIAN_CNF = "/etc/mysql/debian.cnf"
MAINT_USER = "debian-sys-maint"
ROOT_CNF = "mysql-root.cnf"
GRANTLESS_ARGS = ("--skip-grant-tables", "--skip-networking")


def debian_cnf_text(password: str, socket: str) -> str:
    """The guide's debian.cnf template, filled in."""
    return (
        "# Automatically generated for Debian scripts. DO NOT TOUCH!\n"
        "[client]\n"
        "host     = localhost\n"
        f"user     = {MAINT_USER}\n"
        f"password = {password}\n"
        f"socket   = {socket}\n"
        "[mysql_upgrade]\n"
        f"user     = {MAINT_USER}\n"
        f"password = {password}\n"
        f"socket   = {socket}\n"
        "basedir  = /usr\n"
    )


def root_cnf_text(password: str, socket: str) -> str:
    return (
        "# MySQL root login set by ispcp-recovery (mysql_maintainer). Keep it safe, or delete it.\n"
        f"[client]\nuser     = root\npassword = {password}\nsocket   = {socket}\n"
    )


def _socket_line(path: Path) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "socket" and value.strip():
            return value.strip()
    return None


@contextmanager
def grantless_session(ctx: Context) -> Iterator[Any]:
    """The server restarted without grant tables or networking; yields a root connection, restarts normally after."""
    ctx.log("restarting MySQL with --skip-grant-tables --skip-networking (local socket only)")
    try:
        # Inside the try: a grant-less start that fails or times out must still end in a normal server,
        # never in no server or one half-started without grant tables.
        ctx.mysql.restart(list(GRANTLESS_ARGS))
        conn = ctx.mysql.connect("root", None)
        try:
            with conn.cursor() as cur:
                cur.execute("FLUSH PRIVILEGES")  # loads the grant tables, so ALTER/CREATE USER work
            yield conn
        finally:
            conn.close()
    finally:
        ctx.log("restarting MySQL normally")
        ctx.mysql.stop()
        ctx.mysql.start()


def local_hosts(conn: Any, user: str) -> list[str]:
    """The hosts of `user`'s local accounts (localhost, 127.0.0.1, ::1)."""
    with conn.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (user,))
        return [r[0] for r in cur.fetchall() if r[0] in ("localhost", "127.0.0.1", "::1")]


def set_password(conn: Any, user: str, password: str, create_admin: bool, hosts: list[str] | None = None) -> list[str]:
    """New password for every local account of `user`; creates it (all privileges) when absent and asked to.

    Returns the hosts changed. The statement carries the password as a bound parameter, never in a log.
    hosts: the local hosts, when the caller looked them up already.
    """
    hosts = local_hosts(conn, user) if hosts is None else hosts
    with conn.cursor() as cur:
        if not hosts:
            if not create_admin:
                return []
            cur.execute("CREATE USER %s@'localhost' IDENTIFIED BY %s", (user, password))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'localhost' WITH GRANT OPTION", (user,))
            return ["localhost (created)"]
        for host in hosts:
            cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
        cur.execute("FLUSH PRIVILEGES")
    return hosts


def prove_with_client(ctx: Context, cnf: Path) -> str:
    """Log in with the written file through the real client; returns CURRENT_USER(). Socket: the live one."""
    argv = [
        sql_dumps.client_exe(),
        f"--defaults-file={cnf}",
        f"--socket={ctx.mysql.socket}",
        "--batch",
        "--skip-column-names",
        "-e",
        "SELECT CURRENT_USER()",
    ]
    rec = ctx.runner.run(argv, timeout=60)
    return rec.stdout.strip()


def _login_row(who: str, source: str, outcome: str) -> dict[str, str]:
    return {"login": who, "from": source, "result": outcome}


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
    target_path = ctx.t(DEBIAN_CNF)
    socket = _socket_line(target_path) or ctx.display_path(ctx.mysql.socket)
    resets: list[str] = []

    backup_login = mysql_creds.backup_admin(ctx)
    target_login = mysql_creds.target_admin(ctx)
    backup_ok = backup_login is not None and ctx.mysql.can_login(backup_login.user, backup_login.password) is None
    target_ok = target_login is not None and ctx.mysql.can_login(target_login.user, target_login.password) is None
    rows.append(
        _login_row(
            backup_login.user if backup_login else MAINT_USER,
            "backup's debian.cnf",
            "absent" if backup_login is None else "works" if backup_ok else "refused",
        )
    )
    rows.append(
        _login_row(
            target_login.user if target_login else MAINT_USER,
            "target's debian.cnf",
            "absent" if target_login is None else "works" if target_ok else "refused",
        )
    )

    if backup_ok:
        data = ctx.b(DEBIAN_CNF).read_bytes()
        if ctx.write_file(target_path, data, 0o600, 0, 0, what="put the backup's debian.cnf back (mode 0600, root)"):
            result.summary = "the backup's debian.cnf logs in: restored"
        else:
            result.summary = "debian.cnf is the backup's and logs in"
    elif target_ok:
        ctx.write_file(
            target_path, target_path.read_bytes(), 0o600, 0, 0, what="set debian.cnf to mode 0600, owner root"
        )
        result.summary = "the target's debian.cnf logs in"
    else:
        resets.append(MAINT_USER)

    root_path = ctx.state_dir / ROOT_CNF
    if ctx.param("mysql_reset_root"):
        saved = mysql_creds.read_debian_cnf(root_path)
        if saved is not None:
            ctx.secrets.add(saved.password, "MySQL root (reset)")
        if saved is not None and ctx.mysql.can_login(saved.user, saved.password) is None:
            rows.append(_login_row("root", ctx.display_path(root_path), "works"))
        else:
            rows.append(_login_row("root", ctx.display_path(root_path), "absent" if saved is None else "refused"))
            resets.append("root")

    if resets:
        _reset(ctx, result, resets, socket, target_path, root_path, rows)
    result.table("MySQL logins", pd.DataFrame(rows))
    if not result.changes and not resets:
        result.noop_reason = (result.summary or "the maintainer login works") + (
            "; the saved root login works" if ctx.param("mysql_reset_root") else ""
        )


def _reset(
    ctx: Context,
    result: Result,
    users: list[str],
    socket: str,
    target_path: Path,
    root_path: Path,
    rows: list[dict[str, str]],
) -> None:
    passwords = {user: random_password(24) for user in users}
    for user, password in passwords.items():
        ctx.secrets.add(password, f"new MySQL password of {user}")
    result.change(
        f"restart MySQL with {' '.join(GRANTLESS_ARGS)} and set a new random password for "
        f"{', '.join(users)}, then restart it normally"
    )
    if "root" in users:
        old_conf = il.load_conf(ctx, "target")
        if old_conf is not None and old_conf.get("DATABASE_USER") == "root":
            result.warn(
                "ispCP logs in as root (DATABASE_USER): after the reset its stored DATABASE_PASSWORD no "
                "longer matches; set it with the keys step (keys_lost_reset = True)"
            )
    changed_hosts: dict[str, list[str]] = {}
    if ctx.apply:
        with grantless_session(ctx) as conn:
            hosts = {user: local_hosts(conn, user) for user in passwords}
            if "root" in users and not hosts["root"]:  # before any ALTER: nothing has changed yet
                raise PreconditionFailed(
                    "MySQL root",
                    "has no local account (localhost, 127.0.0.1, ::1) to reset",
                    "create one with CREATE USER in a --skip-grant-tables session",
                )
            # Files first, then MySQL (as the keys step does): a password set in MySQL is never lost.
            _write_logins(ctx, passwords, socket, target_path, root_path)
            for user, password in passwords.items():
                changed_hosts[user] = set_password(
                    conn, user, password, create_admin=user == MAINT_USER, hosts=hosts[user]
                )
    else:
        _write_logins(ctx, passwords, socket, target_path, root_path)
    if not ctx.apply:
        result.summary = f"planned: new password for {', '.join(users)} (no working login found)"
        return
    proofs = []
    for user, password in passwords.items():
        reason = ctx.mysql.can_login(user, password)
        hosts = ", ".join(changed_hosts.get(user, []))
        if reason is not None:
            raise PreconditionFailed(
                f"MySQL login {user}",
                f"still refused after the reset: {reason}",
                "look at the server's error log; the grant tables may be damaged",
            )
        cnf = target_path if user == MAINT_USER else root_path
        who = prove_with_client(ctx, cnf)
        if not who.startswith(f"{user}@"):
            raise PreconditionFailed(
                f"MySQL login {user}",
                f"the client logged in as {who!r} with {cnf}",
                "check the file's [client] section",
            )
        rows.append(_login_row(user, ctx.display_path(cnf), f"reset ({hosts}); proven with the client as {who}"))
        proofs.append(user)
    result.summary = f"new password set and proven for {', '.join(proofs)}"


def _write_logins(ctx: Context, passwords: dict[str, str], socket: str, target_path: Path, root_path: Path) -> None:
    """debian.cnf and mysql-root.cnf with the new passwords (planned in a dry run)."""
    if MAINT_USER in passwords:
        ctx.write_file(
            target_path,
            debian_cnf_text(passwords[MAINT_USER], socket),
            0o600,
            0,
            0,
            what=f"write {DEBIAN_CNF} in the guide's layout with the new password",
        )
    if "root" in passwords:
        if ctx.apply:
            ctx.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ctx.write_file(
            root_path,
            root_cnf_text(passwords["root"], socket),
            0o600,
            0,
            0,
            what=f"save the new root login to {ctx.display_path(root_path)} (mode 0600)",
        )
