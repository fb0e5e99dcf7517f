"""The checks the keys and ispcp_conf steps share: both ispcp.conf copies present, and the old login works.

Library code for steps (no step imports another); the facts they stand on are `facts.ispcp_login`.
"""

from __future__ import annotations

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout
from ispcp_lib.facts import ispcp_login as login_facts
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf


def required_confs(ctx: Context, why_backup: str) -> tuple[IspcpConf, IspcpConf]:
    """The backup's and the target's ispcp.conf (DATABASE_PASSWORD registered as a secret), or a clear error.

    why_backup says what the step needs the backup's copy for.
    """
    old_conf = login_facts.load_conf(ctx, "backup")
    if old_conf is None:
        raise InputError(
            "ispcp.conf (backup)",
            f"is missing: {why_backup}",
            "copy the old /etc/ispcp/ispcp.conf into the backup",
            path=backup_layout.shown(ctx, CONF_PATH),
        )
    target_conf = login_facts.load_conf(ctx, "target")
    if target_conf is None:
        raise PreconditionFailed(
            "ispcp.conf (target)",
            "is missing: the dummy ispCP install is not in place",
            "install the dummy ispCP first (see ispcp_install_check)",
            path=CONF_PATH,
        )
    return old_conf, target_conf


def require_login(ctx: Context, result: Result, user: str, password: str, database: str) -> bool:
    """True when the decrypted login opens the database. Applying, a failure stops the step; a dry run only warns.

    (In a dry run the restore that makes the login work may itself be only planned.)
    """
    if ctx.mysql is None or not ctx.mysql.status():
        item = "MySQL server"
        problem = "is not running, so the decrypted DATABASE_PASSWORD cannot be tried"
        fix = "start MySQL with the restored databases (the mysql_restore step leaves it running)"
    else:
        reason = ctx.mysql.login_error(user, password, database)
        if reason is None:
            return True
        item = f"MySQL login as {user}"
        problem = (
            f"the keys are right (DATABASE_PASSWORD decrypts to printable text), but MySQL refuses "
            f"{user} on database {database}: {reason}"
        )
        fix = (
            "restore the old server's mysql database (mysql_restore): its accounts must match this "
            "ispcp.conf. If they do, the password was changed after this ispcp.conf was saved: set it in "
            "MySQL to the decrypted one (`ispcp-recover decrypt-password --show`)"
        )
    ctx.precondition(item, problem, fix, dry_run="expected in a dry run when mysql_restore is not applied yet")
    return False
