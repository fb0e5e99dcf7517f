"""Unit tests: reading the mysql client's XML output and errors, its option file, and service control
commands on the target (a recording connection stands in for the target)."""

from __future__ import annotations

from collections.abc import Sequence

import pymysql
import pytest

from ispcp_lib.core.connection import Completed, LocalConnection
from ispcp_lib.core.runner import Runner
from ispcp_lib.mysql import client
from ispcp_lib.mysql.service import SandboxMysql, SystemMysql, from_params, parse_greeting

XML = (
    b'<?xml version="1.0"?>\n\n<resultset statement="SELECT a, b FROM t WHERE x &lt; 3" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n  <row>\n'
    b'\t<field name="a">NULL</field>\n\t<field name="b" xsi:nil="true" />\n  </row>\n  <row>\n'
    b'\t<field name="a">t\tab\nline &lt;&amp;&gt;&quot; \xff\xfe</field>\n\t<field name="b"></field>\n  </row>\n'
    b'</resultset>\n<?xml version="1.0"?>\n\n<resultset statement="SELECT 1 FROM DUAL WHERE 0" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"></resultset>\n'
)


def test_xml_output_keeps_null_apart_from_the_string_null_and_bytes_as_they_are() -> None:
    first, empty = client.parse_xml(XML)
    assert first.columns == ["a", "b"]
    assert first.rows[0] == ("NULL", None)
    value = first.rows[1][0]
    assert value is not None and value.encode("utf-8", "surrogateescape") == b't\tab\nline <&>" \xff\xfe'
    assert first.rows[1][1] == ""
    assert empty.columns == [] and empty.rows == []


def test_errors_map_to_pymysqls_classes() -> None:
    assert isinstance(client.mysql_error(1045, "Access denied"), pymysql.err.OperationalError)
    assert isinstance(client.mysql_error(1146, "no table"), pymysql.err.ProgrammingError)
    assert isinstance(client.mysql_error(1062, "duplicate"), pymysql.err.IntegrityError)
    err = client._first_error(
        b"--------------\nSELEC 1\n--------------\n\nERROR 1064 (42000) at line 3: You have an error "
        b"near 'SELEC 1\nx' at line 1\n",
        before_line=5,
    )
    assert isinstance(err, pymysql.err.ProgrammingError)
    assert err.args == (1064, "You have an error near 'SELEC 1\nx' at line 1")
    assert client._first_error(b"ERROR 1064 (42000) at line 9: later\n", before_line=5) is None


@pytest.mark.parametrize("password", ['with # hash and "quotes"', "back\\slash", "tab\tnew\nline", "ünï"])
def test_the_option_file_quotes_the_password(password: str) -> None:
    text = client.option_file("debian-sys-maint", password, "utf8")
    assert text.startswith("[client]\n") and "default-character-set=utf8\n" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("password="))
    value = line.removeprefix("password=")
    assert value[0] == value[-1] == '"'
    unquoted = (
        value[1:-1].replace("\\\\", "\0").replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t")
    ).replace("\0", "\\")
    assert unquoted == password
    assert "password=" not in client.option_file("root", None, "utf8")


def test_greeting() -> None:
    packet = b"\x5b\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00rest"
    assert parse_greeting(packet) == "10.11.6-MariaDB-0+deb12u1"
    assert parse_greeting(b"\x10\x00\x00\x00\x0a5.0.51a-24+lenny5\x00") == "5.0.51a-24+lenny5"
    assert parse_greeting(b"\x10\x00\x00\x00\xffHost blocked") is None


class Recording(LocalConnection):
    """The target for service tests: records every command, answers from a table."""

    def __init__(self, answers: dict[str, tuple[int, bytes]], programs: Sequence[str]) -> None:
        super().__init__("/")
        self.answers, self.programs, self.calls = answers, set(programs), []

    def run(self, argv, **kw):  # type: ignore[no-untyped-def,override]
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        key = argv[0] if argv[0] != "sh" else "sh " + argv[-1]
        rc, out = self.answers.get(key, (0, b""))
        return Completed(argv, rc, out, b"", 0.0)

    def which(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.programs else None


def test_sysvinit_service_uses_invoke_rc_d_and_the_old_pid_file() -> None:
    target = Recording({"cat": (0, b"4242\n"), "invoke-rc.d": (0, b"")}, ["invoke-rc.d", "mysqld", "mysql"])
    srv = from_params({"service": "sysv"}, target, Runner(apply=True, connection=target))
    assert isinstance(srv, SystemMysql) and srv.unit == "mysql"
    srv._start([])
    assert ["invoke-rc.d", "--disclose-deny", "mysql", "start"] in target.calls
    assert "/var/run/mysqld/mysqld.pid" in srv.pid_files()
    assert srv.server_binary() == "/usr/sbin/mysqld" and srv.client_binary() == "/usr/sbin/mysql"
    assert srv._pid() == 4242


def test_sysvinit_falls_back_to_the_script_when_policy_forbids() -> None:
    target = Recording({"invoke-rc.d": (101, b"")}, ["invoke-rc.d"])
    srv = from_params({"service": "sysv"}, target, Runner(apply=True, connection=target))
    srv._request_stop()
    assert target.calls[-1] == ["/etc/init.d/mysql", "stop"]


def test_a_grantless_start_under_sysvinit_detaches_mysqld_safe() -> None:
    target = Recording({}, ["mysqld_safe"])
    srv = from_params({"service": "sysv"}, target, Runner(apply=True, connection=target))
    srv._start(["--skip-grant-tables", "--skip-networking"])
    argv = target.calls[-1]
    assert (
        argv[:2] == ["sh", "-c"]
        and "nohup" in argv[2]
        and argv[-3:]
        == [
            "/usr/sbin/mysqld_safe",
            "--skip-grant-tables",
            "--skip-networking",
        ]
    )


def test_from_params_builds_the_sandbox_on_this_machine_and_paths_as_strings() -> None:
    params = {"service": "sandbox", "datadir": "/w/target/var/lib/mysql", "socket": "/w/s.sock", "port": "3307"}
    srv = from_params(params, LocalConnection("/w/target"), Runner())
    assert isinstance(srv, SandboxMysql) and srv.port == 3307
    assert srv.target.path("/x") == "/x"  # the sandbox's paths are this machine's own
    with pytest.raises(ValueError, match="systemd, sysv or sandbox"):
        from_params({"service": "upstart"}, LocalConnection("/"), Runner())
