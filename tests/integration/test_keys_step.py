"""The keys step on the sandbox world (restored databases, real MariaDB): normal path, lost keys, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ispcp_lib.core.errors import InputError
from ispcp_lib.facts import ispcp_login
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import keyfiles
from ispcp_lib.ispcp.crypto import generate_iv, generate_key
from ispcp_lib.ispcp.keyfiles import KeySet
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import ispcp_conf, keys
from tests.helpers import assert_no_secret, refused

LAYOUTS_105 = ("php", "perl_engine", "perl_messenger")
OTHER = KeySet(generate_key(), generate_iv())


def ctx_for(world: World, apply: bool = False, **options):
    return open_run(**world.runbook_params(), apply=apply, resume=False, options=options)


def old_keys(world: World) -> KeySet:
    cred = world.credentials["old"]
    return KeySet(cred["key"], cred["iv"])


def new_keys(world: World) -> KeySet:
    cred = world.credentials["new"]
    return KeySet(cred["key"], cred["iv"])


def backup_key(world: World, layout: str) -> Path:
    return world.backup_root / keyfiles.LAYOUTS[layout].lstrip("/")


def target_key(world: World, layout: str) -> Path:
    return world.target_root / keyfiles.LAYOUTS[layout].lstrip("/")


def target_keysets(world: World) -> dict[str, KeySet]:
    return ispcp_login.keysets(ctx_for(world), "target")


def fails(world: World, apply: bool = True, **options) -> str:
    """Run keys expecting a failure that leaves the target untouched; return the error text."""
    return refused(world, lambda: keys.run(ctx_for(world, apply=apply, **options)))


# --- the normal path ------------------------------------------------------------------------------


def test_keys_dry_run_apply_and_again(restored: World) -> None:
    world = restored
    before = stable_fingerprint(world)
    ctx = ctx_for(world)
    planned = keys.run(ctx)
    assert planned.status == "planned" and planned.changed == 3
    assert stable_fingerprint(world) == before
    assert all(ks == new_keys(world) for ks in target_keysets(world).values())  # still the dummy's

    ctx.default_apply = True
    done = keys.run(ctx)
    assert done.status == "done" and done.changed == 3
    assert done.data == {"path": "backup_keys", "source": "perl_engine", "layouts": list(LAYOUTS_105), "verified": True}
    found = target_keysets(world)
    assert set(found) == set(LAYOUTS_105) and all(ks == old_keys(world) for ks in found.values())
    for layout in LAYOUTS_105:  # the backup's own files, byte for byte
        assert target_key(world, layout).read_bytes() == backup_key(world, layout).read_bytes()
    # The dummy's files are kept, and they hold the dummy's keys.
    kept = [Path(b) for b in done.backups]
    assert len(kept) == 3
    assert any(keyfiles.parse_keyfile("php", p.read_text()) == new_keys(world) for p in kept if p.suffix == ".php")
    verification = done.tables[-1].frame.set_index("check")["result"].to_dict()
    assert verification["decrypt DATABASE_PASSWORD"] == "verified"
    assert verification["MySQL login as root"] == "verified"
    assert verification["mailbox passwords"] == "verified"
    assert verification["customer SQL passwords"] == "verified"

    again = keys.run(ctx)
    assert again.status == "noop" and again.changed == 0
    assert "already in every key file" in again.noop_reason and "verified" in again.noop_reason
    assert_no_secret(world, ctx, planned, done, again)


def test_keys_rebuilds_missing_layouts_from_the_one_left(restored: World) -> None:
    world = restored
    for layout in ("php", "perl_messenger"):
        backup_key(world, layout).unlink()
    ctx = ctx_for(world, apply=True)
    result = keys.run(ctx)
    assert result.status == "done" and result.data["source"] == "perl_engine"
    assert target_key(world, "perl_engine").read_bytes() == backup_key(world, "perl_engine").read_bytes()
    assert target_key(world, "php").read_text() == keyfiles.render_keyfile("php", old_keys(world))
    assert all(ks == old_keys(world) for ks in target_keysets(world).values())
    rows = result.tables[1].frame.set_index("layout")["action"].to_dict()
    assert rows["php"] == "write: a file rebuilt from the backup's perl_engine key file"
    assert keys.run(ctx).status == "noop"


def test_keys_for_a_108_target_writes_ispcp_keys_conf(restored: World) -> None:
    world = restored
    conf_path = world.target_root / "etc/ispcp/ispcp.conf"
    conf = IspcpConf.load(conf_path)
    conf.set("Version", "1.0.8 OMEGA")
    conf_path.write_text(conf.text())
    for layout in LAYOUTS_105:
        target_key(world, layout).unlink()
    result = keys.run(ctx_for(world, apply=True))
    assert result.data["layouts"] == ["keys_conf"]
    assert keyfiles.parse_keyfile("keys_conf", target_key(world, "keys_conf").read_text()) == old_keys(world)
    assert target_key(world, "keys_conf").stat().st_mode & 0o777 == 0o600
    assert not target_key(world, "php").exists()


def test_keys_placeholder_next_to_a_good_key_file_is_rebuilt(restored: World) -> None:
    world = restored
    backup_key(world, "perl_messenger").write_text("$main::db_pass_key = '{KEY}';\n$main::db_pass_iv = '{IV}';\n1;\n")
    result = keys.run(ctx_for(world, apply=True))
    assert result.status == "done"
    assert any("perl_messenger key file is placeholder" in w for w in result.warnings)
    assert keyfiles.parse_keyfile("perl_messenger", target_key(world, "perl_messenger").read_text()) == old_keys(world)


# --- bad input: a clear error, the target untouched --------------------------------------------------


def test_keys_wrong_length_key(restored: World) -> None:
    world = restored
    for layout in ("perl_engine", "perl_messenger"):
        backup_key(world, layout).unlink()
    short = old_keys(world).key[:-2]
    backup_key(world, "php").write_text(
        f"<?php\n$ispcp_db_pass_key = '{short}';\n$ispcp_db_pass_iv = '{old_keys(world).iv}';\n?>\n"
    )
    error = fails(world)
    assert "key file (php)" in error and "invalid length: 30 bytes, expected 32" in error
    assert "Fix:" in error and str(backup_key(world, "php")) in error
    assert short not in error


def test_keys_that_decrypt_to_garbage(restored: World) -> None:
    world = restored
    for layout in LAYOUTS_105:
        backup_key(world, layout).write_text(keyfiles.render_keyfile(layout, OTHER))
    error = fails(world)
    assert "none of them" in error and "non-printable" in error and "decrypt-password" in error


@pytest.mark.parametrize("wrong", ["php", "perl_engine"])
def test_keys_php_and_perl_disagree(restored: World, wrong: str) -> None:
    world = restored
    backup_key(world, wrong).write_text(keyfiles.render_keyfile(wrong, OTHER))
    right = "perl_engine" if wrong == "php" else "php"
    error = fails(world)
    assert "disagree" in error and f"{wrong} does not" in error
    assert right in error.split("decrypt")[0]  # names the one that decrypts first
    assert f"keys_source = '{right}'" in error

    result = keys.run(ctx_for(world, apply=True, keys_source=right))
    assert result.status == "done" and result.data["source"] == right
    assert any(wrong in w and "ignoring" in w for w in result.warnings)
    assert all(ks == old_keys(world) for ks in target_keysets(world).values())


def test_keys_source_that_does_not_decrypt_is_refused(restored: World) -> None:
    world = restored
    backup_key(world, "php").write_text(keyfiles.render_keyfile("php", OTHER))
    error = fails(world, keys_source="php")
    assert "keys_source" in error and "do not decrypt" in error and "perl_engine" in error
    with pytest.raises(InputError, match="keys_source: is 'php-file', not one of php, perl_engine"):
        ctx_for(world, keys_source="php-file")  # refused when the run opens, before any step


def test_keys_conf_with_an_empty_or_no_database_password(restored: World) -> None:
    world = restored
    conf_path = world.backup_root / "etc/ispcp/ispcp.conf"
    conf = IspcpConf.load(conf_path)
    conf.set("DATABASE_PASSWORD", "")  # ispCP's "[none]": a login without password, which this MySQL refuses
    conf_path.write_text(conf.text())
    error = fails(world)
    assert error.startswith("MySQL login as root") and "refuses root" in error
    conf_path.write_text("\n".join(line for line in conf.lines if not line.startswith("DATABASE_PASSWORD")) + "\n")
    error = fails(world)
    assert "DATABASE_PASSWORD" in error and "missing" in error and str(conf_path) in error


def test_keys_only_placeholder_files(restored: World) -> None:
    world = restored
    for layout in LAYOUTS_105:
        text = keyfiles.render_keyfile(layout, old_keys(world))
        text = text.replace(old_keys(world).key, "{KEY}").replace(old_keys(world).iv, "{IV}")
        backup_key(world, layout).write_text(text)
    error = fails(world)
    assert "placeholder" in error and "keys_lost_reset" in error


def test_keys_decrypt_but_login_fails(restored: World) -> None:
    world = restored
    admin = world.target_mysql().connect("debian-sys-maint", world.credentials["old"]["debian_sys_maint"])
    with admin, admin.cursor() as cur:
        cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY 'changed-after-the-backup'")
    error = fails(world)
    assert "MySQL login as root" in error and "the keys are right" in error and "refuses root" in error
    assert "mysql_restore" in error
    before = stable_fingerprint(world)
    planned = keys.run(ctx_for(world))  # a dry run only warns: the restore may be planned too
    assert planned.status == "planned" and any("refuses root" in w for w in planned.warnings)
    assert stable_fingerprint(world) == before


# --- the lost-keys path -----------------------------------------------------------------------------


def test_keys_all_lost_needs_the_parameter(restored: World) -> None:
    world = restored
    for layout in LAYOUTS_105:
        backup_key(world, layout).unlink()
    error = fails(world)
    assert "every key file is missing" in error and "keys_lost_reset = True" in error


def test_keys_lost_reset_end_to_end(restored: World) -> None:
    world = restored
    for layout in LAYOUTS_105:
        backup_key(world, layout).unlink()
    old_root = world.credentials["old"]["root_password"]
    before = stable_fingerprint(world)
    ctx = ctx_for(world, keys_lost_reset=True)
    planned = keys.run(ctx)
    assert planned.status == "planned"
    assert stable_fingerprint(world) == before
    hosts = [c for c in planned.changes if c.startswith("set a new random password for MySQL account 'root'@")]
    assert len(hosts) >= 2  # every host row of root, not only localhost
    assert world.target_mysql().login_error("root", old_root, "ispcp") is None

    ctx.default_apply = True
    done = keys.run(ctx)
    assert done.status == "done" and done.data["path"] == "lost_keys_reset"
    ok, message = ispcp_login.check_ispcp_login(ctx)
    assert ok, message
    found = target_keysets(world)
    assert set(found) == set(LAYOUTS_105) and len(set(found.values())) == 1
    fresh = next(iter(found.values()))
    assert fresh not in (old_keys(world), new_keys(world))
    login = ispcp_login.ispcp_login(ctx, "target")
    assert login is not None and login.user == "root"
    assert world.target_mysql().login_error("root", login.password, "ispcp") is None
    assert world.target_mysql().login_error("root", old_root, "ispcp") is not None
    # ispcp.old.conf is the old config with the new login: ispcp-update must not try the lost one.
    old_conf = IspcpConf.load(world.target_root / "etc/ispcp/ispcp.old.conf")
    backup_conf = IspcpConf.load(world.backup_root / "etc/ispcp/ispcp.conf")
    assert ispcp_login.decrypt_conf_password(old_conf, fresh) == login.password
    assert old_conf.get("SERVER_HOSTNAME") == backup_conf.get("SERVER_HOSTNAME")
    proof = done.tables[-1].frame.set_index("check")
    assert proof.loc["ispcp.conf + keys log in", "result"] == "verified"
    assert proof.loc["mailbox passwords", "detail"].startswith("0 of ")
    assert any("mailbox and customer SQL password" in w for w in done.warnings)

    again = keys.run(ctx)
    assert again.status == "noop" and "earlier run" in again.noop_reason
    assert target_keysets(world) == found
    assert_no_secret(world, ctx, planned, done, again)
    assert login.password not in ctx.journal_path.read_text()

    # ispcp_conf then carries the reset login, not the undecryptable old one.
    conf_result = ispcp_conf.run(ctx)
    assert conf_result.status == "done"
    assert ispcp_login.check_ispcp_login(ctx)[0]
    assert ispcp_login.ispcp_login(ctx, "target").password == login.password


def test_keys_lost_reset_refused_while_a_key_file_exists(restored: World) -> None:
    world = restored
    for layout in ("php", "perl_messenger"):
        backup_key(world, layout).unlink()
    result = keys.run(ctx_for(world, apply=True, keys_lost_reset=True))
    assert result.data["path"] == "backup_keys"  # the surviving file is used; nothing is reset
    assert world.target_mysql().login_error("root", world.credentials["old"]["root_password"], "ispcp") is None


def test_keys_journal_is_valid_and_redacted(restored: World) -> None:
    world = restored
    ctx = ctx_for(world, apply=True)
    keys.run(ctx)
    records = [json.loads(line) for line in ctx.journal_path.read_text().splitlines()]
    assert records[-1]["name"] == "keys" and records[-1]["status"] == "done"
    assert_no_secret(world, ctx)
