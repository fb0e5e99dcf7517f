"""SQL dumps as a restore source: find them, read them (.sql, .sql.gz, .sql.bz2), load them with the client.

ispcp-backup-ispcp writes a mysqldump of the ispCP database (no CREATE DATABASE, no USE) into
BACKUP_FILE_DIR, compressed with ispcp.conf's ZIP tool; an operator may also hold a mysqldump of the
`mysql` database. Both are loaded with the real `mariadb` client (it understands everything mysqldump
writes), argv only. The password goes into a 0600 --defaults-extra-file in a private temporary
directory, removed afterwards; it never appears on a command line.
"""

from __future__ import annotations

import bz2
import gzip
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.mysql_creds import Login

SUFFIXES = (".sql", ".sql.gz", ".sql.bz2")
# Where a dump of the `mysql` database is looked for when no path is given (besides BACKUP_FILE_DIR).
MYSQL_DUMP_DIRS = ("/var/backups/mysql", "/var/backups", "/root")
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


def is_dump_name(name: str) -> bool:
    return name.endswith(SUFFIXES)


def dumps_in(folder: Path) -> list[Path]:
    """Dump files in a folder, newest first (modification time, then name)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and is_dump_name(p.name)]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def read_dump(path: Path, limit: int | None = None) -> bytes:
    """The SQL text of a dump as bytes, decompressed; limit reads only the first bytes (for headers).

    A damaged or cut-off compressed file is an InputError naming the file.
    """
    opener = gzip.open if path.name.endswith(".gz") else bz2.open if path.name.endswith(".bz2") else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            return fh.read() if limit is None else fh.read(limit)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(
            "SQL dump",
            f"cannot be read or decompressed ({exc}); it is damaged or cut off",
            "take another dump from the backup, or the binary copy (mysql_restore_source = binary)",
            path=str(path),
        ) from None


def dump_database(head: str) -> str | None:
    """The database a dump says it holds: its USE/CREATE DATABASE, else the header's 'Database:'."""
    m = _USE_DB.search(head)
    if m:
        return m.group(1)
    m = _HEADER_DB.search(head)
    return m.group(1) if m else None


def _head_database(path: Path) -> str | None:
    try:
        return dump_database(read_dump(path, 8192).decode("utf-8", "replace"))
    except InputError:
        return None


def database_dumps(folder: Path, database: str) -> list[Path]:
    """Dumps of `database` in a folder, newest first: those that say so, or say nothing and are not mysql's."""
    out = []
    for path in dumps_in(folder):
        if _MYSQL_DUMP_NAME.match(path.name) and database != "mysql":
            continue
        if _head_database(path) in (database, None):
            out.append(path)
    return out


def find_mysql_dump(folders: list[Path]) -> Path | None:
    """A dump of the `mysql` database in these folders: named mysql*.sql[.gz|.bz2] or saying so in its header."""
    for folder in folders:
        for path in dumps_in(folder):
            if _MYSQL_DUMP_NAME.match(path.name) or _head_database(path) == "mysql":
                return path
    return None


@dataclass
class DumpInfo:
    path: Path
    database: str | None  # what the dump says it holds
    tables: list[str]  # CREATE TABLE order
    rows: dict[str, int]  # rows in its INSERT statements
    complete: bool | None  # True: has mysqldump's trailer; None: no comments at all to tell
    warnings: list[str] = field(default_factory=list)


def inspect_dump(path: Path, sql: bytes | None = None) -> DumpInfo:
    """Read a dump once: its database, tables, row counts, and whether it ends like a complete dump."""
    data = read_dump(path) if sql is None else sql
    text = data.decode("utf-8", "replace")
    tables = re.findall(r"^CREATE TABLE (?:IF NOT EXISTS )?`([^`]+)`", text, re.MULTILINE)
    has_head = bool(_DUMP_HEAD.search(text[:4096]))
    complete = (_DUMP_TAIL in text[-4096:]) if has_head else None
    info = DumpInfo(path, dump_database(text[:65536]), tables, count_insert_rows(text), complete)
    if complete is None:
        info.warnings.append(
            f"{path.name} has no mysqldump header or trailer (--skip-comments?): "
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


# --- the client -----------------------------------------------------------------------------------


def _option_value(value: str) -> str:
    """A value quoted for a MySQL option file (backslash escapes inside double quotes)."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def defaults_text(login: Login, socket: Path) -> str:
    return (
        f"[client]\nuser={_option_value(login.user)}\npassword={_option_value(login.password)}\n"
        f"socket={_option_value(str(socket))}\n"
    )


@contextmanager
def defaults_file(login: Login, socket: Path, write: bool = True) -> Iterator[Path]:
    """A 0600 option file with the login in a private 0700 temporary directory, removed afterwards.

    write=False (a dry run) yields the path a real run would use, without writing a secret anywhere.
    """
    if not write:
        yield Path(tempfile.gettempdir()) / "ispcp-recovery-XXXX" / "client.cnf"
        return
    folder = Path(tempfile.mkdtemp(prefix="ispcp-recovery-"))
    path = folder / "client.cnf"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(defaults_text(login, socket))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def client_exe(program: str = "mariadb") -> str:
    """The client program's path; MySQL-era names as fallback (mysql, mysql_upgrade)."""
    legacy = {"mariadb": "mysql", "mariadb-upgrade": "mysql_upgrade", "mariadb-dump": "mysqldump"}
    return shutil.which(program) or shutil.which(legacy.get(program, program)) or program


def client_argv(cnf: Path, *args: str, program: str = "mariadb") -> list[str]:
    """argv for a client program; --defaults-extra-file must come first, before any other option."""
    return [client_exe(program), f"--defaults-extra-file={cnf}", *args]
