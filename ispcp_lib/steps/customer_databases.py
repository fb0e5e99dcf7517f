"""customer_databases: the customers' own MySQL databases back, each by the strategy its backup allows, verified."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result, Table
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts import mysql_creds, system
from ispcp_lib.facts import mysql_state as ms
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import customer_dbs as cdb
from ispcp_lib.mysql import dumps as sql_dumps
from ispcp_lib.steps import mysql_restore
from ispcp_lib.steps.mysql_maintainer import MAINT_USER, grantless_session, set_password

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
        choices=cdb.PREFERENCES,
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

MARKER = "customer_databases.json"
_FAILURES = (CommandFailed, PreconditionFailed, InputError, OSError, pymysql.MySQLError)


@dataclass
class Plan:
    """What happens to one database in this run."""

    db: cdb.CustomerDb
    action: str  # restore | done | skip | refuse | cannot
    strategy: str
    how: str
    dump: cdb.DumpRef | None = None  # the dump used, or the fallback of a binary strategy
    sql: bytes | None = None  # the dump's SQL for this database, read during the checks
    dump_info: sql_dumps.DumpInfo | None = None
    definitions: dict[str, str] = field(default_factory=dict)  # InnoDB table file stem -> CREATE TABLE
    frm_read: dict[str, str] | None = None  # stem -> definition read from its .frm (None: not read yet)
    outcome: str = ""  # what happened (apply)
    fell_back: bool = False
    created: bool = False  # this run created the database on the server (a roll-back may drop it)

    @property
    def name(self) -> str:
        return self.db.name

    def source(self) -> str:
        if self.strategy in (cdb.SQL_DUMP, cdb.ALL_DATABASES_DUMP) and self.dump is not None:
            return str(self.dump.path)
        return str(self.db.folder) if self.db.folder is not None else "—"

    def signature(self) -> str:
        if self.strategy in (cdb.SQL_DUMP, cdb.ALL_DATABASES_DUMP) and self.dump is not None:
            st = self.dump.path.stat()
            data: Any = [self.dump.path.name, st.st_size, st.st_mtime_ns]
        elif self.db.folder is not None:
            data = ms.dir_signature(self.db.folder)
        else:
            data = []
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()


# --- the marker (idempotence) ---------------------------------------------------------------------


def read_marker(ctx: Context) -> dict[str, Any]:
    try:
        data = json.loads((ctx.state_dir / MARKER).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_marker(ctx: Context, marker: dict[str, Any]) -> None:
    ctx.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = ctx.state_dir / MARKER
    path.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    path.chmod(0o600)


# --- the running server ---------------------------------------------------------------------------


@contextmanager
def admin(ctx: Context, login: Login, database: str | None = None) -> Iterator[Any]:
    conn = ctx.mysql.connect(login.user, login.password, database)
    try:
        yield conn
    finally:
        conn.close()


def live_databases(conn: Any) -> dict[str, int]:
    """Database name -> number of tables and views on the running server."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT s.SCHEMA_NAME, COUNT(t.TABLE_NAME) FROM information_schema.SCHEMATA s "
            "LEFT JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME GROUP BY s.SCHEMA_NAME"
        )
        return {str(name): int(n) for name, n in cur.fetchall()}


# --- the step -------------------------------------------------------------------------------------


@action("customer_databases")
def run(ctx: Context, result: Result) -> None:
    bl.check_backup_root(ctx)
    if ctx.mysql is None or not ctx.mysql.status():
        raise PreconditionFailed(
            "MySQL server",
            "is not running, so no database can be restored into it",
            "run mysql_restore first (it leaves the server running), or start MySQL",
        )
    whole_mode = ctx.param("customer_databases_whole_datadir")
    skip = set(ctx.param("customer_databases_skip"))
    login = cdb.admin_login(ctx)
    if login is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "neither debian.cnf (target's or backup's) nor ispCP's own login works on the running server",
            "run mysql_restore and mysql_maintainer first",
        )
    conf = bl.load_old_conf(ctx)
    ispcp_db = (conf.get("DATABASE_NAME") if conf else None) or "ispcp"
    found = cdb.discover(ctx, conf)
    for n in found.notes:
        result.note(n)
    for w in found.warnings:
        result.warn(w)
    datadir = Path(ctx.mysql.datadir)
    marker = read_marker(ctx)
    with admin(ctx, login) as conn:
        live = live_databases(conn)

    plans = [_plan(ctx, d, live, marker, skip) for d in found.databases]
    whole, whole_reason = _whole_datadir(ctx, result, found, plans, whole_mode, datadir, ispcp_db, live)
    if whole:
        for p in plans:
            if p.action in ("restore", "cannot") and p.db.folder is not None:
                p.action, p.strategy, p.how = "restore", cdb.WHOLE_DATADIR, "comes back with the old datadir as a whole"
    elif whole_reason:
        restore = ctx.results.get("mysql_restore")
        later = (
            " (mysql_restore is only planned in this dry run: applying decides again)"
            if restore is not None and restore.status == "planned"
            else ""
        )
        result.note(f"Whole-datadir restore: {whole_reason}{later}.")
    _read_all_frm(ctx, [p for p in plans if p.action == "restore"])
    for p in plans:
        if p.action == "restore" and p.strategy != cdb.WHOLE_DATADIR:
            _check_sources(ctx, result, p)

    plan_table = Table("Customer databases: what the backup holds and what is done", _plan_frame(plans))
    result.tables.append(plan_table)
    result.data["customer_databases"] = [
        {"database": p.name, "action": p.action, "strategy": p.strategy} for p in plans
    ]
    for p in plans:
        if p.action in ("cannot", "refuse"):
            result.warn(f"customer database {p.name}: {p.how}")
    todo = [p for p in plans if p.action == "restore"]
    if not todo:
        done = [p for p in plans if p.action == "done"]
        result.noop_reason = (
            f"{len(done)} customer database(s) restored by an earlier run are live"
            if done
            else "no customer database to restore"
        ) + (f"; {len(plans) - len(done)} left as the table says" if len(plans) > len(done) else "")
        result.summary = result.noop_reason
        if done:
            _verify(ctx, result, login, done, found.listing, check=False, login_dbs={p.name for p in done})
        return

    owner = ms.mysql_owner(ctx.target_root)
    if owner is None:
        raise PreconditionFailed(
            "mysql user",
            "is missing from the target's etc/passwd or etc/group",
            "install mariadb-server on the target first",
            path=str(ctx.t("/etc/passwd")),
        )
    layout = mysql_restore.work_layout(ctx, datadir, "customer")
    mysql_restore.check_writable([datadir, layout.work.parent])
    if whole:
        login = _swap_datadir(ctx, result, found, layout, owner, login, ispcp_db)
        for p in todo:
            if p.strategy == cdb.WHOLE_DATADIR and ctx.apply:
                p.outcome = "restored with the whole datadir"
    for p in todo:
        if p.strategy != cdb.WHOLE_DATADIR:
            _restore_one(ctx, result, p, layout, owner, login)
    if not ctx.apply:
        result.change(
            f"verify: CHECK TABLE and row counts of {len(todo)} database(s), then try every SQL user's "
            "login (password decrypted with the restored keys)"
        )
        result.summary = "planned: " + ", ".join(f"{p.name} ({p.strategy})" for p in todo)
        return

    restored = [p for p in todo if p.outcome.startswith("restored")]
    plan_table.frame = _plan_frame(plans)  # now with each database's outcome
    _verify(
        ctx,
        result,
        login,
        restored,
        found.listing,
        check=True,
        login_dbs={p.name for p in restored} | {p.name for p in plans if p.action == "done"},
    )
    marker.setdefault("databases", {})
    for p in restored:
        marker["databases"][p.name] = {
            "strategy": p.strategy,
            "source": p.source(),
            "signature": p.signature(),
            "run_id": ctx.run_id,
            "ts": dt.datetime.now().isoformat(timespec="seconds"),
        }
    marker["datadir"] = str(datadir)
    write_marker(ctx, marker)
    _tidy(layout)
    failed = [p for p in todo if not p.outcome.startswith("restored")]
    result.summary = f"{len(restored)} of {len(todo)} customer database(s) restored" + (
        f"; failed: {', '.join(p.name for p in failed)}" if failed else ""
    )
    if failed:
        # Every database was tried and the table above shows each outcome; a database the backup allowed to
        # restore and that failed is an error, not a warning (one that cannot be restored stays a warning row).
        shown = "; ".join(f"{p.name}: {p.outcome}" for p in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise PreconditionFailed(
            "customer databases",
            f"{len(failed)} of {len(todo)} failed to restore and were rolled back ({shown})",
            "see each database's result in the table above; repair its backup (or provide an SQL dump of it), "
            "then run this step again: the databases restored now are recorded and left alone",
        )


def _plan(ctx: Context, d: cdb.CustomerDb, live: dict[str, int], marker: dict[str, Any], skip: set[str]) -> Plan:
    if d.name in skip:
        return Plan(d, "skip", "—", "left out (customer_databases_skip)")
    rec = marker.get("databases", {}).get(d.name) if marker.get("datadir") == str(ctx.mysql.datadir) else None
    if rec is not None and d.name in live:
        return Plan(
            d,
            "done",
            rec.get("strategy", "?"),
            f"restored in run {rec.get('run_id')} ({rec.get('ts')}) from {rec.get('source')}; live on the target",
        )
    if live.get(d.name):
        return Plan(
            d,
            "refuse",
            "—",
            f"already exists on the target with {live[d.name]} table(s), not restored by "
            "this step: it is left alone. To restore it from the backup, rename or drop it first, then run "
            "this step again",
        )
    if d.strategy == cdb.CANNOT:
        return Plan(d, "cannot", cdb.CANNOT, d.how)
    dump = d.dumps[0] if d.dumps else None
    return Plan(d, "restore", d.strategy, d.how, dump)


def _plan_frame(plans: list[Plan]) -> pd.DataFrame:
    rows = []
    for p in plans:
        row = p.db.row()
        row.pop("restore")
        row.pop("how / why")
        verdict = {
            "restore": "restore",
            "done": "already restored",
            "skip": "skipped",
            "refuse": "left alone",
            "cannot": "cannot restore",
        }[p.action]
        rows.append(
            {
                **row,
                "strategy": p.strategy,
                "plan": verdict,
                "how / why": p.how,
                **({"result": p.outcome} if any(q.outcome for q in plans) else {}),
            }
        )
    return pd.DataFrame(rows)


# --- checks before anything changes -----------------------------------------------------------------


def _check_sources(ctx: Context, result: Result, p: Plan) -> None:
    """Read what the strategy needs now (definitions, dump text); a problem turns into a fallback or a refusal."""
    if p.strategy == cdb.TABLESPACE_IMPORT:
        problem = _read_definitions(ctx, p)
        if problem is not None:
            if p.dump is not None and _read_dump(p) is None:
                p.strategy = _dump_strategy(p.dump)
                p.how = f"load {p.dump.path.name} with the mariadb client ({problem})"
            else:
                p.action, p.strategy, p.how = "cannot", cdb.CANNOT, problem
            return
    if p.strategy in (cdb.SQL_DUMP, cdb.ALL_DATABASES_DUMP):
        problem = _read_dump(p)
        if problem is None:
            return
        p.dump = None
        if p.db.binary.strategy is None:
            p.action, p.strategy, p.how = "cannot", cdb.CANNOT, f"{problem}. {p.db.binary.reason}"
            return
        p.strategy, p.how = p.db.binary.strategy, f"{problem}; its folder is used instead"
        if p.strategy == cdb.TABLESPACE_IMPORT:
            _check_sources(ctx, result, p)
        return
    if p.dump is not None:  # a binary strategy with the dump as fallback: check the fallback now
        problem = _read_dump(p)
        if problem is not None:
            p.how += f" (the dump is no fallback: {problem})"
            p.dump = None


def _dump_strategy(ref: cdb.DumpRef) -> str:
    return cdb.ALL_DATABASES_DUMP if ref.kind == "all-databases" else cdb.SQL_DUMP


def _read_all_frm(ctx: Context, plans: list[Plan]) -> None:
    """The .frm definitions of every database that may need a tablespace import, by one throwaway server."""
    frms = {
        f"{p.name}/{stem}": p.db.folder / f"{stem}.frm"
        for p in plans
        if p.db.folder is not None and p.db.binary.strategy == cdb.TABLESPACE_IMPORT
        for stem, src in p.db.binary.definitions.items()
        if src == "frm"
    }
    if not frms:
        return
    try:
        read = cdb.read_frm_definitions(frms, ctx.runner)
    except (PreconditionFailed, CommandFailed):
        return  # each database then tries on its own and reports why
    for p in plans:
        p.frm_read = {key.split("/", 1)[1]: v for key, v in read.items() if key.split("/", 1)[0] == p.name}


def _read_definitions(ctx: Context, p: Plan) -> str | None:
    """CREATE TABLE for every InnoDB table to import; None when all are there, else what is missing."""
    folder = p.db.folder
    assert folder is not None
    read = p.frm_read
    if read is None:
        frms = {stem: folder / f"{stem}.frm" for stem, src in p.db.binary.definitions.items() if src == "frm"}
        try:
            read = p.frm_read = cdb.read_frm_definitions(frms, ctx.runner)
        except (PreconditionFailed, CommandFailed) as exc:
            return f"the .frm definitions could not be read by a throwaway server ({str(exc).splitlines()[0]})"
    from_dump: dict[str, str] = {}
    if any(src == "dump" for src in p.db.binary.definitions.values()) and p.dump is not None:
        try:
            from_dump = cdb.dump_create_tables(cdb.read_dump_for(p.dump, p.name).decode("utf-8", "replace"))
        except InputError:
            from_dump = {}
    missing = []
    for stem, src in p.db.binary.definitions.items():
        name = cdb.table_name(stem)
        if src == "frm" and stem in read:
            p.definitions[stem] = cdb.with_name_and_engine(read[stem], name)
        elif src == "dump" and name in from_dump:
            p.definitions[stem] = cdb.with_name_and_engine(from_dump[name], name)
        else:
            missing.append(name)
    if missing:
        return (
            f"the definition of InnoDB table(s) {', '.join(missing)} is unavailable (the .frm cannot be read). "
            "Needs: its CREATE TABLE statement (a schema-only dump, mariadb-dump --no-data) or a SQL dump"
        )
    return None


def _read_dump(p: Plan) -> str | None:
    """Read and check the dump for this database; None when it can be loaded, else why not."""
    assert p.dump is not None
    try:
        p.sql = cdb.read_dump_for(p.dump, p.name)
        info = sql_dumps.inspect_dump(p.dump.path, p.sql)
    except InputError as exc:
        return exc.problem
    if info.complete is False:
        return f"the dump {p.dump.path.name} lacks mysqldump's closing '-- Dump completed' line: it is cut off"
    others = [n for n in cdb.dump_database_names(p.sql.decode("utf-8", "replace")) if n != p.name]
    if others:
        return f"the dump {p.dump.path.name} also switches to {', '.join(others)}: loading it would change those"
    if not info.tables:
        return f"the dump {p.dump.path.name} creates no tables for {p.name}"
    p.dump_info = info
    return None


# --- per-database restores ---------------------------------------------------------------------------


def _restore_one(
    ctx: Context, result: Result, p: Plan, layout: mysql_restore.Layout, owner: tuple[int, int], login: Login
) -> None:
    """Restore one database; a failure is rolled back, the other source tried when there is one, and recorded."""
    try:
        _do(ctx, result, p, p.strategy, layout, owner, login)
        p.outcome = "restored" if ctx.apply else ""
        return
    except _FAILURES as exc:
        if not ctx.apply:
            p.outcome = f"plan failed: {_first_line(exc)}"
            result.warn(f"{p.name}: {p.outcome}")
            return
        first = _first_line(exc)
        _roll_back(ctx, result, p, layout, login)
    other = _fallback(ctx, p)
    if other is not None:
        result.warn(f"{p.name}: the {p.strategy} failed ({first}); rolled back, trying the {other} instead")
        try:
            _do(ctx, result, p, other, layout, owner, login)
            p.outcome = f"restored by {other} after the {p.strategy} failed ({first})"
            p.strategy, p.fell_back = other, True
            return
        except _FAILURES as again:
            _roll_back(ctx, result, p, layout, login)
            first = f"{first}; the {other} failed too: {_first_line(again)}"
    p.outcome = f"failed and rolled back: {first}"


def _fallback(ctx: Context, p: Plan) -> str | None:
    """The other source of a database whose first strategy failed: its dump, or its folder."""
    if p.strategy in cdb.BINARY_STRATEGIES:
        if p.dump is not None and _read_dump(p) is None:
            return _dump_strategy(p.dump)
        return None
    binary = p.db.binary.strategy
    if binary == cdb.TABLESPACE_IMPORT and not p.definitions and _read_definitions(ctx, p) is not None:
        return None
    return binary


def _do(
    ctx: Context,
    result: Result,
    p: Plan,
    strategy: str,
    layout: mysql_restore.Layout,
    owner: tuple[int, int],
    login: Login,
) -> None:
    if strategy == cdb.DIRECTORY_COPY:
        _directory_copy(ctx, result, p, layout, owner)
    elif strategy == cdb.TABLESPACE_IMPORT:
        _tablespace_import(ctx, result, p, layout, owner, login)
    elif strategy in (cdb.SQL_DUMP, cdb.ALL_DATABASES_DUMP):
        _load_dump(ctx, result, p, login)
    else:
        raise PreconditionFailed(
            f"customer database {p.name}", f"has no restore strategy ({strategy})", "see the table"
        )


def _stage(ctx: Context, result: Result, p: Plan, layout: mysql_restore.Layout, owner: tuple[int, int]) -> Path:
    """cp -a the backup's folder beside the datadir; Aria tables re-stamped; owned by the target's mysql user."""
    assert p.db.folder is not None
    staged = layout.staging / p.db.folder.name
    result.change(f"copy {p.db.folder} to {ctx.display_path(staged)} (cp -a)")
    if ctx.apply:
        layout.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx.runner.run(["cp", "-a", "--reflink=auto", "--", str(p.db.folder), str(staged)], mutates=True, timeout=7200)
    files = p.db.files
    # MariaDB re-stamps Aria tables from another server itself when it opens them, except data files with a
    # never-written page: mysql_restore's rebuild (in the staged copy) handles those.
    blank = (
        sorted(n for n, t in files.tables.items() if t.engine == "Aria" and ms.has_blank_page(p.db.folder, n))
        if files
        else []
    )
    mysql_restore.rebuild_aria(ctx, result, staged, blank)
    uid, gid = owner
    result.change(f"chown -R {uid}:{gid} (the target's mysql user and group) {ctx.display_path(staged)}")
    ctx.runner.run(["chown", "-R", f"{uid}:{gid}", "--", str(staged)], mutates=True, timeout=3600)
    return staged


def _place_folder(ctx: Context, result: Result, p: Plan, staged: Path, layout: mysql_restore.Layout) -> None:
    live = layout.datadir / staged.name
    if live.exists():
        # An empty database of the same name (no tables: checked in the plan): keep it, then replace it.
        result.change(f"move the target's empty {ctx.display_path(live)} aside to {ctx.display_path(layout.kept)}")
        if ctx.apply:
            layout.kept.mkdir(parents=True, exist_ok=True, mode=0o700)
            mysql_restore.move_tree(ctx, live, layout.kept / staged.name)
            result.backups.append(str(layout.kept / staged.name))
    result.change(f"rename the staged {p.name} into {ctx.display_path(layout.datadir)}")
    if ctx.apply:
        p.created = True
        mysql_restore.move_tree(ctx, staged, live)


def _directory_copy(
    ctx: Context, result: Result, p: Plan, layout: mysql_restore.Layout, owner: tuple[int, int]
) -> None:
    staged = _stage(ctx, result, p, layout, owner)
    _place_folder(ctx, result, p, staged, layout)


# Files of an InnoDB table that travel with its tablespace, and the trigger files placed last.
_TABLESPACE_PARTS = (".ibd", ".cfg")
_LATE_SUFFIXES = (".TRG", ".TRN")


def _tablespace_import(
    ctx: Context, result: Result, p: Plan, layout: mysql_restore.Layout, owner: tuple[int, int], login: Login
) -> None:
    """Other tables as files, then each InnoDB table: CREATE from its definition, DISCARD, copy .ibd, IMPORT."""
    staged = _stage(ctx, result, p, layout, owner)
    side = layout.staging / f"{staged.name}.tablespaces"
    live = layout.datadir / staged.name
    stems = p.db.binary.innodb
    result.change(
        f"set aside the {len(stems)} .ibd file(s) and the trigger files; drop the InnoDB .frm files from "
        "the staged folder (the server writes its own when the tables are created)"
    )
    if ctx.apply:
        side.mkdir(mode=0o700)
        for stem in stems:
            for suffix in _TABLESPACE_PARTS:
                if (staged / f"{stem}{suffix}").exists():
                    os.rename(staged / f"{stem}{suffix}", side / f"{stem}{suffix}")
            for suffix in (".frm", ".isl"):
                (staged / f"{stem}{suffix}").unlink(missing_ok=True)
        for f in staged.iterdir():
            if f.suffix in _LATE_SUFFIXES:
                os.rename(f, side / f.name)
    _place_folder(ctx, result, p, staged, layout)
    db = ms.quote_ident(p.name)
    for stem in stems:
        table = f"{db}.{ms.quote_ident(cdb.table_name(stem))}"
        result.change(
            f"CREATE TABLE {table} (definition from its {p.db.binary.definitions[stem]}), "
            "DISCARD TABLESPACE, copy the old .ibd in, IMPORT TABLESPACE"
        )
    if not ctx.apply:
        return
    with admin(ctx, login) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        for stem in stems:
            table = f"{db}.{ms.quote_ident(cdb.table_name(stem))}"
            cur.execute(p.definitions[stem].replace("CREATE TABLE ", f"CREATE TABLE {db}.", 1))
            cur.execute(f"ALTER TABLE {table} DISCARD TABLESPACE")
            for suffix in _TABLESPACE_PARTS:
                if (side / f"{stem}{suffix}").exists():
                    mysql_restore.move_tree(ctx, side / f"{stem}{suffix}", live / f"{stem}{suffix}")
            cur.execute(f"ALTER TABLE {table} IMPORT TABLESPACE")
        late = sorted(f for f in side.iterdir() if f.suffix in _LATE_SUFFIXES)
        for f in late:
            mysql_restore.move_tree(ctx, f, live / f.name)
        if late:
            cur.execute(
                f"FLUSH TABLES {', '.join(f'{db}.{ms.quote_ident(cdb.table_name(s))}' for s in stems)}"
                if stems
                else "FLUSH TABLES"
            )
    side.rmdir()


def _load_dump(ctx: Context, result: Result, p: Plan, login: Login) -> None:
    assert p.dump is not None
    if p.sql is None:
        problem = _read_dump(p)
        if problem is not None:
            raise InputError(f"dump of {p.name}", problem, "use another dump", path=str(p.dump.path))
    assert p.sql is not None
    creates_db = p.name in cdb.dump_database_names(p.sql.decode("utf-8", "replace"))
    what = "its part of " if p.dump.kind == "all-databases" else ""
    if ctx.apply:
        p.created = True
    if not creates_db:
        result.change(f"CREATE DATABASE {ms.quote_ident(p.name)} (the dump does not create it)")
        if ctx.apply:
            with admin(ctx, login) as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS {ms.quote_ident(p.name)}")
    result.change(f"load {what}{p.dump.path} into {p.name} with the mariadb client")
    with sql_dumps.defaults_file(login, ctx.mysql.socket, write=ctx.apply) as cnf:
        # A dump that creates its database must not name it on the command line: the client would USE it
        # before the dump's CREATE DATABASE runs.
        target = [] if creates_db else [p.name]
        ctx.runner.run(sql_dumps.client_argv(cnf, "--batch", *target), input=p.sql, mutates=True, timeout=7200)


def _roll_back(ctx: Context, result: Result, p: Plan, layout: mysql_restore.Layout, login: Login) -> None:
    """Undo what this run did for the database (it did not exist before); leftovers go to the run's failed/."""
    folder_name = p.db.folder.name if p.db.folder is not None else p.name
    live = layout.datadir / folder_name
    if p.created:
        try:
            with admin(ctx, login) as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {ms.quote_ident(p.name)}")
        except pymysql.MySQLError as exc:
            result.warn(f"{p.name}: DROP DATABASE during the roll-back failed ({exc}); its folder is moved aside")
        if live.exists():  # files the server did not know (DROP leaves them): ours, placed by this run
            layout.failed.mkdir(parents=True, exist_ok=True, mode=0o700)
            mysql_restore.move_tree(ctx, live, layout.failed / folder_name)
        p.created = False
    kept = layout.kept / folder_name
    if kept.exists() and not live.exists():
        mysql_restore.move_tree(ctx, kept, live)  # the target's empty database of that name, as it was
        if str(kept) in result.backups:
            result.backups.remove(str(kept))
    for leftover in (layout.staging / folder_name, layout.staging / f"{folder_name}.tablespaces"):
        if leftover.exists():
            layout.failed.mkdir(parents=True, exist_ok=True, mode=0o700)
            mysql_restore.move_tree(ctx, leftover, layout.failed / f"{leftover.name}.staged")


def _first_line(exc: BaseException) -> str:
    """One line that says what went wrong: a command's last error line, else the exception's first."""
    if isinstance(exc, CommandFailed):
        lines = [ln for ln in exc.stderr.strip().splitlines() if ln.strip()]
        return f"{Path(exc.argv[0]).name} exited with {exc.rc}: {lines[-1] if lines else 'no message'}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tidy(layout: mysql_restore.Layout) -> None:
    """Remove the run's folder when nothing was kept in it."""
    for sub in (layout.staging, layout.work):
        try:
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        except OSError:
            pass


# --- the whole datadir ---------------------------------------------------------------------------------


def _whole_datadir(
    ctx: Context,
    result: Result,
    found: cdb.Discovery,
    plans: list[Plan],
    mode: str,
    datadir: Path,
    ispcp_db: str,
    live: dict[str, int],
) -> tuple[bool, str]:
    """Whether this run replaces the target's datadir with the backup's, and, if not, why."""
    if mode == "never":
        return False, ""
    candidates = [p for p in plans if p.action in ("restore", "cannot")]
    needed = [p for p in plans if p.action == "cannot" and p.db.folder is not None]
    if not candidates:
        return False, ""
    if mode == "auto" and not needed:
        if not found.datadir_complete:
            return False, ""
        return False, (
            "not needed, every database has a way back of its own (customer_databases_whole_datadir = always forces it)"
        )
    if not found.datadir_complete:
        return False, f"not possible: {found.datadir_reason}"
    assert found.backup_datadir is not None
    old = system.server_version_from_datadir(found.backup_datadir)
    new = ctx.mysql.version()
    verdict, text = system.compare_server_versions(old, new)
    if verdict not in ("same", "upgrade"):
        return False, f"not possible: server versions {text}"
    done = mysql_restore.read_marker(ctx)
    if done is None or done.get("datadir") != str(datadir):
        return False, (
            "not possible: mysql_restore has not restored ispcp and mysql into this datadir; the swap "
            "would replace them unchecked"
        )
    for name in (ispcp_db, "mysql"):
        rec = done.get("sources", {}).get(name)
        src = mysql_restore.Source(name, "binary", found.backup_datadir / name)
        if rec is None or rec.get("kind") != "binary" or rec.get("signature") != src.signature():
            how = f"from {rec.get('kind')} ({rec.get('path')})" if rec else "not at all"
            return False, (
                f"not possible: mysql_restore restored {name} {how}, not from the backup's folder; the swap "
                "would bring back what it chose not to use"
            )
    busy = [p.name for p in plans if p.action in ("done", "refuse") and live.get(p.name)]
    if busy:
        return False, f"not possible: {', '.join(busy)} already live on the target would be replaced"
    own = sorted(n for n in live if n not in cdb.SYSTEM_DATABASES and not (found.backup_datadir / n).is_dir())
    if own:
        return False, (
            f"not possible: the target has database(s) the backup's datadir lacks ({', '.join(own)}); "
            "the swap would take them off the server"
        )
    result.note(
        f"Whole-datadir restore: {found.datadir_reason}; server versions {text}; mysql_restore restored "
        f"{ispcp_db} and mysql from the same folders."
    )
    return True, ""


def _carried_logins(ctx: Context) -> list[Login]:
    """Logins that work now and live in files of the target: set again after the swap if the old grants lack them."""
    out = []
    for login in (mysql_creds.target_admin(ctx), mysql_creds.read_debian_cnf(ctx.state_dir / "mysql-root.cnf")):
        if login is not None:
            ctx.secrets.add(login.password, f"MySQL {login.user}")
            if ctx.mysql.can_login(login.user, login.password) is None:
                out.append(login)
    return out


def _swap_datadir(
    ctx: Context,
    result: Result,
    found: cdb.Discovery,
    layout: mysql_restore.Layout,
    owner: tuple[int, int],
    login: Login,
    ispcp_db: str,
) -> Login:
    """Replace the target's datadir by the backup's complete one, keeping the old; returns an admin login after."""
    assert found.backup_datadir is not None
    src, datadir = found.backup_datadir, layout.datadir
    staged = layout.staging / "datadir"
    kept = layout.kept / "datadir"
    uid, gid = owner
    carried = _carried_logins(ctx)
    result.change(f"copy the backup's whole datadir {src} to {ctx.display_path(staged)} (cp -a)")
    if ctx.apply:
        layout.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx.runner.run(["cp", "-a", "--reflink=auto", "--", str(src), str(staged)], mutates=True, timeout=14400)
    if ctx.apply:
        for leftover in list(staged.glob("*.pid")) + list(staged.glob("*.sock")):
            leftover.unlink()  # the dead server's pid/socket files would confuse the start
    result.change(f"chown -R {uid}:{gid} (the target's mysql user and group) {ctx.display_path(staged)}")
    ctx.runner.run(["chown", "-R", f"{uid}:{gid}", "--", str(staged)], mutates=True, timeout=7200)
    result.change(f"stop MySQL through its {ctx.mysql.kind} service")
    result.change(
        f"move everything in {ctx.display_path(datadir)} aside to {ctx.display_path(kept)} (kept), "
        "move the staged datadir's contents in, start MySQL"
    )
    if carried and not ctx.apply:
        result.change(
            f"set the password of {', '.join(c.user for c in carried)} again if the old grants lack it "
            "(the target's debian.cnf and saved root login keep working)"
        )
    old = system.server_version_from_datadir(src)
    verdict, _ = system.compare_server_versions(old, ctx.mysql.version())
    if verdict == "upgrade":
        result.change("run mariadb-upgrade --force (the old files come from an older server)")
    if not ctx.apply:
        return login
    ctx.mysql.stop()
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        kept.mkdir(parents=True, mode=0o700)
        for entry in sorted(os.listdir(datadir)):
            mysql_restore.move_tree(ctx, datadir / entry, kept / entry)
            moved_out.append(entry)
        for entry in sorted(os.listdir(staged)):
            mysql_restore.move_tree(ctx, staged / entry, datadir / entry)
            moved_in.append(entry)
        staged.rmdir()
        ctx.mysql.start()
    except (*_FAILURES,) as exc:
        _unswap(ctx, layout, moved_out)
        raise PreconditionFailed(
            "whole-datadir restore",
            f"failed ({_first_line(exc)}); the target's own datadir was put back and the "
            f"server started again with it; the backup's copy is in {layout.failed}",
            "read the server's error log; or set customer_databases_whole_datadir = never",
        ) from None
    result.backups.append(str(kept))
    after = _reapply_logins(ctx, result, carried)
    working = after or cdb.admin_login(ctx)
    if working is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "no login works after the whole-datadir restore",
            "run mysql_maintainer again (it resets debian-sys-maint)",
        )
    if verdict == "upgrade":
        with sql_dumps.defaults_file(working, ctx.mysql.socket) as cnf:
            ctx.runner.run(sql_dumps.client_argv(cnf, "--force", program="mariadb-upgrade"), mutates=True, timeout=3600)
    _check_system_databases(ctx, result, working, [ispcp_db, "mysql"])
    return working


def _check_system_databases(ctx: Context, result: Result, login: Login, names: list[str]) -> None:
    """The swap brought ispcp and mysql back from the backup too: every table must still open."""
    bad = []
    with admin(ctx, login) as conn:
        for name in names:
            tables = [t.name for t in ms.live_tables(conn, name) if t.kind != "VIEW"]
            ms.count_rows(conn, name, tables)  # opens each table first (Aria re-stamping), as mysql_restore does
            bad += [f"{name}.{t}: {v} {m}" for t, (v, m) in ms.check_tables(conn, name, tables).items() if v != "OK"]
    if bad:
        result.warn(
            f"after the whole-datadir restore, {len(bad)} table(s) of {' and '.join(names)} fail CHECK "
            f"TABLE: {'; '.join(bad[:4])}"
        )
    else:
        result.note(
            f"After the swap every table of {' and '.join(names)} passes CHECK TABLE (the same files "
            "mysql_restore restored)."
        )


def _unswap(ctx: Context, layout: mysql_restore.Layout, moved_out: list[str]) -> None:
    """Put the target's own datadir back: whatever is in the datadir now goes to failed/, the kept entries return."""
    try:
        ctx.mysql.stop()
    except (PreconditionFailed, CommandFailed):
        pass
    layout.failed.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in sorted(os.listdir(layout.datadir)):  # the backup's files and whatever a failed start wrote
        mysql_restore.move_tree(ctx, layout.datadir / entry, layout.failed / entry)
    for entry in moved_out:
        mysql_restore.move_tree(ctx, layout.kept / "datadir" / entry, layout.datadir / entry)
    ctx.mysql.start()


def _reapply_logins(ctx: Context, result: Result, carried: list[Login]) -> Login | None:
    """After the swap, the grants are the old server's again: give the carried logins their passwords back."""
    lost = [c for c in carried if ctx.mysql.can_login(c.user, c.password) is not None]
    if lost:
        result.change(
            f"set the password of {', '.join(c.user for c in lost)} again (the old grants lack it) in a "
            "short --skip-grant-tables --skip-networking session"
        )
        with grantless_session(ctx) as conn:
            for c in lost:
                set_password(conn, c.user, c.password, create_admin=c.user == MAINT_USER)
        still = [c.user for c in lost if ctx.mysql.can_login(c.user, c.password) is not None]
        if still:
            raise PreconditionFailed(
                "MySQL login",
                f"{', '.join(still)} still refused after setting the password again",
                "run mysql_maintainer again",
            )
        result.note(
            f"The old grants lacked the current password of {', '.join(c.user for c in lost)}: set again, "
            "so the files that hold it (debian.cnf, mysql-root.cnf) keep working."
        )
    return carried[0] if carried else None


# --- verification --------------------------------------------------------------------------------------


def _old_counts(p: Plan) -> dict[str, tuple[str, int | None]]:
    """table -> (engine, the old server's count) from MyISAM/Aria headers or the dump's INSERTs."""
    if p.strategy in (cdb.SQL_DUMP, cdb.ALL_DATABASES_DUMP) and p.dump_info is not None:
        return {t: ("", p.dump_info.rows.get(t, 0)) for t in p.dump_info.tables}
    files, folder = p.db.files, p.db.folder
    if files is None or folder is None:
        return {}
    return {cdb.table_name(n): (t.engine, ms.header_row_count(folder, n, t.engine)) for n, t in files.tables.items()}


def _verify(
    ctx: Context,
    result: Result,
    login: Login,
    plans: list[Plan],
    found_listing: cdb.Listing,
    check: bool,
    login_dbs: set[str],
) -> None:
    """Tables open, rows counted (CHECK TABLE only right after a restore); then every SQL user's login."""
    rows = []
    with admin(ctx, login) as conn:
        for p in plans:
            tables = ms.live_tables(conn, p.name)
            names = [t.name for t in tables if t.kind != "VIEW"]
            # Counting first opens every table the normal way (Aria tables from another server get re-stamped).
            counts = ms.count_rows(conn, p.name, names)
            checks = ms.check_tables(conn, p.name, [t.name for t in tables]) if check else {}
            old = _old_counts(p) if check else {}
            for t in tables:
                engine, before = old.get(t.name, ("", None))
                after = counts.get(t.name)
                verdict, message = checks.get(t.name, ("", ""))
                match = (
                    "view"
                    if t.kind == "VIEW"
                    else ""
                    if before is None or after is None
                    else ("yes" if before == after else "NO")
                )
                rows.append(
                    {
                        "database": p.name,
                        "table": t.name,
                        "engine": t.engine or t.kind,
                        "old rows": "" if before is None else before,
                        "restored rows": "" if after is None else after,
                        "CHECK TABLE": verdict if verdict in ("", "OK") else f"{verdict}: {message}",
                        "match": match,
                    }
                )
            if not tables:
                rows.append(
                    {
                        "database": p.name,
                        "table": "(none)",
                        "engine": "",
                        "old rows": "",
                        "restored rows": "",
                        "CHECK TABLE": "no tables on the server",
                        "match": "NO",
                    }
                )
    frame = pd.DataFrame(
        rows, columns=["database", "table", "engine", "old rows", "restored rows", "CHECK TABLE", "match"]
    )
    title = (
        "Restored customer databases: CHECK TABLE and rows (old: index headers or dump)"
        if check
        else "Customer databases on the server now (row counts, read only)"
    )
    result.table(title, frame)
    result.data["row_counts"] = frame.to_dict("records")
    bad = frame[(~frame["CHECK TABLE"].isin(["", "OK"])) | (frame["match"] == "NO")]
    for db in sorted(set(bad["database"])):
        first = bad[bad["database"] == db].iloc[0]
        result.warn(
            f"customer database {db}: table {first['table']} fails the verification (CHECK TABLE "
            f"{first['CHECK TABLE'] or '—'}, old {first['old rows']} rows, restored {first['restored rows']})"
        )
    listing = cdb.target_listing(ctx, _ispcp_db(ctx)) or found_listing
    _verify_logins(ctx, result, listing, login_dbs)


def _ispcp_db(ctx: Context) -> str:
    try:
        conf = bl.load_old_conf(ctx)
    except InputError:
        conf = None
    return (conf.get("DATABASE_NAME") if conf else None) or "ispcp"


def _verify_logins(ctx: Context, result: Result, listing: cdb.Listing, restored: set[str]) -> None:
    """Every sql_user row: its decrypted password logs in and reads its database; failures with the reason."""
    keysets = cdb.account_keysets(ctx)
    lost_keys = not any(label.startswith("the backup's") for label, _ in keysets)
    rows, failed, unproven = [], [], []
    for u in listing.users:
        row = {"SQL user": u.name, "id": u.id, "database": u.database or "(sql_database row missing)"}
        if u.database not in restored:
            rows.append(
                {
                    **row,
                    "login": "not tried",
                    "reads its database": "",
                    "detail": "its database is not on the server (see the table above)",
                }
            )
            continue
        plain = cdb.decrypt_with(u.cipher, keysets) if u.cipher else None
        if plain is None:
            reason = (
                "the backup has no key file: with the keys lost this password cannot be decrypted (the keys "
                "step's keys_reset_account_passwords gives the account a new one)"
                if lost_keys
                else "its sqlu_pass does not decrypt to text with the restored (or the backup's) keys: wrong keys "
                "or a damaged row (the keys step lists every such row)"
            )
            rows.append({**row, "login": "not tried", "reads its database": "", "detail": reason})
            unproven.append(u.name)
            continue
        password, which = plain
        ctx.secrets.add(password, f"SQL password of {u.name}")
        reason = ctx.mysql.can_login(u.name, password, u.database)
        if reason is not None:
            rows.append({**row, "login": "REFUSED", "reads its database": "", "detail": ctx.secrets.redact(reason)})
            failed.append(f"{u.name}: {ctx.secrets.redact(reason)}")
            continue
        readable, detail = _reads(ctx, u.name, password, u.database)
        rows.append(
            {
                **row,
                "login": "works",
                "reads its database": "yes" if readable else "NO",
                "detail": f"password from {which}; {detail}",
            }
        )
        if not readable:
            failed.append(f"{u.name}: {detail}")
    result.table(
        "SQL users of the customer databases: login with the decrypted password",
        pd.DataFrame(rows, columns=["SQL user", "id", "database", "login", "reads its database", "detail"]),
    )
    result.data["sql_logins"] = rows
    if failed:
        result.warn(
            f"{len(failed)} SQL user login(s) fail: " + "; ".join(failed[:6]) + (" ..." if len(failed) > 6 else "")
        )
    if unproven:
        why = "the keys are lost" if lost_keys else "their password does not decrypt"
        result.warn(
            f"{len(unproven)} SQL user login(s) cannot be tried, {why}: {', '.join(unproven[:10])} (see the table)"
        )


def _reads(ctx: Context, user: str, password: str, database: str | None) -> tuple[bool, str]:
    try:
        with ctx.mysql.connect(user, password, database) as conn, conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = [r[0] for r in cur.fetchall()]
            if not tables:
                return False, "the database shows no tables to this user"
            cur.execute(f"SELECT COUNT(*) FROM {ms.quote_ident(tables[0])}")
            n = int(cur.fetchone()[0])
    except pymysql.MySQLError as exc:
        return False, ctx.secrets.redact(f"reading fails: {exc}")
    return True, f"sees {len(tables)} table(s), reads {tables[0]} ({n} rows)"
