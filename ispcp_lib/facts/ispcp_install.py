"""The ispCP on the target (the operator's fresh "dummy" install) and the release the backup came from.

Reads only. The backup's schema revision is read without touching the target's MySQL: from a copy of
the backup's ispCP database served by a throwaway private mariadbd (no networking, no grant tables,
its own temp datadir, stopped and deleted afterwards: facts.backup_db_reader), else from an ispCP
SQL dump.
"""

from __future__ import annotations

import bz2
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import CommandFailed, InputError, IspcpError
from ispcp_lib.facts import backup_db_reader, backup_layout
from ispcp_lib.facts.ispcp_conf import CONF_PATH, DEFAULT_DATABASE_NAME, IspcpConf, parse_version
from ispcp_lib.ispcp import keyfiles, queries
from ispcp_lib.ispcp.engine_sleep import MANAGERS as SLEEPING_MANAGERS
from ispcp_lib.mysql import accounts, dialect

if TYPE_CHECKING:
    from ispcp_lib.core.context import Context

# Every manager the engine dispatches to: the seven with a sleep(1) per item, and the request manager.
ENGINE_MANAGERS = (*SLEEPING_MANAGERS, "ispcp-rqst-mngr")
UPDATE_SCRIPT = "engine/setup/ispcp-update"
DEFAULT_ROOT_DIR = "/var/www/ispcp"
REVISION_KEY = "DATABASE_REVISION"
_DUMP_REVISION = re.compile(r"\(\s*'DATABASE_REVISION'\s*,\s*'(\d+)'\s*\)")


# --- the target's install -----------------------------------------------------------------------


@dataclass
class KeyState:
    layout: str
    path: str  # as on the target
    state: str  # initialised | placeholder | invalid | absent
    detail: str = ""


@dataclass
class TargetDatabase:
    name: str
    exists: bool | None  # None: could not look (server down, no admin login)
    revision: int | None
    detail: str


@dataclass
class TargetInstall:
    conf: IspcpConf | None
    conf_problem: str | None  # why ispcp.conf is unusable (absent, malformed)
    root_dir: str
    gui_root_dir: str
    root_present: bool
    engine_present: bool
    gui_present: bool
    managers_present: list[str]
    managers_missing: list[str]
    update_script: bool
    keys: list[KeyState]
    database: TargetDatabase | None = None

    @property
    def version(self) -> str | None:
        return self.conf.get("Version") if self.conf else None

    @property
    def build_date(self) -> str | None:
        return self.conf.get("BuildDate") if self.conf else None

    @property
    def installed(self) -> bool:
        """Enough of an install for the recovery to build on: its config and its engine."""
        return self.conf is not None and self.root_present and self.engine_present

    @property
    def initialised_keys(self) -> list[str]:
        return [k.layout for k in self.keys if k.state == "initialised"]

    @property
    def placeholder_keys(self) -> list[str]:
        return [k.layout for k in self.keys if k.state == "placeholder"]


def expected_key_layouts(version: tuple[int, ...] | None) -> tuple[str, ...]:
    """1.0.0-1.0.7 write the PHP and Perl key files; 1.0.8 and later ispcp-keys.conf."""
    if version is not None and version >= (1, 0, 8):
        return ("keys_conf",)
    return ("php", "perl_engine", "perl_messenger")


def key_states(ctx: Context, paths: dict[str, str]) -> list[KeyState]:
    """Each key file layout on the target: initialised, still a {KEY}/{IV} template, unusable, or absent."""
    states = []
    for layout, logical in paths.items():
        text = ctx.target.read_text(logical) if ctx.target.is_file(logical) else None
        if text is None:
            states.append(KeyState(layout, logical, "absent"))
            continue
        if keyfiles.is_placeholder(layout, text):
            states.append(KeyState(layout, logical, "placeholder", "holds {KEY}/{IV}: never initialised"))
            continue
        try:
            keys = keyfiles.parse_keyfile(layout, text, logical)
        except InputError as exc:
            states.append(KeyState(layout, logical, "invalid", exc.problem))
            continue
        ctx.secrets.add(keys.key, "target db_pass_key")
        ctx.secrets.add(keys.iv, "target db_pass_iv")
        states.append(KeyState(layout, logical, "initialised", "key and IV present"))
    return states


def target_install(ctx: Context) -> TargetInstall | None:
    """The target's ispCP files; None when there is no trace of ispCP at all (no config, no ROOT_DIR)."""
    target = ctx.target
    conf: IspcpConf | None = None
    problem: str | None = None
    try:
        conf = IspcpConf.read(target, CONF_PATH)
    except InputError as exc:
        problem = exc.problem
    if conf is None and problem is None:
        problem = f"{CONF_PATH} does not exist"
    root_dir = (conf.get("ROOT_DIR") if conf else None) or DEFAULT_ROOT_DIR
    gui_root_dir = (conf.get("GUI_ROOT_DIR") if conf else None) or f"{root_dir}/gui"
    conf_dir = (conf.get("CONF_DIR") if conf else None) or "/etc/ispcp"
    if conf is None and not target.exists(CONF_PATH) and not target.exists(root_dir):
        return None
    try:
        paths = keyfiles.layout_paths(root_dir, gui_root_dir, conf_dir)
    except InputError as exc:  # a relative ROOT_DIR: report, look at the defaults
        problem = exc.message
        paths = keyfiles.layout_paths()
    engine = f"{root_dir.rstrip('/')}/engine"
    in_engine = set(target.listdir(engine) or [])
    present = [m for m in ENGINE_MANAGERS if m in in_engine and target.is_file(f"{engine}/{m}")]
    return TargetInstall(
        conf=conf,
        conf_problem=problem,
        root_dir=root_dir,
        gui_root_dir=gui_root_dir,
        root_present=target.is_dir(root_dir),
        engine_present=target.is_dir(engine),
        gui_present=target.is_dir(gui_root_dir),
        managers_present=present,
        managers_missing=[m for m in ENGINE_MANAGERS if m not in present],
        update_script=target.is_file(f"{root_dir.rstrip('/')}/{UPDATE_SCRIPT}"),
        keys=key_states(ctx, paths),
    )


def target_database(ctx: Context, name: str) -> TargetDatabase:
    """Does the running target MySQL hold ispCP's database, and at which DATABASE_REVISION?"""
    import pymysql

    if ctx.mysql is None or not ctx.mysql.status():
        return TargetDatabase(name, None, None, "the target's MySQL server is not running")
    login = accounts.admin_login(ctx)
    if login is None:
        return TargetDatabase(
            name,
            None,
            None,
            "no admin login works (debian.cnf of the target or the backup, ispCP's own, the secrets_file)",
        )
    try:
        with ctx.mysql.connect(login.user, login.password) as conn, conn.cursor() as cur:
            dialect.execute(cur, dialect.database_exists(name))
            if not int(cur.fetchone()[0]):
                return TargetDatabase(name, False, None, "no such database: the installer did not create it")
            dialect.execute(cur, queries.config_value(REVISION_KEY, name))
            row = cur.fetchone()
    except pymysql.MySQLError as exc:
        return TargetDatabase(name, True, None, f"cannot read its config table: {exc.args[-1]}")
    revision = _int(row[0]) if row else None
    detail = f"{REVISION_KEY} = {revision}" if revision is not None else f"no {REVISION_KEY} row"
    return TargetDatabase(name, True, revision, detail)


# --- the backup's release -----------------------------------------------------------------------


@dataclass
class BackupRelease:
    version: str | None
    build_date: str | None
    revision: int | None
    revision_source: str  # how the revision was read, or why it could not be
    notes: list[str] = field(default_factory=list)


def backup_release(ctx: Context) -> BackupRelease:
    """Version and build date from the backup's ispcp.conf; the schema revision from its database."""
    import pymysql

    try:
        conf = backup_layout.load_old_conf(ctx)
    except InputError as exc:
        conf, problem = None, exc.message
    else:
        problem = None if conf is not None else f"the backup has no {CONF_PATH}"
    datadir = (conf.get("DATABASE_DIR") if conf else None) or "/var/lib/mysql"
    dbname = conf.database_name if conf else DEFAULT_DATABASE_NAME
    revision, source, notes = None, "", [problem] if problem else []
    db_dir = backup_layout.local_path(ctx, backup_layout.checked(ctx, f"{datadir}/{dbname}", f"database {dbname}"))
    if db_dir is not None and (db_dir / "config.frm").is_file():
        try:
            revision = revision_from_datadir(db_dir, backup_db_reader.scratch_dir(ctx))
            source = f"the binary copy {db_dir} served by a throwaway private MariaDB"
        except (IspcpError, CommandFailed, OSError, pymysql.MySQLError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"the binary copy of the ispCP database could not be read ({first}); trying a SQL dump")
    if revision is None:
        view = backup_layout.backup(ctx)
        folder = (conf.get("BACKUP_FILE_DIR") if conf else None) or "/var/www/ispcp/backups"
        for dump in reversed(backup_layout.ispcp_dumps(view, backup_layout.checked(ctx, folder, "BACKUP_FILE_DIR"))):
            revision = revision_from_dump(view, dump)
            if revision is not None:
                source = f"the SQL dump {backup_layout.shown(ctx, dump)}"
                break
    if revision is None and not source:
        source = "not found: no readable config table (binary copy or ispCP SQL dump) in the backup"
    return BackupRelease(
        conf.get("Version") if conf else None, conf.get("BuildDate") if conf else None, revision, source, notes
    )


def revision_from_dump(side: Connection, path: str) -> int | None:
    """DATABASE_REVISION from the INSERT into `config` of a (possibly compressed) SQL dump on that side."""
    data = side.read_bytes(path)
    if data is None:
        return None
    unpack = {".gz": gzip.decompress, ".bz2": bz2.decompress}.get(PurePosixPath(path).suffix)
    try:
        text = (unpack(data) if unpack else data).decode("utf-8", "replace")
    except (OSError, EOFError, ValueError):  # a damaged archive holds no revision to read
        return None
    for line in text.splitlines():
        if REVISION_KEY in line and (m := _DUMP_REVISION.search(line)):
            return int(m.group(1))
    return None


# Per process: the same backup files give the same answer; a re-run cell need not start a server again.
_REVISION_CACHE: dict[tuple, int | None] = {}


def _files_signature(db_dir: Path) -> tuple:
    files = sorted(p for p in db_dir.iterdir() if p.name.startswith("config."))
    return (str(db_dir.resolve()),) + tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def revision_from_datadir(db_dir: Path, scratch: Path | None = None) -> int | None:
    """DATABASE_REVISION from a binary copy of ispCP's database directory.

    The shared throwaway reader (facts.backup_db_reader) serves a temp copy with a private mariadbd
    (no networking, no grant tables) and deletes it afterwards; neither the target's server nor the
    backup's files are touched.
    """
    key = _files_signature(db_dir)
    if key in _REVISION_CACHE:
        return _REVISION_CACHE[key]

    def query(conn: Any) -> int | None:
        with conn.cursor() as cur:
            dialect.execute(cur, queries.config_value(REVISION_KEY))
            row = cur.fetchone()
        return _int(row[0]) if row else None

    value = backup_db_reader.read_backup_database(db_dir.parent, db_dir.name, query, scratch=scratch)
    _REVISION_CACHE[key] = value
    return value


# --- verdict --------------------------------------------------------------------------------------


def compare_releases(
    old_version: str | None, new_version: str | None, old_revision: int | None = None, new_revision: int | None = None
) -> tuple[str, str]:
    """same | upgrade | downgrade | unknown, with the reason. ispcp-update can only move forward."""
    ov, nv = parse_version(old_version or ""), parse_version(new_version or "")
    if ov is None or nv is None:
        return "unknown", f"cannot compare versions: backup {old_version or '?'}, target {new_version or '?'}"
    if nv < ov:
        return "downgrade", (
            f"the target runs ispCP {new_version}, older than the backup's {old_version}: "
            "ispcp-update cannot take a database back to an older release"
        )
    if old_revision is not None and new_revision is not None and new_revision < old_revision:
        return "downgrade", (
            f"the target's schema revision {new_revision} is older than the backup's "
            f"{old_revision}: the installed ispCP cannot read that database"
        )
    if nv > ov:
        return "upgrade", (
            f"{old_version} → {new_version}: ispcp-update brings the restored database and "
            "configuration up to the new release"
        )
    return "same", f"both run ispCP {new_version}"


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None
