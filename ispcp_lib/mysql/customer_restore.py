"""Restoring one customer database by its strategy, with a roll-back and the other source as fallback.

Strategies (customer_dbs.Strategy): a directory copy (staged beside the datadir, renamed in), a
tablespace import (the table created from its definition, DISCARD, the old .ibd moved in, IMPORT),
an SQL dump loaded with the client. Every file change runs on the target through the runner; the
backup is read through its own side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pymysql

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_db_reader
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import accounts, customer_dbs, datadir, dialect, dumps, records
from ispcp_lib.mysql.customer_dbs import Strategy
from ispcp_lib.mysql.dialect import Dialect

FAILURES = (CommandFailed, PreconditionFailed, InputError, OSError, pymysql.MySQLError)


class Action:
    """What happens to one database in this run."""

    RESTORE = "restore"
    DONE = "done"  # restored by an earlier run, live
    SKIP = "skip"  # left out by the operator
    REFUSE = "refuse"  # exists on the target already
    CANNOT = "cannot"


@dataclass
class Plan:
    db: customer_dbs.CustomerDb
    action: str  # an Action
    strategy: Strategy | None
    how: str
    dump: dumps.DumpRef | None = None  # the dump used, or the fallback of a binary strategy
    sql: bytes | None = None  # the dump's SQL for this database, read during the checks
    dump_info: dumps.DumpInfo | None = None
    definitions: dict[str, str] = field(default_factory=dict)  # InnoDB table file stem -> CREATE TABLE
    frm_read: dict[str, str] | None = None  # stem -> definition read from its .frm (None: not read yet)
    outcome: str = ""  # what happened (apply)
    fell_back: bool = False
    created: bool = False  # this run created the database on the server (a roll-back may drop it)

    @property
    def name(self) -> str:
        return self.db.name

    @property
    def folder_name(self) -> str:
        return self.db.folder.rsplit("/", 1)[-1] if self.db.folder is not None else self.name

    def source(self) -> str:
        if self.strategy is not None and self.strategy.is_dump and self.dump is not None:
            return self.dump.path
        return self.db.folder or "—"

    def signature(self, ctx: Context) -> str:
        if self.strategy is not None and self.strategy.is_dump and self.dump is not None:
            return records.signature(ctx, self.dump.file)
        return records.signature(ctx, self.db.folder) if self.db.folder is not None else ""


# --- checks before anything changes -----------------------------------------------------------------


def imports_tablespaces(sql: Dialect) -> bool:
    """Whether the server imports a foreign .ibd (transportable tablespaces: MySQL 5.6, MariaDB 10.0)."""
    return sql.version >= ((10, 0, 0) if sql.mariadb else (5, 6, 0))


def without_tablespace_import(p: Plan, server: str) -> None:
    """A server too old to import tablespaces: the dump when there is one, else no way back."""
    why = f"{server} cannot import InnoDB tablespaces (MySQL 5.6 / MariaDB 10.0 and later can)"
    if p.dump is not None:
        p.strategy = customer_dbs.dump_strategy(p.dump)
        p.how = f"load {p.dump.file.name} with the mariadb client ({why})"
    else:
        p.action, p.strategy, p.how = Action.CANNOT, Strategy.CANNOT, f"{why}. Needs: a SQL dump of the database"


def check_sources(ctx: Context, p: Plan) -> None:
    """Read what the strategy needs now (definitions, dump text); a problem turns into a fallback or a refusal."""
    if p.strategy is Strategy.TABLESPACE_IMPORT:
        problem = read_definitions(ctx, p)
        if problem is not None:
            if p.dump is not None and read_dump(ctx, p) is None:
                p.strategy = customer_dbs.dump_strategy(p.dump)
                p.how = f"load {p.dump.file.name} with the mariadb client ({problem})"
            else:
                p.action, p.strategy, p.how = Action.CANNOT, Strategy.CANNOT, problem
            return
    if p.strategy is not None and p.strategy.is_dump:
        problem = read_dump(ctx, p)
        if problem is None:
            return
        p.dump = None
        if p.db.binary.strategy is None:
            p.action, p.strategy, p.how = Action.CANNOT, Strategy.CANNOT, f"{problem}. {p.db.binary.reason}"
            return
        p.strategy, p.how = p.db.binary.strategy, f"{problem}; its folder is used instead"
        if p.strategy is Strategy.TABLESPACE_IMPORT:
            check_sources(ctx, p)
        return
    if p.dump is not None:  # a binary strategy with the dump as fallback: check the fallback now
        problem = read_dump(ctx, p)
        if problem is not None:
            p.how += f" (the dump is no fallback: {problem})"
            p.dump = None


def _frm_files(ctx: Context, p: Plan) -> dict[str, bytes]:
    assert ctx.backup is not None and p.db.folder is not None
    out = {}
    for stem, src in p.db.binary.definitions.items():
        data = ctx.backup.read_bytes(datadir.join(p.db.folder, f"{stem}.frm")) if src == "frm" else None
        if data is not None:
            out[stem] = data
    return out


def read_all_frm(ctx: Context, plans: list[Plan]) -> None:
    """The .frm definitions of every database that may need a tablespace import, by one throwaway server."""
    wanted = [p for p in plans if p.db.folder is not None and p.db.binary.strategy is Strategy.TABLESPACE_IMPORT]
    frms = {f"{p.name}/{stem}": data for p in wanted for stem, data in _frm_files(ctx, p).items()}
    if not frms:
        return
    try:
        read = customer_dbs.read_frm_definitions(frms, ctx.runner, backup_db_reader.scratch_dir(ctx))
    except (PreconditionFailed, CommandFailed):
        return  # each database then tries on its own and reports why
    for p in plans:
        p.frm_read = {key.split("/", 1)[1]: v for key, v in read.items() if key.split("/", 1)[0] == p.name}


def read_definitions(ctx: Context, p: Plan) -> str | None:
    """CREATE TABLE for every InnoDB table to import; None when all are there, else what is missing."""
    assert ctx.backup is not None
    read = p.frm_read
    if read is None:
        try:
            read = p.frm_read = customer_dbs.read_frm_definitions(_frm_files(ctx, p), ctx.runner)
        except (PreconditionFailed, CommandFailed) as exc:
            return f"the .frm definitions could not be read by a throwaway server ({str(exc).splitlines()[0]})"
    from_dump: dict[str, str] = {}
    if any(src == "dump" for src in p.db.binary.definitions.values()) and p.dump is not None:
        try:
            text = dumps.read_dump_for(ctx.backup, p.dump, p.name).decode("utf-8", "replace")
            from_dump = dumps.dump_create_tables(text)
        except InputError:
            from_dump = {}
    missing = []
    for stem, src in p.db.binary.definitions.items():
        name = customer_dbs.table_name(stem)
        if src == "frm" and stem in read:
            p.definitions[stem] = dialect.with_name_and_engine(read[stem], name)
        elif src == "dump" and name in from_dump:
            p.definitions[stem] = dialect.with_name_and_engine(from_dump[name], name)
        else:
            missing.append(name)
    if missing:
        return (
            f"the definition of InnoDB table(s) {', '.join(missing)} is unavailable (the .frm cannot be read). "
            "Needs: its CREATE TABLE statement (a schema-only dump, mariadb-dump --no-data) or a SQL dump"
        )
    return None


def read_dump(ctx: Context, p: Plan) -> str | None:
    """Read and check the dump for this database; None when it can be loaded, else why not."""
    assert p.dump is not None and ctx.backup is not None
    name = p.dump.file.name
    try:
        p.sql = dumps.read_dump_for(ctx.backup, p.dump, p.name)
        info = dumps.inspect_dump(p.dump.path, p.sql)
    except InputError as exc:
        return exc.problem
    if info.complete is False:
        return f"the dump {name} lacks mysqldump's closing '-- Dump completed' line: it is cut off"
    others = [n for n in dumps.dump_database_names(p.sql.decode("utf-8", "replace")) if n != p.name]
    if others:
        return f"the dump {name} also switches to {', '.join(others)}: loading it would change those"
    if not info.tables:
        return f"the dump {name} creates no tables for {p.name}"
    p.dump_info = info
    return None


# --- restoring -----------------------------------------------------------------------------------------


def restore_one(
    ctx: Context, result: Result, p: Plan, layout: datadir.Layout, owner: tuple[int, int], login: Login
) -> None:
    """Restore one database; a failure is rolled back, the other source tried when there is one, and recorded."""
    assert p.strategy is not None
    try:
        _do(ctx, result, p, p.strategy, layout, owner, login)
        p.outcome = "restored" if ctx.apply else ""
        return
    except FAILURES as exc:
        if not ctx.apply:
            p.outcome = f"plan failed: {datadir.first_line(exc)}"
            result.warn(f"{p.name}: {p.outcome}")
            return
        first = datadir.first_line(exc)
        roll_back(ctx, result, p, layout, login)
    other = _fallback(ctx, p)
    if other is not None:
        result.warn(f"{p.name}: the {p.strategy.label} failed ({first}); rolled back, trying the {other.label} instead")
        try:
            _do(ctx, result, p, other, layout, owner, login)
            p.outcome = f"restored by {other.label} after the {p.strategy.label} failed ({first})"
            p.strategy, p.fell_back = other, True
            return
        except FAILURES as again:
            roll_back(ctx, result, p, layout, login)
            first = f"{first}; the {other.label} failed too: {datadir.first_line(again)}"
    p.outcome = f"failed and rolled back: {first}"


def _fallback(ctx: Context, p: Plan) -> Strategy | None:
    """The other source of a database whose first strategy failed: its dump, or its folder."""
    assert p.strategy is not None
    if p.strategy.is_binary:
        if p.dump is not None and read_dump(ctx, p) is None:
            return customer_dbs.dump_strategy(p.dump)
        return None
    binary = p.db.binary.strategy
    if binary is Strategy.TABLESPACE_IMPORT and not p.definitions and read_definitions(ctx, p) is not None:
        return None
    return binary


def _do(
    ctx: Context,
    result: Result,
    p: Plan,
    strategy: Strategy,
    layout: datadir.Layout,
    owner: tuple[int, int],
    login: Login,
) -> None:
    if strategy is Strategy.DIRECTORY_COPY:
        _place_folder(ctx, result, p, _stage(ctx, result, p, layout, owner), layout)
    elif strategy is Strategy.TABLESPACE_IMPORT:
        _tablespace_import(ctx, result, p, layout, owner, login)
    elif strategy.is_dump:
        _load_dump(ctx, result, p, login)
    else:
        raise PreconditionFailed(
            f"customer database {p.name}", f"has no restore strategy ({strategy.label})", "see the table"
        )


def _stage(ctx: Context, result: Result, p: Plan, layout: datadir.Layout, owner: tuple[int, int]) -> str:
    assert p.db.folder is not None
    staged = datadir.join(layout.staging, p.folder_name)
    datadir.stage_from_backup(ctx, result, p.db.folder, staged, owner, p.db.files)
    return staged


def _place_folder(ctx: Context, result: Result, p: Plan, staged: str, layout: datadir.Layout) -> None:
    live = datadir.join(layout.datadir, p.folder_name)
    if ctx.target.exists(live):
        # An empty database of the same name (no tables: checked in the plan): keep it, then replace it.
        kept = datadir.join(layout.kept, p.folder_name)
        result.change(f"move the target's empty {live} aside to {layout.kept}")
        datadir.move(ctx, live, kept)
        if ctx.apply:
            result.backups.append(ctx.target.path(kept))
    result.change(f"rename the staged {p.name} into {layout.datadir}")
    datadir.move(ctx, staged, live)
    if ctx.apply:
        p.created = True


# Files of an InnoDB table that travel with its tablespace, and the trigger files placed last.
_TABLESPACE_PARTS = (".ibd", ".cfg")
_LATE_SUFFIXES = (".TRG", ".TRN")


def _set_aside(ctx: Context, staged: str, side: str, stems: list[str]) -> None:
    """Move the .ibd/.cfg and trigger files out of the staged folder; drop the InnoDB .frm files."""
    names = ctx.target.listdir(staged) or []
    present = set(names)
    moved = [f"{s}{x}" for s in stems for x in _TABLESPACE_PARTS if f"{s}{x}" in present]
    moved += [n for n in names if n.endswith(_LATE_SUFFIXES)]
    dropped = [f"{s}{x}" for s in stems for x in (".frm", ".isl") if f"{s}{x}" in present]
    datadir.make_dir(ctx, side)
    if moved:
        argv = ["mv", "--", *(ctx.target.path(datadir.join(staged, n)) for n in moved), ctx.target.path(side)]
        ctx.runner.run(argv, mutates=True)
    if dropped:
        ctx.runner.run(["rm", "-f", "--", *(ctx.target.path(datadir.join(staged, n)) for n in dropped)], mutates=True)


def _tablespace_import(
    ctx: Context, result: Result, p: Plan, layout: datadir.Layout, owner: tuple[int, int], login: Login
) -> None:
    """Other tables as files, then each InnoDB table: CREATE from its definition, DISCARD, move .ibd in, IMPORT."""
    staged = _stage(ctx, result, p, layout, owner)
    side = datadir.join(layout.staging, f"{p.folder_name}.tablespaces")
    live = datadir.join(layout.datadir, p.folder_name)
    stems = p.db.binary.innodb
    what = (
        f"set aside the {len(stems)} .ibd file(s) and the trigger files; drop the InnoDB .frm files from "
        "the staged folder (the server writes its own when the tables are created)"
    )
    ctx.do(what, lambda: _set_aside(ctx, staged, side, stems))
    _place_folder(ctx, result, p, staged, layout)
    tables = {stem: customer_dbs.table_name(stem) for stem in stems}
    # One session for all tables (foreign key checks off in it), opened by the first import: a dry run opens none.
    with accounts.LazySession(accounts.opener(ctx, login), [dialect.FOREIGN_KEY_CHECKS_OFF]) as session:
        aside: set[str] = set()

        def import_table(stem: str, table: str) -> None:
            if not aside:
                aside.update(ctx.target.listdir(side) or [])
            cur = session.cursor()
            dialect.execute(cur, dialect.create_table_in(p.name, p.definitions[stem]))
            dialect.execute(cur, dialect.discard_tablespace(p.name, table))
            for part in (f"{stem}{x}" for x in _TABLESPACE_PARTS if f"{stem}{x}" in aside):
                datadir.move(ctx, datadir.join(side, part), datadir.join(live, part))
            dialect.execute(cur, dialect.import_tablespace(p.name, table))

        def place_triggers() -> None:
            late = sorted(n for n in ctx.target.listdir(side) or [] if n.endswith(_LATE_SUFFIXES))
            for name in late:
                datadir.move(ctx, datadir.join(side, name), datadir.join(live, name))
            if late:
                dialect.execute(session.cursor(), dialect.flush_tables(p.name, list(tables.values())))
            datadir.remove_if_empty(ctx, side)

        for stem, table in tables.items():
            what = (
                f"CREATE TABLE {dialect.quote_ident(p.name)}.{dialect.quote_ident(table)} "
                f"(definition from its {p.db.binary.definitions[stem]}), "
                "DISCARD TABLESPACE, copy the old .ibd in, IMPORT TABLESPACE"
            )
            ctx.do(what, lambda stem=stem, table=table: import_table(stem, table))
        ctx.do(f"place the trigger files of {p.name} and FLUSH its tables", place_triggers)


def _load_dump(ctx: Context, result: Result, p: Plan, login: Login) -> None:
    assert p.dump is not None
    if p.sql is None:
        problem = read_dump(ctx, p)
        if problem is not None:
            raise InputError(f"dump of {p.name}", problem, "use another dump", path=p.dump.path)
    assert p.sql is not None
    creates_db = p.name in dumps.dump_database_names(p.sql.decode("utf-8", "replace"))
    what = "its part of " if p.dump.kind == dumps.ALL_DATABASES else ""
    if ctx.apply:
        p.created = True
    if not creates_db:
        what = f"CREATE DATABASE {dialect.quote_ident(p.name)} (the dump does not create it)"
        ctx.sql(what, [dialect.create_database(p.name)], connect=accounts.opener(ctx, login))
    with dumps.defaults_file(ctx.target, login, str(ctx.mysql.socket), write=ctx.apply) as cnf:
        # A dump that creates its database must not name it on the command line: the client would USE it
        # before the dump's CREATE DATABASE runs.
        target = [] if creates_db else [p.name]
        argv = dumps.client_argv(ctx.target, cnf, "--batch", *target)
        load = f"load {what}{p.dump.path} into {p.name} with the mariadb client"
        ctx.runner.run(argv, input=p.sql, mutates=True, timeout=7200, what=load)


def roll_back(ctx: Context, result: Result, p: Plan, layout: datadir.Layout, login: Login) -> None:
    """Undo what this run did for the database (it did not exist before); leftovers go to the run's failed/."""
    live = datadir.join(layout.datadir, p.folder_name)
    if p.created:
        try:
            what = f"DROP DATABASE {dialect.quote_ident(p.name)} (restored half by this run)"
            ctx.sql(what, [dialect.drop_database(p.name)], connect=accounts.opener(ctx, login))
        except pymysql.MySQLError as exc:
            result.warn(f"{p.name}: DROP DATABASE during the roll-back failed ({exc}); its folder is moved aside")
        if ctx.target.exists(live):  # files the server did not know (DROP leaves them): ours, placed by this run
            datadir.move(ctx, live, datadir.join(layout.failed, p.folder_name))
        p.created = False
    kept = datadir.join(layout.kept, p.folder_name)
    if ctx.target.exists(kept) and not ctx.target.exists(live):
        datadir.move(ctx, kept, live)  # the target's empty database of that name, as it was
        if ctx.target.path(kept) in result.backups:
            result.backups.remove(ctx.target.path(kept))
    for leftover in (p.folder_name, f"{p.folder_name}.tablespaces"):
        if ctx.target.exists(datadir.join(layout.staging, leftover)):
            datadir.move(ctx, datadir.join(layout.staging, leftover), datadir.join(layout.failed, f"{leftover}.staged"))
