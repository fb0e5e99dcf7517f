"""Disk space: the pre-check of a changing step, and the fix when a copy meets a full disk.

A step that copies (staged databases, safety copies, user data) adds up what it will write per target
path; `check` reads the filesystems holding those paths with `df -P -k` through the connection (POSIX:
Lenny's and Squeeze's df give the same one line per filesystem) and refuses before the first change
when one of them lacks the room, naming the filesystem, what is needed, what is free and the fix.

When a command or a write still fails with ENOSPC ("No space left on device": another process filled
the disk meanwhile), `enospc_advice` names the full filesystem and the fix; core.action appends it to
the step's error (register_advice, called by ispcp_lib.steps, puts it into core.action.FAILURE_ADVICE).

Test hook: ISPCP_DF_AVAILABLE_KB=<mount point>=<KiB>[,<mount point>=<KiB>...] replaces the free space df
reports for those mount points (as df prints them), so a test can fake a nearly full disk.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ispcp_lib.core.action import FAILURE_ADVICE
from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import CommandFailed, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.system.rsync_copy import human

if TYPE_CHECKING:
    from ispcp_lib.core.context import Context
    from ispcp_lib.core.result import Result

FAKE_ENV = "ISPCP_DF_AVAILABLE_KB"
NO_SPACE = "No space left on device"
RESERVE = Param(
    "disk_reserve_mb",
    int,
    16,
    "MiB that every filesystem a changing step writes to must still have free afterwards (disk-space pre-check)",
    minimum=0,
)
# One df -P line: filesystem, 1024-blocks, used, available, capacity, mount point (names may hold spaces).
_DF_LINE = re.compile(
    r"^(?P<fs>.+?)\s+(?P<blocks>\d+)\s+(?P<used>\d+)\s+(?P<avail>\d+)\s+(?P<cap>\d+%|-)\s+(?P<mount>/.*)$"
)
# $@ paths: for each, the nearest existing folder at or above it, then its df -P -k line.
_DF = r"""
for p; do
  while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname -- "$p"); done
  df -P -k -- "$p" | tail -n 1
done
"""


@dataclass(frozen=True)
class Filesystem:
    """One filesystem as `df -P -k` shows it."""

    device: str
    total: int  # bytes
    available: int  # bytes free for non-root
    mount: str


@dataclass
class Need:
    """Bytes a step will write below a target path."""

    path: str  # a target path (need not exist yet)
    size: int
    what: str


def parse_df_line(line: str) -> Filesystem:
    m = _DF_LINE.match(line.rstrip("\n"))
    if m is None:
        raise ValueError(f"not a df -P line: {line!r}")
    return Filesystem(m["fs"], int(m["blocks"]) * 1024, int(m["avail"]) * 1024, m["mount"])


def _faked(fs: Filesystem, env: str | None) -> Filesystem:
    for item in (env or "").split(","):
        mount, _, kib = item.rpartition("=")
        if mount and mount == fs.mount and kib.isdigit():
            return Filesystem(fs.device, fs.total, int(kib) * 1024, fs.mount)
    return fs


def filesystems(conn: Connection, paths: Sequence[str]) -> list[Filesystem]:
    """The filesystem holding each path (its nearest existing folder), read-only, in one round trip."""
    if not paths:
        return []
    argv = ["sh", "-c", _DF, "sh", *(conn.path(p) for p in paths)]
    done = conn.run(argv, timeout=60)
    lines = done.out.splitlines()
    if done.rc != 0 or len(lines) != len(paths):
        raise CommandFailed(argv, done.rc, done.err)
    return [_faked(parse_df_line(line), os.environ.get(FAKE_ENV)) for line in lines]


def folder_bytes(conn: Connection, paths: Iterable[str]) -> int:
    """Bytes the folders or files take (du -s -k, POSIX) on that side; missing paths count 0."""
    present = [p for p in paths if conn.exists(p)]
    if not present:
        return 0
    done = conn.run(["du", "-s", "-k", "--", *(conn.path(p) for p in present)], timeout=3600)
    if done.rc != 0:
        raise CommandFailed(["du", "-s", "-k", *present], done.rc, done.err)
    return sum(int(line.split()[0]) for line in done.out.splitlines() if line.strip()) * 1024


def check(ctx: Context, result: Result, needs: Sequence[Need], *, step_fix: str) -> None:
    """Refuse before the first change when a filesystem lacks the room for what the step writes there.

    Needs on one filesystem add up; every filesystem keeps disk_reserve_mb free. step_fix: how to
    rerun (e.g. "run mysql_restore again"). A dry run notes the same figures and refuses the same way.
    """
    needs = [n for n in needs if n.size > 0]
    if not needs:
        return
    reserve = int(ctx.param(RESERVE.name, RESERVE.default)) << 20
    by_fs: dict[tuple[str, str], tuple[Filesystem, list[Need]]] = {}
    for need, fs in zip(needs, filesystems(ctx.target, [n.path for n in needs]), strict=True):
        by_fs.setdefault((fs.device, fs.mount), (fs, []))[1].append(need)
    lines, short = [], []
    for fs, items in by_fs.values():
        size = sum(n.size for n in items)
        lines.append(f"{ctx.logical_path(fs.mount)} ({fs.device}): {human(size)} needed, {human(fs.available)} free")
        if size + reserve > fs.available:
            short.append((fs, size, items))
    result.note("Disk space (df -P): " + "; ".join(lines) + ".")
    if short:
        fs, size, items = short[0]
        mount = ctx.logical_path(fs.mount)
        raise PreconditionFailed(
            f"disk space on {mount}",
            f"the filesystem {fs.device} mounted on {mount} has {human(fs.available)} free, and this step needs "
            f"{human(size)} there ({'; '.join(n.what for n in items)}) plus {human(reserve)} kept free "
            f"(disk_reserve_mb); nothing was changed",
            f"free at least {human(size + reserve - fs.available)} on {mount} (or mount a bigger disk there), "
            f"then {step_fix}",
            path=mount,
        )


def _is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = exc.stderr if isinstance(exc, CommandFailed) else str(exc)
    return NO_SPACE in text


def _failure_paths(exc: BaseException) -> list[str]:
    if isinstance(exc, OSError):
        return [p for p in (exc.filename, exc.filename2) if isinstance(p, str)]
    if isinstance(exc, CommandFailed):
        return [a for a in exc.argv[1:] if a.startswith("/")]
    named = getattr(exc, "path", None)  # an IspcpError's target path
    return [named] if isinstance(named, str) and named.startswith("/") else re.findall(r"'(/[^']+)'", str(exc))


def enospc_advice(ctx: Context, exc: BaseException) -> str | None:
    """The fix for a failure that ran out of disk space: which filesystem is full, and how to go on."""
    if not _is_enospc(exc):
        return None
    where = "the full filesystem (df -P shows it)"
    paths = [ctx.logical_path(p) for p in _failure_paths(exc)]  # commands name them as they see them
    try:
        found = filesystems(ctx.target, paths) if paths else []
    except (CommandFailed, ValueError, OSError):  # the advice must never hide the failure itself
        found = []
    if found:
        fs = min(found, key=lambda f: f.available)
        where = f"{ctx.logical_path(fs.mount)} ({fs.device}, {human(fs.available)} free now)"
    step = ctx.current.step if ctx.current is not None else "the step"
    return (
        f"{NO_SPACE}: free space on {where}, then run {step} again. What the step did before is kept: its "
        f"safety copies stay under {ctx.state_dir} and the journal lets the rerun finish or undo the "
        "interrupted change."
    )


def register_advice() -> None:
    """Put enospc_advice into core.action.FAILURE_ADVICE (once)."""
    if enospc_advice not in FAILURE_ADVICE:
        FAILURE_ADVICE.append(enospc_advice)
