"""Copying the user-data trees: cp into a staging directory, rsync, parallel jobs and progress.

Two copy commands, one meaning (rsync's `-aHAX --numeric-ids`: owners as numbers, permissions,
times, hard links, ACLs, extended attributes, symlinks as links, never following them, never
deleting on the target):

* **cp** for a domain that is not on the target yet (cp_argv): `cp -a` copies the same attributes (as
  root the owners are numbers; hard links among what one invocation copies) and costs about two
  thirds of `rsync -a` on many small files; where the copied part holds no POSIX ACL, cp without its
  ACL work costs a third less again. It writes into the tree's staging directory
  `.ispcp-recovery-staging/`, and each domain is then renamed into place with `mv -T -n` after a
  check that nothing has the name yet (move_into_place: an entry that appeared meanwhile is never
  replaced; sh cannot reach renameat2's RENAME_NOREPLACE, and coreutils' mv -n only uses it from 9.x
  on, so on an older server a domain created between the check and the rename, a window of one
  command, would be left in staging and reported, never overwritten). A domain is therefore either
  absent or complete under its real name; an interrupted run leaves its partial copy in staging,
  which the next run completes with rsync before the rename. cp needs both trees on one machine:
  when the backup is on this machine and the target is reached over SSH, new domains go through
  rsync into the staging directory instead.
* **rsync** for what is already there (a domain on the target, a staged copy to resume, loose files at
  the top of the tree), and whenever a bandwidth limit is asked for. Choices, and why:
  - Never `--delete`: a restore adds to the target, it never removes anything there.
  - Resumable: rsync writes each file under a temporary dot-name in its directory and renames it when
    it is complete, so a half-copied file never appears under its real name (in a Maildir that would
    be a truncated message the mail server serves); an interrupted rsync removes its temporary file
    (a killed one may leave it: is_rsync_temp() names them; the step removes those the backup does
    not hold after copying the domain, and no verification counts them).
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

Every command runs through a connection (Route says which: the target when it sees the backup, this
machine otherwise). Jobs run side by side (run_jobs, WORKERS at a time): copying many small files is bound by system
calls on one core, so two copies take about half the wall time. The caller's work function runs in a
worker thread; the calling thread keeps the progress going and stops every copy process when it is
interrupted. Copy processes run in their own session and are stopped by process group, never by name.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.result import CommandRecord
from ispcp_lib.system.tree_scan import local_path

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
# rsync's temporary names: ".<name>.XXXXXX" beside the file, the .~tmp~ folder of --delay-updates and
# the folder of --partial-dir (.rsync-partial, the name rsync's manual suggests for RSYNC_PARTIAL_DIR).
_RSYNC_TEMP = re.compile(rb"^\..+\.[A-Za-z0-9]{6}$")
_RSYNC_TEMP_DIRS = frozenset({b".~tmp~", b".rsync-partial"})
# $1 a folder; the names (NUL-separated, "./"-prefixed) on stdin are removed with what they hold.
_REMOVE = r"""
cd "$1" || exit 1
xargs -0 -r -n 2000 rm -rf --
"""
# $1 where the copies wait, $2 where they belong, then the names; prints each name it could not move.
_MOVE = r"""
from=$1; into=$2; shift 2
for name in "$@"; do
  if [ -e "$into/$name" ] || [ -L "$into/$name" ]; then printf '%s\0' "$name"; continue; fi
  mv -T -n -- "$from/$name" "$into/$name" 2>/dev/null
  if [ -e "$from/$name" ] || [ -L "$from/$name" ]; then printf '%s\0' "$name"; fi
done
"""
# $1 a path: the nearest existing folder at or above it, its device, and its filesystem's block size,
# free bytes for non-root, free and total inodes.
_SPACE = r"""
p=$1
while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname -- "$p"); done
printf '%s\0' "$p"
stat -c %d -- "$p" && stat -f -c '%S %a %d %c' -- "$p"
"""


def is_rsync_temp(rel: bytes) -> bool:
    """A name rsync writes while it copies a file (left behind only when rsync was killed)."""
    parts = rel.split(b"/")
    return bool(_RSYNC_TEMP_DIRS.intersection(parts)) or bool(_RSYNC_TEMP.match(parts[-1]))


def remove_leftovers(conn: Connection, base: str, rels: Sequence[bytes]) -> None:
    """Remove base/<rel> for each rel (a killed rsync's temporary files and folders) on that side."""
    if not rels:
        return
    argv = ["sh", "-c", _REMOVE, "sh", conn.path(base)]
    done = conn.run(argv, input=b"\0".join(b"./" + r for r in rels) + b"\0", timeout=86400)
    if done.rc != 0:
        raise CommandFailed(argv, done.rc, done.err)


@dataclass
class Route:
    """Where the copy commands run and how they name both sides.

    conn runs them: the target when it sees the backup (backup_location: target, or the local
    sandbox), else this machine (the backup is here: into the chroot's tree, or over SSH).
    """

    conn: Connection
    src: Callable[[str], str]  # a backup path as the commands see it
    dest: Callable[[str], str]  # a target path as the commands see it
    rsync_options: list[str] = field(default_factory=list)  # -e "ssh ..." for a remote target
    cp: bool = True  # both sides on one machine: cp can copy, else rsync does
    prefix: list[str] = field(default_factory=list)  # e.g. nsenter into the network that reaches the server
    # rsync before 3.1 (Lenny's 3.0.3, Squeeze's 3.0.7) on the receiving side knows neither
    # --info=progress2 nor --chown: without them there is no running byte count, and the caller
    # gives the mail tree its owner after the copy (it lists and checks every entry anyway).
    legacy: bool = False

    def rsync(self, argv: list[str]) -> list[str]:
        if self.legacy:
            forced = any(a.startswith("--chown=") for a in argv)
            argv = [a for a in argv if a != "--info=progress2" and not a.startswith("--chown=")]
            if forced:  # the owner comes after the copy: rsync must neither set the backup's nor compare it
                flags = argv[1].replace("-a", "-rlptgoD").replace("g", "").replace("o", "")
                argv = [argv[0], flags, *argv[2:]]
        return [*self.prefix, argv[0], *self.rsync_options, *argv[1:]]


def rsync_version(conn: Connection) -> tuple[int, int]:
    """(major, minor) of the rsync that conn runs; (0, 0) when there is none."""
    done = conn.run(["rsync", "--version"], timeout=60)
    found = re.search(rb"version (\d+)\.(\d+)", done.stdout)
    return (int(found[1]), int(found[2])) if done.rc == 0 and found else (0, 0)


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


@dataclass
class Room:
    """The filesystem that will hold a path on the target."""

    probe: str  # the nearest existing folder (a target path)
    device: int
    block: int
    free: int  # bytes available to non-root
    inodes_free: int
    inodes_total: int  # 0: the filesystem has no fixed inode count


def room(conn: Connection, path: str) -> Room:
    """Read-only: where path's filesystem stands (df's numbers, from stat -f on the target)."""
    done = conn.run(["sh", "-c", _SPACE, "sh", conn.path(path)], timeout=60)
    probe, numbers = done.stdout.split(b"\0", 1)
    device, block, free, inodes_free, inodes_total = (int(x) for x in numbers.split())
    shown = os.fsdecode(probe)
    root = conn.path("/").rstrip("/")
    logical = shown[len(root) :] or "/" if root and shown.startswith(root) else shown
    return Room(logical, device, block, block * free, inodes_free, inodes_total)


def probe_capabilities(conn: Connection, dest: str) -> Capabilities:
    """Can the filesystem that will hold dest store extended attributes and POSIX ACLs? Read-only.

    Probed where the target is this machine; a remote target is taken to store both (rsync reports it
    if not): the server has no tool for the probe that the tool may rely on.
    """
    caps = Capabilities(True, True)
    here = local_path(conn, room(conn, dest).probe)
    if here is None:
        return caps
    try:
        os.listxattr(here, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        caps.xattrs = False
        caps.notes.append(f"the filesystem of {dest} stores no extended attributes: copying without them")
    try:
        os.getxattr(here, "system.posix_acl_access", follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            caps.acls = False
            caps.notes.append(
                f"the filesystem of {dest} stores no POSIX ACLs (mounted noacl?): copying "
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


def dir_attrs_argv(
    src: str, dest: str, *, dry_run: bool, caps: Capabilities, owner: tuple[int, int] | None = None
) -> list[str]:
    """rsync of a folder's own owner, mode, time, ACLs and xattrs (nothing inside it): `-d` with every
    entry excluded transfers only "." (what rsync -a of `src/ dest/` sets on dest, nothing removed)."""
    argv = rsync_argv([src.rstrip("/") + "/"], dest.rstrip("/") + "/", dry_run=dry_run, caps=caps, owner=owner)
    argv[1] = argv[1].replace("-a", "-dlptgoD")
    return [*argv[: argv.index("--")], "--exclude=*", *argv[argv.index("--") :]]


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
    conn: Connection,
    argv: list[str],
    *,
    label: str,
    sink: list[CommandRecord] | None = None,
    log: Callable[[str], None] | None = None,
    on_progress: Callable[[RsyncProgress], None] | None = None,
    log_every_s: float = 5.0,
    on_start: Callable[[int], None] | None = None,
) -> RsyncRun:
    """Run rsync through conn, stream its progress, and record it; CommandFailed on a failed copy.

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
        proc = conn.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
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
    conn: Connection,
    argv: list[str],
    *,
    tracker: Tracker,
    tree: str,
    names: list[str],
    sink: list[CommandRecord] | None = None,
    hint: str = RESUME_HINT,
) -> CommandRecord:
    """Run one cp through conn (its own session, so it can be stopped as a group); CommandFailed unless it
    succeeds.

    umask 0: without --preserve=mode, cp gives new entries the source's permission bits minus the umask.
    sh execs cp, so the process started here is cp itself on a local target (its progress is readable).
    """
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = conn.popen(
            ["sh", "-c", 'umask 0 && exec "$@"', "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
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


def move_into_place(conn: Connection, staging: str, dest: str, names: Sequence[bytes]) -> list[bytes]:
    """Rename staging/<name> to dest/<name> for each name unless dest/<name> exists (never replaced).

    One command for all names; returns the names that stayed in staging.
    """
    if not names:
        return []
    argv = ["sh", "-c", _MOVE, "sh", conn.path(staging), conn.path(dest), *(os.fsdecode(n) for n in names)]
    done = conn.run(argv, timeout=600)
    if done.rc != 0:
        raise CommandFailed(argv[:5], done.rc, done.err)
    return [n for n in done.stdout.split(b"\0") if n]


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


def fs_paths(base: str, names: Iterable[bytes]) -> list[str]:
    """base/name for raw names, as str for argv (os.fsdecode: odd bytes survive the round trip)."""
    root = os.fsencode(base)
    return [os.fsdecode(os.path.join(root, n)) for n in names]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
