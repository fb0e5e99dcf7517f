"""Test scaffolding: restore the backup's `ispcp` and `mysql` databases into a world's target, as the guide does.

The real mysql_restore step is built elsewhere; the keys and ispcp_conf tests need its result, not its
checks. Binary copy with the server stopped, ownership for the host's mysql user, start again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ispcp_lib.sandbox.private_mysql import mysql_ids
from ispcp_lib.sandbox.world import World

# InnoDB tables of the `mysql` schema: their .ibd belong to the instance's own system tablespace, so the
# target keeps its own copies (the old server's would carry foreign tablespace ids).
KEEP_TARGET = ("*.ibd",)


def restore_databases(world: World, names: tuple[str, ...] = ("ispcp", "mysql")) -> None:
    """Replace the target datadir's databases with the backup's binary copies; the server runs afterwards."""
    server = world.target_mysql()
    server.stop()
    datadir = Path(world.mysql_params["datadir"])
    uid, gid = mysql_ids()
    for name in names:
        src = world.backup_root / "var/lib/mysql" / name
        dst = datadir / name
        aside = datadir.parent / f".{name}.dummy"  # outside the datadir: not seen as a database
        if dst.exists():
            dst.rename(aside)
        shutil.copytree(src, dst, symlinks=True)
        if aside.exists():
            for pattern in KEEP_TARGET:
                for own in aside.glob(pattern):
                    shutil.copy2(own, dst / own.name)
            shutil.rmtree(aside)
        for dirpath, _dirs, files in os.walk(dst):
            os.chown(dirpath, uid, gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), uid, gid)
    server.start()
