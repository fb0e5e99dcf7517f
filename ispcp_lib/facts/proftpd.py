"""ProFTPd's MySQL login: the `SQLConnectInfo db@host user password` line, read and rewritten in place.

ProFTPd (mod_sql) logs into MySQL as ispCP's `vftp` user with a plain-text password kept in this one
line. ispCP keeps a working copy of the file (CONF_DIR/proftpd/working/proftpd.conf) and reads the
password from there, so every copy must agree with MySQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.context import Context
from ispcp_lib.facts import backup_layout
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import queries
from ispcp_lib.mysql import dialect

DEFAULT_FTPD_CONF = "/etc/proftpd.conf"
DEFAULT_CONF_DIR = "/etc/ispcp"

# Directive name, then the rest of the line. Directive names are case-insensitive in ProFTPd.
_DIRECTIVE = re.compile(r"^(?P<indent>\s*)(?P<name>SQLConnectInfo)(?P<rest>\s.*)?$", re.IGNORECASE)
# One argument: a double-quoted string (ProFTPd's quoting) or a run of non-space characters.
_TOKEN = re.compile(r'\s+("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True, repr=False)
class SqlConnect:
    """The parsed SQLConnectInfo line. The repr hides the password."""

    database: str
    host: str | None  # None: no @host given (ProFTPd then uses localhost)
    port: str | None
    user: str | None
    password: str | None
    line_no: int  # 0-based index into the file's lines

    def __repr__(self) -> str:
        return (
            f"SqlConnect(database={self.database!r}, host={self.host!r}, user={self.user!r}, "
            f"password={'<hidden>' if self.password else None}, line={self.line_no + 1})"
        )

    @property
    def effective_host(self) -> str:
        return self.host or "localhost"

    def describe(self) -> str:
        """db@host user, without the password (for tables)."""
        where = self.database + (f"@{self.host}" if self.host else "") + (f":{self.port}" if self.port else "")
        return f"{where} {self.user or '(no user)'}"


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def _quote_if_needed(value: str) -> str:
    if value and not re.search(r'[\s"\\#]', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tokens(rest: str) -> list[tuple[int, int, str]]:
    """(start, end, raw token) of each argument in `rest`; stops at an unquoted comment."""
    out = []
    pos = 0
    while True:
        m = _TOKEN.match(rest, pos)
        if m is None:
            break
        raw = m.group(1)
        if raw.startswith("#"):
            break
        out.append((m.start(1), m.end(1), raw))
        pos = m.end()
    return out


def find_line(text: str) -> int | None:
    """Index of the effective (last uncommented) SQLConnectInfo line, None when there is none."""
    found = None
    for no, line in enumerate(text.splitlines()):
        m = _DIRECTIVE.match(line)
        if m is not None and (m["rest"] or "").strip():
            found = no  # ProFTPd takes the last one in the same context
    return found


def parse(text: str) -> SqlConnect | None:
    """The SQLConnectInfo of a proftpd.conf text, None when the file has no such line."""
    no = find_line(text)
    if no is None:
        return None
    line = text.splitlines()[no]
    rest = _DIRECTIVE.match(line)["rest"] or ""
    args = [_unquote(raw) for _s, _e, raw in _tokens(rest)]
    if not args:
        return None
    conn = args[0]
    database, _, hostport = conn.partition("@")
    host, _, port = hostport.partition(":")
    return SqlConnect(
        database=database,
        host=host or None,
        port=port or None,
        user=args[1] if len(args) > 1 else None,
        password=args[2] if len(args) > 2 else None,
        line_no=no,
    )


def raw_password(text: str) -> str | None:
    """The password argument exactly as the file holds it (quotes and backslash escapes included)."""
    no = find_line(text)
    if no is None:
        return None
    toks = _tokens(_DIRECTIVE.match(text.splitlines()[no])["rest"] or "")
    return toks[2][2] if len(toks) > 2 else None


def password_forms(password: str) -> list[str]:
    """Every form of the password a proftpd.conf or its diff can show: as is, escaped, and quoted."""
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    return list(dict.fromkeys([password, escaped, _quote_if_needed(password)]))


def with_password(text: str, password: str) -> str:
    """The same text with only the password argument of SQLConnectInfo replaced (layout kept).

    A line without a password argument gets one appended after the user.
    """
    no = find_line(text)
    if no is None:
        raise ValueError("no SQLConnectInfo line to rewrite")
    lines = text.splitlines(keepends=True)
    raw_line = lines[no]
    ending = raw_line[len(raw_line.rstrip("\r\n")) :]
    line = raw_line.rstrip("\r\n")
    m = _DIRECTIVE.match(line)
    rest = m["rest"] or ""
    offset = m.start("rest")
    toks = _tokens(rest)
    if len(toks) < 2:
        raise ValueError("SQLConnectInfo has no user to go with a password")
    quoted = _quote_if_needed(password)
    if len(toks) >= 3:
        start, end, _raw = toks[2]
        line = line[: offset + start] + quoted + line[offset + end :]
    else:
        _s, end, _raw = toks[1]
        line = line[: offset + end] + " " + quoted + line[offset + end :]
    lines[no] = line + ending
    return "".join(lines)


@dataclass(repr=False)
class ConfCopy:
    """One proftpd.conf copy: where it is, what it says."""

    role: str  # e.g. "target FTPD_CONF_FILE"
    logical: str  # path as on the server
    where: str  # where it was read, for the operator (the backup's folder for a backup copy)
    text: str | None  # None: the file does not exist
    info: SqlConnect | None
    mode: int | None = None  # permission bits of the file

    @property
    def exists(self) -> bool:
        return self.text is not None


def read_copy(role: str, logical: str, side: Connection, ctx: Context, where: str | None = None) -> ConfCopy:
    """Read one copy from the target or the backup; its password is registered as a secret at once."""
    st = side.stat(logical)
    data = side.read_bytes(logical) if st is not None and st.is_file else None
    if data is None:
        return ConfCopy(role, logical, where or logical, None, None)
    text = data.decode("utf-8", "replace")
    info = parse(text)
    if info is not None and info.password:
        # The file may hold the password quoted and escaped: mask that form too, or a diff shows it.
        for form in [*password_forms(info.password), raw_password(text)]:
            ctx.secrets.add(form, f"vftp password ({role})")
    return ConfCopy(role, logical, where or logical, text, info, st.mode if st is not None else None)


def conf_paths(conf: IspcpConf | None) -> tuple[str, str]:
    """(FTPD_CONF_FILE, ispCP's working copy) as named by an ispcp.conf (defaults when absent)."""
    ftpd = (conf.get("FTPD_CONF_FILE") if conf else None) or DEFAULT_FTPD_CONF
    conf_dir = (conf.get("CONF_DIR") if conf else None) or DEFAULT_CONF_DIR
    return ftpd, f"{conf_dir.rstrip('/')}/proftpd/working/proftpd.conf"


def target_copies(ctx: Context, conf: IspcpConf | None) -> list[ConfCopy]:
    ftpd, working = conf_paths(conf)
    return [
        read_copy("target FTPD_CONF_FILE", ftpd, ctx.target, ctx),
        read_copy("target working copy", working, ctx.target, ctx),
    ]


def backup_copies(ctx: Context, conf: IspcpConf | None) -> list[ConfCopy]:
    """The backup's copies; a path that a symlink leads out of the backup is refused."""
    if ctx.backup is None:
        return []
    ftpd, working = conf_paths(conf)
    return [
        read_copy(role, backup_layout.checked(ctx, logical, role), ctx.backup, ctx, backup_layout.shown(ctx, logical))
        for role, logical in (("backup FTPD_CONF_FILE", ftpd), ("backup working copy", working))
    ]


def target_login(ctx: Context, conf: IspcpConf | None, which: str = "ftpd") -> SqlConnect | None:
    """The vftp login on the target: ProFTPd's own file ("ftpd", what the FTP server uses) or ispCP's
    working copy ("working", what ispcp-update reads). Falls back to the other copy when one is absent."""
    copies = target_copies(ctx, conf)
    if which == "working":
        copies.reverse()
    for copy in copies:
        if copy.info is not None and copy.info.password:
            return copy.info
    return None


def check_vftp(ctx: Context, info: SqlConnect | None) -> tuple[bool, str]:
    """Can this login reach MySQL and SELECT from ftp_users, as ProFTPd must? (ok, what was seen)."""
    if info is None:
        return False, "no SQLConnectInfo with a password found in the ProFTPd config"
    if ctx.mysql is None or not ctx.mysql.status():
        return False, "MySQL is not running"
    import pymysql

    try:
        conn = ctx.mysql.connect(info.user or "", info.password, info.database)
    except pymysql.MySQLError as exc:
        return False, f"login as {info.user} failed: {exc.args[-1] if exc.args else exc}"
    try:
        with conn.cursor() as cur:
            dialect.execute(cur, queries.FTP_USER_COUNT)
            (count,) = cur.fetchone()
    except pymysql.MySQLError as exc:
        return (
            False,
            f"{info.user} logs in but cannot read {info.database}.ftp_users: {exc.args[-1] if exc.args else exc}",
        )
    finally:
        conn.close()
    return True, f"{info.user} logs into {info.database} and reads ftp_users ({count} rows)"
