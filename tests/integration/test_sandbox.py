"""The sandbox world itself: what the backup holds, what the target runs, and that nothing leaks."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import stat
import subprocess
from pathlib import Path

import pymysql
import pytest

from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import engine_sleep
from ispcp_lib.ispcp.crypto import decrypt_db_password
from ispcp_lib.ispcp.keyfiles import LAYOUTS, parse_keyfile
from ispcp_lib.sandbox.scenario import SCALES, make_scenario
from ispcp_lib.sandbox.world import World, build_world, mariadbd_pids_under, stable_fingerprint
from tests.helpers import fetch

# InnoDB tables inside mysql/ (MariaDB 10.11). Their pages carry the OLD server's log sequence numbers.
INNODB_SYSTEM_TABLES = ("innodb_table_stats", "innodb_index_stats", "gtid_slave_pos", "transaction_registry")


def _at(root: Path, logical: str) -> Path:
    return root / logical.lstrip("/")


def _restore_dirs(world: World, names: list[str], keep_target_innodb: bool) -> None:
    """What the guide's mysql_restore does by hand: replace datadir dirs with the backup's copies."""
    datadir = Path(world.mysql_params["datadir"])
    for name in names:
        if (datadir / name).exists():
            (datadir / name).rename(datadir / f"{name}.orig")
        subprocess.run(["cp", "-a", str(world.backup_root / "var/lib/mysql" / name), str(datadir / name)], check=True)
        if name == "mysql" and keep_target_innodb:
            for table in INNODB_SYSTEM_TABLES:
                for ext in (".frm", ".ibd"):
                    (datadir / "mysql" / f"{table}{ext}").unlink()
                    subprocess.run(
                        [
                            "cp",
                            "-a",
                            str(datadir / "mysql.orig" / f"{table}{ext}"),
                            str(datadir / "mysql" / f"{table}{ext}"),
                        ],
                        check=True,
                    )
        subprocess.run(["chown", "-R", "mysql:mysql", str(datadir / name)], check=True)


# --- the backup ---------------------------------------------------------------------------------


def test_backup_holds_binary_database_dirs(world_template: World) -> None:
    lib = world_template.backup_root / "var/lib/mysql"
    for table in ("domain", "mail_users", "admin", "ftp_users", "sql_user", "server_ips", "config"):
        for ext in (".frm", ".MYD", ".MYI"):
            assert (lib / "ispcp" / f"{table}{ext}").is_file(), f"{table}{ext}"
    assert (lib / "mysql" / "global_priv.MAD").is_file()
    assert (lib / "mysql" / "innodb_table_stats.ibd").is_file()
    assert (lib / "example001_shop" / "products.MYD").is_file()
    assert (lib / "example002_blog" / "posts.ibd").is_file()
    assert (lib / "mysql_upgrade_info").read_text().startswith("10.")
    # A file backup keeps the OLD server's numeric mysql owner, not this host's.
    old_uid, old_gid = world_template.manifest["old"]["mysql_owner"]
    st = (lib / "ispcp" / "domain.MYD").stat()
    assert (st.st_uid, st.st_gid) == (old_uid, old_gid)
    for db in ("example001_shop", "example002_blog"):
        dump = (world_template.backup_root / "var/backups/mysql" / f"{db}.sql").read_text()
        assert f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{db}`" in dump and "INSERT INTO" in dump


def test_old_conf_password_decrypts_with_every_old_key_file(world_template: World) -> None:
    backup = world_template.backup_root
    conf = IspcpConf.load(backup / "etc/ispcp/ispcp.conf")
    assert conf.get("Version") == "1.0.5 OMEGA"
    assert conf.get("SERVER_HOSTNAME") == "old.sandbox.test"
    assert conf.get("BASE_SERVER_IP") == "192.0.2.10"
    assert conf.get("MTA_MAILBOX_UID") == "1004" and conf.get("MTA_MAILBOX_GID") == "8"
    old = world_template.credentials["old"]
    for layout in ("php", "perl_engine", "perl_messenger"):
        path = _at(backup, LAYOUTS[layout])
        keys = parse_keyfile(layout, path.read_text(), str(path))
        assert decrypt_db_password(conf.get("DATABASE_PASSWORD") or "", keys.key, keys.iv) == old["root_password"]
    assert not _at(backup, LAYOUTS["keys_conf"]).exists()  # 1.0.5 had no ispcp-keys.conf
    for path in ("etc/proftpd.conf", "etc/ispcp/proftpd/working/proftpd.conf"):
        assert f"SQLConnectInfo             ispcp@localhost vftp {old['vftp']}\n" in (backup / path).read_text()
    assert f"password = {old['debian_sys_maint']}\n" in (backup / "etc/mysql/debian.cnf").read_text()


def test_backup_accounts_and_user_data(world_template: World) -> None:
    backup = world_template.backup_root
    passwd = {line.split(":")[0]: line.split(":") for line in (backup / "etc/passwd").read_text().splitlines()}
    shadow = {line.split(":")[0]: line.split(":") for line in (backup / "etc/shadow").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (backup / "etc/group").read_text().splitlines()}
    assert passwd["vmail"][2:4] == ["1004", "8"] and groups["mail"][2] == "8"
    for d in world_template.domains:
        assert passwd[d["user"]][2:4] == [str(d["uid"]), str(d["gid"])]
        assert passwd[d["user"]][5] == f"/var/www/virtual/{d['name']}"
        assert groups[d["group"]][2] == str(d["gid"])
        assert shadow[d["user"]][1].startswith("$6$")
        home = backup / "var/www/virtual" / d["name"]
        st = home.stat()
        assert (st.st_uid, st.st_gid) == (d["uid"], d["gid"])
        assert os.readlink(home / "htdocs/start.html") == "index.html"
        assert (backup / "var/www/fcgi" / d["name"] / "php5-fcgi-starter").is_file()
        assert (backup / "var/www/fcgi" / d["name"] / "php5/php.ini").is_file()
    mail = backup / "var/mail/virtual"
    entries = [mail, *mail.rglob("*")]
    assert len([p for p in entries if p.is_file()]) == world_template.manifest["counts"]["mail_messages"] > 0
    assert all((p.lstat().st_uid, p.lstat().st_gid) == (1004, 8) for p in entries)


# --- the target ---------------------------------------------------------------------------------


def test_target_has_no_customer_accounts_and_host_service_ids(world_template: World) -> None:
    etc = world_template.target_root / "etc"
    for name in ("passwd", "shadow", "group", "gshadow"):
        names = [line.split(":")[0] for line in (etc / name).read_text().splitlines()]
        assert not [n for n in names if n.startswith("vu") or n == "vmail"], name
        assert "root" in names
    passwd = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    for name in ("mysql", "postfix"):
        assert int(passwd[name][2]) == pwd.getpwnam(name).pw_uid
        assert int(groups[name][2]) == grp.getgrnam(name).gr_gid
    assert (etc / "login.defs").read_bytes() == Path("/etc/login.defs").read_bytes()
    assert 'VERSION_ID="12"' in (etc / "os-release").read_text()
    assert (etc / "hostname").read_text() == "new.sandbox.test\n"
    for logical in ("/var/www/virtual", "/var/mail/virtual"):
        path = _at(world_template.target_root, logical)
        assert path.is_dir() and not any(path.iterdir()) and path.stat().st_uid == 0


def test_target_engine_managers_carry_the_sleep_line(world_template: World) -> None:
    engine = world_template.target_root / "var/www/ispcp/engine"
    for name in engine_sleep.MANAGERS:
        lines = (engine / name).read_text().splitlines()
        assert lines[0] == "#!/usr/bin/perl"
        assert lines.count("\tsleep(1);") == 1, name
    decoy = (engine / "ispcp-dmn-mngr").read_text().splitlines()
    assert any("# sleep(1) here would be wrong" in line for line in decoy)
    assert (engine / "ispcp-rqst-mngr").is_file()
    assert (engine / "setup").is_dir()


def test_target_instance_starts_and_new_credentials_work(world: World) -> None:
    new, old = world.credentials["new"], world.credentials["old"]
    mysql = world.target_mysql()
    assert mysql.status()
    assert mysql.login_error("root", new["root_password"]) is None
    assert mysql.login_error("root", old["root_password"]) is not None
    cnf = (world.target_root / "etc/mysql/debian.cnf").read_text()
    assert f"password = {new['debian_sys_maint']}\n" in cnf
    assert mysql.login_error("debian-sys-maint", new["debian_sys_maint"]) is None
    assert f"vftp {new['vftp']}\n" in (world.target_root / "etc/ispcp/proftpd/working/proftpd.conf").read_text()
    assert fetch(world, "vftp", new["vftp"], "SELECT COUNT(*) FROM ftp_users", "ispcp") == [("0",)]
    assert fetch(
        world, "root", new["root_password"], "SELECT value FROM ispcp.config WHERE name = 'DATABASE_REVISION'"
    ) == [("29",)]
    conf = IspcpConf.load(world.target_root / "etc/ispcp/ispcp.conf")
    keys = parse_keyfile("perl_engine", _at(world.target_root, LAYOUTS["perl_engine"]).read_text())
    assert decrypt_db_password(conf.get("DATABASE_PASSWORD") or "", keys.key, keys.iv) == new["root_password"]
    assert keys.key != old["key"]


def test_backup_database_restores_on_target_with_old_credentials(stopped_world: World) -> None:
    """The guide's restore works when mysql/'s InnoDB tables are left as the target's own."""
    w = stopped_world
    _restore_dirs(w, ["mysql", "ispcp", "example001_shop"], keep_target_innodb=True)
    log = Path(w.mysql_params["log_file"])
    before = log.stat().st_size
    w.start()
    old = w.credentials["old"]
    n = len(w.domains)
    assert fetch(w, "root", old["root_password"], "SELECT COUNT(*) FROM ispcp.domain") == [(str(n),)]
    assert fetch(w, "vftp", old["vftp"], "SELECT COUNT(*) FROM ftp_users", "ispcp") == [("3",)]
    assert w.target_mysql().login_error("debian-sys-maint", old["debian_sys_maint"]) is None
    assert fetch(
        w, "ex001shop", _customer_password(w, "ex001shop"), "SELECT COUNT(*) FROM products", "example001_shop"
    ) == [("20",)]
    for table in INNODB_SYSTEM_TABLES:
        fetch(w, "root", old["root_password"], f"SELECT COUNT(*) FROM mysql.{table}")
    new_log = log.read_text()[before:]
    assert "[ERROR]" not in new_log, new_log[-3000:]


def test_whole_mysql_dir_copy_breaks_innodb_stats_and_lone_innodb_db(stopped_world: World) -> None:
    """Characterises MariaDB 10.11: what the mysql_restore step must work around.

    The InnoDB tables in mysql/ carry the old server's log sequence numbers, which are ahead of the
    target's ("log sequence number ... is in the future"): the server starts and grants work, but
    innodb_table_stats/innodb_index_stats are unreadable. A lone InnoDB database directory is not
    in the target's data dictionary at all.
    """
    w = stopped_world
    _restore_dirs(w, ["mysql", "ispcp", "example002_blog"], keep_target_innodb=False)
    log = Path(w.mysql_params["log_file"])
    before = log.stat().st_size
    w.start()
    root = w.credentials["old"]["root_password"]
    assert fetch(w, "root", root, "SELECT COUNT(*) FROM ispcp.domain") == [(str(len(w.domains)),)]
    with pytest.raises(pymysql.MySQLError) as stats:
        fetch(w, "root", root, "SELECT COUNT(*) FROM mysql.innodb_table_stats")
    assert stats.value.args[0] == 1877  # ER_TABLE_CORRUPT
    with pytest.raises(pymysql.MySQLError) as lone:
        fetch(w, "root", root, "SELECT COUNT(*) FROM example002_blog.posts")
    assert lone.value.args[0] == 1932  # ER_NO_SUCH_TABLE_IN_ENGINE
    assert "is in the future" in log.read_text()[before:]


def _customer_password(world: World, user: str) -> str:
    sc = make_scenario(world.manifest["scale"], world.manifest["seed"])
    return next(c.password for c in sc.customer_dbs if c.user == user)


# --- processes, clones, fingerprints ------------------------------------------------------------


def test_build_leaves_nothing_running(world_template: World) -> None:
    assert mariadbd_pids_under(world_template.workdir) == []
    assert not (world_template.workdir / "old-mysql").exists()
    assert not Path(world_template.mysql_params["socket"]).exists()


def test_world_stops_cleanly(stopped_world: World) -> None:
    w = stopped_world
    w.start()
    assert mariadbd_pids_under(w.workdir)
    w.stop()
    assert mariadbd_pids_under(w.workdir) == []
    assert not Path(w.mysql_params["socket"]).exists()
    assert not w.running()


def test_clone_has_own_paths_and_port(stopped_world: World, sandbox_dir: Path) -> None:
    w = stopped_world
    w.start()
    with pytest.raises(PreconditionFailed):
        w.clone(sandbox_dir / "torn")
    w.stop()
    c = w.clone(sandbox_dir / "c")
    try:
        assert c.mysql_params["port"] != w.mysql_params["port"]
        for key in ("datadir", "socket", "pid_file", "log_file"):
            assert c.mysql_params[key].startswith(str(sandbox_dir / "c") + "/")
        assert World.load(sandbox_dir / "c").mysql_params == c.mysql_params
        c.start()
        w.start()  # both at once: nothing shared
        assert c.target_mysql().login_error("root", c.credentials["new"]["root_password"]) is None
    finally:
        c.stop()
        w.stop()


def test_stable_fingerprint_ignores_server_internals_but_not_tables(stopped_world: World) -> None:
    w = stopped_world
    stopped = stable_fingerprint(w)
    w.start()
    running = stable_fingerprint(w)
    new = w.credentials["new"]
    fetch(w, "root", new["root_password"], "SELECT COUNT(*) FROM ispcp.domain")
    assert stable_fingerprint(w) == running == stopped
    w.stop()
    assert stable_fingerprint(w) == stopped
    w.start()
    fetch(w, "root", new["root_password"], "INSERT INTO ispcp.config VALUES ('SANDBOX_PROBE', '1')")
    w.stop()
    assert stable_fingerprint(w) != stopped


def test_manifest_secrets_and_params(world_template: World) -> None:
    w = world_template
    path = w.workdir / "world.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = World.load(w.workdir)
    assert loaded.manifest == json.loads(path.read_text()) and loaded.secrets == w.secrets
    for side in ("old", "new"):
        assert set(w.credentials[side].values()) <= set(w.secrets)
    shadow = (w.backup_root / "etc/shadow").read_text()
    hashes = [line.split(":")[1] for line in shadow.splitlines() if line.split(":")[1].startswith("$6$")]
    assert hashes and set(hashes) <= set(w.secrets)
    params = w.runbook_params()
    assert params["mysql"]["service"] == "sandbox" and params["backup_root"] == str(w.backup_root)
    assert not set(json.dumps(params).split('"')) & set(w.secrets)
    assert w.manifest["counts"]["domains"] == 3 and w.manifest["counts"]["ftp_users"] == 3


def test_scenario_is_deterministic_and_scaled() -> None:
    assert make_scenario("small", 1) == make_scenario("small", 1)
    assert make_scenario("small", 2).old.root_password != make_scenario("small", 1).old.root_password
    mid = make_scenario("mid", 1)
    assert (len(mid.domains), len(mid.subdomains), len(mid.mailboxes)) == (25, 100, 500)
    assert SCALES["large"][:4] == (1000, 5000, 200, 20000)
    assert sum(1 for m in mid.mailboxes if m.password is None) == 50
    assert len({m.address for m in mid.mailboxes}) == 500


@pytest.mark.parametrize("variant", [{"dummy_version": "1.0.8 OMEGA", "new_ip": "192.0.2.33"}, {"no_dummy": True}])
def test_variants(sandbox_dir: Path, variant: dict) -> None:
    w = build_world(sandbox_dir / "v", variant=variant)
    assert mariadbd_pids_under(w.workdir) == []
    conf = w.target_root / "etc/ispcp/ispcp.conf"
    if variant.get("no_dummy"):
        assert not conf.exists() and not (w.target_root / "var/www/ispcp").exists()
        assert (w.target_root / "etc/mysql/debian.cnf").exists()
        return
    parsed = IspcpConf.load(conf)
    assert parsed.get("Version") == "1.0.8 OMEGA" and parsed.get("BASE_SERVER_IP") == "192.0.2.33"
    assert _at(w.target_root, LAYOUTS["keys_conf"]).exists() and not _at(w.target_root, LAYOUTS["php"]).exists()
    mngr = (w.target_root / "var/www/ispcp/engine/ispcp-sub-mngr").read_text()
    assert "\tsleep(1);" not in mngr.splitlines()


def test_start_moves_to_a_free_port_when_its_port_is_taken(stopped_world: World) -> None:
    w = stopped_world
    taken = w.mysql_params["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", taken))
        blocker.listen(1)
        w.start()
    assert w.mysql_params["port"] != taken
    assert World.load(w.workdir).mysql_params["port"] == w.mysql_params["port"]
    assert w.target_mysql().login_error("root", w.credentials["new"]["root_password"]) is None
