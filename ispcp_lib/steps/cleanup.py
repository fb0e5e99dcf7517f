"""cleanup: undo the recovery's temporary measures, run the health checks, and summarise the run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pandas as pd

from ispcp_lib import health
from ispcp_lib.action import action, read_journal
from ispcp_lib.context import Context
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.result import Result
from ispcp_lib.steps import STEP_ORDER, mail_guard, register_accounts
from ispcp_lib.steps.engine_speedup import restore_sleep_lines

TITLE = "Clean up and check the result"
GUIDE = "the closing remark that some clean-up work remains after a successful update"
EXPLANATION = """
The guide ends with "clean up" and leaves it there. Several things the recovery switched on are only
meant for the recovery itself:

* `DEBUG = 1` in `ispcp.conf` made the update verbose; ispCP goes back to `DEBUG = 0`.
* The engine managers' `sleep(1);` lines were commented out to make the update fast. Leaving them out
  is harmless (the ispCP bug tracker agreed), so they stay out unless `cleanup_restore_sleep` is set.
* The mail guard kept Postfix from bouncing mail while it was unconfigured. Now that the update has
  configured it, the guard is lifted and Postfix may receive mail again.
* Root's `~/.my.cnf`, written for registering accounts, holds a database password: it goes, as does
  any other temporary credential file the recovery left in its state directory.

Then the health checks run once more, and a final table lists every step of this run: its status,
how many changes it made, how long it took, and where the safety copies of everything it replaced are
kept.
"""
PARAMETERS: dict[str, tuple[object, str]] = {
    "cleanup_restore_sleep": (False, "put the engine managers' sleep(1) lines back (they only slow the engine down)"),
}

CONF_PATH = "/etc/ispcp/ispcp.conf"
TEMP_CREDENTIALS = "tmp-credentials"  # under the state dir: files any step may leave for cleanup to remove


def reset_debug(ctx: Context, result: Result) -> str:
    """DEBUG = 0 in ispcp.conf, and in ispcp.old.conf where ispcp_update set it to 1 for the merge."""
    path = ctx.t(CONF_PATH)
    if not path.is_file():
        result.warn(f"{CONF_PATH} not found: DEBUG could not be reset")
        return "no ispcp.conf"
    conf = IspcpConf.load(path, display=CONF_PATH)
    done = []
    old_logical = f"{(conf.get('CONF_DIR') or '/etc/ispcp').rstrip('/')}/ispcp.old.conf"
    for logical, c in ((CONF_PATH, conf), (old_logical, None)):
        p = ctx.t(logical)
        if c is None:
            if not p.is_file():
                continue
            c = IspcpConf.load(p, display=logical)
        if "DEBUG" in c and (c.get("DEBUG") or "0").strip() != "0":
            c.set("DEBUG", "0")
            ctx.write_file(p, c.text(), what=f"set DEBUG = 0 in {logical}")
            done.append(logical)
    return f"set to 0 in {', '.join(done)}" if done else "already 0"


def remove_temp_credentials(ctx: Context, result: Result) -> list[str]:
    top = ctx.state_dir / TEMP_CREDENTIALS
    if not top.is_dir():
        return []
    removed = []
    for path in sorted(p for p in top.rglob("*") if p.is_file() or p.is_symlink()):
        result.change(f"remove the temporary credential file {path}")
        removed.append(str(path))
        if ctx.apply:
            path.unlink()  # no safety copy: keeping a copy of a credential would defeat the purpose
    return removed


def _outcome(ctx: Context, result: Result, undo: Callable[[Context, Result], None]) -> str:
    """Run one step's undo function (it plans or applies like the rest); its row in the clean-up table."""
    before = result.changed
    undo(ctx, result)
    return "done" if result.changed > before else "nothing to do"


def step_summary(ctx: Context, current: Result) -> pd.DataFrame:
    """Step, status, changes, duration and safety copies: this run's journal, else each step's last record."""
    records = read_journal(ctx)
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        name = rec.get("name")
        if not name or (rec.get("run_id") != ctx.run_id and name in latest
                        and latest[name].get("run_id") == ctx.run_id):
            continue
        latest[name] = rec
    rows = []
    for name in STEP_ORDER:
        if name == current.step:
            rec = {"status": "done" if current.changed else "noop", "changed": current.changed,
                   "duration_s": current.duration_s, "backups": current.backups, "run_id": ctx.run_id}
        else:
            rec = latest.get(name)
        if rec is None:
            rows.append({"step": name, "status": "not run", "changes": 0, "duration (s)": 0.0,
                         "safety copies": "", "run": ""})
            continue
        rows.append({"step": name, "status": rec.get("status"), "changes": rec.get("changed", 0),
                     "duration (s)": round(float(rec.get("duration_s") or 0), 2),
                     "safety copies": _where(rec.get("backups") or []),
                     "run": "" if rec.get("run_id") == ctx.run_id else rec.get("run_id", "")})
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
    if ctx.param("cleanup_restore_sleep", False):
        restored = restore_sleep_lines(ctx, result)
        actions.append({"task": "restore the sleep(1) lines",
                        "outcome": f"{len(restored)} manager(s)" if restored else "nothing to restore"})
    else:
        actions.append({"task": "restore the sleep(1) lines", "outcome": "kept out (cleanup_restore_sleep = False)"})
    actions.append({"task": "lift the mail guard", "outcome": _outcome(ctx, result, mail_guard.lift)})
    actions.append({"task": "remove root's ~/.my.cnf",
                    "outcome": _outcome(ctx, result, register_accounts.remove_root_mycnf)})
    temp = remove_temp_credentials(ctx, result)
    actions.append({"task": "remove temporary credential files", "outcome": f"{len(temp)} file(s)" if temp else "none"})
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
        result.noop_reason = f"nothing left to clean up (DEBUG is 0, no guard or temporary credentials); {healthy}"
