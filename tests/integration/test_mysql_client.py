"""The mysql client through the connection, against the sandbox's real MariaDB: values, sessions, errors,
secrets, big data, a server without grant tables, and the MySQL 5.0/5.1 dialect's statements."""

from __future__ import annotations

import os
import threading
import time

import pymysql
import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.mysql import client
from ispcp_lib.mysql.dialect import Dialect
from ispcp_lib.mysql.service import SandboxMysql, is_mysql_server, pid_alive
from ispcp_lib.sandbox.world import World

GRANTLESS = ["--skip-grant-tables", "--skip-networking"]


def root(world: World) -> tuple[str, str]:
    return "root", world.credentials["new"]["root_password"]


@pytest.fixture
def conn(world: World):
    with world.target_mysql().connect(*root(world)) as c:
        yield c


def test_values_round_trip(conn: client.ClientConnection) -> None:
    tricky = "tab\there\nnew line <tag> & \"quoted\" 'single' back\\slash ümlaut 🐬"
    raw = b"\xff\xfe not utf-8 \x80\x01\t\n"
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE t_values")
        cur.execute("CREATE TABLE t_values.v (id INT, s TEXT CHARACTER SET utf8mb4, b BLOB, n VARCHAR(9))")
        cur.execute(
            "INSERT INTO t_values.v VALUES (1, %s, %s, NULL), (2, 'NULL', NULL, 'NULL'), (3, '', '', '')",
            (tricky, raw),
        )
        assert cur.rowcount == 3  # ROW_COUNT() of the INSERT
        cur.execute("SELECT id, s, b, n FROM t_values.v ORDER BY id")
        assert [d[0] for d in cur.description] == ["id", "s", "b", "n"]
        rows = cur.fetchall()
    assert rows[0][:2] == ("1", tricky) and rows[0][3] is None
    assert rows[0][2] is not None and rows[0][2].encode("utf-8", "surrogateescape") == raw
    assert rows[1] == ("2", "NULL", None, "NULL")  # the string 'NULL' is not NULL
    assert rows[2] == ("3", "", "", "")


def test_a_session_holds_use_variables_transactions_and_locks(conn: client.ClientConnection) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE t_session")
        cur.execute("USE t_session")
        cur.execute("CREATE TABLE t (x INT) ENGINE=InnoDB")
        cur.execute("SET @mark = %s", ("kept",))
        cur.execute("SELECT @mark, DATABASE()")
        assert cur.fetchone() == ("kept", "t_session")
        cur.execute("START TRANSACTION")
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("ROLLBACK")
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone() == ("0",)
        cur.execute("LOCK TABLES t WRITE")
        cur.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("SELECT * FROM mysql.user")  # not locked: refused while LOCK TABLES holds
        assert exc.value.args[0] == 1100
        cur.execute("UNLOCK TABLES")
        cur.execute("SELECT x FROM t")
        assert cur.fetchall() == [("2",)]


def test_errors_are_pymysqls_with_the_servers_errno_and_the_session_goes_on(conn: client.ClientConnection) -> None:
    with conn.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError) as exc:
            cur.execute("SELECT * FROM mysql.no_such_table")
        assert exc.value.args == (1146, "Table 'mysql.no_such_table' doesn't exist")
        with pytest.raises(pymysql.MySQLError) as exc:
            cur.execute("SELEC 1\n-- a comment\n'unclosed\nline'")
        assert exc.value.args[0] == 1064 and "SELEC 1" in exc.value.args[1]
        cur.execute("SELECT 'still here' -- a trailing comment cannot eat the end of the statement")
        assert cur.fetchall() == [("still here",)]
        cur.execute("SELECT 1; SELECT 2, 3")  # several statements: one result set each
        assert cur.fetchall() == [("1",)] and cur.nextset() and cur.fetchall() == [("2", "3")]


def test_big_statements_and_results_do_not_deadlock(conn: client.ClientConnection) -> None:
    big = "x" * 3_000_000
    done: list[object] = []

    def work() -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT LENGTH(%s), MD5(%s)", (big, big))
            done.append(cur.fetchone())
            cur.execute("SELECT seq, REPEAT('y', 1000) FROM mysql.seq_1_to_20000")
            done.append(len(cur.fetchall()))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the exchange hung"
    import hashlib

    assert done == [("3000000", hashlib.md5(big.encode()).hexdigest()), 20000]


def test_the_password_is_never_on_a_command_line_and_its_file_is_gone(world: World) -> None:
    user, password = root(world)
    with world.target_mysql().connect(user, password) as c:
        argv = open(f"/proc/{c._proc.pid}/cmdline", "rb").read().split(b"\0")
        assert not [a for a in argv if password.encode() in a]
        option_file = next(a for a in argv if a.startswith(b"--defaults-file=")).split(b"=", 1)[1]
        assert not os.path.exists(option_file)  # read at login, removed right after


def test_failed_logins_raise_promptly_with_the_servers_message(world: World) -> None:
    srv = world.target_mysql()
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as exc:
        srv.connect("root", "wrong password")
    assert exc.value.args[0] == 1045 and "Access denied for user 'root'@'localhost'" in exc.value.args[1]
    assert time.monotonic() - started < 5
    assert "Access denied" in (srv.login_error("root", "wrong password") or "")
    assert srv.login_error(*root(world)) is None
    with pytest.raises(pymysql.err.OperationalError) as exc:
        srv.connect(*root(world), "no_such_db")
    assert exc.value.args[0] == 1049


def test_a_stopped_server_is_reported_not_waited_for(world: World) -> None:
    srv = world.target_mysql()
    pid = int(open(srv.effective_pid_file()).read())
    local = LocalConnection("/")
    assert srv.status() and pid_alive(pid, local) and is_mysql_server(pid, local)
    assert not is_mysql_server(os.getpid(), local)  # alive, but no server
    srv.stop()
    assert not srv.status() and srv.version() is None and not pid_alive(pid, local)
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as exc:
        srv.connect(*root(world))
    assert exc.value.args[0] == 2002 and time.monotonic() - started < 5


def test_a_server_without_grant_tables_answers_on_its_socket_and_takes_the_dialects_reset(world: World) -> None:
    srv: SandboxMysql = world.target_mysql()
    dialect = Dialect.for_version(srv.version() or "")
    assert dialect.mariadb and dialect.user_table_is_view  # the sandbox runs MariaDB 10.4+
    srv.restart(GRANTLESS)
    try:
        with srv.connect("root", None) as c, c.cursor() as cur:  # no password: no grant tables
            for sql, args in dialect.set_password_statements("debian-sys-maint", "localhost", "reset pw", True):
                cur.execute(sql, args)
    finally:
        srv.restart()
    assert srv.login_error("debian-sys-maint", "reset pw") is None
    assert srv.login_error("root", None) is not None  # grant tables in force again


@pytest.mark.parametrize("old", ["5.0.51a-24+lenny5", "5.1.73-1"])
def test_the_old_dialects_statements_work_on_mariadb(world: World, old: str) -> None:
    """Lenny's and Squeeze's SQL, run against the sandbox's MariaDB: it accepts them, and logins prove them."""
    srv = world.target_mysql()
    dialect = Dialect.for_version(old)
    assert dialect.charset == "utf8" and not dialect.has_alter_user
    with srv.connect(*root(world)) as c, c.cursor() as cur:
        cur.execute(*dialect.set_names())
        cur.execute("CREATE DATABASE t_old")
        cur.execute("CREATE TABLE t_old.t (x INT)")
        for sql, args in dialect.create_user_statements(
            "olduser", "localhost", "first pw", ["SELECT, INSERT ON `t_old`.*"]
        ):
            assert "IDENTIFIED BY" in sql and sql.startswith("GRANT")  # GRANT … IDENTIFIED BY creates it
            cur.execute(sql, args)
        cur.execute(*dialect.user_hosts("olduser"))
        assert cur.fetchall() == [("localhost",)]
        assert srv.login_error("olduser", "first pw", "t_old") is None
        for sql, args in dialect.set_password_statements("olduser", "localhost", "second pw"):
            assert sql.startswith("SET PASSWORD")
            cur.execute(sql, args)
        query = dialect.hosts_with_password("olduser", "second pw")
        assert query is not None
        cur.execute(*query)
        assert cur.fetchall() == [("localhost",)]
        cur.execute(*dialect.account_hashes("olduser"))
        assert [r[1][:1] for r in cur.fetchall()] == ["*"]  # the 41-byte native hash
    assert srv.login_error("olduser", "second pw", "t_old") is None
    assert srv.login_error("olduser", "first pw") is not None
    with srv.connect("olduser", "second pw", "t_old") as c, c.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("DELETE FROM t")  # not granted
        assert exc.value.args[0] == 1142
