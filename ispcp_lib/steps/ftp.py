"""ftp: one vftp password in every proftpd.conf copy and in MySQL, proven by a real login."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout, proftpd
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.mysql import accounts, dialect
from ispcp_lib.mysql.dialect import Dialect, Statement

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

# What ispCP's installer grants vftp (ispcp-reference: "vftp grants").
VFTP_TABLES = ("ftp_group", "ftp_users", "quotalimits", "quotatallies")


def wanted_password(targets: list[proftpd.ConfCopy], backups: list[proftpd.ConfCopy]) -> tuple[str, str] | None:
    """(password, where it comes from): the backup's copies first, then the target's."""
    for copy in [*backups, *targets]:
        if copy.info is not None and copy.info.password:
            return copy.info.password, copy.role
    return None


def _copy_row(copy: proftpd.ConfCopy, password: str | None) -> dict[str, str]:
    if not copy.exists:
        state, agrees = "missing", ""
    elif copy.info is None:
        state, agrees = "no SQLConnectInfo line", ""
    elif not copy.info.password:
        state, agrees = "found", "no password"
    else:
        state, agrees = "found", "yes" if copy.info.password == password else "no"
    return {
        "copy": copy.role,
        "path": copy.where,
        "state": state,
        "SQLConnectInfo (db@host user)": copy.info.describe() if copy.info else "",
        "password agrees": agrees,
    }


@action("ftp")
def run(ctx: Context, result: Result) -> None:
    conf_t = IspcpConf.read(ctx.target, CONF_PATH)
    conf_b = backup_layout.load_old_conf(ctx) if ctx.backup is not None else None
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
    if ctx.mysql is None or not ctx.mysql.status():
        # Checked before any file changes: the login proof (and any fix) needs the server.
        ctx.precondition(
            "MySQL server",
            "is not running, so the vftp login cannot be proven",
            "run mysql_restore (it starts the server) first, then this step",
        )
    result.table("ProFTPd configuration copies", pd.DataFrame([_copy_row(c, password) for c in [*targets, *backups]]))
    result.note(f"The vftp password is taken from the {source}.")

    writes, final_info = _plan_copies(result, targets, backups, password)
    if ctx.apply:
        _check_fixable(ctx, final_info)  # everything the step needs is checked before the first write
    for tgt, text, what, mode in writes:
        ctx.write_file(tgt.logical, text, mode=mode, what=what)
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
    if not ok and accounts.admin_login(ctx) is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "no admin login works (the debian.cnf files, ispCP's own login, a saved root login, the secrets_file), "
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
            mode = bak.mode if not tgt.exists else None
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


def _prove_login(ctx: Context, result: Result, info: proftpd.SqlConnect | None) -> None:
    if info is None or not info.user:
        raise PreconditionFailed(
            "SQLConnectInfo",
            "no usable line (database@host user password) on the target",
            "restore /etc/proftpd.conf from the backup or write the line by hand",
        )
    planned = result.changed > 0
    if ctx.mysql is None or not ctx.mysql.status():
        return  # a dry run: the check before the writes warned already (applying stopped there)
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
        ok, text = _fix_vftp(ctx, result, info, rows)
    result.table("vftp login", pd.DataFrame(rows))
    if ok and not result.changed:
        result.noop_reason = f"every proftpd.conf copy agrees on the vftp password and {text}"
    elif ok:
        result.summary = f"{result.changed} change(s); {text}"
    elif planned or result.changed:
        result.summary = f"{result.changed} change(s) planned; the login is proven when applying"


@dataclass
class VftpFix:
    """What makes vftp match the config: one of a missing user, a wrong password, missing grants."""

    create: bool = False  # no such user: create it at localhost with the installer's grants
    password_hosts: list[str] = field(default_factory=list)  # host entries whose password is set
    grant_hosts: list[str] = field(default_factory=list)  # host entries that get the installer's grants


def _fix_vftp(ctx: Context, result: Result, info: proftpd.SqlConnect, rows: list[dict[str, str]]) -> tuple[bool, str]:
    """Plan (and, applying, make) the MySQL change the failed vftp login needs; the login proven again after."""
    admin = accounts.admin_login(ctx)
    if admin is None:
        ctx.precondition(
            "MySQL admin login",
            "no admin login works (the debian.cnf files, ispCP's own login, a saved root login, the "
            "secrets_file), so the vftp password cannot be set",
            "run the mysql_maintainer step first",
            dry_run="the vftp password change cannot be planned",
        )
        return False, "not fixed (dry run)"
    user = info.user or "vftp"
    login_fails = ctx.mysql.login_error(user, info.password) is not None  # password, not grants
    with ctx.mysql.connect(admin.user, admin.password) as conn:
        fix = plan_fix(info, accounts.user_hosts(conn, user), login_fails)
    ctx.secrets.add(info.password or "", f"MySQL password of {user}")
    for what, statements in fix_statements(accounts.dialect(ctx), info, fix):
        ctx.sql(what, statements, connect=accounts.opener(ctx, admin))
    if not ctx.apply:
        return False, "not fixed (dry run)"
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
            f"MySQL user {user}",
            f"still cannot work after the fix: {text}",
            "check the user's grants and host entries in mysql.user by hand",
        )
    return ok, text


def plan_fix(info: proftpd.SqlConnect, hosts: list[str], login_fails: bool) -> VftpFix:
    """What makes vftp match the config.

    No such user: create it with the installer's grants. Wrong password: set it on every host entry.
    Login works but ftp_users is unreadable: grant what the installer grants.
    """
    if not hosts:
        return VftpFix(create=True, grant_hosts=["localhost"])
    if login_fails:
        return VftpFix(password_hosts=hosts)
    return VftpFix(grant_hosts=hosts)


def fix_statements(server: Dialect, info: proftpd.SqlConnect, fix: VftpFix) -> list[tuple[str, list[Statement]]]:
    """(change line, its statements) for each part of the fix, in the order they are sent."""
    user, password, database = info.user or "vftp", info.password or "", info.database
    parts: list[tuple[str, list[Statement]]] = []
    if fix.create:
        what = f"create the MySQL user {user}@localhost (it is missing from the restored mysql database)"
        parts.append((what, server.create_user_statements(user, "localhost", password)))
    for host in fix.password_hosts:
        what = f"set the MySQL password of {user}@{host} to the one in proftpd.conf"
        parts.append((what, [*server.set_password_statements(user, host, password), dialect.FLUSH_PRIVILEGES]))
    for host in fix.grant_hosts:
        # Identifiers cannot be parameters: the names from SQLConnectInfo are quoted.
        grants = [
            server.grant(
                f"SELECT, INSERT, UPDATE, DELETE ON {dialect.quote_ident(database)}.{dialect.quote_ident(table)}",
                user,
                host,
            )
            for table in VFTP_TABLES
        ]
        tables = "{" + ", ".join(VFTP_TABLES) + "}"
        what = f"grant {user}@{host} SELECT, INSERT, UPDATE, DELETE on {database}.{tables} (the installer's grants)"
        parts.append((what, grants))
    return parts
