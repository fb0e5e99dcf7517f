"""ispcp_install_check: is the operator's fresh "dummy" ispCP in place, and can it take the backup?"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ispcp_lib.core.action import action, last_applied
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import ispcp_install as ii
from ispcp_lib.facts import services as sv
from ispcp_lib.system import postfix_guard as guard

TITLE = "Check the fresh ispCP install"
GUIDE = 'the section on installing MySQL and a "dummy" ispCP before the databases come back'
EXPLANATION = """
The guide has the operator install MySQL and then a fresh ispCP with its normal installer, on the
new system, before any data comes back. This "dummy" gives the system a working ispCP: its files,
its engine and its services. The recovery then overwrites parts of it with the old server's databases
and keys, and `ispcp-update` brings the rest in line. The guide recommends installing the current
ispCP even if the old server ran an older one, because the update step upgrades the restored data.
Postfix must stay away from mail during the install as well.

The install itself stays the operator's job; this step only looks and reports. What goes wrong here
shows only much later, when `ispcp-update` fails:

* a dummy that is missing or half-installed (no `ispcp.conf`, no engine);
* a dummy **older** than the backup: the update only moves forward, so that is refused, naming the
  version to install instead;
* key files that the installer never filled in (`{KEY}`/`{IV}` still in them);
* a service that `ispcp.conf` names but the system lacks (the table gives the Debian package);
* Postfix started by the installer, breaking the mail guard.

It also reads the MySQL server's own idea of its data directory and socket, which the restore step
is about to replace, and the backup's schema revision (from a throwaway copy of its `config` table,
never from the target's server).
"""
PARAMETERS: tuple[Param, ...] = ()


def _row(item: str, state: str, value: str, detail: str = "") -> dict[str, str]:
    return {"item": item, "state": state, "value": value, "detail": detail}


@action("ispcp_install_check", mutating=False)
def run(ctx: Context, result: Result) -> None:
    install = ii.target_install(ctx)
    old = _backup_release(ctx, result)
    if install is not None and install.conf is not None:
        install.database = ii.target_database(ctx, install.conf.database_name)
    mysql = sv.mysql_server(ctx)
    result.table("ispCP on the target", pd.DataFrame(_install_rows(ctx, install, result)))
    verdict, why = _compare(install, old)
    result.table("Target against the backup", pd.DataFrame(_release_rows(install, old, verdict, why)))
    checks = sv.check_services(install.conf if install else None, sv.Roots.for_context(ctx))
    result.table("Services that ispcp-update rebuilds", pd.DataFrame([c.row() for c in checks]))
    result.table("MySQL server", pd.DataFrame(_mysql_rows(ctx, mysql, install, result)))
    _service_warnings(checks, result)
    _mail_guard(ctx, result)
    result.data.update(_data(install, old, verdict, checks, mysql))

    wanted = _version_to_install(old)
    if install is None or not install.installed:
        what = _what_is_missing(install)
        result.summary = f"no usable ispCP install on the target: {what}"
        raise PreconditionFailed(
            "ispCP dummy install",
            f"{what}, so there is nothing for the recovery to build on",
            f"install ispCP {wanted} with its own installer (engine/setup/ispcp-setup), keeping the mail "
            "guard on (Postfix stopped or soft_bounce) throughout, then run this step again",
            path=ii.CONF_PATH,
        )
    if verdict == "downgrade":
        result.summary = f"refused: {why}"
        raise PreconditionFailed(
            "ispCP version",
            why,
            f"install ispCP {wanted} instead (its installer, mail guard kept on); "
            "ispcp-update then brings the restored data up to that release",
        )
    result.summary = (
        f"ispCP {install.version} is installed ({verdict}: {why}); "
        f"{sum(c.problem for c in checks)} service(s) need attention"
    )


# --- facts into rows ------------------------------------------------------------------------------


def _backup_release(ctx: Context, result: Result) -> ii.BackupRelease:
    try:
        old = ii.backup_release(ctx)
    except InputError as exc:  # e.g. a symlink escaping the backup root
        result.warn(f"cannot read the backup's release: {exc.message}")
        return ii.BackupRelease(None, None, None, f"unreadable: {exc.message}")
    for note in old.notes:
        result.warn(note)
    return old


def _install_rows(ctx: Context, inst: ii.TargetInstall | None, result: Result) -> list[dict[str, str]]:
    if inst is None:
        return [_row("ispcp.conf", "missing", ii.CONF_PATH, "no trace of ispCP on the target")]
    conf = inst.conf
    rows = [
        _row(
            "ispcp.conf",
            "found" if conf else "invalid" if ctx.target.exists(ii.CONF_PATH) else "missing",
            ii.CONF_PATH,
            inst.conf_problem or "",
        ),
        _row("Version", "found" if inst.version else "missing", inst.version or "—"),
        _row("BuildDate", "found" if inst.build_date else "missing", inst.build_date or "—"),
        _row("ROOT_DIR", "found" if inst.root_present else "missing", inst.root_dir),
        _row("engine", "found" if inst.engine_present else "missing", f"{inst.root_dir}/engine"),
        _row("GUI_ROOT_DIR", "found" if inst.gui_present else "missing", inst.gui_root_dir),
        _row(
            "engine managers",
            "found" if not inst.managers_missing else "incomplete",
            f"{len(inst.managers_present)} of {len(ii.ENGINE_MANAGERS)}",
            ("missing: " + ", ".join(inst.managers_missing)) if inst.managers_missing else "",
        ),
        _row(
            "ispcp-update",
            "found" if inst.update_script else "missing",
            f"{inst.root_dir}/{ii.UPDATE_SCRIPT}",
            "" if inst.update_script else "the ispcp_update step runs it",
        ),
    ]
    expected = ii.expected_key_layouts(conf.version_tuple() if conf else None)
    for k in inst.keys:
        if k.state == "absent" and k.layout not in expected:
            continue  # the other release's layout: its absence is normal
        rows.append(_row(f"key file ({k.layout})", k.state, k.path, k.detail))
    db = inst.database
    if db is not None:
        state = {True: "found", False: "missing", None: "unknown"}[db.exists]
        value = f"{ii.REVISION_KEY} = {db.revision}" if db.revision is not None else "—"
        rows.append(_row(f"database {db.name}", state, value, "" if db.revision is not None else db.detail))
    if inst.installed:
        _install_warnings(inst, expected, result)
    return rows


def _install_warnings(inst: ii.TargetInstall, expected: tuple[str, ...], result: Result) -> None:
    if inst.managers_missing:
        result.warn(
            f"the engine lacks {', '.join(inst.managers_missing)}: the install looks incomplete; "
            "re-run ispCP's installer"
        )
    if not inst.update_script:
        result.warn(
            f"{inst.root_dir}/{ii.UPDATE_SCRIPT} is missing: the ispcp_update step needs it; re-run ispCP's installer"
        )
    if not inst.gui_present:
        result.warn(f"GUI_ROOT_DIR {inst.gui_root_dir} is missing: the panel's files were not installed")
    if inst.placeholder_keys:
        result.warn(
            f"key file(s) {', '.join(inst.placeholder_keys)} still hold the {{KEY}}/{{IV}} template: "
            "the installer never finished its setup. The keys step replaces them with the backup's "
            "keys, but check the rest of the install too"
        )
    elif not any(k in inst.initialised_keys for k in expected):
        result.warn(
            "no initialised key file of this release's layout on the target; the keys step writes the backup's keys"
        )
    db = inst.database
    if db is not None and db.exists is False:
        result.warn(
            f"the target's MySQL has no {db.name} database: the installer did not finish (the "
            "restore brings the old one, but ispcp-update expects a working install)"
        )
    elif db is not None and db.exists is None:
        result.warn(f"the dummy's database could not be checked: {db.detail}")


def _compare(inst: ii.TargetInstall | None, old: ii.BackupRelease) -> tuple[str, str]:
    if inst is None or inst.version is None:
        return "unknown", "no ispCP version on the target"
    new_rev = inst.database.revision if inst.database else None
    return ii.compare_releases(old.version, inst.version, old.revision, new_rev)


def _release_rows(inst: ii.TargetInstall | None, old: ii.BackupRelease, verdict: str, why: str) -> list[dict[str, str]]:
    def show(v: Any) -> str:
        return "—" if v is None else str(v)

    new_rev = inst.database.revision if inst and inst.database else None
    rows = [
        {
            "what": "ispCP version",
            "backup (old server)": show(old.version),
            "target (dummy)": show(inst.version if inst else None),
            "note": f"{verdict}: {why}",
        },
        {
            "what": "BuildDate",
            "backup (old server)": show(old.build_date),
            "target (dummy)": show(inst.build_date if inst else None),
            "note": "",
        },
        {
            "what": "schema DATABASE_REVISION",
            "backup (old server)": show(old.revision),
            "target (dummy)": show(new_rev),
            "note": f"backup read from {old.revision_source}",
        },
    ]
    if (
        inst is not None
        and verdict == "same"
        and old.build_date
        and inst.build_date
        and old.build_date != inst.build_date
    ):
        rows[1]["note"] = "same version, different build: ispcp-update reconciles them"
    return rows


def _mysql_rows(ctx: Context, m: sv.MysqlServer, inst: ii.TargetInstall | None, result: Result) -> list[dict[str, str]]:
    rows = [
        {
            "item": "installed",
            "value": m.installed.describe() or "not found",
            "detail": m.installed.where or f"install {sv.MARIADB.package}",
        },
        {"item": "running", "value": "yes" if m.running else "no", "detail": ""},
        {"item": "version", "value": m.version or "—", "detail": m.version_source},
        {"item": "datadir", "value": m.datadir or "—", "detail": m.source},
        {"item": "socket", "value": m.socket or "—", "detail": m.source},
    ]
    if m.pid_file:
        rows.append({"item": "pid file", "value": m.pid_file, "detail": m.source})
    for note in m.notes:
        result.warn(note)
    if not m.installed.installed:
        result.warn(f"no MySQL/MariaDB server found: install {sv.MARIADB.package} before the dummy ispCP")
    if not m.running:
        result.warn(
            "the target's MySQL server is not running: the dummy's database cannot be checked and "
            "its variables are read from the config files"
        )
    if ctx.mysql is not None and m.datadir and m.source.startswith("the server's own"):
        param = ctx.display_path(ctx.mysql.datadir).rstrip("/")
        if param != m.datadir.rstrip("/"):
            result.warn(
                f"the server's datadir is {m.datadir}, but the runbook's mysql.datadir parameter says "
                f"{param}: mysql_restore would replace the wrong directory. Fix the parameter"
            )
    conf_dir = inst.conf.get("DATABASE_DIR") if inst and inst.conf else None
    if conf_dir and m.datadir and conf_dir.rstrip("/") != m.datadir.rstrip("/"):
        result.warn(f"ispcp.conf's DATABASE_DIR is {conf_dir}, the server's datadir {m.datadir}")
    return rows


def _service_warnings(checks: list[sv.ServiceCheck], result: Result) -> None:
    missing = [c for c in checks if c.problem]
    if not missing:
        return
    packages = sorted(
        {
            p
            for c in missing
            for p in c.package.split()
            if c.package and c.package != sv.INSTALLER and not c.package.startswith("apt-file")
        }
    )
    names = ", ".join(f"{c.key} ({c.state})" for c in missing)
    text = f"ispcp.conf names services this system lacks: {names}."
    if packages:
        text += f" Install them before ispcp_update: apt-get install {' '.join(packages)}"
    result.warn(text)
    if any(c.package == sv.INSTALLER for c in missing):
        result.warn("ispCP's own init scripts (ispcp_daemon / ispcp_network) are missing: re-run ispCP's installer")


def _mail_guard(ctx: Context, result: Result) -> None:
    """Confirm that the mail guard, when set, survived the install."""
    if guard.guard_state(ctx) is None:
        lifted = last_applied(ctx, "cleanup")
        if lifted is not None:  # a rerun after the recovery: the guard was lifted on purpose
            result.note(f"The mail guard was lifted by cleanup (run {lifted.get('run_id')}), as it should be.")
            return
        result.warn(
            "the mail guard is not set: installers start Postfix, which then rejects mail for the "
            "hosted domains for good. Run the mail_guard step before going on"
        )
        return
    ok, message = guard.check_guard(ctx)
    result.data["mail_guard"] = {"ok": bool(ok), "message": message}
    if ok:
        result.note(f"Mail guard still holds after the install: {message}")
    else:
        result.warn(
            f"the mail guard no longer holds (installers like to start services): {message}. "
            "Restore it (re-run mail_guard) before going on; the next changing step refuses otherwise"
        )


def _data(
    inst: ii.TargetInstall | None,
    old: ii.BackupRelease,
    verdict: str,
    checks: list[sv.ServiceCheck],
    mysql: sv.MysqlServer,
) -> dict[str, Any]:
    return {
        "installed": bool(inst and inst.installed),
        "target_version": inst.version if inst else None,
        "target_build": inst.build_date if inst else None,
        "target_revision": inst.database.revision if inst and inst.database else None,
        "backup_version": old.version,
        "backup_build": old.build_date,
        "backup_revision": old.revision,
        "verdict": verdict,
        "key_layouts": {k.layout: k.state for k in inst.keys} if inst else {},
        "services": {c.key: {"state": c.state, "package": c.package} for c in checks},
        "mysql": {
            "running": mysql.running,
            "version": mysql.version,
            "datadir": mysql.datadir,
            "socket": mysql.socket,
            "source": mysql.source,
        },
    }


def _version_to_install(old: ii.BackupRelease) -> str:
    if old.version:
        return f"{old.version} or newer"
    return "of the version the old server ran, or newer (the backup has no ispcp.conf to tell which)"


def _what_is_missing(inst: ii.TargetInstall | None) -> str:
    if inst is None:
        return "ispCP is not installed (no /etc/ispcp/ispcp.conf, no /var/www/ispcp)"
    parts = []
    if inst.conf is None:
        parts.append(f"ispcp.conf is unusable: {inst.conf_problem}")
    if not inst.root_present:
        parts.append(f"ROOT_DIR {inst.root_dir} is missing")
    elif not inst.engine_present:
        parts.append(f"the engine {inst.root_dir}/engine is missing")
    return "a half-finished install: " + "; ".join(parts)
