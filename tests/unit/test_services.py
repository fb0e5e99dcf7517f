"""The service checks of ispcp_install_check: CMD_* entries against what a system tree holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.context import Context
from ispcp_lib.facts import services as sv
from ispcp_lib.facts.ispcp_conf import IspcpConf


def put(where: Path | LocalConnection, logical: str, text: str = "#!/bin/sh\n") -> Path:
    root = where.root if isinstance(where, LocalConnection) else where
    path = root / logical.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> sv.Roots:
    """A target tree and a separate 'host' tree, so nothing depends on what this machine has installed."""
    (tmp_path / "target").mkdir()
    (tmp_path / "host").mkdir()
    return sv.Roots(LocalConnection(tmp_path / "target"), LocalConnection(tmp_path / "host"))


def test_installed_service_under_the_target_root_is_ok(roots: sv.Roots) -> None:
    put(roots.target, "/etc/init.d/proftpd")
    put(roots.target, "/usr/sbin/proftpd")
    check = sv.check_service("CMD_FTPD", "FTP server", "/etc/init.d/proftpd", roots)
    assert check.state == "ok" and not check.problem
    assert check.command_at == ("/etc/init.d/proftpd", "target")
    assert check.row()["where"] == "target root"
    assert "/usr/sbin/proftpd (target)" in check.row()["found at"]


def test_missing_service_names_the_debian_package(roots: sv.Roots) -> None:
    check = sv.check_service("CMD_HTTPD", "web server", "/usr/sbin/apache2ctl", roots)
    assert check.state == "missing" and check.problem
    assert check.package == "apache2"
    assert check.row()["package to install"] == "apache2"
    named = sv.check_service("CMD_NAMED", "DNS server", "/etc/init.d/bind9", roots)
    assert (named.state, named.package) == ("missing", "bind9")
    ftp = sv.check_service("CMD_FTPD", "FTP server", "/etc/init.d/proftpd", roots)
    assert "proftpd-mod-mysql" in ftp.package  # ispCP's FTP logins live in MySQL


def test_installed_program_without_the_configured_command_is_a_mismatch(roots: sv.Roots) -> None:
    # Apache's binary is there but not apache2ctl, the path ispcp-update calls.
    put(roots.target, "/usr/sbin/apache2")
    check = sv.check_service("CMD_HTTPD", "web server", "/usr/sbin/apache2ctl", roots)
    assert check.state == "mismatch"
    assert "/usr/sbin/apache2ctl does not exist" in check.detail and "CMD_HTTPD" in check.detail
    assert check.package == "apache2"


def test_systemd_unit_alone_counts_as_installed(roots: sv.Roots) -> None:
    put(roots.target, "/lib/systemd/system/named.service", "[Unit]\n")
    check = sv.check_service("CMD_NAMED", "DNS server", "/etc/init.d/bind9", roots)
    assert check.state == "mismatch"  # installed, yet the init script ispCP calls is not there
    assert check.presence.found == [("/lib/systemd/system/named.service", "target")]


def test_disabled_and_unknown_commands(roots: sv.Roots) -> None:
    off = sv.check_service("CMD_AMAVIS", "filter", "no", roots)
    assert off.state == "disabled" and not off.problem
    unknown = sv.check_service("CMD_NAMED", "DNS server", "/etc/init.d/nsd", roots)
    assert unknown.state == "unknown" and unknown.problem
    assert unknown.package == "apt-file search /etc/init.d/nsd"
    put(roots.target, "/etc/init.d/nsd")
    fresh = sv.Roots(roots.target, roots.host)  # a Roots remembers what it saw: a new look needs a new one
    assert sv.check_service("CMD_NAMED", "DNS server", "/etc/init.d/nsd", fresh).state == "ok"


def test_host_copy_counts_on_a_sandbox_target_and_says_so(roots: sv.Roots) -> None:
    put(roots.host, "/etc/init.d/postfix")
    put(roots.host, "/usr/sbin/postfix")
    check = sv.check_service("CMD_MTA", "mail transfer agent", "/etc/init.d/postfix", roots)
    assert check.state == "ok"
    assert check.command_at == ("/etc/init.d/postfix", "host")
    assert check.row()["where"] == "host only (not under the target root)"
    # Only the built-in sandbox runs this machine's programs; any other target has no second place to look.
    ctx = Context(target_root=roots.target.root, backup_root=None, state_dir=roots.target.root, run_id="t")
    assert sv.Roots.for_context(ctx).host is None
    ctx.sandbox = True
    assert str(sv.Roots.for_context(ctx).host.root) == "/"


def test_target_copy_is_preferred_over_the_host(roots: sv.Roots) -> None:
    put(roots.host, "/usr/sbin/postfix")
    put(roots.target, "/etc/init.d/postfix")
    pres = sv.presence(sv.POSTFIX, roots)
    assert pres.found[0] == ("/etc/init.d/postfix", "target")
    assert pres.where == "target root"


def test_dangling_symlink_under_target_is_found_without_following(roots: sv.Roots) -> None:
    link = roots.target.root / "etc/init.d/postfix"
    link.parent.mkdir(parents=True)
    os.symlink("/nonexistent/postfix", link)  # an absolute link means the target's path, not the host's
    assert roots.find("/etc/init.d/postfix") == ("/etc/init.d/postfix", "target")


def test_courier_configured_but_dovecot_installed(roots: sv.Roots) -> None:
    put(roots.target, "/usr/sbin/dovecot")
    conf = IspcpConf.parse("CMD_IMAP = /etc/init.d/courier-imap\nCMD_POP = /etc/init.d/courier-pop\n")
    checks = {c.key: c for c in sv.check_services(conf, roots)}
    assert checks["CMD_IMAP"].state == "mismatch"
    assert "Dovecot is installed instead" in checks["CMD_IMAP"].detail
    assert checks["CMD_POP"].state == "mismatch"


def test_dovecot_configured_but_absent_gets_its_packages(roots: sv.Roots) -> None:
    conf = IspcpConf.parse("CMD_IMAP = /etc/init.d/dovecot\n")
    checks = {c.key: c for c in sv.check_services(conf, roots)}
    assert checks["CMD_IMAP"].state == "missing"
    assert checks["CMD_IMAP"].package == "dovecot-imapd dovecot-pop3d"


def test_check_services_covers_every_service_key_with_defaults(roots: sv.Roots) -> None:
    conf = IspcpConf.parse("CMD_HTTPD = /usr/sbin/apache2ctl\nCMD_AMAVIS = no\n")
    checks = sv.check_services(conf, roots)
    assert [c.key for c in checks] == [k for k, _ in sv.SERVICE_KEYS]
    by_key = {c.key: c for c in checks}
    assert by_key["CMD_MTA"].command == "/etc/init.d/postfix"  # the shipped default fills the gap
    assert by_key["CMD_AMAVIS"].state == "disabled"
    assert by_key["CMD_ISPCPD"].package == sv.INSTALLER
    assert {c.state for c in checks} <= {"missing", "disabled"}


def test_program_map_by_basename() -> None:
    assert sv.program_for("/etc/init.d/courier-imap-ssl").package == "courier-imap"
    assert sv.program_for("/usr/sbin/apache2ctl") is sv.APACHE
    assert sv.program_for(" /etc/init.d/bind9 ") is sv.BIND
    assert sv.program_for("/opt/whatever") is None


def test_server_options_from_debian_config_layout(tmp_path: Path) -> None:
    put(
        tmp_path,
        "/etc/mysql/my.cnf",
        "[client-server]\nsocket = /run/mysqld/client.sock\n"
        "!includedir /etc/mysql/conf.d/\n!includedir /etc/mysql/mariadb.conf.d/\n",
    )
    put(
        tmp_path,
        "/etc/mysql/mariadb.conf.d/50-server.cnf",
        "# comment\n[server]\n[mysqld]\npid-file = /run/mysqld/mysqld.pid\nbasedir = /usr\n"
        "datadir                 = /var/lib/mysql\n[embedded]\ndatadir = /wrong\n",
    )
    put(
        tmp_path,
        "/etc/mysql/mariadb.conf.d/60-local.cnf",
        '[mariadb]\ndatadir = "/srv/mysql"\nskip-name-resolve\nsocket=/run/mysqld/custom.sock\n',
    )
    opts = sv.server_options_from_config(LocalConnection(tmp_path))
    assert opts["datadir"] == ("/srv/mysql", "/etc/mysql/mariadb.conf.d/60-local.cnf")  # later file wins
    assert opts["socket"] == ("/run/mysqld/custom.sock", "/etc/mysql/mariadb.conf.d/60-local.cnf")
    assert opts["pid-file"][0] == "/run/mysqld/mysqld.pid"
    assert "port" not in opts


def test_server_options_absent_config(tmp_path: Path) -> None:
    assert sv.server_options_from_config(LocalConnection(tmp_path)) == {}


def test_sysvinit_only_mysql_of_an_old_release_is_found(roots: sv.Roots) -> None:
    # Squeeze: MySQL 5.1, /etc/init.d/mysql and /usr/sbin/mysqld, no MariaDB names, no systemd units.
    put(roots.target, "/etc/init.d/mysql")
    put(roots.target, "/usr/sbin/mysqld")
    pres = sv.presence(sv.MARIADB, roots)
    assert pres.found == [("/usr/sbin/mysqld", "target"), ("/etc/init.d/mysql", "target")]


def test_control_argv_follows_the_init_system(tmp_path: Path) -> None:
    target = LocalConnection(tmp_path)
    sysv = (["invoke-rc.d", "mysql", "stop"], ["/etc/init.d/mysql", "stop"])  # invoke-rc.d where installed
    assert sv.control_argv(target, "mysql", "stop") in sysv
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert sv.control_argv(target, "mysql", "stop") == ["systemctl", "stop", "mysql"]
