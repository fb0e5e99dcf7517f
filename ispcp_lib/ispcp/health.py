"""Health checks after the update (and again in cleanup): is the recovered ispCP whole?

Each check only reads and returns one row: check, result (ok / FAIL / WARN / n/a / info), detail,
and the next step when it failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.facts import ispcp_login, proftpd
from ispcp_lib.facts.ispcp_conf import DEFAULT_DATABASE_NAME, IspcpConf
from ispcp_lib.ispcp import queries
from ispcp_lib.ispcp.update_env import target_conf
from ispcp_lib.mysql import dialect
from ispcp_lib.system import postfix_guard as guard

MAX_LISTED = 5  # problems named per row; the rest are counted
# Where Apache's master writes its pid: 2.4 (Debian 7 on) and 2.2 (Lenny, Squeeze), unless envvars says.
APACHE_PID_FILES = ("/var/run/apache2/apache2.pid", "/var/run/apache2.pid")


@dataclass
class Check:
    check: str
    result: str  # ok | FAIL | WARN | n/a | info
    detail: str
    next_step: str = ""

    @property
    def failed(self) -> bool:
        return self.result == "FAIL"

    def row(self) -> dict[str, str]:
        return {"check": self.check, "result": self.result, "detail": self.detail, "next step": self.next_step}


def read_passwd(ctx: Context) -> dict[str, tuple[int, int]]:
    """name -> (uid, gid) of the target's /etc/passwd; empty when it is missing."""
    out: dict[str, tuple[int, int]] = {}
    for line in (ctx.target.read_text("/etc/passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            out[parts[0]] = (int(parts[2]), int(parts[3]))
    return out


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


# -- the checks ------------------------------------------------------------------------------------


def check_ispcp_login(ctx: Context) -> Check:
    ok, text = ispcp_login.check_ispcp_login(ctx)
    return Check(
        "ispCP logs into its database",
        "ok" if ok else "FAIL",
        text,
        "" if ok else "run the keys and ispcp_conf steps (old key files, old DATABASE_PASSWORD)",
    )


def check_vftp(ctx: Context, conf: IspcpConf | None) -> Check:
    info = proftpd.target_login(ctx, conf)
    ok, text = proftpd.check_vftp(ctx, info)
    return Check("vftp logs in (ProFTPd)", "ok" if ok else "FAIL", text, "" if ok else "run the ftp step")


# Entries under $1 (total) and those not owned by uid $2 / gid $3 (count, then the first few paths):
# the owner test runs on the target, so a mail tree of any size costs one round trip and a short answer.
_OWNERS = r"""
[ -d "$1" ] || exit 3
total=$(find "$1" -mindepth 1 -printf . | wc -c)
wrong=$(find "$1" -mindepth 1 \( ! -uid "$2" -o ! -gid "$3" \) -printf . | wc -c)
echo "$total $wrong"
find "$1" -mindepth 1 \( ! -uid "$2" -o ! -gid "$3" \) -printf '%P\n' | head -n "$4"
"""


def check_mail_dirs(ctx: Context, conf: IspcpConf | None) -> Check:
    name = "mail dirs owned by the mailbox user"
    mail_dir = (conf.get("MTA_VIRTUAL_MAIL_DIR") if conf else None) or "/var/mail/virtual"
    uid = int((conf.get("MTA_MAILBOX_UID") if conf else None) or 1004)
    gid = int((conf.get("MTA_MAILBOX_GID") if conf else None) or 8)
    user = (conf.get("MTA_MAILBOX_UID_NAME") if conf else None) or "vmail"
    done = ctx.target.sh(_OWNERS, ctx.target.path(mail_dir), str(uid), str(gid), str(MAX_LISTED), timeout=3600)
    if done.rc == 3:
        return Check(name, "FAIL", f"{mail_dir} does not exist", "run the user_data step")
    first, *listed = done.out.splitlines() or ["0 0"]
    total, wrong = (int(n) for n in first.split())
    problems = []
    if read_passwd(ctx).get(user, (None,))[0] != uid:
        problems.append(f"no user {user} with uid {uid} in /etc/passwd")
    if wrong:
        shown = ", ".join(f"{mail_dir}/{p}" for p in listed)
        more = f" and {wrong - len(listed)} more" if wrong > len(listed) else ""
        problems.append(f"{wrong} of {total} entries not {uid}:{gid}: {shown}{more}")
    if problems:
        return Check(name, "FAIL", "; ".join(problems), "run the accounts and user_data steps")
    return Check(name, "ok", f"{total} entries under {mail_dir}, all {user} ({uid}:{gid})")


def owners(ctx: Context, paths: list[str]) -> dict[str, int]:
    """uid of each path that is a directory (symlinks followed), in one find on the target."""
    if not paths:
        return {}
    seen = {ctx.target.path(p): p for p in paths}
    done = ctx.target.run(["find", "-H", *seen, "-maxdepth", "0", "-type", "d", "-printf", "%U %p\\0"], timeout=600)
    out = {}
    for record in done.out.split("\0"):
        uid, _, where = record.partition(" ")
        if where in seen and uid.isdigit():
            out[seen[where]] = int(uid)
    return out


def _domain_rows(ctx: Context, conf: IspcpConf | None) -> tuple[list[dict[str, Any]] | None, str]:
    """The domain table via ispCP's own login (else the admin login); None and why when unreadable."""
    if ctx.mysql is None or not ctx.mysql.status():
        return None, "MySQL is not running"
    database = conf.database_name if conf else DEFAULT_DATABASE_NAME
    for login in ispcp_login.database_logins(ctx):
        try:
            with ctx.mysql.connect(login.user, login.password, database) as conn, conn.cursor() as cur:
                dialect.execute(cur, queries.DOMAIN_OWNERS)
                return [dict(zip(("name", "uid", "gid", "status"), r)) for r in cur.fetchall()], login.source
        except Exception:  # try the next login
            continue
    return None, "no working login to the ispCP database"


def check_domains(ctx: Context, conf: IspcpConf | None) -> Check:
    name = "every domain has its web dir and system user"
    rows, source = _domain_rows(ctx, conf)
    if rows is None:
        return Check(name, "FAIL", f"cannot read the domain table: {source}", "make ispCP's database login work")
    www = (conf.get("APACHE_WWW_DIR") if conf else None) or "/var/www/virtual"
    prefix = (conf.get("APACHE_SUEXEC_USER_PREF") if conf else None) or "vu"
    passwd = read_passwd(ctx)
    uids = owners(ctx, [f"{www}/{d['name']}" for d in rows])
    no_dir, wrong_owner, no_user, bad_status = [], [], [], []
    for d in rows:
        path = f"{www}/{d['name']}"
        user = f"{prefix}{d['uid']}"
        if path not in uids:
            no_dir.append(d["name"])
        elif uids[path] != int(d["uid"]):
            wrong_owner.append(d["name"])
        if passwd.get(user, (None,))[0] != int(d["uid"]):
            no_user.append(user)
        if d["status"] != "ok":
            bad_status.append(f"{d['name']} ({str(d['status'])[:60]})")
    problems = []
    if no_dir:
        problems.append(f"no web dir: {_listed(no_dir)}")
    if no_user:
        problems.append(f"no system user: {_listed(no_user)}")
    if wrong_owner:
        problems.append(f"web dir not owned by the domain's uid: {_listed(wrong_owner)}")
    if bad_status:
        problems.append(f"domain_status not ok: {_listed(bad_status)}")
    if problems:
        nxt = (
            "run register_accounts (adds missing users, fixes ownership)"
            if (no_user or wrong_owner)
            else "run the user_data step"
            if no_dir
            else "run ispcp_update again"
        )
        return Check(name, "FAIL", f"{len(rows)} domains; " + "; ".join(problems), nxt)
    return Check(name, "ok", f"{len(rows)} domains: web dirs under {www} owned by their {prefix}<uid> users")


def check_vhosts(ctx: Context, conf: IspcpConf | None) -> Check:
    name = "Apache vhosts written for every domain"
    sites = (conf.get("APACHE_SITES_DIR") if conf else None) or "/etc/apache2/sites-available"
    text = ctx.target.read_text(f"{sites}/ispcp.conf")
    if text is None:
        return Check(
            name,
            "FAIL",
            f"{sites}/ispcp.conf does not exist: the update has not rebuilt the customers' configuration",
            "run ispcp_update",
        )
    rows, source = _domain_rows(ctx, conf)
    if rows is None:
        return Check(name, "WARN", f"vhost file present, but the domain list is unreadable: {source}")
    names = set(re.findall(r"^\s*ServerName\s+(\S+)", text, re.MULTILINE))
    missing = [d["name"] for d in rows if d["name"] not in names]
    if missing:
        return Check(
            name,
            "FAIL",
            f"{len(missing)} of {len(rows)} domains have no vhost: {_listed(missing)}",
            "run ispcp_update again",
        )
    return Check(name, "ok", f"{len(rows)} domains in {sites}/ispcp.conf")


def check_mail_guard(ctx: Context, expect_held: bool = True) -> Check:
    name = "mail guard"
    if not expect_held:
        state = guard.guard_state(ctx)
        return Check(name, "info", "no guard in place" if not state else _guard_text(state))
    ok, text = guard.check_guard(ctx)
    return Check(name, "ok" if ok else "FAIL", text, "" if ok else "run mail_guard before anything starts Postfix")


def _guard_text(state: dict[str, Any]) -> str:
    keys = ("mode", "state", "status", "lifted")
    shown = {k: state[k] for k in keys if k in state}
    return ", ".join(f"{k}: {v}" for k, v in shown.items()) or "guard state recorded"


def check_apache(ctx: Context, conf: IspcpConf | None) -> Check:
    name = "Apache configuration test"
    # CMD_HTTPD is the init script (it has no configtest on Debian); CMD_HTTPD_CTL is apache2ctl.
    ctl = (conf.get("CMD_HTTPD_CTL") if conf else None) or "/usr/sbin/apache2ctl"
    if ctx.target.stat(ctl) is None:
        return Check(name, "n/a", f"{ctl} is not installed on the target")
    rec = ctx.runner.run([ctx.target.path(ctl), "configtest"], check=False, timeout=60)
    out = (rec.stderr or rec.stdout).strip().splitlines()
    if rec.rc == 0:
        return Check(name, "ok", out[-1] if out else "Syntax OK")
    return Check(
        name,
        "FAIL",
        " / ".join(out[-3:]) or f"exit {rec.rc}",
        "run register_accounts: Apache fails when the vu* users of the vhosts are missing",
    )


def apache_pid_files(ctx: Context) -> list[str]:
    """Where the master's pid may be: envvars' APACHE_PID_FILE first, then the 2.4 and 2.2 defaults."""
    envvars = ctx.target.read_text("/etc/apache2/envvars") or ""
    named = re.findall(r"^\s*export\s+APACHE_PID_FILE=(\S+)", envvars, re.MULTILINE)
    given = [p.strip("\"'") for p in named if "$" not in p]
    return [*given, *(p for p in APACHE_PID_FILES if p not in given)]


def check_apache_running(ctx: Context) -> Check:
    name = "Apache runs"
    if ctx.target.stat("/usr/sbin/apache2") is None:
        return Check(name, "n/a", "Apache is not installed on the target")
    tried = apache_pid_files(ctx)
    for pid_file in tried:
        pid = (ctx.target.read_text(pid_file) or "").strip()
        if pid.isdigit() and ctx.target.sh('kill -0 "$1"', pid, timeout=30).rc == 0:
            return Check(name, "ok", f"master process {pid} ({pid_file})")
    return Check(
        name,
        "FAIL",
        f"no running Apache ({' and '.join(tried)} missing or stale)",
        "run register_accounts, then start Apache (/etc/init.d/apache2 start) and read its error log",
    )


def run_checks(ctx: Context, expect_guard: bool = True) -> list[Check]:
    """Every health check, in a fixed order. Nothing here changes the target."""
    conf = target_conf(ctx)
    return [
        check_ispcp_login(ctx),
        check_vftp(ctx, conf),
        check_mail_dirs(ctx, conf),
        check_domains(ctx, conf),
        check_vhosts(ctx, conf),
        check_mail_guard(ctx, expect_guard),
        check_apache(ctx, conf),
        check_apache_running(ctx),
    ]


def frame(checks: list[Check]) -> Any:
    import pandas as pd

    return pd.DataFrame([c.row() for c in checks])


def all_ok(checks: list[Check]) -> bool:
    return not any(c.failed for c in checks)
