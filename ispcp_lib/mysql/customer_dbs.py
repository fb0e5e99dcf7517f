"""Customer databases: which ones ispCP knows, what the backup holds of each, and how each can come back.

ispCP lists every customer database in `sql_database` (joined to `domain`) and its logins in `sql_user`
(`sqlu_pass` encrypted with the same Blowfish keys as DATABASE_PASSWORD). The guide restores only the
`ispcp` and `mysql` databases; this module finds the rest:

* the names, read from the restored target database when it holds ispCP's data, else from the backup's
  binary copy through a throwaway private MariaDB (facts/backup_db_reader.py);
* what the backup holds of each: its folder in the old datadir (engines from the file kinds, size, offline
  check), a per-database dump, or its part of an `--all-databases` dump; and whether the old datadir is
  complete (ibdata1, redo log, every database), which allows replacing the target's datadir whole;
* per database the restore strategy that fits, or why none does and what would be needed.

Everything here only reads: the backup is never opened for writing, and definitions of InnoDB tables are
read from COPIES of their .frm files by a throwaway server.
"""

from __future__ import annotations

import enum
import posixpath
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.core.runner import Runner
from ispcp_lib.facts import backup_db_reader, backup_layout, ispcp_login, mysql_state
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import crypto, keyfiles, queries
from ispcp_lib.mysql import accounts, datadir, dialect, dumps
from ispcp_lib.mysql.dumps import ALL_DATABASES, DumpRef

# Databases of the server itself, never customer data.
SYSTEM_DATABASES = frozenset({"mysql", "performance_schema", "information_schema", "sys", "lost+found"})


class Strategy(enum.Enum):
    """How a customer database comes back; `label` is what the report shows."""

    DIRECTORY_COPY = "directory_copy"
    TABLESPACE_IMPORT = "tablespace_import"
    SQL_DUMP = "sql_dump"
    ALL_DATABASES_DUMP = "all_databases_dump"
    WHOLE_DATADIR = "whole_datadir"
    CANNOT = "cannot"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def is_binary(self) -> bool:
        return self in (Strategy.DIRECTORY_COPY, Strategy.TABLESPACE_IMPORT)

    @property
    def is_dump(self) -> bool:
        return self in (Strategy.SQL_DUMP, Strategy.ALL_DATABASES_DUMP)


_LABELS = {
    Strategy.DIRECTORY_COPY: "directory copy",
    Strategy.TABLESPACE_IMPORT: "tablespace import",
    Strategy.SQL_DUMP: "SQL dump",
    Strategy.ALL_DATABASES_DUMP: "SQL dump (part of an --all-databases dump)",
    Strategy.WHOLE_DATADIR: "whole datadir",
    Strategy.CANNOT: "cannot restore",
}
PREFERENCES = ("binary", "dump")


def dump_strategy(ref: DumpRef) -> Strategy:
    return Strategy.ALL_DATABASES_DUMP if ref.kind == ALL_DATABASES else Strategy.SQL_DUMP


_NEEDS_FOR_INNODB = (
    "a SQL dump of the database, or the old server's complete datadir (ibdata1 and ib_logfile* "
    "of the same moment, together with every database folder)"
)


# --- what ispCP lists --------------------------------------------------------------------------------


@dataclass
class ListedDb:
    sqld_id: int
    name: str
    domain: str | None  # None: the domain row is gone


@dataclass(repr=False)
class SqlUser:
    id: int
    name: str
    database: str | None  # None: its sql_database row is gone
    cipher: str  # sqlu_pass as stored (encrypted); never shown

    def __repr__(self) -> str:
        return f"SqlUser({self.id}, {self.name!r}, database={self.database!r})"


@dataclass
class Listing:
    source: str  # where the names come from, for the operator
    databases: dict[str, ListedDb] = field(default_factory=dict)
    users: list[SqlUser] = field(default_factory=list)
    readable: bool = True  # False: sql_database could not be read at all

    def users_of(self, name: str) -> list[SqlUser]:
        return [u for u in self.users if u.database == name]


def read_listing(conn: Any) -> tuple[dict[str, ListedDb], list[SqlUser]]:
    """sql_database joined to domain, and sql_user, from a connection with ispCP's database selected."""
    with conn.cursor() as cur:
        dialect.execute(cur, queries.SQL_DATABASES)
        dbs = {str(name): ListedDb(int(i), str(name), dom) for i, name, dom in cur.fetchall()}
        by_id = {d.sqld_id: d.name for d in dbs.values()}
        dialect.execute(cur, queries.SQL_USERS)
        users = [
            SqlUser(int(i), str(name), by_id.get(int(d)) if d is not None else None, str(pw or ""))
            for i, d, name, pw in cur.fetchall()
        ]
    return dbs, users


def _register(ctx: Context, users: Iterable[SqlUser]) -> None:
    for u in users:
        ctx.secrets.add(u.cipher, "sqlu_pass (encrypted)")


def target_listing(ctx: Context, db_name: str) -> Listing | None:
    """The listing of the target's ispCP database when it holds restored data (not the dummy's empty tables)."""
    login = accounts.admin_login(ctx)
    if login is None:
        return None
    try:
        with ctx.mysql.connect(login.user, login.password, db_name) as conn:
            with conn.cursor() as cur:
                dialect.execute(cur, queries.DOMAINS_AND_DATABASES)
                if not int(cur.fetchone()[0]):
                    return None  # the dummy install's empty tables: nothing restored yet
            dbs, users = read_listing(conn)
    except pymysql.MySQLError:  # no such database or table yet
        return None
    _register(ctx, users)
    return Listing("the restored ispCP database on the target", dbs, users)


def backup_listing(ctx: Context, backup_datadir: str, db_name: str) -> Listing:
    """The listing read from the backup's binary copy of ispCP's database (a throwaway server on a copy).

    The throwaway server runs on this machine: a backup on the target is not read this way (the
    restored target database is read instead, after mysql_restore).
    """
    assert ctx.backup is not None
    folder = posixpath.join(backup_datadir, db_name)
    if not ctx.backup.is_dir(folder):
        return Listing(
            f"nowhere: the backup has no binary copy of {db_name} and the target's is not restored yet", readable=False
        )
    if ctx.backup.inner.kind != "local":
        return Listing(
            f"nowhere: the backup's {db_name} lies on the target and the target's is not restored yet", readable=False
        )
    try:
        found = backup_db_reader.read_backup_database(
            Path(ctx.backup.path(backup_datadir)), db_name, read_listing, scratch=backup_db_reader.scratch_dir(ctx)
        )
    except (PreconditionFailed, CommandFailed) as exc:
        first = str(exc).strip().splitlines()[0]
        return Listing(f"nowhere: the backup's {db_name} could not be read ({first})", readable=False)
    except pymysql.MySQLError as exc:  # a damaged table: the listing is unknown, the folders still count
        return Listing(f"nowhere: reading the backup's {db_name} failed ({type(exc).__name__}: {exc})", readable=False)
    dbs, users = found
    _register(ctx, users)
    return Listing(f"the backup's binary copy of {db_name} (read by a throwaway server)", dbs, users)


def listing(ctx: Context, backup_datadir: str, db_name: str) -> Listing:
    return target_listing(ctx, db_name) or backup_listing(ctx, backup_datadir, db_name)


# --- what the backup holds ---------------------------------------------------------------------------


def human_size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_FILENAME_CODE = re.compile(r"@([0-9a-fA-F]{4})")


def table_name(file_stem: str) -> str:
    """The table name behind a file name (MariaDB writes characters outside [A-Za-z0-9_$] as @XXXX)."""
    return _FILENAME_CODE.sub(lambda m: chr(int(m.group(1), 16)), file_stem)


# --- per database: can the binary copy be used? ----------------------------------------------------


@dataclass
class BinaryVerdict:
    strategy: Strategy | None  # DIRECTORY_COPY | TABLESPACE_IMPORT | None (the folder alone cannot work)
    reason: str = ""  # why not, when strategy is None
    needs: str = ""  # what would make it restorable
    innodb: list[str] = field(default_factory=list)  # tables to import (file stems)
    copied: list[str] = field(default_factory=list)  # tables (and views) copied as files
    definitions: dict[str, str] = field(default_factory=dict)  # InnoDB table -> "frm" | "dump"


def binary_verdict(
    files: mysql_state.DatabaseFiles | None,
    dump_tables: set[str] | None = None,
    verdicts: list[mysql_state.ChkVerdict] | None = None,
) -> BinaryVerdict:
    """Whether a database folder can be restored by files alone, and how. Pure: files were scanned before.

    dump_tables: tables whose CREATE TABLE a dump of the same database holds (a definition for an .ibd
    whose .frm is lost). verdicts: offline myisamchk/aria_chk results for the MyISAM/Aria tables.
    """
    if files is None:
        return BinaryVerdict(
            None, "the backup's datadir has no folder for it", "the database folder from the old datadir, or a SQL dump"
        )
    if not files.tables:
        return BinaryVerdict(
            None, "its folder in the backup holds no tables", "the database folder from the old datadir, or a SQL dump"
        )
    dump_tables = dump_tables or set()
    shared: list[str] = []
    no_definition: list[str] = []
    other: list[str] = []
    innodb: list[str] = []
    definitions: dict[str, str] = {}
    for name, t in sorted(files.tables.items()):
        has_ibd = ".ibd" in t.suffixes
        if ".frm" not in t.suffixes:
            if has_ibd and table_name(name) in dump_tables:
                innodb.append(name)
                definitions[name] = "dump"
            elif has_ibd:
                no_definition.append(name)
            else:
                other += [f"{name}: {p}" for p in t.problems]
            continue
        if t.engine == "InnoDB":
            if t.frm_engine is None:  # a damaged .frm is no definition: a dump's CREATE TABLE may stand in
                if has_ibd and table_name(name) in dump_tables:
                    innodb.append(name)
                    definitions[name] = "dump"
                else:
                    no_definition.append(name)
            elif ".isl" in t.suffixes and not has_ibd:
                other.append(f"{name}: its tablespace lives outside the datadir (.isl link) and is not in the backup")
            elif not has_ibd:
                shared.append(name)
            elif t.frm_engine not in (None, "InnoDB"):
                other.append(f"{name}: .ibd next to a {t.frm_engine} .frm")
            else:
                innodb.append(name)
                definitions[name] = "frm"
            continue
        if t.frm_engine == "partitioned":
            other.append(f"{name}: a partitioned table (its partitions cannot be imported one by one)")
            continue
        other += [f"{name}: {p}" for p in t.problems]
    other += [f"{n}: {d}" for n, t in sorted(files.tables.items()) for d in t.damage]
    other += [f"{v.table}: {v.detail or 'corrupt'} (offline check)" for v in verdicts or [] if v.verdict == "corrupt"]
    if shared:
        names = ", ".join(shared[:8]) + (" ..." if len(shared) > 8 else "")
        return BinaryVerdict(
            None,
            f"holds InnoDB tables ({names}) whose data lives in the old server's shared tablespace (ibdata1): "
            "the folder has only their .frm definitions, no .ibd file",
            _NEEDS_FOR_INNODB,
            innodb=innodb,
        )
    if no_definition:
        names = ", ".join(no_definition[:8]) + (" ..." if len(no_definition) > 8 else "")
        return BinaryVerdict(
            None,
            f"the definition of InnoDB table(s) {names} is unavailable: the folder has their .ibd but no .frm, "
            "and no dump holds their CREATE TABLE",
            "each table's .frm from the old datadir, or its CREATE TABLE statement (a schema-only dump, "
            "mariadb-dump --no-data), or a SQL dump of the database",
            innodb=innodb,
        )
    if other:
        return BinaryVerdict(
            None,
            "damaged or incomplete: " + "; ".join(other[:5]),
            "the missing files from another backup generation, or a SQL dump",
        )
    copied = sorted(n for n in files.tables if n not in innodb)
    if innodb:
        return BinaryVerdict(Strategy.TABLESPACE_IMPORT, innodb=innodb, copied=copied, definitions=definitions)
    return BinaryVerdict(Strategy.DIRECTORY_COPY, copied=copied)


def choose(binary: BinaryVerdict, found: list[DumpRef], prefer: str = "binary") -> tuple[Strategy, str]:
    """(strategy, how) for one database. Pure, so the plan can be tested without any server."""
    dump = found[0] if found else None
    fallback = f"; if that fails, the dump {dump.file.name}" if dump is not None else ""
    if prefer == "dump" and dump is not None:
        extra = f"; if that fails, the {binary.strategy.label} of its folder" if binary.strategy else ""
        return dump_strategy(dump), f"load {dump.file.name} with the mariadb client{extra}"
    if binary.strategy is Strategy.DIRECTORY_COPY:
        return binary.strategy, f"copy the folder ({len(binary.copied)} MyISAM/Aria tables and views){fallback}"
    if binary.strategy is Strategy.TABLESPACE_IMPORT:
        frm = sum(1 for v in binary.definitions.values() if v == "frm")
        how = (
            f"recreate {len(binary.innodb)} InnoDB table(s) from their definitions ({frm} from .frm, "
            f"{len(binary.innodb) - frm} from a dump), DISCARD TABLESPACE, copy each .ibd, IMPORT TABLESPACE"
        )
        if binary.copied:
            how += f"; copy {len(binary.copied)} other table(s) as files"
        return binary.strategy, how + fallback
    if dump is not None:
        usable = not binary.reason or "no folder" in binary.reason
        why = "" if usable else f" (its folder cannot be used: {binary.reason})"
        return dump_strategy(dump), f"load {dump.file.name} with the mariadb client{why}"
    return Strategy.CANNOT, f"{binary.reason}. Needs: {binary.needs}"


# --- InnoDB definitions from .frm files ---------------------------------------------------------------

_ENGINE_CODES = {"MEMORY": 6, "MyISAM": 9}
_INNODB_NAME = b"\x06\x00InnoDB"


def patch_frm_engine(frm: bytes, engine: str) -> bytes:
    """A copy of an InnoDB table's .frm that names another engine (MEMORY or MyISAM), same length.

    A server cannot open an InnoDB .frm whose table is not in its own data dictionary ("doesn't exist in
    engine"). With the engine byte (offset 3) and the engine name in the extra segment changed, the
    definition opens as a MEMORY table (no data files at all) or, where MEMORY refuses the columns, as a
    MyISAM table after REPAIR TABLE ... USE_FRM; SHOW CREATE TABLE then gives the columns and indexes.
    """
    if len(frm) < 64 or frm[:2] != b"\xfe\x01":
        raise InputError(".frm", "is not a binary table definition", "take the file from another backup")
    out = bytearray(frm)
    out[3] = _ENGINE_CODES[engine]
    at = out.find(_INNODB_NAME)
    if at >= 0:
        out[at + 2 : at + 8] = engine.encode("ascii")
    return bytes(out)


def read_frm_definitions(
    frms: dict[str, bytes], runner: Runner | None = None, scratch: Path | None = None
) -> dict[str, str]:
    """key -> `CREATE TABLE ... ENGINE=InnoDB` body (named `__t__`) read from the bytes of InnoDB .frm files.

    One throwaway server (backup_db_reader) reads all of them. A definition it cannot read is left out;
    the caller names the table and what would be needed.
    """
    if not frms:
        return {}
    parent = backup_db_reader.work_dir(scratch)  # the .frm copies: private, swept like the reader's
    try:
        folder = parent / "frmread"
        folder.mkdir()
        keys = list(frms)
        for i, key in enumerate(keys):
            data = frms[key]
            try:
                (folder / f"m{i}.frm").write_bytes(patch_frm_engine(data, "MEMORY"))
                (folder / f"y{i}.frm").write_bytes(patch_frm_engine(data, "MyISAM"))
                (folder / f"y{i}.MYD").write_bytes(b"")
            except InputError:
                continue
        out: dict[str, str] = {}
        reader = backup_db_reader.backup_database(parent, "frmread", runner=runner, scratch=scratch)
        with reader as conn, conn.cursor() as cur:
            for i, key in enumerate(keys):
                create = _show_create(cur, f"m{i}") or _show_create(cur, f"y{i}", repair=True)
                if create is not None:
                    out[key] = dialect.with_name_and_engine(create, "__t__")
        return out
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _show_create(cur: Any, table: str, repair: bool = False) -> str | None:
    try:
        if repair:
            dialect.execute(cur, dialect.repair_use_frm(table))
            cur.fetchall()
        dialect.execute(cur, dialect.show_create_table(table))
        row = cur.fetchone()
        return str(row[1]) if row else None
    except pymysql.MySQLError:  # this variant cannot open it
        return None


# --- the whole picture --------------------------------------------------------------------------------


@dataclass
class CustomerDb:
    name: str
    listed: ListedDb | None
    users: list[str]
    folder: str | None  # the old server's path of its folder
    files: mysql_state.DatabaseFiles | None
    dumps: list[DumpRef]
    binary: BinaryVerdict
    strategy: Strategy = Strategy.CANNOT
    how: str = ""
    verdicts: list[mysql_state.ChkVerdict] = field(default_factory=list)

    def engines(self) -> str:
        if self.files is None or not self.files.tables:
            return "—"
        return ", ".join(f"{n} {e}" for e, n in self.files.engines().items())

    def row(self) -> dict[str, Any]:
        dump_text = "; ".join(d.label() for d in self.dumps) or "—"
        return {
            "database": self.name,
            "domain": (self.listed.domain or "(domain row missing)") if self.listed else "not in sql_database",
            "SQL users": ", ".join(self.users) or "—",
            "folder in backup": "yes" if self.folder is not None else "no",
            "engines (from files)": self.engines(),
            "size": human_size(self.files.size if self.files is not None else None),
            "dumps": dump_text,
            "restore": self.strategy.label,
            "how / why": self.how,
        }


@dataclass
class Discovery:
    listing: Listing
    databases: list[CustomerDb]
    backup_datadir: str
    shared: list[str]  # ibdata1 and redo logs at the top of the backup's datadir
    datadir_complete: bool
    datadir_reason: str
    ispcp_db: str = "ispcp"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, CustomerDb]:
        return {d.name: d for d in self.databases}

    def frame(self) -> Any:
        import pandas as pd

        columns = [
            "database",
            "domain",
            "SQL users",
            "folder in backup",
            "engines (from files)",
            "size",
            "dumps",
            "restore",
            "how / why",
        ]
        return pd.DataFrame([d.row() for d in self.databases], columns=columns)


def backup_folders(ctx: Context, folder: str, ispcp_db: str) -> tuple[dict[str, str], list[str]]:
    """Database folders in the backup's datadir other than the server's own and ispCP's; plus refusals."""
    assert ctx.backup is not None
    folders: dict[str, str] = {}
    refused: list[str] = []
    entries = mysql_state.list_folder(ctx.backup, folder) or {}
    for name in sorted(entries):
        if name in SYSTEM_DATABASES or name == ispcp_db or name.startswith(("#", ".")):
            continue
        path = posixpath.join(folder, name)
        if entries[name].kind == "l" and not ctx.backup.is_dir(ctx.backup.realpath(path)):
            continue
        if entries[name].kind not in ("d", "l"):
            continue
        escape = ctx.backup.escapes(path)
        if escape is not None:
            refused.append(f"{name}: resolves to {escape}, outside the backup root (a symlink escapes it)")
            continue
        folders[table_name(name)] = path
    return folders, refused


def datadir_completeness(
    entries: dict[str, mysql_state.FileEntry], shared: list[str], needed: Iterable[str], ispcp_db: str
) -> tuple[bool, str]:
    """Does the backup hold the old datadir whole: ibdata1, its redo log and every database folder?"""
    if "ibdata1" not in shared:
        return False, "the backup's datadir has no ibdata1 (only database folders were copied)"
    if not any(n.startswith("ib_logfile") for n in shared):
        return False, "the backup's datadir has ibdata1 but no redo log (ib_logfile0)"
    missing = [n for n in [ispcp_db, "mysql", *needed] if n not in entries or entries[n].kind != "d"]
    if missing:
        return False, f"the backup's datadir lacks the folder(s) of {', '.join(missing[:6])}"
    return True, "the backup holds the old datadir whole (ibdata1, redo log and every database folder)"


def discover(
    ctx: Context,
    conf: IspcpConf | None = None,
    *,
    prefer: str | None = None,
    include_unlisted: bool | None = None,
    read_listing_from: Listing | None = None,
) -> Discovery:
    """Every customer database ispCP lists or the backup holds, with what the backup has of it and a strategy.

    Reads only. The strategy here assumes nothing on the target yet; the customer_databases step refines it.
    """
    if conf is None:
        try:
            conf = backup_layout.load_old_conf(ctx)
        except InputError:
            conf = None
    prefer = prefer or ctx.param("customer_databases_prefer", "binary") or "binary"
    if prefer not in PREFERENCES:
        raise InputError("customer_databases_prefer", f"is {prefer!r}", f"use one of {', '.join(PREFERENCES)}")
    if include_unlisted is None:
        include_unlisted = bool(ctx.param("customer_databases_include_unlisted", True))
    assert ctx.backup is not None
    ispcp_db = datadir.ispcp_database(conf)
    old_datadir = datadir.old_datadir(conf)
    found = read_listing_from or listing(ctx, old_datadir, ispcp_db)
    folders, refused = backup_folders(ctx, old_datadir, ispcp_db)
    extra = ctx.param("customer_databases_dump_dirs") or []
    all_dumps = dumps.find_dumps(ctx.backup, dumps.dump_folders(conf, [extra] if isinstance(extra, str) else extra))
    top = mysql_state.list_folder(ctx.backup, old_datadir) or {}
    shared = mysql_state.shared_tablespace(ctx.backup, old_datadir)
    names = list(found.databases)
    unlisted = sorted(set(folders) - set(names))
    dumped_only = sorted(
        {n for d in all_dumps for n in d.databases} - set(names) - set(folders) - SYSTEM_DATABASES - {ispcp_db}
    )
    if include_unlisted:
        names += unlisted + [n for n in dumped_only if n not in unlisted]
    complete, reason = datadir_completeness(top, shared, found.databases, ispcp_db)
    names = sorted(dict.fromkeys(names))
    read = mysql_state.scan_database_dirs(ctx.backup, [folders[n] for n in names if n in folders])
    scanned = {n: read[folders[n]] for n in names if n in folders}
    checked = _offline_verdicts(ctx, {n: f for n, f in scanned.items() if f is not None})
    dbs: list[CustomerDb] = []
    for name in names:
        files = scanned.get(name)
        own_dumps = [d for d in all_dumps if name in d.databases]
        own_dumps.sort(key=lambda d: d.kind != dumps.PER_DATABASE)  # its own dump before its share of a big one
        verdicts = checked.get(name, [])
        dump_tables: set[str] = set()
        if files is not None and any(".frm" not in t.suffixes and ".ibd" in t.suffixes for t in files.tables.values()):
            dump_tables = _dump_table_names(ctx, own_dumps, name)
        binary = binary_verdict(files, dump_tables, verdicts)
        strategy, how = choose(binary, own_dumps, prefer)
        users = [u.name for u in found.users_of(name)]
        dbs.append(
            CustomerDb(
                name,
                found.databases.get(name),
                users,
                folders.get(name),
                files,
                own_dumps,
                binary,
                strategy,
                how,
                verdicts,
            )
        )
    out = Discovery(found, dbs, old_datadir, shared, complete, reason, ispcp_db)
    if not found.readable:
        out.warnings.append(
            f"ispCP's list of customer databases (sql_database) could not be read: {found.source}. "
            "The table shows the folders and dumps the backup holds."
        )
    else:
        out.notes.append(
            f"Customer databases listed in sql_database: {len(found.databases)} (read from "
            f"{found.source}); SQL users: {len(found.users)}."
        )
    if unlisted or dumped_only:
        extra = unlisted + dumped_only
        verb = "are restored too" if include_unlisted else "are left out (customer_databases_include_unlisted)"
        out.notes.append(
            f"The backup holds {len(extra)} database(s) that sql_database does not list "
            f"({', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}): created outside the panel; "
            f"they {verb}."
        )
    for r in refused:
        out.warnings.append(f"database folder refused: {r}")
    if complete:
        out.notes.append(
            "The backup holds the old datadir whole (ibdata1, redo log, every database): replacing the "
            "target's datadir with it brings every database back at once, InnoDB included, when the "
            "server versions are compatible (the customer_databases step decides)."
        )
    return out


def _offline_verdicts(
    ctx: Context, folders: dict[str, mysql_state.DatabaseFiles]
) -> dict[str, list[mysql_state.ChkVerdict]]:
    """myisamchk/aria_chk --read-only on every MyISAM/Aria folder at once, where the backup lies (read only)."""
    assert ctx.backup is not None
    todo = {n: f for n, f in folders.items() if f.of_engine("MyISAM") or f.of_engine("Aria")}
    if not todo:
        return {}
    try:
        found = mysql_state.OfflineCheck(ctx.backup, list(todo.values())).wait()
    except (OSError, ValueError):
        return {}
    return dict(zip(todo, found, strict=True)) if found is not None else {}


def _dump_table_names(ctx: Context, refs: list[DumpRef], database: str) -> set[str]:
    assert ctx.backup is not None
    for ref in refs:
        try:
            return set(
                dumps.dump_create_tables(dumps.read_dump_for(ctx.backup, ref, database).decode("utf-8", "replace"))
            )
        except InputError:
            continue
    return set()


def show(ctx: Context, result: Result) -> Discovery | None:
    """For the inventory and mysql_restore sections: add the customer-database table to `result`. Reads only.

    Never fails the calling step: what cannot be read becomes a warning (None is returned then).
    """
    try:
        found = discover(ctx)
    except (InputError, PreconditionFailed, CommandFailed, OSError) as exc:
        result.warn(f"the customer databases could not be listed: {ctx.secrets.redact(str(exc))}")
        return None
    result.table("Customer databases", found.frame())
    for n in found.notes:
        result.note(n)
    for w in found.warnings:
        result.warn(w)
    cannot = [d.name for d in found.databases if d.strategy is Strategy.CANNOT]
    if cannot:
        result.warn(
            f"{len(cannot)} customer database(s) cannot be restored from what the backup holds: "
            f"{', '.join(cannot)} (see the table: why, and what would be needed)"
        )
    result.data["customer_databases"] = [{"database": d.name, "strategy": d.strategy.value} for d in found.databases]
    return found


# --- keys for the customers' SQL passwords -------------------------------------------------------------


def account_keysets(ctx: Context) -> list[tuple[str, keyfiles.KeySet]]:
    """Key sets to decrypt sqlu_pass with: the target's (restored by the keys step), then the backup's."""
    out: list[tuple[str, keyfiles.KeySet]] = []
    for side in ("target", "backup"):
        try:
            found = ispcp_login.keysets(ctx, side)
        except InputError:
            continue
        for layout in ispcp_login.ordered(found):
            ks = found[layout]
            if all(ks != other for _, other in out):
                out.append((f"the {side}'s {layout} key file", ks))
    return out


def decrypt_with(cipher: str, keysets: list[tuple[str, keyfiles.KeySet]]) -> tuple[str, str] | None:
    """(plaintext, which keys) of an ispCP-encrypted value with the first key set that gives printable text."""
    for label, ks in keysets:
        try:
            return crypto.decrypt_db_password(cipher, ks.key, ks.iv, strict=True), label
        except InputError:
            continue
    return None
