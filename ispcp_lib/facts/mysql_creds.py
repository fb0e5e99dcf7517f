"""Where admin access to MySQL comes from: debian.cnf before the restore, the old files after it."""

from __future__ import annotations

import configparser
from dataclasses import dataclass

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.context import Context

DEBIAN_CNF = "/etc/mysql/debian.cnf"


@dataclass(frozen=True, repr=False)
class Login:
    user: str
    password: str
    source: str  # where it was found, for messages

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, source={self.source!r}, password=<hidden>)"


def parse_client_login(text: str, source: str) -> Login | None:
    """The [client] login of a MySQL option file's text, None when it has none."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    if not parser.has_section("client") or not parser.get("client", "user", fallback=None):
        return None
    return Login(parser.get("client", "user"), parser.get("client", "password", fallback=""), source)


def read_debian_cnf(conn: Connection, path: str) -> Login | None:
    """The [client] login of a debian.cnf-style file on that side, None when it is absent or has none."""
    text = conn.read_text(path)
    return None if text is None else parse_client_login(text, path)


def target_admin(ctx: Context) -> Login | None:
    """The target's maintainer login (registered as a secret)."""
    login = read_debian_cnf(ctx.target, DEBIAN_CNF)
    if login is not None:
        ctx.secrets.add(login.password, "debian-sys-maint")
    return login


def backup_admin(ctx: Context) -> Login | None:
    """The old server's maintainer login, from the backup's debian.cnf."""
    if ctx.backup is None:
        return None
    login = read_debian_cnf(ctx.backup, DEBIAN_CNF)
    if login is not None:
        ctx.secrets.add(login.password, "old debian-sys-maint")
    return login


def secrets_file_admin(ctx: Context) -> Login | None:
    """The admin login named in the secrets_file (mysql_admin_user, default root; mysql_admin_password)."""
    given = ctx.params.get("secrets", {})
    if not given.get("mysql_admin_password"):
        return None
    return Login(given.get("mysql_admin_user", "root"), given["mysql_admin_password"], "secrets_file")


def working_admin(ctx: Context) -> Login | None:
    """The first admin login that the running server accepts: the target's debian.cnf, the backup's,
    then one from the secrets_file (for when neither file survived)."""
    if ctx.mysql is None or not ctx.mysql.status():
        return None
    for login in (target_admin(ctx), backup_admin(ctx), secrets_file_admin(ctx)):
        if login is not None and ctx.mysql.login_error(login.user, login.password) is None:
            return login
    return None
