"""MySQL/MariaDB service control: one interface for systemd, sysvinit and the sandbox.

Stopping is always graceful: a shutdown request, then SIGTERM to the pid in the pid file.
Nothing here ever kills by process name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.runner import Runner

START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0


def server_binary() -> str:
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if found:
            return found
    raise PreconditionFailed("MySQL server", "no mariadbd or mysqld binary found", "apt-get install mariadb-server")


def handshake_version(sock: Path | None, port: int | None = None, host: str = "127.0.0.1") -> str | None:
    """The server version from the protocol greeting; needs no credentials. None if nothing answers."""
    try:
        if sock is not None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = str(sock)
        elif port is not None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, port)
        else:
            return None
        s.settimeout(2.0)
        with s:
            s.connect(target)
            packet = s.recv(512)
    except OSError:
        return None
    if len(packet) < 6 or packet[4] != 10:  # protocol version 10
        return None
    version = packet[5:].split(b"\0", 1)[0].decode("ascii", "replace")
    # MariaDB greets with "5.5.5-10.11.6-MariaDB..." for the sake of old replication clients.
    return version.removeprefix("5.5.5-") if "mariadb" in version.lower() else version


def is_mysql_server(pid: int) -> bool:
    """Whether pid runs a MySQL/MariaDB server: a stale pid file may name a reused pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            exe = fh.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(exe).decode(errors="replace") in ("mariadbd", "mysqld", "mysqld-debug")


def pid_alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class MysqlService(ABC):
    datadir: Path
    socket: Path
    port: int | None = None
    pid_file: Path | None = None
    runner: Runner = field(default_factory=Runner)

    @abstractmethod
    def _start(self, extra_args: Sequence[str]) -> None: ...

    @abstractmethod
    def _request_stop(self) -> None: ...

    @property
    def kind(self) -> str:
        return type(self).__name__

    def status(self) -> bool:
        return handshake_version(self.socket) is not None

    def version(self) -> str | None:
        return handshake_version(self.socket)

    def start(self, extra_args: Sequence[str] = ()) -> None:
        if self.status():
            return
        self._start(list(extra_args))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.status():
                return
            if self._died():
                break
            time.sleep(0.2)
        self._abandon_start()
        raise PreconditionFailed(
            "MySQL server",
            f"did not come up on {self.socket}. Error log tail:\n{self.error_log_tail()}",
            "read the error log above; the previous data directories are kept under the state dir",
        )

    def _abandon_start(self) -> None:  # noqa: B027 - a hook; only the sandbox owns its server process
        """A start that timed out: nothing may keep running half-started (see SandboxMysql)."""

    def stop(self) -> None:
        if not self.status() and not self._pid():
            return
        pid = self._pid()
        self._request_stop()
        if pid and pid_alive(pid) and is_mysql_server(pid):
            os.kill(pid, signal.SIGTERM)  # mysqld treats SIGTERM as a normal shutdown
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not (pid and pid_alive(pid)) and not self.status():
                return
            time.sleep(0.2)
        raise PreconditionFailed(
            "MySQL server",
            f"pid {pid} did not stop within {STOP_TIMEOUT:.0f} s",
            "look at the error log; never kill -9 a server with open tables",
        )

    def restart(self, extra_args: Sequence[str] = ()) -> None:
        self.stop()
        self.start(extra_args)

    def connect(self, user: str, password: str | None, database: str | None = None, **kw: Any) -> Any:
        # A Unix socket needs no TLS; pymysql's default "preferred" TLS builds a CA context per connection (~20 ms).
        kw.setdefault("ssl_disabled", True)
        return pymysql.connect(
            unix_socket=str(self.socket),
            user=user,
            password=password or "",
            database=database,
            connect_timeout=10,
            autocommit=True,
            charset="utf8mb4",
            **kw,
        )

    def can_login(self, user: str, password: str | None, database: str | None = None) -> str | None:
        """None when the login works, else the server's reason."""
        try:
            self.connect(user, password, database).close()
            return None
        except pymysql.MySQLError as exc:
            return str(exc.args[1] if len(exc.args) > 1 else exc)

    def effective_pid_file(self) -> Path:
        return self.pid_file or self.datadir / "mysqld.pid"

    def _pid(self) -> int | None:
        try:
            return int(self.effective_pid_file().read_text().strip())
        except (OSError, ValueError):
            return None

    def _died(self) -> bool:
        return False

    def error_log(self) -> Path | None:
        return None

    def error_log_tail(self, lines: int = 20) -> str:
        log = self.error_log()
        if log is None or not log.exists():
            return "(no error log found)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class SandboxMysql(MysqlService):
    """A private mariadbd: own datadir, socket, loopback port and pid file."""

    log_file: Path | None = None
    user: str = "mysql"
    # A private --tmpdir: in a shared /tmp, temporary-table names of servers in different PID
    # namespaces collide and one server deletes the other's files.
    tmpdir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def error_log(self) -> Path:
        return self.log_file or self.datadir.parent / "mariadbd.err"

    def _start(self, extra_args: Sequence[str]) -> None:
        networking = [f"--port={self.port}", "--bind-address=127.0.0.1"] if self.port else ["--skip-networking"]
        if "--skip-networking" in extra_args:
            networking = []
        tmp = []
        if self.tmpdir is not None and not any(a.startswith("--tmpdir") for a in extra_args):
            import pwd

            self.tmpdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            account = pwd.getpwnam(self.user)
            os.chown(self.tmpdir, account.pw_uid, account.pw_gid)
            tmp = [f"--tmpdir={self.tmpdir}"]
        argv = [
            server_binary(),
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
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
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
    """The distribution's service, through systemd or the sysvinit script."""

    manager: str = "systemd"  # or "sysv"
    unit: str = "mariadb"
    log_path: Path | None = None

    def error_log(self) -> Path | None:
        return self.log_path or Path("/var/log/mysql/error.log")

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
            # The init script cannot pass options: start the server the way it would, plus ours.
            subprocess.Popen(
                ["mysqld_safe", *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        else:
            self.runner.run([f"/etc/init.d/{self.unit}", "start"])

    def _request_stop(self) -> None:
        if self.manager == "systemd":
            self.runner.run(["systemctl", "stop", self.unit], check=False)
        else:
            self.runner.run([f"/etc/init.d/{self.unit}", "stop"], check=False)


def from_params(mysql: dict[str, Any], target_root: Path, runner: Runner) -> MysqlService:
    """Build the service from the runbook's `mysql` parameter mapping."""
    kind = mysql.get("service", "systemd")
    # Paths in the mapping are as the host sees them (a sandbox's datadir lies under its target root).
    datadir = Path(mysql.get("datadir", "/var/lib/mysql"))
    sock = Path(mysql.get("socket", "/run/mysqld/mysqld.sock"))
    pid = Path(mysql["pid_file"]) if mysql.get("pid_file") else None
    port = int(mysql["port"]) if mysql.get("port") else None
    if kind == "sandbox":
        log = Path(mysql["log_file"]) if mysql.get("log_file") else None
        tmpdir = Path(mysql["tmpdir"]) if mysql.get("tmpdir") else None
        return SandboxMysql(datadir, sock, port, pid, runner, log_file=log, tmpdir=tmpdir)
    if kind in ("systemd", "sysv"):
        return SystemMysql(datadir, sock, port, pid, runner, manager=kind, unit=mysql.get("unit", "mariadb"))
    raise ValueError(f"mysql.service must be systemd, sysv or sandbox, not {kind!r}")
