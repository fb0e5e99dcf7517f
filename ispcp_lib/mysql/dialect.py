"""Every SQL choice that depends on the server's version, from MySQL 5.0 to MariaDB 11.

`Dialect.for_version(text)` takes the version the server reports (`SELECT VERSION()`, the protocol
greeting, `mysqld --version`) and gives the statements that version accepts. Statements are
`(sql, args)` pairs with `%s` placeholders, formatted client-side (pymysql's literal escaping), so
passwords never appear in the SQL text a log or plan shows.

What changes between versions (ispCP 1.0 ran on Lenny's MySQL 5.0 and Squeeze's 5.1):
- utf8mb4 exists from MySQL 5.5.3 (MariaDB 5.5 too); older servers refuse `SET NAMES utf8mb4`.
- `ALTER USER … IDENTIFIED BY` exists from MySQL 5.7.6 and MariaDB 10.2; before that
  `SET PASSWORD FOR … = PASSWORD(…)`. MySQL 8.0 has no PASSWORD() function at all.
- `GRANT … IDENTIFIED BY` creates a user with its password on every server before MySQL 8.0, in one
  statement; MySQL 8.0 refuses it, so newer servers get CREATE USER + GRANT.
- The native password hash lies in `mysql.user.Password` up to MySQL 5.7.5 and in every MariaDB
  (from 10.4 `mysql.user` is a view over the JSON of `mysql.global_priv`, still with that column);
  MySQL 5.7.6+ keeps it in `authentication_string`.
- A server started with `--skip-grant-tables` accepts no account statement until `FLUSH PRIVILEGES`
  loads the grant tables. Old servers (and MariaDB < 10.4, whose mysql.user is still a table) are
  fixed the classic way, an UPDATE of mysql.user then FLUSH PRIVILEGES; from MySQL 5.7.6 and
  MariaDB 10.4 (where mysql.user is a view) the grant tables are loaded first, then ALTER USER.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Statement = tuple[str, tuple[Any, ...]]

# -- statements the same on every version (MySQL 5.0 to MariaDB 11) --------------------------------
FLUSH_PRIVILEGES: Statement = ("FLUSH PRIVILEGES", ())
SERVER_VERSION: Statement = ("SELECT VERSION()", ())
CURRENT_USER: Statement = ("SELECT CURRENT_USER()", ())
SHOW_TABLES: Statement = ("SHOW TABLES", ())
# The running server's own account of itself: datadir, socket, version, pid file.
SERVER_PATHS: Statement = ("SELECT @@datadir, @@socket, @@version, @@pid_file", ())
FOREIGN_KEY_CHECKS_OFF: Statement = ("SET SESSION foreign_key_checks = 0", ())
# Database name -> number of tables and views (information_schema exists from MySQL 5.0.2).
DATABASE_TABLE_COUNTS: Statement = (
    "SELECT s.SCHEMA_NAME, COUNT(t.TABLE_NAME) FROM information_schema.SCHEMATA s "
    "LEFT JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME GROUP BY s.SCHEMA_NAME",
    (),
)


def quote_ident(name: str) -> str:
    """A database, table or column name as an SQL identifier (identifiers cannot be parameters)."""
    return "`" + name.replace("`", "``") + "`"


def _qualified(table: str, database: str | None) -> str:
    return quote_ident(table) if database is None else f"{quote_ident(database)}.{quote_ident(table)}"


def execute(cur: Any, statement: Statement) -> int:
    """Run one statement on a cursor; one without arguments goes as it is (a literal % stays)."""
    sql, args = statement
    return cur.execute(sql, args or None)


def tables_of(database: str) -> Statement:
    """TABLE_NAME, ENGINE, TABLE_TYPE of each table and view of a database, by name."""
    sql = (
        "SELECT TABLE_NAME, ENGINE, TABLE_TYPE FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME"
    )
    return (sql, (database,))


def database_exists(database: str) -> Statement:
    """One row, one column: 1 when the database exists, else 0."""
    return ("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))


def check_tables(database: str, tables: Sequence[str]) -> Statement:
    """CHECK TABLE of the tables in one statement (rows: Table, Op, Msg_type, Msg_text)."""
    return ("CHECK TABLE " + ", ".join(_qualified(t, database) for t in tables), ())


def count_rows(table: str, database: str | None = None) -> Statement:
    return (f"SELECT COUNT(*) FROM {_qualified(table, database)}", ())


def count_rows_union(database: str, tables: Sequence[str]) -> Statement:
    """Name and COUNT(*) of every table in one round trip (rows: name, count)."""
    union = " UNION ALL ".join(f"SELECT %s, COUNT(*) FROM {_qualified(t, database)}" for t in tables)
    return (union, tuple(tables))


def show_create_table(table: str) -> Statement:
    return (f"SHOW CREATE TABLE {quote_ident(table)}", ())


def repair_use_frm(table: str) -> Statement:
    """REPAIR TABLE … USE_FRM: a MyISAM table rebuilt from its .frm alone (the index file recreated)."""
    return (f"REPAIR TABLE {quote_ident(table)} USE_FRM", ())


def create_database(database: str) -> Statement:
    return (f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}", ())


def drop_database(database: str) -> Statement:
    return (f"DROP DATABASE IF EXISTS {quote_ident(database)}", ())


def create_table_in(database: str, create: str) -> Statement:
    r"""A SHOW CREATE TABLE text (`CREATE TABLE \`t\` …`) run into another database."""
    return (create.replace("CREATE TABLE ", f"CREATE TABLE {quote_ident(database)}.", 1), ())


def discard_tablespace(database: str, table: str) -> Statement:
    return (f"ALTER TABLE {_qualified(table, database)} DISCARD TABLESPACE", ())


def import_tablespace(database: str, table: str) -> Statement:
    return (f"ALTER TABLE {_qualified(table, database)} IMPORT TABLESPACE", ())


def flush_tables(database: str, tables: Sequence[str]) -> Statement:
    """FLUSH TABLES of the given tables (all tables when none are given)."""
    if not tables:
        return ("FLUSH TABLES", ())
    return ("FLUSH TABLES " + ", ".join(_qualified(t, database) for t in tables), ())


def with_name_and_engine(create: str, name: str, engine: str = "InnoDB") -> str:
    """SHOW CREATE TABLE text of a scratch table, renamed to `name` and given `engine`."""
    body = re.sub(r"^CREATE TABLE `(?:[^`]|``)+`", "CREATE TABLE " + quote_ident(name), create, count=1)
    at = body.rfind(") ENGINE=")
    if at < 0:
        return body + f" ENGINE={engine}"
    m = re.match(r"\) ENGINE=\w+", body[at:])
    assert m is not None
    return body[:at] + f") ENGINE={engine}" + body[at + m.end() :]


def use_database(database: str) -> Statement:
    return (f"USE {quote_ident(database)}", ())


# What the client layer (mysql/client.py) itself sends: the DB-API's transaction calls, its ping, and
# the statements that mark the end of each exchange with the `mysql` client.
COMMIT: Statement = ("COMMIT", ())
ROLLBACK: Statement = ("ROLLBACK", ())
PING: Statement = ("DO 1", ())


def exchange_end(mark: str) -> str:
    """After each statement: a row whose value the server joins (the XML's echo of the statement text
    does not hold it) with ROW_COUNT() of the statement, then a deliberate syntax error whose message on
    stderr marks the end of the error output. Valid on MySQL 5.0 and every MariaDB."""
    return f"SELECT CONCAT('ispcp-end-', '{mark}') AS e, ROW_COUNT() AS r;\nispcp_end_{mark.replace('-', '_')};\n"


_NUMBERS = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Dialect:
    mariadb: bool
    version: tuple[int, int, int]

    @classmethod
    def for_version(cls, text: str) -> Dialect:
        """The dialect of a server from its version string ("5.0.51a-24+lenny5", "10.11.6-MariaDB-0+deb12u1")."""
        mariadb = "mariadb" in text.lower()
        # MariaDB greets with "5.5.5-10.11.6-MariaDB…" for the sake of old replication clients.
        found = _NUMBERS.search(text.removeprefix("5.5.5-") if mariadb else text)
        if found is None:
            raise ValueError(f"not a MySQL/MariaDB version: {text!r}")
        major, minor, patch = (int(n) for n in found.groups())
        return cls(mariadb, (major, minor, patch))

    def describe(self) -> str:
        return ("MariaDB " if self.mariadb else "MySQL ") + ".".join(str(n) for n in self.version)

    def _at_least(self, mysql: tuple[int, int, int] | None, mariadb: tuple[int, int, int] | None) -> bool:
        """Whether this server is at least the given MySQL (or MariaDB) version; None: never."""
        floor = mariadb if self.mariadb else mysql
        return floor is not None and self.version >= floor

    # -- what the server has -------------------------------------------------------------------
    @property
    def charset(self) -> str:
        """The connection character set: utf8mb4 where it exists (MySQL 5.5.3, every MariaDB 5.5+)."""
        return "utf8mb4" if self._at_least((5, 5, 3), (5, 5, 3)) else "utf8"

    @property
    def has_alter_user(self) -> bool:
        return self._at_least((5, 7, 6), (10, 2, 0))

    @property
    def has_password_function(self) -> bool:
        return not self._at_least((8, 0, 0), None)

    @property
    def user_table_is_view(self) -> bool:
        """MariaDB 10.4+: mysql.user is a view over mysql.global_priv (it cannot be updated)."""
        return self._at_least(None, (10, 4, 0))

    @property
    def has_plugin_column(self) -> bool:
        """mysql.user has `plugin` and `authentication_string` (MySQL 5.5.7, MariaDB 5.2)."""
        return self._at_least((5, 5, 7), (5, 2, 0))

    @property
    def password_column(self) -> str:
        """The mysql.user column that holds the native password hash."""
        return "authentication_string" if self._at_least((5, 7, 6), None) else "Password"

    @property
    def grant_identified_by(self) -> bool:
        """Whether `GRANT … IDENTIFIED BY` creates a user with its password (MySQL 8.0 removed it)."""
        return not self._at_least((8, 0, 0), None)

    # -- statements ----------------------------------------------------------------------------
    def set_names(self) -> Statement:
        return (f"SET NAMES {self.charset}", ())

    def user_hosts(self, user: str) -> Statement:
        """The Host of each of user's accounts, sorted; one column."""
        return ("SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host", (user,))

    def account_hashes(self, user: str) -> Statement:
        """Host and native password hash of each of user's accounts (columns: Host, hash)."""
        return (f"SELECT Host, {self.password_column} FROM mysql.user WHERE User = %s ORDER BY Host", (user,))

    def hosts_with_password(self, user: str, password: str) -> Statement | None:
        """The hosts of user's accounts whose password already is `password`; None when the server
        cannot tell (MySQL 8.0: no PASSWORD(), salted hashes): then only a login proves it."""
        if not self.has_password_function:
            return None
        sql = f"SELECT Host FROM mysql.user WHERE User = %s AND {self.password_column} = PASSWORD(%s) ORDER BY Host"
        return (sql, (user, password))

    def set_password_statements(self, user: str, host: str, password: str, grantless: bool = False) -> list[Statement]:
        """Statements that give user@host the password.

        grantless: the server runs with --skip-grant-tables; the statements then also load the grant
        tables (they end with them in force for this server's life, until its restart).
        """
        if grantless and not (self.user_table_is_view or self.password_column == "authentication_string"):
            return [self._update_user_row(user, host, password), FLUSH_PRIVILEGES]
        statements = [FLUSH_PRIVILEGES] if grantless else []
        if self.has_alter_user:
            statements.append(("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password)))
        else:
            statements.append(("SET PASSWORD FOR %s@%s = PASSWORD(%s)", (user, host, password)))
        return statements

    def _update_user_row(self, user: str, host: str, password: str) -> Statement:
        # A row that named another plugin (unix_socket) would ignore Password: native, hash in Password.
        extra = ", plugin = 'mysql_native_password', authentication_string = ''" if self.has_plugin_column else ""
        sql = f"UPDATE mysql.user SET Password = PASSWORD(%s){extra} WHERE User = %s AND Host = %s"
        return (sql, (password, user, host))

    def create_user_statements(
        self, user: str, host: str, password: str, grants: Sequence[str] = (), grant_option: bool = False
    ) -> list[Statement]:
        """Create user@host with the password and grants ("ALL PRIVILEGES ON `db`.*"; identifiers quoted
        by the caller). Old servers: `GRANT … IDENTIFIED BY`, as ispCP's own engine does it."""
        option = " WITH GRANT OPTION" if grant_option else ""
        if self.grant_identified_by and not self.has_alter_user:
            first, *rest = grants or ["USAGE ON *.*"]
            statements = [(f"GRANT {first} TO %s@%s IDENTIFIED BY %s{option}", (user, host, password))]
        else:
            rest = list(grants)
            statements = [("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))]
        statements += [self.grant(g, user, host, grant_option) for g in rest]
        return statements

    @staticmethod
    def grant(what: str, user: str, host: str, grant_option: bool = False) -> Statement:
        """`GRANT <what> TO user@host`, what being "SELECT, INSERT ON `db`.`table`" (quoted by the caller)."""
        return (f"GRANT {what} TO %s@%s" + (" WITH GRANT OPTION" if grant_option else ""), (user, host))
