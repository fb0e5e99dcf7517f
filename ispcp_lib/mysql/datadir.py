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

from ispcp_lib.core.action import read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.operations import RunCommand, operation_records
from ispcp_lib.core.result import Result
from ispcp_lib.facts import mysql_state
from ispcp_lib.facts.ispcp_conf import DEFAULT_DATABASE_NAME
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import dumps
from ispcp_lib.system import disk_space
from ispcp_lib.system.disk_space import Need

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


# The whole-datadir swap's folder inside staging/ and kept/.
SWAP_FOLDER = "datadir"
STOP_WHAT = "stop MySQL through its {kind} service"


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

    @property
    def kept_datadir(self) -> str:
        """Where the whole-datadir swap keeps the target's own datadir."""
        return join(self.kept, SWAP_FOLDER)

    @property
    def staged_datadir(self) -> str:
        """Where the whole-datadir swap stages the backup's datadir."""
        return join(self.staging, SWAP_FOLDER)


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


def check_space(
    ctx: Context,
    result: Result,
    layout: Layout,
    *,
    staged: Sequence[str] = (),
    moved_aside: Sequence[str] = (),
    copied_aside: Sequence[str] = (),
    dump_bytes: int = 0,
) -> None:
    """Refuse before the first change when the datadir's filesystem (or the run's folder's) lacks the room.

    staged: backup folders copied into the staging folder; moved_aside / copied_aside: the target's
    folders moved / copied into the kept folder (a move copies when the run's folder is on another
    filesystem than the datadir); dump_bytes: SQL loaded into the server (about the dump's size).
    """
    beside = layout.work.startswith(layout.datadir.rstrip("/") + ".")  # same filesystem: moves are renames
    size = disk_space.folder_bytes(ctx.backup, staged) if staged and ctx.backup is not None else 0
    kept = disk_space.folder_bytes(ctx.target, [*copied_aside, *([] if beside else moved_aside)])
    needs = [
        Need(layout.staging, size, "the staged copies of the backup's databases"),
        Need(layout.kept, kept, "the target's own databases kept as safety copies"),
        Need(layout.datadir, dump_bytes, "the SQL dumps loaded (about their size)"),
    ]
    if not beside:
        needs.append(Need(layout.datadir, size, "the staged copies moved into the datadir (another filesystem)"))
    disk_space.check(ctx, result, needs, step_fix=f"run {result.step} again")


# --- changes, through the runner ------------------------------------------------------------------


def make_dir(ctx: Context, path: str) -> None:
    """mkdir -p, mode 0700 (the run's folders hold copies of the databases).

    A folder that is there already, or that this step made (or, in a dry run, planned) already, is left
    as it is without a journaled command: one check instead of the command and its two journal records
    (five round trips over SSH); the dry run plans exactly the commands applying runs.
    """
    argv = ("mkdir", "-p", "-m", "700", "--", ctx.target.path(path))
    if ctx.executor.planned(lambda op: isinstance(op, RunCommand) and op.argv == argv) or ctx.target.is_dir(path):
        return
    ctx.runner.run(list(argv), mutates=True, timeout=60)


def upgrade(ctx: Context, what: str, login: Login | None) -> None:
    """Plan or run mariadb-upgrade --force (tables from an older server) as one procedure: its option
    file with the login is written and removed inside it. login None: a dry run that cannot know it
    yet (it depends on the grants the restore brings back)."""

    def run() -> None:
        if login is None:
            raise PreconditionFailed("mariadb-upgrade", "no admin login is known", "run mysql_maintainer first")
        with dumps.defaults_file(ctx.target, login, str(ctx.mysql.socket)) as cnf:
            argv = dumps.client_argv(ctx.target, cnf, "--force", program="mariadb-upgrade")
            ctx.runner.run(argv, mutates=True, timeout=3600)

    ctx.do(what, run)


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


def stop_server(ctx: Context) -> None:
    """Plan or stop MySQL through its service, as one procedure."""
    ctx.do(STOP_WHAT.format(kind=ctx.mysql.kind), ctx.mysql.stop)


def _killed_swap(ctx: Context, run: str, layout: Layout) -> bool | None:
    """Whether the killed run had begun a whole-datadir swap (it had stopped the server: customer_databases
    stops it for nothing else): None if not; else whether the backup's entries had begun to move in (an
    intent of a move out of staging/datadir; the moves out of the live datadir all come before)."""
    step = ctx.current.step if ctx.current is not None else ""
    ops = [r["op"] for r in operation_records(read_journal(ctx), run) if r.get("step") == step]
    stop = STOP_WHAT.split("{", 1)[0]
    if not any(op.get("kind") == "procedure" and str(op.get("what", "")).startswith(stop) for op in ops):
        return None
    staged = ctx.target.path(layout.staged_datadir) + "/"
    return any((op.get("argv") or [])[:3] == ["mv", "-T", "--"] and op["argv"][3].startswith(staged) for op in ops)


def put_own_datadir_back(ctx: Context, layout: Layout, *, moved_in: bool) -> None:
    """Undo a whole-datadir swap (failed or killed) and start MySQL on the target's own datadir again.

    moved_in: the backup's entries had begun to move in: whatever is in the datadir now (with what a
    failed start wrote) goes to failed/; else the datadir holds the target's own entries not moved yet.
    """
    try:
        ctx.mysql.stop()  # it may run on the backup's files, or without grant tables
    except (PreconditionFailed, CommandFailed):
        pass  # it was down already
    if moved_in:
        for name in ctx.target.listdir(layout.datadir) or []:
            move(ctx, join(layout.datadir, name), join(layout.failed, name))
    for name in ctx.target.listdir(layout.kept_datadir) or []:
        move(ctx, join(layout.kept_datadir, name), join(layout.datadir, name))
    ctx.mysql.start()


def _undo_killed_swap(ctx: Context, result: Result, layout: Layout, run: str, *, moved_in: bool) -> None:
    """Put the target's own datadir back from kept/datadir (the backup's entries already in the datadir go
    to failed/), remove the staged copy, start MySQL on it: the step then decides afresh."""
    own = layout.kept_datadir
    result.change(
        f"undo the whole-datadir swap run {run} (killed) left half done: "
        + (f"move the backup's entries out of {layout.datadir} to {layout.failed}, " if moved_in else "")
        + f"put the target's own datadir back from {own}, remove {layout.staging}, start MySQL"
    )
    if not ctx.apply:
        return
    put_own_datadir_back(ctx, layout, moved_in=moved_in)
    remove_tree(ctx, layout.staging)
    remove_if_empty(ctx, own, layout.kept, layout.work)
    result.note(f"Run {run} was killed inside the whole-datadir swap; the target's own datadir is back in place.")


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


def undo_killed(ctx: Context, result: Result, live: str, purpose: str, run: str, *, replace_live: bool) -> None:
    """Undo what run (killed) left in its folder `<datadir>.<purpose>-<run>` (or its twin in the state dir).

    `kept/` holds the target's own folders, moved aside. With replace_live (mysql_restore: its swap
    must be whole) they all go back, and what the killed run had placed instead goes, with its copies
    in `staging/`: the step then runs afresh from the target's own state. Without it (customer_databases:
    each database is placed whole or not at all) only a kept folder whose place is empty goes back, and
    the staged copies go; databases already placed stay, their kept originals beside them.
    """
    candidates = [f"{live.rstrip('/')}.{purpose}-{run}", ctx.logical_path(f"{ctx.state_dir}/mysql.{purpose}-{run}")]
    work = next((c for c in candidates if ctx.target.is_dir(c)), None)
    if work is None:
        return
    layout = Layout(live, work)
    swap = None if replace_live else _killed_swap(ctx, run, layout)
    if swap is not None:
        _undo_killed_swap(ctx, result, layout, run, moved_in=swap)
        return
    kept = sorted(ctx.target.listdir(layout.kept) or [])
    back = [n for n in kept if replace_live or not ctx.target.exists(join(live, n))]
    result.change(
        f"undo what run {run} (killed) left half done: "
        + (f"put the target's own {', '.join(back)} back from {layout.kept}, " if back else "")
        + f"remove its copies of the backup in {layout.staging}"
    )
    if not ctx.apply:
        return
    if replace_live and back:
        ctx.mysql.stop()
    for name in back:
        here = join(live, name)
        if ctx.target.exists(here):  # the backup's copy the killed run placed (or a dump loaded on top)
            move(ctx, here, join(layout.failed, name))
        move(ctx, join(layout.kept, name), here)
    remove_tree(ctx, work if replace_live else layout.staging)
    remove_if_empty(ctx, layout.kept, work)
    if replace_live and not ctx.mysql.status():
        ctx.mysql.start()
    result.note(f"Run {run} was killed in this step; what it had begun was undone before the step ran again.")
