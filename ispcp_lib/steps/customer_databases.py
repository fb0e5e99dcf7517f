"""customer_databases: the customers' own MySQL databases back, each by the strategy its backup allows, verified."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core.action import action, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.operations import killed_run
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result, Table
from ispcp_lib.facts import backup_layout
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import accounts, customer_dbs, customer_restore, datadir, datadir_swap, dialect, records, verify
from ispcp_lib.mysql.customer_dbs import Strategy
from ispcp_lib.mysql.customer_restore import Action, Plan, check_sources, read_all_frm, restore_one

TITLE = "Restore the customers' databases"
GUIDE = (
    "the checklist's 'backup of all user data' and the section that replaces the `ispcp` and `mysql` folders "
    "under /var/lib/mysql; the guide stops at those two databases, this step carries the same restore on to the "
    "customers' own databases"
)
EXPLANATION = """
Every ispCP server also holds the customers' own MySQL databases (shops, forums, blogs). ispCP lists
them in `sql_database` and their logins in `sql_user`; the logins themselves came back with the `mysql`
database, but the data did not. A recovery that stops at the guide leaves every dynamic website broken.

**What the backup holds decides how each database comes back**, and the plan shows it per database:

* **Directory copy** for MyISAM and Aria tables: their folder carries all their data, as for `ispcp`.
  The copy is staged beside the datadir, Aria tables are re-stamped for this server (`aria_chk
  --zerofill`), the files are given to the `mysql` user, and the folder is renamed into place.
* **Tablespace import** for InnoDB tables with a file of their own (`.frm` + `.ibd`): an InnoDB folder
  cannot simply be copied, because InnoDB's data dictionary lives in the server's shared tablespace.
  The table is created anew from its definition, its empty tablespace is discarded, the old `.ibd` is
  copied in and imported (`ALTER TABLE … DISCARD/IMPORT TABLESPACE`). The definition comes from the
  table's `.frm`, read by a throwaway server from a copy of the file (InnoDB `.frm` files only open
  for the server that owns the table, so the copy is made to name another engine first), or from the
  `CREATE TABLE` in a dump of the database. Foreign keys live in InnoDB's dictionary, not in the `.frm`:
  a table recreated from its `.frm` has none.
* **SQL dump**: a dump of the database, or its part of an `--all-databases` dump (split by database),
  loaded with the `mariadb` client. With `customer_databases_prefer = dump` dumps come first; otherwise
  they are the fallback when the folder fails.
* **Whole datadir**: when the backup holds the old datadir complete (`ibdata1`, the redo log and every
  database folder), the server versions are compatible, and `mysql_restore` restored `ispcp` and `mysql`
  from the same folders, the target's datadir can be replaced as a whole (the old one is kept beside it,
  then `mariadb-upgrade` runs). This is the only way back for InnoDB tables inside the shared tablespace.
  It also brings back `ispcp` and `mysql` exactly as `mysql_restore` restored them (the same files), so
  nothing of that step is lost; what `mysql_maintainer` changed since (a new `debian-sys-maint` or root
  password) is set again right after the swap, so the target's `debian.cnf` keeps working.
  `customer_databases_whole_datadir = auto` uses it only when some database has no other way back.

A database that cannot come back from what the backup holds gets a row saying why and what would be
needed; it never stops the others. A database that already exists on the target and was not restored
by this step is left alone.

**Verified, not assumed.** Every restored table opens (`CHECK TABLE`) and its rows are counted; for
MyISAM/Aria tables and dumps the count is compared with the old server's. Then every `sql_user` row is
tried: its password, decrypted with the restored keys (or the backup's, before the keys step), must log
in and read its database. A login that fails is listed with the server's reason. A marker in the state
directory records what was restored from which files, so running the step again changes nothing.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "customer_databases_prefer",
        str,
        "binary",
        "what a customer database is restored from when the backup holds both its folder and a dump "
        "(the other is the fallback)",
        choices=customer_dbs.PREFERENCES,
    ),
    Param(
        "customer_databases_whole_datadir",
        str,
        "auto",
        "replace the target's datadir with the backup's complete one (auto: only when a database has no "
        "other way back)",
        choices=("auto", "always", "never"),
    ),
    Param(
        "customer_databases_include_unlisted",
        bool,
        True,
        "also restore databases the backup holds that sql_database does not list (created outside the panel)",
    ),
    Param("customer_databases_skip", list, [], "names of customer databases to leave out"),
    Param("customer_databases_dump_dirs", list, [], "more folders (paths on the old server) to look for mysqldumps in"),
)

WHOLE_MODES = ("auto", "always", "never")
_VERDICTS = {
    Action.RESTORE: "restore",
    Action.DONE: "already restored",
    Action.SKIP: "skipped",
    Action.REFUSE: "left alone",
    Action.CANNOT: "cannot restore",
}


def live_databases(conn: Any) -> dict[str, int]:
    """Database name -> number of tables and views on the running server."""
    with conn.cursor() as cur:
        dialect.execute(cur, dialect.DATABASE_TABLE_COUNTS)
        return {str(name): int(n) for name, n in cur.fetchall()}


def _whole_mode(ctx: Context) -> str:
    mode = ctx.param("customer_databases_whole_datadir") or "auto"
    if mode not in WHOLE_MODES:
        raise InputError("customer_databases_whole_datadir", f"is {mode!r}", f"use one of {', '.join(WHOLE_MODES)}")
    return mode


@action("customer_databases")
def run(ctx: Context, result: Result) -> None:
    backup_layout.check_backup_root(ctx)
    killed = killed_run(read_journal(ctx), "customer_databases", ctx.run_id)
    if killed is not None and ctx.mysql is not None:  # first: a swap it was killed in had stopped MySQL
        datadir.undo_killed(ctx, result, datadir.live_datadir(ctx), "customer", killed, replace_live=False)
    if ctx.mysql is None or not ctx.mysql.status():
        raise PreconditionFailed(
            "MySQL server",
            "is not running, so no database can be restored into it",
            "run mysql_restore first (it leaves the server running), or start MySQL",
        )
    whole_mode = _whole_mode(ctx)
    skip = ctx.param("customer_databases_skip") or []
    skip = {skip} if isinstance(skip, str) else set(skip)
    login = accounts.admin_login(ctx)
    if login is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "neither debian.cnf (target's or backup's) nor ispCP's own login works on the running server",
            "run mysql_restore and mysql_maintainer first",
        )
    found = customer_dbs.discover(ctx, backup_layout.load_old_conf(ctx))
    for n in found.notes:
        result.note(n)
    for w in found.warnings:
        result.warn(w)
    live_dir = datadir.live_datadir(ctx)
    record = records.read(ctx, records.CUSTOMER_DATABASES)
    with accounts.session(ctx, login) as conn:
        live = live_databases(conn)

    plans = [_plan(d, live, record, skip, live_dir) for d in found.databases]
    _choose_whole_datadir(ctx, result, found, plans, whole_mode, live)
    sql = accounts.dialect(ctx)
    if not customer_restore.imports_tablespaces(sql):
        for p in plans:
            if p.action == Action.RESTORE and p.strategy is Strategy.TABLESPACE_IMPORT:
                customer_restore.without_tablespace_import(p, sql.describe())
    read_all_frm(ctx, [p for p in plans if p.action == Action.RESTORE])
    for p in plans:
        if p.action == Action.RESTORE and p.strategy is not Strategy.WHOLE_DATADIR:
            check_sources(ctx, p)

    plan_table = Table("Customer databases: what the backup holds and what is done", _plan_frame(plans))
    result.tables.append(plan_table)
    result.data["customer_databases"] = [
        {"database": p.name, "action": p.action, "strategy": p.strategy.value if p.strategy else None} for p in plans
    ]
    for p in plans:
        if p.action in (Action.CANNOT, Action.REFUSE):
            result.warn(f"customer database {p.name}: {p.how}")
    todo = [p for p in plans if p.action == Action.RESTORE]
    if not todo:
        _nothing_to_do(ctx, result, login, plans, found)
        return
    restored = _restore(ctx, result, found, todo, login, live_dir)
    if not ctx.apply:
        return
    plan_table.frame = _plan_frame(plans)  # now with each database's outcome
    done = {p.name for p in restored} | {p.name for p in plans if p.action == Action.DONE}
    _verify(ctx, result, login, restored, found.listing, check=True, login_dbs=done)
    _write_record(ctx, record, restored, live_dir)
    _finish(result, todo, restored)


def _nothing_to_do(
    ctx: Context, result: Result, login: Login, plans: list[Plan], found: customer_dbs.Discovery
) -> None:
    done = [p for p in plans if p.action == Action.DONE]
    if done:
        reason = f"{len(done)} customer database(s) restored by an earlier run are live"
    else:
        reason = "no customer database to restore"
    if len(plans) > len(done):
        reason += f"; {len(plans) - len(done)} left as the table says"
    result.noop_reason = result.summary = reason
    if done:
        _verify(ctx, result, login, done, found.listing, check=False, login_dbs={p.name for p in done})


def _check_space(
    ctx: Context, result: Result, found: customer_dbs.Discovery, todo: list[Plan], layout: datadir.Layout
) -> None:
    """The staged folders (or the whole datadir), the dumps loaded and what is kept must fit (before any change)."""
    whole = any(p.strategy is Strategy.WHOLE_DATADIR for p in todo)
    copied = [p for p in todo if p.strategy in (Strategy.DIRECTORY_COPY, Strategy.TABLESPACE_IMPORT)]
    staged = [found.backup_datadir] if whole else [p.db.folder for p in copied if p.db.folder is not None]
    dumps = {p.dump.path: p.dump.file.size for p in todo if p.strategy and p.strategy.is_dump and p.dump}
    datadir.check_space(
        ctx,
        result,
        layout,
        staged=staged,
        moved_aside=[layout.datadir] if whole else [datadir.join(layout.datadir, p.folder_name) for p in copied],
        dump_bytes=sum(dumps.values()),
    )


def _restore(
    ctx: Context, result: Result, found: customer_dbs.Discovery, todo: list[Plan], login: Login, live_dir: str
) -> list[Plan]:
    owner = datadir.mysql_owner(ctx)
    layout = datadir.work_layout(ctx, live_dir, "customer")
    datadir.check_writable(ctx, [live_dir, layout.work])
    _check_space(ctx, result, found, todo, layout)
    if any(p.strategy is Strategy.WHOLE_DATADIR for p in todo):
        login = datadir_swap.swap(ctx, result, found, layout, owner, login)
        for p in todo:
            if p.strategy is Strategy.WHOLE_DATADIR and ctx.apply:
                p.outcome = "restored with the whole datadir"
    for p in todo:
        if p.strategy is not Strategy.WHOLE_DATADIR:
            restore_one(ctx, result, p, layout, owner, login)
    datadir.remove_if_empty(ctx, layout.staging, layout.work)
    if not ctx.apply:
        result.note(
            f"then verify (reads, no change): CHECK TABLE and row counts of {len(todo)} database(s), then try "
            "every SQL user's login (password decrypted with the restored keys)"
        )
        names = ", ".join(f"{p.name} ({p.strategy.label if p.strategy else '—'})" for p in todo)
        result.summary = f"planned: {names}"
        return []
    return [p for p in todo if p.outcome.startswith("restored")]


def _write_record(ctx: Context, record: dict[str, Any], restored: list[Plan], live_dir: str) -> None:
    record.setdefault("databases", {})
    for p in restored:
        record["databases"][p.name] = {
            "strategy": p.strategy.value if p.strategy else None,
            "source": p.source(),
            "signature": p.signature(ctx),
            "run_id": ctx.run_id,
            "ts": dt.datetime.now().isoformat(timespec="seconds"),
        }
    record["datadir"] = live_dir
    records.write(ctx, records.CUSTOMER_DATABASES, record)


def _finish(result: Result, todo: list[Plan], restored: list[Plan]) -> None:
    failed = [p for p in todo if p not in restored]
    result.summary = f"{len(restored)} of {len(todo)} customer database(s) restored"
    if not failed:
        return
    result.summary += f"; failed: {', '.join(p.name for p in failed)}"
    # Every database was tried and the table above shows each outcome; a database the backup allowed to
    # restore and that failed is an error, not a warning (one that cannot be restored stays a warning row).
    shown = "; ".join(f"{p.name}: {p.outcome}" for p in failed[:5]) + (" ..." if len(failed) > 5 else "")
    raise PreconditionFailed(
        "customer databases",
        f"{len(failed)} of {len(todo)} failed to restore and were rolled back ({shown})",
        "see each database's result in the table above; repair its backup (or provide an SQL dump of it), "
        "then run this step again: the databases restored now are recorded and left alone",
    )


def _plan(
    d: customer_dbs.CustomerDb, live: dict[str, int], record: dict[str, Any], skip: set[str], live_dir: str
) -> Plan:
    if d.name in skip:
        return Plan(d, Action.SKIP, None, "left out (customer_databases_skip)")
    rec = record.get("databases", {}).get(d.name) if record.get("datadir") == live_dir else None
    if rec is not None and d.name in live:
        how = f"restored in run {rec.get('run_id')} ({rec.get('ts')}) from {rec.get('source')}; live on the target"
        strategy = Strategy(rec["strategy"]) if rec.get("strategy") in {s.value for s in Strategy} else None
        return Plan(d, Action.DONE, strategy, how)
    if live.get(d.name):
        return Plan(
            d,
            Action.REFUSE,
            None,
            f"already exists on the target with {live[d.name]} table(s), not restored by "
            "this step: it is left alone. To restore it from the backup, rename or drop it first, then run "
            "this step again",
        )
    if d.strategy is Strategy.CANNOT:
        return Plan(d, Action.CANNOT, Strategy.CANNOT, d.how)
    return Plan(d, Action.RESTORE, d.strategy, d.how, d.dumps[0] if d.dumps else None)


def _choose_whole_datadir(
    ctx: Context,
    result: Result,
    found: customer_dbs.Discovery,
    plans: list[Plan],
    mode: str,
    live: dict[str, int],
) -> None:
    whole, reason = datadir_swap.decide(ctx, result, found, plans, mode, live)
    if whole:
        for p in plans:
            if p.action in (Action.RESTORE, Action.CANNOT) and p.db.folder is not None:
                p.action, p.strategy, p.how = Action.RESTORE, Strategy.WHOLE_DATADIR, "comes back with the old datadir"
        return
    if reason:
        restore = ctx.results.get("mysql_restore")
        planned = restore is not None and restore.status == "planned"
        later = " (mysql_restore is only planned in this dry run: applying decides again)" if planned else ""
        result.note(f"Whole-datadir restore: {reason}{later}.")


def _plan_frame(plans: list[Plan]) -> pd.DataFrame:
    rows = []
    with_outcome = any(q.outcome for q in plans)
    for p in plans:
        row = p.db.row()
        row.pop("restore")
        row.pop("how / why")
        row.update(
            {"strategy": p.strategy.label if p.strategy else "—", "plan": _VERDICTS[p.action], "how / why": p.how}
        )
        if with_outcome:
            row["result"] = p.outcome
        rows.append(row)
    return pd.DataFrame(rows)


# --- verification --------------------------------------------------------------------------------------


def _old_counts(ctx: Context, p: Plan) -> dict[str, tuple[str, int | None]]:
    """table -> (engine, the old server's count) from MyISAM/Aria headers or the dump's INSERTs."""
    if p.strategy is not None and p.strategy.is_dump and p.dump_info is not None:
        return {t: ("", p.dump_info.rows.get(t, 0)) for t in p.dump_info.tables}
    files = p.db.files
    if files is None:
        return {}
    return {customer_dbs.table_name(n): (t.engine, t.old_rows) for n, t in files.tables.items()}


def _verify(
    ctx: Context,
    result: Result,
    login: Login,
    plans: list[Plan],
    found_listing: customer_dbs.Listing,
    check: bool,
    login_dbs: set[str],
) -> None:
    """Tables open, rows counted (CHECK TABLE only right after a restore); then every SQL user's login."""
    with accounts.session(ctx, login) as conn:
        found = verify.read_live(conn, [p.name for p in plans], check=check)
    old = {p.name: _old_counts(ctx, p) for p in plans} if check else {}
    frame = verify.live_frame(found, old, [p.name for p in plans])
    if check:
        title = "Restored customer databases: CHECK TABLE and rows (old: index headers or dump)"
    else:
        title = "Customer databases on the server now (row counts, read only)"
    result.table(title, frame)
    result.data["row_counts"] = frame.to_dict("records")
    bad = verify.failing(frame)
    for db in sorted(set(bad["database"])):
        first = bad[bad["database"] == db].iloc[0]
        result.warn(
            f"customer database {db}: table {first['table']} fails the verification (CHECK TABLE "
            f"{first['CHECK TABLE'] or '—'}, old {first['old rows']} rows, restored {first['restored rows']})"
        )
    listing = customer_dbs.target_listing(ctx, _ispcp_db(ctx)) or found_listing
    _verify_logins(ctx, result, listing, login_dbs)


def _ispcp_db(ctx: Context) -> str:
    try:
        conf = backup_layout.load_old_conf(ctx)
    except InputError:
        conf = None
    return datadir.ispcp_database(conf)


def _verify_logins(ctx: Context, result: Result, listing: customer_dbs.Listing, restored: set[str]) -> None:
    """Every sql_user row: its decrypted password logs in and reads its database; failures with the reason."""
    keysets = customer_dbs.account_keysets(ctx)
    lost_keys = not any(label.startswith("the backup's") for label, _ in keysets)
    rows, failed, unproven = [], [], []
    for u in listing.users:
        row = {"SQL user": u.name, "id": u.id, "database": u.database or "(sql_database row missing)"}
        if u.database not in restored:
            why = "its database is not on the server (see the table above)"
            rows.append({**row, "login": "not tried", "reads its database": "", "detail": why})
            continue
        plain = customer_dbs.decrypt_with(u.cipher, keysets) if u.cipher else None
        if plain is None:
            rows.append({**row, "login": "not tried", "reads its database": "", "detail": _undecryptable(lost_keys)})
            unproven.append(u.name)
            continue
        password, which = plain
        ctx.secrets.add(password, f"SQL password of {u.name}")
        reason = ctx.mysql.login_error(u.name, password, u.database)
        if reason is not None:
            rows.append({**row, "login": "REFUSED", "reads its database": "", "detail": ctx.secrets.redact(reason)})
            failed.append(f"{u.name}: {ctx.secrets.redact(reason)}")
            continue
        readable, detail = _reads(ctx, u.name, password, u.database)
        shown = "yes" if readable else "NO"
        rows.append(
            {**row, "login": "works", "reads its database": shown, "detail": f"password from {which}; {detail}"}
        )
        if not readable:
            failed.append(f"{u.name}: {detail}")
    result.table(
        "SQL users of the customer databases: login with the decrypted password",
        pd.DataFrame(rows, columns=["SQL user", "id", "database", "login", "reads its database", "detail"]),
    )
    result.data["sql_logins"] = rows
    if failed:
        more = " ..." if len(failed) > 6 else ""
        result.warn(f"{len(failed)} SQL user login(s) fail: " + "; ".join(failed[:6]) + more)
    if unproven:
        why = "the keys are lost" if lost_keys else "their password does not decrypt"
        result.warn(
            f"{len(unproven)} SQL user login(s) cannot be tried, {why}: {', '.join(unproven[:10])} (see the table)"
        )


def _undecryptable(lost_keys: bool) -> str:
    if lost_keys:
        return (
            "the backup has no key file: with the keys lost this password cannot be decrypted (the keys "
            "step's keys_reset_account_passwords gives the account a new one)"
        )
    return (
        "its sqlu_pass does not decrypt to text with the restored (or the backup's) keys: wrong keys "
        "or a damaged row (the keys step lists every such row)"
    )


def _reads(ctx: Context, user: str, password: str, database: str | None) -> tuple[bool, str]:
    try:
        with ctx.mysql.connect(user, password, database) as conn, conn.cursor() as cur:
            dialect.execute(cur, dialect.SHOW_TABLES)
            tables = [r[0] for r in cur.fetchall()]
            if not tables:
                return False, "the database shows no tables to this user"
            dialect.execute(cur, dialect.count_rows(tables[0]))
            n = int(cur.fetchone()[0])
    except pymysql.MySQLError as exc:
        return False, ctx.secrets.redact(f"reading fails: {exc}")
    return True, f"sees {len(tables)} table(s), reads {tables[0]} ({n} rows)"
