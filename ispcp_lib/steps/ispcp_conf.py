"""ispcp_conf: DEBUG = 1, the old database login in ispcp.conf, the old config as ispcp.old.conf, new IP/host name."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.facts import ispcp_login
from ispcp_lib.facts.ispcp_conf import CONF_PATH, REQUIRED_KEYS, IspcpConf
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.ispcp import queries
from ispcp_lib.ispcp.login_check import require_login, required_confs
from ispcp_lib.mysql import accounts, dialect

TITLE = "Prepare ispcp.conf and ispcp.old.conf for the update"
GUIDE = (
    "the paragraph on switching DEBUG on, entering the old password entries and placing the old config as "
    "ispcp.old.conf, and the remark that a changed host name or IP must be fixed in the database before the "
    "update"
)
EXPLANATION = """
`ispcp-update` rebuilds the new installation from the old one's configuration. It reads the old settings from
`/etc/ispcp/ispcp.old.conf` and logs into the database with `DATABASE_USER`/`DATABASE_PASSWORD` from
`ispcp.conf`, so both files must be right before it runs:

* `ispcp.conf` (the dummy's) gets `DEBUG = 1`, which makes the update print far more detail when it fails,
  and the old server's `DATABASE_HOST`, `DATABASE_NAME`, `DATABASE_USER` and `DATABASE_PASSWORD`, which the
  old keys (restored by the `keys` step) decrypt.
* `ispcp.old.conf` becomes a copy of the old server's `ispcp.conf`. The values the update would otherwise stop
  and ask for (host name, IP, admin address, version, database login) are checked to be in it.

Every edit keeps comments, blank lines and the order of the keys, and is shown as a diff.

If the new server has another IP address or host name, the restored ispCP database still points every domain
at the old one, and the update would write the old address into every Apache, DNS and mail configuration.
The fix belongs **before** the update: the matching row of `server_ips` gets the new address and host name (the
domains and aliases reference that row by id, so they follow without being touched), and `ispcp.old.conf`
gets the new `BASE_SERVER_IP` and `SERVER_HOSTNAME`. The new values are taken from the dummy install's
`ispcp.conf` (or `/etc/hostname`) unless given as parameters; the plan is shown as a table.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "new_server_ip", str, None, "the new server's IPv4 address (default: BASE_SERVER_IP of the target's ispcp.conf)"
    ),
    Param(
        "new_server_hostname",
        str,
        None,
        "the new server's host name (default: SERVER_HOSTNAME of the target's ispcp.conf, else /etc/hostname)",
    ),
)

DB_KEYS = ("DATABASE_HOST", "DATABASE_NAME", "DATABASE_USER", "DATABASE_PASSWORD")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# Columns of server_ips this step may change, with the identity value each holds.
_SERVER_IPS_COLUMNS = {"ip_number": "ip", "ip_domain": "host", "ip_alias": "host"}


@dataclass
class Identity:
    old_ip: str
    new_ip: str
    old_host: str
    new_host: str

    @property
    def ip_changes(self) -> bool:
        return self.old_ip != self.new_ip

    @property
    def host_changes(self) -> bool:
        return self.old_host != self.new_host

    def pair(self, kind: str) -> tuple[str, str]:
        return (self.old_ip, self.new_ip) if kind == "ip" else (self.old_host, self.new_host)


@dataclass
class Update:
    ip_id: int
    column: str
    old: str
    new: str


@action("ispcp_conf")
def run(ctx: Context, result: Result) -> None:
    old, target = required_confs(ctx, "ispcp.old.conf is a copy of it")
    missing = old.missing(REQUIRED_KEYS)
    if missing:
        raise InputError(
            "ispcp.conf (backup)",
            f"lacks {', '.join(missing)}: ispcp-update would stop and ask for them, and the recovery needs them",
            "add the missing 'KEY = value' lines with the old "
            "server's values to the backup's copy (keep the original aside)",
            path=old.path,
        )
    old_path = target.old_conf_path
    previous = IspcpConf.read(ctx.target, old_path)
    if previous is not None:
        ctx.secrets.add(previous.get("DATABASE_PASSWORD"), "DATABASE_PASSWORD (encrypted)")

    creds, password = _credentials(ctx, result, old, previous)
    ident = _identity(ctx, old, target)

    wanted_old = IspcpConf.parse(old.text(), old_path)
    for key in ("DATABASE_USER", "DATABASE_PASSWORD"):  # differ only after a lost-keys reset
        _set(wanted_old, key, creds[key])
    rows = _conf_identity(ctx, result, wanted_old, previous, ident)
    wanted_new = IspcpConf.parse(target.text(), CONF_PATH)
    _set(wanted_new, "DEBUG", "1")
    for key in DB_KEYS:
        _set(wanted_new, key, creds[key])

    login = Login(creds["DATABASE_USER"], password, "old ispcp.conf") if password is not None else None
    updates, db_rows = _plan_database(ctx, result, ident, creds["DATABASE_NAME"], login)
    rows += db_rows
    if rows:
        result.table("Host name and IP change", pd.DataFrame(rows))
    else:
        result.note(f"IP {ident.new_ip} and host name {ident.new_host} are the old server's: nothing to move")
    # Prove the login before anything changes (a dry run only warns: the keys step may be only planned).
    login_ok = password is not None and require_login(
        ctx, result, creds["DATABASE_USER"], password, creds["DATABASE_NAME"]
    )

    for up in updates:
        assert up.column in _SERVER_IPS_COLUMNS  # a fixed column name, never input
        # The old value in the WHERE makes a rerun (or a concurrent edit) change nothing twice.
        ctx.sql(
            f"server_ips row {up.ip_id}: {up.column} {up.old} → {up.new}",
            [queries.change_server_ip(up.column, up.ip_id, up.old, up.new)],
            connect=lambda: _reconnect(ctx, creds["DATABASE_NAME"], login),
        )
    ctx.write_file(CONF_PATH, wanted_new.text(), what="ispcp.conf: DEBUG = 1 and the old server's database login")
    st = ctx.target.stat(CONF_PATH)
    fresh = not ctx.target.exists(old_path)
    meta = (st.mode & 0o777, st.uid, st.gid) if fresh and st is not None else (None, None, None)
    moved = " with the new IP/host name" if ident.ip_changes or ident.host_changes else ""
    if (
        ctx.write_file(
            old_path,
            wanted_old.text(),
            *meta,
            show_diff=not fresh,
            what=f"ispcp.old.conf: the old server's ispcp.conf{moved}",
        )
        and fresh
    ):
        # A new file's diff would list all of it: show what the copy changes against the backup's instead.
        result.diffs.append(
            Diff(f"{old.path} → {old_path}", fileops.unified_diff(old.text(), wanted_old.text(), old_path))
        )
    checks = [{"check": "ispcp.old.conf", "result": "ok", "detail": f"has {', '.join(REQUIRED_KEYS)}"}]
    if ctx.apply:
        ok, message = ispcp_login.check_ispcp_login(ctx)
        if not ok:
            raise PreconditionFailed("ispcp.conf login", message, "read the message: it names the part that failed")
        checks.append({"check": "ispcp.conf + keys log in", "result": "verified", "detail": message})
    else:
        checks.append(
            {
                "check": "old login with the target's keys",
                "result": "verified" if login_ok else "not verified",
                "detail": "decrypts and logs in" if login_ok else "see the warnings",
            }
        )
    result.table("Verification", pd.DataFrame(checks))
    result.data.update(
        {
            "old_ip": ident.old_ip,
            "new_ip": ident.new_ip,
            "old_hostname": ident.old_host,
            "new_hostname": ident.new_host,
            "verified": bool(ctx.apply or login_ok),
        }
    )
    result.summary = (
        f"DEBUG = 1, the old database login and ispcp.old.conf; "
        f"{ident.old_host}/{ident.old_ip} → {ident.new_host}/{ident.new_ip}"
    )
    if not result.changes:
        result.noop_reason = (
            "ispcp.conf already has DEBUG = 1 and the old database login, ispcp.old.conf is in "
            "place, and the database already uses the new IP and host name"
        )


def _set(conf: IspcpConf, key: str, value: str) -> bool:
    """Set only when different, so that an unchanged line keeps its exact spelling."""
    if conf.get(key) == value:
        return False
    conf.set(key, value)
    return True


def _credentials(
    ctx: Context, result: Result, old: IspcpConf, previous: IspcpConf | None
) -> tuple[dict[str, str], str | None]:
    """DATABASE_* to carry, and the decrypted password (None when the target's keys cannot decrypt it yet).

    Normally the old ispcp.conf's login, which the restored keys decrypt. After a lost-keys reset the keys
    step has put the new password into ispcp.old.conf; that one is kept.
    """
    creds = {key: old.get(key) or "" for key in DB_KEYS}
    if creds["DATABASE_PASSWORD"] == "":  # ispCP's "[none]": no password, nothing to decrypt
        return creds, ""
    found = ispcp_login.keysets(ctx, "target")
    for pw in ispcp_login.try_decrypt(old, found, ctx.secrets).values():
        if pw is not None:
            return creds, pw
    if previous is not None and previous.get("DATABASE_PASSWORD") and previous.get("DATABASE_USER"):
        for pw in ispcp_login.try_decrypt(previous, found, ctx.secrets).values():
            if pw is not None:
                result.note(
                    "the old DATABASE_PASSWORD cannot be decrypted (lost keys); the password set by the keys "
                    "step's reset is carried instead"
                )
                return {
                    **creds,
                    "DATABASE_USER": previous.get("DATABASE_USER") or "",
                    "DATABASE_PASSWORD": previous.get("DATABASE_PASSWORD") or "",
                }, pw
    problem = (
        "the target's key files do not decrypt the old DATABASE_PASSWORD: the old keys are not in place yet"
        if found
        else "the target has no readable key file"
    )
    ctx.precondition("key files (target)", problem, "apply the keys step first", dry_run="planned with the old values")
    return creds, None


def _identity(ctx: Context, old: IspcpConf, target: IspcpConf) -> Identity:
    old_ip, old_host = old.get("BASE_SERVER_IP") or "", old.get("SERVER_HOSTNAME") or ""
    given_ip, given_host = ctx.param("new_server_ip"), ctx.param("new_server_hostname")
    new_ip = str(given_ip or target.get("BASE_SERVER_IP") or "")
    new_host = str(given_host or target.get("SERVER_HOSTNAME") or _etc_hostname(ctx) or "")
    for item, value, where in (("BASE_SERVER_IP", old_ip, old.path), ("new_server_ip", new_ip, None)):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise InputError(
                item, f"is {value!r}, not an IP address", "give an IPv4 address such as 192.0.2.20", path=where
            ) from None
        if addr.version != 4:  # server_ips.ip_number is varchar(15)
            raise InputError(
                item, f"is {value}: ispCP 1.0 stores IPv4 addresses only", "give an IPv4 address", path=where
            )
    if not given_ip and new_ip != old_ip and ipaddress.ip_address(new_ip).is_loopback:
        raise InputError(
            "new_server_ip",
            f"would be {new_ip}, taken from the target's ispcp.conf: a loopback "
            "address is the installer's default, not the server's address",
            "set the new_server_ip parameter to the new server's public IPv4 address",
        )
    for item, value, where in (("SERVER_HOSTNAME", old_host, old.path), ("new_server_hostname", new_host, None)):
        if not _HOSTNAME.match(value):
            raise InputError(
                item,
                f"is {value!r}, not a valid host name",
                "give a fully qualified host name such as server.example.com",
                path=where,
            )
    return Identity(old_ip, new_ip, old_host, new_host)


def _etc_hostname(ctx: Context) -> str | None:
    text = (ctx.target.read_text("/etc/hostname") or "").strip()
    return text.splitlines()[0].strip() if text else None


def _conf_identity(
    ctx: Context, result: Result, wanted: IspcpConf, previous: IspcpConf | None, ident: Identity
) -> list[dict[str, str]]:
    """Put the new IP/host name into ispcp.old.conf; one table row per edit."""
    edits = []
    if ident.ip_changes:
        edits.append(("BASE_SERVER_IP", ident.old_ip, ident.new_ip))
    if ident.host_changes:
        edits.append(("SERVER_HOSTNAME", ident.old_host, ident.new_host))
        vhost = wanted.get("BASE_SERVER_VHOST") or ""
        if vhost == ident.old_host or vhost.endswith("." + ident.old_host):
            edits.append(("BASE_SERVER_VHOST", vhost, vhost[: -len(ident.old_host)] + ident.new_host))
        admin = wanted.get("DEFAULT_ADMIN_ADDRESS") or ""
        if admin.endswith("@" + ident.old_host):
            result.warn(
                f"DEFAULT_ADMIN_ADDRESS {admin} is at the old host name; it is left as it is. Change it "
                "in the panel if mail for that host no longer reaches the admin"
            )
    rows = []
    for key, before, after in edits:
        wanted.set(key, after)
        done = previous is not None and previous.get(key) == after
        rows.append({"where": "ispcp.old.conf", "item": key, "old": before, "new": after, "state": _state(ctx, done)})
    return rows


def _state(ctx: Context, already: bool) -> str:
    if already:
        return "already in place"
    return "done" if ctx.apply else "planned"


def _admin_connect(ctx: Context, database: str, login: Login | None) -> Any | None:
    """A connection to the ispCP database: the maintainer login first, else ispCP's own."""
    if ctx.mysql is None or not ctx.mysql.status():
        return None
    for candidate in (accounts.admin_login(ctx), login):
        if candidate is None:
            continue
        try:
            return ctx.mysql.connect(candidate.user, candidate.password, database)
        except pymysql.MySQLError:
            continue
    return None


def _plan_database(
    ctx: Context, result: Result, ident: Identity, database: str, login: Login | None
) -> tuple[list[Update], list[dict[str, str]]]:
    """UPDATEs of server_ips that move the old IP/host name to the new one, and the table rows."""
    if not (ident.ip_changes or ident.host_changes):
        return [], []
    conn = _admin_connect(ctx, database, login)
    if conn is None:
        problem = f"cannot read {database}.server_ips: no login works on the running MySQL server"
        fix = "start MySQL with the restored databases (mysql_restore) and apply the keys step"
        ctx.precondition(
            "ispCP database", problem, fix, dry_run="the database part of the IP/host name change is not planned"
        )
        return [], []
    with conn, conn.cursor() as cur:
        dialect.execute(cur, queries.SERVER_IPS)
        ips = [
            {"ip_id": int(i), "ip_number": number, "ip_domain": domain, "ip_alias": alias}
            for i, number, domain, alias in cur.fetchall()
        ]
        refs: dict[int, list[str]] = {}
        for table, column in (("domain", "domain_ip_id"), ("domain_aliasses", "alias_ip_id")):
            dialect.execute(cur, queries.ip_references(table, column))
            for ip_id, count in cur.fetchall():
                if ip_id is None:  # a row without an IP follows no server_ips row
                    continue
                refs.setdefault(int(ip_id), []).append(f"{count} {'domains' if table == 'domain' else 'aliases'}")
    numbers = {r["ip_number"] for r in ips}
    if ident.ip_changes and ident.old_ip in numbers and ident.new_ip in numbers:
        raise PreconditionFailed(
            "server_ips",
            f"holds both the old IP {ident.old_ip} and the new {ident.new_ip}: moving the old row "
            "would give two rows one address",
            "decide which row the domains should use, move them there "
            "(domain.domain_ip_id, domain_aliasses.alias_ip_id) and delete the other row, then run again",
        )
    updates, rows = [], []
    for r in ips:
        touched = False
        for column, kind in _SERVER_IPS_COLUMNS.items():
            if (kind == "ip" and not ident.ip_changes) or (kind == "host" and not ident.host_changes):
                continue
            before, after = ident.pair(kind)
            item = f"server_ips row {r['ip_id']}: {column}"
            if r[column] == before:
                updates.append(Update(r["ip_id"], column, before, after))
                rows.append(
                    {"where": "database", "item": item, "old": before, "new": after, "state": _state(ctx, False)}
                )
                touched = True
            elif r[column] == after:
                rows.append(
                    {"where": "database", "item": item, "old": before, "new": after, "state": _state(ctx, True)}
                )
                touched = True
        if touched:
            rows.append(
                {
                    "where": "database",
                    "item": f"domains/aliases on row {r['ip_id']}",
                    "old": ", ".join(refs.get(r["ip_id"], ["none"])),
                    "new": "unchanged: they follow the row",
                    "state": "unchanged",
                }
            )
    if ident.ip_changes and not any(r["ip_number"] in (ident.old_ip, ident.new_ip) for r in ips):
        result.warn(
            f"server_ips has no row with the old IP {ident.old_ip} (rows: "
            f"{', '.join(str(r['ip_number']) for r in ips) or 'none'}); the database is left as it is. "
            "Assign the domains their IP in the panel after the update"
        )
    return updates, rows


def _reconnect(ctx: Context, database: str, login: Login | None) -> Any:
    """The session for the server_ips updates: the login that read the rows when planning."""
    conn = _admin_connect(ctx, database, login)
    if conn is None:
        raise PreconditionFailed(
            "ispCP database",
            "the login that read server_ips no longer works",
            "check the MySQL server and run the step again",
        )
    return conn
