"""Copying the user-data trees from the backup to the target: listing, plan, jobs, verification.

How the work is shared out, and why (benchmarks/user_data.py measures it against cp -a and rsync -a):
* One listing of the backup (tree_scan: find where the backup is, two processes) feeds every check
  before copying (names with newlines, symlinks leading out, room on the disk), the plan, the owners
  and the verification.
* The plan gives every domain a method: cp into staging and a rename for a domain that is new on the
  target (the usual case in a recovery), rsync for what is already there. Domains that share hard
  links are copied by one command, so the links stay links. Where the backup is on this machine,
  each cp job first looks for POSIX ACLs in what it copies (one listxattr per entry); where there are
  none, cp runs without its ACL work (a third of its time on Maildirs), and rsync likewise drops -A/-X.
* Domains are copied by two jobs at a time, through the Route (rsync_copy): on the target when it
  sees the backup, else from this machine (into the chroot's tree, or over SSH). Each job then lists
  what it copied on the target (one find) and compares it with the backup's listing, while the other
  job is still copying; rsync's temporary files are never counted as copied.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from functools import cached_property

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.result import CommandRecord
from ispcp_lib.system import ownership, rsync_copy, tree_scan
from ispcp_lib.system.rsync_copy import STAGING_DIR, Capabilities, Items, Route
from ispcp_lib.system.tree_scan import Entry, Groups

# Job sizes in entries (a file, directory or link; each 64 KiB of data counts as one more). Smaller
# jobs balance the two workers better, but each costs a process start or three (rsync).
MIN_JOB_WEIGHT = {"cp": 1000, "resume": 1000, "rsync": 5000}
JOBS_PER_WORKER = 8
JOB_ARGV_BYTES = 256 * 1024
LOOSE = b""  # the group key of entries directly in a tree's top directory
WHY = {
    "cp": "new on the target: copied into the staging directory, then renamed into place",
    "resume": "an interrupted copy waits in the staging directory: rsync completes it, then it is renamed into place",
    "rsync": "already on the target: rsync adds and updates, deletes nothing",
    "loose": "entries directly in the tree's top directory: rsync",
    "bwlimit": "user_data_bwlimit is set: rsync, the only copy that can limit its rate",
}


@dataclass
class Tree:
    name: str  # "web" or "mail"
    logical: str  # where the tree is, on the old and on the new server
    owner: tuple[int, int] | None  # forced owner (mail); None keeps the backup's numeric owners
    root: Entry | None = None  # the backup's top directory itself
    groups: Groups = field(default_factory=dict)  # the backup's entries per domain; loose ones under LOOSE
    caps: Capabilities = field(default_factory=lambda: Capabilities(True, True))  # what the target stores

    @property
    def staging(self) -> str:
        return f"{self.logical.rstrip('/')}/{STAGING_DIR}"

    def entries(self) -> Iterable[Entry]:
        return (e for entries in self.groups.values() for e in entries)


@dataclass
class Unit:
    """Top-level entries of one tree copied by one command: a domain, domains sharing hard links, or
    the loose entries at the top of the tree."""

    tree: Tree
    keys: list[bytes]  # group keys (domains; LOOSE for the loose entries)
    names: list[bytes]  # the top-level names the command copies
    method: str  # "cp", "resume" or "rsync"
    reason: str
    before: list[Entry] = field(default_factory=list)  # what the target (staging for "resume") holds of them

    @property
    def entries(self) -> Iterable[Entry]:
        return (e for k in self.keys for e in self.tree.groups[k])

    @cached_property
    def weight(self) -> int:
        return sum(len(self.tree.groups[k]) + file_totals(self.tree.groups[k])[1] // 65536 for k in self.keys)


@dataclass
class Job:
    tree: Tree
    method: str
    units: list[Unit]
    argv: list[str]

    @property
    def names(self) -> list[bytes]:
        return [n for u in self.units for n in u.names]

    @property
    def shown(self) -> list[str]:
        return [tree_scan.show(n) for n in self.names]


@dataclass
class JobDone:
    job: Job
    items: Items | None = None  # rsync's itemized changes (None for cp)
    totals: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # target files, bytes per group key
    problems: list[tuple[bytes, str]] = field(default_factory=list)  # (group key, text)
    owners_fixed: int = 0
    leftovers: int = 0  # temporary files of a killed rsync, removed after the copy
    lean: bool = False  # cp ran without --preserve=mode: no ACL in what it copied


def grouped(tops: Groups) -> Groups:
    """Listing per top-level name -> per domain, with the loose top-level entries together under LOOSE."""
    groups: Groups = {}
    loose: list[Entry] = []
    for name, entries in tops.items():
        if entries[0].kind == "d":
            groups[name] = entries
        else:
            loose += entries
    if loose:
        groups[LOOSE] = loose
    return groups


def shown_key(key: bytes) -> str:
    return tree_scan.show(key) if key != LOOSE else "(top)"


def wrong_owner(entries: Iterable[Entry], owner: tuple[int, int]) -> list[Entry]:
    uid, gid = owner
    return [e for e in entries if e.uid != uid or e.gid != gid]


def file_totals(entries: Iterable[Entry]) -> tuple[int, int]:
    sizes = [e.size for e in entries if e.kind == "f"]
    return len(sizes), sum(sizes)


def need(src: Iterable[Entry], dest: list[Entry], block: int) -> tuple[int, int, int]:
    """Bytes (in whole filesystem blocks) and inodes the copy adds, and the largest file (rsync's temp copy)."""
    have = {e.rel: e for e in dest}
    needed = inodes = largest = 0
    for e in src:
        there = have.get(e.rel) if have else None
        if e.kind == "f":
            largest = max(largest, e.size)
            if there is None or there.kind != "f" or there.size != e.size:
                needed += -(-e.size // block) * block
                inodes += there is None
        elif there is None:
            inodes += 1
            needed += block if e.kind == "d" or (e.kind == "l" and len(e.link) > 59) else 0
    return needed, inodes, largest


# -- the plan: a method for every domain -----------------------------------------------------------


def plan_tree(target: Connection, t: Tree, bwlimit: int) -> tuple[list[Unit], list[bytes]]:
    """The units of one tree, and the staged entries this run does not complete (left for the operator)."""
    on_target = set(tree_scan.top_names(target, t.logical)) - {STAGING_DIR.encode()}
    staged = set(tree_scan.top_names(target, t.staging))
    loose_names = [e.rel for e in t.groups.get(LOOSE, []) if b"/" not in e.rel]
    unit_of: dict[bytes, frozenset[bytes]] = {k: frozenset([k]) for k in t.groups}
    for linked in tree_scan.linked_groups(t.groups):  # hard links across domains: one command for them
        for k in linked:
            unit_of[k] = frozenset(linked)
    units: list[Unit] = []
    for keys in sorted(set(unit_of.values()), key=sorted):
        ordered = sorted(keys)
        names = [k for k in ordered if k != LOOSE] + (loose_names if LOOSE in keys else [])
        method, why = _method(LOOSE in keys, names, on_target, staged, bwlimit)
        if len(keys) > 1:
            why += "; they share hard links, so one command copies them and keeps the links"
        units.append(Unit(t, ordered, names, method, why))
    orphans = sorted(n for n in staged if not any(n in u.names and u.method == "resume" for u in units))
    return units, orphans


def _method(
    loose: bool, names: list[bytes], on_target: set[bytes], staged: set[bytes], bwlimit: int
) -> tuple[str, str]:
    if loose:
        return "rsync", WHY["loose"]
    if any(n in on_target for n in names):
        return "rsync", WHY["rsync"]
    if any(n in staged for n in names):
        return "resume", WHY["resume"]
    if bwlimit:
        return "rsync", WHY["bwlimit"]
    return "cp", WHY["cp"]


def target_only(backup: Connection, target: Connection, t: Tree) -> list[bytes]:
    """Top-level entries of the target tree that the backup does not hold (nor the staging directory)."""
    tops = set(tree_scan.top_names(backup, t.logical))
    return [n for n in tree_scan.top_names(target, t.logical) if n not in tops and n != STAGING_DIR.encode()]


def list_present(
    backup: Connection, target: Connection, trees: list[Tree], units: list[Unit]
) -> dict[str, list[Entry]]:
    """What the target already holds of the rsync and resume units (their `before`), and, for the mail
    tree, its own top-level entries: one listing for all, before copying."""
    requests: list[tuple[str, list[bytes]]] = []
    owners: list[dict[bytes, Unit] | None] = []
    for t in trees:
        on_target = set(tree_scan.top_names(target, t.logical))
        staged = set(tree_scan.top_names(target, t.staging))
        for base, method, there in ((t.logical, "rsync", on_target), (t.staging, "resume", staged)):
            wanted = {n: u for u in units if u.tree is t and u.method == method for n in u.names if n in there}
            requests.append((base, sorted(wanted)))
            owners.append(wanted)
        requests.append((t.logical, target_only(backup, target, t) if t.owner is not None else []))
        owners.append(None)
    listings = tree_scan.scan_many(target, requests)
    extra: dict[str, list[Entry]] = {}
    for i, (tops, wanted) in enumerate(zip(listings, owners)):
        for name, entries in tops.items():
            if wanted is not None:
                wanted[name].before += entries
            else:
                extra.setdefault(trees[i // 3].name, []).extend(entries)
    return extra


def _pack(units: list[Unit], workers: int, prefix: int) -> list[list[Unit]]:
    """Units of one tree and method in balanced jobs: heaviest first, each into the lightest job."""
    if not units:
        return []
    weights = {id(u): u.weight for u in units}
    total = sum(weights.values())
    count = max(1, min(len(units), JOBS_PER_WORKER * workers, math.ceil(total / MIN_JOB_WEIGHT[units[0].method])))
    jobs: list[list[Unit]] = [[] for _ in range(count)]
    load = [0] * count
    size = [0] * count
    for u in sorted(units, key=lambda u: -weights[id(u)]):
        i = min(range(len(jobs)), key=lambda j: load[j])
        arg = sum(len(n) + prefix for n in u.names)
        if jobs[i] and size[i] + arg > JOB_ARGV_BYTES:  # too long a command line: a job of its own
            jobs.append([])
            load.append(0)
            size.append(0)
            i = len(jobs) - 1
        jobs[i].append(u)
        load[i] += weights[id(u)]
        size[i] += arg
    return sorted((j for j in jobs if j), key=lambda j: -sum(weights[id(u)] for u in j))


def make_jobs(
    route: Route, trees: list[Tree], units: list[Unit], caps: dict[str, Capabilities], dry_run: bool, bwlimit: int
) -> list[Job]:
    jobs = []
    for t in trees:
        src = route.src(t.logical)
        for method in ("cp", "resume", "rsync"):
            for packed in _pack(
                [u for u in units if u.tree is t and u.method == method], rsync_copy.WORKERS, len(src) + 2
            ):
                sources = rsync_copy.fs_paths(src, [n for u in packed for n in u.names])
                if method == "cp" and route.cp:
                    argv = rsync_copy.cp_argv(sources, route.dest(t.staging))  # options follow the worker's probe
                else:
                    into = t.logical if method == "rsync" else t.staging
                    argv = rsync_copy.rsync_argv(
                        sources,
                        route.dest(into) + "/",
                        dry_run=dry_run,
                        caps=caps[t.name],
                        owner=t.owner,
                        bwlimit_kbps=bwlimit,
                    )
                    argv = route.rsync(argv)
                jobs.append(Job(t, method, packed, argv))
    # The biggest first, so that no big job starts last; the trees interleave.
    return sorted(jobs, key=lambda j: -sum(u.weight for u in j.units))


def rsync_caps(backup: Connection, target: Connection, t: Tree, units: list[Unit]) -> tuple[Capabilities, bool]:
    """-A/-X for rsync only where the target stores them and the part rsync copies holds any.

    Returns the capabilities and whether they were dropped because the backup holds none.
    """
    caps = t.caps = rsync_copy.probe_capabilities(target, t.logical)
    synced = [e for u in units if u.tree is t and u.method != "cp" for e in u.entries]
    if synced and (caps.acls or caps.xattrs) and not any(tree_scan.xattr_kinds(backup, t.logical, synced)):
        return Capabilities(False, False, caps.notes), True
    return caps, False


# -- one job: copy, rename, check, fix the mail owner ------------------------------------------------


class Worker:
    """What the copy jobs share: where they run, apply or plan, the tracker, and the finished totals."""

    def __init__(
        self, backup: Connection, target: Connection, route: Route, apply: bool, sink: list[CommandRecord] | None
    ) -> None:
        self.backup = backup
        self.target = target
        self.route = route
        self.apply = apply
        self.sink = sink
        self.tracker = rsync_copy.Tracker()
        self.lock = threading.Lock()
        self.files_done = 0
        self.bytes_done = 0

    def __call__(self, job: Job) -> JobDone:
        done = JobDone(job)
        if job.argv[0] == "cp":
            self._cp(job, done)
        else:
            done.items = self._rsync(job)
        if self.apply:
            if job.method != "rsync":
                self._into_place(job)
            self._check(done)
        files, size = file_totals(e for u in job.units for e in u.entries)
        with self.lock:
            self.files_done += files
            self.bytes_done += size
        return done

    def _cp(self, job: Job, done: JobDone) -> None:
        t = job.tree
        # What the copied part holds decides cp's options (read-only: a dry run probes too).
        acls, xattrs = tree_scan.xattr_kinds(self.backup, t.logical, (e for u in job.units for e in u.entries))
        done.lean = not acls
        job.argv = rsync_copy.cp_argv(
            job.argv[job.argv.index("--") + 1 :],
            self.route.dest(t.staging),
            acls=acls and t.caps.acls,
            xattrs=xattrs and t.caps.xattrs,
        )
        if not self.apply:
            if self.sink is not None:
                self.sink.append(CommandRecord(job.argv, None, planned=True))
            return
        rsync_copy.run_cp(self.route.conn, job.argv, tracker=self.tracker, tree=t.name, names=job.shown, sink=self.sink)

    def _rsync(self, job: Job) -> Items:
        pids: list[int] = []

        def started(pid: int) -> None:
            pids.append(pid)
            self.tracker.started(pid, "rsync", job.tree.name, job.shown)

        try:
            return rsync_copy.run(
                self.route.conn,
                job.argv,
                label=f"{job.tree.name} data",
                sink=self.sink,
                on_start=started,
                on_progress=lambda p: self.tracker.update(p.pid, p.bytes_done),
            ).items
        finally:
            for pid in pids:
                self.tracker.finished(pid)

    def _into_place(self, job: Job) -> None:
        """Mailbox owner on what cp copied with another owner, setuid/setgid/sticky bits (cp without
        --preserve=mode leaves them out, and a change of owner clears them), then each domain renamed
        into place."""
        t = job.tree
        entries = [e for u in job.units for e in u.entries]
        if job.argv[0] == "cp":
            if t.owner is not None:
                ownership.lchown_known(self.target, t.staging, [e.rel for e in wrong_owner(entries, t.owner)], *t.owner)
            special = {e.rel: e.mode for e in entries if e.mode & 0o7000 and e.kind != "l"}
            ownership.chmod_known(self.target, t.staging, special)
        stayed = rsync_copy.move_into_place(self.target, t.staging, t.logical, job.names)
        if stayed:
            raise PreconditionFailed(
                "user data",
                f"{', '.join(tree_scan.show(n) for n in stayed)} appeared on the target while this step copied it",
                f"compare it with the staged copy in {t.staging}, move what belongs on the target into it, "
                "remove the staged copy and run the step again",
                path=t.logical,
            )

    def _check(self, done: JobDone) -> None:
        """List what the job copied on the target, compare it with the backup, and give mail its owner."""
        job, t = done.job, done.job.tree
        before = [e for u in job.units for e in u.before]
        if job.method == "rsync" and done.items is not None and done.items.total == 0 and before:
            after = before  # rsync changed nothing: the target is what was listed before copying
        else:
            listing = tree_scan.scan_many(self.target, [(t.logical, job.names)], workers=1)[0]
            after = [e for entries in listing.values() for e in entries]
        copied = [e for u in job.units for e in u.entries]
        after, leftovers = without_rsync_temps(after, {e.rel for e in copied})
        # A killed rsync's half-written copies: never counted, and removed (a new rsync picks new names).
        outermost = outermost_rels([e.rel for e in leftovers])
        rsync_copy.remove_leftovers(self.target, t.logical, outermost)
        done.leftovers = len(outermost)
        if t.owner is not None:
            wrong = wrong_owner(after, t.owner)
            if wrong:
                done.owners_fixed = ownership.lchown_known(self.target, t.logical, [e.rel for e in wrong], *t.owner)
                after = [e._replace(uid=t.owner[0], gid=t.owner[1]) for e in after]
        done.problems += compare(t, copied, after)
        loose = {n for n in job.names if n not in t.groups}
        for key, entries in _regroup(after, loose).items():
            done.totals[key] = file_totals(entries)


def _regroup(entries: list[Entry], loose: set[bytes]) -> Groups:
    groups: Groups = {}
    for e in entries:
        top = e.rel.split(b"/", 1)[0]
        groups.setdefault(LOOSE if top in loose else top, []).append(e)
    return groups


def without_rsync_temps(entries: list[Entry], known: Set[bytes] = frozenset()) -> tuple[list[Entry], list[Entry]]:
    """The listing without rsync's temporary files (a killed rsync's half-written copies), and those files.

    An entry the backup holds under the same name (`known`) is data, whatever its name looks like.
    """
    kept, temps = [], []
    for e in entries:
        (temps if rsync_copy.is_rsync_temp(e.rel) and e.rel not in known else kept).append(e)
    return kept, temps


def outermost_rels(rels: list[bytes]) -> list[bytes]:
    """The rels not inside another of them (a leftover folder goes with what it holds)."""
    given = set(rels)
    return [r for r in rels if not any(r[:i] in given for i in range(len(r)) if r[i : i + 1] == b"/")]


def _key(e: Entry, with_owner: bool) -> tuple:
    size = e.size if e.kind == "f" else 0
    return (e.rel, e.kind, size, e.link, e.mode, e.uid, e.gid) if with_owner else (e.rel, e.kind, size, e.link, e.mode)


def compare(t: Tree, src: list[Entry], after: list[Entry]) -> list[tuple[bytes, str]]:
    """Every backup entry that did not arrive intact (and, for mail, any entry with another owner)."""
    keep_owner = t.owner is None
    missing = {_key(e, keep_owner) for e in src} - {_key(e, keep_owner) for e in after}
    problems = []
    if missing:
        have = {e.rel: e for e in after}
        for e in src:
            if _key(e, keep_owner) in missing:
                problems.append(
                    (_group(t, e), f"{t.logical}/{tree_scan.show(e.rel)}: {_difference(e, have.get(e.rel))}")
                )
    if t.owner is not None:
        for e in wrong_owner(after, t.owner):
            problems.append(
                (
                    _group(t, e),
                    f"{t.logical}/{tree_scan.show(e.rel)}: owner {e.uid}:{e.gid}, "
                    f"not the mailbox owner {t.owner[0]}:{t.owner[1]}",
                )
            )
    return problems


def _difference(e: Entry, there: Entry | None) -> str:
    if there is None or there.kind != e.kind:
        return "missing on the target"
    if e.kind == "f" and there.size != e.size:
        return f"{there.size} bytes on the target, {e.size} in the backup"
    if e.kind == "l" and there.link != e.link:
        return "the link points elsewhere on the target"
    if there.mode != e.mode:
        return f"mode {there.mode:04o} on the target, {e.mode:04o} in the backup"
    return f"owner {there.uid}:{there.gid}, the backup has {e.uid}:{e.gid}"


def _group(t: Tree, e: Entry) -> bytes:
    top = e.rel.split(b"/", 1)[0]
    return top if top in t.groups or (e.kind == "d" and top == e.rel) else LOOSE
