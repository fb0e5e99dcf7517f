"""inventory and preflight on the small sandbox world, and the foundation's bad-input corpus."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.private_mysql import mysql_ids
from ispcp_lib.sandbox.world import stable_fingerprint
from ispcp_lib.steps import inventory, preflight
from tests.helpers import fetch


def ctx_for(world, **kw):
    params = {**world.runbook_params(), **kw}
    return open_run(**params, resume=False)


def test_inventory_and_preflight_dry_run_change_nothing(world) -> None:
    before = stable_fingerprint(world)
    ctx = ctx_for(world)
    inv = inventory.run(ctx)
    assert inv.status == "done" and inv.data["path"] == "minimal"
    states = {row["item"]: row["state"] for row in inv.data["items"]}
    assert states["database ispcp (binary copy)"] == "found"
    assert states["database mysql (binary copy)"] == "found"
    assert states["key file (php)"] == "found" and states["key file (perl_engine)"] == "found"
    assert states["ispcp.conf"] == "found"
    customers = next(t.frame for t in inv.tables if t.title == "Customer databases")
    assert len(customers) == len(world.manifest["customer_dbs"]) >= 2
    expected = {d["name"] for d in world.manifest["customer_dbs"]}
    assert {r["database"] for r in inv.data["customer_databases"]} == expected
    pre = preflight.run(ctx)
    assert pre.status == "done", pre.errors
    table = pre.tables[0].frame
    assert set(table["check"]) >= {"distribution", "existing ispCP", "MySQL versions", "Perl Crypt::CBC"}
    assert pre.data["mysql_versions"]["verdict"] == "same"
    assert stable_fingerprint(world) == before


def test_inventory_missing_backup_root(world, tmp_path: Path) -> None:
    ctx = ctx_for(world, backup_root=str(tmp_path / "nowhere"))
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx)
    assert "backup_root" in info.value.result.errors[0] and "does not exist" in info.value.result.errors[0]


def test_inventory_backup_root_is_a_file(world, tmp_path: Path) -> None:
    f = tmp_path / "backup.tar"
    f.write_bytes(b"not a dir")
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(f)))
    assert "is a file" in info.value.result.errors[0] and "tar -xpf" in info.value.result.errors[0]


def _broken_backup(world, tmp_path: Path) -> Path:
    copy = tmp_path / "backup"
    shutil.copytree(world.backup_root, copy, symlinks=True)
    return copy


def test_inventory_without_ispcp_conf_is_blocked(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    (backup / "etc/ispcp/ispcp.conf").unlink()
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(backup)))
    msg = info.value.result.errors[0]
    assert "ispcp.conf (missing)" in msg and "Recovery blocked" in msg
    assert stable_fingerprint(world) == before


def test_inventory_malformed_ispcp_conf_names_the_line(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    conf = backup / "etc/ispcp/ispcp.conf"
    lines = conf.read_text().splitlines()
    lines.insert(4, "this line is garbage")
    conf.write_text("\n".join(lines) + "\n")
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(backup)))
    row = next(r for r in info.value.result.data["items"] if r["item"] == "ispcp.conf")
    assert row["state"] == "invalid" and "line 5" in row["detail"]
    assert "ispcp.conf (invalid)" in info.value.result.errors[0]


def test_inventory_placeholder_keys_are_invalid_and_verdict_lost_keys(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    php = backup / "var/www/ispcp/gui/include/ispcp-db-keys.php"
    php.write_text("<?php\n$ispcp_db_pass_key = '{KEY}';\n$ispcp_db_pass_iv = '{IV}';\n?>\n")
    engine = backup / "var/www/ispcp/engine"
    for pl in (engine / "ispcp-db-keys.pl", engine / "messenger/ispcp-db-keys.pl"):
        pl.write_text("$main::db_pass_key = '{KEY}';\n$main::db_pass_iv = '{IV}';\n1;\n")
    r = inventory.run(ctx_for(world, backup_root=str(backup)))
    rows = {row["item"]: row for row in r.data["items"]}
    assert rows["key file (php)"]["state"] == "invalid" and "{KEY}" in rows["key file (php)"]["detail"]
    assert r.data["path"] == "lost_keys" and "No usable key file" in r.summary


def test_inventory_symlink_escaping_backup_is_invalid(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    conf = backup / "etc/ispcp/ispcp.conf"
    conf.unlink()
    os.symlink("/etc/hostname", conf)
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(backup)))
    rows = {row["item"]: row for row in info.value.result.data["items"]}
    assert rows["ispcp.conf"]["state"] == "invalid"
    assert "outside the backup root" in rows["ispcp.conf"]["detail"]


def test_preflight_refuses_target_with_customers(world) -> None:
    (world.target_root / "var/www/virtual/customer.example").mkdir(parents=True)
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        preflight.run(ctx_for(world))
    assert "already runs ispCP" in info.value.result.errors[0]
    assert "allow_existing_ispcp" in info.value.result.errors[0]
    r = preflight.run(ctx_for(world, options={"allow_existing_ispcp": True}))
    assert r.status == "done" and any("allow_existing_ispcp" in w for w in r.warnings)
    assert stable_fingerprint(world) == before


# --- untrusted input from the old server: refused by the inventory, before anything changes -----------


def _set_old_conf(backup: Path, key: str, value: str) -> None:
    path = backup / "etc/ispcp/ispcp.conf"
    conf = IspcpConf.load(path)
    conf.set(key, value)
    path.write_text(conf.text())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("APACHE_WWW_DIR", "/"),
        ("APACHE_WWW_DIR", "/etc"),
        ("MTA_VIRTUAL_MAIL_DIR", "/etc"),
        ("PHP_STARTER_DIR", "/usr"),
    ],
)
def test_inventory_refuses_a_directory_setting_on_the_system(world, tmp_path: Path, key: str, value: str) -> None:
    backup = _broken_backup(world, tmp_path)
    _set_old_conf(backup, key, value)
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(backup)))
    message = info.value.result.errors[0]
    assert message.startswith(f"{key} = {value}") and "refuses to write there" in message
    assert "Fix: correct the line in the backup's etc/ispcp/ispcp.conf" in message
    assert stable_fingerprint(world) == before


def test_inventory_refuses_a_tree_that_holds_ispcp_itself(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    _set_old_conf(backup, "APACHE_WWW_DIR", "/var/www")  # holds ROOT_DIR and PHP_STARTER_DIR
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(backup)))
    message = info.value.result.errors[0]
    assert (
        message.startswith("APACHE_WWW_DIR = /var/www (") and "): overlaps PHP_STARTER_DIR (/var/www/fcgi)" in message
    )


def test_inventory_refuses_a_domain_name_that_is_a_path(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    _edit_backup_database(world, backup, "UPDATE domain SET domain_name = '../../etc' ORDER BY domain_id LIMIT 1")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        inventory.run(ctx_for(world, backup_root=str(backup)))
    message = info.value.result.errors[0]
    assert message.startswith("domain.domain_name '../../etc' in the backup's database") and "'..'" in message
    assert "Fix: correct the row" in message
    assert stable_fingerprint(world) == before


def test_inventory_checks_the_domain_names_of_a_sound_backup(world) -> None:
    done = inventory.run(ctx_for(world))
    names = [n for n in done.notes if "domain, subdomain and alias names checked" in n]
    assert names and int(names[0].split()[0]) >= len(world.domains)


def _edit_backup_database(world, backup: Path, statement: str) -> None:
    """Run one statement on the backup copy's binary ispcp database, through the world's own server."""
    datadir = Path(world.mysql_params["datadir"])
    scratch = datadir / "badcopy"
    shutil.copytree(backup / "var/lib/mysql/ispcp", scratch)
    uid, gid = mysql_ids()
    for path in [scratch, *scratch.iterdir()]:
        os.chown(path, uid, gid)
    root = world.credentials["new"]["root_password"]
    fetch(world, "root", root, statement, "badcopy")
    fetch(world, "root", root, "FLUSH TABLES")
    for path in scratch.iterdir():
        shutil.copy2(path, backup / "var/lib/mysql/ispcp" / path.name)
    fetch(world, "root", root, "DROP DATABASE badcopy")


def test_inventory_accepts_an_empty_database_password(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    _set_old_conf(backup, "DATABASE_PASSWORD", "")  # ispCP's setup offers "[none]"
    done = inventory.run(ctx_for(world, backup_root=str(backup)))
    row = next(r for r in done.data["items"] if r["item"] == "ispcp.conf")
    assert row["state"] == "found", row


def test_preflight_reads_debian_version_where_there_is_no_os_release(world, tmp_path: Path) -> None:
    backup = _broken_backup(world, tmp_path)
    (backup / "etc/os-release").unlink()
    (backup / "etc/debian_version").write_text("6.0.10\n")  # Squeeze has no os-release
    done = preflight.run(ctx_for(world, backup_root=str(backup)))
    table = done.tables[0].frame
    detail = table.loc[table["check"] == "distribution", "detail"].item()
    assert detail.startswith("old debian 6.0.10, new ")


def test_preflight_takes_the_mysql_client_of_old_releases() -> None:
    """Lenny and Squeeze have `mysql`, not `mariadb`: either client passes."""
    found = {
        "rsync": "/usr/bin/rsync",
        "mysql": "/usr/bin/mysql",
        "useradd": "/usr/sbin/useradd",
        "perl": "/usr/bin/perl",
    }
    rows = preflight._tools(SimpleNamespace(target=SimpleNamespace(which=found.get)))
    assert [r["result"] for r in rows] == ["ok"] * 4 and "/usr/bin/mysql" in [r["detail"] for r in rows]
    del found["mysql"]
    client = next(
        r for r in preflight._tools(SimpleNamespace(target=SimpleNamespace(which=found.get))) if "mariadb" in r["check"]
    )
    assert client["result"] == "FAIL" and "mariadb-client" in client["fix"]
