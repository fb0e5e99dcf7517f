"""Unit tests: the SQL chosen per server version, from MySQL 5.0 (Lenny) to MariaDB 11."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ispcp_lib.mysql import dialect
from ispcp_lib.mysql.dialect import FLUSH_PRIVILEGES, Dialect

# Version strings as the servers report them (greeting / SELECT VERSION()).
MYSQL_50 = "5.0.51a-24+lenny5"
MYSQL_51 = "5.1.73-1"
MYSQL_55 = "5.5.62-0+deb8u1"
MYSQL_57 = "5.7.44-log"
MYSQL_80 = "8.0.36"
MARIADB_101 = "10.1.48-MariaDB-0+deb9u2"
MARIADB_103 = "10.3.39-MariaDB"
MARIADB_104 = "10.4.34-MariaDB-1:10.4.34+maria~deb10"
MARIADB_1011 = "10.11.6-MariaDB-0+deb12u1"
MARIADB_114 = "11.4.2-MariaDB"
ALL = [MYSQL_50, MYSQL_51, MYSQL_55, MYSQL_57, MYSQL_80, MARIADB_101, MARIADB_103, MARIADB_104, MARIADB_1011]
ALL.append(MARIADB_114)


@pytest.mark.parametrize(
    ("text", "mariadb", "version"),
    [
        (MYSQL_50, False, (5, 0, 51)),
        (MYSQL_51, False, (5, 1, 73)),
        (MYSQL_80, False, (8, 0, 36)),
        (MARIADB_1011, True, (10, 11, 6)),
        (MARIADB_103, True, (10, 3, 39)),
        ("5.5.5-10.11.6-MariaDB-0+deb12u1", True, (10, 11, 6)),  # the greeting's replication prefix
        ("mysql  Ver 14.14 Distrib 5.1.73, for debian-linux-gnu (x86_64)", False, (5, 1, 73)),
        ("mariadbd  Ver 11.4.2-MariaDB for debian-linux-gnu on x86_64", True, (11, 4, 2)),
    ],
)
def test_version_strings_parse(text: str, mariadb: bool, version: tuple[int, int, int]) -> None:
    d = Dialect.for_version(text)
    assert (d.mariadb, d.version) == (mariadb, version)


def test_a_string_without_a_version_is_refused() -> None:
    with pytest.raises(ValueError, match="not a MySQL"):
        Dialect.for_version("garbage")


@pytest.mark.parametrize(
    ("text", "charset"),
    [(MYSQL_50, "utf8"), (MYSQL_51, "utf8"), ("5.5.2-m2", "utf8"), ("5.5.3-m3", "utf8mb4"), (MYSQL_55, "utf8mb4")]
    + [(v, "utf8mb4") for v in (MYSQL_57, MYSQL_80, MARIADB_101, MARIADB_103, MARIADB_104, MARIADB_1011, MARIADB_114)],
)
def test_charset(text: str, charset: str) -> None:
    assert Dialect.for_version(text).charset == charset
    assert Dialect.for_version(text).set_names() == (f"SET NAMES {charset}", ())


SET_PASSWORD = ("SET PASSWORD FOR %s@%s = PASSWORD(%s)", ("u", "localhost", "pw"))
ALTER_USER = ("ALTER USER %s@%s IDENTIFIED BY %s", ("u", "localhost", "pw"))


@pytest.mark.parametrize(
    ("text", "statement"),
    [
        (MYSQL_50, SET_PASSWORD),
        (MYSQL_51, SET_PASSWORD),
        (MYSQL_55, SET_PASSWORD),
        ("5.7.5-m15", SET_PASSWORD),
        (MYSQL_57, ALTER_USER),
        (MYSQL_80, ALTER_USER),
        (MARIADB_101, SET_PASSWORD),
        (MARIADB_103, ALTER_USER),
        (MARIADB_104, ALTER_USER),
        (MARIADB_1011, ALTER_USER),
        (MARIADB_114, ALTER_USER),
    ],
)
def test_set_password_with_grant_tables(text: str, statement: tuple) -> None:
    assert Dialect.for_version(text).set_password_statements("u", "localhost", "pw") == [statement]


UPDATE_OLD = ("UPDATE mysql.user SET Password = PASSWORD(%s) WHERE User = %s AND Host = %s", ("pw", "u", "localhost"))
UPDATE_PLUGIN = (
    "UPDATE mysql.user SET Password = PASSWORD(%s), plugin = 'mysql_native_password', authentication_string = '' "
    "WHERE User = %s AND Host = %s",
    ("pw", "u", "localhost"),
)


@pytest.mark.parametrize(
    ("text", "statements"),
    [
        (MYSQL_50, [UPDATE_OLD, FLUSH_PRIVILEGES]),
        (MYSQL_51, [UPDATE_OLD, FLUSH_PRIVILEGES]),
        (MYSQL_55, [UPDATE_PLUGIN, FLUSH_PRIVILEGES]),
        (MARIADB_101, [UPDATE_PLUGIN, FLUSH_PRIVILEGES]),
        (MARIADB_103, [UPDATE_PLUGIN, FLUSH_PRIVILEGES]),  # mysql.user is still a table
        (MYSQL_57, [FLUSH_PRIVILEGES, ALTER_USER]),  # no Password column any more
        (MYSQL_80, [FLUSH_PRIVILEGES, ALTER_USER]),
        (MARIADB_104, [FLUSH_PRIVILEGES, ALTER_USER]),  # mysql.user is a view
        (MARIADB_1011, [FLUSH_PRIVILEGES, ALTER_USER]),
        (MARIADB_114, [FLUSH_PRIVILEGES, ALTER_USER]),
    ],
)
def test_set_password_without_grant_tables(text: str, statements: list) -> None:
    got = Dialect.for_version(text).set_password_statements("u", "localhost", "pw", grantless=True)
    assert got == statements
    assert got[-1] == FLUSH_PRIVILEGES or got[0] == FLUSH_PRIVILEGES  # grant tables in force afterwards


@pytest.mark.parametrize("text", ALL)
def test_passwords_are_arguments_never_sql_text(text: str) -> None:
    d = Dialect.for_version(text)
    statements = [
        *d.set_password_statements("u", "h", "s3cret'x"),
        *d.set_password_statements("u", "h", "s3cret'x", grantless=True),
        *d.create_user_statements("u", "h", "s3cret'x", ["ALL PRIVILEGES ON *.*"]),
    ]
    assert all("s3cret" not in sql for sql, _ in statements)
    assert sum("s3cret'x" in args for _, args in statements) == 3


@pytest.mark.parametrize(
    ("text", "column"),
    [(MYSQL_50, "Password"), (MYSQL_55, "Password"), ("5.7.5-m15", "Password"), (MYSQL_57, "authentication_string")]
    + [(MYSQL_80, "authentication_string"), (MARIADB_101, "Password"), (MARIADB_1011, "Password")],
)
def test_password_hash_column(text: str, column: str) -> None:
    d = Dialect.for_version(text)
    assert d.account_hashes("u") == (f"SELECT Host, {column} FROM mysql.user WHERE User = %s ORDER BY Host", ("u",))
    found = d.hosts_with_password("u", "pw")
    if d.has_password_function:
        assert found is not None and f"{column} = PASSWORD(%s)" in found[0] and found[1] == ("u", "pw")


def test_mysql_8_cannot_compare_hashes() -> None:
    assert Dialect.for_version(MYSQL_80).hosts_with_password("u", "pw") is None


@pytest.mark.parametrize("text", ALL)
def test_user_hosts_is_the_same_everywhere(text: str) -> None:
    assert Dialect.for_version(text).user_hosts("vftp") == (
        "SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host",
        ("vftp",),
    )


@pytest.mark.parametrize("text", [MYSQL_50, MYSQL_51, MYSQL_55, MARIADB_101])
def test_old_servers_create_users_with_grant_identified_by(text: str) -> None:
    got = Dialect.for_version(text).create_user_statements(
        "u", "localhost", "pw", ["SELECT ON `d`.`a`", "SELECT ON `d`.`b`"], grant_option=True
    )
    assert got == [
        ("GRANT SELECT ON `d`.`a` TO %s@%s IDENTIFIED BY %s WITH GRANT OPTION", ("u", "localhost", "pw")),
        ("GRANT SELECT ON `d`.`b` TO %s@%s WITH GRANT OPTION", ("u", "localhost")),
    ]
    assert Dialect.for_version(text).create_user_statements("u", "h", "pw") == [
        ("GRANT USAGE ON *.* TO %s@%s IDENTIFIED BY %s", ("u", "h", "pw"))
    ]


@pytest.mark.parametrize("text", [MYSQL_57, MYSQL_80, MARIADB_103, MARIADB_104, MARIADB_1011, MARIADB_114])
def test_new_servers_create_users_then_grant(text: str) -> None:
    got = Dialect.for_version(text).create_user_statements("u", "%", "pw", ["ALL PRIVILEGES ON `d`.*"])
    assert got == [
        ("CREATE USER %s@%s IDENTIFIED BY %s", ("u", "%", "pw")),
        ("GRANT ALL PRIVILEGES ON `d`.* TO %s@%s", ("u", "%")),
    ]


@pytest.mark.parametrize(
    ("text", "view"), [(MARIADB_103, False), (MARIADB_104, True), (MARIADB_114, True), (MYSQL_80, False)]
)
def test_user_table_is_a_view_from_mariadb_10_4(text: str, view: bool) -> None:
    assert Dialect.for_version(text).user_table_is_view is view


# -- statements the same on every version ------------------------------------------------------------


def test_identifiers_are_quoted_with_their_backticks_doubled() -> None:
    assert dialect.quote_ident("db1") == "`db1`"
    assert dialect.quote_ident("we`ird") == "`we``ird`"
    sql, args = dialect.check_tables("cust`db", ["t1", "t`2"])
    assert sql == "CHECK TABLE `cust``db`.`t1`, `cust``db`.`t``2`"
    assert args == ()


def test_table_statements_name_the_database() -> None:
    assert dialect.discard_tablespace("c1", "t") == ("ALTER TABLE `c1`.`t` DISCARD TABLESPACE", ())
    assert dialect.import_tablespace("c1", "t") == ("ALTER TABLE `c1`.`t` IMPORT TABLESPACE", ())
    assert dialect.count_rows("t") == ("SELECT COUNT(*) FROM `t`", ())
    assert dialect.count_rows("t", "c1") == ("SELECT COUNT(*) FROM `c1`.`t`", ())
    assert dialect.create_database("c1") == ("CREATE DATABASE IF NOT EXISTS `c1`", ())
    assert dialect.drop_database("c1") == ("DROP DATABASE IF EXISTS `c1`", ())
    assert dialect.repair_use_frm("m0") == ("REPAIR TABLE `m0` USE_FRM", ())
    assert dialect.show_create_table("m0") == ("SHOW CREATE TABLE `m0`", ())
    assert dialect.use_database("ispcp") == ("USE `ispcp`", ())


def test_flush_tables_without_tables_flushes_all() -> None:
    assert dialect.flush_tables("c1", []) == ("FLUSH TABLES", ())
    assert dialect.flush_tables("c1", ["a", "b"]) == ("FLUSH TABLES `c1`.`a`, `c1`.`b`", ())


def test_row_counts_take_the_names_as_arguments() -> None:
    sql, args = dialect.count_rows_union("c1", ["a", "b"])
    assert sql == "SELECT %s, COUNT(*) FROM `c1`.`a` UNION ALL SELECT %s, COUNT(*) FROM `c1`.`b`"
    assert args == ("a", "b")
    assert dialect.tables_of("c1")[1] == ("c1",)
    assert "information_schema.TABLES" in dialect.tables_of("c1")[0]


def test_a_create_table_goes_into_the_named_database_once() -> None:
    create = "CREATE TABLE `t` (\n  `note` varchar(40) DEFAULT 'CREATE TABLE x'\n) ENGINE=InnoDB"
    sql, _ = dialect.create_table_in("c`1", create)
    assert sql.startswith("CREATE TABLE `c``1`.`t` (")
    assert sql.count("`c``1`") == 1


class _Cursor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def execute(self, sql: str, args: object = None) -> int:
        self.calls.append((sql, args))
        return 0


def test_execute_sends_a_statement_without_arguments_as_it_is() -> None:
    cur = _Cursor()
    dialect.execute(cur, dialect.SHOW_TABLES)
    dialect.execute(cur, dialect.tables_of("c1"))
    assert cur.calls == [("SHOW TABLES", None), (dialect.tables_of("c1")[0], ("c1",))]


# --- every statement the tool sends comes from the dialect (or ispCP's own queries) -------------------
PACKAGE = Path(__file__).resolve().parents[2] / "ispcp_lib"
STATEMENT_HOMES = {"ispcp_lib/mysql/dialect.py", "ispcp_lib/ispcp/queries.py"}
# A string that reads as a statement: a keyword, then at least two more words.
STATEMENT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|GRANT|REVOKE|SET|SHOW|FLUSH|USE|REPLACE|COMMIT|"
    r"ROLLBACK|DO|RENAME|TRUNCATE|LOCK|UNLOCK|CHECK|REPAIR)\b\s+\S+\s+\S+"
)


def statement_literals(path: Path) -> list[tuple[int, str]]:
    """String constants that read as SQL statements (docstrings and f-string parts, which are messages, aside)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        elif isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and STATEMENT.match(node.value)
    ]


def test_the_scan_finds_a_statement_outside_the_dialect(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text(
        '"""SELECT a FROM b in a docstring."""\ncur.execute("SELECT Host FROM mysql.user")\nx = "CHECK TABLE"\n'
    )
    assert statement_literals(sample) == [(2, "SELECT Host FROM mysql.user")]


def test_no_sql_statement_is_written_outside_the_dialect() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        # The sandbox and the lab build their own worlds; they are not the tool talking to a server.
        if rel in STATEMENT_HOMES or rel.startswith(("ispcp_lib/sandbox/", "ispcp_lib/lab/")):
            continue
        if hits := statement_literals(path):
            found[rel] = hits
    assert found == {}
