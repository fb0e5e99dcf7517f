"""keys: put the old server's key files back, prove they decrypt DATABASE_PASSWORD, and that it logs in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pymysql

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.facts import ispcp_login as il
from ispcp_lib.facts import mysql_creds
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.ispcp import crypto as crypto_keys
from ispcp_lib.ispcp import encrypted_columns as ec
from ispcp_lib.ispcp import keyfiles
from ispcp_lib.ispcp.keyfiles import KeySet

TITLE = "Restore the key files that decrypt ispCP's database password"
GUIDE = (
    "the paragraph on the two key files (the trap that cost the author the most time), and the checklist's "
    "remark on rebuilding one key file from the other or, with both lost, resetting the password"
)
EXPLANATION = """
ispCP never stores its MySQL password in plain text: `DATABASE_PASSWORD` in `ispcp.conf` is encrypted
(Blowfish) with a key and an IV that live in separate key files — the GUI's `ispcp-db-keys.php`, the engine's
`ispcp-db-keys.pl` (plus the autoresponder's copy), and from 1.0.8 on `/etc/ispcp/ispcp-keys.conf`. The fresh
dummy install on the new server has generated keys of its own, which cannot decrypt the old password. If they
stay, `ispcp-update` later fails to log into the database and the panel shows a connection error, with no hint
that the keys are to blame.

This step copies the backup's key files over the dummy's (the dummy's are kept as safety copies) and rebuilds
any layout the new install needs from whichever file survived; every layout holds the same two strings. It
then proves the result instead of hoping: the keys must decrypt the old `DATABASE_PASSWORD` to readable text,
and that password must log into the restored MySQL as `DATABASE_USER`. If the first part fails the keys are
wrong; if only the second fails, the `mysql` database does not match this `ispcp.conf`. The report says
"verified" and never shows a key or a password.

The same keys also encrypt every mailbox password (`mail_users.mail_pass`, except `_no_` of forward-only
accounts) and every customer SQL password (`sql_user.sqlu_pass`), so the proof runs on **every** such row
before anything is written: each must decrypt to printable text. The counts are shown. If none decrypts,
the keys belong to another installation than the database, and the step stops with nothing written. If
only some fail, those rows are damaged (or were set with other keys): they are listed by id and account,
never by value. With `keys_reset_account_passwords = True` exactly those accounts get new random passwords.

When **every** key file is lost, the guide falls back to ispCP's HOWTO for setting its MySQL password. With
`keys_lost_reset = True` this step does that: new keys in the installer's character set, a new random
password for `DATABASE_USER` in MySQL, the password written encrypted into `ispcp.conf` and `ispcp.old.conf`,
all key layouts written, and the login verified. Everything ispCP encrypted with the lost keys is
unrecoverable: every mailbox and customer SQL password. The step says so and lists every account affected.
With `keys_reset_account_passwords = True` each of them gets a new random password, encrypted with the new
keys in ispCP's database (mailboxes are marked for the engine to rebuild) and, for SQL users, set in MySQL
for every host of the account. The new passwords go into `account-passwords.txt` in the state directory
(mode 0600) for the admin to hand out; they never appear in the report.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "keys_lost_reset",
        bool,
        False,
        "only when every key file is missing from the backup: generate new keys and set a "
        "new random password for ispCP's DATABASE_USER (mailbox and customer SQL "
        "passwords stay unreadable)",
    ),
    Param(
        "keys_reset_account_passwords",
        bool,
        False,
        "give every mailbox and customer SQL user whose password does not "
        "decrypt (all of them when the keys are lost) a new random password, "
        "listed in <state_dir>/account-passwords.txt (mode 0600)",
    ),
    Param(
        "keys_source",
        str,
        None,
        "the backup key file to trust when the key files disagree (default: refuse and say which one decrypts)",
        choices=keyfiles.LAYOUTS,
    ),
)


def required_confs(ctx: Context, why_backup: str) -> tuple[IspcpConf, IspcpConf]:
    """The backup's and the target's ispcp.conf (DATABASE_PASSWORD registered as a secret), or a clear error.

    why_backup says what the step needs the backup's copy for; ispcp_conf shares this.
    """
    old_conf = il.load_conf(ctx, "backup")
    if old_conf is None:
        raise InputError(
            "ispcp.conf (backup)",
            f"is missing: {why_backup}",
            "copy the old /etc/ispcp/ispcp.conf into the backup",
            path=str(ctx.b(il.CONF_PATH)),
        )
    target_conf = il.load_conf(ctx, "target")
    if target_conf is None:
        raise PreconditionFailed(
            "ispcp.conf (target)",
            "is missing: the dummy ispCP install is not in place",
            "install the dummy ispCP first (see ispcp_install_check)",
            path=str(ctx.t(il.CONF_PATH)),
        )
    return old_conf, target_conf


@action("keys")
def run(ctx: Context, result: Result) -> None:
    old_conf, target_conf = required_confs(ctx, "it holds the encrypted DATABASE_PASSWORD")
    backup_files = il.keyfile_states(ctx, "backup", old_conf)
    target_files = il.keyfile_states(ctx, "target", target_conf)
    layouts = target_layouts(target_conf, target_files)
    result.table("Key files in the backup", _files_frame(backup_files))

    if all(kf.state == "missing" for kf in backup_files.values()):
        if not ctx.param("keys_lost_reset"):
            raise PreconditionFailed(
                "key files",
                "every key file is missing from the backup, so the old DATABASE_PASSWORD cannot be decrypted",
                "look for any copy of ispcp-db-keys.php, ispcp-db-keys.pl or ispcp-keys.conf (old "
                "disks, ispCP config tars); with none left, set keys_lost_reset = True to set a new password "
                "with new keys (every mailbox and customer SQL password stays unreadable)",
                path=str(ctx.backup_root),
            )
        run_reset(ctx, result, old_conf, target_conf, target_files, layouts)
        return

    source, keyset, password = choose_keys(ctx, result, old_conf, backup_files)
    user = old_conf.get("DATABASE_USER") or ""
    database = old_conf.get("DATABASE_NAME") or "ispcp"
    if not user:
        raise InputError(
            "DATABASE_USER",
            "is missing in the backup's ispcp.conf",
            "add the DATABASE_USER line of the old server (ispCP's default is root)",
            path=old_conf.path,
        )
    login_ok = check_login(ctx, result, user, password, database)  # before anything changes
    db_login = Login(user, password, "the backup's ispcp.conf (DATABASE_USER, decrypted)")
    reset = ctx.param("keys_reset_account_passwords")
    encrypted = ec.load_rows(ctx, [db_login] if login_ok else [], database, _backup_datadir(ctx, old_conf))
    proof = ec.prove(encrypted, keyset) if encrypted is not None else None
    report_proof(ctx, result, proof, reset)  # wrong keys stop here, before anything is written

    rows = write_key_files(ctx, result, keyset, layouts, target_files, backup_files, f"the backup's {source} key file")
    result.table("Key files on the target", pd.DataFrame(rows))
    if ctx.apply:
        _read_back(ctx, target_conf, layouts, keyset)
    reset_checks = []
    if reset and proof is not None and proof.failed:
        reset_checks = ec.reset_accounts(
            ctx, result, keyset, [r for r, _ in proof.failed], db_login, database, mysql_creds.working_admin(ctx)
        )
    checks = [
        {
            "check": "key files",
            "result": "verified" if ctx.apply else "planned",
            "detail": f"{source} key file from the backup, written as {', '.join(layouts)}",
        },
        {
            "check": "decrypt DATABASE_PASSWORD",
            "result": "verified",
            "detail": "the old ispcp.conf's DATABASE_PASSWORD decrypts to printable text",
        },
        {
            "check": f"MySQL login as {user}",
            "result": "verified" if login_ok else "not verified",
            "detail": f"opens database {database}" if login_ok else "see the warning above",
        },
    ]
    checks += column_checks(ctx, proof, [db_login], database, keyset, fresh=ctx.apply and bool(reset_checks))
    checks += reset_checks
    result.table("Verification", pd.DataFrame(checks))
    result.data.update({"path": "backup_keys", "source": source, "layouts": layouts, "verified": login_ok})
    verdict = "verified" if login_ok else "keys decrypt, login not verified"
    result.summary = f"{source} keys from the backup: {verdict}"
    if not result.changes:
        result.noop_reason = (
            f"the backup's keys are already in every key file the target uses ({', '.join(layouts)}); {verdict}"
        )


def choose_keys(ctx: Context, result: Result, conf: IspcpConf, files: dict[str, il.KeyFile]) -> tuple[str, KeySet, str]:
    """The backup layout whose keys decrypt DATABASE_PASSWORD: (layout, keys, password). Raises on doubt."""
    readable = {layout: kf.keys for layout, kf in files.items() if kf.keys is not None}
    damaged = {layout: kf for layout, kf in files.items() if kf.state in ("placeholder", "invalid")}
    wanted = ctx.param("keys_source")  # one of keyfiles.LAYOUTS or None: the parameter spec checks it
    if not readable:
        layout, kf = next(iter(damaged.items()))
        raise InputError(
            f"key file ({layout})",
            f"{kf.detail}; no other key file in the backup is usable",
            "restore the real key file of the old server; if none exists anywhere, remove the damaged "
            "file(s) from the backup copy and set keys_lost_reset = True",
            path=str(kf.path or kf.logical),
        )
    decrypted = il.try_decrypt(conf, readable, ctx.secrets)  # raises for a missing or malformed value
    good = [layout for layout, pw in decrypted.items() if pw is not None]
    if wanted is not None:
        kf = files[wanted]
        if kf.keys is None:
            raise InputError(
                "keys_source",
                f"names {wanted}, but that key file is {kf.state}{': ' + kf.detail if kf.detail else ''}",
                f"choose one of the readable layouts: {', '.join(il.ordered(readable))}",
                path=str(kf.path or kf.logical),
            )
        if decrypted[wanted] is None:
            raise InputError(
                "keys_source",
                f"names {wanted}, but its keys do not decrypt DATABASE_PASSWORD",
                f"choose a layout that decrypts it: {', '.join(good) or 'none does'}",
                path=str(kf.path),
            )
        others = [layout for layout in il.ordered(readable) if readable[layout] != readable[wanted]]
        if others or damaged:
            result.warn(
                f"keys_source = {wanted}: ignoring the backup's {', '.join(others + list(damaged))}; "
                "every target key file is written from the chosen one"
            )
        return wanted, readable[wanted], decrypted[wanted] or ""
    if not good:
        raise InputError(
            "key files in the backup",
            f"none of them ({', '.join(il.ordered(readable))}) decrypts DATABASE_PASSWORD of the old ispcp.conf: "
            "it decrypts to non-printable bytes, so keys and config come from different installations",
            "find the key file that belongs to this ispcp.conf (or the ispcp.conf that belongs to these keys); "
            "`ispcp-recover decrypt-password --conf FILE --keys FILE` tries any pair",
            path=conf.path,
        )
    distinct = {readable[layout] for layout in readable}
    if len(distinct) > 1:
        bad = [layout for layout in readable if decrypted[layout] is None]
        raise InputError(
            "key files in the backup",
            f"disagree: {', '.join(good)} decrypt{'s' if len(good) == 1 else ''} DATABASE_PASSWORD, "
            f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not (other keys)",
            f"check which file is the old server's real one; to use the one that decrypts, set "
            f"keys_source = '{good[0]}' and the others are rebuilt from it",
            path=conf.path,
        )
    for layout, kf in damaged.items():
        result.warn(f"the backup's {layout} key file is {kf.state} ({kf.detail}); it is rebuilt from {good[0]}")
    return good[0], readable[good[0]], decrypted[good[0]] or ""


def _read_back(ctx: Context, conf: IspcpConf, layouts: list[str], keyset: KeySet) -> None:
    files = il.keyfile_states(ctx, "target", conf)
    wrong = [layout for layout in layouts if files[layout].keys != keyset]
    if wrong:
        raise PreconditionFailed(
            "key files (target)",
            f"{', '.join(wrong)} do not read back the keys just written",
            "check the disk and the file permissions, then run the step again",
        )


def _files_frame(files: dict[str, il.KeyFile]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"layout": kf.layout, "path": kf.logical, "state": kf.state, "detail": kf.detail} for kf in files.values()]
    )


# --- shared with ispcp_conf -----------------------------------------------------------------------


def target_layouts(conf: IspcpConf, files: dict[str, il.KeyFile]) -> list[str]:
    """The layouts the target's ispCP reads: its version's, plus any other key file it already has."""
    version = conf.version_tuple()
    base = ["keys_conf"] if version is not None and version >= (1, 0, 8) else ["php", "perl_engine", "perl_messenger"]
    return base + [layout for layout, kf in files.items() if kf.state != "missing" and layout not in base]


def check_login(ctx: Context, result: Result, user: str, password: str, database: str) -> bool:
    """Try the decrypted login. Applying, a failure stops the step; a dry run only warns.

    (In a dry run the restore that makes the login work may itself be only planned.)
    """
    if ctx.mysql is None or not ctx.mysql.status():
        item = "MySQL server"
        problem = "is not running, so the decrypted DATABASE_PASSWORD cannot be tried"
        fix = "start MySQL with the restored databases (the mysql_restore step leaves it running)"
    else:
        reason = ctx.mysql.can_login(user, password, database)
        if reason is None:
            return True
        item = f"MySQL login as {user}"
        problem = (
            f"the keys are right (DATABASE_PASSWORD decrypts to printable text), but MySQL refuses "
            f"{user} on database {database}: {reason}"
        )
        fix = (
            "restore the old server's mysql database (mysql_restore): its accounts must match this "
            "ispcp.conf. If they do, the password was changed after this ispcp.conf was saved: set it in "
            "MySQL to the decrypted one (`ispcp-recover decrypt-password --show`)"
        )
    if ctx.apply:
        raise PreconditionFailed(item, problem, fix)
    result.warn(
        f"{item}: {problem}. Expected in a dry run when mysql_restore is not applied yet; applying "
        f"stops here unless it works by then. Fix: {fix}"
    )
    return False


def _backup_datadir(ctx: Context, conf: IspcpConf) -> Path | None:
    try:
        return ctx.b(conf.get("DATABASE_DIR") or "/var/lib/mysql")
    except InputError:
        return None


def report_proof(ctx: Context, result: Result, proof: ec.Proof | None, reset: bool) -> None:
    """Say how the encrypted columns decrypt; rows that fail are listed. Wrong keys stop an apply here."""
    if proof is None:
        result.warn(
            "the encrypted mailbox and customer SQL passwords could not be read (neither from the restored "
            "database nor from the backup's copy): the keys are proven on DATABASE_PASSWORD only"
        )
        return
    if proof.failed:
        result.table(
            "Encrypted passwords that do not decrypt with these keys (by id and account)", proof.failed_frame()
        )
    counts = "; ".join(
        f"{column}: {ok} of {total} decrypt"
        for column in (ec.MAILBOX, ec.SQL_USER)
        for ok, total in [proof.count(column)]
    )
    if proof.wrong_keys:
        problem = (
            f"the keys decrypt DATABASE_PASSWORD, but none of the {len(proof.rows.rows)} encrypted passwords "
            f"in {proof.rows.source} ({counts}): the database's passwords were encrypted with other keys "
            "(the key files and ispcp.conf come from another installation than the database)"
        )
        fix = (
            "find the key files that belong to this database (`ispcp-recover decrypt-password` tries any pair); if "
            "those are lost for good, set keys_reset_account_passwords = True to give every listed account a new "
            "password"
        )
        if reset:
            result.warn(f"{problem}. keys_reset_account_passwords is set: every listed account gets a new password")
        elif ctx.apply:
            raise PreconditionFailed("encrypted passwords in the database", problem, fix)
        else:
            result.warn(f"{problem}. Applying stops here, before anything is written. Fix: {fix}")
    elif proof.failed:
        then = (
            "they get new random passwords (keys_reset_account_passwords)"
            if reset
            else "set keys_reset_account_passwords = True to give them new random passwords, or reset them in the panel"
        )
        result.warn(
            f"{len(proof.failed)} of {len(proof.rows.rows)} encrypted passwords do not decrypt with these keys "
            f"({counts}): damaged rows, or set with other keys; listed in the table by id and account. "
            f"Their owners cannot log in: {then}"
        )
    else:
        result.note(f"Every encrypted password decrypts with these keys ({counts}; read from {proof.rows.source}).")


def column_checks(
    ctx: Context, proof: ec.Proof | None, logins: list[Login], database: str, keyset: KeySet, fresh: bool
) -> list[dict[str, str]]:
    """Verification rows for the encrypted columns; fresh=True proves them again (after new passwords were set)."""
    if fresh:
        again = ec.load_rows(ctx, logins, database, None)
        proof = ec.prove(again, keyset) if again is not None else proof
    if proof is None:
        return [{"check": "encrypted columns", "result": "skipped", "detail": "not readable"}]
    return proof.checks()


def _group_gid(ctx: Context, name: str) -> int:
    path = ctx.t("/etc/group")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
                return int(parts[2])
    return 0


def write_key_files(
    ctx: Context,
    result: Result,
    keyset: KeySet,
    layouts: list[str],
    target_files: dict[str, il.KeyFile],
    backup_files: dict[str, il.KeyFile],
    source: str,
) -> list[dict[str, str]]:
    """Every target layout holds keyset afterwards: the backup's own bytes where it has that layout."""
    rows = []
    for layout in layouts:
        tf = target_files[layout]
        bf = backup_files.get(layout)
        if bf is not None and bf.keys == keyset and bf.raw is not None:
            content, origin = bf.raw, "the backup's copy"
        else:
            content, origin = keyfiles.render_keyfile(layout, keyset), f"a file rebuilt from {source}"
        row = {"layout": layout, "path": tf.logical, "before": tf.state}
        if tf.keys == keyset:
            rows.append({**row, "action": "none: already holds these keys"})
            continue
        mode = uid = gid = None
        assert tf.path is not None
        if not tf.path.exists():
            # The GUI reads its file as www-data; the engine's files are root's alone.
            backup_mode = bf.path.stat().st_mode & 0o777 if bf is not None and bf.path and bf.path.exists() else None
            mode = backup_mode or (0o640 if layout == "php" else 0o600)
            uid, gid = 0, _group_gid(ctx, "www-data") if layout == "php" else 0
        verb = {"missing": "create", "found": "replace"}.get(tf.state, f"replace the {tf.state}")
        ctx.write_file(
            tf.path,
            content,
            mode,
            uid,
            gid,
            show_diff=False,
            what=f"{verb} {layout} key file {tf.logical} with {origin} (contents are secret: no diff)",
        )
        rows.append({**row, "action": f"{'write' if ctx.apply else 'planned'}: {origin}"})
    return rows


# --- the lost-keys path ---------------------------------------------------------------------------


def run_reset(
    ctx: Context,
    result: Result,
    old_conf: IspcpConf,
    target_conf: IspcpConf,
    target_files: dict[str, il.KeyFile],
    layouts: list[str],
) -> None:
    """ispCP's HOWTO for setting its MySQL password, with new keys: used only when every key file is lost."""
    user = old_conf.get("DATABASE_USER")
    database = old_conf.get("DATABASE_NAME") or "ispcp"
    if not user:
        raise InputError(
            "DATABASE_USER",
            "is missing in the backup's ispcp.conf, so there is no account to reset",
            "add the DATABASE_USER line of the old server (ispCP's default is root)",
            path=old_conf.path,
        )
    conf_path = ctx.t(il.CONF_PATH)
    old_path = ctx.t(f"{target_conf.get('CONF_DIR') or '/etc/ispcp'}/ispcp.old.conf")
    result.warn("every key file is missing from the backup: ispCP's database password is reset with new keys")

    earlier = _earlier_reset(ctx, old_path, target_files)
    if earlier is not None:
        keyset, password = earlier
        result.note("reusing the keys and password of an earlier reset (they decrypt the target's ispcp.old.conf)")
    else:
        keyset = KeySet(crypto_keys.generate_key(), crypto_keys.generate_iv())
        password = crypto_keys.random_password(24)
        result.note("generated new keys (installer's character set) and a random 24-character password")
    for value, label in ((keyset.key, "DB_PASS_KEY"), (keyset.iv, "DB_PASS_IV"), (password, "DATABASE_PASSWORD")):
        ctx.secrets.add(value, label)
    cipher = crypto_keys.encrypt_db_password(password, keyset.key, keyset.iv)
    ctx.secrets.add(cipher, "DATABASE_PASSWORD (encrypted)")

    admin = mysql_creds.working_admin(ctx)
    hosts = _hosts_to_reset(ctx, result, admin, user, password)
    reset = ctx.param("keys_reset_account_passwords")
    lost = _lost_accounts(ctx, result, admin, database, old_conf, keyset, reset)

    # Files first: the new password must be recoverable from disk before MySQL accepts only it.
    rows = write_key_files(ctx, result, keyset, layouts, target_files, {}, "the new keys")
    result.table("Key files on the target", pd.DataFrame(rows))
    # ispcp.conf gets the whole login (as ispcp_conf would carry it); ispcp.old.conf is the old config
    # with the new password, or ispcp-update would try the lost one (the guide's warning).
    creds = {
        "DATABASE_HOST": old_conf.get("DATABASE_HOST") or "localhost",
        "DATABASE_NAME": database,
        "DATABASE_USER": user,
        "DATABASE_PASSWORD": cipher,
    }
    st = conf_path.stat()
    old_meta = (None, None, None) if old_path.exists() else (st.st_mode & 0o777, st.st_uid, st.st_gid)
    for path, base, names, meta in (
        (conf_path, target_conf, tuple(creds), (None, None, None)),
        (old_path, _old_conf_base(old_path, old_conf), ("DATABASE_USER", "DATABASE_PASSWORD"), old_meta),
    ):
        wanted = IspcpConf.parse(base.text(), str(path))
        for key in names:
            if wanted.get(key) != creds[key]:
                wanted.set(key, creds[key])
        fresh = not path.exists()
        if (
            ctx.write_file(
                path,
                wanted.text(),
                *meta,
                show_diff=not fresh,
                what=f"{ctx.display_path(path)}: {', '.join(names)} of the reset (password encrypted)",
            )
            and fresh
        ):  # a new ispcp.old.conf: show what differs from the old config it copies
            result.diffs.append(
                Diff(
                    f"{base.path} → {ctx.display_path(path)}",
                    fileops.unified_diff(base.text(), wanted.text(), ctx.display_path(path)),
                )
            )
    for host in hosts:
        result.change(f"set a new random password for MySQL account '{user}'@'{host}'")
    if ctx.apply and hosts:
        _alter_user(ctx, admin, user, hosts, password)
    checks = [
        {
            "check": "key files",
            "result": "verified" if ctx.apply else "planned",
            "detail": f"new keys written as {', '.join(layouts)}",
        }
    ]
    db_login = Login(user, password, "the reset DATABASE_USER login")
    if ctx.apply:
        ok, message = il.check_ispcp_login(ctx)
        if not ok:
            raise PreconditionFailed(
                "lost-keys reset",
                message,
                "read the message: it names the part that failed; the run's safety copies hold the previous files",
            )
        checks.append({"check": "ispcp.conf + keys log in", "result": "verified", "detail": message})
    reset_checks = ec.reset_accounts(ctx, result, keyset, lost, db_login, database, admin) if reset else []
    if ctx.apply:
        checks += column_checks(ctx, None, [db_login], database, keyset, fresh=True)
    checks += reset_checks
    result.table("Verification", pd.DataFrame(checks))
    result.data.update({"path": "lost_keys_reset", "layouts": layouts, "verified": ctx.apply})
    result.summary = "lost keys: new keys and a new database password" + (", verified" if ctx.apply else " planned")
    if not result.changes:
        result.noop_reason = "the reset of an earlier run is in place: its keys decrypt the new password, which logs in"


def _lost_accounts(
    ctx: Context, result: Result, admin: Login | None, database: str, old_conf: IspcpConf, keyset: KeySet, reset: bool
) -> list[ec.EncryptedRow]:
    """Every account whose password went with the lost keys: said plainly, listed; the ones to reset."""
    found = ec.load_rows(ctx, [admin] if admin is not None else [], database, _backup_datadir(ctx, old_conf))
    if found is None:
        result.warn(
            "the accounts whose passwords are lost could not be listed: ispCP's database is readable neither "
            "on the target nor in the backup"
        )
        return []
    lost = [r for r in found.rows if ec.why_not(r.cipher, keyset) is not None]
    if not lost:
        if found.rows:
            result.note(
                f"Every one of the {len(found.rows)} mailbox and SQL passwords decrypts with the keys now in "
                "place: they were given new passwords by an earlier run of this step."
            )
        return []
    mail = sum(1 for r in lost if r.column == ec.MAILBOX)
    sql = len(lost) - mail
    result.table("Accounts whose password is lost with the keys (unrecoverable)", ec.accounts_frame(lost))
    then = (
        f"they get new random passwords now, listed for the admin in {ctx.display_path(ec.credentials_path(ctx))} "
        "(mode 0600)"
        if reset
        else "set keys_reset_account_passwords = True to give each a new random password (listed for the admin in "
        f"{ctx.display_path(ec.credentials_path(ctx))}, mode 0600), or reset them in the panel after the update"
    )
    result.warn(
        f"With the keys lost, every mailbox and customer SQL password is unrecoverable: {mail} mailbox(es) and "
        f"{sql} SQL user(s), listed in the table above (read from {found.source}). Their owners cannot log "
        f"in with the old passwords: {then}"
    )
    return lost


def _old_conf_base(old_path: Path, backup_conf: IspcpConf) -> IspcpConf:
    """ispcp.old.conf as it is on the target (a rerun), else the old server's config it copies."""
    if old_path.is_file():
        return IspcpConf.load(old_path)
    return backup_conf


def _earlier_reset(ctx: Context, old_path: Path, target_files: dict[str, il.KeyFile]) -> tuple[KeySet, str] | None:
    """Keys and password of a previous reset: the target's ispcp.old.conf decrypts with the target's keys.

    The dummy install has no ispcp.old.conf, so a match comes from this step (or from keys that an earlier
    run restored): either way they decrypt a password that is on disk, which is all a reset needs.
    """
    if not old_path.is_file():
        return None
    try:
        conf = IspcpConf.load(old_path)
        ctx.secrets.add(conf.get("DATABASE_PASSWORD"), "DATABASE_PASSWORD (encrypted)")
        if not conf.get("DATABASE_PASSWORD"):
            return None
        found = {layout: kf.keys for layout, kf in target_files.items() if kf.keys is not None}
        for layout, password in il.try_decrypt(conf, found, ctx.secrets).items():
            if password is not None:
                return found[layout], password
    except InputError:
        return None
    return None


def _hosts_to_reset(ctx: Context, result: Result, admin: Login | None, user: str, password: str) -> list[str]:
    """Hosts of user's MySQL accounts whose password is not yet `password`."""
    if admin is None:
        problem = "no admin login works on the running server (neither the target's nor the backup's debian.cnf)"
        fix = "start MySQL and restore the maintainer login first (mysql_restore, mysql_maintainer)"
        if ctx.apply:
            raise PreconditionFailed("MySQL admin login", problem, fix)
        result.warn(f"MySQL admin login: {problem}; the password change cannot be planned. Fix: {fix}")
        return []
    with ctx.mysql.connect(admin.user, admin.password) as conn, conn.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host", (user,))
        hosts = [r[0] for r in cur.fetchall()]
        if not hosts:
            problem = "has no account in the running server's mysql database"
            fix = "restore the old server's mysql database first (mysql_restore)"
            if ctx.apply:
                raise PreconditionFailed(f"MySQL account {user}", problem, fix)
            result.warn(f"MySQL account {user} {problem}. Fix: {fix}")
            return []
        try:  # MariaDB: compare hashes, so that a rerun changes nothing
            cur.execute(
                "SELECT Host FROM mysql.user WHERE User = %s AND authentication_string = PASSWORD(%s)", (user, password)
            )
            done = {r[0] for r in cur.fetchall()}
        except pymysql.MySQLError:
            done = set(hosts) if ctx.mysql.can_login(user, password) is None else set()
    return [h for h in hosts if h not in done]


def _alter_user(ctx: Context, admin: Login, user: str, hosts: list[str], password: str) -> None:
    try:
        with ctx.mysql.connect(admin.user, admin.password) as conn, conn.cursor() as cur:
            for host in hosts:
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
    except pymysql.MySQLError as exc:
        raise PreconditionFailed(
            f"MySQL account {user}",
            ctx.secrets.redact(f"the password change failed: {exc}"),
            "the new keys and the encrypted password are already in the files; fix the "
            "cause and run the step again: it reuses them",
        ) from None
