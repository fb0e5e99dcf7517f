"""The keys step's proof on every encrypted column, and the lost-keys path for mailbox and customer SQL passwords.

Real MariaDB, the sandbox's restored `ispcp` database: 9 mailboxes with passwords (plus one forward-only
`_no_`) and 2 customer SQL users, all encrypted by the old server with the old keys.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import ispcp_login
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import encrypted_columns, keyfiles
from ispcp_lib.ispcp.crypto import decrypt_db_password, encrypt_db_password, generate_iv, generate_key
from ispcp_lib.ispcp.keyfiles import KeySet
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import customer_databases, keys
from tests.helpers import assert_no_secret, ctx_for, fetch

LAYOUTS_105 = ("php", "perl_engine", "perl_messenger")
OTHER = KeySet(generate_key(), generate_iv())
MAILBOXES, SQL_USERS = 9, 2


def old_keys(world: World) -> KeySet:
    return KeySet(world.credentials["old"]["key"], world.credentials["old"]["iv"])


def backup_key(world: World, layout: str) -> Path:
    return world.backup_root / keyfiles.LAYOUTS[layout].lstrip("/")


def sql(world: World, statement: str, args: tuple | None = None) -> list[tuple]:
    # The old maintainer login: the lost-keys reset changes root's password, not this one.
    return fetch(world, "debian-sys-maint", world.credentials["old"]["debian_sys_maint"], statement, "ispcp", args)


def checks(result: Result) -> dict[str, dict[str, str]]:
    frame = next(t.frame for t in result.tables if t.title == "Verification")
    return {r["check"]: r for r in frame.to_dict("records")}


def table(result: Result, prefix: str):  # noqa: ANN201 - a DataFrame
    return next(t.frame for t in result.tables if t.title.startswith(prefix))


# --- right keys, wrong keys, damaged rows ---------------------------------------------------------


def test_right_keys_every_row_decrypts(restored: World) -> None:
    world = restored
    ctx = ctx_for(world, apply=True)
    done = keys.run(ctx)
    assert done.status == "done", done.errors
    found = checks(done)
    assert found["mailbox passwords"] == {
        "check": "mailbox passwords",
        "result": "verified",
        "detail": f"{MAILBOXES} of {MAILBOXES} decrypt to text",
    }
    assert found["customer SQL passwords"]["detail"] == f"{SQL_USERS} of {SQL_USERS} decrypt to text"
    assert any(
        "Every encrypted password decrypts with these keys" in n and "restored ispcp database" in n for n in done.notes
    )
    assert not any(t.title.startswith("Encrypted passwords that do not decrypt") for t in done.tables)
    assert not Path(encrypted_columns.credentials_path(ctx)).exists()
    assert_no_secret(world, ctx, done)


def test_proof_in_a_dry_run_reads_the_backup_before_the_restore(world: World) -> None:
    before = stable_fingerprint(world)
    planned = keys.run(ctx_for(world))  # the target still holds the dummy's empty ispcp database
    assert planned.status == "planned"
    assert checks(planned)["mailbox passwords"]["detail"] == f"{MAILBOXES} of {MAILBOXES} decrypt to text"
    assert any("backup's copy of ispcp" in n for n in planned.notes)
    assert stable_fingerprint(world) == before


def wrong_keys_backup(world: World) -> None:
    """Key files and ispcp.conf from another installation: they agree with each other, not with the database."""
    for layout in LAYOUTS_105:
        backup_key(world, layout).write_text(keyfiles.render_keyfile(layout, OTHER))
    conf_path = world.backup_root / "etc/ispcp/ispcp.conf"
    conf = IspcpConf.load(conf_path)
    conf.set("DATABASE_PASSWORD", encrypt_db_password(world.credentials["old"]["root_password"], OTHER.key, OTHER.iv))
    conf_path.write_text(conf.text())


def test_wrong_keys_are_reported_and_nothing_is_written(restored: World) -> None:
    world = restored
    wrong_keys_backup(world)
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        keys.run(ctx_for(world, apply=True))
    result = info.value.result
    error = result.errors[0]
    assert "none of the 11 encrypted passwords" in error and "encrypted with other keys" in error
    assert "keys_reset_account_passwords = True" in error and "decrypt-password" in error
    assert stable_fingerprint(world) == before  # not one key file written
    failed = table(result, "Encrypted passwords that do not decrypt")
    assert len(failed) == MAILBOXES + SQL_USERS
    assert set(failed["column"]) == {"mailbox passwords", "customer SQL passwords"}
    assert "ex002blog" in set(failed["account"]) and "info@example-001.test" in set(failed["account"])
    assert set(failed["why"]) == {"decrypts to non-printable bytes: wrong key or IV"}

    ctx = ctx_for(world)
    planned = keys.run(ctx)  # a dry run says the same as a warning
    assert planned.status == "planned"
    assert any("Applying stops here, before anything is written" in w for w in planned.warnings)
    assert stable_fingerprint(world) == before
    assert_no_secret(world, ctx, result, planned)


def test_damaged_rows_are_named_and_reset_on_request(restored: World) -> None:
    world = restored
    sql(world, "UPDATE mail_users SET mail_pass = 'not%base64' WHERE mail_id = 1")
    sql(
        world,
        "UPDATE sql_user SET sqlu_pass = %s WHERE sqlu_id = 2",
        (encrypt_db_password("set-with-other-keys", OTHER.key, OTHER.iv),),
    )
    ctx = ctx_for(world, apply=True)
    done = keys.run(ctx)
    assert done.status == "done"
    assert any("2 of 11 encrypted passwords do not decrypt" in w for w in done.warnings)
    failed = table(done, "Encrypted passwords that do not decrypt").set_index("id")
    assert failed.loc[1, "account"] == "info@example-001.test" and failed.loc[1, "why"] == "is not valid base64"
    assert failed.loc[2, "account"] == "ex002blog" and failed.loc[2, "database"] == "example002_blog"
    assert checks(done)["mailbox passwords"]["detail"] == f"{MAILBOXES - 1} of {MAILBOXES} decrypt to text"

    ctx = ctx_for(world, apply=True, keys_reset_account_passwords=True)
    reset = keys.run(ctx)
    assert reset.status == "done", reset.errors
    path = Path(encrypted_columns.credentials_path(ctx))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == 0
    creds = encrypted_columns.read_credentials(ctx)
    assert set(creds) == {("mailbox", "info@example-001.test"), ("sql", "ex002blog")}
    new_sql = creds[("sql", "ex002blog")][1]
    assert world.target_mysql().login_error("ex002blog", new_sql) is None
    cipher, status = sql(world, "SELECT mail_pass, status FROM mail_users WHERE mail_id = 1")[0]
    keys_now = old_keys(world)
    assert decrypt_db_password(cipher, keys_now.key, keys_now.iv) == creds[("mailbox", "info@example-001.test")][1]
    assert status == "change"
    assert checks(reset)["customer SQL passwords"]["detail"] == f"{SQL_USERS} of {SQL_USERS} decrypt to text"
    assert checks(reset)["SQL logins with the new passwords"]["result"] == "verified"
    shop_cipher = sql(world, "SELECT sqlu_pass FROM sql_user WHERE sqlu_id = 1")[0][0]
    # the account whose password decrypts keeps it
    assert (
        world.target_mysql().login_error("ex001shop", decrypt_db_password(shop_cipher, keys_now.key, keys_now.iv))
        is None
    )

    again = keys.run(ctx)
    assert again.status == "noop", again.changes
    assert encrypted_columns.read_credentials(ctx) == creds
    assert_no_secret(world, ctx, done, reset, again)
    report = reset._repr_html_()
    assert new_sql not in report and str(path.name) in report


# --- the lost-keys path ---------------------------------------------------------------------------


def lose_keys(world: World) -> None:
    for layout in LAYOUTS_105:
        backup_key(world, layout).unlink()


def test_lost_keys_list_every_account_as_unrecoverable(restored: World) -> None:
    world = restored
    lose_keys(world)
    ctx = ctx_for(world, apply=True, keys_lost_reset=True)
    done = keys.run(ctx)
    assert done.status == "done", done.errors
    lost = table(done, "Accounts whose password is lost with the keys")
    assert len(lost) == MAILBOXES + SQL_USERS
    assert set(lost[lost["kind"] == "SQL user"]["account"]) == {"ex001shop", "ex002blog"}
    assert any(
        f"every mailbox and customer SQL password is unrecoverable: {MAILBOXES} mailbox(es) and {SQL_USERS} SQL user(s)"
        in w
        and "keys_reset_account_passwords = True" in w
        for w in done.warnings
    )
    assert not Path(encrypted_columns.credentials_path(ctx)).exists()
    assert checks(done)["customer SQL passwords"]["detail"] == f"0 of {SQL_USERS} decrypt to text"


def test_lost_keys_reset_gives_every_account_a_new_password(restored: World) -> None:
    world = restored
    old_passwords = {
        user: decrypt_db_password(cipher, old_keys(world).key, old_keys(world).iv)
        for user, cipher in sql(world, "SELECT sqlu_name, sqlu_pass FROM sql_user")
    }
    lose_keys(world)
    # The runbook's order: the customer databases come back before the keys step. Their logins cannot be
    # proven now (no key decrypts sqlu_pass); the step says so and goes on.
    restored_dbs = customer_databases.run(ctx_for(world, apply=True))
    assert restored_dbs.status == "done"
    assert {r["login"] for r in restored_dbs.data["sql_logins"]} == {"not tried"}
    assert all(r["detail"].startswith("the backup has no key file") for r in restored_dbs.data["sql_logins"])
    old_sql = {c["user"]: c for c in world.manifest["customer_dbs"]}
    before = stable_fingerprint(world)
    ctx = ctx_for(world, keys_lost_reset=True, keys_reset_account_passwords=True)
    planned = keys.run(ctx)
    assert planned.status == "planned", planned.errors
    assert stable_fingerprint(world) == before and not Path(encrypted_columns.credentials_path(ctx)).exists()
    assert any(f"for {MAILBOXES} mailbox(es)" in c for c in planned.changes)
    assert any(f"for {SQL_USERS} customer SQL user(s)" in c for c in planned.changes)

    ctx.default_apply = True
    done = keys.run(ctx)
    assert done.status == "done", done.errors
    path = Path(encrypted_columns.credentials_path(ctx))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = encrypted_columns.read_credentials(ctx)
    assert len(creds) == MAILBOXES + SQL_USERS
    new_keys = ispcp_login.keysets(ctx, "target")["perl_engine"]
    for user, c in old_sql.items():
        database, password = creds[("sql", user)]
        assert database == c["name"]
        assert world.target_mysql().login_error(user, password, database) is None  # logs in, opens its database
        assert world.target_mysql().login_error(user, old_passwords[user]) is not None  # the old one is gone
    for mail_id, addr, cipher in sql(
        world, "SELECT mail_id, mail_addr, mail_pass FROM mail_users WHERE mail_pass <> '_no_'"
    ):
        assert decrypt_db_password(cipher, new_keys.key, new_keys.iv) == creds[("mailbox", addr)][1], mail_id
    found = checks(done)
    assert found["mailbox passwords"]["detail"] == f"{MAILBOXES} of {MAILBOXES} decrypt to text"
    assert (
        found["SQL logins with the new passwords"]["detail"]
        == f"{SQL_USERS} of {SQL_USERS} log in with the new password"
    )
    for secret in [v[1] for v in creds.values()]:
        assert secret in ctx.secrets

    again = keys.run(ctx)
    assert again.status == "noop", again.changes
    assert encrypted_columns.read_credentials(ctx) == creds
    assert_no_secret(world, ctx, planned, done, again)
