"""Setting up private MariaDB instances for the sandbox: datadir, schema load, dumps, ports.

Starting and stopping is SandboxMysql's job (ispcp_lib.mysql.service); this module prepares what
it runs on. The server runs as the host's `mysql` user, so every directory it needs must be
reachable and owned accordingly.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import CommandFailed, PreconditionFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.mysql.service import SandboxMysql
from ispcp_lib.sandbox.accounts import host_ids

T = TypeVar("T")

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
# The ispCP tables vftp may use (the installer's grants).
VFTP_TABLES = ("ftp_group", "ftp_users", "quotalimits", "quotatallies")


def data_file(name: str) -> str:
    """A static template shipped in ispcp_lib/sandbox/data/ (copies of the real ispCP 1.0.5 files)."""
    return (resources.files("ispcp_lib.sandbox") / "data" / name).read_text(encoding="utf-8")


def schema_sql(database: str = "ispcp") -> str:
    """ispCP 1.0.5's database.sql, with the installer's {DATABASE_NAME} substitution."""
    return data_file("database.sql").replace("{DATABASE_NAME}", database)


def free_port() -> int:
    """A loopback TCP port that is free right now (the kernel picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mysql_ids() -> tuple[int, int]:
    return host_ids("mysql")


def grant_traverse(path: Path) -> bool:
    """Let the mysql user reach `path`: add o+x (search, not list) to ancestors that lack it.

    pytest's tmp base (/tmp/pytest-of-root) is mode 0700, and every pytest session that starts resets
    it to 0700 again, so mariadbd (running as mysql) could not open a datadir below it. Search
    permission alone reveals no file names. Returns True if anything had to change.
    """
    changed = False
    for parent in [Path(path), *Path(path).parents]:
        if parent == Path("/"):
            break
        if not parent.exists():
            continue
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed = True
    return changed


def with_reachable(action: Callable[[], T], paths: Sequence[Path], before_retry: Callable[[], None] | None = None) -> T:
    """Run `action` with `paths` reachable for mysql; if it fails because a concurrent pytest session
    took the search bit away meanwhile, restore it and try once more."""
    for p in paths:
        grant_traverse(p)
    try:
        return action()
    except (PreconditionFailed, CommandFailed):
        if not [p for p in paths if grant_traverse(p)]:
            raise
        if before_retry is not None:
            before_retry()
        return action()


def check_socket_path(sock: Path) -> None:
    if len(str(sock).encode()) > SOCKET_PATH_MAX:
        raise PreconditionFailed(
            "sandbox MariaDB socket",
            f"path is longer than {SOCKET_PATH_MAX} bytes",
            "use a shorter workdir",
            path=str(sock),
        )


def make_mysql_dir(path: Path, mode: int = 0o755) -> Path:
    """A directory owned by the host's mysql user (datadir, socket dir)."""
    uid, gid = mysql_ids()
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def prepare_log(log_file: Path) -> None:
    """mariadbd opens --log-error as mysql: create it owned by mysql in a root-owned logs dir."""
    uid, gid = mysql_ids()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch(exist_ok=True)
    os.chown(log_file, uid, gid)
    log_file.chmod(0o640)


def install_datadir(datadir: Path, runner: Runner, tmpdir: Path) -> None:
    """A fresh system database in `datadir` (mysql, performance_schema, sys; no test db).

    --auth-root-authentication-method=normal gives root@localhost a plain (empty) password instead
    of unix_socket, as the MySQL 5.0 of 2010 had; the builders set a real password afterwards.
    """
    if not shutil.which("mariadb-install-db"):
        raise PreconditionFailed("mariadb-install-db", "not found", "apt-get install mariadb-server")
    argv = [
        "mariadb-install-db",
        "--no-defaults",
        f"--datadir={datadir}",
        "--user=mysql",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        f"--tmpdir={tmpdir}",
    ]

    def fresh() -> None:
        shutil.rmtree(datadir, ignore_errors=True)
        make_mysql_dir(datadir)

    fresh()
    make_mysql_dir(tmpdir, 0o700)
    with_reachable(lambda: runner.run(argv, timeout=300), [datadir, tmpdir], before_retry=fresh)


def instance(
    datadir: Path, sock: Path, pid_file: Path, log_file: Path, port: int | None, runner: Runner | None = None
) -> SandboxMysql:
    check_socket_path(sock)
    make_mysql_dir(sock.parent)
    prepare_log(log_file)
    return SandboxMysql(datadir, sock, port, pid_file, runner or Runner(), LocalConnection("/"), log_file=log_file)


def start(srv: SandboxMysql, tmpdir: Path) -> None:
    """Start a sandbox server, robust against a concurrent pytest session's chmod 0700 (see grant_traverse).

    Each server gets a private tmpdir: in a shared /tmp, temporary-table names (#sql-temptable-<pid>-...)
    of servers in different PID namespaces collide, and one server deletes the other's files.
    """
    make_mysql_dir(tmpdir, 0o700)
    files = (srv.socket, srv.effective_pid_file(), srv.error_log() or srv.socket)
    paths = [Path(srv.datadir), *(Path(f).parent for f in files), tmpdir]
    with_reachable(lambda: srv.start([f"--tmpdir={tmpdir}"]), paths)


def client(sock: Path, user: str = "root", database: str | None = None) -> list[str]:
    """argv for the mariadb client on the socket; no password (only used before one is set)."""
    return [
        "mariadb",
        "--no-defaults",
        f"--socket={sock}",
        f"--user={user}",
        "--batch",
        *([database] if database else []),
    ]


def load_sql(sock: Path, sql: str, runner: Runner, database: str | None = None) -> None:
    """Feed SQL to the real client, as ispCP's installer did (it handles DELIMITER, comments...)."""
    runner.run(client(sock, database=database), input=sql, timeout=600)


def dump_database(sock: Path, database: str, dest: Path, runner: Runner) -> None:
    """A mariadb-dump of one database (root without password: done before passwords are set)."""
    out = runner.run(
        [
            "mariadb-dump",
            "--no-defaults",
            f"--socket={sock}",
            "--user=root",
            "--single-transaction",
            "--routines",
            "--databases",
            database,
        ],
        timeout=600,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(out.stdout)
    dest.chmod(0o600)


def server_version(datadir: Path, mysql: SandboxMysql) -> str:
    """mysql_upgrade_info if the install wrote it, else the running server's greeting."""
    info = datadir / "mysql_upgrade_info"
    if info.exists():
        return info.read_text().strip("\0\n ")
    return mysql.version() or ""


def create_service_accounts(conn: Any, root_password: str, dsm_password: str, vftp_password: str | None) -> None:
    """debian-sys-maint, vftp (if ispCP is installed) and root's password, the way Debian + ispCP set them.

    Every root@<host> row gets the password, as Debian's postinst did; password only, no unix_socket,
    like the MySQL 5.0 of 2010.
    """
    with conn.cursor() as cur:
        cur.execute("CREATE USER 'debian-sys-maint'@'localhost' IDENTIFIED BY %s", (dsm_password,))
        cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'debian-sys-maint'@'localhost' WITH GRANT OPTION")
        if vftp_password is not None:
            cur.execute("CREATE USER 'vftp'@'localhost' IDENTIFIED BY %s", (vftp_password,))
            for table in VFTP_TABLES:
                cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ispcp.`{table}` TO 'vftp'@'localhost'")
        cur.execute("SELECT host FROM mysql.user WHERE user = 'root'")
        for (host,) in cur.fetchall():
            cur.execute(
                "ALTER USER 'root'@%s IDENTIFIED VIA mysql_native_password USING PASSWORD(%s)", (host, root_password)
            )
        cur.execute("FLUSH PRIVILEGES")
