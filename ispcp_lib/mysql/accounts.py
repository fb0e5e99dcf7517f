"""MySQL accounts: the admin logins a recovery can use, the grant-less session, and new passwords.

Shared by mysql_restore, mysql_maintainer and customer_databases (a step never imports another step).
Where the logins come from: the target's and the backup's `debian.cnf`, ispCP's own DATABASE_USER
(decrypted with the key files), the root login mysql_maintainer saved in the state directory, and
the secrets_file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import ispcp_login, mysql_creds
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import dumps
from ispcp_lib.mysql.dialect import CURRENT_USER, FLUSH_PRIVILEGES, SERVER_VERSION, Dialect, Statement, execute

MAINT_USER = "debian-sys-maint"
# mysql_maintainer's saved root login, in the state directory.
ROOT_CNF = "mysql-root.cnf"
GRANTLESS_ARGS = ("--skip-grant-tables", "--skip-networking")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


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


def root_cnf_path(ctx: Context) -> str:
    """Where the saved root login lives (on ctx.state, the machine that holds the state directory)."""
    return f"{ctx.state_dir}/{ROOT_CNF}"


def saved_root(ctx: Context) -> Login | None:
    """The root login mysql_maintainer saved (registered as a secret), None when there is none."""
    login = mysql_creds.read_debian_cnf(ctx.state, root_cnf_path(ctx))
    if login is not None:
        ctx.secrets.add(login.password, "MySQL root (reset)")
    return login


def socket_of(text: str | None) -> str | None:
    """The socket a MySQL option file names, None when it names none."""
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "socket" and value.strip():
            return value.strip()
    return None


# --- which login works ----------------------------------------------------------------------------


def admin_logins(ctx: Context) -> list[Login]:
    """Logins that may administer the running server: both debian.cnf files, ispCP's own (decrypted),
    the saved root login and the secrets_file's."""
    out = [login for login in (mysql_creds.target_admin(ctx), mysql_creds.backup_admin(ctx)) if login is not None]
    for side in ("target", "backup"):
        try:
            login = ispcp_login.ispcp_login(ctx, side)
        except InputError:
            login = None
        if login is not None:
            out.append(login)
    out += [login for login in (saved_root(ctx), mysql_creds.secrets_file_admin(ctx)) if login is not None]
    return out


@contextmanager
def session(ctx: Context, login: Login, database: str | None = None) -> Iterator[Any]:
    """A session of the running server with login, closed after."""
    if ctx.mysql is None:
        raise PreconditionFailed("MySQL server", "is not known to this run", "run mysql_restore first")
    conn = ctx.mysql.connect(login.user, login.password, database)
    try:
        yield conn
    finally:
        conn.close()


def opener(ctx: Context, login: Login, database: str | None = None) -> Callable[[], AbstractContextManager[Any]]:
    """Opens a session with login when called: for Context.sql, which connects only when applying."""
    return lambda: session(ctx, login, database)


class LazySession:
    """A session opened on first use (a dry run never opens one), with setup statements run first."""

    def __init__(self, connect: Callable[[], AbstractContextManager[Any]], setup: list[Statement]) -> None:
        self._connect = connect
        self._setup = setup
        self._stack: ExitStack | None = None
        self._cur: Any = None

    def cursor(self) -> Any:
        if self._cur is None:
            self._stack = ExitStack()
            conn = self._stack.enter_context(self._connect())
            self._cur = self._stack.enter_context(conn.cursor())
            for statement in self._setup:
                execute(self._cur, statement)
        return self._cur

    def __enter__(self) -> LazySession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()


def admin_login(ctx: Context) -> Login | None:
    """The first admin login the running server accepts, None when it is down or refuses them all."""
    if ctx.mysql is None or not ctx.mysql.status():
        return None
    return next((lg for lg in admin_logins(ctx) if ctx.mysql.login_error(lg.user, lg.password) is None), None)


def implied_logins(ctx: Context, own_grants_kept: bool) -> list[Login]:
    """Admin logins that should work after the restore: the backup's debian.cnf and ispCP's DATABASE_USER
    (and the target's debian.cnf when the target kept its own `mysql` database)."""
    out: list[Login] = []
    old_cnf = mysql_creds.backup_admin(ctx)
    if old_cnf is not None:
        out.append(Login(old_cnf.user, old_cnf.password, "the backup's debian.cnf"))
    ispcp = ispcp_login.ispcp_login(ctx, "backup")
    if ispcp is not None:
        out.append(Login(ispcp.user, ispcp.password, "the backup's ispcp.conf (DATABASE_USER, decrypted)"))
    if own_grants_kept:
        target = mysql_creds.target_admin(ctx)
        if target is not None:
            out.append(Login(target.user, target.password, "the target's debian.cnf (its grants were kept)"))
    return out


def first_working(ctx: Context, logins: list[Login]) -> Login | None:
    return next((lg for lg in logins if ctx.mysql.login_error(lg.user, lg.password) is None), None)


@contextmanager
def admin_connection(ctx: Context, result: Result, logins: list[Login]) -> Iterator[tuple[Any, Login]]:
    """A connection with the first login that works (each one tried is listed); else a grant-less session."""
    rows = []
    chosen: tuple[Any, Login] | None = None
    for login in logins:
        try:
            conn = ctx.mysql.connect(login.user, login.password)
        except pymysql.MySQLError as exc:
            reason = str(exc.args[1] if len(exc.args) > 1 else exc)
            rows.append({"login": login.user, "from": login.source, "result": f"refused: {reason}"})
            continue
        rows.append({"login": login.user, "from": login.source, "result": "works"})
        if chosen is None:
            chosen = (conn, login)  # kept open for the checks
        else:
            conn.close()
    result.table("Logins the backup implies, tried against the restored server", pd.DataFrame(rows))
    result.data["logins"] = rows
    if chosen is not None:
        try:
            yield chosen
        finally:
            chosen[0].close()
        return
    result.warn(
        "no login that the backup implies works against the restored grants: the tables are checked in a "
        "short --skip-grant-tables --skip-networking session instead; mysql_maintainer sets a new "
        "debian-sys-maint password next"
    )
    result.change("restart MySQL without grant tables (local socket only) to verify, then normally again")
    with grantless_session(ctx) as conn:
        yield conn, Login("root", "", "a --skip-grant-tables session")


def prove_with_client(ctx: Context, cnf: str) -> str:
    """Log in with an option file through the real client on the target; returns CURRENT_USER().

    cnf: the file's path as a command on the target sees it. Socket: the live one.
    """
    argv = [
        dumps.client_exe(ctx.target),
        f"--defaults-file={cnf}",
        f"--socket={ctx.mysql.socket}",
        "--batch",
        "--skip-column-names",
        "-e",
        CURRENT_USER[0],
    ]
    return ctx.runner.run(argv, timeout=60).stdout.strip()


# --- changing passwords ---------------------------------------------------------------------------


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
            _execute(conn, FLUSH_PRIVILEGES).close()  # loads the grant tables, so account statements work
            yield conn
        finally:
            conn.close()
    finally:
        ctx.log("restarting MySQL normally")
        ctx.mysql.stop()
        ctx.mysql.start()


def dialect(ctx: Context) -> Dialect:
    """The running server's SQL dialect (statements chosen by its version)."""
    version = ctx.mysql.version()
    if version is None:
        raise PreconditionFailed("MySQL server", "does not answer, so its version is unknown", "start MySQL")
    return Dialect.for_version(version)


def _execute(conn: Any, statement: Statement) -> Any:
    cur = conn.cursor()
    execute(cur, statement)
    return cur


def local_hosts(conn: Any, sql: Dialect, user: str) -> list[str]:
    """The hosts of `user`'s local accounts (localhost, 127.0.0.1, ::1)."""
    with _execute(conn, sql.user_hosts(user)) as cur:
        return [str(r[0]) for r in cur.fetchall() if str(r[0]) in LOCAL_HOSTS]


def set_password(
    conn: Any, sql: Dialect, user: str, password: str, create_admin: bool, hosts: list[str] | None = None
) -> list[str]:
    """New password for every local account of `user`; creates it (all privileges) when absent and asked to.

    Returns the hosts changed. The statements carry the password as a bound parameter, never in a log.
    hosts: the local hosts, when the caller looked them up already. Statements from the server's dialect.
    """
    hosts = local_hosts(conn, sql, user) if hosts is None else hosts
    if not hosts:
        if not create_admin:
            return []
        for statement in sql.create_user_statements(
            user, "localhost", password, ["ALL PRIVILEGES ON *.*"], grant_option=True
        ):
            _execute(conn, statement).close()
        return ["localhost (created)"]
    for host in hosts:
        for statement in sql.set_password_statements(user, host, password):
            _execute(conn, statement).close()
    _execute(conn, FLUSH_PRIVILEGES).close()
    return hosts


def carried_logins(ctx: Context) -> list[Login]:
    """Logins that work now and live in files of the target (debian.cnf, the saved root login)."""
    out = []
    for login in (mysql_creds.target_admin(ctx), saved_root(ctx)):
        if login is not None and ctx.mysql.login_error(login.user, login.password) is None:
            out.append(login)
    return out


def lost_logins(ctx: Context, logins: list[Login]) -> list[Login]:
    """Those of the logins the running server refuses."""
    return [lg for lg in logins if ctx.mysql.login_error(lg.user, lg.password) is not None]


def reset_passwords(ctx: Context, logins: list[Login]) -> list[str]:
    """Give each login its password again in a grant-less session; returns the users still refused after."""
    with grantless_session(ctx) as conn:
        sql = dialect(ctx)
        for login in logins:
            set_password(conn, sql, login.user, login.password, create_admin=login.user == MAINT_USER)
    return [lg.user for lg in lost_logins(ctx, logins)]


def user_hosts(session: Any, user: str) -> list[str]:
    """The Host column of every account named user, sorted (the statement from the server's dialect)."""
    with _execute(session, Dialect.for_version(_server_version(session)).user_hosts(user)) as cur:
        return sorted(str(row[0]) for row in cur.fetchall())


def set_user_password(
    ctx: Context, session: Any, user: str, password: str, hosts: list[str] | None = None
) -> list[str]:
    """Give every host entry of user (or the hosts given) this password; returns the hosts changed.

    An empty list means the user has no account: creating one is the caller's decision.
    """
    ctx.secrets.add(password, f"MySQL password of {user}")
    sql = Dialect.for_version(_server_version(session))
    todo = user_hosts(session, user) if hosts is None else hosts
    for host in todo:
        for statement in sql.set_password_statements(user, host, password):
            _execute(session, statement).close()
    if todo:
        _execute(session, FLUSH_PRIVILEGES).close()
    return todo


def _server_version(session: Any) -> str:
    with _execute(session, SERVER_VERSION) as cur:
        return str(cur.fetchone()[0])
