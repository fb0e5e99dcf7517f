"""mysql_restore: the old `ispcp` and `mysql` databases back into the target's MariaDB, checked table by table."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts import ispcp_login as il
from ispcp_lib.facts import mysql_creds, system
from ispcp_lib.facts import mysql_state as ms
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import dumps as sql_dumps
from ispcp_lib.steps.mysql_maintainer import grantless_session

TITLE = "Restore the ispCP and mysql databases"
GUIDE = (
    "the section that stops MySQL, replaces the `ispcp` and `mysql` folders under /var/lib/mysql with the "
    "backup's binary copies (renaming the fresh ones to keep them) and runs `chown -R mysql:mysql`"
)
EXPLANATION = """
This is the heart of the recovery. The `ispcp` database holds every domain, mailbox, FTP and SQL
account the panel manages; the `mysql` database holds the logins, ispCP's own among them. A binary
copy of both folders is enough, but only when it is done right: the server must be **stopped** (never
killed, or it leaves half-written tables), the fresh folders must be **kept**, the files must belong to
the target's `mysql` user, and the server version must be able to read the old files.

**Refused before anything changes:** a table with a missing part (`.frm`, or `.MYD`/`.MYI` for MyISAM,
`.MAD`/`.MAI` for Aria) or a file shorter than its header says; a table that `myisamchk`/`aria_chk
--check --read-only` find damaged (their verdicts are shown); InnoDB tables in these databases, because
an InnoDB table's data dictionary lives in the server's shared tablespace (`ibdata1`), so its folder
alone does not travel; a backup written by a newer server than the target's; a datadir on a read-only
filesystem. The one InnoDB exception are the tables a MariaDB keeps for itself in `mysql`
(`innodb_table_stats`, `innodb_index_stats`, `gtid_slave_pos`, `transaction_registry`): they hold
statistics and replication state, not configuration, so the target **keeps its own** and the backup's
are left behind (copied over, MariaDB reports them as corrupted). After an older server's files,
`mariadb-upgrade` runs once the server is up.

**The swap.** While the server still runs and the checks read the backup, the backup's folders are
copied (`cp -a`: every byte, mode and time) into a staging folder beside the datadir and given to the
`mysql` user and group of the target's own `/etc/passwd` and `/etc/group`. An Aria table whose data file
has a never-written page (`mysql.proc` of a current MariaDB) is rebuilt in the staged copy with
`aria_chk --recover --zerofill`: MariaDB re-stamps other moved Aria tables for itself, but calls that one
corrupt. A refusal removes the staged copies again. Only then is the server stopped through its service,
the target's `ispcp` and `mysql` folders are renamed into `<datadir>.restore-<run id>/kept/` (beside the
datadir, not inside it, where the server would take them for databases), the staged copies are renamed
into place, and the server is started. If it does not come up, the kept folders are put back and the
server is started again on them, so the target is never left without its database.

**Verified, not assumed.** `CHECK TABLE` runs on every table of both databases. The row-count table
compares the old server's count with the restored server's `COUNT(*)`. The old count is the number the
old server wrote into each MyISAM/Aria index header when it last closed the table (read from the
backup without a server); the offline check and `CHECK TABLE` read the rows themselves, so a header that
disagrees with its data is caught there. Finally the logins that the backup implies are tried: its
`debian.cnf`, and ispCP's `DATABASE_USER` with the password decrypted by the backup's key files. If none
works, the tables are checked in a short `--skip-grant-tables --skip-networking` session instead and
`mysql_maintainer` sets a new maintainer password next.

**SQL dumps** are accepted instead (`mysql_restore_source`): the dump `ispcp-backup-ispcp` leaves in
`BACKUP_FILE_DIR` (`.sql`, `.sql.gz`, `.sql.bz2`) and a mysqldump of the `mysql` database. They are
loaded with the `mariadb` client (the password in a temporary 0600 option file, never on a command line)
into a fresh database, the target's folder kept the same way; the old row counts are then the rows in
the dump's INSERT statements. A marker in the state directory records what was restored from which
files, so running the step again changes nothing.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "mysql_restore_source",
        str,
        "auto",
        "restore from the binary database folders (auto: when present) or from SQL dumps",
        choices=("auto", "binary", "dump"),
    ),
    Param(
        "mysql_restore_mysql_dump",
        str,
        None,
        "path in the backup of a mysqldump of the `mysql` database (default: looked "
        "for in BACKUP_FILE_DIR, /var/backups/mysql, /var/backups and /root)",
    ),
)

MARKER = "mysql_restore.json"
_FAILURE_KINDS = (PreconditionFailed, CommandFailed)


@dataclass
class Source:
    database: str
    kind: str  # binary | dump | keep
    path: Path | None = None  # backup folder or dump file
    files: ms.DatabaseFiles | None = None
    dump: sql_dumps.DumpInfo | None = None
    sql: bytes | None = None
    skipped: list[str] = field(default_factory=list)  # the backup's system InnoDB tables left behind

    def signature(self) -> str:
        """What identifies the input: every file's name, size and mtime (binary) or the dump file's."""
        if self.path is None:
            return ""
        if self.kind == "binary":
            data: Any = ms.dir_signature(self.path)
        else:
            st = self.path.stat()
            data = [self.path.name, st.st_size, st.st_mtime_ns]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()


@dataclass
class Layout:
    """Where the step works: the live datadir and the run's folder beside it."""

    datadir: Path
    work: Path

    @property
    def staging(self) -> Path:
        return self.work / "staging"

    @property
    def kept(self) -> Path:
        return self.work / "kept"

    @property
    def failed(self) -> Path:
        return self.work / "failed"


# --- choosing and checking the input ---------------------------------------------------------------


def _backup_datadir(ctx: Context, conf: Any) -> Path:
    return ctx.b(_logical_datadir(conf))


def _logical_datadir(conf: Any) -> str:
    return (conf.get("DATABASE_DIR") if conf else None) or "/var/lib/mysql"


def _database_folder(ctx: Context, conf: Any, name: str) -> Path:
    """The backup's folder of one database, resolved through ctx.b() (which refuses escapes)."""
    return ctx.b(f"{_logical_datadir(conf).rstrip('/')}/{name}")


def _binary_source(name: str, path: Path) -> Source:
    """A database folder to copy. A symlink is refused outright, wherever it points: the copy must put the
    backup's real files into the live datadir, never a link or what a link happens to point at."""
    if path.is_symlink():
        raise InputError(
            f"database {name} (binary copy)",
            f"is a symlink (to {os.readlink(path)}), not a folder",
            "replace the symlink in the backup with a real copy of the database folder (cp -a), or "
            "remove it and restore from an SQL dump (mysql_restore_source = dump)",
            path=str(path),
        )
    return Source(name, "binary", path)


def _dump_dirs(ctx: Context, conf: Any) -> list[Path]:
    logical = [(conf.get("BACKUP_FILE_DIR") if conf else None) or "/var/www/ispcp/backups", *sql_dumps.MYSQL_DUMP_DIRS]
    return [ctx.b(p) for p in logical]


def choose_sources(ctx: Context, result: Result, conf: Any, db_name: str) -> list[Source]:
    """Per database: the binary folder, an SQL dump, or (mysql only, nothing in the backup) the target's own."""
    mode = ctx.param("mysql_restore_source")
    backup_dir = ctx.b((conf.get("BACKUP_FILE_DIR") if conf else None) or "/var/www/ispcp/backups")

    ispcp_dir = _database_folder(ctx, conf, db_name)
    if mode != "dump" and ispcp_dir.is_dir():
        ispcp = _binary_source(db_name, ispcp_dir)
    elif mode == "binary":
        raise InputError(
            f"database {db_name} (binary copy)",
            "is not in the backup",
            "copy the old server's database folder into the backup, or use mysql_restore_source = "
            "dump with the ispcp-backup-ispcp dump",
            path=str(ispcp_dir),
        )
    else:
        dumps = sql_dumps.database_dumps(backup_dir, db_name)
        if not dumps and mode == "dump":
            raise InputError(
                f"database {db_name}",
                "has no ispcp-backup-ispcp dump (.sql, .sql.gz, .sql.bz2)",
                "put the dump into BACKUP_FILE_DIR of the backup, or use mysql_restore_source = auto",
                path=str(backup_dir),
            )
        if not dumps:
            raise InputError(
                f"database {db_name}",
                "has neither a binary copy nor an ispcp-backup-ispcp dump",
                "find the old database folder or an SQL dump of it; without it ispCP cannot be recovered",
                path=str(ispcp_dir),
            )
        if len(dumps) > 1:
            result.note(f"{len(dumps)} ispCP dumps found; the newest is used: {dumps[0].name}")
        ispcp = Source(db_name, "dump", dumps[0])

    explicit = ctx.param("mysql_restore_mysql_dump")
    mysql_dir = _database_folder(ctx, conf, "mysql")
    if explicit:
        dump_path = ctx.b(str(explicit))
        if not dump_path.is_file():
            raise InputError(
                "mysql_restore_mysql_dump",
                "names no file in the backup",
                "give the dump's path as it was on the old server",
                path=str(dump_path),
            )
        mysql = Source("mysql", "dump", dump_path)
    elif mode != "dump" and mysql_dir.is_dir():
        mysql = _binary_source("mysql", mysql_dir)
    else:
        found = sql_dumps.find_mysql_dump(_dump_dirs(ctx, conf))
        if found is not None:
            mysql = Source("mysql", "dump", found)
        elif mysql_dir.is_dir():
            mysql = _binary_source("mysql", mysql_dir)
        else:
            mysql = Source("mysql", "keep")
            result.warn(
                "the backup has no `mysql` database (neither folder nor dump): the target keeps its own "
                "logins, so ispCP's DATABASE_USER, vftp and every customer login must be re-created "
                "(the keys, ftp and mysql_maintainer steps do what they can)"
            )
    return [ispcp, mysql]


def check_binary(ctx: Context, result: Result, src: Source, backup_datadir: Path) -> None:
    """Refuse a binary folder that cannot work, before anything changes."""
    assert src.path is not None
    files = ms.scan_database_dir(src.path)
    assert files is not None
    src.files = files
    where = str(src.path)
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
        src.skipped = [t for t in innodb if t in ms.SYSTEM_INNODB_TABLES]
        innodb = [t for t in innodb if t not in ms.SYSTEM_INNODB_TABLES]
    if innodb:
        shared = ms.shared_tablespace(backup_datadir)
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
    if files.stray:
        result.warn(
            f"{src.database}: files that belong to no table are copied as they are: {', '.join(files.stray[:8])}"
        )


def judge_offline(result: Result, binaries: list[Source], found: list[list[ms.ChkVerdict]] | None) -> None:
    """Refuse damaged tables, with the offline verdicts of myisamchk/aria_chk --read-only in the report."""
    if found is None:
        result.warn("myisamchk/aria_chk are not installed: the tables are checked only after the restore")
        found = [[] for _ in binaries]
    for src, verdicts in zip(binaries, found):
        _judge_offline(result, src, verdicts)


def _judge_offline(result: Result, src: Source, verdicts: list[ms.ChkVerdict]) -> None:
    assert src.files is not None
    damaged = src.files.damaged()
    frame = pd.DataFrame(
        [
            {"database": src.database, "table": v.table, "engine": v.engine, "verdict": v.verdict, "detail": v.detail}
            for v in verdicts
            if v.verdict != "OK"
        ]
    )
    ok = sum(1 for v in verdicts if v.verdict == "OK")
    if verdicts:
        result.note(
            f"{src.database}: {ok} of {len(verdicts)} MyISAM/Aria tables in the backup pass "
            "myisamchk/aria_chk --check --read-only"
        )
    if not frame.empty:
        result.table(f"Tables of the backup's {src.database} that the offline check questions", frame)
    for v in verdicts:
        if v.verdict == "warning":
            result.warn(f"{src.database}.{v.table}: {v.detail}")
    corrupt = [f"{v.table}: {v.detail or 'corrupt'}" for v in verdicts if v.verdict == "corrupt"]
    if corrupt or damaged:
        found = corrupt or damaged
        raise InputError(
            f"database {src.database} (binary copy)",
            f"{len(found)} table(s) are damaged (offline CHECK verdict in the table above), first {found[0]}"
            + (f"; file lengths: {'; '.join(damaged[:3])}" if damaged and corrupt else ""),
            "repair a copy of the backup (myisamchk -r / aria_chk -r on the table files, no server running on "
            "them) or restore from an SQL dump (mysql_restore_source = dump)",
            path=str(src.path),
        )


def check_dump(ctx: Context, result: Result, src: Source) -> None:
    assert src.path is not None
    src.sql = sql_dumps.read_dump(src.path)
    info = sql_dumps.inspect_dump(src.path, src.sql)
    src.dump = info
    for w in info.warnings:
        result.warn(w)
    if info.complete is False:
        raise InputError(
            f"SQL dump of {src.database}",
            "lacks mysqldump's closing '-- Dump completed' line: it is cut off",
            "use an older, complete dump or the binary copy",
            path=str(src.path),
        )
    if not info.tables:
        raise InputError(
            f"SQL dump of {src.database}", "creates no tables", "check that it is a mysqldump", path=str(src.path)
        )
    if info.database not in (None, src.database):
        raise InputError(
            f"SQL dump of {src.database}",
            f"holds database {info.database!r}",
            f"use a dump of {src.database}",
            path=str(src.path),
        )


def check_versions(ctx: Context, result: Result, backup_datadir: Path, datadir: Path) -> str:
    old = system.server_version_from_datadir(backup_datadir)
    new = (ctx.mysql.version() if ctx.mysql.status() else None) or system.server_version_from_datadir(datadir)
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


def check_writable(paths: list[Path]) -> None:
    for path in paths:
        probe = path if path.exists() else path.parent
        if os.statvfs(probe).f_flag & os.ST_RDONLY or not os.access(probe, os.W_OK):
            raise PreconditionFailed(
                "MySQL datadir",
                "is on a read-only filesystem (or not writable)",
                "remount it read-write (mount -o remount,rw <mount point>)",
                path=str(probe),
            )


def work_layout(ctx: Context, datadir: Path, purpose: str = "restore") -> Layout:
    """The run's folder `<datadir>.<purpose>-<run id>` beside the datadir (same filesystem, so moves are
    renames); `mysql.<purpose>-<run id>` in the state dir otherwise. customer_databases uses it too.

    A folder left by an earlier attempt of the same run is never reused: it may hold kept originals.
    """
    parent = datadir.parent
    same_fs = parent.exists() and datadir.exists() and os.stat(parent).st_dev == os.stat(datadir).st_dev
    base = (
        parent / f"{datadir.name}.{purpose}-{ctx.run_id}"
        if same_fs
        else ctx.state_dir / f"mysql.{purpose}-{ctx.run_id}"
    )
    work, n = base, 1
    while os.path.lexists(work):
        n += 1
        work = base.with_name(f"{base.name}-{n}")
    return Layout(datadir, work)


# --- the marker (idempotence) ---------------------------------------------------------------------


def read_marker(ctx: Context) -> dict[str, Any] | None:
    path = ctx.state_dir / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def already_restored(ctx: Context, sources: list[Source], datadir: Path) -> str | None:
    """Why nothing needs doing (the same inputs were restored and are live), or None."""
    marker = read_marker(ctx)
    if marker is None or marker.get("datadir") != str(datadir):
        return None
    done = marker.get("sources", {})
    for src in sources:
        if src.kind == "keep":
            continue
        rec = done.get(src.database)
        if rec is None or rec.get("kind") != src.kind or rec.get("signature") != src.signature():
            return None
        if not (datadir / src.database).is_dir():
            return None
    names = " and ".join(s.database for s in sources if s.kind != "keep")
    return (
        f"{names} were restored in run {marker.get('run_id')} ({marker.get('ts')}) from these same backup "
        f"files, and their folders are live in {ctx.display_path(datadir)}"
    )


def write_marker(ctx: Context, sources: list[Source], layout: Layout, kept: dict[str, Path]) -> None:
    ctx.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {
        "run_id": ctx.run_id,
        "ts": dt.datetime.now().isoformat(timespec="seconds"),
        "datadir": str(layout.datadir),
        "work": str(layout.work),
        "kept": {k: str(v) for k, v in kept.items()},
        "sources": {
            s.database: {"kind": s.kind, "path": str(s.path), "signature": s.signature(), "skipped": s.skipped}
            for s in sources
            if s.kind != "keep"
        },
    }
    fileops.atomic_write(ctx.state_dir / MARKER, json.dumps(data, indent=1) + "\n", 0o600)


# --- moving folders -------------------------------------------------------------------------------


def move_tree(ctx: Context, src: Path, dst: Path) -> None:
    """Rename src (a folder or a file) to dst; across filesystems, copy with cp -a and remove the original
    afterwards. customer_databases moves with it too (a whole datadir: hence the long timeout)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        ctx.runner.run(["cp", "-a", "--", str(src), str(dst)], timeout=14400)
        if src.is_dir() and not src.is_symlink():
            shutil.rmtree(src)
        else:
            src.unlink()


def blank_page_tables(src: Source) -> list[str]:
    """Aria tables of the backup that MariaDB could not re-stamp for this server as they are."""
    if src.files is None or src.path is None:
        return []
    return sorted(
        n
        for n, t in src.files.tables.items()
        if t.engine == "Aria" and n not in src.skipped and ms.has_blank_page(src.path, n)
    )


def rebuild_aria(ctx: Context, result: Result, staged: Path, names: list[str]) -> None:
    """Rebuild the staged copies of Aria tables whose data file has a never-written page.

    Aria tables carry the identity of the server that wrote them; MariaDB re-stamps ("zerofills") a moved
    table itself when it first opens it. That fails on a data file with a blank page (mysql.proc of
    a current MariaDB): the table is then reported corrupt. aria_chk --recover --zerofill rewrites such a
    data file from its rows and re-stamps it, in the staged copy only (the backup is never touched), before
    the server is stopped.
    """
    if not names:
        return
    exe = shutil.which("aria_chk")
    if exe is None:
        result.warn(f"aria_chk is not installed: {', '.join(names)} may need REPAIR TABLE after the restore")
        return
    result.change(
        f"rebuild the staged {', '.join(names)} (an Aria data file with a blank page; aria_chk "
        "--recover --zerofill), so that MariaDB can adopt it"
    )
    with tempfile.TemporaryDirectory() as scratch:  # aria_chk may drop files into its working directory
        ctx.runner.run(
            [exe, "--recover", "--zerofill", "--silent", *(str(staged / f"{n}.MAI") for n in names)],
            mutates=True,
            cwd=scratch,
        )


# --- logins after the restore ---------------------------------------------------------------------


def implied_logins(ctx: Context, sources: list[Source]) -> list[Login]:
    """Admin logins that should work after the restore: the backup's debian.cnf and ispCP's DATABASE_USER."""
    out: list[Login] = []
    old_cnf = mysql_creds.backup_admin(ctx)
    if old_cnf is not None:
        out.append(Login(old_cnf.user, old_cnf.password, "the backup's debian.cnf"))
    ispcp = il.ispcp_login(ctx, "backup")
    if ispcp is not None:
        out.append(Login(ispcp.user, ispcp.password, "the backup's ispcp.conf (DATABASE_USER, decrypted)"))
    if any(s.database == "mysql" and s.kind == "keep" for s in sources):
        target = mysql_creds.target_admin(ctx)
        if target is not None:
            out.append(Login(target.user, target.password, "the target's debian.cnf (its grants were kept)"))
    return out


@contextmanager
def admin_connection(ctx: Context, result: Result, logins: list[Login]) -> Iterator[tuple[Any, Login]]:
    """A connection with the first implied login that works; else a grant-less session, with a warning."""
    rows = []
    chosen: tuple[Any, Login] | None = None
    for login in logins:
        try:
            conn = ctx.mysql.connect(login.user, login.password)
        except pymysql.MySQLError as exc:
            reason = str(exc.args[1] if len(exc.args) > 1 else exc)
            rows.append({"login": login.user, "from": login.source, "result": f"refused: {reason}"})
            continue
        rows.append({"login": login.user, "from": login.source, "result": "works"})
        if chosen is None:
            chosen = (conn, login)  # kept open for the checks
        else:
            conn.close()
    result.table("Logins the backup implies, tried against the restored server", pd.DataFrame(rows))
    result.data["logins"] = rows
    if chosen is not None:
        try:
            yield chosen
        finally:
            chosen[0].close()
        return
    result.warn(
        "no login that the backup implies works against the restored grants: the tables are checked in a "
        "short --skip-grant-tables --skip-networking session instead; mysql_maintainer sets a new "
        "debian-sys-maint password next"
    )
    result.change("restart MySQL without grant tables (local socket only) to verify, then normally again")
    with grantless_session(ctx) as conn:
        yield conn, Login("root", "", "a --skip-grant-tables session")


# --- the step -------------------------------------------------------------------------------------


@action("mysql_restore")
def run(ctx: Context, result: Result) -> None:
    bl.check_backup_root(ctx)
    if ctx.mysql is None:
        raise PreconditionFailed("MySQL service", "is not configured", "set the mysql parameter")
    conf = bl.load_old_conf(ctx)
    db_name = (conf.get("DATABASE_NAME") if conf else None) or "ispcp"
    backup_datadir = _backup_datadir(ctx, conf)
    datadir = Path(ctx.mysql.datadir)
    sources = choose_sources(ctx, result, conf, db_name)

    reason = already_restored(ctx, sources, datadir)
    if reason is not None:
        result.noop_reason = reason
        result.summary = "already restored"
        _report_live_counts(ctx, result, sources)
        return

    # Every check comes before the first change.
    for src in sources:
        if src.kind == "binary":
            check_binary(ctx, result, src, backup_datadir)
        elif src.kind == "dump":
            check_dump(ctx, result, src)
    verdict = (
        check_versions(ctx, result, backup_datadir, datadir) if any(s.kind == "binary" for s in sources) else "same"
    )
    layout = work_layout(ctx, datadir)
    check_writable([datadir, layout.work.parent])
    owner = ms.mysql_owner(ctx.target_root)
    if owner is None:
        raise PreconditionFailed(
            "mysql user",
            "is missing from the target's etc/passwd or etc/group",
            "install mariadb-server on the target first",
            path=str(ctx.t("/etc/passwd")),
        )
    loader = None
    # With a binary `mysql` folder the old grants are live once the server is up again: the loader is then
    # chosen after the start (_load_dumps). Otherwise the target's grants are live and its admin loads.
    if any(s.kind == "dump" for s in sources) and not old_grants_after_swap(sources):
        loader = mysql_creds.working_admin(ctx) if ctx.mysql.status() else mysql_creds.target_admin(ctx)
        if loader is None:
            raise PreconditionFailed(
                "target's debian.cnf",
                "gives no working admin login to load the dumps with",
                "fix /etc/mysql/debian.cnf of the target (or run the binary restore)",
            )
    _note_other_databases(ctx, result, backup_datadir, datadir, sources)

    old_counts = _old_counts(sources)
    result.table("What is restored", pd.DataFrame([_plan_row(ctx, s, datadir, layout) for s in sources]))
    _restore(ctx, result, sources, layout, owner, verdict, loader, old_counts)


def _plan_row(ctx: Context, src: Source, datadir: Path, layout: Layout) -> dict[str, Any]:
    live = datadir / src.database
    if src.kind == "binary" and src.files is not None:
        what = ", ".join(f"{n} {e}" for e, n in src.files.engines().items())
    elif src.kind == "dump" and src.dump is not None:
        what = f"{len(src.dump.tables)} tables, {sum(src.dump.rows.values())} rows"
    else:
        what = "—"
    return {
        "database": src.database,
        "source": src.kind,
        "from": str(src.path) if src.path else "target's own",
        "holds": what,
        "target's folder now": ctx.display_path(live) if live.is_dir() else "absent",
        "kept as": ctx.display_path(layout.kept / src.database) if src.kind != "keep" and live.is_dir() else "—",
        "left behind": ", ".join(src.skipped) or "—",
    }


def _old_counts(sources: list[Source]) -> dict[str, dict[str, tuple[str, int | None]]]:
    """database -> table -> (engine, old row count) from the backup's index headers or the dump."""
    out: dict[str, dict[str, tuple[str, int | None]]] = {}
    for src in sources:
        if src.kind == "binary" and src.files is not None and src.path is not None:
            out[src.database] = {
                name: (t.engine, ms.header_row_count(src.path, name, t.engine))
                for name, t in sorted(src.files.tables.items())
                if name not in src.skipped
            }
        elif src.kind == "dump" and src.dump is not None:
            out[src.database] = {name: ("", src.dump.rows.get(name, 0)) for name in src.dump.tables}
    return out


def _note_other_databases(
    ctx: Context, result: Result, backup_datadir: Path, datadir: Path, sources: list[Source]
) -> None:
    if not backup_datadir.is_dir():
        return
    ours = {s.database for s in sources}
    others = sorted(
        p.name
        for p in backup_datadir.iterdir()
        if p.is_dir()
        and p.name not in ours
        and p.name not in ("performance_schema", "sys", "lost+found")
        and not (datadir / p.name).exists()
    )
    if others:
        result.note(
            f"The backup holds {len(others)} more database folder(s) ({', '.join(others[:6])}"
            f"{' ...' if len(others) > 6 else ''}): customer databases. As in the guide, this step restores "
            "only ispcp and mysql; their logins come back with mysql, their data with the "
            "customer_databases step."
        )


def _restore(
    ctx: Context,
    result: Result,
    sources: list[Source],
    layout: Layout,
    owner: tuple[int, int],
    verdict: str,
    loader: Login | None,
    old_counts: dict[str, dict[str, tuple[str, int | None]]],
) -> None:
    binary = [s for s in sources if s.kind == "binary"]
    replaced = [s for s in sources if s.kind != "keep"]
    # The offline check reads the backup while the copies are staged beside the datadir, and the server
    # still serves: the downtime is only the swap. A refusal removes the staged copies again.
    pending = ms.OfflineCheck([(s.path, s.files) for s in binary]) if binary else None
    try:
        if ctx.apply:
            layout.work.mkdir(parents=True, mode=0o700)
        if binary:
            _stage(ctx, result, binary, layout, owner)
        if pending is not None:
            judge_offline(result, binary, pending.wait())
    except BaseException:
        if pending is not None:
            pending.cancel()
        if ctx.apply and layout.work.exists():
            shutil.rmtree(layout.work)
            result.changes.clear()
            result.note("nothing on the target changed: the staged copies were removed again")
        raise
    was_running = ctx.mysql.status()
    result.change(f"stop MySQL through its {ctx.mysql.kind} service")
    if ctx.apply:
        ctx.mysql.stop()
    kept: dict[str, Path] = {}
    placed: list[str] = []
    try:
        for src in replaced:
            _keep_target(ctx, result, src, layout, kept)
        for src in binary:
            _place(ctx, result, src, layout, kept, placed)
        placed += [s.database for s in replaced if s.kind == "dump" and s.database != "mysql"]
        result.change("start MySQL")
        if not ctx.apply:
            _plan_rest(ctx, result, sources, verdict, old_counts, was_running)
            return
        ctx.mysql.start()
        _load_dumps(ctx, result, sources, loader)
    except (*_FAILURE_KINDS, OSError, pymysql.MySQLError) as exc:
        if not ctx.apply:
            raise
        _roll_back(ctx, result, layout, placed, kept, exc)
        raise PreconditionFailed(
            "MySQL restore",
            f"failed after the copy ({_first_line(exc)}). The original folders were put back and "
            f"the server was started again with them; the restored copies are in {layout.failed}",
            "read the error above and the server's error log, fix the backup, then run this step again",
        ) from None

    _verify(ctx, result, sources, verdict, old_counts)
    write_marker(ctx, sources, layout, kept)
    if layout.staging.is_dir() and not any(layout.staging.iterdir()):
        layout.staging.rmdir()
    names = " and ".join(s.database for s in replaced)
    result.summary = f"{names} restored, every table checked; originals kept in {ctx.display_path(layout.kept)}"


def _stage(ctx: Context, result: Result, binary: list[Source], layout: Layout, owner: tuple[int, int]) -> None:
    """cp -a the backup's folders beside the datadir, prepare them, and give them to the target's mysql user."""
    uid, gid = owner
    staged = {s.database: layout.staging / s.database for s in binary}
    for src in binary:
        result.change(f"copy {src.path} to {ctx.display_path(staged[src.database])} (cp -a)")
    if ctx.apply:
        layout.staging.mkdir(exist_ok=True, mode=0o700)
    for src in binary:
        # The folder's contents (src/.) into staging/<database>: the staged folder is always a real directory.
        ctx.runner.run(
            ["cp", "-a", "--reflink=auto", "--", f"{src.path}/.", str(staged[src.database])], mutates=True, timeout=7200
        )
        if src.skipped:
            result.change(f"leave the backup's system InnoDB tables behind: {', '.join(src.skipped)}")
            if ctx.apply:
                for name in src.skipped:
                    for suffix in (".frm", ".ibd", ".isl"):
                        (staged[src.database] / f"{name}{suffix}").unlink(missing_ok=True)
        rebuild_aria(ctx, result, staged[src.database], blank_page_tables(src))
    result.change(f"chown -R {uid}:{gid} (the target's mysql user and group) {ctx.display_path(layout.staging)}")
    ctx.runner.run(["chown", "-R", f"{uid}:{gid}", "--", str(layout.staging)], mutates=True, timeout=3600)


def _keep_target(ctx: Context, result: Result, src: Source, layout: Layout, kept: dict[str, Path]) -> None:
    """Move the target's folder aside (a copy, for a mysql dump loaded on top); record it once it is kept."""
    live = layout.datadir / src.database
    if not live.is_dir():
        return
    dest = layout.kept / src.database
    if ctx.apply:
        layout.kept.mkdir(exist_ok=True, mode=0o700)
    if src.kind == "dump" and src.database == "mysql":
        result.change(f"copy {ctx.display_path(live)} to {ctx.display_path(dest)} (kept)")
        ctx.runner.run(["cp", "-a", "--", str(live), str(dest)], mutates=True, timeout=7200)
    else:
        result.change(f"move {ctx.display_path(live)} aside to {ctx.display_path(dest)} (kept)")
        if ctx.apply:
            move_tree(ctx, live, dest)
    kept[src.database] = dest
    if ctx.apply:
        result.backups.append(str(dest))


def _place(ctx: Context, result: Result, src: Source, layout: Layout, kept: dict[str, Path], placed: list[str]) -> None:
    """Rename the staged copy into the datadir; the mysql folder gets the target's own system InnoDB tables."""
    live = layout.datadir / src.database
    result.change(f"move the staged {src.database} into {ctx.display_path(layout.datadir)}")
    if ctx.apply:
        os.rename(layout.staging / src.database, live)
        placed.append(src.database)
    if src.skipped and src.database in kept:
        result.change(f"give the new mysql folder the target's own {', '.join(src.skipped)}")
        own = [kept[src.database] / f"{n}{suffix}" for n in src.skipped for suffix in (".frm", ".ibd")]
        own = [p for p in own if p.is_file()] if ctx.apply else own
        if own:
            ctx.runner.run(["cp", "-a", "--", *map(str, own), str(live)], mutates=True)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _plan_rest(
    ctx: Context,
    result: Result,
    sources: list[Source],
    verdict: str,
    old_counts: dict[str, dict[str, tuple[str, int | None]]],
    was_running: bool,
) -> None:
    for src in sources:
        if src.kind == "dump":
            result.change(f"load {src.path} into database {src.database} with the mariadb client")
    if any(s.kind == "dump" for s in sources) and old_grants_after_swap(sources):
        result.note(
            "The dump is loaded after the start, when the backup's grants are live: with a login the backup "
            "implies (its debian.cnf, ispCP's DATABASE_USER), else in a short grant-less session."
        )
    if verdict in ("upgrade", "unknown"):
        result.change("run mariadb-upgrade --force (the old files come from an older or unknown server)")
    result.change("CHECK TABLE every table of both databases, compare row counts, try the implied logins")
    result.table(
        "Row counts of the backup (the restored side is filled in when applying)", _counts_frame(old_counts, {}, {})
    )
    if not was_running:
        result.note("MySQL is not running now; the restore starts it")
    result.summary = "planned: " + " and ".join(f"{s.database} from {s.kind}" for s in sources if s.kind != "keep")


def old_grants_after_swap(sources: list[Source]) -> bool:
    """Whether the backup's binary `mysql` folder replaces the target's grants in the swap."""
    return any(s.database == "mysql" and s.kind == "binary" for s in sources)


def _load_dumps(ctx: Context, result: Result, sources: list[Source], loader: Login | None) -> None:
    """Load the dumps after the start, with a login the live grants accept."""
    dumps = [s for s in sources if s.kind == "dump"]
    if not dumps:
        return
    if loader is None:  # the old grants are live: a login the backup implies, else a grant-less session
        loader = next(
            (lg for lg in implied_logins(ctx, sources) if ctx.mysql.can_login(lg.user, lg.password) is None), None
        )
        if loader is not None:
            result.note(f"The dump is loaded with the login from {loader.source} (the old grants are live now).")
    if loader is not None:
        for src in dumps:
            _load_dump(ctx, result, src, loader)
        return
    result.warn(
        "no login that the backup implies works against the restored grants: the dump is loaded in a short "
        "--skip-grant-tables --skip-networking session"
    )
    result.change("restart MySQL without grant tables (local socket only) to load the dump, then normally")
    with grantless_session(ctx):
        for src in dumps:
            _load_dump(ctx, result, src, Login("root", "", "a --skip-grant-tables session"))


def _load_dump(ctx: Context, result: Result, src: Source, loader: Login | None) -> None:
    assert loader is not None and src.sql is not None
    sql = src.sql
    if src.database == "mysql":
        sql += b"\nFLUSH PRIVILEGES;\n"
    else:
        with ctx.mysql.connect(loader.user, loader.password) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {ms.quote_ident(src.database)}")
    result.change(f"load {src.path} into {src.database} with the mariadb client")
    with sql_dumps.defaults_file(loader, ctx.mysql.socket, write=ctx.apply) as cnf:
        ctx.runner.run(sql_dumps.client_argv(cnf, "--batch", src.database), input=sql, mutates=True, timeout=7200)


def _roll_back(
    ctx: Context, result: Result, layout: Layout, placed: list[str], kept: dict[str, Path], cause: BaseException
) -> None:
    """Put the target's own folders back and start the server on them."""
    try:
        ctx.mysql.stop()
    except _FAILURE_KINDS:
        pass  # it never came up
    for name in placed:
        live = layout.datadir / name
        if live.exists():
            move_tree(ctx, live, layout.failed / name)
    for name, dest in kept.items():
        live = layout.datadir / name
        if live.exists():  # the mysql folder a dump was loaded into
            move_tree(ctx, live, layout.failed / name)
        move_tree(ctx, dest, live)
    result.backups[:] = [b for b in result.backups if b not in {str(d) for d in kept.values()}]
    result.warn(f"rolled back: the target's own {', '.join(kept) or 'folders'} are in place again")
    try:
        ctx.mysql.start()
    except _FAILURE_KINDS as exc:
        raise PreconditionFailed(
            "MySQL restore",
            f"failed after the copy ({_first_line(cause)}); the target's own folders were put back, "
            f"but the server does not start with them either ({_first_line(exc)})",
            f"read the server's error log; the restored copies are in {layout.failed}",
        ) from None


def _verify(
    ctx: Context,
    result: Result,
    sources: list[Source],
    verdict: str,
    old_counts: dict[str, dict[str, tuple[str, int | None]]],
) -> None:
    checks: dict[str, dict[str, tuple[str, str]]] = {}
    counts: dict[str, dict[str, int | None]] = {}
    engines: dict[str, dict[str, str]] = {}
    with admin_connection(ctx, result, implied_logins(ctx, sources)) as (conn, login):
        if verdict in ("upgrade", "unknown"):
            result.change("run mariadb-upgrade --force")
            with sql_dumps.defaults_file(login, ctx.mysql.socket) as cnf:
                ctx.runner.run(
                    sql_dumps.client_argv(cnf, "--force", program="mariadb-upgrade"), mutates=True, timeout=3600
                )
        for src in sources:
            if src.kind == "keep":
                continue
            live = ms.live_tables(conn, src.database)
            engines[src.database] = {t.name: t.engine or t.kind for t in live}
            # Counting first opens every table the normal way: MariaDB then re-stamps Aria tables that come
            # from another server ("zerofilling moved table"); a CHECK TABLE as first access calls them corrupt.
            counts[src.database] = ms.count_rows(conn, src.database, [t.name for t in live if t.kind != "VIEW"])
            checks[src.database] = ms.check_tables(conn, src.database, [t.name for t in live])
    own = {s.database: set(s.skipped) for s in sources}
    frame = _counts_frame(old_counts, counts, checks, engines, own)
    result.table(
        "Row counts: old server (index headers or dump) vs restored server (COUNT(*)), with CHECK TABLE", frame
    )
    result.data["row_counts"] = frame.to_dict("records")
    bad = frame[(frame["CHECK TABLE"] != "OK") | (frame["match"] == "NO")]
    if not bad.empty:
        first = bad.iloc[0]
        raise PreconditionFailed(
            "restored database",
            f"{len(bad)} table(s) fail the verification, first {first['database']}."
            f"{first['table']}: CHECK TABLE {first['CHECK TABLE']}, old {first['old rows']} rows, restored "
            f"{first['restored rows']}",
            "see the table above; the restored folders stay in place and the "
            "originals are kept (listed under safety copies): repair the table or restore it from a dump",
        )


def _counts_frame(
    old: dict[str, dict[str, tuple[str, int | None]]],
    live: dict[str, dict[str, int | None]],
    checks: dict[str, dict[str, tuple[str, str]]],
    engines: dict[str, dict[str, str]] | None = None,
    own: dict[str, set[str]] | None = None,
) -> pd.DataFrame:
    """One row per table: old count, restored count, CHECK TABLE verdict and whether they agree."""
    engines, own = engines or {}, own or {}
    rows = []
    for database in sorted(set(old) | set(checks)):
        names = sorted(set(old.get(database, {})) | set(checks.get(database, {})))
        for name in names:
            engine, before = old.get(database, {}).get(name, ("", None))
            engine = engine or engines.get(database, {}).get(name, "")
            after = live.get(database, {}).get(name)
            verdict, message = checks.get(database, {}).get(name, ("", ""))
            in_live = name in checks.get(database, {})
            if checks and not in_live:
                verdict, message = "missing", "not on the restored server"
            match = (
                ""
                if not checks
                else "NO"
                if not in_live
                else ("yes" if before is None or after is None or before == after else "NO")
            )
            if engine == "VIEW":
                match = "view" if checks else ""
            elif name in own.get(database, set()):
                match = "target's own"
            rows.append(
                {
                    "database": database,
                    "table": name,
                    "engine": engine,
                    "old rows": "" if before is None else before,
                    "restored rows": "" if after is None else after,
                    "CHECK TABLE": verdict if verdict in ("", "OK", "missing") else f"{verdict}: {message}",
                    "match": match,
                }
            )
    return pd.DataFrame(
        rows, columns=["database", "table", "engine", "old rows", "restored rows", "CHECK TABLE", "match"]
    )


def _report_live_counts(ctx: Context, result: Result, sources: list[Source]) -> None:
    """For a no-op: what the live server says now (read only: no CHECK TABLE, it would write to MyISAM headers)."""
    login = None
    for candidate in implied_logins(ctx, sources) + [mysql_creds.target_admin(ctx)]:
        if (
            candidate is not None
            and ctx.mysql.status()
            and ctx.mysql.can_login(candidate.user, candidate.password) is None
        ):
            login = candidate
            break
    if login is None:
        return
    rows = []
    with ctx.mysql.connect(login.user, login.password) as conn:
        for src in sources:
            if src.kind == "keep":
                continue
            tables = ms.live_tables(conn, src.database)
            counts = ms.count_rows(conn, src.database, [t.name for t in tables if t.kind != "VIEW"])
            rows.append(
                {
                    "database": src.database,
                    "tables": len(tables),
                    "rows": sum(v for v in counts.values() if v is not None),
                }
            )
    result.table("The restored databases as the server reports them now", pd.DataFrame(rows))
