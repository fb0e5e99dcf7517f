"""The passwords ispCP keeps encrypted in its database: prove the keys on them, list them, give them new values.

The Blowfish key and IV that encrypt DATABASE_PASSWORD also encrypt every mailbox password
(`mail_users.mail_pass`, except the marker `_no_` of forward-only accounts) and every customer SQL
password (`sql_user.sqlu_pass`). So the right keys are proven on every such row: each must decrypt to
printable text. With the keys lost, every one of them is unrecoverable; `reset_accounts` then gives
each account a new random password, encrypted with the new keys in ispCP's database and, for SQL users,
set in MySQL, and writes them to a credentials file for the admin (mode 0600, state directory).

Rows are named by id and account, never by value. Every cipher text and password is registered as a
secret the moment it is read or made. (The Blowfish is `ispcp.crypto`; the key files `ispcp.keyfiles`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_db_reader
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.ispcp import crypto, queries
from ispcp_lib.ispcp.keyfiles import KeySet
from ispcp_lib.mysql import accounts, dialect
from ispcp_lib.mysql.accounts import set_user_password
from ispcp_lib.mysql.dialect import Dialect, quote_ident

MAILBOX = "mailbox passwords"
SQL_USER = "customer SQL passwords"
NO_PASSWORD = "_no_"  # mail_pass of a forward-only account
CREDENTIALS_FILE = "account-passwords.txt"
NEW_PASSWORD_LENGTH = 16  # MySQL 5.0 and ispCP's GUI accept it; letters and digits only


@dataclass(repr=False)
class EncryptedRow:
    column: str  # MAILBOX | SQL_USER
    id: int
    account: str  # mail address or SQL user name
    database: str | None  # the SQL user's database
    cipher: str  # as stored; never shown
    status: str | None = None  # mail_users.status

    def __repr__(self) -> str:
        return f"EncryptedRow({self.column!r}, {self.id}, {self.account!r})"

    @property
    def kind(self) -> str:
        return "mailbox" if self.column == MAILBOX else "SQL user"


@dataclass
class EncryptedRows:
    source: str  # where they were read, for the operator
    rows: list[EncryptedRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # columns whose table could not be read

    def of(self, column: str) -> list[EncryptedRow]:
        return [r for r in self.rows if r.column == column]


def read_rows(conn: Any, secrets: Any) -> EncryptedRows:
    """Every encrypted mailbox and SQL password from a connection with ispCP's database selected."""
    out = EncryptedRows("")
    selects = ((MAILBOX, queries.mailbox_ciphers(NO_PASSWORD)), (SQL_USER, queries.SQL_USER_CIPHERS))
    for column, select in selects:
        try:
            with conn.cursor() as cur:
                dialect.execute(cur, select)
                fetched = cur.fetchall()
        except pymysql.MySQLError:
            out.missing.append(column)
            continue
        for row_id, account, cipher, database, status in fetched:
            cipher = "" if cipher is None else str(cipher)
            secrets.add(cipher, f"{column} (encrypted)")
            out.rows.append(EncryptedRow(column, int(row_id), str(account or ""), database, cipher, status))
    return out


def _holds_data(conn: Any) -> bool:
    """False for the dummy install's empty tables (nothing restored yet)."""
    with conn.cursor() as cur:
        dialect.execute(cur, queries.DOMAINS_MAILBOXES_AND_SQL_USERS)
        return bool(int(cur.fetchone()[0] or 0))


def load_rows(ctx: Context, logins: list[Login], database: str, backup_datadir: Path | None) -> EncryptedRows | None:
    """The rows from the restored target database (first login that works), else from the backup's binary copy.

    backup_datadir is the old datadir on this machine (the throwaway reader runs here); None skips it.
    None when neither can be read (the reason is then not worth a table: the caller says it).
    """
    if ctx.mysql is not None and ctx.mysql.status():
        for login in logins:
            try:
                with ctx.mysql.connect(login.user, login.password, database) as conn:
                    if not _holds_data(conn):
                        break
                    found = read_rows(conn, ctx.secrets)
            except pymysql.MySQLError:
                continue
            found.source = f"the restored {database} database on the target"
            return found
    if backup_datadir is None or not (backup_datadir / database).is_dir():
        return None
    try:
        found = backup_db_reader.read_backup_database(
            backup_datadir,
            database,
            lambda c: read_rows(c, ctx.secrets),
            runner=ctx.runner,
            scratch=backup_db_reader.scratch_dir(ctx),
        )
    except (PreconditionFailed, CommandFailed, pymysql.MySQLError):
        return None
    found.source = f"the backup's copy of {database} (read by a throwaway server; the target is not restored yet)"
    return found


def why_not(cipher: str, keyset: KeySet) -> str | None:
    """None when the value decrypts to printable text with these keys, else why not (never the value)."""
    if not cipher.strip():
        return "empty"
    try:
        crypto.decrypt_db_password(cipher, keyset.key, keyset.iv, strict=True)
    except InputError as exc:
        return exc.problem
    return None


@dataclass
class Proof:
    rows: EncryptedRows
    failed: list[tuple[EncryptedRow, str]]  # rows that do not decrypt, and why

    def count(self, column: str) -> tuple[int, int]:
        total = len(self.rows.of(column))
        bad = sum(1 for r, _ in self.failed if r.column == column)
        return total - bad, total

    @property
    def wrong_keys(self) -> bool:
        """No row decrypts although there are rows: the keys do not belong to this database."""
        return bool(self.rows.rows) and len(self.failed) == len(self.rows.rows)

    def checks(self) -> list[dict[str, str]]:
        out = []
        for column in (MAILBOX, SQL_USER):
            if column in self.rows.missing:
                out.append({"check": column, "result": "skipped", "detail": "table not readable"})
                continue
            ok, total = self.count(column)
            out.append(
                {
                    "check": column,
                    "result": "verified" if ok == total else "WARN",
                    "detail": f"{ok} of {total} decrypt to text",
                }
            )
        return out

    def failed_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"column": r.column, "id": r.id, "account": r.account, "database": r.database or "", "why": why}
                for r, why in self.failed
            ],
            columns=["column", "id", "account", "database", "why"],
        )


def prove(rows: EncryptedRows, keyset: KeySet) -> Proof:
    return Proof(rows, [(r, why) for r in rows.rows if (why := why_not(r.cipher, keyset)) is not None])


def accounts_frame(rows: list[EncryptedRow]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"account": r.account, "kind": r.kind, "id": r.id, "database": r.database or ""} for r in rows],
        columns=["account", "kind", "id", "database"],
    )


# --- new passwords -------------------------------------------------------------------------------


def credentials_path(ctx: Context) -> str:
    """The credentials file, on the machine that holds the state directory."""
    return f"{ctx.state_dir}/{CREDENTIALS_FILE}"


def read_credentials(ctx: Context) -> dict[tuple[str, str], tuple[str, str]]:
    """The credentials file of an earlier run (empty when there is none)."""
    return parse_credentials(ctx.state.read_text(credentials_path(ctx)) or "")


def parse_credentials(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, account) -> (database, password) of a credentials file's text."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) == 4:
            out[(parts[0], parts[1])] = (parts[2], parts[3])
    return out


def credentials_text(entries: dict[tuple[str, str], tuple[str, str]], run_id: str) -> str:
    lines = [
        "# New passwords set by ispcp-recovery (keys step) for accounts whose old password could not be",
        f"# decrypted (run {run_id}). Hand each to its owner, then delete this file. Keep it mode 0600.",
        "# kind\taccount\tdatabase\tpassword",
    ]
    for (kind, account), (database, password) in sorted(entries.items()):
        lines.append(f"{kind}\t{account}\t{database}\t{password}")
    return "\n".join(lines) + "\n"


def reset_accounts(
    ctx: Context,
    result: Result,
    keyset: KeySet,
    targets: list[EncryptedRow],
    db_login: Login,
    database: str,
    admin: Login | None,
) -> list[dict[str, str]]:
    """New random passwords for `targets`: credentials file first, then ispCP's rows, then MySQL. Returns checks.

    Mailbox rows whose status is 'ok' are set to 'change', so the engine rebuilds the mail account with the
    new password. An SQL user without any MySQL account gets one at localhost and % with all privileges on
    its database, as ispCP creates them.
    """
    if not targets:
        return []
    path = credentials_path(ctx)
    entries = read_credentials(ctx)
    for value in (v[1] for v in entries.values()):
        ctx.secrets.add(value, "new account password")
    fresh: list[tuple[EncryptedRow, str, str]] = []
    for row in targets:
        password = crypto.random_password(NEW_PASSWORD_LENGTH)
        ctx.secrets.add(password, f"new password of {row.account}")
        cipher = crypto.encrypt_db_password(password, keyset.key, keyset.iv, item=row.column)
        ctx.secrets.add(cipher, f"{row.column} (encrypted)")
        entries[("mailbox" if row.column == MAILBOX else "sql", row.account)] = (row.database or "", password)
        fresh.append((row, password, cipher))
    mail = [f for f in fresh if f[0].column == MAILBOX]
    sql = [f for f in fresh if f[0].column == SQL_USER]
    # The file first: once ispCP's rows or MySQL hold a new password, it must already be on disk. It lives
    # with the state directory (on whichever machine holds it), never in the report.
    what = f"write {len(fresh)} new account password(s) to {path} (mode 0600; for the admin to hand out, not shown)"
    ctx.save_state(path, credentials_text(entries, ctx.run_id), what=what, announce=True)

    connect = accounts.opener(ctx, db_login, database)

    if mail:
        what = (
            f"set a new random password for {len(mail)} mailbox(es) in {database}.mail_users "
            "(encrypted with the keys now in place; status 'change' so the engine rebuilds them)"
        )
        ctx.sql(what, [queries.set_mailbox_cipher(row.id, cipher) for row, _, cipher in mail], connect=connect)
    created: list[str] | None = []
    if sql:
        what = f"set a new random password for {len(sql)} customer SQL user(s) in {database}.sql_user (encrypted)"
        ctx.sql(what, [queries.set_sql_user_cipher(row.id, cipher) for row, _, cipher in sql], connect=connect)
        what = (
            f"set the same {len(sql)} password(s) in MySQL for every host of each account (an account "
            "missing from MySQL is created at localhost and %, as ispCP does)"
        )
        created = ctx.do(what, lambda: _set_in_mysql(ctx, admin or db_login, sql, path))
    if not ctx.apply:
        return [
            {
                "check": "new account passwords",
                "result": "planned",
                "detail": f"{len(mail)} mailbox(es), {len(sql)} SQL user(s); file {path}",
            }
        ]
    if created:
        result.note(
            f"SQL user(s) without any MySQL account were created at localhost and % with all privileges on "
            f"their database: {', '.join(created)}"
        )
    checks = [
        {
            "check": "new account passwords",
            "result": "done",
            "detail": f"{len(mail)} mailbox(es), {len(sql)} SQL user(s); written to {path} (mode 0600)",
        }
    ]
    if sql:
        refused, no_db = [], []
        for row, password, _ in sql:
            reason = ctx.mysql.login_error(row.account, password)
            if reason is not None:
                refused.append(f"{row.account}: {reason}")
            elif row.database and (reason := ctx.mysql.login_error(row.account, password, row.database)) is not None:
                no_db.append(f"{row.account}: {reason}")  # e.g. its database is not restored (customer_databases)
        detail = f"{len(sql) - len(refused)} of {len(sql)} log in with the new password"
        if refused:
            detail += f"; refused: {'; '.join(refused[:4])}"
        if no_db:
            detail += f"; cannot open their database: {'; '.join(no_db[:4])}"
        checks.append(
            {
                "check": "SQL logins with the new passwords",
                "result": "verified" if not refused else "FAILED",
                "detail": detail,
            }
        )
        if refused:
            result.warn(f"{len(refused)} SQL user(s) cannot log in with their new password: {'; '.join(refused[:4])}")
    return checks


def _set_in_mysql(ctx: Context, who: Login, sql: list[tuple[EncryptedRow, str, str]], path: str) -> list[str]:
    """Each SQL user's new password in MySQL (every host of the account); returns the accounts created."""
    assert ctx.mysql is not None
    created: list[str] = []
    try:
        with ctx.mysql.connect(who.user, who.password) as conn:
            server = accounts.dialect(ctx)
            for row, password, _ in sql:
                if not set_user_password(ctx, conn, row.account, password):
                    _create_sql_user(conn, server, row, password)
                    created.append(row.account)
    except pymysql.MySQLError as exc:
        raise PreconditionFailed(
            "customer SQL passwords",
            ctx.secrets.redact(f"setting them in MySQL failed: {exc}"),
            f"the new passwords are in {path} and in ispCP's database; fix the cause and set "
            "them in MySQL (SET PASSWORD) from that file",
        ) from None
    return created


def _create_sql_user(session: Any, server: Dialect, row: EncryptedRow, password: str) -> None:
    """An SQL user without any MySQL account, created as ispCP creates them: localhost and %."""
    grants = [f"ALL PRIVILEGES ON {quote_ident(row.database)}.*"] if row.database else []
    with session.cursor() as cur:
        for host in ("localhost", "%"):
            for statement in server.create_user_statements(row.account, host, password, grants):
                dialect.execute(cur, statement)
