"""SQLConnectInfo: parse and rewrite the vftp login line of proftpd.conf without disturbing anything else."""

from __future__ import annotations

import difflib

import pytest

from ispcp_lib.facts import proftpd
from ispcp_lib.sandbox.ispcp_files import proftpd_conf

REAL = proftpd_conf("old.sandbox.test", "S3cretVftp")  # the real 1.0.5 template, filled in


def test_parses_the_real_template() -> None:
    info = proftpd.parse(REAL)
    assert info is not None
    assert (info.database, info.host, info.port, info.user, info.password) == (
        "ispcp",
        "localhost",
        None,
        "vftp",
        "S3cretVftp",
    )
    assert REAL.splitlines()[info.line_no].startswith("SQLConnectInfo")


def test_repr_hides_the_password() -> None:
    info = proftpd.parse(REAL)
    assert "S3cretVftp" not in repr(info)
    assert "S3cretVftp" not in info.describe()
    assert info.describe() == "ispcp@localhost vftp"


def test_commented_lines_are_ignored_and_the_last_line_counts() -> None:
    text = (
        "#SQLConnectInfo old@localhost vftp commented\n"
        "  # SQLConnectInfo x@y z w\n"
        "SQLConnectInfo first@localhost vftp one\n"
        "<IfModule mod_sql.c>\n"
        "    sqlconnectinfo ispcp@db.example:3307 vftp two\n"
        "</IfModule>\n"
    )
    info = proftpd.parse(text)
    assert (info.database, info.host, info.port, info.password, info.line_no) == (
        "ispcp",
        "db.example",
        "3307",
        "two",
        4,
    )


def test_quoted_password_and_trailing_comment() -> None:
    info = proftpd.parse('SQLConnectInfo ispcp@localhost vftp "pa ss\\"w#rd" # the login\n')
    assert info.password == 'pa ss"w#rd'
    assert proftpd.parse("SQLConnectInfo ispcp vftp pw # note\n").password == "pw"


def test_missing_parts() -> None:
    assert proftpd.parse("ServerName x\n") is None
    assert proftpd.parse("SQLConnectInfo\n") is None
    info = proftpd.parse("SQLConnectInfo ispcp\n")
    assert (info.database, info.host, info.user, info.password) == ("ispcp", None, None, None)
    assert info.effective_host == "localhost"


def test_rewrite_changes_only_the_password() -> None:
    new = proftpd.with_password(REAL, "N3wPassword")
    diff = [
        ln
        for ln in difflib.unified_diff(REAL.splitlines(), new.splitlines(), lineterm="", n=0)
        if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))
    ]
    assert diff == [
        "-SQLConnectInfo             ispcp@localhost vftp S3cretVftp",
        "+SQLConnectInfo             ispcp@localhost vftp N3wPassword",
    ]
    assert proftpd.parse(new).password == "N3wPassword"
    assert new.endswith("\n") == REAL.endswith("\n")


@pytest.mark.parametrize("password", ["with space", 'quo"te', "hash#tag", "back\\slash"])
def test_rewrite_quotes_when_needed_and_round_trips(password: str) -> None:
    new = proftpd.with_password("SQLConnectInfo ispcp@localhost vftp old # keep me\r\nX 1\r\n", password)
    assert proftpd.parse(new).password == password
    assert new.endswith("# keep me\r\nX 1\r\n")


def test_rewrite_adds_a_missing_password_and_refuses_without_user() -> None:
    assert proftpd.parse(proftpd.with_password("SQLConnectInfo ispcp@localhost vftp\n", "pw")).password == "pw"
    with pytest.raises(ValueError, match="no user"):
        proftpd.with_password("SQLConnectInfo ispcp@localhost\n", "pw")
    with pytest.raises(ValueError, match="no SQLConnectInfo"):
        proftpd.with_password("ServerName x\n", "pw")


def test_conf_paths_follow_ispcp_conf() -> None:
    from ispcp_lib.facts.ispcp_conf import IspcpConf

    assert proftpd.conf_paths(None) == ("/etc/proftpd.conf", "/etc/ispcp/proftpd/working/proftpd.conf")
    conf = IspcpConf.parse("FTPD_CONF_FILE = /etc/proftpd/proftpd.conf\nCONF_DIR = /usr/local/etc/ispcp/\n")
    assert proftpd.conf_paths(conf) == (
        "/etc/proftpd/proftpd.conf",
        "/usr/local/etc/ispcp/proftpd/working/proftpd.conf",
    )


def test_check_vftp_without_a_login() -> None:
    ok, text = proftpd.check_vftp(None, None)  # type: ignore[arg-type]
    assert not ok and "no SQLConnectInfo" in text


@pytest.mark.parametrize("password", ['quo"te-Secret', "back\\slash-Secret", 'both\\"-Secret'])
def test_an_escaped_password_is_masked_in_the_form_the_file_holds(tmp_path, password: str) -> None:
    """A diff shows the file's text: the quoted, escaped form must be masked as well as the plain one."""
    from types import SimpleNamespace

    from ispcp_lib.core.connection import LocalConnection
    from ispcp_lib.core.secrets import SecretRegistry

    path = tmp_path / "etc/proftpd.conf"
    path.parent.mkdir()
    path.write_text(proftpd.with_password(REAL, password))
    ctx = SimpleNamespace(secrets=SecretRegistry())
    copy = proftpd.read_copy("target FTPD_CONF_FILE", "/etc/proftpd.conf", LocalConnection(tmp_path), ctx)
    assert copy.info.password == password
    shown = ctx.secrets.redact(path.read_text())
    assert "SQLConnectInfo" in shown and "Secret" not in shown
    assert ctx.secrets.redact(f"the password is {password}") == "the password is «redacted»"
