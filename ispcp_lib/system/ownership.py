"""Fast recursive ownership fix: change only what differs, never follow a symlink.

`chown -R U:G` rewrites every inode of the tree (and bumps every ctime) even when nothing is wrong,
and re-owning by path costs more per entry than chown's directory-relative walk. So fix_tree first
looks at a sample of the tree (a few hundred entries, breadth first):

* the sample is the whole tree (a FastCGI starter directory, a small web space): the wrong entries
  are re-owned right here, with no process started;

* nearly all of the sample wrong (a tree restored without numeric owners, or written by root):
  one `chown -R U:G`, the cheapest way to re-own everything (it reports no count: counting would
  cost a second walk);
* otherwise (the usual case: rsync set the owners while copying, or a repeated run): `find` walks
  the tree in C and selects only the entries whose owner or group differs; their names stream,
  NUL-separated, through this process (which counts them) into `xargs -0 -P2 chown -h`, so walking
  and re-owning overlap. On a tree that is already right this only reads.

When the entries to fix are already known (the user-data step lists the whole backup before it
copies), lchown_known re-owns exactly those, with no walk at all.

`chown -R` (which implies -P) and `find -P` + `chown -h` act on symlinks themselves, never on what
they point to. Two commands joined by a pipe are run as two argv lists, never through a shell.
benchmarks/user_data.py compares fix_tree with `chown -R` in the same run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.result import CommandRecord
from ispcp_lib.core.runner import Runner
from ispcp_lib.system.tree_scan import show

BATCH = 2000  # paths per chown process
WORKERS = 2 if (os.cpu_count() or 1) > 1 else 1
SAMPLE = 256  # entries looked at to choose between the bulk and the selective fix
BULK_SHARE = 0.9  # this share of the sample wrong: re-own everything in one chown -R


@dataclass
class OwnershipFix:
    root: Path
    uid: int
    gid: int
    count: int  # entries whose owner differs (planned) or was changed (applied; see whole_tree)
    sample: list[str] = field(default_factory=list)  # a few of them, relative, escaped for display
    applied: bool = False
    whole_tree: bool = False  # applied with one chown -R: count is then only the wrong entries of the sample

    def describe(self) -> str:
        if self.whole_tree:
            return f"the whole tree (chown -R; {self.count} of the first {SAMPLE} entries looked at were wrong)"
        return f"{self.count} entries"


def select_argv(root: Path, uid: int, gid: int) -> list[str]:
    """find's argv up to the selection: every entry not owned by uid:gid, the root included."""
    return ["find", "-P", str(root), "(", "!", "-uid", str(uid), "-o", "!", "-gid", str(gid), ")"]


def chown_argv(uid: int, gid: int) -> list[str]:
    return ["xargs", "-0", "-r", "-P", str(WORKERS), "-n", str(BATCH), "chown", "-h", f"{uid}:{gid}", "--"]


def shown_argv(root: Path, uid: int, gid: int) -> list[str]:
    """The pipeline as it appears in the report."""
    return [*select_argv(root, uid, gid), "-print0", "|", *chown_argv(uid, gid)]


def mismatched(root: Path, uid: int, gid: int, sample: int = 10) -> OwnershipFix:
    """Read-only: how many entries under root are not owned by uid:gid, and a few of them."""
    argv = [*select_argv(root, uid, gid), "-printf", "%P\\0"]
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    names = proc.stdout.split(b"\0")[:-1]
    return OwnershipFix(Path(root), uid, gid, len(names), [show(n) or "." for n in names[:sample]])


def fix_tree(runner: Runner, root: Path, uid: int, gid: int, *, apply: bool) -> OwnershipFix:
    """Plan (apply=False: counted, the command recorded as planned) or make every entry under root uid:gid."""
    if not os.path.lexists(root):
        return OwnershipFix(Path(root), uid, gid, 0)
    survey = survey_tree(root, uid, gid)
    if survey.complete:  # small tree: seen whole, fixed here (lchown), no process to start
        fix = OwnershipFix(
            Path(root),
            uid,
            gid,
            len(survey.wrong),
            [show(os.fsencode(os.path.relpath(p, root))) for p in survey.wrong[:10]],
            applied=apply,
        )
        if apply:
            for path in survey.wrong:
                os.chown(path, uid, gid, follow_symlinks=False)
        return fix
    bulk = survey.mostly_wrong
    argv = bulk_argv(root, uid, gid) if bulk else shown_argv(root, uid, gid)
    if not apply:
        plan = mismatched(root, uid, gid)
        if plan.count and runner.sink is not None:
            runner.sink.append(CommandRecord(argv, None, planned=True))
        return plan
    if bulk:
        started = time.monotonic()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        count, rc, stderr = len(survey.wrong), proc.returncode, proc.stderr.decode("utf-8", "replace")
        duration = time.monotonic() - started
    else:
        count, rc, stderr, duration = _pipeline(root, uid, gid)
    fix = OwnershipFix(Path(root), uid, gid, count, applied=True, whole_tree=bulk)
    if runner.sink is not None and (count or rc):
        runner.sink.append(CommandRecord(argv, rc, f"{fix.describe()} now {uid}:{gid}", stderr, duration))
    if rc:
        raise CommandFailed(argv, rc, stderr)
    return fix


def lchown_known(base: Path, rels: Iterable[bytes], uid: int, gid: int) -> int:
    """Re-own the entries base/<rel> (rel b"" is base itself) without following symlinks; returns how many."""
    root = os.fsencode(base)
    count = 0
    for rel in rels:
        os.chown(os.path.join(root, rel) if rel else root, uid, gid, follow_symlinks=False)
        count += 1
    return count


def bulk_argv(root: Path, uid: int, gid: int) -> list[str]:
    return ["chown", "-R", f"{uid}:{gid}", "--", str(root)]


@dataclass
class Survey:
    seen: int
    wrong: list[str]  # paths of the wrong entries among those seen
    complete: bool  # the whole tree was seen

    @property
    def mostly_wrong(self) -> bool:
        return self.seen >= 32 and len(self.wrong) >= BULK_SHARE * self.seen


def survey_tree(root: Path, uid: int, gid: int, limit: int = SAMPLE) -> Survey:
    """Look at up to `limit` entries breadth first (the root included): which are not uid:gid?"""
    st = os.lstat(root)
    wrong = [str(root)] if (st.st_uid, st.st_gid) != (uid, gid) else []
    seen = 1
    queue = [str(root)] if not os.path.islink(root) else []
    while queue:
        with os.scandir(queue.pop(0)) as it:
            for e in it:
                if seen >= limit:
                    return Survey(seen, wrong, False)
                est = e.stat(follow_symlinks=False)
                seen += 1
                if (est.st_uid, est.st_gid) != (uid, gid):
                    wrong.append(e.path)
                if e.is_dir(follow_symlinks=False):
                    queue.append(e.path)
    return Survey(seen, wrong, True)


def mostly_wrong(root: Path, uid: int, gid: int) -> bool:
    return survey_tree(root, uid, gid).mostly_wrong


def _pipeline(root: Path, uid: int, gid: int) -> tuple[int, int, str, float]:
    """find -print0 | (count here) | xargs chown -h; returns (entries, exit code, stderr, seconds)."""
    started = time.monotonic()
    count = 0
    with tempfile.TemporaryFile() as err:
        find = subprocess.Popen(
            [*select_argv(root, uid, gid), "-print0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        )
        chown = subprocess.Popen(chown_argv(uid, gid), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert find.stdout is not None and chown.stdin is not None
        try:
            while chunk := os.read(find.stdout.fileno(), 1 << 16):
                count += chunk.count(b"\0")
                chown.stdin.write(chunk)
        finally:
            chown.stdin.close()
            find.stdout.close()
            rc_find, rc_chown = find.wait(), chown.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return count, rc_find or rc_chown, stderr, time.monotonic() - started
