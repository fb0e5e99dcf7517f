"""MySQL/MariaDB state: what a database directory holds (without a server) and what a running server says.

Reading a copied datadir needs no server: the file kinds next to a table's `.frm` name its engine
(`.MYD`/`.MYI` MyISAM, `.MAD`/`.MAI` Aria, `.ibd` InnoDB, ...), the `.frm` header byte names it when
there are no data files (an InnoDB table in the shared tablespace), and MyISAM/Aria index headers hold
the row count and file lengths the server wrote when it last closed the table. `myisamchk`/`aria_chk
--read-only` give a CHECK verdict on the copy. Everything here only reads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What each file beside a table's .frm means.
FILE_KINDS: dict[str, str] = {
    ".frm": "table definition",
    ".MYD": "MyISAM data",
    ".MYI": "MyISAM index",
    ".MAD": "Aria data",
    ".MAI": "Aria index",
    ".ibd": "InnoDB tablespace (file per table)",
    ".isl": "InnoDB link to a tablespace elsewhere",
    ".CSV": "CSV data",
    ".CSM": "CSV meta data",
    ".ARZ": "Archive data",
    ".ARM": "Archive meta data",
    ".MRG": "MERGE table list",
    ".TRG": "triggers",
    ".TRN": "trigger name",
    ".par": "partition list",
    ".opt": "database options",
}

# Engines by data-file suffix; the first suffix present decides.
_ENGINE_BY_SUFFIX = (
    (".ibd", "InnoDB"),
    (".isl", "InnoDB"),
    (".MYD", "MyISAM"),
    (".MYI", "MyISAM"),
    (".MAD", "Aria"),
    (".MAI", "Aria"),
    (".CSV", "CSV"),
    (".ARZ", "ARCHIVE"),
    (".MRG", "MRG_MyISAM"),
)
# The parts each engine needs beside the .frm.
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "MyISAM": (".MYD", ".MYI"),
    "Aria": (".MAD", ".MAI"),
    "CSV": (".CSV",),
    "ARCHIVE": (".ARZ",),
}
# legacy_db_type, byte 3 of a binary .frm (MariaDB's handler.h; the numbers are fixed forever).
FRM_ENGINES: dict[int, str] = {
    6: "MEMORY",
    7: "ISAM",
    8: "MRG_ISAM",
    9: "MyISAM",
    10: "MRG_MyISAM",
    11: "BerkeleyDB",
    12: "InnoDB",
    14: "NDBCLUSTER",
    15: "EXAMPLE",
    16: "ARCHIVE",
    17: "CSV",
    18: "FEDERATED",
    19: "BLACKHOLE",
    20: "partitioned",
    28: "PERFORMANCE_SCHEMA",
    41: "S3",
    42: "Aria",
    43: "TokuDB",
    44: "SEQUENCE",
}
# InnoDB tables a server keeps in its `mysql` database for itself (statistics, replication state,
# system versioning). Their .ibd files only make sense with the server's own system tablespace, so a
# restore keeps the target's copies and leaves the backup's behind; nothing of the old server's
# configuration lives in them. MariaDB 10.x and MySQL 5.6/5.7.
SYSTEM_INNODB_TABLES: frozenset[str] = frozenset(
    {
        "innodb_table_stats",
        "innodb_index_stats",
        "gtid_slave_pos",
        "transaction_registry",
        "slave_master_info",
        "slave_relay_log_info",
        "slave_worker_info",
        "gtid_executed",
        "engine_cost",
        "server_cost",
    }
)
# Files at the top of a datadir that make up InnoDB's shared tablespace and its logs.
SHARED_TABLESPACE = ("ibdata1",)

MYISAM_MAGIC = b"\xfe\xfe\x07\x01"
ARIA_MAGIC = b"\xfe\xfe\x09\x03"
# Offsets in the index header (24-byte file header, then the state; big-endian integers).
_MYISAM_RECORDS, _MYISAM_KEYFILE_LEN, _MYISAM_DATAFILE_LEN = 28, 60, 68
# Aria's state starts with open_count(2), changed(2) and three 7-byte LSNs before the record count.
_ARIA_RECORDS, _ARIA_KEYFILE_LEN, _ARIA_DATAFILE_LEN = 49, 89, 97


@dataclass
class TableFiles:
    """One table as files: which parts exist, which engine they mean, what is wrong with them."""

    name: str
    suffixes: set[str] = field(default_factory=set)
    frm_engine: str | None = None  # from the .frm header ("VIEW" for a view definition)
    problems: list[str] = field(default_factory=list)  # missing or unreadable parts: the table cannot open
    damage: list[str] = field(default_factory=list)  # parts shorter than their header says: truncated

    @property
    def engine(self) -> str:
        if self.frm_engine == "VIEW":
            return "VIEW"
        for suffix, engine in _ENGINE_BY_SUFFIX:
            if suffix in self.suffixes:
                return engine
        return self.frm_engine or "unknown"

    @property
    def is_view(self) -> bool:
        return self.engine == "VIEW"


@dataclass
class DatabaseFiles:
    """A database directory read without a server."""

    path: Path
    tables: dict[str, TableFiles]
    stray: list[str] = field(default_factory=list)  # leftover temp files (#sql-*) and unknown files

    def innodb(self) -> list[str]:
        return sorted(n for n, t in self.tables.items() if t.engine == "InnoDB")

    def problems(self) -> list[str]:
        return [f"{n}: {p}" for n, t in sorted(self.tables.items()) for p in t.problems]

    def damaged(self) -> list[str]:
        return [f"{n}: {d}" for n, t in sorted(self.tables.items()) for d in t.damage]

    def engines(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tables.values():
            out[t.engine] = out.get(t.engine, 0) + 1
        return dict(sorted(out.items()))


def _split(name: str) -> tuple[str, str] | None:
    """'domain.MYI' -> ('domain', '.MYI'); partition files count for their table."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return None
    return stem.split("#P#")[0].split("#p#")[0], "." + suffix


def frm_engine(path: Path) -> str | None:
    """The engine a .frm declares; 'VIEW' for a view, None when the file is no table definition."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if head.startswith(b"TYPE=VIEW"):
        return "VIEW"
    if len(head) < 4 or head[:2] != b"\xfe\x01":
        return None
    code = head[3]
    if code >= 45:
        return "plugin engine"  # dynamic engines keep their name further down the file
    return FRM_ENGINES.get(code, f"engine type {code}")


def scan_database_dir(path: Path) -> DatabaseFiles | None:
    """Tables of a database directory by their files, None when the directory is absent."""
    if not path.is_dir():
        return None
    tables: dict[str, TableFiles] = {}
    stray: list[str] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name == "db.opt":
            continue
        parts = _split(entry.name)
        if entry.name.startswith("#sql") or parts is None or parts[1] not in FILE_KINDS:
            stray.append(entry.name)
            continue
        if not entry.is_file(follow_symlinks=False):
            stray.append(entry.name + " (not a regular file)")
            continue
        name, suffix = parts
        if suffix == ".TRN":
            continue  # named after the trigger, not the table
        tables.setdefault(name, TableFiles(name)).suffixes.add(suffix)
    for table in tables.values():
        if ".frm" in table.suffixes:
            table.frm_engine = frm_engine(path / f"{table.name}.frm")
            if table.frm_engine is None:
                table.problems.append(".frm is not a table definition (damaged or truncated)")
        _check_parts(path, table)
    return DatabaseFiles(path, tables, stray)


def _check_parts(path: Path, table: TableFiles) -> None:
    if ".frm" not in table.suffixes:
        present = ", ".join(sorted(table.suffixes))
        table.problems.append(f"has {present} but no .frm: the server cannot open it without its definition")
        return
    needed = REQUIRED_PARTS.get(table.engine, ())
    if ".par" in table.suffixes:
        needed = ()  # partition files carry #P# names; their count is the partition list's business
    missing = [s for s in needed if s not in table.suffixes]
    if missing:
        table.problems.append(f"{table.engine} table lacks {' and '.join(missing)}")
        return
    if table.engine in ("MyISAM", "Aria"):
        table.damage += index_length_problems(path, table.name, table.engine)


def _u64(data: bytes, offset: int) -> int | None:
    if len(data) < offset + 8:
        return None
    return int.from_bytes(data[offset : offset + 8], "big")


def _index_header(path: Path, name: str, engine: str) -> tuple[bytes, tuple[int, int, int]] | None:
    suffix, magic, offsets = (
        (".MYI", MYISAM_MAGIC, (_MYISAM_RECORDS, _MYISAM_KEYFILE_LEN, _MYISAM_DATAFILE_LEN))
        if engine == "MyISAM"
        else (".MAI", ARIA_MAGIC, (_ARIA_RECORDS, _ARIA_KEYFILE_LEN, _ARIA_DATAFILE_LEN))
    )
    try:
        with open(path / f"{name}{suffix}", "rb") as fh:
            head = fh.read(128)
    except OSError:
        return None
    if not head.startswith(magic):
        return None
    return head, offsets


def header_row_count(path: Path, name: str, engine: str) -> int | None:
    """Rows the server recorded in a MyISAM/Aria index header when it closed the table; None otherwise."""
    if engine not in ("MyISAM", "Aria"):
        return None
    found = _index_header(path, name, engine)
    if found is None:
        return None
    head, (records, _, _) = found
    return _u64(head, records)


def index_length_problems(path: Path, name: str, engine: str) -> list[str]:
    """Index/data files shorter than the lengths their header records: truncated copies."""
    index_suffix, data_suffix = (".MYI", ".MYD") if engine == "MyISAM" else (".MAI", ".MAD")
    found = _index_header(path, name, engine)
    if found is None:
        return [f"{index_suffix} header is not a {engine} index header (damaged or truncated)"]
    head, (_, key_off, data_off) = found
    out = []
    for suffix, offset in ((index_suffix, key_off), (data_suffix, data_off)):
        want = _u64(head, offset)
        have = (path / f"{name}{suffix}").stat().st_size
        if want is not None and have < want:
            out.append(f"{suffix} is {have} bytes, its header says {want}: truncated")
    return out


def shared_tablespace(datadir: Path) -> list[str]:
    """InnoDB shared-tablespace and redo files present at the top of a datadir."""
    if not datadir.is_dir():
        return []
    names = [n for n in SHARED_TABLESPACE if (datadir / n).is_file()]
    names += sorted(p.name for p in datadir.glob("ib_logfile*") if p.is_file())
    return names


# --- offline CHECK verdicts -----------------------------------------------------------------------


@dataclass
class ChkVerdict:
    table: str
    engine: str
    verdict: str  # OK | warning | corrupt
    detail: str = ""


_CHK_TOOLS = (("MyISAM", "myisamchk", ".MYI"), ("Aria", "aria_chk", ".MAI"))


def offline_check(path: Path, files: DatabaseFiles, timeout: float = 600) -> list[ChkVerdict] | None:
    """myisamchk/aria_chk --check --read-only on each MyISAM/Aria table (nothing is written).

    None when neither tool is installed.
    """
    found = offline_check_all([(path, files)], timeout)
    return None if found is None else found[0]


def offline_check_all(folders: list[tuple[Path, DatabaseFiles]], timeout: float = 600) -> list[list[ChkVerdict]] | None:
    """offline_check for several folders; one process per folder and engine, all running at once."""
    return OfflineCheck(folders, timeout).wait()


class OfflineCheck:
    """myisamchk/aria_chk --check --read-only running in the background; wait() collects the verdicts.

    Starting it early lets the caller do other work (staging a copy) while the tools read the backup.
    """

    def __init__(self, folders: list[tuple[Path, DatabaseFiles]], timeout: float = 600) -> None:
        self.folders = folders
        self.timeout = timeout
        self.available = any(shutil.which(tool) for _, tool, _ in _CHK_TOOLS)
        self.jobs: list[tuple[int, str, list[str], Path, str, subprocess.Popen[str]]] = []
        self.scratch = tempfile.mkdtemp(prefix="ispcp-chk-")  # any file a tool drops lands here, not in the backup
        if not self.available:
            return
        try:
            for i, (path, files) in enumerate(folders):
                for engine, tool, suffix in _CHK_TOOLS:
                    names = sorted(n for n, t in files.tables.items() if t.engine == engine and not t.problems)
                    exe = shutil.which(tool)
                    if not names or exe is None:
                        continue
                    argv = [exe, "--check", "--read-only", "--silent", *(str(path / f"{n}{suffix}") for n in names)]
                    proc = subprocess.Popen(
                        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.scratch
                    )
                    self.jobs.append((i, engine, names, path, suffix, proc))
        except BaseException:
            self.cancel()
            raise

    def wait(self) -> list[list[ChkVerdict]] | None:
        try:
            if not self.available:
                return None
            out: list[list[ChkVerdict]] = [[] for _ in self.folders]
            for i, engine, names, path, suffix, proc in self.jobs:
                stdout, stderr = proc.communicate(timeout=self.timeout)
                out[i] += parse_chk_output(stdout + "\n" + stderr, names, engine, path, suffix, proc.returncode)
            return out
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop what still runs (our own children, by their Popen handles) and drop the scratch dir."""
        for *_, proc in self.jobs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def has_blank_page(path: Path, name: str, block_size: int = 8192) -> bool:
    """An Aria data file with a page that was never written (all zero bytes), such as mysql.proc of a 10.11.

    MariaDB cannot re-stamp ("zerofill") such a table when it is moved to another server: it reads the
    blank page, finds its checksum wrong and calls the table corrupt.
    """
    blank = bytes(block_size)
    try:
        with open(path / f"{name}.MAD", "rb") as fh:
            fh.seek(block_size)  # page 0 is the allocation bitmap
            while page := fh.read(block_size):
                if page == blank:
                    return True
    except OSError:
        return False
    return False


_CHK_FILE = re.compile(r"^(?:myisamchk|aria_chk): (?:MyISAM|Aria) file (?P<file>\S+)")
_CHK_CORRUPT = re.compile(r"(?:MyISAM-table|Aria table) '(?P<file>[^']+)' is corrupted")
_CHK_MESSAGE = re.compile(r"^(?:myisamchk|aria_chk): (?P<text>(?:error|warning).*|Got error.*|Unknown error.*)$")
_QUOTED = re.compile(r"'([^']+\.(?:MYI|MAI))'")


def parse_chk_output(
    text: str, names: Iterable[str], engine: str, path: Path, suffix: str, rc: int = 0
) -> list[ChkVerdict]:
    """Per-table verdicts from --silent myisamchk/aria_chk output (only problems are printed).

    A failing exit code that no table can be blamed for becomes a verdict for "(all tables)": better a
    clear refusal than a silent pass.
    """
    by_file = {str(path / f"{n}{suffix}"): n for n in names}
    messages: dict[str, list[str]] = {n: [] for n in by_file.values()}
    unattributed: list[str] = []
    corrupt: set[str] = set()
    current: str | None = None
    for line in text.splitlines():
        m = _CHK_FILE.match(line)
        if m:
            current = _table_of(m["file"], by_file)
            continue
        m = _CHK_CORRUPT.search(line)
        if m:
            table = _table_of(m["file"], by_file)
            if table:
                corrupt.add(table)
            continue
        m = _CHK_MESSAGE.match(line)
        if not m:
            continue
        quoted = _QUOTED.search(line)
        table = _table_of(quoted.group(1), by_file) if quoted else current
        if table is None:
            unattributed.append(m["text"])
        else:
            messages[table].append(m["text"])
    out = []
    for name in by_file.values():
        msgs = messages[name]
        if name in corrupt or any(not m.startswith("warning") for m in msgs):
            verdict = "corrupt"
        elif msgs:
            verdict = "warning"
        else:
            verdict = "OK"
        out.append(ChkVerdict(name, engine, verdict, "; ".join(msgs[:4])))
    if rc != 0 and not any(v.verdict == "corrupt" for v in out):
        detail = "; ".join(unattributed[:4]) or f"exit code {rc} without a message"
        out.append(ChkVerdict("(all tables)", engine, "corrupt", detail))
    return out


def _table_of(file: str, by_file: dict[str, str]) -> str | None:
    if file in by_file:
        return by_file[file]
    base = os.path.basename(file)
    for full, name in by_file.items():
        if os.path.basename(full) == base:
            return name
    return None


# --- a running server -----------------------------------------------------------------------------


@dataclass
class LiveTable:
    name: str
    engine: str | None
    kind: str  # BASE TABLE | VIEW | SYSTEM VIEW | SEQUENCE


def live_tables(conn: Any, database: str) -> list[LiveTable]:
    """Tables and views of a database on a running server (empty list: no such database)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME, ENGINE, TABLE_TYPE FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (database,),
        )
        return [LiveTable(r[0], r[1], r[2]) for r in cur.fetchall()]


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def check_tables(conn: Any, database: str, tables: Iterable[str]) -> dict[str, tuple[str, str]]:
    """CHECK TABLE each table: name -> (verdict, message). Verdict OK, or the server's worst message."""
    names = list(tables)
    out: dict[str, tuple[str, str]] = {}
    if not names:
        return out
    with conn.cursor() as cur:
        cur.execute("CHECK TABLE " + ", ".join(f"{quote_ident(database)}.{quote_ident(n)}" for n in names))
        for full, _op, kind, text in cur.fetchall():
            name = str(full).split(".", 1)[1] if "." in str(full) else str(full)
            previous = out.get(name)
            if kind.lower() == "status" and text in ("OK", "Table is already up to date"):
                out.setdefault(name, ("OK", text))
            elif previous is None or previous[0] == "OK":
                out[name] = (kind.lower(), text)
            else:
                out[name] = (previous[0], previous[1] + "; " + text)
    return out


def count_rows(conn: Any, database: str, tables: Iterable[str]) -> dict[str, int | None]:
    """SELECT COUNT(*) of each table; None where the server cannot read it.

    One UNION ALL query answers all tables in a single round trip; if any table fails, each is asked alone.
    """
    names = list(tables)
    if not names:
        return {}
    db = quote_ident(database)
    union = " UNION ALL ".join(f"SELECT %s, COUNT(*) FROM {db}.{quote_ident(n)}" for n in names)
    with conn.cursor() as cur:
        try:
            cur.execute(union, names)
            return {str(name): int(count) for name, count in cur.fetchall()}
        except Exception:  # pymysql raises per statement: find out which table it is
            pass
        out: dict[str, int | None] = {}
        for name in names:
            try:
                cur.execute(f"SELECT COUNT(*) FROM {db}.{quote_ident(name)}")
                out[name] = int(cur.fetchone()[0])
            except Exception:
                out[name] = None
        return out


# --- owners ---------------------------------------------------------------------------------------


def account_id(path: Path, name: str) -> int | None:
    """The id (3rd field) of `name` in a passwd- or group-format file, None if absent."""
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def mysql_owner(target_root: Path, user: str = "mysql", group: str = "mysql") -> tuple[int, int] | None:
    """(uid, gid) of the mysql user and group in the target's own passwd and group files."""
    uid = account_id(Path(target_root) / "etc/passwd", user)
    gid = account_id(Path(target_root) / "etc/group", group)
    if uid is None or gid is None:
        return None
    return uid, gid


# --- fingerprints ---------------------------------------------------------------------------------


def dir_signature(path: Path) -> list[list[Any]]:
    """[name, size, mtime_ns] of every file below path: cheap, and enough to tell a copy's source changed."""
    out: list[list[Any]] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            out.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out
