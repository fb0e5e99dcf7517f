"""What mysql_restore restores `ispcp` and `mysql` from, and the checks that refuse a bad input before any change.

Per database: the backup's binary folder, an SQL dump, or (mysql only, when the backup has neither)
the target's own. Everything here only reads, through the backup's view of its side.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass, field

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import mysql_state, system
from ispcp_lib.mysql import dumps


class Mode(enum.Enum):
    """The mysql_restore_source parameter."""

    AUTO = "auto"
    BINARY = "binary"
    DUMP = "dump"


class Kind(enum.Enum):
    """Where one database comes from."""

    BINARY = "binary"
    DUMP = "dump"
    KEEP = "keep"  # the target's own (mysql only, when the backup has none)


@dataclass
class Source:
    database: str
    kind: Kind
    folder: str | None = None  # the backup's database folder (binary)
    dump_file: dumps.DumpFile | None = None  # the dump (dump)
    files: mysql_state.DatabaseFiles | None = None
    dump: dumps.DumpInfo | None = None
    sql: bytes | None = None
    skipped: list[str] = field(default_factory=list)  # the backup's system InnoDB tables left behind

    @property
    def path(self) -> str | None:
        """The input as the old server's path: the folder or the dump file."""
        if self.kind is Kind.BINARY:
            return self.folder
        return self.dump_file.path if self.dump_file is not None else None

    @property
    def input(self) -> str | dumps.DumpFile | None:
        """What identifies the input for the record's signature."""
        return self.folder if self.kind is Kind.BINARY else self.dump_file


def mode_of(ctx: Context) -> Mode:
    given = ctx.param("mysql_restore_source") or Mode.AUTO.value
    try:
        return Mode(given)
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise InputError("mysql_restore_source", f"is {given!r}", f"use one of {choices}") from None


def _binary_source(ctx: Context, name: str, folder: str) -> Source:
    """A database folder to copy. A symlink is refused outright, wherever it points: the copy must put the
    backup's real files into the live datadir, never a link or what a link happens to point at."""
    assert ctx.backup is not None
    escape = ctx.backup.escapes(folder)
    where = ctx.backup.path(folder)
    if escape is not None:
        raise InputError(
            "backup file",
            f"resolves to {escape}, outside the backup root (a symlink escapes it)",
            "replace the symlink with the file it should hold, or remove it from the backup",
            path=where,
        )
    st = ctx.backup.stat(folder)
    if st is not None and st.is_link:
        raise InputError(
            f"database {name} (binary copy)",
            f"is a symlink (to {st.link}), not a folder",
            "replace the symlink in the backup with a real copy of the database folder (cp -a), or "
            "remove it and restore from an SQL dump (mysql_restore_source = dump)",
            path=where,
        )
    return Source(name, Kind.BINARY, folder)


def choose(ctx: Context, result: Result, conf: object, db_name: str, datadir: str) -> list[Source]:
    """Per database: the binary folder, an SQL dump, or (mysql only, nothing in the backup) the target's own."""
    mode = mode_of(ctx)
    return [_choose_ispcp(ctx, result, conf, db_name, datadir, mode), _choose_mysql(ctx, result, conf, datadir, mode)]


def _present(ctx: Context, folder: str) -> bool:
    """A database folder in the backup (a symlink in its place counts: it is refused by name later)."""
    assert ctx.backup is not None
    st = ctx.backup.stat(folder)
    return st is not None and (st.is_dir or st.is_link)


def _choose_ispcp(ctx: Context, result: Result, conf: object, db_name: str, datadir: str, mode: Mode) -> Source:
    assert ctx.backup is not None
    folder = posixpath.join(datadir, db_name)
    if mode is not Mode.DUMP and _present(ctx, folder):
        return _binary_source(ctx, db_name, folder)
    if mode is Mode.BINARY:
        raise InputError(
            f"database {db_name} (binary copy)",
            "is not in the backup",
            "copy the old server's database folder into the backup, or use mysql_restore_source = "
            "dump with the ispcp-backup-ispcp dump",
            path=ctx.backup.path(folder),
        )
    backup_dir = dumps.ispcp_backup_dir(conf)
    found = dumps.database_dumps(ctx.backup, backup_dir, db_name)
    if not found and mode is Mode.DUMP:
        raise InputError(
            f"database {db_name}",
            "has no ispcp-backup-ispcp dump (.sql, .sql.gz, .sql.bz2)",
            "put the dump into BACKUP_FILE_DIR of the backup, or use mysql_restore_source = auto",
            path=ctx.backup.path(backup_dir),
        )
    if not found:
        raise InputError(
            f"database {db_name}",
            "has neither a binary copy nor an ispcp-backup-ispcp dump",
            "find the old database folder or an SQL dump of it; without it ispCP cannot be recovered",
            path=ctx.backup.path(folder),
        )
    if len(found) > 1:
        result.note(f"{len(found)} ispCP dumps found; the newest is used: {found[0].name}")
    return Source(db_name, Kind.DUMP, dump_file=found[0])


def _choose_mysql(ctx: Context, result: Result, conf: object, datadir: str, mode: Mode) -> Source:
    assert ctx.backup is not None
    explicit = ctx.param("mysql_restore_mysql_dump")
    folder = posixpath.join(datadir, "mysql")
    if explicit:
        st = ctx.backup.stat(str(explicit))
        if st is None or not st.is_file or ctx.backup.escapes(str(explicit)) is not None:
            raise InputError(
                "mysql_restore_mysql_dump",
                "names no file in the backup",
                "give the dump's path as it was on the old server",
                path=ctx.backup.path(str(explicit)),
            )
        return Source("mysql", Kind.DUMP, dump_file=dumps.DumpFile(str(explicit), st.size, f"{st.mtime:.9f}"))
    if mode is not Mode.DUMP and _present(ctx, folder):
        return _binary_source(ctx, "mysql", folder)
    found = dumps.find_mysql_dump(ctx.backup, dumps.dump_folders(conf))
    if found is not None:
        return Source("mysql", Kind.DUMP, dump_file=found)
    if _present(ctx, folder):
        return _binary_source(ctx, "mysql", folder)
    result.warn(
        "the backup has no `mysql` database (neither folder nor dump): the target keeps its own "
        "logins, so ispCP's DATABASE_USER, vftp and every customer login must be re-created "
        "(the keys, ftp and mysql_maintainer steps do what they can)"
    )
    return Source("mysql", Kind.KEEP)


# --- checks ----------------------------------------------------------------------------------------


def scan(ctx: Context, sources: list[Source]) -> None:
    """Read every binary folder of the backup at once (one round trip), before the checks."""
    assert ctx.backup is not None
    binary = [s for s in sources if s.kind is Kind.BINARY and s.folder is not None]
    found = mysql_state.scan_database_dirs(ctx.backup, [s.folder for s in binary if s.folder])
    for src in binary:
        src.files = found[src.folder] if src.folder else None


def check_binary(ctx: Context, result: Result, src: Source, backup_datadir: str) -> None:
    """Refuse a binary folder that cannot work, before anything changes."""
    assert src.files is not None and ctx.backup is not None and src.folder is not None
    files = src.files
    where = ctx.backup.path(src.folder)
    if not files.tables:
        raise InputError(
            f"database {src.database} (binary copy)",
            "holds no tables",
            "check that the folder is the database folder of the old datadir",
            path=where,
        )
    problems = files.problems()
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise InputError(
            f"database {src.database} (binary copy)",
            f"has damaged or incomplete tables: {shown}",
            "copy the missing files from another backup generation, or restore this database from "
            "an SQL dump (mysql_restore_source = dump)",
            path=where,
        )
    innodb = files.innodb()
    if src.database == "mysql":
        src.skipped = [t for t in innodb if t in mysql_state.SYSTEM_INNODB_TABLES]
        innodb = [t for t in innodb if t not in mysql_state.SYSTEM_INNODB_TABLES]
    if innodb:
        _refuse_innodb(ctx, src, innodb, backup_datadir, where)
    if files.stray:
        result.warn(
            f"{src.database}: files that belong to no table are copied as they are: {', '.join(files.stray[:8])}"
        )


def _refuse_innodb(ctx: Context, src: Source, innodb: list[str], backup_datadir: str, where: str) -> None:
    assert ctx.backup is not None
    shared = mysql_state.shared_tablespace(ctx.backup, backup_datadir)
    names = ", ".join(innodb[:10]) + (" ..." if len(innodb) > 10 else "")
    if not shared:
        raise InputError(
            f"database {src.database} (binary copy)",
            f"holds InnoDB tables ({names}) but the backup has no shared tablespace (ibdata1): their "
            "data dictionary is lost, so a copied folder cannot be opened",
            "restore from an SQL dump (mysql_restore_source = dump), or find ibdata1 and ib_logfile* "
            "of the same moment",
            path=where,
        )
    raise InputError(
        f"database {src.database} (binary copy)",
        f"holds InnoDB tables ({names}): they live in the old server's shared tablespace "
        f"({', '.join(shared)}), which cannot be merged into the target's by copying a folder",
        "start the old datadir on its own (a private mariadbd --datadir=<copy> --skip-grant-tables "
        "--skip-networking), dump the database with mariadb-dump, and use mysql_restore_source = dump",
        path=where,
    )


def offline_problems(src: Source, verdicts: list[mysql_state.ChkVerdict]) -> InputError | None:
    """The refusal for tables the offline check or the file lengths call damaged, None when all pass."""
    assert src.files is not None
    damaged = src.files.damaged()
    corrupt = [f"{v.table}: {v.detail or 'corrupt'}" for v in verdicts if v.verdict == "corrupt"]
    if not corrupt and not damaged:
        return None
    found = corrupt or damaged
    lengths = f"; file lengths: {'; '.join(damaged[:3])}" if damaged and corrupt else ""
    return InputError(
        f"database {src.database} (binary copy)",
        f"{len(found)} table(s) are damaged (offline CHECK verdict in the table above), first {found[0]}{lengths}",
        "repair a copy of the backup (myisamchk -r / aria_chk -r on the table files, no server running on "
        "them) or restore from an SQL dump (mysql_restore_source = dump)",
        path=src.path,
    )


def check_dump(ctx: Context, result: Result, src: Source) -> None:
    assert src.dump_file is not None and ctx.backup is not None
    path = src.dump_file.path
    src.sql = dumps.read_dump(ctx.backup, path)
    info = dumps.inspect_dump(path, src.sql)
    src.dump = info
    for w in info.warnings:
        result.warn(w)
    where = ctx.backup.path(path)
    if info.complete is False:
        raise InputError(
            f"SQL dump of {src.database}",
            "lacks mysqldump's closing '-- Dump completed' line: it is cut off",
            "use an older, complete dump or the binary copy",
            path=where,
        )
    if not info.tables:
        raise InputError(f"SQL dump of {src.database}", "creates no tables", "check that it is a mysqldump", path=where)
    if info.database not in (None, src.database):
        raise InputError(
            f"SQL dump of {src.database}",
            f"holds database {info.database!r}",
            f"use a dump of {src.database}",
            path=where,
        )


def check_versions(ctx: Context, result: Result, backup_datadir: str, datadir: str) -> str:
    """Can the target's server read the old files: same | upgrade | unknown (refused: downgrade)."""
    assert ctx.backup is not None
    old = mysql_state.datadir_version(ctx.backup, backup_datadir)
    new = (ctx.mysql.version() if ctx.mysql.status() else None) or mysql_state.datadir_version(ctx.target, datadir)
    verdict, text = system.compare_server_versions(old, new)
    result.data["versions"] = {"old": old, "new": new, "verdict": verdict}
    if verdict == "downgrade":
        raise PreconditionFailed(
            "MySQL versions",
            text,
            "install a server at least as new as the old one, or restore from SQL dumps (mysql_restore_source = dump)",
        )
    if verdict == "unknown":
        result.warn(f"MySQL versions: {text}; mariadb-upgrade runs after the start to be safe")
    else:
        result.note(f"MySQL versions: {text}")
    return verdict


def old_counts(sources: list[Source]) -> dict[str, dict[str, tuple[str, int | None]]]:
    """database -> table -> (engine, old row count) from the backup's index headers or the dump."""
    out: dict[str, dict[str, tuple[str, int | None]]] = {}
    for src in sources:
        if src.kind is Kind.BINARY and src.files is not None:
            out[src.database] = {
                name: (t.engine, t.old_rows) for name, t in sorted(src.files.tables.items()) if name not in src.skipped
            }
        elif src.kind is Kind.DUMP and src.dump is not None:
            out[src.database] = {name: ("", src.dump.rows.get(name, 0)) for name in src.dump.tables}
    return out


def old_grants_after_swap(sources: list[Source]) -> bool:
    """Whether the backup's binary `mysql` folder replaces the target's grants in the swap."""
    return any(s.database == "mysql" and s.kind is Kind.BINARY for s in sources)
