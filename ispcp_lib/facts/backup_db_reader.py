"""Read a database from the backup's binary copy before any server runs it.

Before `mysql_restore`, the backup's `ispcp` database is only a directory of MyISAM files. To query
it we start a throwaway private MariaDB on a temporary COPY: a fresh system database from
`mariadb-install-db`, the backup's database directory copied in, `--skip-grant-tables` (no
password needed, none read) and `--skip-networking` (only our socket reaches it). The copy is
deleted afterwards; the backup itself is never opened for writing.

API:
    with backup_database(datadir, "ispcp") as conn:   # a client connection (mysql.client), database selected
        ...
    read_backup_database(datadir, "ispcp", fn)       # fn(conn) -> value, server stopped after

`datadir` is the old server's data directory inside the backup (e.g. backup/var/lib/mysql), a path on
this machine: the reader always runs here, beside the backup, whatever connection reaches the target.
Errors are PreconditionFailed naming the directory and the fix.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.mysql.service import SandboxMysql

T = TypeVar("T")
SERVER_USER = "mysql"


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


@contextmanager
def backup_database(
    datadir: Path, database: str = "ispcp", *, runner: Runner | None = None, tmp_parent: str | None = None
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
    # Short path under /tmp: the socket path must stay below 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="ispcp-dbread-", dir=tmp_parent))
    server: SandboxMysql | None = None
    try:
        os.chown(work, uid, gid)
        work.chmod(0o700)  # only root and the server user see the copy
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
        server = SandboxMysql(
            data,
            work / "s.sock",
            None,
            work / "mysqld.pid",
            runner,
            LocalConnection("/"),
            log_file=work / "mariadbd.err",
            user=SERVER_USER,
        )
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


def read_backup_database(datadir: Path, database: str, fn: Callable[[Any], T], *, runner: Runner | None = None) -> T:
    """fn(connection) on the backup's copy of `database`; the throwaway server is gone afterwards."""
    with backup_database(datadir, database, runner=runner) as conn:
        return fn(conn)
