"""cleanup: undo the recovery's temporary measures, run the health checks, and summarise the run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pandas as pd

from ispcp_lib.core.action import action, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.ispcp import health
from ispcp_lib.ispcp.encrypted_columns import CREDENTIALS_FILE
from ispcp_lib.ispcp.engine_sleep import restore_sleep_lines
from ispcp_lib.ispcp.root_mycnf import remove_root_mycnf
from ispcp_lib.ispcp.update_env import CONF_PATH, load_conf, old_conf_path, update_verdict
from ispcp_lib.mysql.accounts import ROOT_CNF
from ispcp_lib.steps import STEP_ORDER
from ispcp_lib.system import postfix_guard as guard

TITLE = "Clean up and check the result"
GUIDE = "the closing remark that some clean-up work remains after a successful update"
EXPLANATION = """
The guide ends with "clean up" and leaves it there. Several things the recovery switched on are only
meant for the recovery itself:

* `DEBUG = 1` in `ispcp.conf` made the update verbose; ispCP goes back to `DEBUG = 0`.
* The engine managers' `sleep(1);` lines were commented out to make the update fast. Leaving them out
  is harmless (the ispCP bug tracker agreed), so they stay out unless `cleanup_restore_sleep` is set.
* The mail guard kept Postfix from bouncing mail while it was unconfigured. It is lifted only when the
  last attempt of `ispcp_update` succeeded (its record in the state directory): before that, Postfix
  knows none of the hosted domains, and without the guard it would bounce their mail for good. If the
  update has not succeeded, the guard stays and the step says so loudly; `cleanup_lift_guard` decides
  otherwise (`always` lifts it anyway, `never` keeps it in any case).
* Root's `~/.my.cnf`, written for registering accounts, holds a database password: it goes.
* Two credential files may remain in the state directory, both mode 0600 and readable by root only:
  `mysql-root.cnf` (MySQL's new root password, when `mysql_reset_root` gave it one) and
  `account-passwords.txt` (the new passwords `keys_reset_account_passwords` gave mailboxes and SQL users).
  They are not removed: the admin hands the passwords out to the customers and then deletes the files.
  The step lists the ones that are there.

Then the health checks run once more, and a final table lists every step of this run: its status,
how many changes it made, how long it took, and where the safety copies of everything it replaced are
kept.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "cleanup_restore_sleep",
        bool,
        False,
        "put the engine managers' sleep(1) lines back (they only slow the engine down)",
    ),
    Param(
        "cleanup_lift_guard",
        str,
        "after_update",
        "lift the mail guard only when ispcp_update's last attempt succeeded (after_update), in any case "
        "(always), or not at all (never)",
        choices=("after_update", "always", "never"),
    ),
)

# Credential files other steps leave in the state dir for the admin; cleanup names them, never removes them.
REMAINING_CREDENTIALS = {
    ROOT_CNF: "MySQL's new root password (mysql_reset_root)",
    CREDENTIALS_FILE: "new passwords of mailboxes and SQL users (keys_reset_account_passwords)",
}


def reset_debug(ctx: Context, result: Result) -> str:
    """DEBUG = 0 in ispcp.conf, and in ispcp.old.conf where ispcp_update set it to 1 for the merge."""
    conf = load_conf(ctx)
    if conf is None:
        result.warn(f"{CONF_PATH} not found: DEBUG could not be reset")
        return "no ispcp.conf"
    done = []
    for path in (CONF_PATH, old_conf_path(conf)):
        c = conf if path == CONF_PATH else load_conf(ctx, path)
        if c is not None and "DEBUG" in c and (c.get("DEBUG") or "0").strip() != "0":
            c.set("DEBUG", "0")
            ctx.write_file(path, c.text(), what=f"set DEBUG = 0 in {path}")
            done.append(path)
    return f"{'set' if ctx.apply else 'will be set'} to 0 in {', '.join(done)}" if done else "already 0"


def remaining_credentials(ctx: Context, result: Result) -> list[str]:
    """Name the credential files that stay in the state dir for the admin to hand out and delete."""
    found = []
    for name, what in REMAINING_CREDENTIALS.items():
        path = f"{ctx.state_dir}/{name}"
        st = ctx.state.stat(path)
        if st is not None and st.is_file:
            mode = st.mode & 0o777
            found.append(name)
            result.warn(
                f"{path} (mode {mode:04o}) holds {what}: hand the passwords out, then delete the file"
                + ("" if mode == 0o600 else f"; chmod 600 {path} first")
            )
    return found


def lift_guard(ctx: Context, result: Result) -> str:
    """Lift the mail guard when it is safe (or forced); otherwise keep it and warn. The clean-up table's outcome."""
    mode = ctx.step_params(PARAMETERS).cleanup_lift_guard
    if guard.guard_state(ctx) is None:
        return _outcome(ctx, result, guard.lift)
    succeeded, why = update_verdict(ctx)
    if mode == "never":
        result.note(
            f"The mail guard stays (cleanup_lift_guard = never); {why}. Lift it with cleanup_lift_guard = "
            "always once Postfix is configured."
        )
        return "kept (cleanup_lift_guard = never)"
    if mode == "after_update" and not succeeded:
        result.warn(
            f"MAIL GUARD KEPT: {why}, so Postfix is not configured for the hosted domains; without the "
            "guard it would bounce their mail for good. Run ispcp_update until it succeeds, then cleanup "
            "again (or set cleanup_lift_guard = always if Postfix was configured another way)."
        )
        return f"kept: {why}"
    if not succeeded:
        result.warn(
            f"The mail guard is lifted although {why} (cleanup_lift_guard = always): check that Postfix "
            "knows the hosted domains, or their mail bounces for good."
        )
    return _outcome(ctx, result, guard.lift)


def _outcome(ctx: Context, result: Result, undo: Callable[[Context, Result], None]) -> str:
    """Run one step's undo function (it plans or applies like the rest); its row in the clean-up table."""
    before = result.changed
    undo(ctx, result)
    if result.changed == before:
        return "nothing to do"
    return "done" if ctx.apply else "will be done (planned)"


def step_summary(ctx: Context, current: Result) -> pd.DataFrame:
    """Step, status, changes, duration and safety copies: this run's journal, else each step's last record."""
    records = read_journal(ctx)
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        name = rec.get("name")
        if not name or (
            rec.get("run_id") != ctx.run_id and name in latest and latest[name].get("run_id") == ctx.run_id
        ):
            continue
        latest[name] = rec
    rows = []
    for name in STEP_ORDER:
        if name == current.step:
            status = ("done" if ctx.apply else "planned") if current.changed else "noop"
            rec = {
                "status": status,
                "changed": current.changed,
                "duration_s": current.duration_s,
                "backups": current.backups,
                "run_id": ctx.run_id,
            }
        else:
            rec = latest.get(name)
        if rec is None:
            rows.append(
                {"step": name, "status": "not run", "changes": 0, "duration (s)": 0.0, "safety copies": "", "run": ""}
            )
            continue
        rows.append(
            {
                "step": name,
                "status": rec.get("status"),
                "changes": rec.get("changed", 0),
                "duration (s)": round(float(rec.get("duration_s") or 0), 2),
                "safety copies": _where(rec.get("backups") or []),
                "run": "" if rec.get("run_id") == ctx.run_id else rec.get("run_id", ""),
            }
        )
    return pd.DataFrame(rows)


def _where(backups: list[str]) -> str:
    """Where a step's safety copies are: the common directory and how many, or the one path."""
    if not backups:
        return ""
    if len(backups) == 1:
        return backups[0]
    common = os.path.commonpath(backups)
    return f"{common} ({len(backups)} copies)"


@action("cleanup")
def run(ctx: Context, result: Result) -> None:
    actions = [{"task": "DEBUG back to 0", "outcome": reset_debug(ctx, result)}]
    if ctx.step_params(PARAMETERS).cleanup_restore_sleep:
        restored = restore_sleep_lines(ctx, result)
        actions.append(
            {
                "task": "restore the sleep(1) lines",
                "outcome": f"{len(restored)} manager(s)" if restored else "nothing to restore",
            }
        )
    else:
        actions.append({"task": "restore the sleep(1) lines", "outcome": "kept out (cleanup_restore_sleep = False)"})
    actions.append({"task": "lift the mail guard", "outcome": lift_guard(ctx, result)})
    actions.append({"task": "remove root's ~/.my.cnf", "outcome": _outcome(ctx, result, remove_root_mycnf)})
    left = remaining_credentials(ctx, result)
    actions.append(
        {
            "task": "credential files left for the admin (state dir)",
            "outcome": ", ".join(left) + " (see the warnings)" if left else "none",
        }
    )
    result.table("Clean-up", pd.DataFrame(actions))

    checks = health.run_checks(ctx, expect_guard=False)
    result.table("Health checks", health.frame(checks))
    for c in checks:
        if c.failed:
            result.warn(f"health: {c.check}: {c.detail}" + (f" Next: {c.next_step}." if c.next_step else ""))
    result.table("Summary of the recovery", step_summary(ctx, result))
    result.note(f"Safety copies of this run are under {ctx.backup_dir}; the journal is {ctx.journal_path}.")
    healthy = "all health checks pass" if health.all_ok(checks) else "some health checks fail (see the table)"
    if result.changed:
        result.summary = f"{result.changed} clean-up change(s); {healthy}"
    else:
        kept = "the mail guard is kept (see above)" if guard.guard_state(ctx) else "no mail guard"
        result.noop_reason = f"nothing left to clean up (DEBUG is 0, {kept}, no ~/.my.cnf of ours); {healthy}"
