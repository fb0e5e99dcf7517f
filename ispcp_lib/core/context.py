"""Context: everything one recovery run knows about where it works and how it may act."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ispcp_lib.core import fileops
from ispcp_lib.core.connection import ChrootConnection, Connection, LocalConnection, RootedView, SshConnection
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.operations import Executor, KeepCopy, Procedure, RemovePath, RunSql, WriteFile, WriteState
from ispcp_lib.core.params import Param, settings
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import REGISTRY, SecretRegistry

if TYPE_CHECKING:
    from ispcp_lib.core.run_lock import RunLock
    from ispcp_lib.mysql.service import MysqlService

DEFAULT_STATE_DIR = "/var/lib/ispcp-recovery"
# Safety copy $1 to $2: $2's folder made 0700 when missing (five octal digits: GNU chmod keeps an
# inherited setgid bit unless the mode has a leading 0), then cp -a.
KEEP_SCRIPT = 'd=${2%/*}; { [ -d "$d" ] || { mkdir -p -- "$d" && chmod 00700 "$d"; }; } && cp -a -- "$1" "$2"'
T = TypeVar("T")


class InteractiveGate(Protocol):
    """What core.action needs of the JupyterLab session: it runs each step the operator's way."""

    def run_step(self, run_step: Callable[..., Result], ctx: Context, name: str, mutating: bool, kw: dict) -> Any: ...

    def progress_widget(
        self, ctx: Context, total: int | None, label: str, line: Callable[..., str], planned: bool
    ) -> Callable[[int, str], None]: ...


def new_run_id() -> str:
    """Sortable by time and distinct even for two runs started in the same second."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()


@dataclass
class Context:
    target_root: Path
    backup_root: Path | None
    state_dir: Path
    run_id: str
    # How the target is reached; None: this machine, the tree under target_root (the sandbox).
    target: Connection = None  # type: ignore[assignment]
    # The old server's files at their original paths (on the controller or on the target).
    backup: RootedView | None = None
    # Where state_dir lives: the target for chroot and ssh, this machine for local.
    state: Connection = None  # type: ignore[assignment]
    # The built-in sandbox world (said explicitly by the session, never guessed from target_root):
    # its services are private instances started by the sandbox, not the system's own.
    sandbox: bool = False
    # Set in a live JupyterLab kernel (ispcp_lib.runbook.interactive): it gates every step behind
    # an Apply button. None headless.
    interactive_session: InteractiveGate | None = None
    executor: Executor = field(init=False, repr=False)
    # The target's recovery lock, held from open_run to the summary (ispcp_lib.core.run_lock).
    lock: RunLock | None = None
    default_apply: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    secrets: SecretRegistry = field(default=REGISTRY)
    runner: Runner = field(default_factory=Runner)
    mysql: MysqlService | None = None
    resume: bool = True
    steps: list[str] | None = None  # None: every step
    force_steps: set[str] = field(default_factory=set)
    apply_steps: dict[str, bool] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    current: Result | None = None
    progress: Callable[[str], None] | None = None
    _state_dir_made: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = LocalConnection(self.target_root)
        if self.state is None:
            self.state = LocalConnection("/") if self.target.kind == "local" else self.target
        if self.backup is None and self.backup_root is not None:
            self.backup = RootedView(LocalConnection("/"), str(Path(self.backup_root).resolve()))
        self.runner.connection = self.target
        self.executor = Executor(self)
        self.runner.executor = self.executor

    # -- where things are ------------------------------------------------------------------
    @property
    def apply(self) -> bool:
        """Whether the running action may change the target (a per-step override can say no)."""
        return self.current.apply if self.current is not None else self.default_apply

    def apply_for(self, step: str) -> bool:
        return self.default_apply and self.apply_steps.get(step, True)

    @property
    def backup_dir(self) -> Path:
        return self.state_dir / "backups" / self.run_id

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.jsonl"

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def step_params(self, spec: Sequence[Param]) -> Any:
        """A step's parameters (spec: its PARAMETERS) as a frozen dataclass: validated, defaults filled in."""
        return settings(spec, self.params)

    # -- the state dir ---------------------------------------------------------------------
    def ensure_state_dir(self) -> None:
        """Make the state dir (0700) once per run, not before every record: over SSH each check is a
        round trip, and the journal alone writes two records per operation."""
        if not self._state_dir_made:
            self.state.mkdir(str(self.state_dir), mode=0o700)
            self._state_dir_made = True

    def journal(self, record: dict[str, Any]) -> None:
        """Append one record to the journal, redacted (values first, then the line as a whole)."""
        # ensure_ascii=False keeps any missed secret verbatim for the second pass (JSON escaping
        # would hide it from a plain string match).
        line = self.secrets.redact(json.dumps(self.secrets.redact_obj(record), default=str, ensure_ascii=False))
        self.ensure_state_dir()
        try:
            self.state.append(str(self.journal_path), line + "\n", mode=0o600)
        except (OSError, CommandFailed):
            if self.state.is_dir(str(self.state_dir)):
                raise  # not the folder: a full disk, a lost connection (a second append could tear a line)
            self._state_dir_made = False  # it went away during the run: make it again, once
            self.ensure_state_dir()
            self.state.append(str(self.journal_path), line + "\n", mode=0o600)

    # -- acting ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A plain progress line (headless runs print these instead of widgets)."""
        line = f"[{dt.datetime.now():%H:%M:%S}] {self.secrets.redact(message)}"
        if self.progress is not None:
            self.progress(line)
        else:
            print(line, file=sys.stdout, flush=True)

    def keep(self, path: str | Path, dest: str | None = None, *, exists: bool = False) -> str | None:
        """Safety-copy a target path before it is replaced (on the machine that holds the state dir).

        dest: where the copy goes (default: this run's backups folder, one folder per step); a copy
        already there is never overwritten: it holds the oldest state.

        Returns where the copy is, or None when there was nothing to keep (or in a dry run, which
        plans the copy and keeps nothing: it changes nothing either). exists=True: the caller has just
        read the path (one round trip less over SSH).
        """
        logical = self.logical_path(path)
        if not exists and not self.target.exists(logical):
            return None
        # One folder per step: each step's copy holds the state that step replaced, even when an
        # earlier step of the same run changed the file already.
        step = self.current.step if self.current is not None else "outside-steps"
        dest = dest or f"{self.backup_dir}/{step}{logical}"
        # A copy of this run holds the oldest state already (made earlier, or planned by this dry run).
        planned = self.executor.planned(lambda op: isinstance(op, KeepCopy) and op.dest == dest)
        if not planned and not self.state.exists(dest):

            def copy() -> bool:
                # One command for the folder (0700: the copies hold secrets) and the copy: one round trip.
                argv = ["sh", "-c", KEEP_SCRIPT, "sh", self.target.path(logical), dest]
                self.state.run(argv, check=True, timeout=3600)
                return True

            if not self.executor.perform(KeepCopy(f"keep a copy of {logical}", logical, dest), copy, announce=False):
                return None
        if self.current is not None and dest not in self.current.backups:
            self.current.backups.append(dest)
        return dest

    def write_file(
        self,
        path: str | Path,
        new: str | bytes,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        what: str | None = None,
        show_diff: bool = True,
        keep: bool = True,
    ) -> bool:
        """Plan or perform one file write on the target: diff, safety copy, atomic replace.

        path is the target's own path ("/etc/ispcp/ispcp.conf"). True if anything changes.
        keep=False: no safety copy (a file of the recovery's own that holds a password: a copy would
        leave it on disk); show_diff=False for the same reason.
        """
        logical = self.logical_path(path)
        old_bytes = self.target.read_bytes(logical)
        new_bytes = new.encode("utf-8") if isinstance(new, str) else new
        if old_bytes == new_bytes and not self._meta_differs(logical, mode, uid, gid):
            return False
        result = self.current
        if result is not None and show_diff and old_bytes != new_bytes:
            old_text = (old_bytes or b"").decode("utf-8", "replace")
            diff = fileops.unified_diff(old_text, new_bytes.decode("utf-8", "replace"), logical)
            result.diffs.append(Diff(logical, diff))
        op = WriteFile(what=what or f"write {logical}", path=logical, data=new_bytes, mode=mode, uid=uid, gid=gid)

        def write() -> None:
            if old_bytes is None:  # a file that was read has its folder
                self.target.mkdir(str(Path(logical).parent))
            self.target.write_atomic(logical, new_bytes, mode, uid, gid)

        if keep:  # journaled before the write's intent: a resumed run sees the copy first
            # A file just read exists; an unreadable path may still (a dangling symlink): keep looks.
            self.keep(logical, exists=old_bytes is not None)
        self.executor.perform(op, write)
        return True

    def sql(
        self,
        what: str,
        statements: Sequence[tuple[str, Sequence[Any] | None]],
        *,
        cursor: Any = None,
        connect: Callable[[], AbstractContextManager[Any]] | None = None,
        announce: bool = True,
    ) -> int | None:
        """Plan or send changing SQL statements ((sql, args) pairs from the dialect) in one session.

        On cursor when given, else on a connection opened by connect() only when applying (a dry run
        needs no server). Returns the rows affected, None in a dry run.
        """
        if (cursor is None) == (connect is None):
            raise TypeError("give exactly one of cursor and connect")
        op = RunSql(what=what, statements=tuple(sql for sql, _ in statements), args=tuple(a for _, a in statements))

        def send(cur: Any) -> int:
            return sum(max(cur.execute(sql, args or None), 0) for sql, args in statements)

        def act() -> int:
            if cursor is not None:
                return send(cursor)
            assert connect is not None
            with connect() as conn, conn.cursor() as cur:
                return send(cur)

        return self.executor.perform(op, act, announce=announce, outcome=lambda n: {"rows": n})

    def do(self, what: str, act: Callable[[], T], *, announce: bool = True) -> T | None:
        """Plan or perform a procedure (several commands and statements that belong together) as one
        operation; its value when applied, None in a dry run. announce=False: the caller shows the
        procedure's parts as change lines of their own (e.g. one per account file it writes)."""
        return self.executor.perform(Procedure(what), act, announce=announce)

    def save_state(self, path: str, data: str | bytes, *, what: str | None = None, announce: bool = False) -> None:
        """Write a file of the tool's own in the state dir (0600, the dir 0700); a dry run writes nothing.

        announce: show `what` as one of the step's changes (when the record is what the step is for).
        """
        raw = data.encode("utf-8") if isinstance(data, str) else data

        def write() -> None:
            self.ensure_state_dir()
            self.state.mkdir(str(Path(path).parent), mode=0o700)
            self.state.write_atomic(path, raw, 0o600)

        self.executor.perform(WriteState(what or f"record {path}", path, raw), write, announce=announce)

    def remove(self, path: str, *, what: str, tree: bool = False, state: bool = False) -> None:
        """Plan or remove a target path (state=True: a file of the tool's own in the state dir).

        No safety copy: callers remove what the recovery itself made (staged copies, its own records).
        """
        conn = self.state if state else self.target
        path = path if state else self.logical_path(path)
        op = RemovePath(what=what, path=path, where="state" if state else "target")
        self.executor.perform(op, lambda: conn.remove(path, tree=tree), announce=not state)

    def precondition(self, item: str, problem: str, fix: str, *, dry_run: str = "") -> None:
        """A check the step needs before it changes anything has failed: applying stops here
        (PreconditionFailed, nothing written yet); a dry run warns and goes on planning.

        dry_run: what the dry run does instead (e.g. "planned with the old values").
        """
        if self.apply:
            raise PreconditionFailed(item, problem, fix)
        if self.current is not None:
            self.current.blocked.append(item)  # JupyterLab offers no Apply button for a step that would stop
            instead = f"; {dry_run}" if dry_run else ""
            stop = "Applying stops here, before anything is written"
            self.current.warn(f"{item}: {problem}{instead}. {stop}. Fix: {fix}")

    def backup_argv_path(self, path: str) -> str:
        """A backup path as a command on the *target* sees it (for a copy from the backup to the target).

        The backup is on the target (backup_location: target) or on this machine; in the second case
        only the local and chroot connections can reach it by path: SSH copies go through
        `copy_from_backup`, which sends the data over the connection.
        """
        if self.backup is None:
            raise InputError("backup_root", "is not set", "set the backup_root parameter")
        if self.backup.inner is self.target or self.target.kind == "local":
            return self.backup.path(path)
        raise InputError(
            "backup_location",
            f"the backup is on this machine and the target is reached by {self.target.kind}",
            "copy through copy_from_backup, or place the backup on the target (backup_location: target)",
        )

    def copy_from_backup(self, src: str, dst: str, *, what: str, extra: Sequence[str] = ()) -> None:
        """Plan or run one copy from the backup (a file or a tree, src/ semantics of rsync) to the target.

        rsync -a --numeric-ids on whichever machine can see both sides: the target when the backup is
        there, this machine otherwise (over the SSH connection's own master, or into the chroot's tree).
        """
        if self.backup is None:
            raise InputError("backup_root", "is not set", "set the backup_root parameter")
        rsync = ["rsync", "-aHAX", "--numeric-ids", *extra]
        if self.current is not None:
            self.current.change(what)
        if self.backup.inner is self.target or self.target.kind == "local":
            self.runner.run([*rsync, self.backup.path(src), self.target.path(dst)], mutates=True, timeout=86400)
        elif isinstance(self.target, ChrootConnection):
            host_dst = str(self.target.root) + dst
            self.controller_runner().run([*rsync, self.backup.path(src), host_dst], mutates=True, timeout=86400)
        else:
            assert isinstance(self.target, SshConnection)
            remote = f"{self.target.target.host}:{dst}"
            argv = [*self.target.target.argv_prefix, *rsync, "-e", self.target.rsync_remote_shell()]
            self.controller_runner().run([*argv, self.backup.path(src), remote], mutates=True, timeout=86400)

    def controller_runner(self) -> Runner:
        """A runner on this machine that records into the running step, for controller-side commands."""
        runner = Runner(apply=self.runner.apply, connection=LocalConnection("/"))
        runner.sink = self.runner.sink
        runner.executor = self.executor
        return runner

    def logical_path(self, path: str | Path) -> str:
        """The target's own path: a path under the local sandbox's target_root loses that prefix."""
        text = str(path)
        root = str(self.target_root).rstrip("/")
        if self.target.kind == "local" and root and (text == root or text.startswith(root + "/")):
            return text[len(root) :] or "/"
        return text

    def display_path(self, path: str | Path) -> str:
        """The path as the operator knows it on the target (without the sandbox prefix)."""
        return self.logical_path(path)

    def _meta_differs(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> bool:
        st = self.target.stat(path)
        if st is None:
            return True
        return (
            (mode is not None and st.mode != mode)
            or (uid is not None and st.uid != uid)
            or (gid is not None and st.gid != gid)
        )
