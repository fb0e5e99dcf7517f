"""The rsync driver for restoring user data: argv, filesystem probe, progress and the itemized summary.

Choices, and why:
* `-aHAX --numeric-ids`: owners stay the old server's numbers (the names need not exist yet), hard
  links stay links, ACLs and extended attributes come along when the target filesystem has them
  (probe_capabilities; without them the copy goes on and the result warns).
* Never `--delete`: a restore adds to the target, it never removes anything there.
* Resumable with `--partial-dir=.rsync-partial`: an interrupted file waits in that hidden directory
  and only appears under its real name once complete. `--partial` would leave a truncated file under
  the final name (in a Maildir that is a truncated message the mail server would serve), and
  `--append-verify` trusts any shorter file of the same name as a prefix of the source. Files that
  were complete when the copy stopped are not sent again; the one interrupted file is copied again
  (local copies run in whole-file mode, which on one machine is faster than computing deltas).
* Symlinks are copied as links and never followed (no -L, no --copy-links).
* Progress: `--info=progress2` (one running total for the whole transfer) parsed into Progress
  records for a hook (a live bar) and into plain log lines every few seconds for headless runs.
* `--itemize-changes` lists what changed; with `--dry-run` the same listing is the plan.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ispcp_lib.errors import CommandFailed
from ispcp_lib.result import CommandRecord

PARTIAL_DIR = ".rsync-partial"
RC_VANISHED = 24  # some source files vanished during the transfer
HOOK_EVERY_S = 0.1  # progress updates passed on at most this often (a bar needs no more)

_PROGRESS = re.compile(
    rb"^\s*(?P<bytes>[\d,]+)\s+(?P<pct>\d+)%\s+(?P<rate>\S+)\s+(?P<eta>\S+)"
    rb"(?:\s+\(xfr#(?P<xfr>\d+),\s+(?:ir|to)-chk=(?P<left>\d+)/(?P<total>\d+)\))?"
)
# --itemize-changes: YXcstpoguax NAME (update type, file type, nine attribute letters).
_OPS = frozenset(bytes([c]) for c in b"<>ch.*")
_TYPES = frozenset(bytes([c]) for c in b"fdLDS")
_STAT = re.compile(rb"^(?P<key>[A-Za-z][A-Za-z ]+): (?P<num>[\d,]+)")


@dataclass
class Progress:
    """One progress2 update of a running copy."""

    label: str
    pid: int
    bytes_done: int
    percent: int  # rsync's own estimate; it grows its file list while copying
    rate: str
    eta: str
    files_done: int
    elapsed: float


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
            caps.notes.append(f"the filesystem of {probe} stores no extended attributes: copying without -X")
        else:
            raise
    try:
        os.getxattr(probe, "system.posix_acl_access", follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            caps.acls = False
            caps.notes.append(f"the filesystem of {probe} stores no POSIX ACLs (mounted noacl?): copying "
                              "without -A, so ACLs of the backup are not kept")
        elif exc.errno != errno.ENODATA:
            raise
    return caps


def build_argv(
    src: Path,
    dest: Path,
    *,
    dry_run: bool,
    caps: Capabilities,
    owner: tuple[int, int] | None = None,
    bwlimit_kbps: int | None = None,
) -> list[str]:
    """The one rsync command line for plan and copy; they differ only in --dry-run."""
    flags = "-aH" + ("A" if caps.acls else "") + ("X" if caps.xattrs else "")
    argv = ["rsync", flags, "--numeric-ids", f"--partial-dir={PARTIAL_DIR}", "--itemize-changes", "--stats",
            "--info=progress2"]
    if owner is not None:  # set while copying: no second pass over the tree
        argv.append(f"--chown={owner[0]}:{owner[1]}")
    if bwlimit_kbps:
        argv.append(f"--bwlimit={int(bwlimit_kbps)}")
    if dry_run:
        argv.append("--dry-run")
    # Trailing slashes: copy the tree's contents into dest (and dest's own attributes from src).
    argv += ["--", str(src).rstrip("/") + "/", str(dest).rstrip("/") + "/"]
    return argv


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
        return (self.new_files + self.new_dirs + self.new_links + self.updated_files + self.attributes
                + self.hard_links + self.other)

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

    def describe(self) -> str:
        parts = [(self.new_files, "new files"), (self.new_dirs, "new directories"), (self.new_links, "new symlinks"),
                 (self.hard_links, "hard links"), (self.updated_files, "changed files"),
                 (self.attributes, "owner/mode/time updates"), (self.other, "other changes")]
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


def run(
    argv: list[str],
    *,
    label: str,
    sink: list[CommandRecord] | None = None,
    log: Callable[[str], None] | None = None,
    on_progress: ProgressHook | None = None,
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
        prog = Progress(label, pid, int(p["bytes"].replace(b",", b"")), int(p["pct"]), p["rate"].decode(),
                        p["eta"].decode(), int(p["xfr"] or 0), now - started)
        if on_progress is not None:
            on_progress(prog)
        if log is not None and now - clock["log"] >= log_every_s:
            clock["log"] = now
            log(f"{label}: {human(prog.bytes_done)} copied, {prog.files_done} files, {prog.rate}, "
                f"about {prog.percent}% by rsync's estimate")

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
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
        hint = ("\nThe copy can be resumed: run this step again. Files that were complete are not sent again; "
                f"an interrupted file waits in {PARTIAL_DIR}/ until then." if rc in (20, 30, 35) or rc < 0 else "")
        raise CommandFailed(list(argv), rc, stderr + hint)
    if log is not None:
        log(f"{label}: done in {duration:.1f} s: {summary}")
    return RsyncRun(list(argv), rc, items, stats, stderr, duration)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the rsync processes this module started (their own session), then reap ours."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
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
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.1)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
