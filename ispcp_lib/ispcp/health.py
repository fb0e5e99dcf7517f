"""Health checks after the update (and again in cleanup): is the recovered ispCP whole?

Each check only reads and returns one row: check, result (ok / FAIL / WARN / n/a / info), detail,
and the next step when it failed.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts import ispcp_login, mysql_creds, proftpd
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.steps import mail_guard

CONF_PATH = "/etc/ispcp/ispcp.conf"
MAX_LISTED = 5  # problems named per row; the rest are counted


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


def target_conf(ctx: Context) -> IspcpConf | None:
    path = ctx.t(CONF_PATH)
    if not path.is_file():
        return None
    try:
        return IspcpConf.load(path)
    except InputError:
        return None


def read_passwd(root: Path) -> dict[str, tuple[int, int]]:
    """name -> (uid, gid) of root/etc/passwd; empty when it is missing."""
    out: dict[str, tuple[int, int]] = {}
    path = root / "etc/passwd"
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
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


def check_mail_dirs(ctx: Context, conf: IspcpConf | None) -> Check:
    name = "mail dirs owned by the mailbox user"
    mail_dir = (conf.get("MTA_VIRTUAL_MAIL_DIR") if conf else None) or "/var/mail/virtual"
    uid = int((conf.get("MTA_MAILBOX_UID") if conf else None) or 1004)
    gid = int((conf.get("MTA_MAILBOX_GID") if conf else None) or 8)
    user = (conf.get("MTA_MAILBOX_UID_NAME") if conf else None) or "vmail"
    top = ctx.t(mail_dir)
    if not top.is_dir():
        return Check(name, "FAIL", f"{mail_dir} does not exist", "run the user_data step")
    wrong: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in [*dirnames, *filenames]:
            p = os.path.join(dirpath, entry)
            st = os.lstat(p)
            total += 1
            if (st.st_uid, st.st_gid) != (uid, gid):
                wrong.append(ctx.display_path(Path(p)))
    passwd = read_passwd(ctx.target_root)
    problems = []
    if passwd.get(user, (None,))[0] != uid:
        problems.append(f"no user {user} with uid {uid} in /etc/passwd")
    if wrong:
        problems.append(f"{len(wrong)} of {total} entries not {uid}:{gid}: {_listed(wrong)}")
    if problems:
        return Check(name, "FAIL", "; ".join(problems), "run the accounts and user_data steps")
    return Check(name, "ok", f"{total} entries under {mail_dir}, all {user} ({uid}:{gid})")


def _domain_rows(ctx: Context, conf: IspcpConf | None) -> tuple[list[dict[str, Any]] | None, str]:
    """The domain table via ispCP's own login (else the admin login); None and why when unreadable."""
    if ctx.mysql is None or not ctx.mysql.status():
        return None, "MySQL is not running"
    logins = [ispcp_login.ispcp_login(ctx), mysql_creds.working_admin(ctx)]
    database = (conf.get("DATABASE_NAME") if conf else None) or "ispcp"
    for login in logins:
        if login is None:
            continue
        try:
            with ctx.mysql.connect(login.user, login.password, database) as conn, conn.cursor() as cur:
                cur.execute("SELECT domain_name, domain_uid, domain_gid, domain_status FROM domain ORDER BY domain_id")
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
    passwd = read_passwd(ctx.target_root)
    no_dir, wrong_owner, no_user, bad_status = [], [], [], []
    for d in rows:
        path = ctx.t(f"{www}/{d['name']}")
        user = f"{prefix}{d['uid']}"
        if not path.is_dir():
            no_dir.append(d["name"])
        elif path.stat().st_uid != int(d["uid"]):
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
    path = ctx.t(f"{sites}/ispcp.conf")
    if not path.is_file():
        return Check(
            name,
            "FAIL",
            f"{sites}/ispcp.conf does not exist: the update has not rebuilt the customers' configuration",
            "run ispcp_update",
        )
    rows, source = _domain_rows(ctx, conf)
    if rows is None:
        return Check(name, "WARN", f"vhost file present, but the domain list is unreadable: {source}")
    text = path.read_text(errors="replace")
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
        state = mail_guard.guard_state(ctx)
        return Check(name, "info", "no guard in place" if not state else _guard_text(state))
    ok, text = mail_guard.check_guard(ctx)
    return Check(name, "ok" if ok else "FAIL", text, "" if ok else "run mail_guard before anything starts Postfix")


def _guard_text(state: dict[str, Any]) -> str:
    keys = ("mode", "state", "status", "lifted")
    shown = {k: state[k] for k in keys if k in state}
    return ", ".join(f"{k}: {v}" for k, v in shown.items()) or "guard state recorded"


def check_apache(ctx: Context) -> Check:
    name = "Apache configuration test"
    ctl = shutil.which("apache2ctl") or shutil.which("apache2ctl", path="/usr/sbin:/sbin")
    if ctx.target_root != Path("/"):
        return Check(name, "n/a", "not applicable in the sandbox (no Apache runs there)")
    if ctl is None:
        return Check(name, "n/a", "apache2ctl is not installed")
    rec = ctx.runner.run([ctl, "configtest"], check=False, timeout=60)
    out = (rec.stderr or rec.stdout).strip().splitlines()
    if rec.rc == 0:
        return Check(name, "ok", out[-1] if out else "Syntax OK")
    return Check(
        name,
        "FAIL",
        " / ".join(out[-3:]) or f"exit {rec.rc}",
        "run register_accounts: Apache fails when the vu* users of the vhosts are missing",
    )


def check_apache_running(ctx: Context) -> Check:
    name = "Apache runs"
    if ctx.target_root != Path("/"):
        return Check(name, "n/a", "not applicable in the sandbox (no Apache runs there)")
    pid_file = Path("/var/run/apache2/apache2.pid")
    if not Path("/usr/sbin/apache2").exists():
        return Check(name, "n/a", "Apache is not installed")
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return Check(
            name,
            "FAIL",
            f"no running Apache ({pid_file} missing or stale)",
            "run register_accounts, then start Apache (systemctl start apache2) and read its error log",
        )
    return Check(name, "ok", f"master process {pid}")


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
        check_apache(ctx),
        check_apache_running(ctx),
    ]


def frame(checks: list[Check]) -> Any:
    import pandas as pd

    return pd.DataFrame([c.row() for c in checks])


def all_ok(checks: list[Check]) -> bool:
    return not any(c.failed for c in checks)
