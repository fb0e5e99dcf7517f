"""The target's datadir: the run's folder beside it, staged copies from the backup, moving database folders.

Every change goes through the runner on the target (planned only in a dry run, recorded in the
step's result): `cp -a`/rsync for the staged copies, `chown -R` to the target's own mysql user,
`mv` for the swaps (a rename on one filesystem; mv copies and removes across filesystems).
Paths are the target's own; backup paths are the old server's.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import mysql_state
from ispcp_lib.facts.ispcp_conf import DEFAULT_DATABASE_NAME

DEFAULT_DATADIR = "/var/lib/mysql"


def old_datadir(conf: Any) -> str:
    """The old server's datadir (conf: the backup's ispcp.conf, or None)."""
    return (conf.get("DATABASE_DIR") if conf is not None else None) or DEFAULT_DATADIR


def ispcp_database(conf: Any) -> str:
    """The name of ispCP's own database."""
    return conf.database_name if conf is not None else DEFAULT_DATABASE_NAME


def live_datadir(ctx: Context) -> str:
    """The running server's datadir as the target's own path."""
    return ctx.logical_path(ctx.mysql.datadir)


def join(folder: str, *names: str) -> str:
    return posixpath.join(folder, *names)


@dataclass
class Layout:
    """Where a step works: the live datadir and the run's folder beside it."""

    datadir: str
    work: str

    @property
    def staging(self) -> str:
        return join(self.work, "staging")

    @property
    def kept(self) -> str:
        return join(self.work, "kept")

    @property
    def failed(self) -> str:
        return join(self.work, "failed")


def work_layout(ctx: Context, datadir: str, purpose: str = "restore") -> Layout:
    """The run's folder `<datadir>.<purpose>-<run id>` beside the datadir (same filesystem, so moves are
    renames); `mysql.<purpose>-<run id>` in the state dir otherwise.

    A folder left by an earlier attempt of the same run is never reused: it may hold kept originals.
    """
    parent = posixpath.dirname(datadir.rstrip("/"))
    devices = ctx.target.run(["stat", "-c", "%d", ctx.target.path(parent), ctx.target.path(datadir)], timeout=60)
    same_fs = devices.rc == 0 and len(set(devices.out.split())) == 1
    if same_fs:
        base = f"{datadir.rstrip('/')}.{purpose}-{ctx.run_id}"
    else:
        base = ctx.logical_path(f"{ctx.state_dir}/mysql.{purpose}-{ctx.run_id}")
    work, n = base, 1
    while ctx.target.exists(work):
        n += 1
        work = f"{base}-{n}"
    return Layout(datadir, work)


_NOT_WRITABLE = 'for p; do [ -e "$p" ] || p=$(dirname "$p"); [ -w "$p" ] || printf "%s\\n" "$p"; done'


def check_writable(ctx: Context, paths: list[str]) -> None:
    """Refuse a datadir on a read-only filesystem (access(2) says EROFS even to root), in one round trip."""
    argv = [ctx.target.path(p) for p in paths]
    done = ctx.target.run(["sh", "-c", _NOT_WRITABLE, "sh", *argv], timeout=60)
    refused = done.out.split("\n")[0].strip()
    if refused:
        raise PreconditionFailed(
            "MySQL datadir",
            "is on a read-only filesystem (or not writable)",
            "remount it read-write (mount -o remount,rw <mount point>)",
            path=ctx.logical_path(refused),
        )


# --- changes, through the runner ------------------------------------------------------------------


def make_dir(ctx: Context, path: str) -> None:
    """mkdir -p, mode 0700 (the run's folders hold copies of the databases)."""
    ctx.runner.run(["mkdir", "-p", "-m", "700", "--", ctx.target.path(path)], mutates=True, timeout=60)


def move(ctx: Context, src: str, dst: str) -> None:
    """Move a folder or file on the target (mv: a rename on one filesystem, copy and remove across)."""
    make_dir(ctx, posixpath.dirname(dst))
    ctx.runner.run(["mv", "-T", "--", ctx.target.path(src), ctx.target.path(dst)], mutates=True, timeout=14400)


def remove_tree(ctx: Context, path: str) -> None:
    ctx.runner.run(["rm", "-rf", "--", ctx.target.path(path)], mutates=True, timeout=3600)


def remove_if_empty(ctx: Context, *paths: str) -> None:
    """rmdir the folders that hold nothing (the run's folder when nothing was kept in it)."""
    argv = ["rmdir", "--ignore-fail-on-non-empty", "--", *(ctx.target.path(p) for p in paths)]
    ctx.runner.run(argv, mutates=True, check=False, timeout=60)


def _backup_on_target(ctx: Context, path: str) -> str | None:
    """The backup path as a command on the target sees it, None when only a copy can bring it over."""
    try:
        return ctx.backup_argv_path(path)
    except InputError:
        return None


def stage_from_backup(
    ctx: Context,
    result: Result,
    src: str,
    staged: str,
    owner: tuple[int, int],
    files: mysql_state.DatabaseFiles | None = None,
    leave_out: Sequence[str] = (),
    what: str = "",
) -> None:
    """Copy a database folder of the backup (its contents) to `staged` on the target, ready to be renamed in.

    `cp -a` on the target when it sees the backup (every byte, mode and time; reflinks where the
    filesystem has them), else an rsync from the machine that holds the backup (what: how the plan names
    the copy). leave_out: tables
    (file stems) not to keep in the staged copy. Aria tables that MariaDB could not adopt as they are
    get rebuilt (files: the folder's scan), then everything is given to the target's mysql user.
    The one staging of mysql_restore and customer_databases.
    """
    make_dir(ctx, posixpath.dirname(staged))
    seen = _backup_on_target(ctx, src)
    what = what or f"copy {src} of the backup to {staged}"
    if seen is not None:
        result.change(f"{what} (cp -a)")
        argv = ["cp", "-a", "--reflink=auto", "--", f"{seen}/.", ctx.target.path(staged)]
        ctx.runner.run(argv, mutates=True, timeout=14400)
    else:
        ctx.copy_from_backup(f"{src}/", f"{staged}/", what=f"{what} (rsync)")
    if leave_out:
        gone = [ctx.target.path(join(staged, f"{n}{suffix}")) for n in leave_out for suffix in _TABLE_FILES]
        ctx.runner.run(["rm", "-f", "--", *gone], mutates=True)
    if files is not None:
        rebuild_aria(ctx, result, staged, aria_tables_to_rebuild(ctx, staged, files, list(leave_out)))
    uid, gid = owner
    result.change(f"chown -R {uid}:{gid} (the target's mysql user and group) {staged}")
    ctx.runner.run(["chown", "-R", f"{uid}:{gid}", "--", ctx.target.path(staged)], mutates=True, timeout=7200)


# The files of an InnoDB table that a staged copy leaves out with it.
_TABLE_FILES = (".frm", ".ibd", ".isl")


def mysql_owner(ctx: Context) -> tuple[int, int]:
    """(uid, gid) of the target's mysql user and group; refused when the target has none."""
    owner = mysql_state.mysql_owner(ctx.target)
    if owner is None:
        raise PreconditionFailed(
            "mysql user",
            "is missing from the target's /etc/passwd or /etc/group",
            "install the MySQL/MariaDB server on the target first",
            path="/etc/passwd",
        )
    return owner


# aria_chk may drop files into its working directory: a scratch folder, removed afterwards.
_IN_SCRATCH = 'd=$(mktemp -d) || exit 1; cd "$d" || exit 1; "$@"; rc=$?; cd /; rm -rf "$d"; exit $rc'


def rebuild_aria(ctx: Context, result: Result, staged: str, names: list[str]) -> None:
    """Rebuild the staged copies of Aria tables whose data file has a never-written page.

    Aria tables carry the identity of the server that wrote them; MariaDB re-stamps ("zerofills") a moved
    table itself when it first opens it. That fails on a data file with a blank page (mysql.proc of
    a current MariaDB): the table is then reported corrupt. aria_chk --recover --zerofill rewrites such a
    data file from its rows and re-stamps it, in the staged copy only (the backup is never touched), before
    the server is stopped. MySQL has no Aria: nothing to do there.
    """
    if not names:
        return
    exe = ctx.target.which("aria_chk")
    if exe is None:
        result.warn(f"aria_chk is not installed: {', '.join(names)} may need REPAIR TABLE after the restore")
        return
    result.change(
        f"rebuild the staged {', '.join(names)} (an Aria data file with a blank page; aria_chk "
        "--recover --zerofill), so that MariaDB can adopt it"
    )
    files = [ctx.target.path(join(staged, f"{n}.MAI")) for n in names]
    argv = ["sh", "-c", _IN_SCRATCH, "sh", exe, "--recover", "--zerofill", "--silent", *files]
    ctx.runner.run(argv, mutates=True, timeout=7200)


def aria_tables_to_rebuild(
    ctx: Context, staged: str, files: mysql_state.DatabaseFiles, skipped: list[str]
) -> list[str]:
    """Aria tables of a staged copy that MariaDB could not re-stamp as they are (read on the target).

    In a dry run nothing is staged: the backup's own folder is read instead, where it lies.
    """
    aria = [n for n in files.of_engine("Aria") if n not in skipped]
    if not aria:
        return []
    if ctx.apply:
        return mysql_state.blank_page_tables(ctx.target, staged, aria)
    assert ctx.backup is not None
    return mysql_state.blank_page_tables(ctx.backup, files.path, aria)


def first_line(exc: BaseException) -> str:
    """One line that says what went wrong: a command's last error line, else the exception's first."""
    if isinstance(exc, CommandFailed):
        lines = [ln for ln in exc.stderr.strip().splitlines() if ln.strip()]
        return f"{posixpath.basename(exc.argv[0])} exited with {exc.rc}: {lines[-1] if lines else 'no message'}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
