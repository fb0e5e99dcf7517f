"""MySQL accounts: which admin login works, the hosts a user has, and one password for all of them.

Where the admin logins come from: the target's and the backup's `debian.cnf`, ispCP's own
DATABASE_USER (decrypted with the key files), the root login mysql_maintainer saved in the state
directory, and the secrets_file. `session` is an open admin connection
(`ctx.mysql.connect(admin.user, admin.password)`). `SET PASSWORD FOR … = PASSWORD(…)` is understood
from MySQL 5.0 to MariaDB 11 (ALTER USER needs MySQL 5.7.6 / MariaDB 10.2).
"""

from __future__ import annotations

from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts import ispcp_login, mysql_creds
from ispcp_lib.facts.mysql_creds import Login

# mysql_maintainer's saved root login, in the state directory.
ROOT_CNF = "mysql-root.cnf"


def saved_root(ctx: Context) -> Login | None:
    """The root login mysql_maintainer saved (registered as a secret), None when there is none."""
    login = mysql_creds.read_debian_cnf(ctx.state_dir / ROOT_CNF)
    if login is not None:
        ctx.secrets.add(login.password, "MySQL root (reset)")
    return login


def admin_logins(ctx: Context) -> list[Login]:
    """Logins that may administer the running server: both debian.cnf files, ispCP's own (decrypted),
    the saved root login and the secrets_file's."""
    out = [login for login in (mysql_creds.target_admin(ctx), mysql_creds.backup_admin(ctx)) if login is not None]
    for side in ("target", "backup"):
        try:
            login = ispcp_login.ispcp_login(ctx, side)
        except InputError:
            login = None
        if login is not None:
            out.append(login)
    out += [login for login in (saved_root(ctx), mysql_creds.secrets_file_admin(ctx)) if login is not None]
    return out


def admin_login(ctx: Context) -> Login | None:
    """The first admin login the running server accepts, None when it is down or refuses them all."""
    if ctx.mysql is None or not ctx.mysql.status():
        return None
    return next((lg for lg in admin_logins(ctx) if ctx.mysql.can_login(lg.user, lg.password) is None), None)


def user_hosts(session: Any, user: str) -> list[str]:
    """The Host column of every account named user, sorted."""
    with session.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host", (user,))
        return [str(row[0]) for row in cur.fetchall()]


def set_user_password(
    ctx: Context, session: Any, user: str, password: str, hosts: list[str] | None = None
) -> list[str]:
    """Give every host entry of user (or the hosts given) this password; returns the hosts changed.

    An empty list means the user has no account: creating one is the caller's decision.
    """
    ctx.secrets.add(password, f"MySQL password of {user}")
    todo = user_hosts(session, user) if hosts is None else hosts
    with session.cursor() as cur:
        for host in todo:
            cur.execute("SET PASSWORD FOR %s@%s = PASSWORD(%s)", (user, host, password))
    return todo
