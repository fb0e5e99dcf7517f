"""The sandbox world's target inside a lab server (ispcp_lib/lab/host.py): a real system tree with its
own sshd, MariaDB and Postfix, so the whole runbook can run against it over ssh, chroot and local.

    target = start_ssh_target("modern")                         # or the ssh_target fixture
    world = build_world(workdir, "small", target_root=target.root, system_root=True)
    server_world.attach(world, target.server, target.ssh, connection="ssh")
    world.start()                                               # MariaDB, inside the server
    with server_world.services(world) as service_params:        # Postfix inside, dnsmasq here
        params = {**world.runbook_params(), **service_params}   # target: {connection: ssh, ...}
    world.stop()

How the world goes into a system root (`build_world(..., target_root=root, system_root=True)`):
- its accounts are merged into the root's passwd/shadow/group/gshadow: every line there stays (sshd's
  privilege-separation user, the image's service accounts), and mysql/postfix carry the ROOT's ids;
- the root's own login.defs, hostname and os-release stay: the image is a real Debian 12 like the
  world's new server, so the recovery's distribution check compares the truth (a world os-release
  written through the image's symlink would rewrite /usr/lib/os-release);
- the target datadir replaces the image's /var/lib/mysql. It is installed with this machine's
  MariaDB tools (the same release as the image's, checked), then owned by the root's mysql ids;
- Postfix gets the world's "fresh MTA" main.cf with the server's own layout (/var/spool/postfix,
  /var/lib/postfix, /var/log/maillog, smtpd on 127.0.0.1:25 of the server's network);
- MariaDB logs to /var/log/mysql/error.log (the image sends it to a syslog the server does not run).

Services follow the connection the world is reached by (`attach(..., connection=)`), because each
connection acts on them differently:
- ssh, chroot: MariaDB and Postfix run inside the server, started and stopped with its own init
  scripts through `host.exec` (the same scripts `mysql.service: sysv` uses through the connection);
- local: the runbook runs its commands on this machine against host paths under the root, so its
  MariaDB is a private host process on the root's datadir (as the root's mysql uid) and its Postfix
  the sandbox's private one (config in the root, queue in the workdir): stopping an in-server service
  from this machine by pid would reach the wrong pid namespace, and `postfix` run here would use this
  machine's queue.
The stand-ins for ispcp-update and ispcp-rqst-mngr are Python, which the server lacks: the world has
Perl shims at their paths, and services() runs their relay here (standin_relay), for every connection.
DNS: dnsmasq always runs here. It stands for the internet's DNS, which the controller asks (the
DNS table resolves on the controller with dnspython); the recovered server is not a DNS server.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ispcp_lib.core.connection import LocalConnection, SshConnection
from ispcp_lib.core.connection import SshTarget as ConnSshTarget
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.fileops import fingerprint
from ispcp_lib.core.runner import Runner
from ispcp_lib.lab.host import NamespaceHost, SshServer, SshTarget
from ispcp_lib.mysql.service import SandboxMysql, server_version
from ispcp_lib.sandbox import accounts, dns, postfix, private_mysql, standin_relay
from ispcp_lib.sandbox.files import put_file

if TYPE_CHECKING:
    from ispcp_lib.sandbox.world import World

CONNECTIONS = ("local", "chroot", "ssh")
BACKUP_LOCATIONS = ("controller", "target")
BACKUP_ON_TARGET = "/srv/backup"  # where backup_location: target puts the backup inside the server
STATE_ON_TARGET = "/var/lib/ispcp-recovery"  # the runbook's default state dir on the target
# The server's own paths, as its /etc/mysql/mariadb.conf.d/50-server.cnf has them.
SERVER_MYSQL = {
    "service": "sysv",
    "unit": "mariadb",
    "datadir": "/var/lib/mysql",
    "socket": "/run/mysqld/mysqld.sock",
    "pid_file": "/run/mysqld/mysqld.pid",
}
MYSQL_LOG_CONF = "/etc/mysql/mariadb.conf.d/90-sandbox-errorlog.cnf"
MYSQL_ERROR_LOG = "/var/log/mysql/error.log"
SMTP_PORT = 25
START_TIMEOUT = 60.0
# Parts of a system tree that change with no action of the recovery (logs, runtime files, caches, the
# services' queues, ssh's per-run host keys) or that the tests add (the backup copy, the state dir).
VOLATILE_SYSTEM_PATHS = (
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "var/tmp",
    "var/log",
    "var/cache",
    "var/spool/postfix",
    "var/lib/postfix",
    "root/.ssh",
    "etc/ssh",
    "etc/hosts",  # the lab writes the server's own address there at each start
    BACKUP_ON_TARGET.lstrip("/"),
    STATE_ON_TARGET.lstrip("/"),
)
# Datadir files whose bytes hold the server's own state, whichever statements ran: MyISAM and Aria index
# headers (open and write counters), InnoDB's persistent statistics (last update times). The rows are in
# .MYD/.MAD and the tables' own .ibd, compared byte for byte. A .frm written by CREATE TABLE (the
# tablespace import re-creates InnoDB tables) carries a fresh table-definition UUID (MariaDB's
# tabledef_version), so two identical runs never write the same bytes there.
SERVER_STATE_FILES = (
    "*.MYI",
    "*.MAI",
    "*.frm",
    "*/mysql/innodb_index_stats.ibd",
    "*/mysql/innodb_table_stats.ibd",
)
# Postfix settings that only say where an instance keeps its files and listens: the local run's
# private instance differs there by design, nothing the recovery changes.
POSTFIX_LAYOUT_KEYS = (
    "queue_directory",
    "data_directory",
    "maillog_file",
    "maillog_file_prefixes",
    "inet_interfaces",
)


# -- building into a root -----------------------------------------------------------------------------


def _dpkg_version(status_file: Path, package: str) -> str | None:
    try:
        text = status_file.read_text()
    except OSError:
        return None
    for block in text.split("\n\n"):
        if f"\nPackage: {package}\n" in f"\n{block}\n" and "Status: install ok installed" in block:
            for line in block.splitlines():
                if line.startswith("Version: "):
                    return line.split(" ", 1)[1]
    return None


def _release(version: str | None) -> str | None:
    """'1:10.11.19-0+deb12u1' -> '10.11' (the on-disk format of a datadir follows the major release)."""
    if not version:
        return None
    upstream = version.split(":", 1)[-1].split("-", 1)[0]
    return ".".join(upstream.split(".")[:2])


def check_same_mariadb(root: Path) -> None:
    """The datadir is installed with this machine's tools for the root's server: same release required."""
    here = _release(_dpkg_version(Path("/var/lib/dpkg/status"), "mariadb-server"))
    there = _release(_dpkg_version(Path(root) / "var/lib/dpkg/status", "mariadb-server"))
    if there is None or here != there:
        raise PreconditionFailed(
            "system root",
            f"its MariaDB release ({there or 'none installed'}) is not this machine's ({here or 'none'})",
            "build the world into a root of the same Debian release with mariadb-server installed",
            path=str(root),
        )


def root_ids(root: Path, name: str) -> tuple[int, int]:
    """uid of user `name` and gid of group `name` in the root's own account files."""
    etc = Path(root) / "etc"
    return accounts.host_ids(name, etc / "passwd", etc / "group")


def adopt_datadir(root: Path, params: dict[str, Any]) -> None:
    """After the build: the datadir and socket dir belong to the root's mysql ids, no build leftovers."""
    uid, gid = root_ids(root, "mysql")
    run = Path(params["socket"]).parent
    for leftover in (Path(params["socket"]), Path(params["pid_file"])):
        leftover.unlink(missing_ok=True)
    for top in (Path(params["datadir"]), run):
        subprocess.run(["chown", "-R", f"{uid}:{gid}", "--", str(top)], check=True)


def write_service_config(root: Path, hostname: str) -> None:
    """Postfix's fresh-MTA main.cf with the server's own layout; MariaDB's error log in a file."""
    main = postfix.MAIN_CF.format(
        hostname=hostname, queue="/var/spool/postfix", data="/var/lib/postfix", spool="/var/log"
    )
    put_file(root, "/etc/postfix/main.cf", main)
    put_file(
        root,
        MYSQL_LOG_CONF,
        f"# sandbox (test scaffolding): no syslog in the lab server\n[mysqld]\nlog_error = {MYSQL_ERROR_LOG}\n",
    )
    uid, gid = root_ids(root, "mysql")
    log_dir = Path(root) / MYSQL_ERROR_LOG.lstrip("/").rsplit("/", 1)[0]
    log_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", f"{uid}:{gid}", str(log_dir)], check=True)


# -- the world's server ---------------------------------------------------------------------------------


def attach(world: World, host: NamespaceHost, ssh: SshServer | None = None, connection: str = "ssh") -> None:
    """Record the server the world's target lives in and the connection the runbook will reach it by."""
    if connection not in CONNECTIONS:
        raise ValueError(f"connection must be one of {CONNECTIONS}, not {connection!r}")
    if Path(world.target_root) != host.root:
        raise PreconditionFailed(
            "sandbox world",
            "its target is not this server's root",
            "build it with target_root=host.root",
            path=str(world.target_root),
        )
    if connection == "ssh" and ssh is None:
        raise ValueError("connection ssh needs the server's sshd (host.start_sshd())")
    world.manifest["server"] = {
        "state_dir": str(host.state_dir),
        "connection": connection,
        "ssh": None if ssh is None else {k: str(v) if isinstance(v, Path) else v for k, v in ssh.__dict__.items()},
    }
    world.save()


def in_server(world: World) -> bool:
    return bool(world.manifest.get("server"))


def host_of(world: World) -> NamespaceHost:
    return NamespaceHost.attach(Path(world.manifest["server"]["state_dir"]))


def connection_of(world: World) -> str:
    return str(world.manifest["server"]["connection"])


def _root(world: World) -> Path:
    return Path(world.target_root)


def _socket(world: World) -> Path:
    return _root(world) / SERVER_MYSQL["socket"].lstrip("/")


def host_mysql(world: World) -> SandboxMysql:
    """For local runs: a private mariadbd on this machine over the root's datadir, as the root's mysql uid."""
    if world._mysql is None:
        uid, _gid = root_ids(_root(world), "mysql")
        p = world.mysql_params
        world._mysql = SandboxMysql(
            str(p["datadir"]),
            str(p["socket"]),
            None,
            str(p["pid_file"]),
            Runner(),
            log_file=str(p["log_file"]),
            user=str(uid),
        )
    return world._mysql


def start_mysql(world: World) -> None:
    if connection_of(world) == "local":
        _start_host_mysql(world)
        return
    host_of(world).exec(["/etc/init.d/mariadb", "start"], timeout=START_TIMEOUT + 30)
    _wait(lambda: _greeting(world) is not None, "MariaDB inside the server", world)


def _start_host_mysql(world: World) -> None:
    srv = host_mysql(world)
    uid, gid = root_ids(_root(world), "mysql")
    tmpdir = world.mysql_tmpdir
    tmpdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["chown", f"{uid}:{gid}", str(tmpdir)], check=True)
    log = Path(world.mysql_params["log_file"])  # the service's paths are the target's strings
    private_mysql.prepare_log(log)
    subprocess.run(["chown", f"{uid}:{gid}", str(log)], check=True)
    paths = [Path(srv.datadir), Path(srv.socket).parent, log.parent, tmpdir]
    private_mysql.with_reachable(lambda: srv.start([f"--tmpdir={tmpdir}"]), paths)


def stop_mysql(world: World) -> None:
    if world._mysql is not None or connection_of(world) == "local":
        host_mysql(world).stop()
    if _greeting(world) is None:
        return
    # The runbook may have restarted it through the connection; the init script finds it either way.
    host_of(world).exec(["/etc/init.d/mariadb", "stop"], timeout=180, check=False)
    _wait(lambda: _greeting(world) is None, "MariaDB inside the server to stop", world)


def mysql_running(world: World) -> bool:
    return _greeting(world) is not None


def _wait(condition: Any, what: str, world: World, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    log = _root(world) / MYSQL_ERROR_LOG.lstrip("/")
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise PreconditionFailed(
        "sandbox server", f"timed out waiting for {what}\n{tail}", "read the logs in the server's /var/log"
    )


def postfix_running(world: World) -> bool:
    return host_of(world).exec(["postfix", "status"], check=False).returncode == 0


@contextlib.contextmanager
def services(world: World) -> Iterator[dict[str, Any]]:
    """Postfix (inside the server, or the private one for local runs) and dnsmasq (here); yields their params."""
    params: dict[str, Any] = {}
    started: list[str] = []
    relay = standin_relay.Relay(_root(world))
    try:
        relay.start()  # the stand-ins' shims in the server call it, whichever connection runs them
        if connection_of(world) == "local":
            params.update(postfix.start_for_world(world))
        else:
            host = host_of(world)
            host.exec(["/etc/init.d/postfix", "start"], timeout=120)
            _wait(lambda: postfix_running(world), "Postfix inside the server", world)
            params.update(postfix_config_dir="/etc/postfix", postfix_smtp_port=SMTP_PORT)
        started.append("postfix")
        params.update(dns.start_for_world(world))
        started.append("dns")
        yield params
    finally:
        if "dns" in started:
            dns.stop_for_world(world)
        if "postfix" in started:
            if connection_of(world) == "local":
                postfix.stop_for_world(world)
            else:
                host_of(world).exec(["/etc/init.d/postfix", "stop"], timeout=120, check=False)
        relay.stop()


# -- the runbook's parameters ----------------------------------------------------------------------------


def copy_backup_into_server(world: World) -> str:
    """backup_location: target: the backup copied into the server once (rsync -a keeps owners and links)."""
    dest = _root(world) / BACKUP_ON_TARGET.lstrip("/")
    if not (dest / "etc").is_dir():
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", f"{world.backup_root}/", f"{dest}/"], check=True)
    return BACKUP_ON_TARGET


def runbook_params(world: World, connection: str | None = None, backup_location: str = "controller") -> dict[str, Any]:
    """The papermill parameters for this world over `connection` (default: the one it was attached for)."""
    connection = connection or connection_of(world)
    if connection not in CONNECTIONS:
        raise ValueError(f"connection must be one of {CONNECTIONS}, not {connection!r}")
    if backup_location not in BACKUP_LOCATIONS:
        raise ValueError(f"backup_location must be one of {BACKUP_LOCATIONS}, not {backup_location!r}")
    backup = copy_backup_into_server(world) if backup_location == "target" else str(world.backup_root)
    common = {"backup_root": backup, "backup_location": backup_location, "sandbox": True}
    if connection == "local":
        uid, _gid = root_ids(_root(world), "mysql")
        # A free loopback port: the parameter spec wants one, and the image's 3306 may be taken here.
        port = private_mysql.free_port()
        mysql = {**world.mysql_params, "port": port, "tmpdir": str(world.mysql_tmpdir), "user": str(uid)}
        return {
            **common,
            "target": {"connection": "local"},
            "target_root": str(world.target_root),
            "state_dir": str(world.state_dir),
            "mysql": mysql,
        }
    if connection == "chroot":
        target: dict[str, Any] = {"connection": "chroot", "root": str(world.target_root)}
    else:
        ssh = world.manifest["server"].get("ssh")
        if not ssh:
            raise PreconditionFailed(
                "sandbox world", "was attached without an sshd", "attach(world, host, host.start_sshd())"
            )
        target = {
            "connection": "ssh",
            **{k: ssh[k] for k in ("host", "port", "user", "identity_file", "known_hosts")},
            "ssh_options": list(ssh["ssh_options"]),
        }
    return {**common, "target": target, "state_dir": STATE_ON_TARGET, "mysql": dict(SERVER_MYSQL)}


# -- end states ------------------------------------------------------------------------------------------


def stable_system_fingerprint(world: World) -> dict[str, tuple]:
    """fingerprint of the server's tree minus VOLATILE_SYSTEM_PATHS, the world's state dir and the
    datadir's server-internal files; Postfix's config compared without its layout settings."""
    from ispcp_lib.sandbox.world import VOLATILE_DATADIR_FILES

    root = _root(world)
    exclude = [root / p for p in VOLATILE_SYSTEM_PATHS] + [world.state_dir]
    fp = fingerprint(root, exclude=exclude)
    datadir = SERVER_MYSQL["datadir"].lstrip("/")
    out = {
        k: v
        for k, v in fp.items()
        if not (
            str(Path(k).parent) == datadir and any(fnmatch.fnmatch(Path(k).name, p) for p in VOLATILE_DATADIR_FILES)
        )
    }
    for name in out:  # present, with owner and mode, but not by content
        if name.startswith(datadir + "/") and any(fnmatch.fnmatch(name, p) for p in SERVER_STATE_FILES):
            out[name] = out[name][:-1]
    for name in ("etc/postfix/main.cf", "etc/postfix/master.cf"):
        if name in out:
            out[name] = (*out[name][:-1], _postfix_settings(root / name))
    return out


def _postfix_settings(path: Path) -> str:
    """The file's lines minus layout settings and the smtpd listener lines (its port is the layout's)."""
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        key = line.split("=", 1)[0].strip()
        if key in POSTFIX_LAYOUT_KEYS or postfix._SMTPD_LINE.match(line.lstrip("#")):
            continue
        keep.append(line)
    return "\n".join(keep)


# -- one built world, many servers ------------------------------------------------------------------------


def freeze(world: World, host: NamespaceHost) -> Path:
    """Stop the world and its server, keeping the server's upper dir: a layer with the built world in it.

    Servers started over [layer, *image layers] (thaw) all begin from the same bytes, so their end
    states can be compared file by file. The layer stays on the lab cache's file system (an overlay's
    whiteouts and xattrs would not survive a copy elsewhere); remove host.state_dir when done.
    """
    world.stop()
    host.stop(keep_upper=True)
    return host.upper


def thaw(
    world: World,
    layer: Path,
    image_layers: list[Path],
    dest: Path,
    *,
    name: str,
    address: str,
    profile: str | None,
    connection: str,
) -> tuple[World, NamespaceHost, SshServer | None]:
    """A server over the frozen layer (with its sshd when profile is given) and a copy of the world's workdir
    attached to it. The caller stops the server (host.stop()) and removes dest."""
    from ispcp_lib.sandbox.world import World, _rebase

    host = NamespaceHost.start([layer, *image_layers], name=name, address=address)
    try:
        ssh = host.start_sshd(profile) if profile else None
        subprocess.run(["cp", "-a", "--", str(world.workdir), str(dest)], check=True)
        manifest = _rebase(
            _rebase(world.manifest, str(world.workdir), str(dest)), str(world.target_root), str(host.root)
        )
        copy = World(
            workdir=dest,
            backup_root=Path(manifest["paths"]["backup_root"]),
            target_root=host.root,
            state_dir=Path(manifest["paths"]["state_dir"]),
            manifest=manifest,
            mysql_params=dict(manifest["mysql"]),
            secrets=list(manifest["secrets"]),
        )
        attach(copy, host, ssh, connection)
        return copy, host, ssh
    except BaseException:
        host.stop()
        raise


# -- the whole recovery -----------------------------------------------------------------------------------


def connection_ports_missing() -> str | None:
    """Why the runbook cannot be pointed at a target connection yet (None: it can).

    Checked before any run over ssh or chroot: a runbook without the `target` parameter would take the
    missing target_root for "/" and act on this machine.
    """
    import inspect

    from ispcp_lib.mysql import service as mysql_service
    from ispcp_lib.runbook.parameters import RUN_PARAMETERS

    if "target" not in {p.name for p in RUN_PARAMETERS}:
        return "the runbook has no target parameter"
    if not {"connection", "target"} & set(inspect.signature(mysql_service.from_params).parameters):
        return "MySQL service control does not go through the connection"
    return None


def run_recovery(world: World, reports: Path, **params: Any) -> tuple[int, dict[str, Any]]:
    """The whole runbook (apply) against the running world and its services; returns (exit code, summary).

    The world's MariaDB is left as the recovery leaves it (the caller stops the world).
    """
    from ispcp_lib.runbook.cli import run_runbook

    with services(world) as service_params:
        rc, html_path = run_runbook(
            {**world.runbook_params(), **service_params, "apply": True, **params}, reports, log_output=False
        )
    return rc, json.loads(html_path.with_suffix(".json").read_text())


def ssh_connection(target: SshTarget) -> SshConnection:
    """The recovery's own SSH connection to a lab server (strict host key, its key, its profile's options)."""
    return SshConnection(
        ConnSshTarget(
            host=target.host,
            port=target.port,
            user=target.user,
            identity_file=str(target.identity_file),
            known_hosts=str(target.known_hosts),
            ssh_options=list(target.ssh_options),
        )
    )


def _greeting(world: World) -> str | None:
    """The version the server inside greets with on its socket (read from this machine), None if silent."""
    return server_version(LocalConnection("/"), str(_socket(world)))
