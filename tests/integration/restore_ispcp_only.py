"""Test scaffolding: put the backup's `ispcp` database into a world's target, nothing else.

register_accounts reads the restored domain table; the mysql_restore step that does this for real is
tested elsewhere. Only the `ispcp` directory is replaced (binary copy while the server is stopped,
owned by the host's mysql user), so the target's own `mysql` database and with it the target's root,
debian-sys-maint and ispCP logins keep working.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ispcp_lib.sandbox.private_mysql import mysql_ids
from ispcp_lib.sandbox.world import World


def restore_ispcp_only(world: World) -> None:
    """Stop the target server, copy backup var/lib/mysql/ispcp over the datadir's, chown, start again."""
    server = world.target_mysql()
    server.stop()
    datadir = Path(world.mysql_params["datadir"])
    dest = datadir / "ispcp"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(world.backup_root / "var/lib/mysql/ispcp", dest, symlinks=True)
    uid, gid = mysql_ids()
    for dirpath, _dirs, files in os.walk(dest):
        os.chown(dirpath, uid, gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), uid, gid)
    world.start()
