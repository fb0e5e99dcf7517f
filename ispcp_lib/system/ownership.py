"""Owners and modes on the target, through its connection: only what differs is changed.

`chown -R U:G` rewrites every inode of a tree (and bumps every ctime) even when nothing is wrong, and
it cannot leave parts of a tree alone. So fix_tree runs one pipeline on the target: `find -P`
selects the entries whose owner or group differs (skipping the pruned paths), and their names
stream, NUL-separated, into `xargs -0 chown -h`, so walking and re-owning overlap; each chown batch
prints how many entries it changed, which is the count in the report. On a tree that is already
right this only reads. Nothing crosses the connection but the command and the counts.

When the entries are already known (the user-data step lists the whole backup before it copies),
lchown_known and chmod_known send their names on stdin to one `xargs` on the target: no walk at all.

`find -P` + `chown -h` act on symlinks themselves, never on what they point to. A name never goes on
a command line through a shell: scripts take their arguments as "$@", names come on stdin.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ispcp_lib.core.connection import Connection, FileStat
from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.system.tree_scan import show

BATCH = 2000  # names per chown process
# $1 the owner, the rest find's arguments; every chown batch prints how many names it was given.
_FIX = r"""
owner=$1; shift
find "$@" -print0 | xargs -0 -r -n 2000 -P 2 sh -c 'o=$1; shift; chown -h -- "$o" "$@" && echo $#' sh "$owner"
"""
# $1 the base directory, $2 the owner or mode, $3 chown -h or chmod; names relative to $1 on stdin.
_KNOWN = r"""
cd "$1" || exit 1
xargs -0 -r -n 2000 $3 -- "$2"
"""


@dataclass
class OwnershipFix:
    root: str  # the target's own path
    uid: int
    gid: int
    count: int  # entries whose owner differs (planned) or was changed (applied)
    sample: list[str] = field(default_factory=list)  # a few of them, relative, escaped for display
    applied: bool = False

    def describe(self) -> str:
        return f"{self.count} entries"


def glob_quoted(path: str) -> str:
    """A literal path as a find -path pattern (*, ?, [ and \\ escaped)."""
    return "".join("\\" + c if c in "*?[\\" else c for c in path)


def select_args(
    conn: Connection, root: str, uid: int, gid: int, prune: Sequence[str] = (), below_only: bool = False
) -> list[str]:
    """find's arguments up to the action: every entry not owned by uid:gid, pruned paths left alone.

    below_only leaves root itself out (its owner is set on its own, with its mode).
    """
    args = ["-P", conn.path(root)]
    if below_only:
        args.append("-mindepth")
        args.append("1")
    if prune:
        alternatives: list[str] = []
        for path in prune:
            alternatives += [*(["-o"] if alternatives else []), "-path", glob_quoted(conn.path(path))]
        args += ["(", *alternatives, ")", "-prune", "-o"]
    return [*args, "(", "!", "-uid", str(uid), "-o", "!", "-gid", str(gid), ")"]


def mismatched(
    conn: Connection,
    root: str,
    uid: int,
    gid: int,
    *,
    prune: Sequence[str] = (),
    below_only: bool = False,
    sample: int = 10,
) -> OwnershipFix:
    """Read-only: how many entries under root are not owned by uid:gid, and a few of them."""
    argv = ["find", *select_args(conn, root, uid, gid, prune, below_only), "-printf", "%P\\0"]
    done = conn.run(argv, timeout=3600)
    if done.rc != 0:
        raise CommandFailed(argv, done.rc, done.err)
    names = done.stdout.split(b"\0")[:-1]
    return OwnershipFix(root, uid, gid, len(names), [show(n) for n in names[:sample]])


def fix_tree(
    runner: Runner,
    conn: Connection,
    root: str,
    uid: int,
    gid: int,
    *,
    apply: bool,
    prune: Sequence[str] = (),
    below_only: bool = False,
) -> OwnershipFix:
    """Plan (apply=False: counted, the command recorded as planned) or make every entry under root uid:gid."""
    if not conn.exists(root):
        return OwnershipFix(root, uid, gid, 0)
    if not apply:
        plan = mismatched(conn, root, uid, gid, prune=prune, below_only=below_only)
        if plan.count:
            runner.run(_fix_argv(conn, root, uid, gid, prune, below_only), mutates=True)
        return plan
    rec = runner.run(_fix_argv(conn, root, uid, gid, prune, below_only), mutates=True, timeout=86400)
    count = sum(int(n) for n in rec.stdout.split())
    rec.stdout = f"{count} entries now {uid}:{gid}"  # the report shows the count, not the batches
    return OwnershipFix(root, uid, gid, count, applied=True)


def _fix_argv(conn: Connection, root: str, uid: int, gid: int, prune: Sequence[str], below_only: bool) -> list[str]:
    return ["sh", "-c", _FIX, "sh", f"{uid}:{gid}", *select_args(conn, root, uid, gid, prune, below_only)]


def lchown_known(conn: Connection, base: str, rels: Iterable[bytes], uid: int, gid: int) -> int:
    """Re-own the entries base/<rel> (rel b"" is base itself) without following symlinks; returns how many."""
    return _known(conn, base, rels, f"{uid}:{gid}", "chown -h")


def chmod_known(conn: Connection, base: str, modes: dict[bytes, int]) -> None:
    """Set each entry base/<rel> to its mode (one command per distinct mode; never on a symlink)."""
    by_mode: dict[int, list[bytes]] = {}
    for rel, mode in modes.items():
        by_mode.setdefault(mode, []).append(rel)
    for mode, rels in sorted(by_mode.items()):
        _known(conn, base, rels, f"{mode:o}", "chmod")


def _known(conn: Connection, base: str, rels: Iterable[bytes], value: str, command: str) -> int:
    names = [b"./" + rel if rel else b"." for rel in rels]
    if not names:
        return 0
    argv = ["sh", "-c", _KNOWN, "sh", conn.path(base), value, command]
    done = conn.run(argv, input=b"\0".join(names) + b"\0", timeout=86400)
    if done.rc != 0:
        raise CommandFailed(argv, done.rc, done.err)
    return len(names)


def stat_many(conn: Connection, paths: Sequence[str]) -> dict[str, FileStat]:
    """lstat of several target paths with one find; absent paths are left out of the answer."""
    if not paths:
        return {}
    shown = {conn.path(p): p for p in paths}
    done = conn.run(["find", "-P", *shown, "-maxdepth", "0", "-printf", "%y/%m/%U/%G/%s/%T@\\0%p\\0%l\\0"])
    fields = done.stdout.split(b"\0")
    out: dict[str, FileStat] = {}
    for i in range(0, len(fields) - 2, 3):
        kind, mode, uid, gid, size, mtime = fields[i].decode().split("/")
        logical = shown[fields[i + 1].decode("utf-8", "surrogateescape")]
        link = fields[i + 2].decode("utf-8", "surrogateescape")
        out[logical] = FileStat(kind, int(mode, 8), int(uid), int(gid), int(size), float(mtime), link)
    return out
