"""preflight: is the target the fresh system the guide expects?"""

from __future__ import annotations

import pandas as pd

from ispcp_lib.core.action import action, last_applied, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.operations import operation_records
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout, system
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.ispcp import queries
from ispcp_lib.mysql import accounts, dialect

TITLE = "Preflight checks of the new system"
GUIDE = "the section on starting from a freshly installed system"
EXPLANATION = """
The guide starts from a freshly installed system of the same distribution the old server ran. Another
distribution or release is possible but brings surprises (paths, service names, library versions). The
target must **not** run a real ispCP with customers yet: the recovery overwrites ispCP's files and
databases without mercy, so it is no tool for merging two installations. A fresh "dummy" install (no
domains) is expected and fine.

The step also compares the MySQL server versions, because binary database files only travel to a
server that can read them, and it warns when Perl's `Crypt::CBC` is 3.x: ispCP 1.0.x passes an option
that 3.x rejects, so the old engine cannot decrypt passwords on a current Perl.
"""
PARAMETERS: tuple[Param, ...] = (
    Param("allow_existing_ispcp", bool, False, "let preflight pass although the target already hosts ispCP domains"),
)


def _row(check: str, state: str, detail: str, fix: str = "") -> dict[str, str]:
    """One table row; a failed check carries its fix."""
    row = {"check": check, "result": state, "detail": detail}
    if state == "FAIL":
        row["fix"] = fix or _FIXES.get(check, "")
    return row


@action("preflight", mutating=False)
def run(ctx: Context, result: Result) -> None:
    backup_layout.check_backup_root(ctx)
    rows = [_distribution(ctx, result)]
    rows.append(_existing_ispcp(ctx, result))
    rows.append(_mysql_versions(ctx, result))
    rows.append(_crypt_cbc(ctx, result))
    rows += _tools(ctx)
    result.table("Preflight", pd.DataFrame(rows).fillna(""))
    failed = [r for r in rows if r["result"] == "FAIL"]
    if not failed:
        result.summary = "target is fit for the recovery"
        return
    result.summary = f"{len(failed)} check(s) failed: " + "; ".join(r["check"] for r in failed)
    first = failed[0]
    raise PreconditionFailed(first["check"], first["detail"], first.get("fix", ""))


# The steps that bring the old server's domains onto the target.
RESTORING_STEPS = ("mysql_restore", "customer_databases", "accounts", "user_data")

_FIXES = {
    "existing ispCP": "recover onto a freshly installed system, or set allow_existing_ispcp = True if these "
    "domains are disposable",
    "MySQL versions": "install a MySQL/MariaDB server that is at least as new as the old one",
}


def _distribution(ctx: Context, result: Result) -> dict[str, str]:
    old, new = system.os_release(backup_layout.backup(ctx)), system.os_release(ctx.target)
    if old is None:
        result.warn("the backup has neither os-release nor debian_version: cannot compare distributions")
        return _row("distribution", "unknown", "no /etc/os-release or /etc/debian_version in the backup")
    if new is None:
        return _row("distribution", "unknown", "no /etc/os-release or /etc/debian_version on the target")
    o = f"{old.get('ID', '?')} {_release(old)}"
    n = f"{new.get('ID', '?')} {_release(new)}"
    same = (
        old.get("ID") == new.get("ID")
        and old.get("VERSION_ID", "").split(".")[0] == new.get("VERSION_ID", "").split(".")[0]
    )
    if not same:
        result.warn(f"distribution differs: old {o}, new {n}. Possible, but expect different paths and service names")
    return _row("distribution", "ok" if same else "WARN", f"old {o}, new {n}")


def _release(found: dict[str, str]) -> str:
    """The release as precisely as the system tells it: /etc/debian_version's "6.0.10" over os-release's "6"."""
    return found.get("DEBIAN_VERSION") or found.get("VERSION_ID", "?")


def _existing_ispcp(ctx: Context, result: Result) -> dict[str, str]:
    conf = IspcpConf.read(ctx.target, CONF_PATH)
    if conf is None:
        return _row("existing ispCP", "ok", "no ispCP installed yet (install the dummy before ispcp_install_check)")
    domains = _target_domains(ctx, conf)
    web = ctx.target.listdir(conf.get("APACHE_WWW_DIR") or "/var/www/virtual") or []
    if not domains and not web:
        return _row("existing ispCP", "ok", f"fresh dummy install {conf.get('Version', '?')}: no domains")
    if last_applied(ctx, "mysql_restore") or last_applied(ctx, "user_data"):
        return _row("existing ispCP", "ok", "domains present because this recovery restored them (journal)")
    started = _restore_started(ctx)
    if started is not None:  # a killed run's partial restore is the tool's own, not a customer's install
        return _row("existing ispCP", "ok", f"domains present because run {started} of this recovery began restoring")
    what = f"{len(domains) if domains is not None else '?'} domains in its database, {len(web)} web directories"
    if ctx.param("allow_existing_ispcp"):
        result.warn(f"the target already hosts ispCP ({what}); allowed by allow_existing_ispcp")
        return _row("existing ispCP", "WARN", what + " (allowed by parameter)")
    return _row("existing ispCP", "FAIL", f"the target already runs ispCP with customers: {what}")


def _restore_started(ctx: Context) -> str | None:
    """The run id of the newest run whose restoring steps changed the target (journal), None if none did."""
    ops = [r for r in operation_records(read_journal(ctx)) if r.get("step") in RESTORING_STEPS]
    return ops[-1]["run_id"] if ops else None


def _target_domains(ctx: Context, conf: IspcpConf) -> list[str] | None:
    login = accounts.admin_login(ctx)
    if login is None:
        return None
    try:
        with ctx.mysql.connect(login.user, login.password, conf.database_name) as conn:
            with conn.cursor() as cur:
                dialect.execute(cur, queries.DOMAIN_NAMES)
                return [str(r[0]) for r in cur.fetchall()]
    except Exception:  # no ispcp database yet is a fresh target too
        return []


def _mysql_versions(ctx: Context, result: Result) -> dict[str, str]:
    try:
        conf = backup_layout.load_old_conf(ctx)
    except InputError:
        conf = None  # the inventory reports a damaged ispcp.conf
    datadir = (conf.get("DATABASE_DIR") if conf else None) or "/var/lib/mysql"
    local = backup_layout.local_path(ctx, backup_layout.checked(ctx, datadir, "DATABASE_DIR"))
    old = system.server_version_from_datadir(local) if local is not None else None
    new = ctx.mysql.version() if ctx.mysql else None
    verdict, text = system.compare_server_versions(old, new)
    result.data["mysql_versions"] = {"old": old, "new": new, "verdict": verdict}
    if verdict == "unknown":
        result.warn(f"MySQL versions: {text}")
        return _row("MySQL versions", "unknown", text + ("" if new else " (is the target's server running?)"))
    return _row("MySQL versions", "FAIL" if verdict == "downgrade" else "ok", text)


def _crypt_cbc(ctx: Context, result: Result) -> dict[str, str]:
    version = system.perl_module_version("Crypt::CBC", ctx.target)
    if version is None:
        return _row("Perl Crypt::CBC", "WARN", "not installed: ispCP's engine needs it (libcrypt-cbc-perl)")
    if version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 3:
        result.warn(
            f"Perl Crypt::CBC {version}: ispCP 1.0.x passes 'regenerate_key', which 3.x rejects, so "
            "the old engine cannot decrypt its passwords on this Perl. This runbook decrypts and "
            "verifies the keys itself; the ispCP engine may need a patched Crypt::CBC call"
        )
        return _row("Perl Crypt::CBC", "WARN", f"{version} (3.x rejects ispCP 1.0.x's options)")
    return _row("Perl Crypt::CBC", "ok", version)


# Tools the recovery runs on the target, each with the Debian package that brings it. The MySQL client is
# `mariadb` on current releases and `mysql` on the old ones (Lenny, Squeeze): either will do.
TOOLS = (
    (("rsync",), "rsync"),
    (("mariadb", "mysql"), "mariadb-client (mysql-client on old releases)"),
    (("useradd",), "passwd"),
    (("perl",), "perl"),
)


def _tools(ctx: Context) -> list[dict[str, str]]:
    rows = []
    for names, package in TOOLS:
        found = next((path for path in map(ctx.target.which, names) if path), None)
        detail = found or f"missing: apt-get install {package}"
        rows.append(_row(f"tool {names[0]}", "ok" if found else "FAIL", detail, f"apt-get install {package}"))
    return rows
