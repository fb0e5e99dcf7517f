"""A fast, byte-exact listing of directory trees (type, size, owner, links, inode, link target per entry).

Built on `find -printf` with NUL separators, run where the tree is (through its connection: the
target, or the backup on whichever machine holds it): C speed, one command per share of a tree
instead of a round trip per file, and every file name comes back as the exact bytes on disk,
newlines and non-UTF-8 bytes (old Latin-1 names) included. A tree is listed by its top-level entries
(the domains), split over a few find processes that run side by side (on a tree of 120,000 entries
two processes take half the wall time of one), and each output is parsed while it streams in. The
user-data step lists the backup once and takes everything from that listing: the checks before
copying, the plan, the owners to fix and the reference for the verification.
Read-only: this is a fact, not an action.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from ispcp_lib.core.connection import Connection, LocalConnection, RootedView
from ispcp_lib.core.errors import InputError

WORKERS = 2 if (os.cpu_count() or 1) > 1 else 1
ARGV_BYTES = 512 * 1024  # start points per find process, well below the kernel's argument limit
# %y type, %s size, %U uid, %G gid, %n links, %D device, %i inode, %m permission bits (octal, with
# setuid, setgid and sticky); then the path and the link target.
_FORMAT = "%y/%s/%U/%G/%n/%D/%i/%m\\0%p\\0%l\\0"
_KINDS = {k.encode(): k for k in "fdlpsbcD"}
# $1 the tree's root, $2 the format, then the start points (./name) relative to the root.
_FIND = 'cd "$1" || exit 2; f=$2; shift 2; exec find -P "$@" -printf "$f"'


class Entry(NamedTuple):
    kind: str  # f file, d directory, l symlink, and find's letters for the rest (p, s, b, c)
    size: int
    uid: int
    gid: int
    nlink: int
    dev: int
    ino: int
    rel: bytes  # path relative to the scanned root; b"" is the root itself
    link: bytes  # symlink target, b"" for anything else
    mode: int = 0  # permission bits, setuid/setgid/sticky included


def root_entry(conn: Connection, root: str) -> Entry:
    """The tree's own directory (root, a path of conn), as an Entry with rel b"" (lstat semantics)."""
    argv = ["find", "-P", conn.path(root), "-maxdepth", "0", "-printf", _FORMAT]
    done = conn.run(argv, timeout=600)
    entries = parse(done.stdout)
    if done.rc != 0 or len(entries) != 1:
        raise InputError("directory listing", f"cannot read the folder itself: {done.err.strip()}", path=root)
    return entries[0]._replace(rel=b"")


def top_names(conn: Connection, root: str) -> list[bytes]:
    """The names directly under root (raw bytes), sorted; [] when root is no directory."""
    return sorted(os.fsencode(name) for name in conn.listdir(root) or [])


Groups = dict[bytes, list[Entry]]


def scan_many(
    conn: Connection, requests: Sequence[tuple[str, Sequence[bytes]]], *, workers: int = WORKERS
) -> list[Groups]:
    """For each (root, names): {name: the entries under root/<name>, that entry first}, paths relative to root.

    The roots are paths of conn (the target, or the backup's RootedView).

    The names of every root are dealt out to `workers` find processes per root (more if an argument
    list would be too long), all run from one pool; each lists its share from inside its root, so the
    paths come back relative to it. find lists each start point depth first, so every name's entries
    arrive together, and the grouping costs nothing.
    """
    tasks = [
        (i, root, chunk) for i, (root, names) in enumerate(requests) if names for chunk in _chunks(list(names), workers)
    ]
    out: list[Groups] = [{} for _ in requests]
    parts: list[list[Entry]] = []
    if len(tasks) == 1:
        parts = [_find(conn, tasks[0][1], tasks[0][2])]
    elif tasks:
        with ThreadPoolExecutor(min(workers, len(tasks))) as pool:
            parts = list(pool.map(lambda task: _find(conn, task[1], task[2]), tasks))
    for (i, _root, _chunk), entries in zip(tasks, parts):
        groups = out[i]
        bucket: list[Entry] = []
        for e in entries:
            if b"/" not in e.rel:
                bucket = groups[e.rel] = []
            bucket.append(e)
    return out


def _chunks(names: list[bytes], workers: int) -> list[list[bytes]]:
    """Interleaved shares (neighbouring domains are often alike in size), split again when too long."""
    out = []
    for share in (names[i::workers] for i in range(min(workers, len(names)))):
        size, start = 0, 0
        for i, name in enumerate(share):
            size += len(name) + 3
            if size > ARGV_BYTES and i > start:
                out.append(share[start:i])
                start, size = i, len(name) + 3
        out.append(share[start:])
    return out


def _find(conn: Connection, root: str, names: list[bytes]) -> list[Entry]:
    """One find over root/<names> where the tree is, its output parsed while it streams in."""
    # "./name": a name that starts with "-" or "(" is never taken for an option or an expression.
    argv = ["sh", "-c", _FIND, "sh", conn.path(root), _FORMAT, *(os.fsdecode(b"./" + n) for n in names)]
    entries: list[Entry] = []
    with tempfile.TemporaryFile() as err:
        proc = conn.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        with proc.stdout:
            rest = b""
            while chunk := os.read(proc.stdout.fileno(), 1 << 20):
                fields = (rest + chunk).split(b"\0")
                whole = (len(fields) - 1) // 3 * 3  # complete records; the rest waits for the next chunk
                _parse_fields(fields, whole, entries)
                rest = b"\0".join(fields[whole:])
        if proc.wait() != 0:
            err.seek(0)
            raise InputError(
                "directory listing",
                f"find could not read the whole tree: {err.read().decode('utf-8', 'replace').strip()[-500:]}",
                "check that the tree is readable (permissions, I/O errors in the kernel log)",
                path=root,
            )
    return entries


def parse(out: bytes) -> list[Entry]:
    """find's records (see _FORMAT) as Entries; paths lose their "./" prefix."""
    fields = out.split(b"\0")
    entries: list[Entry] = []
    _parse_fields(fields, (len(fields) - 1) // 3 * 3, entries)
    return entries


def _parse_fields(fields: list[bytes], end: int, entries: list[Entry]) -> None:
    kinds = _KINDS
    new = tuple.__new__  # a third faster than Entry(...), whose __new__ is Python code
    append = entries.append
    for i in range(0, end, 3):
        kind, size, uid, gid, nlink, dev, ino, mode = fields[i].split(b"/")
        append(
            new(
                Entry,
                (
                    kinds.get(kind, "?"),
                    int(size),
                    int(uid),
                    int(gid),
                    int(nlink),
                    int(dev),
                    int(ino),
                    fields[i + 1][2:],
                    fields[i + 2],
                    int(mode, 8),
                ),
            )
        )


def show(rel: bytes) -> str:
    """A path for messages: newlines and other control or non-UTF-8 bytes escaped, never raw."""
    text = rel.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text) or "."


def with_newlines(entries: Iterable[Entry]) -> Iterator[Entry]:
    return (e for e in entries if b"\n" in e.rel)


def escaping_links(entries: Iterable[Entry], logical_root: str) -> Iterator[tuple[Entry, str]]:
    """Symlinks that, seen from where the tree lives on the server, lead outside logical_root.

    Judged on the link text alone (never resolved here): an absolute target outside the tree, or a
    relative one with enough `..` to climb out of it.
    """
    root = os.fsencode(os.path.normpath(logical_root))
    for e in entries:
        if e.kind != "l":
            continue
        here = os.path.join(root, os.path.dirname(e.rel))
        dest = os.path.normpath(os.path.join(here, e.link))
        if dest != root and not dest.startswith(root + b"/"):
            yield e, show(dest)


def linked_groups(groups: Groups) -> list[set[bytes]]:
    """Keys of groups (domains) that share hard-linked files, merged transitively (sets of two or more).

    One copy command per such set keeps the links: cp -a and rsync -H only link what they copy
    in the same invocation.
    """
    first: dict[tuple[int, int], bytes] = {}
    parent: dict[bytes, bytes] = {}

    def find(k: bytes) -> bytes:
        while k in parent:
            k = parent[k]
        return k

    for key, entries in groups.items():
        for e in entries:
            if e.nlink < 2 or e.kind == "d":
                continue
            seen = first.setdefault((e.dev, e.ino), key)
            if seen != key:
                a, b = find(seen), find(key)
                if a != b:
                    parent[a] = b
    merged: dict[bytes, set[bytes]] = {}
    for k in parent:
        merged.setdefault(find(k), set()).add(k)
    for root in list(merged):
        merged[root].add(root)
    return list(merged.values())


def local_path(conn: Connection, path: str) -> str | None:
    """path as this machine sees it when conn reaches a tree on this machine; None when it is elsewhere."""
    inner = conn.inner if isinstance(conn, RootedView) else conn
    return conn.path(path) if isinstance(inner, LocalConnection) else None


def xattr_kinds(conn: Connection, root: str, entries: Iterable[Entry]) -> tuple[bool, bool]:
    """(any POSIX ACL, any other extended attribute) among entries: one listxattr each, stopping once both
    are found. ACLs are stored as the system.posix_acl_access/_default attributes. A filesystem without
    xattr support holds neither. A tree on another machine is not probed (the target has no tool for it
    that the tool may rely on): (True, True), so nothing is left out."""
    here = local_path(conn, root)
    if here is None:
        return True, True
    base = os.fsencode(here)
    acls = others = False
    listxattr = os.listxattr
    for e in entries:
        try:
            names = listxattr(b"%s/%s" % (base, e.rel) if e.rel else base, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return False, False
            if exc.errno == errno.ENOENT:
                continue
            raise
        for name in names:
            if name.startswith("system.posix_acl_"):
                acls = True
            else:
                others = True
        if acls and others:
            break
    return acls, others
