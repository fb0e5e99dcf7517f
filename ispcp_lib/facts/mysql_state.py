"""MySQL/MariaDB state: what a database directory holds (without a server) and what a running server says.

Reading a copied datadir needs no server: the file kinds next to a table's `.frm` name its engine
(`.MYD`/`.MYI` MyISAM, `.MAD`/`.MAI` Aria, `.ibd` InnoDB, ...), the `.frm` header byte names it when
there are no data files (an InnoDB table in the shared tablespace), and MyISAM/Aria index headers hold
the row count and file lengths the server wrote when it last closed the table. `myisamchk`/`aria_chk
--read-only` give a CHECK verdict on the copy. Everything here only reads.

Folders are read through a connection (the target's, or the backup's view) on the machine that holds
them: one `find -printf` plus one `perl` pass over the index and definition headers per call, however
many folders and files; the tools run there too. Paths are that side's own absolute paths.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ispcp_lib.core.connection import Connection, kill_group
from ispcp_lib.mysql import dialect

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


# --- reading folders through a connection --------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One directory entry as find(1) saw it (no symlink followed)."""

    name: str
    kind: str  # find's %y: f, d, l, p, s, b, c
    size: int
    mtime: str  # find's %T@, kept as text: exact, and enough to tell a changed file


def _fields(data: bytes) -> Iterable[str]:
    for raw in data.split(b"\0"):
        yield raw.decode("utf-8", "surrogateescape")


_LIST = r"""
for d; do
  printf 'D\0%s\0' "$d"
  [ -d "$d" ] || { printf 'X\0'; continue; }
  find -H "$d" -mindepth 1 -maxdepth 1 -printf 'E\0%f\0%y\0%s\0%T@\0'
done
"""


def list_folders(conn: Connection, paths: Iterable[str]) -> dict[str, dict[str, FileEntry] | None]:
    """Entries of each folder (None: not a directory), one round trip for all of them."""
    wanted = list(paths)
    if not wanted:
        return {}
    done = conn.run(["sh", "-c", _LIST, "sh", *(conn.path(p) for p in wanted)], timeout=600, check=True)
    out: dict[str, dict[str, FileEntry] | None] = {p: None for p in wanted}
    by_argv = {conn.path(p): p for p in wanted}
    folder = ""
    tokens = iter(_fields(done.stdout))
    for tag in tokens:
        if tag == "D":
            folder = by_argv[next(tokens)]
            out[folder] = {}
        elif tag == "X":
            out[folder] = None
        elif tag == "E":
            name, kind, size, mtime = next(tokens), next(tokens), next(tokens), next(tokens)
            out[folder][name] = FileEntry(name, kind, int(size), mtime)  # type: ignore[index]
    return out


def list_folder(conn: Connection, path: str) -> dict[str, FileEntry] | None:
    return list_folders(conn, [path])[path]


def tree_signature(conn: Connection, path: str) -> list[list[Any]]:
    """[relative path, size, mtime] of every file below path: cheap, and enough to tell a copy's source changed."""
    done = conn.run(["find", "-H", conn.path(path), "-type", "f", "-printf", "%P\\0%s\\0%T@\\0"], timeout=600)
    if done.rc != 0:
        return []
    parts = list(_fields(done.stdout))
    rows = [[parts[i], int(parts[i + 1]), parts[i + 2]] for i in range(0, len(parts) - 2, 3)]
    return sorted(rows)


# --- tables as files ------------------------------------------------------------------------------


@dataclass
class TableFiles:
    """One table as files: which parts exist, which engine they mean, what is wrong with them."""

    name: str
    suffixes: set[str] = field(default_factory=set)
    frm_engine: str | None = None  # from the .frm header ("VIEW" for a view definition)
    problems: list[str] = field(default_factory=list)  # missing or unreadable parts: the table cannot open
    damage: list[str] = field(default_factory=list)  # parts shorter than their header says: truncated
    old_rows: int | None = None  # the row count in a MyISAM/Aria index header

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

    path: str  # the folder, as its own side sees it
    tables: dict[str, TableFiles]
    stray: list[str] = field(default_factory=list)  # leftover temp files (#sql-*) and unknown files
    size: int = 0  # bytes of its regular files

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

    def of_engine(self, engine: str) -> list[str]:
        """Tables of one engine whose parts are all there (the ones a tool can check)."""
        return sorted(n for n, t in self.tables.items() if t.engine == engine and not t.problems)


def _split(name: str) -> tuple[str, str] | None:
    """'domain.MYI' -> ('domain', '.MYI'); partition files count for their table."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return None
    return stem.split("#P#")[0].split("#p#")[0], "." + suffix


def frm_engine(head: bytes | None) -> str | None:
    """The engine a .frm header declares; 'VIEW' for a view, None when the file is no table definition."""
    if head is None:
        return None
    if head.startswith(b"TYPE=VIEW"):
        return "VIEW"
    if len(head) < 4 or head[:2] != b"\xfe\x01":
        return None
    code = head[3]
    if code >= 45:
        return "plugin engine"  # dynamic engines keep their name further down the file
    return FRM_ENGINES.get(code, f"engine type {code}")


# The first 128 bytes of each definition and index file, hex-encoded: enough for every header we read.
_HEADERS = r"""
binmode STDOUT;
for my $f (@ARGV) {
  next if -l $f || ! -f _;
  open(my $h, "<:raw", $f) or next;
  my $head = "";
  read($h, $head, 128);
  close $h;
  (my $n = $f) =~ s{.*/}{}s;
  print "$n\0", unpack("H*", $head), "\0";
}
"""
_SCAN = r"""
p=$1; shift
for d; do
  printf 'D\0%s\0' "$d"
  [ -d "$d" ] || { printf 'X\0'; continue; }
  find -H "$d" -mindepth 1 -maxdepth 1 -printf 'E\0%f\0%y\0%s\0%T@\0'
  printf 'H\0'
  find -H "$d" -mindepth 1 -maxdepth 1 -type f \( -name '*.frm' -o -name '*.MYI' -o -name '*.MAI' \) -print0 \
    | xargs -0 -r perl -e "$p" --
  printf 'Z\0'
done
"""


def scan_database_dirs(conn: Connection, paths: Iterable[str]) -> dict[str, DatabaseFiles | None]:
    """Tables of each database directory by their files (None: absent), one round trip for all folders."""
    wanted = list(paths)
    if not wanted:
        return {}
    argv = ["sh", "-c", _SCAN, "sh", _HEADERS, *(conn.path(p) for p in wanted)]
    done = conn.run(argv, timeout=1800, check=True)
    by_argv = {conn.path(p): p for p in wanted}
    listed: dict[str, tuple[dict[str, FileEntry], dict[str, bytes]] | None] = {p: None for p in wanted}
    entries: dict[str, FileEntry] = {}
    heads: dict[str, bytes] = {}
    folder = ""
    tokens = iter(_fields(done.stdout))
    for tag in tokens:
        if tag == "D":
            entries, heads = {}, {}
            folder = by_argv[next(tokens)]
            listed[folder] = (entries, heads)
        elif tag == "X":
            listed[folder] = None
        elif tag == "E":
            name, kind, size, mtime = next(tokens), next(tokens), next(tokens), next(tokens)
            entries[name] = FileEntry(name, kind, int(size), mtime)
        elif tag == "H":
            for name in tokens:
                if name == "Z":  # the end of this folder's headers
                    break
                heads[name] = bytes.fromhex(next(tokens))
    return {p: None if found is None else database_files(p, *found) for p, found in listed.items()}


def scan_database_dir(conn: Connection, path: str) -> DatabaseFiles | None:
    return scan_database_dirs(conn, [path])[path]


def database_files(path: str, entries: dict[str, FileEntry], heads: dict[str, bytes]) -> DatabaseFiles:
    """The tables a folder's entries and headers make up, with what is missing or damaged. Pure."""
    tables: dict[str, TableFiles] = {}
    stray: list[str] = []
    for entry in sorted(entries.values(), key=lambda e: e.name):
        if entry.name == "db.opt":
            continue
        parts = _split(entry.name)
        if entry.name.startswith("#sql") or parts is None or parts[1] not in FILE_KINDS:
            stray.append(entry.name)
            continue
        if entry.kind != "f":
            stray.append(entry.name + " (not a regular file)")
            continue
        name, suffix = parts
        if suffix == ".TRN":
            continue  # named after the trigger, not the table
        tables.setdefault(name, TableFiles(name)).suffixes.add(suffix)
    for table in tables.values():
        if ".frm" in table.suffixes:
            table.frm_engine = frm_engine(heads.get(f"{table.name}.frm"))
            if table.frm_engine is None:
                table.problems.append(".frm is not a table definition (damaged or truncated)")
        _check_parts(table, entries, heads)
    size = sum(e.size for e in entries.values() if e.kind == "f")
    return DatabaseFiles(path, tables, stray, size)


def _check_parts(table: TableFiles, entries: dict[str, FileEntry], heads: dict[str, bytes]) -> None:
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
    if table.engine in _INDEX_LAYOUT:
        index_suffix, data_suffix, magic, (records, key_off, data_off) = _INDEX_LAYOUT[table.engine]
        head = heads.get(f"{table.name}{index_suffix}", b"")
        if not head.startswith(magic):
            table.damage.append(f"{index_suffix} header is not a {table.engine} index header (damaged or truncated)")
            return
        table.old_rows = _u64(head, records)
        for suffix, offset in ((index_suffix, key_off), (data_suffix, data_off)):
            want, have = _u64(head, offset), entries[f"{table.name}{suffix}"].size
            if want is not None and have < want:
                table.damage.append(f"{suffix} is {have} bytes, its header says {want}: truncated")


_INDEX_LAYOUT = {
    "MyISAM": (".MYI", ".MYD", MYISAM_MAGIC, (_MYISAM_RECORDS, _MYISAM_KEYFILE_LEN, _MYISAM_DATAFILE_LEN)),
    "Aria": (".MAI", ".MAD", ARIA_MAGIC, (_ARIA_RECORDS, _ARIA_KEYFILE_LEN, _ARIA_DATAFILE_LEN)),
}


def _u64(data: bytes, offset: int) -> int | None:
    if len(data) < offset + 8:
        return None
    return int.from_bytes(data[offset : offset + 8], "big")


def shared_tablespace(conn: Connection, datadir: str) -> list[str]:
    """InnoDB shared-tablespace and redo files present at the top of a datadir."""
    entries = list_folder(conn, datadir) or {}
    files = {n for n, e in entries.items() if e.kind == "f"}
    return [n for n in SHARED_TABLESPACE if n in files] + sorted(n for n in files if n.startswith("ib_logfile"))


def datadir_version(conn: Connection, datadir: str) -> str | None:
    """The version that last ran on a datadir, as recorded by mysql_upgrade / mariadb-upgrade."""
    for name in ("mariadb_upgrade_info", "mysql_upgrade_info"):
        data = conn.read_bytes(f"{datadir.rstrip('/')}/{name}")
        text = (data or b"").split(b"\0", 1)[0].decode("ascii", "replace").strip()
        if text:
            return text
    return None


# --- offline CHECK verdicts -----------------------------------------------------------------------


@dataclass
class ChkVerdict:
    table: str
    engine: str
    verdict: str  # OK | warning | corrupt
    detail: str = ""


_CHK_TOOLS = (("MyISAM", "myisamchk", ".MYI"), ("Aria", "aria_chk", ".MAI"))
# The tools may drop files into their working directory: a scratch folder on their machine, removed after.
_IN_SCRATCH = 'd=$(mktemp -d) || exit 1; cd "$d" || exit 1; "$@"; rc=$?; cd /; rm -rf "$d"; exit $rc'


def chk_tools(conn: Connection) -> dict[str, str]:
    """engine -> the path of its offline checker on the connection's machine (absent tools left out)."""
    found = {engine: conn.which(tool) for engine, tool, _ in _CHK_TOOLS}
    return {engine: exe for engine, exe in found.items() if exe}


def offline_check(conn: Connection, files: DatabaseFiles, timeout: float = 600) -> list[ChkVerdict] | None:
    """myisamchk/aria_chk --check --read-only on each MyISAM/Aria table (nothing is written).

    None when neither tool is installed where the files are.
    """
    found = OfflineCheck(conn, [files], timeout).wait()
    return None if found is None else found[0]


class OfflineCheck:
    """myisamchk/aria_chk --check --read-only running in the background; wait() collects the verdicts.

    Starting it early lets the caller do other work (staging a copy) while the tools read the files.
    """

    def __init__(self, conn: Connection, folders: list[DatabaseFiles], timeout: float = 600) -> None:
        self.folders = folders
        self.timeout = timeout
        tools = chk_tools(conn)
        self.available = bool(tools)
        self.jobs: list[tuple[int, str, list[str], str, str, subprocess.Popen[str]]] = []
        try:
            for i, files in enumerate(folders):
                for engine, _tool, suffix in _CHK_TOOLS:
                    names = files.of_engine(engine)
                    if not names or engine not in tools:
                        continue
                    where = conn.path(files.path)
                    paths = [posixpath.join(where, f"{n}{suffix}") for n in names]
                    argv = ["sh", "-c", _IN_SCRATCH, "sh", tools[engine], "--check", "--read-only", "--silent", *paths]
                    proc = conn.popen(
                        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    )
                    self.jobs.append((i, engine, names, where, suffix, proc))  # type: ignore[arg-type]
        except BaseException:
            self.cancel()
            raise

    def wait(self) -> list[list[ChkVerdict]] | None:
        try:
            if not self.available:
                return None
            out: list[list[ChkVerdict]] = [[] for _ in self.folders]
            for i, engine, names, where, suffix, proc in self.jobs:
                stdout, stderr = proc.communicate(timeout=self.timeout)
                out[i] += parse_chk_output(stdout + "\n" + stderr, names, engine, where, suffix, proc.returncode)
            return out
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop what still runs (our own children, by their Popen handles)."""
        for *_, proc in self.jobs:
            if proc.poll() is None:
                kill_group(proc)  # type: ignore[arg-type]
                proc.wait()


# Pages of a data file after the bitmap page, read until the first one that was never written.
_BLANK_PAGE = r"""
binmode STDOUT;
my $size = shift;
for my $f (@ARGV) {
  open(my $h, "<:raw", $f) or next;
  seek($h, $size, 0);
  my $page;
  while (read($h, $page, $size) == $size) {
    if ($page !~ /[^\0]/) { print "$f\0"; last }
  }
  close $h;
}
"""


def blank_page_tables(conn: Connection, folder: str, names: Iterable[str], block_size: int = 8192) -> list[str]:
    """Aria tables whose data file has a page that was never written (all zero bytes), such as mysql.proc of
    a 10.11; one perl pass on the machine that holds the folder.

    MariaDB cannot re-stamp ("zerofill") such a table when it is moved to another server: it reads the
    blank page, finds its checksum wrong and calls the table corrupt.
    """
    where = conn.path(folder)
    by_file = {posixpath.join(where, f"{n}.MAD"): n for n in names}
    if not by_file:
        return []
    done = conn.run(["perl", "-e", _BLANK_PAGE, str(block_size), *by_file], timeout=3600, check=True)
    return sorted(by_file[f] for f in _fields(done.stdout) if f in by_file)


_CHK_FILE = re.compile(r"^(?:myisamchk|aria_chk): (?:MyISAM|Aria) file (?P<file>\S+)")
_CHK_CORRUPT = re.compile(r"(?:MyISAM-table|Aria table) '(?P<file>[^']+)' is corrupted")
_CHK_MESSAGE = re.compile(r"^(?:myisamchk|aria_chk): (?P<text>(?:error|warning).*|Got error.*|Unknown error.*)$")
_QUOTED = re.compile(r"'([^']+\.(?:MYI|MAI))'")


def parse_chk_output(
    text: str, names: Iterable[str], engine: str, path: str | PurePosixPath, suffix: str, rc: int = 0
) -> list[ChkVerdict]:
    """Per-table verdicts from --silent myisamchk/aria_chk output (only problems are printed).

    A failing exit code that no table can be blamed for becomes a verdict for "(all tables)": better a
    clear refusal than a silent pass.
    """
    by_file = {posixpath.join(str(path), f"{n}{suffix}"): n for n in names}
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
    base = posixpath.basename(file)
    for full, name in by_file.items():
        if posixpath.basename(full) == base:
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
        dialect.execute(cur, dialect.tables_of(database))
        return [LiveTable(r[0], r[1], r[2]) for r in cur.fetchall()]


def check_tables(conn: Any, database: str, tables: Iterable[str]) -> dict[str, tuple[str, str]]:
    """CHECK TABLE each table: name -> (verdict, message). Verdict OK, or the server's worst message."""
    names = list(tables)
    out: dict[str, tuple[str, str]] = {}
    if not names:
        return out
    with conn.cursor() as cur:
        dialect.execute(cur, dialect.check_tables(database, names))
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
    with conn.cursor() as cur:
        try:
            dialect.execute(cur, dialect.count_rows_union(database, names))
            return {str(name): int(count) for name, count in cur.fetchall()}
        except Exception:  # pymysql raises per statement: find out which table it is
            pass
        out: dict[str, int | None] = {}
        for name in names:
            try:
                dialect.execute(cur, dialect.count_rows(name, database))
                out[name] = int(cur.fetchone()[0])
            except Exception:
                out[name] = None
        return out


# --- owners ---------------------------------------------------------------------------------------


def account_id(text: str | None, name: str) -> int | None:
    """The id (3rd field) of `name` in passwd- or group-format text, None if absent."""
    for line in (text or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def mysql_owner(conn: Connection, user: str = "mysql", group: str = "mysql") -> tuple[int, int] | None:
    """(uid, gid) of the mysql user and group in the target's own /etc/passwd and /etc/group."""
    uid = account_id(conn.read_text("/etc/passwd"), user)
    gid = account_id(conn.read_text("/etc/group"), group)
    if uid is None or gid is None:
        return None
    return uid, gid
