"""The old, dead server: a real MariaDB filled like a 2010 ispCP, then only its surviving files.

The database directories in the backup are binary copies made while that server was stopped, which
is what the guide's recovery starts from. The old instance itself is removed afterwards (unless
kept for debugging), so the backup is all that is left, as after a real crash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ispcp_lib.core.runner import Runner
from ispcp_lib.ispcp.crypto import encrypt_db_password
from ispcp_lib.ispcp.keyfiles import LAYOUTS, KeySet, render_keyfile
from ispcp_lib.sandbox import accounts, ispcp_files, private_mysql, user_data
from ispcp_lib.sandbox.files import put_file
from ispcp_lib.sandbox.hashes import crypt_many, md5_salt, sha512_salt
from ispcp_lib.sandbox.scenario import MAIL_GID, VMAIL_UID, Scenario

OLD_VERSION = "1.0.5 OMEGA"
EPOCH = 1262304000  # 2010-01-01: fixed timestamps keep the database deterministic


def make_hashes(sc: Scenario, runner: Runner) -> dict[str, str]:
    """crypt hashes: 'admin:<name>', 'shadow:<user>', 'ftp:<userid>' -> hash."""
    labels: list[str] = []
    pairs: list[tuple[str, str]] = []
    for name, pw in sc.admin_passwords.items():  # ispCP 1.0.5 GUI: crypt() with an MD5 salt
        labels.append(f"admin:{name}")
        pairs.append((pw, md5_salt(sc.salts[f"admin:{name}"])))
    for name, pw in sc.shadow_passwords.items():
        labels.append(f"shadow:{name}")
        pairs.append((pw, sha512_salt(sc.salts[f"shadow:{name}"])))
    for u in sc.ftp_users:
        labels.append(f"ftp:{u.userid}")
        pairs.append((u.password, sha512_salt(sc.salts[f"ftp:{u.userid}"])))
    return dict(zip(labels, crypt_many(pairs, runner)))


# --- database -----------------------------------------------------------------------------------


def _populate_ispcp(conn: Any, sc: Scenario, hashes: dict[str, str]) -> None:
    keys = (sc.old.key, sc.old.iv)
    n = len(sc.domains)
    with conn.cursor() as cur:
        admins = [
            (1, "admin", hashes["admin:admin"], "admin", 0, "", 0, "Ada", "Admin", f"admin@{sc.old_hostname}"),
            (
                2,
                "reseller1",
                hashes["admin:reseller1"],
                "reseller",
                0,
                "R-1",
                1,
                "Rolf",
                "Reseller",
                f"reseller1@{sc.old_hostname}",
            ),
        ]
        admins += [
            (
                d.admin_id,
                d.name,
                hashes[f"admin:{d.name}"],
                "user",
                EPOCH + d.id * 86400,
                f"C-{d.id:05d}",
                2,
                "Customer",
                f"No. {d.id}",
                f"webmaster@{d.name}",
            )
            for d in sc.domains
        ]
        cur.executemany(
            "INSERT INTO admin (admin_id, admin_name, admin_pass, admin_type, domain_created, customer_id,"
            " created_by, fname, lname, email) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            admins,
        )
        cur.executemany(
            "INSERT INTO user_gui_props (user_id, lang, layout, logo) VALUES (%s,%s,%s,%s)",
            [(a[0], "lang_English", "omega_original", "0") for a in admins],
        )
        cur.execute(
            "INSERT INTO reseller_props (reseller_id, current_dmn_cnt, max_dmn_cnt, current_sub_cnt,"
            " max_sub_cnt, current_als_cnt, max_als_cnt, current_mail_cnt, max_mail_cnt, current_ftp_cnt,"
            " max_ftp_cnt, current_sql_db_cnt, max_sql_db_cnt, current_sql_user_cnt, max_sql_user_cnt,"
            " current_disk_amnt, max_disk_amnt, current_traff_amnt, max_traff_amnt, customer_id, reseller_ips)"
            " VALUES (2,%s,0,%s,0,%s,0,%s,0,%s,0,%s,0,%s,0,0,0,0,0,'R-1','1;')",
            (
                n,
                len(sc.subdomains),
                len(sc.aliases),
                len(sc.mailboxes),
                len(sc.ftp_users),
                len(sc.customer_dbs),
                len(sc.customer_dbs),
            ),
        )
        cur.execute(
            "INSERT INTO server_ips (ip_id, ip_number, ip_domain, ip_alias, ip_card, ip_ssl_domain_id, ip_status)"
            " VALUES (1,%s,%s,%s,'eth0',NULL,'ok')",
            (sc.old_ip, sc.old_hostname, sc.old_hostname),
        )
        cur.executemany(
            "INSERT INTO domain (domain_id, domain_name, domain_gid, domain_uid, domain_admin_id,"
            " domain_created_id, domain_created, domain_expires, domain_last_modified, domain_mailacc_limit,"
            " domain_ftpacc_limit, domain_traffic_limit, domain_sqld_limit, domain_sqlu_limit, domain_status,"
            " domain_alias_limit, domain_subd_limit, domain_ip_id, domain_disk_limit, domain_disk_usage,"
            " domain_php, domain_cgi, allowbackup, domain_dns)"
            " VALUES (%s,%s,%s,%s,%s,2,%s,0,0,0,0,0,0,0,'ok',0,0,1,0,%s,'yes','yes','full','no')",
            [(d.id, d.name, d.gid, d.uid, d.admin_id, EPOCH + d.id * 86400, 4096 * d.id) for d in sc.domains],
        )
        cur.executemany(
            "INSERT INTO subdomain (subdomain_id, domain_id, subdomain_name, subdomain_mount, subdomain_status)"
            " VALUES (%s,%s,%s,%s,'ok')",
            [(s.id, s.domain_id, s.label, f"/{s.label}") for s in sc.subdomains],
        )
        cur.executemany(
            "INSERT INTO domain_aliasses (alias_id, domain_id, alias_name, alias_status, alias_mount,"
            " alias_ip_id, url_forward) VALUES (%s,%s,%s,'ok',%s,1,'no')",
            [(a.id, a.domain_id, a.name, f"/{a.name}") for a in sc.aliases],
        )
        mails = []
        for m in sc.mailboxes:
            if m.password is None:
                mails.append((m.id, m.local_part, "_no_", m.forward, m.domain_id, "normal_forward", m.address))
            else:
                mails.append(
                    (
                        m.id,
                        m.local_part,
                        encrypt_db_password(m.password, *keys, item="mail_pass"),
                        "_no_",
                        m.domain_id,
                        "normal_mail",
                        m.address,
                    )
                )
        cur.executemany(
            "INSERT INTO mail_users (mail_id, mail_acc, mail_pass, mail_forward, domain_id, mail_type, sub_id,"
            " status, mail_auto_respond, mail_auto_respond_text, quota, mail_addr)"
            " VALUES (%s,%s,%s,%s,%s,%s,0,'ok',0,NULL,10485760,%s)",
            mails,
        )
        members: dict[str, list[str]] = {}
        for u in sc.ftp_users:
            members.setdefault(u.domain, []).append(u.userid)
        by_name = {d.name: d for d in sc.domains}
        cur.executemany(
            "INSERT INTO ftp_group (groupname, gid, members) VALUES (%s,%s,%s)",
            [(dom, by_name[dom].gid, ",".join(ids)) for dom, ids in members.items()],
        )
        cur.executemany(
            "INSERT INTO ftp_users (userid, passwd, uid, gid, shell, homedir) VALUES (%s,%s,%s,%s,'/bin/sh',%s)",
            [(u.userid, hashes[f"ftp:{u.userid}"], u.uid, u.gid, f"/var/www/virtual/{u.domain}") for u in sc.ftp_users],
        )
        cur.executemany(
            "INSERT INTO quotalimits (name, quota_type, per_session, limit_type) VALUES (%s,'group','false','hard')",
            [(dom,) for dom in members],
        )
        cur.executemany("INSERT INTO quotatallies (name, quota_type) VALUES (%s,'group')", [(dom,) for dom in members])
        cur.executemany(
            "INSERT INTO sql_database (sqld_id, domain_id, sqld_name) VALUES (%s,%s,%s)",
            [(c.id, c.domain_id, c.name) for c in sc.customer_dbs],
        )
        cur.executemany(
            "INSERT INTO sql_user (sqlu_id, sqld_id, sqlu_name, sqlu_pass) VALUES (%s,%s,%s,%s)",
            [
                (c.user_id, c.id, c.user, encrypt_db_password(c.password, *keys, item="sqlu_pass"))
                for c in sc.customer_dbs
            ],
        )


def _populate_customer_dbs(conn: Any, sc: Scenario) -> None:
    with conn.cursor() as cur:
        for c in sc.customer_dbs:
            # Names come from the scenario (letters, digits, _), so quoting with backticks is safe.
            cur.execute(f"CREATE DATABASE `{c.name}` CHARACTER SET utf8 COLLATE utf8_unicode_ci")
            if c.engine == "MyISAM":
                cur.execute(
                    f"CREATE TABLE `{c.name}`.products (id INT PRIMARY KEY, name VARCHAR(100),"
                    " price DECIMAL(8,2)) ENGINE=MyISAM"
                )
                cur.execute(
                    f"CREATE TABLE `{c.name}`.orders (id INT PRIMARY KEY, product_id INT, qty INT) ENGINE=MyISAM"
                )
                cur.executemany(
                    f"INSERT INTO `{c.name}`.products VALUES (%s,%s,%s)",
                    [(i, f"product {i}", 9.5 + i) for i in range(1, 21)],
                )
                cur.executemany(
                    f"INSERT INTO `{c.name}`.orders VALUES (%s,%s,%s)",
                    [(i, 1 + i % 20, 1 + i % 3) for i in range(1, 51)],
                )
            else:
                cur.execute(
                    f"CREATE TABLE `{c.name}`.posts (id INT PRIMARY KEY, title VARCHAR(200), body TEXT)"
                    f" ENGINE={c.engine}"
                )
                cur.execute(
                    f"CREATE TABLE `{c.name}`.comments (id INT PRIMARY KEY, post_id INT, body TEXT) ENGINE={c.engine}"
                )
                cur.executemany(
                    f"INSERT INTO `{c.name}`.posts VALUES (%s,%s,%s)",
                    [(i, f"post {i}", f"text of post {i}") for i in range(1, 11)],
                )
                cur.executemany(
                    f"INSERT INTO `{c.name}`.comments VALUES (%s,%s,%s)",
                    [(i, 1 + i % 10, f"comment {i}") for i in range(1, 31)],
                )


def _customer_accounts(conn: Any, sc: Scenario) -> None:
    with conn.cursor() as cur:
        for c in sc.customer_dbs:
            for host in ("localhost", "%"):
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (c.user, host, c.password))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{c.name}`.* TO %s@%s", (c.user, host))


# What the backup holds of the customer databases as SQL: one mariadb-dump per database, one dump of
# every database (`--all-databases`, as many admins' cron jobs write it), both, or none.
CUSTOMER_DUMPS = ("per_database", "all_databases", "both", "none")
ALL_DATABASES_DUMP = "all-databases.sql"


def dump_all_databases(sock: Path, dest: Path, runner: Runner) -> None:
    """A mariadb-dump --all-databases (root without password: done before passwords are set)."""
    out = runner.run(
        [
            "mariadb-dump",
            "--no-defaults",
            f"--socket={sock}",
            "--user=root",
            "--all-databases",
            "--single-transaction",
            "--routines",
            "--events",
        ],
        timeout=600,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(out.stdout)
    dest.chmod(0o600)


def build_old_database(
    workdir: Path,
    backup: Path,
    sc: Scenario,
    hashes: dict[str, str],
    runner: Runner,
    keep_old: bool,
    old_owner: tuple[int, int],
    *,
    full_datadir: bool = False,
    customer_dumps: str = "per_database",
) -> dict[str, Any]:
    """Run the old server once, fill it, stop it, and copy its database directories to the backup.

    full_datadir copies the whole stopped datadir instead (ibdata1, the redo log, Aria's logs and every
    database): the backup a file-level copy of the old disk gives. customer_dumps: see CUSTOMER_DUMPS.
    """
    if customer_dumps not in CUSTOMER_DUMPS:
        raise ValueError(f"customer_dumps must be one of {', '.join(CUSTOMER_DUMPS)}, not {customer_dumps!r}")
    base = private_mysql.make_mysql_dir(workdir / "old-mysql")
    datadir = base / "data"
    tmpdir = base / "tmp"
    private_mysql.install_datadir(datadir, runner, tmpdir)
    params = {
        "service": "sandbox",
        "datadir": str(datadir),
        "socket": str(base / "mysqld.sock"),
        "port": None,
        "pid_file": str(base / "mysqld.pid"),
        "log_file": str(workdir / "logs" / "old-mariadbd.err"),
    }
    # No TCP port: the build talks through the socket only, so no port can collide with anyone else's.
    srv = private_mysql.instance(
        datadir, Path(params["socket"]), Path(params["pid_file"]), Path(params["log_file"]), None, runner
    )
    private_mysql.start(srv, tmpdir)
    try:
        private_mysql.load_sql(srv.socket, private_mysql.schema_sql("ispcp"), runner)
        conn = srv.connect("root", None, "ispcp")
        try:
            _populate_ispcp(conn, sc, hashes)
            _populate_customer_dbs(conn, sc)
            # Dumps first, while root still has no password (no credentials on any argv).
            if customer_dumps in ("per_database", "both"):
                for c in sc.customer_dbs:
                    private_mysql.dump_database(
                        srv.socket, c.name, backup / "var/backups/mysql" / f"{c.name}.sql", runner
                    )
            if customer_dumps in ("all_databases", "both"):
                dump_all_databases(srv.socket, backup / "var/backups/mysql" / ALL_DATABASES_DUMP, runner)
            _customer_accounts(conn, sc)
            private_mysql.create_service_accounts(conn, sc.old.root_password, sc.old.debian_sys_maint, sc.old.vftp)
        finally:
            conn.close()
        version = private_mysql.server_version(datadir, srv)
    finally:
        srv.stop()

    dest = backup / "var/lib/mysql"
    dest.mkdir(parents=True, exist_ok=True)
    if full_datadir:
        runner.run(["cp", "-a", f"{datadir}/.", str(dest)])
    for name in () if full_datadir else ("ispcp", "mysql", *(c.name for c in sc.customer_dbs)):
        runner.run(["cp", "-a", str(datadir / name), str(dest / name)])
    info = datadir / "mysql_upgrade_info"
    if info.exists():
        runner.run(["cp", "-a", str(info), str(dest / "mysql_upgrade_info")])
    else:
        (dest / "mysql_upgrade_info").write_text(version)
    # A restored file backup carries the OLD server's numeric mysql ids, not this host's.
    runner.run(["chown", "-R", f"{old_owner[0]}:{old_owner[1]}", str(dest)])
    if not keep_old:
        shutil.rmtree(base)
        params = {}
    return {"version": version, "old_mysql": params}


# --- files --------------------------------------------------------------------------------------


def old_accounts(sc: Scenario, hashes: dict[str, str]) -> accounts.Accounts:
    acc = accounts.base_accounts()
    acc.users += list(accounts.OLD_SERVICE_USERS)
    acc.groups += [(n, g, []) for n, g in accounts.OLD_SERVICE_GROUPS]
    acc.users.append(("vmail", VMAIL_UID, MAIL_GID, "vmail-user", "/var/mail/virtual", "/bin/false"))
    for d in sc.domains:
        acc.users.append((d.user, d.uid, d.gid, "vu-master", f"/var/www/virtual/{d.name}", "/bin/false"))
        acc.groups.append((d.group, d.gid, []))
    acc.hashes = {name.split(":", 1)[1]: h for name, h in hashes.items() if name.startswith("shadow:")}
    return acc


def write_old_files(backup: Path, sc: Scenario, hashes: dict[str, str], messages_per_box: int | None) -> int:
    """Everything but the database. Returns the number of mail messages written."""
    old = sc.old
    put_file(
        backup,
        "/etc/ispcp/ispcp.conf",
        ispcp_files.ispcp_conf(OLD_VERSION, sc.old_hostname, sc.old_ip, old.root_password, old.key, old.iv),
        0o640,
    )
    keys = KeySet(old.key, old.iv)
    for layout in ("php", "perl_engine", "perl_messenger"):
        # The GUI reads its key file as www-data (gid 33 on both servers); the engine runs as root.
        mode, gid = (0o640, 33) if layout == "php" else (0o600, 0)
        put_file(backup, LAYOUTS[layout], render_keyfile(layout, keys), mode, 0, gid)
    proftpd = ispcp_files.proftpd_conf(sc.old_hostname, old.vftp)
    put_file(backup, "/etc/proftpd.conf", proftpd, 0o600)
    put_file(backup, "/etc/ispcp/proftpd/working/proftpd.conf", proftpd, 0o600)
    put_file(backup, "/etc/mysql/debian.cnf", ispcp_files.debian_cnf(old.debian_sys_maint), 0o600)
    put_file(backup, "/etc/os-release", ispcp_files.os_release())
    put_file(backup, "/etc/hostname", sc.old_hostname + "\n")
    old_accounts(sc, hashes).write(backup / "etc")
    user_data.web_trees(backup, sc)
    user_data.fcgi_starters(backup, sc)
    return user_data.maildirs(backup, sc, messages_per_box)
