"""The new server: a fresh Debian with MariaDB and a fresh "dummy" ispCP, as the guide asks for.

Its MariaDB really runs here (as the host's mysql user), so its mysql/postfix accounts carry the
host's ids. It has no vu*/vmail accounts and no customer data yet: restoring those is the recovery.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ispcp_lib.core.runner import Runner
from ispcp_lib.ispcp import engine_sleep
from ispcp_lib.ispcp.keyfiles import LAYOUTS, KeySet, render_keyfile
from ispcp_lib.sandbox import accounts, ispcp_files, private_mysql, standin_relay
from ispcp_lib.sandbox.files import put_file
from ispcp_lib.sandbox.scenario import Scenario

ENGINE_DIR = "/var/www/ispcp/engine"


def new_accounts(etc: Path = Path("/etc")) -> accounts.Accounts:
    """The new server's accounts; mysql and postfix carry the ids of the system whose services run them
    (this host's for the sandbox's private services, a lab server's own for a world built into it)."""
    acc = accounts.base_accounts()
    mysql_uid, mysql_gid = accounts.host_ids("mysql", etc / "passwd", etc / "group")
    postfix_uid, postfix_gid = accounts.host_ids("postfix", etc / "passwd", etc / "group")
    acc.users.append(("mysql", mysql_uid, mysql_gid, "MySQL Server,,,", "/nonexistent", "/bin/false"))
    acc.users.append(("postfix", postfix_uid, postfix_gid, "", "/var/spool/postfix", "/usr/sbin/nologin"))
    acc.groups += [("mysql", mysql_gid, []), ("postfix", postfix_gid, [])]
    postdrop = accounts.host_gid("postdrop", etc / "group")
    if postdrop is not None:  # Postfix's setgid group; mirror it when the host has it
        acc.groups.append(("postdrop", postdrop, []))
    return acc


def write_system_files(target: Path, sc: Scenario, system_root: bool = False) -> None:
    """system_root: target is an installed system (a lab server's root); its accounts are merged into,
    and its own login.defs, os-release and hostname stay (they describe that system truthfully)."""
    if system_root:
        new_accounts(target / "etc").merge_into(target / "etc")
    else:
        new_accounts().write(target / "etc")
        # useradd/groupadd --prefix read the prefix's login.defs: give them the host's.
        shutil.copy2("/etc/login.defs", target / "etc/login.defs")
        put_file(target, "/etc/os-release", ispcp_files.os_release())
        put_file(target, "/etc/hostname", sc.new_hostname + "\n")
    put_file(target, "/etc/mysql/debian.cnf", ispcp_files.debian_cnf(sc.new.debian_sys_maint), 0o600)
    for logical in ("/var/www/virtual", "/var/mail/virtual"):
        path = target / logical.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, 0, 0)


def write_dummy_ispcp(target: Path, sc: Scenario, version: str, system_root: bool = False) -> None:
    """The fresh ispCP install's files: config, key files, ProFTPd config and engine managers.

    In a system root (a lab server, no Python there) the request manager is standin_relay's Perl shim."""
    new = sc.new
    put_file(
        target,
        "/etc/ispcp/ispcp.conf",
        ispcp_files.ispcp_conf(version, sc.new_hostname, sc.new_ip, new.root_password, new.key, new.iv),
        0o640,
    )
    keys = KeySet(new.key, new.iv)
    for layout in ispcp_files.key_layouts(version):
        mode, gid = (0o640, 33) if layout == "php" else (0o600, 0)
        put_file(target, LAYOUTS[layout], render_keyfile(layout, keys), mode, 0, gid)
    proftpd = ispcp_files.proftpd_conf(sc.new_hostname, new.vftp)
    put_file(target, "/etc/proftpd.conf", proftpd, 0o600)
    put_file(target, "/etc/ispcp/proftpd/working/proftpd.conf", proftpd, 0o600)
    for name in engine_sleep.MANAGERS:
        put_file(target, f"{ENGINE_DIR}/{name}", ispcp_files.engine_manager(name, version), 0o700)
    if system_root:
        standin_relay.install_shim(target, "ispcp-rqst-mngr")
    else:
        put_file(target, f"{ENGINE_DIR}/ispcp-rqst-mngr", ispcp_files.request_manager(), 0o700)
    (target / ENGINE_DIR.lstrip("/") / "setup").mkdir(parents=True, exist_ok=True)


def target_mysql_params(workdir: Path, target: Path, port: int) -> dict[str, Any]:
    run = target / "run/mysqld"
    return {
        "service": "sandbox",
        "datadir": str(target / "var/lib/mysql"),
        "socket": str(run / "mysqld.sock"),
        "port": port,
        "pid_file": str(run / "mysqld.pid"),
        "log_file": str(workdir / "logs" / "target-mariadbd.err"),
    }


def build_target_database(params: dict[str, Any], sc: Scenario, runner: Runner, dummy: bool, tmpdir: Path) -> str:
    """Install the datadir, load ispCP's schema (seed rows only) and set the new credentials.

    Returns the server version. The instance is stopped again before returning.
    """
    datadir = Path(params["datadir"])
    datadir.parent.mkdir(parents=True, exist_ok=True)
    private_mysql.install_datadir(datadir, runner, tmpdir)
    # Socket only while building (no port to collide); the port is for the runbook's later starts.
    srv = private_mysql.instance(
        datadir, Path(params["socket"]), Path(params["pid_file"]), Path(params["log_file"]), None, runner
    )
    private_mysql.start(srv, tmpdir)
    try:
        if dummy:
            private_mysql.load_sql(srv.socket, private_mysql.schema_sql("ispcp"), runner)
        conn = srv.connect("root", None)
        try:
            private_mysql.create_service_accounts(
                conn, sc.new.root_password, sc.new.debian_sys_maint, sc.new.vftp if dummy else None
            )
        finally:
            conn.close()
        return private_mysql.server_version(datadir, srv)
    finally:
        srv.stop()
