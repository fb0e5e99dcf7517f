"""Read a database from the backup's binary copy before any server runs it.

Before `mysql_restore`, the backup's `ispcp` database is only a directory of MyISAM files. To query
it we start a throwaway private MariaDB on a temporary COPY: a fresh system database from
`mariadb-install-db`, the backup's database directory copied in, `--skip-grant-tables` (no
password needed, none read) and `--skip-networking` (only our socket reaches it). The backup itself is
never opened for writing.

The copy holds the old admin and FTP hashes: it lives under the state dir of this machine
(`<state dir>/dbread/<pid>-<random>`, 0700, owned by the server user; the state dir gives the server's
group search permission only), is deleted when the reader ends, on success and on failure, and the
folders of dead processes (a killed run) are swept, their server stopped, before the next reader starts.

API:
    with backup_database(datadir, "ispcp", scratch=scratch_dir(ctx)) as conn:   # database selected
        ...
    read_backup_database(datadir, "ispcp", fn, scratch=scratch_dir(ctx))      # server stopped after

`datadir` is the old server's data directory inside the backup (e.g. backup/var/lib/mysql), a path on
this machine: the reader always runs here, beside the backup, whatever connection reaches the target.
Errors are PreconditionFailed naming the directory and the fix.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.mysql.service import SandboxMysql, pid_alive

if TYPE_CHECKING:
    from ispcp_lib.core.context import Context

T = TypeVar("T")
SERVER_USER = "mysql"
SCRATCH = "dbread"
# The server's socket lives in the work folder; a Unix socket path is limited to 108 bytes.
SOCKET_PATH_MAX = 107
_WORK_NAME = re.compile(r"^(\d+)-")
# Where the readers work when no run context says otherwise: the tool's default state dir here.
DEFAULT_SCRATCH = Path("/var/lib/ispcp-recovery") / SCRATCH


def scratch_dir(ctx: Context) -> Path:
    """The state dir as this machine sees it, plus dbread/: the readers always run here, beside the backup.

    The local connection's state dir is a path here, a chroot's lies in its tree here; with SSH the
    state dir is on the target, so this machine's default state dir is used.
    """
    kind = ctx.state.kind
    if kind == "local":
        return Path(ctx.state_dir) / SCRATCH
    if kind == "chroot":
        return Path(ctx.state.path(str(ctx.state_dir))) / SCRATCH
    return DEFAULT_SCRATCH


def _server_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PreconditionFailed(
            "MySQL server user",
            f"there is no '{SERVER_USER}' account on this machine",
            "install mariadb-server, which creates it",
        ) from None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def _server(work: Path, runner: Runner) -> SandboxMysql:
    """The throwaway server of one work folder (its datadir, socket, pid file and log inside it)."""
    return SandboxMysql(
        str(work / "data"),
        str(work / "s.sock"),
        None,
        str(work / "mysqld.pid"),
        runner,
        LocalConnection("/"),
        log_file=str(work / "mariadbd.err"),
        user=SERVER_USER,
    )


def _owner_pid(name: str) -> int | None:
    m = _WORK_NAME.match(name)
    return int(m.group(1)) if m else None


def sweep(scratch: Path) -> list[str]:
    """Remove the work folders of processes that are gone (a killed run), stopping a server still up.

    Returns the names removed. Folders of live processes (another reader running now) are left alone.
    """
    if not scratch.is_dir():
        return []
    removed = []
    for entry in sorted(scratch.iterdir()):
        pid = _owner_pid(entry.name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        if (entry / "mysqld.pid").exists():
            _server(entry, Runner(connection=LocalConnection("/"))).stop()  # signals only a live MySQL server
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def work_dir(scratch: Path | None) -> Path:
    """A new private folder `<pid>-<random>` under scratch (swept of dead runs' folders first), 0700."""
    parent = scratch or DEFAULT_SCRATCH
    uid, gid = _server_ids()
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The server runs as its own user: search (never list) on the state dir and on dbread/ for its group.
    for folder in (parent.parent, parent):
        st = folder.stat()
        if st.st_gid != gid:
            os.chown(folder, st.st_uid, gid)
        folder.chmod((st.st_mode & 0o700) | 0o010)
    sweep(parent)
    work = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    os.chown(work, uid, gid)
    work.chmod(0o700)  # only root and the server user see the copy
    if len(str(work / "s.sock").encode()) > SOCKET_PATH_MAX:
        shutil.rmtree(work)
        raise PreconditionFailed(
            "throwaway MariaDB reader",
            f"its socket path under {parent} is longer than {SOCKET_PATH_MAX} bytes",
            "give the run a shorter state_dir",
            path=str(work),
        )
    return work


@contextmanager
def backup_database(
    datadir: Path, database: str = "ispcp", *, runner: Runner | None = None, scratch: Path | None = None
) -> Iterator[Any]:
    """A connection to `database` as found in the backup's binary copy under `datadir`."""
    source = Path(datadir) / database
    if not source.is_dir():
        raise PreconditionFailed(
            f"database {database} in the backup",
            "the directory does not exist",
            "restore the binary copy of the database directory into the backup",
            path=str(source),
        )
    if any(source.glob("*.ibd")):
        raise PreconditionFailed(
            f"database {database} in the backup",
            "has InnoDB tables (.ibd); their data lives partly in the old server's ibdata1 and cannot be read "
            "from a copied directory",
            "use a SQL dump of the database, or read it after mysql_restore",
            path=str(source),
        )
    if not shutil.which("mariadb-install-db"):
        raise PreconditionFailed(
            "mariadb-install-db", "not found: cannot start a throwaway reader", "apt-get install mariadb-server"
        )
    if runner is None or runner.connection.kind != "local":
        runner = Runner(connection=LocalConnection("/"))  # this machine, never the target
    uid, gid = _server_ids()
    work = work_dir(scratch)
    server: SandboxMysql | None = None
    try:
        data, tmp = work / "data", work / "tmp"
        for d in (data, tmp):
            d.mkdir()
            os.chown(d, uid, gid)
        # A private tmpdir: bootstrap temp tables in a shared /tmp can collide with other servers' files.
        runner.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                f"--user={SERVER_USER}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
                f"--tmpdir={tmp}",
            ],
            timeout=300,
            record=False,
        )
        shutil.copytree(source, data / database, symlinks=False)
        _chown_tree(data / database, uid, gid)
        server = _server(work, runner)
        server.start(["--skip-grant-tables", "--skip-networking", f"--tmpdir={tmp}"])
        conn = server.connect("root", None, database)
        try:
            yield conn
        finally:
            conn.close()
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def read_backup_database(
    datadir: Path, database: str, fn: Callable[[Any], T], *, runner: Runner | None = None, scratch: Path | None = None
) -> T:
    """fn(connection) on the backup's copy of `database`; the throwaway server is gone afterwards."""
    with backup_database(datadir, database, runner=runner, scratch=scratch) as conn:
        return fn(conn)
