"""ftp: one vftp password in every proftpd.conf copy and in MySQL, proven by a real login."""

from __future__ import annotations

import stat

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts import mysql_creds, proftpd
from ispcp_lib.facts.ispcp_conf import IspcpConf

TITLE = "The FTP server's database login"
GUIDE = "the section on giving the FTP server a valid database login (old proftpd.conf, or the vftp password)"
EXPLANATION = """
ProFTPd checks FTP logins against ispCP's database, logging into MySQL as `vftp` with a password
written in plain text on its `SQLConnectInfo` line. The restored `mysql` database holds the old
server's vftp password, while the freshly installed ProFTPd config holds the dummy install's. The
guide offers two ways out: put the old `proftpd.conf` back, or set vftp's MySQL password to the one in
the config. Either way config and database must agree.

There is a trap: ispCP reads the password from its own working copy,
`/etc/ispcp/proftpd/working/proftpd.conf`, not from the file ProFTPd uses. If the two disagree, the
update later stops and asks for the vftp password. So this step restores the backup's `proftpd.conf`
when there is one, makes every copy agree on the password (the backup's wins), shows each change as
a diff with the password masked, and then proves that vftp logs in and can read `ftp_users`. Only if
it cannot does it set vftp's password in MySQL, for every host entry of that user.
"""
PARAMETERS: tuple[Param, ...] = ()

CONF_PATH = "/etc/ispcp/ispcp.conf"
# What ispCP's installer grants vftp (ispcp-reference: "vftp grants").
VFTP_TABLES = ("ftp_group", "ftp_users", "quotalimits", "quotatallies")


def _conf(ctx: Context, root: str) -> IspcpConf | None:
    try:
        if root == "target":
            path = ctx.t(CONF_PATH)
            return IspcpConf.load(path, display=CONF_PATH) if path.is_file() else None
        return bl.load_old_conf(ctx)
    except InputError as exc:
        raise InputError(exc.item, exc.problem, exc.fix, exc.path) from None


def wanted_password(targets: list[proftpd.ConfCopy], backups: list[proftpd.ConfCopy]) -> tuple[str, str] | None:
    """(password, where it comes from): the backup's copies first, then the target's."""
    for copy in [*backups, *targets]:
        if copy.info is not None and copy.info.password:
            return copy.info.password, copy.role
    return None


def _copy_row(copy: proftpd.ConfCopy, password: str | None, ctx: Context) -> dict[str, str]:
    if not copy.exists:
        state, agrees = "missing", ""
    elif copy.info is None:
        state, agrees = "no SQLConnectInfo line", ""
    else:
        state = "found"
        agrees = "yes" if copy.info.password == password else ("no password" if not copy.info.password else "no")
    where = ctx.display_path(copy.path) if copy.role.startswith("target") else str(copy.path)
    return {
        "copy": copy.role,
        "path": where,
        "state": state,
        "SQLConnectInfo (db@host user)": copy.info.describe() if copy.info else "",
        "password agrees": agrees,
    }


@action("ftp")
def run(ctx: Context, result: Result) -> None:
    conf_t = _conf(ctx, "target")
    conf_b = _conf(ctx, "backup") if ctx.backup_root is not None else None
    targets = proftpd.target_copies(ctx, conf_t)
    backups = proftpd.backup_copies(ctx, conf_b or conf_t)
    found = wanted_password(targets, backups)
    if found is None:
        raise PreconditionFailed(
            "vftp password",
            "no proftpd.conf copy (target or backup) has an SQLConnectInfo line with a password",
            f"add 'SQLConnectInfo ispcp@localhost vftp <password>' to {proftpd.conf_paths(conf_t)[0]} on the target "
            "and run this step again (it then sets that password in MySQL)",
        )
    password, source = found
    if ctx.apply and (ctx.mysql is None or not ctx.mysql.status()):
        # Checked before any file changes: the login proof (and any fix) needs the server.
        raise PreconditionFailed(
            "MySQL server",
            "is not running, so the vftp login cannot be proven",
            "run mysql_restore (it starts the server) first, then this step",
        )
    result.table(
        "ProFTPd configuration copies", pd.DataFrame([_copy_row(c, password, ctx) for c in [*targets, *backups]])
    )
    result.note(f"The vftp password is taken from the {source}.")

    writes, final_info = _plan_copies(result, targets, backups, password)
    if ctx.apply:
        _check_fixable(ctx, final_info)  # everything the step needs is checked before the first write
    for tgt, text, what, mode in writes:
        ctx.write_file(tgt.path, text, mode=mode, what=what)
    _prove_login(ctx, result, final_info)


def _check_fixable(ctx: Context, info: proftpd.SqlConnect | None) -> None:
    """Refuse before any file changes when the login could not be proven or fixed afterwards."""
    if info is None or not info.user:
        raise PreconditionFailed(
            "SQLConnectInfo",
            "no usable line (database@host user password) on the target",
            "restore /etc/proftpd.conf from the backup or write the line by hand",
        )
    ok, _text = proftpd.check_vftp(ctx, info)
    if not ok and mysql_creds.working_admin(ctx) is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "neither the target's nor the backup's debian.cnf logs in, "
            f"and {info.user} needs a password or grant change in MySQL that only an admin can "
            "make; nothing was changed",
            "run the mysql_maintainer step first, then this step",
        )


Write = tuple[proftpd.ConfCopy, str, str, int | None]  # (copy, new text, what, mode)


def _plan_copies(
    result: Result, targets: list[proftpd.ConfCopy], backups: list[proftpd.ConfCopy], password: str
) -> tuple[list[Write], proftpd.SqlConnect | None]:
    """What to write: the backup's files where present, the password in every target copy. Writes nothing."""
    writes: list[Write] = []
    final: proftpd.SqlConnect | None = None
    by_kind = {
        "FTPD_CONF_FILE": (targets[0], backups[0] if backups else None),
        "working copy": (targets[1], backups[1] if len(backups) > 1 else None),
    }
    for kind, (tgt, bak) in by_kind.items():
        text, what, mode = tgt.text, None, None
        if bak is not None and bak.exists and bak.text != tgt.text:
            text = bak.text
            what = f"restore {kind} {tgt.logical} from the backup"
            mode = stat.S_IMODE(bak.path.stat().st_mode) if not tgt.exists else None
        if text is None:
            # No copy here and none in the backup: ispCP rebuilds a missing working copy from ProFTPd's file.
            source = targets[0].text if kind == "working copy" else None
            if source is None:
                result.warn(f"{tgt.logical} does not exist on the target and the backup has none: not created")
                continue
            text, what, mode = source, f"create {kind} {tgt.logical} from {targets[0].logical}", 0o600
        info = proftpd.parse(text)
        if info is None:
            result.warn(f"{tgt.logical} has no SQLConnectInfo line: ProFTPd will not use MySQL with it")
            continue
        if info.password != password:
            text = proftpd.with_password(text, password)
            what = (what + " and set the vftp password") if what else f"set the vftp password in {tgt.logical}"
            info = proftpd.parse(text)
        if what:
            writes.append((tgt, text, what, mode))
        if kind == "FTPD_CONF_FILE" or final is None:
            final = info
    infos = {(i.database, i.effective_host, i.user) for i in (proftpd.parse(c.text or "") for c in targets) if i}
    if final is not None and len(infos | {(final.database, final.effective_host, final.user)}) > 1:
        result.warn(
            "the ProFTPd copies name different databases or users in SQLConnectInfo; ProFTPd uses "
            f"{targets[0].logical}: {final.describe()}"
        )
    return writes, final


def _vftp_hosts(ctx: Context, user: str) -> list[str] | None:
    admin = mysql_creds.working_admin(ctx)
    if admin is None:
        return None
    with ctx.mysql.connect(admin.user, admin.password) as conn, conn.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host", (user,))
        return [r[0] for r in cur.fetchall()]


def _admin_sql(ctx: Context, statements: list[tuple[str, tuple]]) -> None:
    admin = mysql_creds.working_admin(ctx)
    if admin is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "neither the target's nor the backup's debian.cnf logs in",
            "run the mysql_maintainer step first",
        )
    with ctx.mysql.connect(admin.user, admin.password) as conn, conn.cursor() as cur:
        for sql, args in statements:
            cur.execute(sql, args)
        cur.execute("FLUSH PRIVILEGES")


def _prove_login(ctx: Context, result: Result, info: proftpd.SqlConnect | None) -> None:
    if info is None or not info.user:
        raise PreconditionFailed(
            "SQLConnectInfo",
            "no usable line (database@host user password) on the target",
            "restore /etc/proftpd.conf from the backup or write the line by hand",
        )
    planned = result.changed > 0
    if ctx.mysql is None or not ctx.mysql.status():
        message = "MySQL is not running, so the vftp login cannot be proven"
        if ctx.apply:
            raise PreconditionFailed("MySQL server", message, "run mysql_restore (it starts the server) first")
        result.warn(message + " (dry run)")
        return
    ok, text = proftpd.check_vftp(ctx, info)
    rows = [
        {
            "check": "vftp login and SELECT on ftp_users",
            "when": "before",
            "result": "ok" if ok else "FAIL",
            "detail": text,
        }
    ]
    if not ok:
        login_fails = ctx.mysql.can_login(info.user, info.password) is not None  # password, not grants
        hosts = _vftp_hosts(ctx, info.user)
        if hosts is None:
            if ctx.apply:
                raise PreconditionFailed(
                    "MySQL admin login",
                    "neither the target's nor the backup's debian.cnf logs in, so the vftp password cannot be set",
                    "run the mysql_maintainer step first",
                )
            result.warn("no working MySQL admin login: cannot plan the vftp password change (dry run)")
        else:
            statements = _fix_statements(result, info, hosts, login_fails)
            if ctx.apply:
                _admin_sql(ctx, statements)
                ok, text = proftpd.check_vftp(ctx, info)
                rows.append(
                    {
                        "check": "vftp login and SELECT on ftp_users",
                        "when": "after",
                        "result": "ok" if ok else "FAIL",
                        "detail": text,
                    }
                )
                if not ok:
                    result.table("vftp login", pd.DataFrame(rows))
                    raise PreconditionFailed(
                        f"MySQL user {info.user}",
                        f"still cannot work after the fix: {text}",
                        "check the user's grants and host entries in mysql.user by hand",
                    )
    result.table("vftp login", pd.DataFrame(rows))
    if ok and not result.changed:
        result.noop_reason = f"every proftpd.conf copy agrees on the vftp password and {text}"
    elif ok:
        result.summary = f"{result.changed} change(s); {text}"
    elif planned or result.changed:
        result.summary = f"{result.changed} change(s) planned; the login is proven when applying"


def _fix_statements(
    result: Result, info: proftpd.SqlConnect, hosts: list[str], login_fails: bool
) -> list[tuple[str, tuple]]:
    """SQL that makes vftp match the config.

    No such user: create it with the installer's grants. Wrong password: set it on every host entry.
    Login works but ftp_users is unreadable: grant what the installer grants.
    """
    user, password, database = info.user or "vftp", info.password or "", info.database
    statements: list[tuple[str, tuple]] = []
    if not hosts:
        hosts = ["localhost"]
        result.change(f"create the MySQL user {user}@localhost (it is missing from the restored mysql database)")
        statements.append(("CREATE USER %s@%s IDENTIFIED BY %s", (user, "localhost", password)))
    elif login_fails:
        for host in hosts:
            result.change(f"set the MySQL password of {user}@{host} to the one in proftpd.conf")
            statements.append(("SET PASSWORD FOR %s@%s = PASSWORD(%s)", (user, host, password)))
        return statements
    db = database.replace("`", "``")  # identifiers cannot be parameters: quote the name from SQLConnectInfo
    for host in hosts:
        result.change(
            f"grant {user}@{host} SELECT, INSERT, UPDATE, DELETE on {database}."
            f"{{{', '.join(VFTP_TABLES)}}} (the installer's grants)"
        )
        for table in VFTP_TABLES:
            statements.append((f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.`{table}` TO %s@%s", (user, host)))
    return statements
