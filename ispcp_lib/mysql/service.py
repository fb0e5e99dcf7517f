"""MySQL/MariaDB service control through the connection: systemd, sysvinit and the sandbox's server.

Everything happens on the target, through its `Connection`: the version from the protocol greeting
(a few lines of perl, no credentials), pid files read with `cat`, liveness from `/proc/PID` there
(`kill -0` where /proc is missing), the server and client binaries found there (`mariadbd` or
`mysqld`, `mariadb` or `mysql`), and SQL through that client (`ispcp_lib.mysql.client`).

Paths (datadir, socket, pid file, error log) are as a command on the target sees them
(`Connection.path`): the server's own paths over SSH and in a chroot, paths under the tree's root
for the local sandbox.

Stopping is always graceful: a shutdown request, then SIGTERM to the pid in the pid file once that
pid is proven to run a MySQL server. Nothing here ever kills by process name.
"""

from __future__ import annotations

import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pymysql

from ispcp_lib.core.connection import Connection, LocalConnection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.mysql import client
from ispcp_lib.mysql.dialect import Dialect

START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0
# Waiting for a start or a stop: the first checks come quickly (a sandbox server is up or down within
# a few tenths of a second), later ones less often. Each check is one round trip over SSH.
POLL_FIRST_S = 0.02
POLL_MOST_S = 0.25
SERVER_NAMES = ("mariadbd", "mysqld", "mysqld-debug")

# The server's greeting packet: what it says before any login. Perl ships on every Debian.
_GREETING = r"""
use IO::Socket::UNIX;
$SIG{ALRM} = sub { exit 3 }; alarm 5;
my $s = IO::Socket::UNIX->new(Peer => $ARGV[0], Type => SOCK_STREAM) or exit 2;
my $b = "";
while (sysread($s, $b, 512, length $b)) {
    last if length($b) >= 4 && length($b) >= 4 + unpack("V", substr($b, 0, 3) . "\0");
}
binmode STDOUT; print $b;
"""
# A process on the target: its /proc stat line and program, or a bare "alive" without /proc.
_PROCESS = r"""
if [ -r "/proc/$1/stat" ]; then
  cat "/proc/$1/stat" && printf '\n' && tr '\0' '\n' < "/proc/$1/cmdline" | head -n 1
elif kill -0 "$1" 2>/dev/null; then
  printf '? (?) R\n\n'
else
  exit 1
fi
"""


def poll_delays(first: float = POLL_FIRST_S, most: float = POLL_MOST_S) -> Iterator[float]:
    """Pauses between two checks of a wait: first, then half as long again each time, up to most."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 1.5, most)


def parse_greeting(packet: bytes) -> str | None:
    """The server version in a protocol-10 greeting; None for anything else."""
    if len(packet) < 6 or packet[4] != 10:
        return None
    version = packet[5:].split(b"\0", 1)[0].decode("ascii", "replace")
    # MariaDB greets with "5.5.5-10.11.6-MariaDB..." for the sake of old replication clients.
    return version.removeprefix("5.5.5-") if "mariadb" in version.lower() else version


def server_version(connection: Connection, socket: str) -> str | None:
    """The version the server on `socket` greets with; None when nothing answers there."""
    done = connection.run(["perl", "-e", _GREETING, socket], timeout=30)
    return parse_greeting(done.stdout) if done.rc == 0 else None


def process(pid: int, connection: Connection | None = None) -> tuple[bool, str]:
    """Whether pid runs on the target (a zombie counts as gone) and its program's name ('' if unknown)."""
    done = (connection or LocalConnection("/")).sh(_PROCESS, str(pid), timeout=30)
    if done.rc != 0:
        return False, ""
    stat, _, program = done.out.partition("\n")
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"], PurePosixPath(program.strip()).name


def pid_alive(pid: int, connection: Connection | None = None) -> bool:
    """True while pid runs (on this machine unless a connection says where)."""
    return process(pid, connection)[0]


def is_mysql_server(pid: int, connection: Connection | None = None) -> bool:
    """Whether pid runs a MySQL/MariaDB server: a stale pid file may name a reused pid."""
    alive, program = process(pid, connection)
    return alive and program in SERVER_NAMES


@dataclass
class MysqlService(ABC):
    datadir: str
    socket: str
    port: int | None = None
    pid_file: str | None = None
    runner: Runner = field(default_factory=Runner)
    # Where the server runs; None: where the runner runs its commands (the Context's target).
    connection: Connection | None = None
    # A target folder for the client's 0600 option file (it lives only while the client logs in).
    secret_dir: str = "/tmp"
    _version: str | None = field(default=None, repr=False, compare=False)
    _programs: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Callers may hand over Path objects; commands take the strings.
        self.datadir, self.socket = str(self.datadir), str(self.socket)
        self.pid_file = None if self.pid_file is None else str(self.pid_file)

    @abstractmethod
    def _start(self, extra_args: Sequence[str]) -> None: ...

    @abstractmethod
    def _request_stop(self) -> None: ...

    @property
    def target(self) -> Connection:
        return self.connection or self.runner.connection

    @property
    def kind(self) -> str:
        return type(self).__name__

    # -- what runs -----------------------------------------------------------------------------
    def version(self) -> str | None:
        """The running server's version (from its greeting, no login needed); None when it is down."""
        self._version = server_version(self.target, self.socket)
        return self._version

    def status(self) -> bool:
        return self.version() is not None

    def dialect(self) -> Dialect:
        """The SQL dialect of the running server; utf8-era defaults when it does not answer."""
        version = self._version or self.version()
        return Dialect.for_version(version or "5.0.0")

    def program(self, *names: str) -> str:
        """The first of names found on the target (PATH and the sbin folders)."""
        key = " ".join(names)
        if key not in self._programs:
            found = next((p for p in map(self.target.which, names) if p), None)
            if found is None:
                raise PreconditionFailed(
                    "MySQL", f"none of {', '.join(names)} is installed on the target", "install the MySQL server"
                )
            self._programs[key] = found
        return self._programs[key]

    def server_binary(self) -> str:
        return self.program("mariadbd", "mysqld")

    def client_binary(self) -> str:
        return self.program("mariadb", "mysql")

    # -- SQL -----------------------------------------------------------------------------------
    def connect(self, user: str, password: str | None, database: str | None = None) -> client.ClientConnection:
        """A session through the target's own client; pymysql's exceptions on failure."""
        return client.ClientConnection(
            self.target,
            self.client_binary(),
            self.socket,
            user,
            password,
            database,
            charset=self.dialect().charset,
            secret_dir=self.secret_dir,
        )

    def login_error(self, user: str, password: str | None, database: str | None = None) -> str | None:
        """Why this login fails (the server's message); None when it works."""
        try:
            self.connect(user, password, database).close()
            return None
        except pymysql.MySQLError as exc:
            return str(exc.args[1] if len(exc.args) > 1 else exc)

    # -- starting and stopping -----------------------------------------------------------------
    def start(self, extra_args: Sequence[str] = ()) -> None:
        if self.status():
            return
        self._start(list(extra_args))
        deadline = time.monotonic() + START_TIMEOUT
        pauses = poll_delays()
        while time.monotonic() < deadline:
            if self.status():
                return
            if self._died():
                break
            time.sleep(next(pauses))
        self._abandon_start()
        raise PreconditionFailed(
            "MySQL server",
            f"did not come up on {self.socket}. Error log tail:\n{self.error_log_tail()}",
            "read the error log above; the previous data directories are kept under the state dir",
        )

    def _abandon_start(self) -> None:  # noqa: B027 - a hook; only the sandbox owns its server process
        """A start that timed out: nothing may keep running half-started (see SandboxMysql)."""

    def stop(self) -> None:
        pid = self._pid()
        if not self.status() and not pid:
            return
        self._request_stop()
        if pid and is_mysql_server(pid, self.target):
            # mysqld treats SIGTERM as a normal shutdown
            self.target.run(["kill", "-TERM", str(pid)], timeout=30)
        deadline = time.monotonic() + STOP_TIMEOUT
        pauses = poll_delays()
        while time.monotonic() < deadline:
            if not (pid and pid_alive(pid, self.target)) and not self.status():
                self._version = None
                return
            time.sleep(next(pauses))
        raise PreconditionFailed(
            "MySQL server",
            f"pid {pid} did not stop within {STOP_TIMEOUT:.0f} s",
            "look at the error log; never kill -9 a server with open tables",
        )

    def restart(self, extra_args: Sequence[str] = ()) -> None:
        self.stop()
        self.start(extra_args)

    def pid_files(self) -> list[str]:
        """Where the server may write its pid, most likely first."""
        return [self.pid_file or f"{self.datadir}/mysqld.pid"]

    def effective_pid_file(self) -> str:
        found = [p for p in self.pid_files() if self._read_pid(p) is not None]
        return (found or self.pid_files())[0]

    def _pid(self) -> int | None:
        return next((pid for pid in map(self._read_pid, self.pid_files()) if pid), None)

    def _read_pid(self, path: str) -> int | None:
        done = self.target.run(["cat", "--", path], timeout=30)
        text = done.out.strip()
        return int(text) if done.rc == 0 and text.isdigit() else None

    def _died(self) -> bool:
        return False

    def error_logs(self) -> list[str]:
        """Where the server may log its errors, most likely first."""
        return []

    def error_log(self) -> str | None:
        return next(iter(self.error_logs()), None)

    def error_log_tail(self, lines: int = 20) -> str:
        for log in self.error_logs():
            done = self.target.run(["tail", "-n", str(lines), "--", log], timeout=30)
            if done.rc == 0:
                return done.out.rstrip("\n") or "(the error log is empty)"
        return "(no error log found)"


@dataclass
class SandboxMysql(MysqlService):
    """A private mariadbd: own datadir, socket, loopback port and pid file, started through the connection."""

    log_file: str | None = None
    user: str = "mysql"
    # A private --tmpdir: in a shared /tmp, temporary-table names of servers in different PID
    # namespaces collide and one server deletes the other's files.
    tmpdir: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log_file = None if self.log_file is None else str(self.log_file)
        self.tmpdir = None if self.tmpdir is None else str(self.tmpdir)

    def error_logs(self) -> list[str]:
        return [self.log_file or str(PurePosixPath(self.datadir).parent / "mariadbd.err")]

    def _start(self, extra_args: Sequence[str]) -> None:
        networking = [f"--port={self.port}", "--bind-address=127.0.0.1"] if self.port else ["--skip-networking"]
        if "--skip-networking" in extra_args:
            networking = []
        tmp = []
        if self.tmpdir is not None and not any(a.startswith("--tmpdir") for a in extra_args):
            self.target.run(["install", "-d", "-m", "700", "-o", self.user, "-g", self.user, self.tmpdir], check=True)
            tmp = [f"--tmpdir={self.tmpdir}"]
        argv = [
            self.server_binary(),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            *networking,
            f"--pid-file={self.effective_pid_file()}",
            f"--log-error={self.error_log()}",
            f"--user={self.user}",
            *tmp,
            *extra_args,
        ]
        # umask 007 as Debian's mysqld_safe sets it: new table files are 0660, as on a real server.
        self._proc = self.target.popen(
            ["sh", "-c", 'umask 007; exec "$@"', "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _died(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def _request_stop(self) -> None:
        pass  # SIGTERM to the pid in the pid file is the graceful shutdown here

    def _abandon_start(self) -> None:
        # Our child never answered: a graceful SIGTERM, then reap it, so no server is left behind.
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        super().stop()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)  # reap our own child
            except subprocess.TimeoutExpired:
                raise PreconditionFailed(
                    "MySQL server", f"pid {self._proc.pid} did not exit", "look at the error log"
                ) from None
            self._proc = None


@dataclass
class SystemMysql(MysqlService):
    """The distribution's service, through systemd or the sysvinit script (Lenny, Squeeze)."""

    manager: str = "systemd"  # or "sysv"
    unit: str = "mariadb"  # the systemd unit, or the name of the script in /etc/init.d
    log_path: str | None = None

    def pid_files(self) -> list[str]:
        # Debian's my.cnf: /run/mysqld on current releases, /var/run/mysqld on Lenny and Squeeze.
        found = ["/run/mysqld/mysqld.pid", "/var/run/mysqld/mysqld.pid", f"{self.datadir}/mysqld.pid"]
        return [self.pid_file] + found if self.pid_file else found

    def error_logs(self) -> list[str]:
        logs = ["/var/log/mysql/error.log", "/var/log/mysql.err", "/var/log/mysql/mysql.err", "/var/log/syslog"]
        return [self.log_path] + logs if self.log_path else logs

    def _start(self, extra_args: Sequence[str]) -> None:
        if self.manager == "systemd":
            if extra_args:
                self.runner.run(["systemctl", "set-environment", "MYSQLD_OPTS=" + " ".join(extra_args)])
            try:
                self.runner.run(["systemctl", "start", self.unit])
            finally:
                if extra_args:
                    self.runner.run(["systemctl", "unset-environment", "MYSQLD_OPTS"])
        elif extra_args:
            # The init script cannot pass options: start the server the way it would, plus ours, detached.
            script = 'nohup "$0" "$@" </dev/null >/dev/null 2>&1 &'
            self.runner.run(["sh", "-c", script, self.program("mysqld_safe"), *extra_args])
        else:
            self._sysv("start")

    def _request_stop(self) -> None:
        if self.manager == "systemd":
            self.runner.run(["systemctl", "stop", self.unit], check=False)
        else:
            self._sysv("stop")

    def _sysv(self, action: str) -> None:
        # invoke-rc.d where Debian has it; the script itself when a policy-rc.d forbids (101), as in chroots.
        # Without --disclose-deny invoke-rc.d exits 0 on a refusal, and nothing would have started.
        if self.target.which("invoke-rc.d"):
            done = self.runner.run(
                ["invoke-rc.d", "--disclose-deny", self.unit, action], check=False, ok_codes=(0, 101)
            )
            if done.rc != 101:
                return
        self.runner.run([f"/etc/init.d/{self.unit}", action], check=action == "start")


def from_params(mysql: dict[str, Any], connection: Connection, runner: Runner) -> MysqlService:
    """Build the service from the runbook's `mysql` parameter mapping, on the target's connection."""
    kind = mysql.get("service", "systemd")
    datadir = str(mysql.get("datadir", "/var/lib/mysql"))
    sock = str(mysql.get("socket", "/run/mysqld/mysqld.sock"))
    pid = str(mysql["pid_file"]) if mysql.get("pid_file") else None
    port = int(mysql["port"]) if mysql.get("port") else None
    if kind == "sandbox":
        # The sandbox's paths are this machine's own (its logs lie outside the target tree).
        where = LocalConnection("/") if connection.kind == "local" else connection
        return SandboxMysql(
            datadir,
            sock,
            port,
            pid,
            runner,
            where,
            log_file=mysql.get("log_file"),
            tmpdir=mysql.get("tmpdir"),
            user=str(mysql.get("user") or "mysql"),
        )
    if kind in ("systemd", "sysv"):
        unit = mysql.get("unit") or ("mariadb" if kind == "systemd" else "mysql")
        return SystemMysql(datadir, sock, port, pid, runner, connection, manager=kind, unit=unit)
    raise ValueError(f"mysql.service must be systemd, sysv or sandbox, not {kind!r}")
