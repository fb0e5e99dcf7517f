"""Helpers shared by the integration tests: contexts, queries, secret checks, refusals, restore shortcuts.

The restore functions are test scaffolding: they bring a world's target to the state a step needs with
plain file operations (the guide's binary copy), so that a step's tests do not depend on the code of the
steps before it. The real mysql_restore step is tested on its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.context import Context
from ispcp_lib.core.result import Result
from ispcp_lib.facts.mysql_creds import Login, read_debian_cnf
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.private_mysql import mysql_ids
from ispcp_lib.sandbox.world import World, stable_fingerprint

# InnoDB tables of the `mysql` schema: their .ibd belong to the instance's own system tablespace, so the
# target keeps its own copies (the old server's would carry foreign tablespace ids).
KEEP_TARGET = ("*.ibd",)


@contextmanager
def running_clone(template: World, dest: Path) -> Iterator[World]:
    """A private copy of template at dest with its target MariaDB running; stopped afterwards, whatever happens."""
    w = template.clone(dest)
    try:
        w.start()
        yield w
    finally:
        w.stop()


def ctx_for(world: World, apply: bool = False, **options: Any) -> Context:
    """A Context for the world (a dry run unless apply), step options as given, progress lines silenced."""
    ctx = open_run(**world.runbook_params(), apply=False, resume=False, options=options)
    ctx.default_apply = apply
    ctx.progress = lambda line: None
    return ctx


def planned_then_applied(step: Any, ctx: Context) -> tuple[Result, Result]:
    """The step's dry run right before its apply (as JupyterLab runs it); both must list the same
    operations (kind and sentence), in the same order, and the same change lines."""
    ctx.default_apply = False
    planned = step.run(ctx)
    ctx.default_apply = True
    done = step.run(ctx)
    assert operations(planned) == operations(done), (operations(planned), operations(done))
    assert planned.changes == done.changes, (planned.changes, done.changes)
    return planned, done


def operations(result: Result) -> list[tuple[str, str]]:
    return [(op.kind, op.what) for op in result.operations]


def fetch(
    world: World, user: str, password: str, sql: str, database: str | None = None, args: tuple | None = None
) -> list[tuple]:
    """Every row of one statement, run as user on the world's target server."""
    conn = world.target_mysql().connect(user, password, database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def assert_no_secret(world: World, ctx: Context, *results: Result) -> None:
    """No secret of the world, nor any the code registered, in the results' HTML and repr or the journal."""
    shown = [r._repr_html_() + repr(r) for r in results]
    shown.append(ctx.journal_path.read_text() if ctx.journal_path.exists() else "")
    for text in shown:
        for secret in [*world.secrets, *ctx.secrets.values()]:
            assert secret not in text


def refused(world: World, attempt: Callable[[], Result]) -> str:
    """Run attempt expecting a failed step that leaves the target untouched; return the first error."""
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        attempt()
    assert stable_fingerprint(world) == before
    return info.value.result.errors[0]


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    for dirpath, _dirs, files in os.walk(top):
        os.chown(dirpath, uid, gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), uid, gid)


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
        _chown_tree(dst, uid, gid)
    server.start()


def restore_ispcp_only(world: World) -> None:
    """Only the backup's `ispcp` database over the target's: the target's own `mysql` database, and with it
    the target's root, debian-sys-maint and ispCP logins, keep working. The server runs afterwards."""
    server = world.target_mysql()
    server.stop()
    dest = Path(world.mysql_params["datadir"]) / "ispcp"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(world.backup_root / "var/lib/mysql/ispcp", dest, symlinks=True)
    _chown_tree(dest, *mysql_ids())
    world.start()


def read_cnf(path: Path) -> Login | None:
    """The [client] login of an option file of this machine (a world's debian.cnf, a saved root login)."""
    return read_debian_cnf(LocalConnection("/"), str(path))
