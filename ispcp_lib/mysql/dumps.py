"""SQL dumps as a restore source: find them, read them (.sql, .sql.gz, .sql.bz2), load them with the client.

ispcp-backup-ispcp writes a mysqldump of the ispCP database (no CREATE DATABASE, no USE) into
BACKUP_FILE_DIR, compressed with ispcp.conf's ZIP tool; an operator's cron job may leave mysqldumps of
single databases, of the `mysql` database or of all of them (`--all-databases`) in the usual folders.
This module is the one home of where dumps are looked for and what they hold.

Dumps are read through the connection of the side that holds them (the backup's view), streamed and
decompressed on this machine. They are loaded with the real `mariadb`/`mysql` client on the target (it
understands everything mysqldump writes), argv only; the password goes into a 0600 option file on the
target, removed afterwards, and never appears on a command line.
"""

from __future__ import annotations

import bz2
import gzip
import posixpath
import re
import subprocess
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.facts.mysql_state import list_folder

SUFFIXES = (".sql", ".sql.gz", ".sql.bz2")
# ispcp-backup-ispcp's folder when ispcp.conf names none (BACKUP_FILE_DIR).
ISPCP_BACKUP_DIR = "/var/www/ispcp/backups"
# Where operators' cron jobs leave mysqldumps (the ispCP dump folder comes first, from ispcp.conf).
DUMP_DIRS = ("/var/backups/mysql", "/var/backups", "/root", "/var/backups/mysqldump")
_MYSQL_DUMP_NAME = re.compile(r"^mysql(?:[-_.][^/]*)?\.sql(?:\.gz|\.bz2)?$")
_HEADER_DB = re.compile(r"^--\s*Host:.*?Database:\s*(\S+)", re.MULTILINE)
_USE_DB = re.compile(
    r"^(?:USE|CREATE DATABASE(?: /\*!\d+ IF NOT EXISTS\*/| IF NOT EXISTS)?)\s+`([^`]+)`", re.MULTILINE | re.IGNORECASE
)
_DUMP_HEAD = re.compile(r"^-- (?:MySQL|MariaDB) dump", re.MULTILINE)
_DUMP_TAIL = "-- Dump completed"
# Tokens that matter when counting rows: quoted strings and identifiers, comments, parentheses, ';'.
_TOKENS = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`(?:[^`]|``)*`|--[^\n]*|#[^\n]*|/\*.*?\*/|[();]",
    re.DOTALL,
)
_INSERT = re.compile(r"^\s*(?:INSERT|REPLACE)\s+(?:IGNORE\s+)?INTO\s+`?([^`\s(]+)`?", re.IGNORECASE)


def ispcp_backup_dir(conf: Any) -> str:
    """The folder ispcp-backup-ispcp writes its dumps to (conf: the old ispcp.conf, or None)."""
    return (conf.get("BACKUP_FILE_DIR") if conf is not None else None) or ISPCP_BACKUP_DIR


def dump_folders(conf: Any, extra: Iterable[str] = ()) -> list[str]:
    """Every folder of the old server where dumps are looked for, ispCP's own first."""
    return list(dict.fromkeys([ispcp_backup_dir(conf), *DUMP_DIRS, *extra]))


@dataclass(frozen=True)
class DumpFile:
    path: str  # the old server's path (read through the backup's view)
    size: int
    mtime: str  # find's %T@

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def is_dump_name(name: str) -> bool:
    return name.endswith(SUFFIXES)


def dumps_in(conn: Connection, folder: str) -> list[DumpFile]:
    """Dump files in a folder, newest first (modification time, then name); symlinks are not followed."""
    entries = list_folder(conn, folder) or {}
    found = [
        DumpFile(posixpath.join(folder, e.name), e.size, e.mtime)
        for e in entries.values()
        if e.kind == "f" and is_dump_name(e.name)
    ]
    return sorted(found, key=lambda d: (float(d.mtime), d.name), reverse=True)


def _unreadable(path: str, why: object) -> InputError:
    return InputError(
        "SQL dump",
        f"cannot be read or decompressed ({why}); it is damaged or cut off",
        "take another dump from the backup, or the binary copy (mysql_restore_source = binary)",
        path=path,
    )


@contextmanager
def open_dump(conn: Connection, path: str) -> Iterator[IO[bytes]]:
    """The dump's SQL as a binary stream, decompressed here while it is read from its side."""
    proc = conn.popen(
        ["cat", "--", conn.path(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    stream: IO[bytes] = proc.stdout
    if path.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=proc.stdout)  # type: ignore[assignment]
    elif path.endswith(".bz2"):
        stream = bz2.BZ2File(proc.stdout)  # type: ignore[assignment]
    try:
        yield stream
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def read_dump(conn: Connection, path: str, limit: int | None = None) -> bytes:
    """The SQL text of a dump as bytes, decompressed; limit reads only the first bytes (for headers).

    A damaged or cut-off compressed file is an InputError naming the file.
    """
    try:
        with open_dump(conn, path) as fh:
            data = fh.read() if limit is None else fh.read(limit)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if limit is None and not data and not conn.is_file(path):
        raise _unreadable(path, "no such file")
    return data


def dump_database(head: str) -> str | None:
    """The database a dump says it holds: its USE/CREATE DATABASE, else the header's 'Database:'."""
    m = _USE_DB.search(head)
    if m:
        return m.group(1)
    m = _HEADER_DB.search(head)
    return m.group(1) if m else None


def _head_database(conn: Connection, path: str) -> str | None:
    try:
        return dump_database(read_dump(conn, path, 8192).decode("utf-8", "replace"))
    except InputError:
        return None


def database_dumps(conn: Connection, folder: str, database: str) -> list[DumpFile]:
    """Dumps of `database` in a folder, newest first: those that say so, or say nothing and are not mysql's."""
    out = []
    for dump in dumps_in(conn, folder):
        if _MYSQL_DUMP_NAME.match(dump.name) and database != "mysql":
            continue
        if _head_database(conn, dump.path) in (database, None):
            out.append(dump)
    return out


def find_mysql_dump(conn: Connection, folders: Iterable[str]) -> DumpFile | None:
    """A dump of the `mysql` database in these folders: named mysql*.sql[.gz|.bz2] or saying so in its header."""
    for folder in folders:
        for dump in dumps_in(conn, folder):
            if _MYSQL_DUMP_NAME.match(dump.name) or _head_database(conn, dump.path) == "mysql":
                return dump
    return None


@dataclass
class DumpInfo:
    path: str
    database: str | None  # what the dump says it holds
    tables: list[str]  # CREATE TABLE order
    rows: dict[str, int]  # rows in its INSERT statements
    complete: bool | None  # True: has mysqldump's trailer; None: no comments at all to tell
    warnings: list[str] = field(default_factory=list)


def inspect_dump(path: str, sql: bytes) -> DumpInfo:
    """Read a dump's SQL once: its database, tables, row counts, and whether it ends like a complete dump."""
    text = sql.decode("utf-8", "replace")
    tables = re.findall(r"^CREATE TABLE (?:IF NOT EXISTS )?`([^`]+)`", text, re.MULTILINE)
    has_head = bool(_DUMP_HEAD.search(text[:4096]))
    complete = (_DUMP_TAIL in text[-4096:]) if has_head else None
    info = DumpInfo(path, dump_database(text[:65536]), tables, count_insert_rows(text), complete)
    if complete is None:
        info.warnings.append(
            f"{posixpath.basename(path)} has no mysqldump header or trailer (--skip-comments?): "
            "it cannot be told whether it is complete"
        )
    return info


def count_insert_rows(sql: str) -> dict[str, int]:
    """Rows per table in INSERT/REPLACE ... VALUES statements: top-level (...) groups after VALUES."""
    counts: dict[str, int] = {}
    stmt_start = search_from = 0
    table: str | None = None
    depth = 0
    checked = values_seen = False
    for m in _TOKENS.finditer(sql):
        tok = m.group(0)
        if tok == ";":
            stmt_start = search_from = m.end()
            table, depth, checked, values_seen = None, 0, False, False
            continue
        if tok[0] in "-#" or tok.startswith("/*"):
            continue
        if not checked:
            # The first real token of a statement decides whether it is an INSERT.
            head = _INSERT.match(_strip_comments(sql[stmt_start : m.end()]))
            table = head.group(1) if head else None
            if table is not None:
                counts.setdefault(table, 0)
            checked = True
        if table is None:
            continue
        if tok == "(":
            if depth == 0 and not values_seen:
                # Only new text is searched, so long statements stay linear.
                values_seen = re.search(r"\bVALUES\b", sql[search_from : m.start()], re.IGNORECASE) is not None
                search_from = m.start()
            if depth == 0 and values_seen:
                counts[table] += 1
            depth += 1
        elif tok == ")":
            depth = max(0, depth - 1)
    return counts


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|--[^\n]*|#[^\n]*", " ", text, flags=re.DOTALL).lstrip()


# --- dumps of several databases ------------------------------------------------------------------

PER_DATABASE = "per-database"
ALL_DATABASES = "all-databases"


@dataclass
class DumpRef:
    """A dump file and the databases it holds."""

    file: DumpFile
    kind: str  # PER_DATABASE | ALL_DATABASES
    databases: list[str]

    @property
    def path(self) -> str:
        return self.file.path

    def label(self) -> str:
        what = "part of an --all-databases dump" if self.kind == ALL_DATABASES else "dump"
        return f"{self.file.name} ({what})"


_MARKER = re.compile(r"^-- Current Database: `((?:[^`]|``)+)`", re.MULTILINE)
_CREATE_DB = re.compile(
    r"^CREATE DATABASE (?:/\*!\d+ IF NOT EXISTS\s*\*/ |IF NOT EXISTS )?`((?:[^`]|``)+)`", re.MULTILINE | re.IGNORECASE
)
_USE = re.compile(r"^USE `((?:[^`]|``)+)`;", re.MULTILINE | re.IGNORECASE)
_TAIL = re.compile(r"^/\*!40103 SET TIME_ZONE=@OLD_TIME_ZONE \*/;", re.MULTILINE)


def _unquote(name: str) -> str:
    return name.replace("``", "`")


def dump_database_names(text: str) -> list[str]:
    """Databases a dump's text switches to, in order: its '-- Current Database' markers, else CREATE DATABASE/USE."""
    for pattern in (_MARKER, _CREATE_DB, _USE):
        names = [_unquote(m.group(1)) for m in pattern.finditer(text)]
        if names:
            return list(dict.fromkeys(names))
    return []


def split_all_databases(text: str) -> dict[str, str]:
    """An --all-databases (or multi-database) dump cut into one loadable dump per database.

    Each part is the dump's preamble (the SET statements before the first database), that database's
    section (from its marker to the next one) and the closing SET statements with mysqldump's trailer.
    """
    pattern = next((p for p in (_MARKER, _CREATE_DB, _USE) if p.search(text)), None)
    if pattern is None:
        return {}
    starts = [(m.start(), _unquote(m.group(1))) for m in pattern.finditer(text)]
    # With CREATE DATABASE/USE as markers, a database's USE follows its CREATE: keep only the first of a run.
    merged: list[tuple[int, str]] = []
    for pos, name in starts:
        if not merged or merged[-1][1] != name:
            merged.append((pos, name))
    tail_at = len(text)
    tails = [m.start() for m in _TAIL.finditer(text) if m.start() > merged[-1][0]]
    if tails:
        tail_at = tails[-1]
    preamble, tail = text[: merged[0][0]], text[tail_at:]
    out: dict[str, str] = {}
    for i, (pos, name) in enumerate(merged):
        end = merged[i + 1][0] if i + 1 < len(merged) else tail_at
        out[name] = out.get(name, "") + text[pos:end]
    return {name: preamble + body + tail for name, body in out.items()}


def _scan_dump_names(conn: Connection, path: str) -> list[str]:
    """Database names in a whole dump, read line by line (a multi-GB dump is never held in memory here)."""
    names: list[str] = []
    starts = (b"-- Current Database:", b"CREATE DATABASE", b"USE ", b"create database", b"use ")
    try:
        with open_dump(conn, path) as fh:
            for line in fh:
                if line.startswith(starts):
                    names += dump_database_names(line.decode("utf-8", "replace"))
    except (OSError, EOFError, zlib.error, ValueError):
        return []
    return list(dict.fromkeys(names))


def classify_dump(conn: Connection, dump: DumpFile) -> DumpRef | None:
    """What a dump file holds: one database, or several (an --all-databases dump); None when unreadable."""
    try:
        head = read_dump(conn, dump.path, 65536).decode("utf-8", "replace")
    except InputError:
        return None
    header_empty = re.search(r"^--\s*Host:.*Database:\s*$", head, re.MULTILINE) is not None
    names = dump_database_names(head)
    if header_empty or len(names) > 1:
        return DumpRef(dump, ALL_DATABASES, _scan_dump_names(conn, dump.path) or names)
    name = dump_database(head)
    if name is None:
        name = dump.name  # a dump without USE/CREATE DATABASE: its file name is the best guess
        for suffix in (".gz", ".bz2", ".sql"):
            name = name.removesuffix(suffix)
    return DumpRef(dump, PER_DATABASE, [name])


def find_dumps(conn: Connection, folders: Iterable[str]) -> list[DumpRef]:
    """Every dump in these folders (newest first in each), classified; folders that don't exist are skipped."""
    seen: set[str] = set()
    out: list[DumpRef] = []
    for folder in folders:
        for dump in dumps_in(conn, folder):
            if dump.path in seen:
                continue
            seen.add(dump.path)
            ref = classify_dump(conn, dump)
            if ref is not None:
                out.append(ref)
    return out


# One big dump split once, however many of its databases are restored (keyed by the file's state).
_SPLIT: dict[DumpFile, dict[str, str]] = {}


def read_dump_for(conn: Connection, ref: DumpRef, database: str) -> bytes:
    """The SQL that restores `database` from this dump: the file itself, or its part of an all-databases dump."""
    if ref.kind != ALL_DATABASES:
        return read_dump(conn, ref.path)
    if ref.file not in _SPLIT:
        _SPLIT.clear()
        _SPLIT[ref.file] = split_all_databases(read_dump(conn, ref.path).decode("utf-8", "surrogateescape"))
    parts = _SPLIT[ref.file]
    if database not in parts:
        raise InputError(
            f"dump {ref.file.name}",
            f"holds no section for database {database}",
            "use another dump of the database",
            path=ref.path,
        )
    return parts[database].encode("utf-8", "surrogateescape")


_CREATE_TABLE = re.compile(
    r"^CREATE TABLE (?:IF NOT EXISTS )?`((?:[^`]|``)+)` \(.*?^\)[^;\n]*;", re.MULTILINE | re.DOTALL
)


def dump_create_tables(sql: str) -> dict[str, str]:
    """table -> its CREATE TABLE statement (without the trailing ';') as mysqldump wrote it."""
    return {_unquote(m.group(1)): m.group(0).rstrip(";") for m in _CREATE_TABLE.finditer(sql)}


# --- the client -----------------------------------------------------------------------------------


def _option_value(value: str) -> str:
    """A value quoted for a MySQL option file (backslash escapes inside double quotes)."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def defaults_text(login: Login, socket: str) -> str:
    return (
        f"[client]\nuser={_option_value(login.user)}\npassword={_option_value(login.password)}\n"
        f"socket={_option_value(socket)}\n"
    )


@contextmanager
def defaults_file(conn: Connection, login: Login, socket: str, write: bool = True) -> Iterator[str]:
    """A 0600 option file with the login on the connection's machine, removed afterwards; yields its path
    as a command there sees it.

    write=False (a dry run) yields the path pattern a real run would use, without writing a secret anywhere.
    """
    if not write:
        yield "/tmp/.ispcp-recovery.XXXXXXXX"
        return
    if not conn.is_dir("/tmp"):
        conn.mkdir("/tmp", 0o1777)  # a bare tree (the sandbox's) may lack it; every real system has it
    with conn.private_file(defaults_text(login, socket)) as path:
        yield path


_LEGACY_NAMES = {"mariadb": "mysql", "mariadb-upgrade": "mysql_upgrade", "mariadb-dump": "mysqldump"}


def client_exe(conn: Connection, program: str = "mariadb") -> str:
    """The client program's path on the connection's machine; MySQL-era names as fallback (mysql, mysql_upgrade)."""
    return conn.which(program) or conn.which(_LEGACY_NAMES.get(program, program)) or program


def client_argv(conn: Connection, cnf: str, *args: str, program: str = "mariadb") -> list[str]:
    """argv for a client program; --defaults-extra-file must come first, before any other option."""
    return [client_exe(conn, program), f"--defaults-extra-file={cnf}", *args]
