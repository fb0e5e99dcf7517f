"""ispcp_install_check on the sandbox: the fresh dummy, no dummy, an older dummy, placeholder keys and
missing services. The step only reads, so every case is a dry run whose stable fingerprint must not move."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import IspcpError
from ispcp_lib.facts import ispcp_install as ii
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.demo import world_services
from ispcp_lib.sandbox.private_mysql import schema_sql
from ispcp_lib.sandbox.world import build_world, mariadbd_pids_under, stable_fingerprint
from ispcp_lib.steps import ispcp_install_check as step
from ispcp_lib.steps import mail_guard

KEY_FILES = (
    "var/www/ispcp/gui/include/ispcp-db-keys.php",
    "var/www/ispcp/engine/ispcp-db-keys.pl",
    "var/www/ispcp/engine/messenger/ispcp-db-keys.pl",
)


def ctx_for(world, **kw):
    ctx = open_run(**{**world.runbook_params(), **kw}, apply=False, resume=False)
    ctx.sandbox = True  # the built-in world: its services are the host's programs
    return ctx


def set_conf(world, **values: str) -> None:
    """Edit the clone's target ispcp.conf (test setup, before the fingerprint is taken)."""
    from ispcp_lib.facts.ispcp_conf import IspcpConf

    path = world.target_root / "etc/ispcp/ispcp.conf"
    conf = IspcpConf.load(path)
    for key, value in values.items():
        conf.set(key, value)
    path.write_text(conf.text())


def table(result, title: str):
    return next(t.frame for t in result.tables if t.title == title)


def run_failing(ctx):
    with pytest.raises(StepFailed) as info:
        step.run(ctx)
    return info.value.result


def test_normal_dummy_reports_version_layout_and_services(world) -> None:
    before = stable_fingerprint(world)
    r = step.run(ctx_for(world))
    assert r.status == "done" and not r.errors
    assert r.changed == 0 and not r.commands  # read-only: no command planned or run on the target
    d = r.data
    assert d["installed"] and d["verdict"] == "same"
    assert d["target_version"] == d["backup_version"] == "1.0.5 OMEGA"
    assert d["target_build"] == d["backup_build"] == "20100331"
    assert d["backup_revision"] == 29 and d["target_revision"] == 29  # ispCP 1.0.5's schema revision
    assert d["key_layouts"] == {
        "php": "initialised",
        "perl_engine": "initialised",
        "perl_messenger": "initialised",
        "keys_conf": "absent",
    }
    releases = table(r, "Target against the backup")
    source = releases.loc[releases["what"] == "schema DATABASE_REVISION", "note"].item()
    assert "throwaway private MariaDB" in source and str(world.backup_root) in source
    # The sandbox target has no Apache, Courier, BIND...: warned about with their packages, not failed.
    services = d["services"]
    assert services["CMD_HTTPD"] == {"state": "missing", "package": "apache2"}
    assert services["CMD_NAMED"]["package"] == "bind9" and services["CMD_AMAVIS"]["state"] == "disabled"
    assert services["CMD_MTA"]["state"] == "ok"  # the host's Postfix serves the sandbox
    mta = table(r, "Services that ispcp-update rebuilds").set_index("ispcp.conf").loc["CMD_MTA = /etc/init.d/postfix"]
    assert mta["where"] == "host only (not under the target root)"
    assert any("apt-get install apache2" in w for w in r.warnings)
    # MySQL as the server itself reports it, shown as the target knows the paths.
    m = d["mysql"]
    assert m["running"] and m["version"].startswith("10.11")
    assert (m["datadir"], m["socket"]) == ("/var/lib/mysql", "/run/mysqld/mysqld.sock")
    assert "server's own variables" in m["source"]
    assert not any("datadir parameter" in w for w in r.warnings)
    assert any("mail guard" in n.lower() for n in r.notes + r.warnings)
    # Nothing secret reaches the record or the report, though the target's key files were parsed.
    shown = json.dumps(r.as_dict()) + r._repr_html_()
    assert not [s for s in world.secrets if s in shown]
    assert stable_fingerprint(world) == before


def test_no_ispcp_at_all_fails_with_what_to_install(tmp_path: Path) -> None:
    w = build_world(tmp_path / "nd", "small", seed=1, variant={"no_dummy": True})
    try:
        w.start()
        before = stable_fingerprint(w)
        r = run_failing(ctx_for(w))
        msg = r.errors[0]
        assert "ispCP dummy install" in msg and "ispCP is not installed" in msg
        assert "install ispCP 1.0.5 OMEGA or newer with its own installer" in msg
        assert "mail guard" in msg
        assert r.data["installed"] is False and r.data["backup_revision"] == 29
        assert table(r, "ispCP on the target")["state"].tolist() == ["missing"]
        assert stable_fingerprint(w) == before
    finally:
        w.stop()


def test_half_installed_dummy_fails(world) -> None:
    engine = world.target_root / "var/www/ispcp/engine"
    for p in sorted(engine.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    engine.rmdir()
    before = stable_fingerprint(world)
    r = run_failing(ctx_for(world))
    assert "half-finished install" in r.errors[0] and "/var/www/ispcp/engine is missing" in r.errors[0]
    assert stable_fingerprint(world) == before


def test_malformed_target_conf_names_the_line(world) -> None:
    conf = world.target_root / "etc/ispcp/ispcp.conf"
    lines = conf.read_text().splitlines()
    lines.insert(2, "garbage without an equals sign")
    conf.write_text("\n".join(lines) + "\n")
    before = stable_fingerprint(world)
    r = run_failing(ctx_for(world))
    assert "ispcp.conf is unusable: line 3" in r.errors[0] and "install ispCP 1.0.5 OMEGA" in r.errors[0]
    assert table(r, "ispCP on the target").set_index("item").loc["ispcp.conf", "state"] == "invalid"
    assert stable_fingerprint(world) == before


def test_dummy_older_than_backup_is_refused(world) -> None:
    set_conf(world, Version="1.0.3 OMEGA")
    before = stable_fingerprint(world)
    r = run_failing(ctx_for(world))
    msg = r.errors[0]
    assert msg.startswith("ispCP version:") and "1.0.3 OMEGA, older than the backup's 1.0.5 OMEGA" in msg
    assert "install ispCP 1.0.5 OMEGA or newer instead" in msg
    assert r.data["verdict"] == "downgrade"
    assert stable_fingerprint(world) == before


def test_dummy_newer_than_backup_is_an_upgrade(world) -> None:
    set_conf(world, Version="1.0.7 OMEGA", BuildDate="20101122")
    r = step.run(ctx_for(world))
    assert r.status == "done" and r.data["verdict"] == "upgrade"
    assert "ispcp-update brings" in table(r, "Target against the backup")["note"][0]


def test_older_schema_revision_on_the_dummy_is_refused(world) -> None:
    creds = world.manifest["credentials"]["new"]
    with world.target_mysql().connect("root", creds["root_password"], "ispcp") as conn, conn.cursor() as cur:
        cur.execute("UPDATE config SET value = '28' WHERE name = 'DATABASE_REVISION'")
    before = stable_fingerprint(world)
    r = run_failing(ctx_for(world))
    assert "schema revision 28 is older than the backup's 29" in r.errors[0]
    assert stable_fingerprint(world) == before


def test_placeholder_keys_warn_but_pass(world) -> None:
    php, pl, messenger = (world.target_root / k for k in KEY_FILES)
    php.write_text("<?php\n$ispcp_db_pass_key = '{KEY}';\n\n$ispcp_db_pass_iv = '{IV}';\n?>\n")
    for f in (pl, messenger):
        f.write_text("#!/usr/bin/perl\n$main::db_pass_key = '{KEY}';\n$main::db_pass_iv = '{IV}';\n1;\n")
    before = stable_fingerprint(world)
    r = step.run(ctx_for(world))
    assert r.status == "done"
    assert set(r.data["key_layouts"].values()) == {"placeholder", "absent"}
    assert any("{KEY}/{IV} template" in w and "perl_messenger" in w for w in r.warnings)
    rows = table(r, "ispCP on the target").set_index("item")
    assert rows.loc["key file (php)", "state"] == "placeholder"
    assert stable_fingerprint(world) == before


def test_missing_and_mismatched_services(world) -> None:
    root = world.target_root
    for logical in ("etc/init.d/proftpd", "usr/sbin/proftpd", "usr/sbin/apache2"):
        (root / logical).parent.mkdir(parents=True, exist_ok=True)
        (root / logical).write_text("#!/bin/sh\n# test stand-in\n")
    set_conf(world, CMD_IMAP="/etc/init.d/dovecot", CMD_NAMED="/etc/init.d/nsd")
    before = stable_fingerprint(world)
    r = step.run(ctx_for(world))
    assert r.status == "done"  # missing services warn; ispcp_update needs them, the restore does not
    s = r.data["services"]
    assert s["CMD_FTPD"]["state"] == "ok"
    assert s["CMD_HTTPD"] == {"state": "mismatch", "package": "apache2"}  # apache2 there, apache2ctl not
    assert s["CMD_IMAP"] == {"state": "missing", "package": "dovecot-imapd dovecot-pop3d"}
    assert s["CMD_NAMED"] == {"state": "unknown", "package": "apt-file search /etc/init.d/nsd"}
    rows = table(r, "Services that ispcp-update rebuilds").set_index("service")
    assert rows.loc["FTP server", "where"] == "target root"
    warning = next(w for w in r.warnings if "names services this system lacks" in w)
    assert "CMD_IMAP (missing)" in warning and "dovecot-imapd" in warning and "CMD_NAMED (unknown)" in warning
    assert "proftpd" not in warning.split("apt-get install", 1)[1]
    assert stable_fingerprint(world) == before


def test_stopped_mysql_falls_back_to_config(stopped_world) -> None:
    w = stopped_world
    conf = w.target_root / "etc/mysql/mariadb.conf.d/50-server.cnf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[mysqld]\ndatadir = /srv/mysql\n")
    before = stable_fingerprint(w)
    r = step.run(ctx_for(w))
    assert r.status == "done"
    m = r.data["mysql"]
    assert (
        not m["running"] and m["datadir"] == "/srv/mysql" and m["socket"] == "/var/run/mysqld/mysqld.sock"
    )  # right on Squeeze and on bookworm
    assert "50-server.cnf" in m["source"] and "Debian's default" in m["source"]
    assert any("not running" in x for x in r.warnings)
    assert any("DATABASE_DIR is /var/lib/mysql" in x for x in r.warnings)
    assert r.data["target_revision"] is None and r.data["verdict"] == "same"
    assert not mariadbd_pids_under(w.workdir)  # nothing was started on the target
    assert stable_fingerprint(w) == before


def test_wrong_datadir_parameter_is_warned(world) -> None:
    params = {**world.mysql_params, "datadir": str(world.target_root / "srv/elsewhere")}
    r = step.run(ctx_for(world, mysql=params))
    assert any("mysql_restore would replace the wrong directory" in x for x in r.warnings)


def test_backup_revision_from_an_ispcp_dump(world) -> None:
    # An InnoDB table in the binary copy makes it unreadable without the old ibdata1: the dump serves.
    (world.backup_root / "var/lib/mysql/ispcp/session_data.ibd").write_bytes(b"\0" * 16384)
    dumps = world.backup_root / "var/www/ispcp/backups"
    dumps.mkdir(parents=True, exist_ok=True)
    with gzip.open(dumps / "ispcp-2010.04.01.sql.gz", "wt") as fh:
        fh.write(schema_sql("ispcp").replace("('DATABASE_REVISION', '29')", "('DATABASE_REVISION', '27')"))
    r = step.run(ctx_for(world))
    assert r.data["backup_revision"] == 27 and r.data["verdict"] == "same"
    note = table(r, "Target against the backup")["note"][2]
    assert "ispcp-2010.04.01.sql.gz" in note
    assert any("could not be read" in w and "InnoDB" in w for w in r.warnings)


def test_mail_guard_state_is_shown(world) -> None:
    # The real guard on the sandbox's private Postfix: not set, set and holding, then broken the way an
    # installer breaks it (soft_bounce switched off again in main.cf).
    with world_services(world) as services:
        r = step.run(ctx_for(world))
        assert any("mail guard is not set" in w for w in r.warnings) and "mail_guard" not in r.data

        guard_ctx = open_run(**world.runbook_params(), apply=True, resume=False, options=services)
        assert mail_guard.run(guard_ctx).status == "done"
        r = step.run(ctx_for(world))
        assert r.data["mail_guard"]["ok"] is True
        assert any("still holds" in n and "soft_bounce = yes" in n for n in r.notes)
        assert not any("no longer holds" in w for w in r.warnings)

        subprocess.run(["postconf", "-c", services["postfix_config_dir"], "-e", "soft_bounce=no"], check=True)
        before = stable_fingerprint(world)
        r = step.run(ctx_for(world))
        assert r.status == "done"
        assert r.data["mail_guard"]["ok"] is False and "soft_bounce is 'no'" in r.data["mail_guard"]["message"]
        assert any("no longer holds" in w and "soft_bounce is 'no'" in w for w in r.warnings)
        assert stable_fingerprint(world) == before


# --- the facts on their own ----------------------------------------------------------------------


def test_throwaway_server_leaves_nothing_behind(world_template, monkeypatch: pytest.MonkeyPatch) -> None:
    # A scratch temp base outside pytest's tmp tree: concurrent pytest sessions reset that tree to 0700,
    # which the server's mysql user could then no longer enter.
    scratch = Path(tempfile.mkdtemp(prefix="iic-scratch-", dir="/tmp"))
    try:
        scratch.chmod(0o711)
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        db_dir = world_template.backup_root / "var/lib/mysql/ispcp"
        before = {p.name: p.stat().st_mtime_ns for p in db_dir.iterdir()}
        ii._REVISION_CACHE.clear()
        assert ii.revision_from_datadir(db_dir) == 29
        assert list(scratch.iterdir()) == [] and not mariadbd_pids_under(scratch)
        assert {p.name: p.stat().st_mtime_ns for p in db_dir.iterdir()} == before  # the backup is only read
        assert ii._files_signature(db_dir) in ii._REVISION_CACHE  # a second call starts no server
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_innodb_config_table_is_refused_clearly(tmp_path: Path) -> None:
    db = tmp_path / "ispcp"
    db.mkdir()
    (db / "config.frm").write_bytes(b"\xfe\x01")
    (db / "config.ibd").write_bytes(b"\0" * 16)
    with pytest.raises(IspcpError) as info:
        ii.revision_from_datadir(db)
    assert "InnoDB" in info.value.problem and "SQL dump" in info.value.fix
    assert not ii._REVISION_CACHE.get(ii._files_signature(db))  # a failure is not remembered


def test_revision_from_plain_and_compressed_dumps(tmp_path: Path) -> None:
    plain = tmp_path / "a.sql"
    plain.write_text(
        "INSERT INTO `config` (`name`, `value`) VALUES\n('PORT_FTP', '21;tcp;FTP;1;0;'),\n"
        "('DATABASE_REVISION', '31'),\n('CRITICAL_UPDATE_REVISION', '5');\n"
    )
    assert ii.revision_from_dump(LocalConnection(tmp_path), "/a.sql") == 31
    packed = tmp_path / "b.sql.gz"
    with gzip.open(packed, "wt") as fh:
        fh.write("INSERT INTO config VALUES ('DATABASE_REVISION','30');\n")
    assert ii.revision_from_dump(LocalConnection(tmp_path), "/b.sql.gz") == 30
    none = tmp_path / "c.sql"
    none.write_text("-- no config rows\n")
    assert ii.revision_from_dump(LocalConnection(tmp_path), "/c.sql") is None


@pytest.mark.parametrize(
    ("old", "new", "old_rev", "new_rev", "verdict"),
    [
        ("1.0.5 OMEGA", "1.0.5 OMEGA", 29, 29, "same"),
        ("1.0.5 OMEGA", "1.0.7 OMEGA", 29, 37, "upgrade"),
        ("1.0.5 OMEGA", "1.0.3 OMEGA", None, None, "downgrade"),
        ("1.0.5 OMEGA", "1.0.5 OMEGA", 30, 29, "downgrade"),
        ("1.0.5 OMEGA", "1.0.10", None, None, "upgrade"),  # numeric, not string, comparison
        (None, "1.0.5 OMEGA", None, 29, "unknown"),
    ],
)
def test_compare_releases(old, new, old_rev, new_rev, verdict) -> None:
    assert ii.compare_releases(old, new, old_rev, new_rev)[0] == verdict
