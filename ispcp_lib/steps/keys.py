"""keys (the step): put the old server's key files back, prove they decrypt DATABASE_PASSWORD, and that it logs in.

The key file formats are `ispcp.keyfiles`, the Blowfish `ispcp.crypto`, the encrypted columns
`ispcp.encrypted_columns`; this module only decides and acts.
"""

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
from ispcp_lib.facts import backup_layout, ispcp_login
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.ispcp import crypto, encrypted_columns, keyfiles
from ispcp_lib.ispcp.keyfiles import KeySet
from ispcp_lib.ispcp.login_check import require_login, required_confs
from ispcp_lib.mysql import accounts

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


@action("keys")
def run(ctx: Context, result: Result) -> None:
    old_conf, target_conf = required_confs(ctx, "it holds the encrypted DATABASE_PASSWORD")
    backup_files = ispcp_login.keyfile_states(ctx, "backup", old_conf)
    target_files = ispcp_login.keyfile_states(ctx, "target", target_conf)
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
                path=backup_layout.backup(ctx).root,
            )
        run_reset(ctx, result, old_conf, target_conf, target_files, layouts)
        return

    source, keyset, password = choose_keys(ctx, result, old_conf, backup_files)
    user = old_conf.get("DATABASE_USER") or ""
    database = old_conf.database_name
    if not user:
        raise InputError(
            "DATABASE_USER",
            "is missing in the backup's ispcp.conf",
            "add the DATABASE_USER line of the old server (ispCP's default is root)",
            path=old_conf.path,
        )
    login_ok = require_login(ctx, result, user, password, database)  # before anything changes
    db_login = Login(user, password, "the backup's ispcp.conf (DATABASE_USER, decrypted)")
    reset = bool(ctx.param("keys_reset_account_passwords"))
    encrypted = encrypted_columns.load_rows(
        ctx, [db_login] if login_ok else [], database, _backup_datadir(ctx, old_conf)
    )
    proof = encrypted_columns.prove(encrypted, keyset) if encrypted is not None else None
    report_proof(ctx, result, proof, reset)  # wrong keys stop here, before anything is written

    rows = write_key_files(ctx, result, keyset, layouts, target_files, backup_files, f"the backup's {source} key file")
    result.table("Key files on the target", pd.DataFrame(rows))
    if ctx.apply:
        _read_back(ctx, target_conf, layouts, keyset)
    reset_checks = []
    if reset and proof is not None and proof.failed:
        reset_checks = encrypted_columns.reset_accounts(
            ctx, result, keyset, [r for r, _ in proof.failed], db_login, database, accounts.admin_login(ctx)
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
            "detail": "the old ispcp.conf's DATABASE_PASSWORD decrypts to printable text"
            if old_conf.get("DATABASE_PASSWORD")
            else "DATABASE_PASSWORD is empty (ispCP's [none]): nothing to decrypt",
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


def choose_keys(
    ctx: Context, result: Result, conf: IspcpConf, files: dict[str, ispcp_login.KeyFile]
) -> tuple[str, KeySet, str]:
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
            path=kf.where or kf.logical,
        )
    decrypted = ispcp_login.try_decrypt(conf, readable, ctx.secrets)  # raises for a missing or malformed value
    good = [layout for layout, pw in decrypted.items() if pw is not None]
    if wanted is not None:
        kf = files[wanted]
        if kf.keys is None:
            raise InputError(
                "keys_source",
                f"names {wanted}, but that key file is {kf.state}{': ' + kf.detail if kf.detail else ''}",
                f"choose one of the readable layouts: {', '.join(ispcp_login.ordered(readable))}",
                path=kf.where or kf.logical,
            )
        if decrypted[wanted] is None:
            raise InputError(
                "keys_source",
                f"names {wanted}, but its keys do not decrypt DATABASE_PASSWORD",
                f"choose a layout that decrypts it: {', '.join(good) or 'none does'}",
                path=kf.where,
            )
        others = [layout for layout in ispcp_login.ordered(readable) if readable[layout] != readable[wanted]]
        if others or damaged:
            result.warn(
                f"keys_source = {wanted}: ignoring the backup's {', '.join(others + list(damaged))}; "
                "every target key file is written from the chosen one"
            )
        return wanted, readable[wanted], decrypted[wanted] or ""
    if not good:
        raise InputError(
            "key files in the backup",
            f"none of them ({', '.join(ispcp_login.ordered(readable))}) decrypts DATABASE_PASSWORD of the old "
            "ispcp.conf: it decrypts to non-printable bytes, so keys and config come from different installations",
            "find the key file that belongs to this ispcp.conf (or the ispcp.conf that belongs to these keys); "
            "`ispcp-recover decrypt-password --conf FILE --keys FILE` tries any pair",
            path=conf.path,
        )
    distinct = {readable[layout] for layout in readable}
    if len(distinct) > 1 and conf.get("DATABASE_PASSWORD") == "":
        raise InputError(
            "key files in the backup",
            f"disagree ({', '.join(ispcp_login.ordered(readable))}), and DATABASE_PASSWORD is empty (ispCP's "
            "[none]), so it cannot tell which keys are the old server's",
            "set keys_source to the old server's real key file (a dry run of this step then proves it on "
            "every encrypted mailbox and SQL password)",
            path=conf.path,
        )
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
    files = ispcp_login.keyfile_states(ctx, "target", conf)
    wrong = [layout for layout in layouts if files[layout].keys != keyset]
    if wrong:
        raise PreconditionFailed(
            "key files (target)",
            f"{', '.join(wrong)} do not read back the keys just written",
            "check the disk and the file permissions, then run the step again",
        )


def _files_frame(files: dict[str, ispcp_login.KeyFile]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"layout": kf.layout, "path": kf.logical, "state": kf.state, "detail": kf.detail} for kf in files.values()]
    )


# --- shared with ispcp_conf -----------------------------------------------------------------------


def target_layouts(conf: IspcpConf, files: dict[str, ispcp_login.KeyFile]) -> list[str]:
    """The layouts the target's ispCP reads: its version's, plus any other key file it already has."""
    version = conf.version_tuple()
    base = ["keys_conf"] if version is not None and version >= (1, 0, 8) else ["php", "perl_engine", "perl_messenger"]
    return base + [layout for layout, kf in files.items() if kf.state != "missing" and layout not in base]


def _backup_datadir(ctx: Context, conf: IspcpConf) -> Path | None:
    """The old datadir on this machine, for the throwaway reader; None when escaping or elsewhere."""
    try:
        return backup_layout.local_path(ctx, backup_layout.checked(ctx, conf.get("DATABASE_DIR") or "/var/lib/mysql"))
    except InputError:
        return None


def report_proof(ctx: Context, result: Result, proof: encrypted_columns.Proof | None, reset: bool) -> None:
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
        for column in (encrypted_columns.MAILBOX, encrypted_columns.SQL_USER)
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
        else:
            ctx.precondition("encrypted passwords in the database", problem, fix)
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
    ctx: Context, proof: encrypted_columns.Proof | None, logins: list[Login], database: str, keyset: KeySet, fresh: bool
) -> list[dict[str, str]]:
    """Verification rows for the encrypted columns; fresh=True proves them again (after new passwords were set)."""
    if fresh:
        again = encrypted_columns.load_rows(ctx, logins, database, None)
        proof = encrypted_columns.prove(again, keyset) if again is not None else proof
    if proof is None:
        return [{"check": "encrypted columns", "result": "skipped", "detail": "not readable"}]
    return proof.checks()


def _group_gid(ctx: Context, name: str) -> int:
    for line in (ctx.target.read_text("/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
            return int(parts[2])
    return 0


def write_key_files(
    ctx: Context,
    result: Result,
    keyset: KeySet,
    layouts: list[str],
    target_files: dict[str, ispcp_login.KeyFile],
    backup_files: dict[str, ispcp_login.KeyFile],
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
        if tf.state == "missing":
            # The GUI reads its file as www-data; the engine's files are root's alone.
            backup_mode = bf.mode & 0o777 if bf is not None and bf.mode is not None else None
            mode = backup_mode or (0o640 if layout == "php" else 0o600)
            uid, gid = 0, _group_gid(ctx, "www-data") if layout == "php" else 0
        verb = {"missing": "create", "found": "replace"}.get(tf.state, f"replace the {tf.state}")
        ctx.write_file(
            tf.logical,
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
    target_files: dict[str, ispcp_login.KeyFile],
    layouts: list[str],
) -> None:
    """ispCP's HOWTO for setting its MySQL password, with new keys: used only when every key file is lost."""
    user = old_conf.get("DATABASE_USER")
    database = old_conf.database_name
    if not user:
        raise InputError(
            "DATABASE_USER",
            "is missing in the backup's ispcp.conf, so there is no account to reset",
            "add the DATABASE_USER line of the old server (ispCP's default is root)",
            path=old_conf.path,
        )
    old_path = target_conf.old_conf_path
    result.warn("every key file is missing from the backup: ispCP's database password is reset with new keys")

    earlier = _earlier_reset(ctx, old_path, target_files)
    if earlier is not None:
        keyset, password = earlier
        result.note("reusing the keys and password of an earlier reset (they decrypt the target's ispcp.old.conf)")
    else:
        keyset = KeySet(crypto.generate_key(), crypto.generate_iv())
        password = crypto.random_password(24)
        result.note("generated new keys (installer's character set) and a random 24-character password")
    for value, label in ((keyset.key, "DB_PASS_KEY"), (keyset.iv, "DB_PASS_IV"), (password, "DATABASE_PASSWORD")):
        ctx.secrets.add(value, label)
    cipher = crypto.encrypt_db_password(password, keyset.key, keyset.iv)
    ctx.secrets.add(cipher, "DATABASE_PASSWORD (encrypted)")

    admin = accounts.admin_login(ctx)
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
    old_meta = _meta_of_new_copy(ctx, old_path)
    for path, base, names, meta in (
        (CONF_PATH, target_conf, tuple(creds), (None, None, None)),
        (old_path, _old_conf_base(ctx, old_path, old_conf), ("DATABASE_USER", "DATABASE_PASSWORD"), old_meta),
    ):
        wanted = IspcpConf.parse(base.text(), path)
        for key in names:
            if wanted.get(key) != creds[key]:
                wanted.set(key, creds[key])
        fresh = not ctx.target.exists(path)
        if (
            ctx.write_file(
                path,
                wanted.text(),
                *meta,
                show_diff=not fresh,
                what=f"{path}: {', '.join(names)} of the reset (password encrypted)",
            )
            and fresh
        ):  # a new ispcp.old.conf: show what differs from the old config it copies
            result.diffs.append(Diff(f"{base.path} → {path}", fileops.unified_diff(base.text(), wanted.text(), path)))
    for host in hosts:
        what = f"set a new random password for MySQL account '{user}'@'{host}'"
        ctx.do(what, lambda host=host: _set_password(ctx, admin, user, [host], password))
    checks = [
        {
            "check": "key files",
            "result": "verified" if ctx.apply else "planned",
            "detail": f"new keys written as {', '.join(layouts)}",
        }
    ]
    db_login = Login(user, password, "the reset DATABASE_USER login")
    if ctx.apply:
        ok, message = ispcp_login.check_ispcp_login(ctx)
        if not ok:
            raise PreconditionFailed(
                "lost-keys reset",
                message,
                "read the message: it names the part that failed; the run's safety copies hold the previous files",
            )
        checks.append({"check": "ispcp.conf + keys log in", "result": "verified", "detail": message})
    reset_checks = (
        encrypted_columns.reset_accounts(ctx, result, keyset, lost, db_login, database, admin) if reset else []
    )
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
) -> list[encrypted_columns.EncryptedRow]:
    """Every account whose password went with the lost keys: said plainly, listed; the ones to reset."""
    found = encrypted_columns.load_rows(
        ctx, [admin] if admin is not None else [], database, _backup_datadir(ctx, old_conf)
    )
    if found is None:
        result.warn(
            "the accounts whose passwords are lost could not be listed: ispCP's database is readable neither "
            "on the target nor in the backup"
        )
        return []
    lost = [r for r in found.rows if encrypted_columns.why_not(r.cipher, keyset) is not None]
    if not lost:
        if found.rows:
            result.note(
                f"Every one of the {len(found.rows)} mailbox and SQL passwords decrypts with the keys now in "
                "place: they were given new passwords by an earlier run of this step."
            )
        return []
    mail = sum(1 for r in lost if r.column == encrypted_columns.MAILBOX)
    sql = len(lost) - mail
    result.table(
        "Accounts whose password is lost with the keys (unrecoverable)", encrypted_columns.accounts_frame(lost)
    )
    then = (
        f"they get new random passwords now, listed for the admin in {encrypted_columns.credentials_path(ctx)} "
        "(mode 0600)"
        if reset
        else "set keys_reset_account_passwords = True to give each a new random password (listed for the admin in "
        f"{encrypted_columns.credentials_path(ctx)}, mode 0600), or reset them in the panel after the update"
    )
    result.warn(
        f"With the keys lost, every mailbox and customer SQL password is unrecoverable: {mail} mailbox(es) and "
        f"{sql} SQL user(s), listed in the table above (read from {found.source}). Their owners cannot log "
        f"in with the old passwords: {then}"
    )
    return lost


def _meta_of_new_copy(ctx: Context, old_path: str) -> tuple[int | None, int | None, int | None]:
    """Mode and owner for a new ispcp.old.conf: those of ispcp.conf (the file keeps its own when it exists)."""
    st = ctx.target.stat(CONF_PATH)
    if ctx.target.exists(old_path) or st is None:
        return None, None, None
    return st.mode & 0o777, st.uid, st.gid


def _old_conf_base(ctx: Context, old_path: str, backup_conf: IspcpConf) -> IspcpConf:
    """ispcp.old.conf as it is on the target (a rerun), else the old server's config it copies."""
    return IspcpConf.read(ctx.target, old_path) or backup_conf


def _earlier_reset(
    ctx: Context, old_path: str, target_files: dict[str, ispcp_login.KeyFile]
) -> tuple[KeySet, str] | None:
    """Keys and password of a previous reset: the target's ispcp.old.conf decrypts with the target's keys.

    The dummy install has no ispcp.old.conf, so a match comes from this step (or from keys that an earlier
    run restored): either way they decrypt a password that is on disk, which is all a reset needs.
    """
    try:
        conf = IspcpConf.read(ctx.target, old_path)
        if conf is None:
            return None
        ctx.secrets.add(conf.get("DATABASE_PASSWORD"), "DATABASE_PASSWORD (encrypted)")
        if not conf.get("DATABASE_PASSWORD"):
            return None
        found = {layout: kf.keys for layout, kf in target_files.items() if kf.keys is not None}
        for layout, password in ispcp_login.try_decrypt(conf, found, ctx.secrets).items():
            if password is not None:
                return found[layout], password
    except InputError:
        return None
    return None


def _hosts_to_reset(ctx: Context, result: Result, admin: Login | None, user: str, password: str) -> list[str]:
    """Hosts of user's MySQL accounts, none when the password already logs in (a rerun changes nothing)."""
    if admin is None:
        problem = "no admin login works on the running server (neither the target's nor the backup's debian.cnf)"
        fix = "start MySQL and restore the maintainer login first (mysql_restore, mysql_maintainer)"
        ctx.precondition("MySQL admin login", problem, fix, dry_run="the password change cannot be planned")
        return []
    with ctx.mysql.connect(admin.user, admin.password) as conn:
        hosts = accounts.user_hosts(conn, user)
    if not hosts:
        problem = "has no account in the running server's mysql database"
        fix = "restore the old server's mysql database first (mysql_restore)"
        ctx.precondition(f"MySQL account {user}", problem, fix)
        return []
    return [] if ctx.mysql.login_error(user, password) is None else hosts


def _set_password(ctx: Context, admin: Login, user: str, hosts: list[str], password: str) -> None:
    try:
        with ctx.mysql.connect(admin.user, admin.password) as conn:
            accounts.set_user_password(ctx, conn, user, password, hosts)
    except pymysql.MySQLError as exc:
        raise PreconditionFailed(
            f"MySQL account {user}",
            ctx.secrets.redact(f"the password change failed: {exc}"),
            "the new keys and the encrypted password are already in the files; fix the "
            "cause and run the step again: it reuses them",
        ) from None
