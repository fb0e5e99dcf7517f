"""Copying the user-data trees: cp into a staging directory, rsync, parallel jobs and progress.

Two copy commands, one meaning (rsync's `-aHAX --numeric-ids`: owners as numbers, permissions,
times, hard links, ACLs, extended attributes, symlinks as links, never following them, never
deleting on the target):

* **cp** for a domain that is not on the target yet (cp_argv): `cp -a` copies the same attributes (as
  root the owners are numbers; hard links among what one invocation copies) and costs about two
  thirds of `rsync -a` on many small files; where the copied part holds no POSIX ACL, cp without its
  ACL work costs a third less again. It writes into the tree's staging directory
  `.ispcp-recovery-staging/`, and each domain is then renamed into place (renameat2
  RENAME_NOREPLACE: an entry that appeared meanwhile is never replaced). A domain is therefore either
  absent or complete under its real name; an interrupted run leaves its partial copy in staging,
  which the next run completes with rsync before the rename.
* **rsync** for what is already there (a domain on the target, a staged copy to resume, loose files at
  the top of the tree), and whenever a bandwidth limit is asked for. Choices, and why:
  - Never `--delete`: a restore adds to the target, it never removes anything there.
  - Resumable: rsync writes each file under a temporary dot-name in its directory and renames it when
    it is complete, so a half-copied file never appears under its real name (in a Maildir that would
    be a truncated message the mail server serves); an interrupted rsync removes its temporary file.
    The next run skips complete files (same size and time) and copies the interrupted one again from
    the start, which is what a local rsync does anyway (whole-file mode: no deltas on one machine).
    No `--partial-dir`: it keeps the piece for a delta that local copies never compute, and costs a
    lookup per file (a no-op run over 100,000 files: 1.06 s instead of 0.43 s). `--partial` would
    leave a truncated file under the real name, `--append-verify` trusts a shorter file as a prefix.
  - `--chown` gives the mail tree its mailbox owner while copying, with no second pass.
  - `-A`/`-X` only when the filesystem stores them (probe_capabilities) and the copied part of the
    backup holds any (the step probes; without them a no-op rsync over many files takes ~40% less).
  - `--info=progress2` (one running total) feeds progress; `--itemize-changes` lists what changed,
    and with `--dry-run` the same listing is the plan.

Jobs run side by side (run_jobs, WORKERS at a time): copying many small files is bound by system
calls on one core, so two copies take about half the wall time. The caller's work function runs in a
worker thread; the calling thread keeps the progress going and stops every copy process when it is
interrupted. Copy processes run in their own session and are stopped by process group, never by name.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.result import CommandRecord

PARTIAL_DIR = ".rsync-partial"  # where earlier versions of this step let rsync keep interrupted files
STAGING_DIR = ".ispcp-recovery-staging"
RC_VANISHED = 24  # some source files vanished during the transfer
HOOK_EVERY_S = 0.1  # progress passed to a hook at most this often (a bar needs no more)
WORKERS = 2 if (os.cpu_count() or 1) > 1 else 1

_PROGRESS = re.compile(
    rb"^\s*(?P<bytes>[\d,]+)\s+(?P<pct>\d+)%\s+(?P<rate>\S+)\s+(?P<eta>\S+)"
    rb"(?:\s+\(xfr#(?P<xfr>\d+),\s+(?:ir|to)-chk=(?P<left>\d+)/(?P<total>\d+)\))?"
)
# --itemize-changes: YXcstpoguax NAME (update type, file type, nine attribute letters).
_OPS = frozenset(bytes([c]) for c in b"<>ch.*")
_TYPES = frozenset(bytes([c]) for c in b"fdLDS")
_STAT = re.compile(rb"^(?P<key>[A-Za-z][A-Za-z ]+): (?P<num>[\d,]+)")


@dataclass
class RsyncProgress:
    """One progress2 update of a running rsync."""

    label: str
    pid: int
    bytes_done: int
    percent: int  # rsync's own estimate; it grows its file list while copying
    rate: str
    eta: str
    files_done: int
    elapsed: float


@dataclass
class Running:
    """A copy process running now."""

    pid: int
    method: str  # "cp" or "rsync"
    tree: str
    names: list[str]  # the top-level entries (domains) it copies, escaped for display
    bytes_done: int = 0


@dataclass
class Progress:
    """Where the whole copy stands; passed to a progress hook (a live bar) every HOOK_EVERY_S."""

    label: str
    bytes_done: int  # finished jobs exactly, running copies as far as they got
    bytes_total: int
    files_done: int  # files of the finished jobs
    files_total: int
    elapsed: float
    running: list[Running] = field(default_factory=list)

    @property
    def percent(self) -> int:
        return min(100, 100 * self.bytes_done // self.bytes_total) if self.bytes_total else 100

    @property
    def pid(self) -> int:
        """One running copy process (the first), 0 when none runs."""
        return self.running[0].pid if self.running else 0

    def line(self) -> str:
        rate = human(self.bytes_done / self.elapsed) + "/s" if self.elapsed > 0 else "-"
        methods = sorted({r.method for r in self.running})
        return (
            f"{self.label}: {human(self.bytes_done)} of {human(self.bytes_total)} ({self.percent}%), "
            f"{self.files_done} of {self.files_total} files in finished jobs, {rate}; "
            f"{len(self.running)} copies running{' (' + ', '.join(methods) + ')' if methods else ''}"
        )


ProgressHook = Callable[[Progress], None]


@dataclass
class Capabilities:
    acls: bool
    xattrs: bool
    notes: list[str] = field(default_factory=list)


def existing_ancestor(path: Path) -> Path:
    """path itself if it exists, else its nearest existing parent (where a probe can look)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_capabilities(dest: Path) -> Capabilities:
    """Can the filesystem that will hold dest store extended attributes and POSIX ACLs? Read-only."""
    probe = existing_ancestor(dest)
    caps = Capabilities(True, True)
    try:
        os.listxattr(probe, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            caps.xattrs = False
            caps.notes.append(f"the filesystem of {probe} stores no extended attributes: copying without them")
        else:
            raise
    try:
        os.getxattr(probe, "system.posix_acl_access", follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            caps.acls = False
            caps.notes.append(
                f"the filesystem of {probe} stores no POSIX ACLs (mounted noacl?): copying "
                "without them, so ACLs of the backup are not kept"
            )
        elif exc.errno != errno.ENODATA:
            raise
    return caps


def rsync_argv(
    sources: Sequence[str],
    dest: str,
    *,
    dry_run: bool,
    caps: Capabilities,
    owner: tuple[int, int] | None = None,
    bwlimit_kbps: int | None = None,
) -> list[str]:
    """The one rsync command line for plan and copy; they differ only in --dry-run."""
    flags = "-aH" + ("A" if caps.acls else "") + ("X" if caps.xattrs else "")
    argv = ["rsync", flags, "--numeric-ids", "--itemize-changes", "--stats", "--info=progress2"]
    if owner is not None:  # set while copying: no second pass over the tree
        argv.append(f"--chown={owner[0]}:{owner[1]}")
    if bwlimit_kbps:
        argv.append(f"--bwlimit={int(bwlimit_kbps)}")
    if dry_run:
        argv.append("--dry-run")
    return [*argv, "--", *sources, dest]


def build_argv(
    src: Path,
    dest: Path,
    *,
    dry_run: bool,
    caps: Capabilities,
    owner: tuple[int, int] | None = None,
    bwlimit_kbps: int | None = None,
) -> list[str]:
    """rsync of a whole tree: trailing slashes copy src's contents into dest (and dest's own attributes)."""
    return rsync_argv(
        [str(src).rstrip("/") + "/"],
        str(dest).rstrip("/") + "/",
        dry_run=dry_run,
        caps=caps,
        owner=owner,
        bwlimit_kbps=bwlimit_kbps,
    )


def cp_argv(sources: Sequence[str], into: str, *, acls: bool = True, xattrs: bool = True) -> list[str]:
    """cp of whole directories into `into` (which exists), never dereferencing (-d), recursively (-R).

    Where the copied part of the backup holds POSIX ACLs: `cp -a` (--preserve=all: mode with the ACLs,
    owners, times, hard links, xattrs). Where it holds none: --preserve=ownership,timestamps,links
    (and xattr where it holds other attributes). cp then skips its ACL work (a lookup and a write
    per entry: a third of its time on a tree of many small directories); run under umask 0 (run_cp),
    new entries get the backup's permission bits, all but setuid, setgid and sticky, which the caller
    sets afterwards from its listing.
    """
    if acls:
        return ["cp", "-a", "-t", into, "--", *sources]
    return [
        "cp",
        "-dR",
        "--preserve=ownership,timestamps,links" + (",xattr" if xattrs else ""),
        "-t",
        into,
        "--",
        *sources,
    ]


def shortened(argv: Sequence[str], keep: int = 4) -> list[str]:
    """argv for messages: a long list of sources cut down, saying how many were left out."""
    if "--" not in argv:
        return list(argv)
    cut = argv.index("--") + 1
    rest = argv[cut:]
    if len(rest) <= keep + 2:
        return list(argv)
    return [*argv[:cut], *rest[:keep], f"…({len(rest) - keep - 1} more)", rest[-1]]


@dataclass
class Items:
    """What --itemize-changes reported, counted by kind and by domain (first path component)."""

    new_files: int = 0
    new_dirs: int = 0
    new_links: int = 0
    updated_files: int = 0  # content differs
    attributes: int = 0  # only owner, mode, time, ACL or xattrs differ
    hard_links: int = 0
    other: int = 0
    by_domain: dict[str, int] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            self.new_files
            + self.new_dirs
            + self.new_links
            + self.updated_files
            + self.attributes
            + self.hard_links
            + self.other
        )

    def add(self, line: bytes) -> bool:
        # Cheap shape test first: this runs once per file of the tree.
        if len(line) < 13 or line[11:12] != b" " or line[:1] not in _OPS or line[1:2] not in _TYPES:
            return False
        op, kind, attrs = line[:1], line[1:2], line[2:11]
        new = attrs == b"+++++++++"
        if op == b"h":
            self.hard_links += 1
        elif new and kind == b"f":
            self.new_files += 1
        elif new and kind == b"d":
            self.new_dirs += 1
        elif new and kind == b"L":
            self.new_links += 1
        elif op in (b">", b"<") and kind == b"f":
            self.updated_files += 1
        elif op == b"." or (op == b"c" and not new):
            self.attributes += 1
        else:
            self.other += 1
        # rsync escapes newlines and other unprintable bytes in names as \#ooo: one line per item.
        name = line[12:].split(b" -> ", 1)[0].rstrip(b"/")
        head = name.split(b"/", 1)[0].decode("utf-8", "backslashreplace") if b"/" in name or kind == b"d" else ""
        key = head if head and head != "." else "(top)"
        self.by_domain[key] = self.by_domain.get(key, 0) + 1
        if len(self.sample) < 20:
            self.sample.append(line.decode("utf-8", "backslashreplace"))
        return True

    def merge(self, other: Items) -> None:
        for name in ("new_files", "new_dirs", "new_links", "updated_files", "attributes", "hard_links", "other"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, n in other.by_domain.items():
            self.by_domain[key] = self.by_domain.get(key, 0) + n
        self.sample += other.sample[: max(0, 20 - len(self.sample))]

    def describe(self) -> str:
        parts = [
            (self.new_files, "new files"),
            (self.new_dirs, "new directories"),
            (self.new_links, "new symlinks"),
            (self.hard_links, "hard links"),
            (self.updated_files, "changed files"),
            (self.attributes, "owner/mode/time updates"),
            (self.other, "other changes"),
        ]
        return ", ".join(f"{n} {what}" for n, what in parts if n) or "nothing"


@dataclass
class RsyncRun:
    argv: list[str]
    rc: int
    items: Items
    stats: dict[str, int]
    stderr: str
    duration_s: float

    @property
    def bytes_transferred(self) -> int:
        return self.stats.get("Total transferred file size", 0)


RESUME_HINT = (
    "\nThe copy can be resumed: run this step again. Files that were complete are not copied again, "
    "and a domain that cp was copying waits, incomplete, in the tree's staging directory "
    f"{STAGING_DIR}/ (not under its real name) until rsync completes it."
)


def run(
    argv: list[str],
    *,
    label: str,
    sink: list[CommandRecord] | None = None,
    log: Callable[[str], None] | None = None,
    on_progress: Callable[[RsyncProgress], None] | None = None,
    log_every_s: float = 5.0,
    on_start: Callable[[int], None] | None = None,
) -> RsyncRun:
    """Run rsync, stream its progress, and record it; CommandFailed on a failed copy.

    Exit code 24 (source files vanished meanwhile) is accepted: the backup is not expected to change,
    and the result's verification shows any difference. Interrupting (KeyboardInterrupt from the
    notebook's stop button) stops rsync's whole process group, which this call started.
    """
    items = Items()
    stats: dict[str, int] = {}
    started = time.monotonic()
    clock = {"log": started, "hook": 0.0}
    held: list[bytes] = []  # the newest progress line not passed on yet

    def emit(line: bytes, pid: int, now: float) -> None:
        p = _PROGRESS.match(line)
        if p is None:
            return
        prog = RsyncProgress(
            label,
            pid,
            int(p["bytes"].replace(b",", b"")),
            int(p["pct"]),
            p["rate"].decode(),
            p["eta"].decode(),
            int(p["xfr"] or 0),
            now - started,
        )
        if on_progress is not None:
            on_progress(prog)
        if log is not None and now - clock["log"] >= log_every_s:
            clock["log"] = now
            log(
                f"{label}: {human(prog.bytes_done)} copied, {prog.files_done} files, {prog.rate}, "
                f"about {prog.percent}% by rsync's estimate"
            )

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )
        if on_start is not None:
            on_start(proc.pid)
        try:
            assert proc.stdout is not None
            pending = b""
            while chunk := os.read(proc.stdout.fileno(), 1 << 16):
                pending += chunk
                *lines, pending = re.split(rb"[\r\n]", pending)
                for line in lines:
                    if not line or items.add(line):
                        continue
                    if line[:1] == b" ":  # progress2 prints one per file: pass on a few a second
                        now = time.monotonic()
                        held[:] = [line]
                        if now - clock["hook"] >= HOOK_EVERY_S:
                            clock["hook"] = now
                            held.clear()
                            emit(line, proc.pid, now)
                        continue
                    s = _STAT.match(line)
                    if s is not None:
                        stats[s["key"].decode()] = int(s["num"].replace(b",", b""))
            if held:  # the final count, so a bar ends where rsync ended
                emit(held[0], proc.pid, time.monotonic())
            rc = proc.wait()
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
        if rc != 0:
            _reap_group(proc.pid)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    duration = time.monotonic() - started
    summary = f"{items.describe()}; {human(stats.get('Total transferred file size', 0))} of file data"
    if sink is not None:
        shown = "\n".join([summary, *items.sample, *(["…"] if items.total > len(items.sample) else [])])
        sink.append(CommandRecord(list(argv), rc, shown, stderr[-4000:], duration))
    if rc not in (0, RC_VANISHED):
        hint = RESUME_HINT if rc in (20, 30, 35) or rc < 0 else ""
        raise CommandFailed(shortened(argv), rc, stderr + hint)
    if log is not None:
        log(f"{label}: done in {duration:.1f} s: {summary}")
    return RsyncRun(list(argv), rc, items, stats, stderr, duration)


class Tracker:
    """The copy processes running now: for progress, and to stop them all when the step is interrupted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, Running] = {}
        self.stopping = False

    def started(self, pid: int, method: str, tree: str, names: list[str]) -> None:
        with self._lock:
            self._running[pid] = Running(pid, method, tree, names)
        if self.stopping:
            _signal_group(pid, signal.SIGTERM)

    def update(self, pid: int, bytes_done: int) -> None:
        with self._lock:
            if pid in self._running:
                self._running[pid].bytes_done = bytes_done

    def finished(self, pid: int) -> None:
        with self._lock:
            self._running.pop(pid, None)

    def snapshot(self) -> list[Running]:
        """The running copies; a cp's progress is what it has written so far (/proc/PID/io, wchar)."""
        with self._lock:
            running = [Running(r.pid, r.method, r.tree, list(r.names), r.bytes_done) for r in self._running.values()]
        for r in running:
            if r.method == "cp":
                r.bytes_done = _written(r.pid)
        return running

    def stop_all(self) -> None:
        """SIGTERM to the process group of every copy this tracker saw start (their own sessions)."""
        self.stopping = True
        with self._lock:
            pids = list(self._running)
        for pid in pids:
            _signal_group(pid, signal.SIGTERM)


def _written(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io", "rb") as fh:
            for line in fh:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def run_cp(
    argv: list[str],
    *,
    tracker: Tracker,
    tree: str,
    names: list[str],
    sink: list[CommandRecord] | None = None,
    hint: str = RESUME_HINT,
) -> CommandRecord:
    """Run one cp (its own session, so it can be stopped as a group); CommandFailed unless it succeeds.

    umask 0: without --preserve=mode, cp gives new entries the source's permission bits minus the umask.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, umask=0
        )
        tracker.started(proc.pid, "cp", tree, names)
        try:
            rc = proc.wait()
        finally:
            tracker.finished(proc.pid)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    rec = CommandRecord(list(argv), rc, "", stderr[-4000:], time.monotonic() - started)
    if sink is not None:
        sink.append(rec)
    if rc != 0:
        raise CommandFailed(shortened(argv), rc, stderr + hint)
    return rec


J = TypeVar("J")
R = TypeVar("R")


@dataclass
class JobsOutcome(Generic[R]):
    results: list[R]
    failure: BaseException | None  # the first job that failed; the others ran to their end


def run_jobs(
    jobs: Sequence[J],
    work: Callable[[J], R],
    *,
    tracker: Tracker,
    workers: int = WORKERS,
    tick: Callable[[], None] | None = None,
    every_s: float | None = None,
) -> JobsOutcome[R]:
    """Run work(job) for every job, `workers` at a time, calling tick() every every_s (HOOK_EVERY_S) meanwhile.

    After a failed job no new job starts; those already running finish. An interrupt (the notebook's
    stop button) stops every running copy process, waits for the workers and is raised again.
    """
    stop = threading.Event()
    skipped = object()

    def guarded(job: J) -> R | object:
        if stop.is_set():
            return skipped
        try:
            return work(job)
        except BaseException:
            stop.set()
            raise

    if not jobs:
        return JobsOutcome([], None)
    pool = ThreadPoolExecutor(max(1, min(workers, len(jobs))), thread_name_prefix="copy")
    futures = [pool.submit(guarded, job) for job in jobs]
    try:
        pending: set[Future[R | object]] = set(futures)
        while pending:
            _done, pending = wait(pending, timeout=every_s or HOOK_EVERY_S, return_when=FIRST_EXCEPTION)
            if tick is not None:
                tick()
    except BaseException:
        stop.set()
        tracker.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    results: list[R] = []
    failure: BaseException | None = None
    for fut in futures:
        exc = fut.exception()
        if exc is not None:
            failure = failure or exc
        elif (value := fut.result()) is not skipped:
            results.append(value)  # type: ignore[arg-type]
    return JobsOutcome(results, failure)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (AttributeError, OSError):  # a libc without renameat2 (glibc < 2.28)
    _renameat2 = None


def rename_noreplace(src: bytes, dest: bytes) -> None:
    """Rename src to dest unless dest exists (FileExistsError): never replaces what is on the target."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, src, _AT_FDCWD, dest, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: a filesystem without the flag
            raise OSError(err, os.strerror(err), os.fsdecode(dest))
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dest))
    os.rename(src, dest)


def dir_attr_differences(src: Path, dest: Path, owner: tuple[int, int] | None, caps: Capabilities) -> list[str]:
    """How dest (a tree's own directory) differs from src in owner, mode, time and in the extended
    attributes and ACLs src carries that dest's filesystem can store (what rsync -aAX of `src/ dest/`
    would set on it; nothing is removed)."""
    s, d = os.lstat(src), os.lstat(dest)
    want = owner if owner is not None else (s.st_uid, s.st_gid)
    out = []
    if (d.st_uid, d.st_gid) != want:
        out.append(f"owner {d.st_uid}:{d.st_gid} -> {want[0]}:{want[1]}")
    if stat.S_IMODE(d.st_mode) != stat.S_IMODE(s.st_mode):
        out.append(f"mode {stat.S_IMODE(d.st_mode):04o} -> {stat.S_IMODE(s.st_mode):04o}")
    if d.st_mtime_ns != s.st_mtime_ns:
        out.append("modification time")
    wanted, have = _xattrs(src, caps), _xattrs(dest, caps)
    if any(have.get(name) != value for name, value in wanted.items()):
        out.append("extended attributes/ACLs")
    return out


def copy_dir_attrs(src: Path, dest: Path, owner: tuple[int, int] | None, caps: Capabilities) -> None:
    """Give dest src's owner (or `owner`), xattrs and ACLs (none removed), mode, then times (last)."""
    s = os.lstat(src)
    os.chown(dest, *(owner if owner is not None else (s.st_uid, s.st_gid)), follow_symlinks=False)
    for name, value in _xattrs(src, caps).items():
        os.setxattr(dest, name, value, follow_symlinks=False)
    os.chmod(dest, stat.S_IMODE(s.st_mode))
    os.utime(dest, ns=(s.st_atime_ns, s.st_mtime_ns), follow_symlinks=False)


def _xattrs(path: Path, caps: Capabilities) -> dict[str, bytes]:
    """path's ACLs (when caps.acls) and other extended attributes (when caps.xattrs)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    keep = [n for n in names if (caps.acls if n.startswith("system.posix_acl_") else caps.xattrs)]
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in keep}


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the rsync processes this module started (their own session), then reap ours."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def group_members(pgid: int) -> list[int]:
    """Live processes in process group pgid (rsync's helpers share the group of the rsync we started)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def _reap_group(pgid: int, wait_s: float = 5.0) -> None:
    """After a failed or killed rsync, its helper processes exit on their own; stop any that linger."""
    deadline = time.monotonic() + wait_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            _signal_group(pgid, signal.SIGTERM)
            return
        time.sleep(0.1)


def fs_paths(base: Path, names: Iterable[bytes]) -> list[str]:
    """base/name for raw names, as str for argv (os.fsdecode: odd bytes survive the round trip)."""
    root = os.fsencode(base)
    return [os.fsdecode(os.path.join(root, n)) for n in names]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
