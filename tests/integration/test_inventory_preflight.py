"""inventory and preflight on the small sandbox world, and the foundation's bad-input corpus."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.world import stable_fingerprint
from ispcp_lib.steps import inventory, preflight


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
