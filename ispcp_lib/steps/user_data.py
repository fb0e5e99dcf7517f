"""user_data: copy the customers' web spaces and mailboxes from the backup, resumably and verified.

How the work is shared out, and why (benchmarks/user_data.py measures it against cp -a and rsync -a):
* One listing of the backup (tree_scan: find, two processes) feeds every check before copying (names
  with newlines, symlinks leading out, room on the disk), the plan, the owners and the verification.
* The plan gives every domain a method (rsync_copy): cp into staging and a rename for a domain that
  is new on the target (the usual case in a recovery), rsync for what is already there. Domains that
  share hard links are copied by one command, so the links stay links. Each cp job first looks for
  POSIX ACLs in what it copies (one listxattr per entry); where there are none, cp runs without its
  ACL work (a third of its time on Maildirs), and rsync likewise drops -A/-X.
* Domains are copied by two jobs at a time. Each job then checks what it copied while the other one
  is still copying: a domain that cp created is checked entry by entry against the backup's listing
  (one lstat each, no directory to read: nothing else can have written into it); a domain that rsync
  merged is listed again, since it may also hold the target's own files.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import CommandRecord, Result
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.system import ownership, rsync_copy, tree_scan
from ispcp_lib.system.rsync_copy import STAGING_DIR, Capabilities, Items, Progress, ProgressHook, human
from ispcp_lib.system.tree_scan import Entry, Groups

TITLE = "Restore the web and mail data"
GUIDE = "the paragraph after the system accounts, on copying back /var/www/virtual and /var/mail/virtual"
EXPLANATION = """
With the database and the system accounts back, the customers' files can return: every web space
under `/var/www/virtual/<domain>` and every mailbox under `/var/mail/virtual/<domain>/<user>`. The
guide is relaxed about the web trees, because ispCP sets their owners itself when it rebuilds the
domains later, but strict about the mail: every file and directory of the mail tree must belong to
the mailbox user and group (vmail:mail), or the mail server cannot read or deliver.

The copy keeps numeric owners, permissions, times, hard links, ACLs and extended attributes (what
`rsync -aHAX --numeric-ids` keeps), copies symlinks as links and never follows them, and never
deletes anything on the target. A domain that is not on the target yet is copied with `cp` into a
hidden staging directory next to it and then renamed into place, so it appears whole or not at all.
A domain that is already there (from an earlier attempt, or with files of the new server) is
completed with rsync. Two domains are copied at a time. The step can be interrupted and started
again: rsync completes what was half done (a staged copy too, before its rename), and complete files
are not copied twice. The mail tree gets the mailbox owner (the IDs recorded in the old
`ispcp.conf`, not the guide's example numbers). Before copying, the step checks names, symlinks and
the room on the target; afterwards it compares files and bytes per domain between backup and target.

A dry run lists the method for every domain, and what rsync would transfer where rsync is used. The
FastCGI starter directory (`/var/www/fcgi`) is not copied: ispCP writes every starter again from its
templates.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "user_data_bwlimit",
        int,
        0,
        "limit the user-data copy to this many KiB/s (every domain then goes through rsync "
        "--bwlimit; 0 means no limit)",
        minimum=0,
    ),
    Param(
        "user_data_allow_newline_names",
        bool,
        False,
        "copy files whose names contain a newline instead of refusing them",
    ),
    Param(
        "user_data_progress_interval",
        float,
        5,
        "seconds between the plain progress lines of the user-data copy",
        minimum=0.1,
    ),
)

DEFAULT_WWW = "/var/www/virtual"
DEFAULT_MAIL = "/var/mail/virtual"
# Job sizes in entries (a file, directory or link; each 64 KiB of data counts as one more). Smaller
# jobs balance the two workers better, but each costs a process start or three (rsync).
MIN_JOB_WEIGHT = {"cp": 1000, "resume": 1000, "rsync": 5000}
JOBS_PER_WORKER = 8
JOB_ARGV_BYTES = 256 * 1024
LOOSE = b""  # the group key of entries directly in a tree's top directory
_MODE_OF = {
    "f": stat.S_IFREG,
    "d": stat.S_IFDIR,
    "l": stat.S_IFLNK,
    "p": stat.S_IFIFO,
    "s": stat.S_IFSOCK,
    "b": stat.S_IFBLK,
    "c": stat.S_IFCHR,
}
WHY = {
    "cp": "new on the target: cp -a into the staging directory, then renamed into place",
    "resume": "an interrupted copy waits in the staging directory: rsync completes it, then it is renamed into place",
    "rsync": "already on the target: rsync adds and updates, deletes nothing",
    "loose": "entries directly in the tree's top directory: rsync",
    "bwlimit": "user_data_bwlimit is set: rsync, the only copy that can limit its rate",
}


@dataclass
class Tree:
    name: str  # "web" or "mail"
    logical: str
    src: Path
    dest: Path
    owner: tuple[int, int] | None  # forced owner (mail); None keeps the backup's numeric owners
    root: Entry | None = None  # the backup's top directory itself
    groups: Groups = field(default_factory=dict)  # the backup's entries per domain; loose ones under LOOSE
    caps: Capabilities = field(default_factory=lambda: Capabilities(True, True))  # what the target stores

    @property
    def staging(self) -> Path:
        return self.dest / STAGING_DIR


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
        return sum(len(self.tree.groups[k]) + _file_totals(self.tree.groups[k])[1] // 65536 for k in self.keys)


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
    partial: int = 0  # entries left in .rsync-partial/ directories
    lean: bool = False  # cp ran without --preserve=mode: no ACL in what it copied


def settings(ctx: Context, result: Result) -> tuple[IspcpConf | None, str, str, tuple[int, int]]:
    """The old ispcp.conf's paths and mailbox IDs (the target's, or ispCP's defaults, when it is missing)."""
    conf = bl.load_old_conf(ctx)
    if conf is None:
        target = ctx.t("/etc/ispcp/ispcp.conf")
        conf = IspcpConf.load(target) if target.is_file() else None
        result.warn(
            "the backup has no etc/ispcp/ispcp.conf: paths and mailbox IDs come from "
            + ("the target's ispcp.conf" if conf else "ispCP's defaults (vmail 1004, mail 8)")
        )
    get = (lambda k, d: conf.get(k) or d) if conf else (lambda k, d: d)
    ids = []
    for key, default in (("MTA_MAILBOX_UID", "1004"), ("MTA_MAILBOX_GID", "8")):
        value = get(key, default)
        if not value.isdigit():
            raise InputError(
                key,
                f"is {value!r}, not a number",
                f"set {key} in the old ispcp.conf to the numeric ID",
                path=conf.path if conf else None,
            )
        ids.append(int(value))
    return conf, get("APACHE_WWW_DIR", DEFAULT_WWW), get("MTA_VIRTUAL_MAIL_DIR", DEFAULT_MAIL), (ids[0], ids[1])


def _trees(ctx: Context, result: Result) -> list[Tree]:
    _conf, www, mail, mailbox = settings(ctx, result)
    trees = []
    for name, logical, owner in (("web", www, None), ("mail", mail, mailbox)):
        src = ctx.b(logical)  # refuses a tree whose path escapes the backup through a symlink
        if not src.is_dir():
            result.warn(f"the backup has no {name} tree {logical}: nothing of it can be restored")
            continue
        dest = ctx.t(logical)
        if dest.is_symlink():
            result.warn(
                f"{ctx.display_path(dest)} on the target is a symlink to {os.readlink(dest)}: "
                "the data goes where it points"
            )
        trees.append(Tree(name, logical, src, dest, owner))
    return trees


def _list_backup(trees: list[Tree]) -> None:
    """The one listing of the backup: every tree, both find processes at work."""
    listings = tree_scan.scan_many([(t.src, tree_scan.top_names(t.src)) for t in trees])
    for t, tops in zip(trees, listings):
        t.root = tree_scan.root_entry(t.src)
        t.groups = _grouped(tops)


def _grouped(tops: Groups) -> Groups:
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


def _all_entries(t: Tree) -> Iterable[Entry]:
    return (e for entries in t.groups.values() for e in entries)


# -- checks before copying, all from the one listing of the backup ---------------------------------


def _refuse_newline_names(ctx: Context, trees: list[Tree], result: Result) -> None:
    odd = [(t, e) for t in trees for e in tree_scan.with_newlines(_all_entries(t))]
    if not odd:
        return
    listed = "; ".join(f"{t.logical}/{tree_scan.show(e.rel)}" for t, e in odd[:10])
    if ctx.param("user_data_allow_newline_names"):
        result.warn(
            f"{len(odd)} name(s) with a newline are copied as they are (allowed by "
            f"user_data_allow_newline_names): {listed}"
        )
        return
    raise InputError(
        "backup file names",
        f"{len(odd)} name(s) contain a newline (shown as \\n), which breaks line-based tools and scripts "
        f"on the new server: {listed}",
        "rename them in the backup (e.g. with a file manager or `mv`), or set user_data_allow_newline_names = True "
        "to copy them as they are",
        path=str(odd[0][0].src),
    )


def _warn_links(trees: list[Tree], result: Result) -> None:
    for t in trees:
        if STAGING_DIR.encode() in t.groups:
            raise InputError(
                "backup tree",
                f"holds an entry named {STAGING_DIR}, the name this step uses for its staging directory",
                "rename it in the backup",
                path=str(t.src / STAGING_DIR),
            )
        escapes = list(tree_scan.escaping_links(_all_entries(t), t.logical))
        if escapes:
            shown = "; ".join(
                f"{t.logical}/{tree_scan.show(e.rel)} -> {tree_scan.show(e.link)}"
                + (f" (leads to {dest})" if dest != tree_scan.show(e.link) else "")
                for e, dest in escapes[:10]
            )
            result.warn(
                f"{len(escapes)} symlink(s) in the {t.name} tree point outside {t.logical}; they are copied "
                f"as links and never followed: {shown}"
            )
        devices = [e for e in _all_entries(t) if e.kind in ("b", "c")]
        if devices:
            result.warn(
                f"{len(devices)} device file(s) in the {t.name} tree (unusual in customer data): "
                + "; ".join(tree_scan.show(e.rel) for e in devices[:10])
            )


def _need(src: Iterable[Entry], dest: list[Entry], block: int) -> tuple[int, int, int]:
    """Bytes (in whole filesystem blocks) and inodes the copy adds, and the largest file (rsync's temp copy)."""
    have = {e.rel: e for e in dest}
    need = inodes = largest = 0
    for e in src:
        there = have.get(e.rel) if have else None
        if e.kind == "f":
            largest = max(largest, e.size)
            if there is None or there.kind != "f" or there.size != e.size:
                need += -(-e.size // block) * block
                inodes += there is None
        elif there is None:
            inodes += 1
            need += block if e.kind == "d" or (e.kind == "l" and len(e.link) > 59) else 0
    return need, inodes, largest


def _check_space(ctx: Context, trees: list[Tree], units: list[Unit], result: Result) -> None:
    """Room for the data on every target filesystem, checked before a single byte is copied."""
    by_fs: dict[int, dict] = {}
    for t in trees:
        probe = rsync_copy.existing_ancestor(t.dest)
        vfs = os.statvfs(probe)
        slot = by_fs.setdefault(
            os.stat(probe).st_dev, {"probe": probe, "vfs": vfs, "need": 0, "inodes": 0, "largest": 0, "trees": []}
        )
        for u in (u for u in units if u.tree is t):
            need, inodes, largest = _need(u.entries, u.before, vfs.f_frsize or 4096)
            slot["need"] += need
            slot["inodes"] += inodes
            if u.method != "cp":  # rsync writes a temporary copy of a file before it renames it
                slot["largest"] = max(slot["largest"], largest)
        slot["trees"].append(ctx.display_path(t.dest))
    rows = []
    for slot in by_fs.values():
        free = shutil.disk_usage(slot["probe"]).free
        vfs = slot["vfs"]
        need = slot["need"] + slot["largest"]
        rows.append(
            {
                "target": ", ".join(slot["trees"]),
                "needed": human(need),
                "free": human(free),
                "inodes needed": slot["inodes"],
                "inodes free": vfs.f_favail if vfs.f_files else "n/a",
            }
        )
        where = " and ".join(slot["trees"])
        if need > free:
            result.table("Room on the target", pd.DataFrame(rows))
            raise PreconditionFailed(
                "target disk",
                f"{where} needs about {human(need)} for the backup's data, but its filesystem "
                f"has only {human(free)} free",
                "free space there or mount a bigger disk, then run the step again",
                path=str(slot["probe"]),
            )
        if vfs.f_files and slot["inodes"] > vfs.f_favail:
            result.table("Room on the target", pd.DataFrame(rows))
            raise PreconditionFailed(
                "target disk",
                f"{where} needs {slot['inodes']} new files and directories, but its filesystem has "
                f"only {vfs.f_favail} free inodes",
                "use a filesystem with more inodes, then run the step again",
                path=str(slot["probe"]),
            )
    result.table("Room on the target", pd.DataFrame(rows))


# -- the plan: a method for every domain -----------------------------------------------------------


def _plan_tree(ctx: Context, t: Tree, bwlimit: int, result: Result) -> list[Unit]:
    on_target = set(tree_scan.top_names(t.dest)) - {STAGING_DIR.encode()}
    staged = set(tree_scan.top_names(t.staging)) if t.dest.is_dir() else set()
    loose_names = [e.rel for e in t.groups.get(LOOSE, []) if b"/" not in e.rel]
    unit_of: dict[bytes, frozenset[bytes]] = {k: frozenset([k]) for k in t.groups}
    for linked in tree_scan.linked_groups(t.groups):  # hard links across domains: one command for them
        for k in linked:
            unit_of[k] = frozenset(linked)
    units: list[Unit] = []
    for keys in sorted(set(unit_of.values()), key=sorted):
        ordered = sorted(keys)
        names = [k for k in ordered if k != LOOSE] + (loose_names if LOOSE in keys else [])
        if LOOSE in keys:
            method, why = "rsync", WHY["loose"]
        elif any(n in on_target for n in names):
            method, why = "rsync", WHY["rsync"]
        elif any(n in staged for n in names):
            method, why = "resume", WHY["resume"]
        elif bwlimit:
            method, why = "rsync", WHY["bwlimit"]
        else:
            method, why = "cp", WHY["cp"]
        if len(keys) > 1:
            why += "; they share hard links, so one command copies them and keeps the links"
        units.append(Unit(t, ordered, names, method, why))
    orphans = sorted(n for n in staged if not any(n in u.names and u.method == "resume" for u in units))
    if orphans:
        result.warn(
            f"{len(orphans)} entries in {ctx.display_path(t.staging)} are copies of an earlier, interrupted "
            "run that this run does not complete (the domain is on the target now, or no longer in the "
            "backup): "
            + ", ".join(tree_scan.show(n) for n in orphans[:10])
            + ". Compare them with the target and remove them by hand."
        )
    return units


def _list_present(trees: list[Tree], units: list[Unit]) -> dict[str, list[Entry]]:
    """What the target already holds of the rsync and resume units (their `before`), and, for the mail
    tree, its own top-level entries: one listing for all, before copying."""
    requests: list[tuple[Path, list[bytes]]] = []
    owners: list[dict[bytes, Unit] | None] = []
    for t in trees:
        on_target = set(tree_scan.top_names(t.dest))
        staged = set(tree_scan.top_names(t.staging)) if t.dest.is_dir() else set()
        for base, method, there in ((t.dest, "rsync", on_target), (t.staging, "resume", staged)):
            wanted = {n: u for u in units if u.tree is t and u.method == method for n in u.names if n in there}
            requests.append((base, sorted(wanted)))
            owners.append(wanted)
        requests.append((t.dest, _target_only(t) if t.owner is not None else []))
        owners.append(None)
    listings = tree_scan.scan_many(requests)
    extra: dict[str, list[Entry]] = {}
    for i, (tops, wanted) in enumerate(zip(listings, owners)):
        for name, entries in tops.items():
            if wanted is not None:
                wanted[name].before += entries
            else:
                extra.setdefault(trees[i // 3].name, []).extend(entries)
    return extra


def _target_only(t: Tree) -> list[bytes]:
    """Top-level entries of the target tree that the backup does not hold (nor the staging directory)."""
    tops = set(tree_scan.top_names(t.src))
    return [n for n in tree_scan.top_names(t.dest) if n not in tops and n != STAGING_DIR.encode()]


def _pack(units: list[Unit], workers: int) -> list[list[Unit]]:
    """Units of one tree and method in balanced jobs: heaviest first, each into the lightest job."""
    if not units:
        return []
    weights = {id(u): u.weight for u in units}
    total = sum(weights.values())
    count = max(1, min(len(units), JOBS_PER_WORKER * workers, math.ceil(total / MIN_JOB_WEIGHT[units[0].method])))
    jobs: list[list[Unit]] = [[] for _ in range(count)]
    load = [0] * count
    size = [0] * count
    prefix = len(os.fsencode(units[0].tree.src)) + 2
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


def _jobs(
    trees: list[Tree], units: list[Unit], caps: dict[str, Capabilities], dry_run: bool, bwlimit: int, workers: int
) -> list[Job]:
    jobs = []
    for t in trees:
        for method in ("cp", "resume", "rsync"):
            for packed in _pack([u for u in units if u.tree is t and u.method == method], workers):
                sources = rsync_copy.fs_paths(t.src, [n for u in packed for n in u.names])
                if method == "cp":
                    argv = rsync_copy.cp_argv(sources, str(t.staging))  # its options follow the worker's probe
                else:
                    into = t.staging if method == "resume" else t.dest
                    argv = rsync_copy.rsync_argv(
                        sources,
                        str(into) + "/",
                        dry_run=dry_run,
                        caps=caps[t.name],
                        owner=t.owner,
                        bwlimit_kbps=bwlimit,
                    )
                jobs.append(Job(t, method, packed, argv))
    # The biggest first, so that no big job starts last; the trees interleave.
    return sorted(jobs, key=lambda j: -sum(u.weight for u in j.units))


def _rsync_caps(t: Tree, units: list[Unit], result: Result) -> Capabilities:
    """-A/-X for rsync only where the target stores them and the part rsync copies holds any."""
    caps = t.caps = rsync_copy.probe_capabilities(t.dest)
    for note in caps.notes:
        result.warn(note)
    synced = [e for u in units if u.tree is t and u.method != "cp" for e in u.entries]
    if synced and (caps.acls or caps.xattrs) and not tree_scan.holds_xattrs(t.src, synced):
        result.note(
            f"The {len(synced)} entries of the {t.name} tree that rsync copies carry no ACLs or extended "
            "attributes: rsync runs without -A/-X, which saves it a lookup per file on both sides."
        )
        return Capabilities(False, False, caps.notes)
    return caps


def _wrong_owner(entries: Iterable[Entry], owner: tuple[int, int]) -> list[Entry]:
    uid, gid = owner
    return [e for e in entries if e.uid != uid or e.gid != gid]


def _file_totals(entries: Iterable[Entry]) -> tuple[int, int]:
    sizes = [e.size for e in entries if e.kind == "f"]
    return len(sizes), sum(sizes)


# -- one job: copy, rename, check, fix the mail owner ------------------------------------------------


class _Worker:
    """What the copy jobs share: apply or plan, the tracker, and the totals of the finished jobs."""

    def __init__(self, ctx: Context, apply: bool) -> None:
        self.apply = apply
        self.sink = ctx.runner.sink
        self.tracker = rsync_copy.Tracker()
        self.lock = threading.Lock()
        self.files_done = 0
        self.bytes_done = 0

    def __call__(self, job: Job) -> JobDone:
        done = JobDone(job)
        t = job.tree
        if job.method == "cp":
            # What the copied part holds decides cp's options (read-only: a dry run probes too).
            acls, xattrs = tree_scan.xattr_kinds(t.src, (e for u in job.units for e in u.entries))
            done.lean = not acls
            job.argv = rsync_copy.cp_argv(
                job.argv[job.argv.index("--") + 1 :],
                str(t.staging),
                acls=acls and t.caps.acls,
                xattrs=xattrs and t.caps.xattrs,
            )
            if not self.apply:
                self._record(CommandRecord(job.argv, None, planned=True))
            else:
                rsync_copy.run_cp(job.argv, tracker=self.tracker, tree=t.name, names=job.shown, sink=self.sink)
        else:
            pids: list[int] = []

            def started(pid: int) -> None:
                pids.append(pid)
                self.tracker.started(pid, "rsync", t.name, job.shown)

            try:
                done.items = rsync_copy.run(
                    job.argv,
                    label=f"{t.name} data",
                    sink=self.sink,
                    on_start=started,
                    on_progress=lambda p: self.tracker.update(p.pid, p.bytes_done),
                ).items
            finally:
                for pid in pids:
                    self.tracker.finished(pid)
        if self.apply:
            if job.method != "rsync":
                self._into_place(job)
            if job.method == "cp":
                _check_created(done)
            else:
                _check_merged(done)
        files, size = _file_totals(e for u in job.units for e in u.entries)
        with self.lock:
            self.files_done += files
            self.bytes_done += size
        return done

    def _record(self, rec: CommandRecord) -> None:
        if self.sink is not None:
            self.sink.append(rec)

    def _into_place(self, job: Job) -> None:
        """Mailbox owner on what cp copied with another owner, setuid/setgid/sticky bits (cp without
        --preserve=mode leaves them out, and a change of owner clears them), then each domain renamed
        into place."""
        t = job.tree
        if job.method == "cp":
            base = os.fsencode(t.staging)
            if t.owner is not None:
                ownership.lchown_known(
                    t.staging, [e.rel for u in job.units for e in _wrong_owner(u.entries, t.owner)], *t.owner
                )
            for e in (e for u in job.units for e in u.entries if e.mode & 0o7000 and e.kind != "l"):
                os.chmod(b"%s/%s" % (base, e.rel), e.mode)
        staging, dest = os.fsencode(t.staging), os.fsencode(t.dest)
        for name in job.names:
            try:
                rsync_copy.rename_noreplace(os.path.join(staging, name), os.path.join(dest, name))
            except FileExistsError:
                raise PreconditionFailed(
                    "user data",
                    f"{tree_scan.show(name)} appeared on the target while this step copied it",
                    f"compare it with the staged copy in {t.staging}, move what belongs on the target into it, "
                    "remove the staged copy and run the step again",
                    path=os.fsdecode(os.path.join(dest, name)),
                ) from None


def _check_created(done: JobDone) -> None:
    """A domain that cp created and the step renamed into place holds exactly what cp copied: check each
    backup entry there (kind, size, link, owner) with one lstat, no directory to read."""
    t = done.job.tree
    base = os.fsencode(t.dest)
    want = t.owner
    for u in done.job.units:
        for key in u.keys:
            files = size = 0
            for e in t.groups[key]:
                path = b"%s/%s" % (base, e.rel)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    done.problems.append((key, f"{t.logical}/{tree_scan.show(e.rel)}: missing on the target"))
                    continue
                owner = (st.st_uid, st.st_gid)
                if stat.S_IFMT(st.st_mode) != _MODE_OF.get(e.kind):
                    done.problems.append(
                        (
                            key,
                            f"{t.logical}/{tree_scan.show(e.rel)}: another kind of entry on the "
                            "target than in the backup",
                        )
                    )
                    continue
                if stat.S_IMODE(st.st_mode) != e.mode:
                    done.problems.append(
                        (
                            key,
                            f"{t.logical}/{tree_scan.show(e.rel)}: mode "
                            f"{stat.S_IMODE(st.st_mode):04o} on the target, {e.mode:04o} in the "
                            "backup",
                        )
                    )
                if e.kind == "f":
                    files += 1
                    size += st.st_size
                    if st.st_size != e.size:
                        done.problems.append(
                            (
                                key,
                                f"{t.logical}/{tree_scan.show(e.rel)}: {st.st_size} bytes on "
                                f"the target, {e.size} in the backup",
                            )
                        )
                elif e.kind == "l" and os.readlink(path) != e.link:
                    done.problems.append(
                        (key, f"{t.logical}/{tree_scan.show(e.rel)}: the link points elsewhere on the target")
                    )
                if want is not None and owner != want:
                    os.chown(path, *want, follow_symlinks=False)
                    done.owners_fixed += 1
                elif want is None and owner != (e.uid, e.gid):
                    done.problems.append(
                        (
                            key,
                            f"{t.logical}/{tree_scan.show(e.rel)}: owner {owner[0]}:{owner[1]}, "
                            f"the backup has {e.uid}:{e.gid}",
                        )
                    )
            done.totals[key] = (files, size)


def _check_merged(done: JobDone) -> None:
    """A domain that rsync merged may also hold the target's own files: list it again and compare."""
    job, t = done.job, done.job.tree
    before = [e for u in job.units for e in u.before]
    if job.method == "rsync" and done.items is not None and done.items.total == 0 and before:
        after = before  # rsync changed nothing: the target is what was listed before copying
    else:
        after = [e for entries in tree_scan.scan_many([(t.dest, job.names)], workers=1)[0].values() for e in entries]
    after, done.partial = _without_partial(after)
    if t.owner is not None:
        wrong = _wrong_owner(after, t.owner)
        if wrong:
            done.owners_fixed = ownership.lchown_known(t.dest, [e.rel for e in wrong], *t.owner)
            after = [e._replace(uid=t.owner[0], gid=t.owner[1]) for e in after]
    done.problems += _compare(t, [e for u in job.units for e in u.entries], after)
    loose = {n for n in job.names if n not in t.groups}
    for key, entries in _regroup(after, loose).items():
        done.totals[key] = _file_totals(entries)


def _regroup(entries: list[Entry], loose: set[bytes]) -> Groups:
    groups: Groups = {}
    for e in entries:
        top = e.rel.split(b"/", 1)[0]
        groups.setdefault(LOOSE if top in loose else top, []).append(e)
    return groups


def _without_partial(entries: list[Entry]) -> tuple[list[Entry], int]:
    marker = rsync_copy.PARTIAL_DIR.encode()
    if not any(marker in e.rel for e in entries):
        return entries, 0
    kept = [e for e in entries if marker not in e.rel.split(b"/")]
    return kept, len(entries) - len(kept)


def _key(e: Entry, with_owner: bool) -> tuple:
    size = e.size if e.kind == "f" else 0
    return (e.rel, e.kind, size, e.link, e.mode, e.uid, e.gid) if with_owner else (e.rel, e.kind, size, e.link, e.mode)


def _compare(t: Tree, src: list[Entry], after: list[Entry]) -> list[tuple[bytes, str]]:
    """Every backup entry that did not arrive intact (and, for mail, any entry with another owner)."""
    keep_owner = t.owner is None
    missing = {_key(e, keep_owner) for e in src} - {_key(e, keep_owner) for e in after}
    problems = []
    if missing:
        have = {e.rel: e for e in after}
        for e in src:
            if _key(e, keep_owner) not in missing:
                continue
            there = have.get(e.rel)
            if there is None or there.kind != e.kind:
                text = "missing on the target"
            elif e.kind == "f" and there.size != e.size:
                text = f"{there.size} bytes on the target, {e.size} in the backup"
            elif e.kind == "l" and there.link != e.link:
                text = "the link points elsewhere on the target"
            elif there.mode != e.mode:
                text = f"mode {there.mode:04o} on the target, {e.mode:04o} in the backup"
            else:
                text = f"owner {there.uid}:{there.gid}, the backup has {e.uid}:{e.gid}"
            problems.append((_group(t, e), f"{t.logical}/{tree_scan.show(e.rel)}: {text}"))
    if t.owner is not None:
        for e in _wrong_owner(after, t.owner):
            problems.append(
                (
                    _group(t, e),
                    f"{t.logical}/{tree_scan.show(e.rel)}: owner {e.uid}:{e.gid}, "
                    f"not the mailbox owner {t.owner[0]}:{t.owner[1]}",
                )
            )
    return problems


def _group(t: Tree, e: Entry) -> bytes:
    top = e.rel.split(b"/", 1)[0]
    return top if top in t.groups or (e.kind == "d" and top == e.rel) else LOOSE


# -- the step ----------------------------------------------------------------------------------------


@action("user_data")
def run(ctx: Context, result: Result, progress: ProgressHook | None = None) -> None:
    """progress: called with an rsync_copy.Progress a few times a second (a live bar); headless runs log lines."""
    started = time.monotonic()
    bl.check_backup_root(ctx)
    trees = _trees(ctx, result)
    result.note(
        "The FastCGI starters (PHP_STARTER_DIR, /var/www/fcgi) are not copied: ispCP writes each domain's "
        "starter again from its templates when ispcp-update rebuilds the domains, and register_accounts "
        "sets their owners."
    )
    if not trees:
        result.noop_reason = "the backup holds neither a web nor a mail tree"
        return
    _list_backup(trees)
    _refuse_newline_names(ctx, trees, result)
    _warn_links(trees, result)
    bwlimit = ctx.param("user_data_bwlimit")
    units = [u for t in trees for u in _plan_tree(ctx, t, bwlimit, result)]
    extra_before = _list_present(trees, units)
    _check_space(ctx, trees, units, result)
    caps = {t.name: _rsync_caps(t, units, result) for t in trees}
    _plan_changes(ctx, trees, units, extra_before, result)

    worker = _Worker(ctx, ctx.apply)
    if ctx.apply:
        for t in trees:
            t.dest.mkdir(parents=True, exist_ok=True)
            if any(u.tree is t and u.method == "cp" for u in units) and not t.staging.is_dir():
                t.staging.mkdir(mode=0o700)  # root only: nothing staged is reachable before its rename
    jobs = _jobs(trees, units, caps, not ctx.apply, bwlimit, rsync_copy.WORKERS)
    outcome = rsync_copy.run_jobs(
        jobs, worker, tracker=worker.tracker, tick=_ticker(ctx, worker, units, progress, started)
    )
    _record_rsync_changes(ctx, trees, outcome.results, result)
    cps = [d for d in outcome.results if d.job.method == "cp"]
    if any(d.lean for d in cps):
        result.note(
            f"{sum(d.lean for d in cps)} of {len(cps)} cp commands found no POSIX ACL in what they copy "
            "(checked entry by entry): they keep owners, times and hard links but leave out cp's ACL work, "
            "and the permission bits come from the umask 0 they run with (setuid, setgid and sticky bits "
            "are set afterwards from the backup's listing)."
        )
    if outcome.failure is not None:
        raise outcome.failure

    rows: list[dict] = []
    problems: list[str] = []
    for t in trees:
        if ctx.apply and t.staging.is_dir() and not any(os.scandir(t.staging)):
            t.staging.rmdir()  # our own, now empty
        # The tree's own directory last: every rename into it changed its time.
        attrs = (
            rsync_copy.dir_attr_differences(t.src, t.dest, t.owner, t.caps)
            if t.dest.is_dir()
            else ["owner, mode and time (it is created)"]
        )
        if attrs:
            result.change(f"give {ctx.display_path(t.dest)} itself the backup's " + ", ".join(attrs))
            if ctx.apply:
                rsync_copy.copy_dir_attrs(t.src, t.dest, t.owner, t.caps)
        if ctx.apply:
            t_rows, t_problems = _verification(ctx, t, units, outcome.results, result)
            rows += t_rows
            problems += t_problems
    if ctx.apply:
        result.table("Verification: backup vs target, per domain", pd.DataFrame(rows))
    else:
        result.table(
            "The plan: method and what would be copied, per domain (dry run)",
            pd.DataFrame(_plan_rows(units, outcome.results)),
        )
    files, size = _file_totals(e for t in trees for e in _all_entries(t))
    methods = Counter(u.method for u in units for _ in u.keys)
    ctx.log(
        f"user data: {files} files ({human(size)}) {'copied and verified' if ctx.apply else 'planned'} in "
        f"{time.monotonic() - started:.1f} s; domains by method: "
        + ", ".join(f"{m} {n}" for m, n in sorted(methods.items()))
    )
    result.summary = f"{len(trees)} tree(s), {files} files, {human(size)} in the backup; " + (
        f"{len(problems)} entries differ after the copy"
        if problems
        else ("verified on the target" if ctx.apply else "dry run: nothing copied")
    )
    result.data.update({"trees": [t.logical for t in trees], "files": files, "bytes": size, "methods": dict(methods)})
    if problems:
        raise PreconditionFailed(
            "user data verification",
            f"{len(problems)} entries differ between backup and target: " + "; ".join(problems[:10]),
            "run the step again (the copy resumes); if the difference stays, check the "
            "target disk (dmesg, df) and the copy commands' output above",
        )
    if not result.changes:
        result.noop_reason = (
            f"nothing to copy: all {files} files ({human(size)}) of the backup's trees are on the "
            "target (rsync found nothing to transfer: same size, time and owners), the trees' own "
            "directories match the backup, and the mail tree belongs to the mailbox user; nothing "
            "on the target was deleted"
        )


def _plan_changes(
    ctx: Context, trees: list[Tree], units: list[Unit], extra_before: dict[str, list[Entry]], result: Result
) -> None:
    """The changes known before copying: domains copied with cp, staged copies completed, owners to set."""
    for t in trees:
        new = [u for u in units if u.tree is t and u.method == "cp"]
        if new:
            files, size = _file_totals(e for u in new for e in u.entries)
            result.change(
                f"copy {sum(len(u.names) for u in new)} domain(s) that are new on the target with cp -a into "
                f"{ctx.display_path(t.staging)}, then rename each into place: {files} files, {human(size)}"
            )
        resumed = [u for u in units if u.tree is t and u.method == "resume"]
        if resumed:
            result.change(
                f"complete {sum(len(u.names) for u in resumed)} interrupted staged copies in "
                f"{ctx.display_path(t.staging)} with rsync, then rename each into place"
            )
        if t.owner is None:
            continue
        from_backup = sum(len(_wrong_owner(u.entries, t.owner)) for u in new)
        if from_backup:
            result.change(
                f"give {from_backup} entries that the backup holds with another owner the mailbox owner "
                f"{t.owner[0]}:{t.owner[1]} (in staging, before the rename)"
            )
        synced = [u for u in units if u.tree is t and u.method == "rsync"]
        in_backup = {e.rel for u in synced for e in u.entries}
        theirs = [e for u in synced for e in _wrong_owner(u.before, t.owner) if e.rel not in in_backup]
        theirs += _wrong_owner(extra_before.get(t.name, []), t.owner)
        if theirs:
            result.change(
                f"set the mailbox owner {t.owner[0]}:{t.owner[1]} on {len(theirs)} entries of "
                f"{ctx.display_path(t.dest)} that are not in the backup: "
                + ", ".join(tree_scan.show(e.rel) for e in theirs[:5])
            )


def _record_rsync_changes(ctx: Context, trees: list[Tree], done: list[JobDone], result: Result) -> None:
    for t in trees:
        items = Items()
        for d in done:
            if d.job.tree is t and d.job.method == "rsync" and d.items is not None:
                items.merge(d.items)
        if items.total:
            result.change(f"rsync into {ctx.display_path(t.dest)} (domains already there): {items.describe()}")


def _ticker(
    ctx: Context, worker: _Worker, units: list[Unit], hook: ProgressHook | None, started: float
) -> Callable[[], None]:
    """Called by run_jobs a few times a second: the hook, a bar in JupyterLab, a plain line every interval."""
    files_total, bytes_total = _file_totals(e for u in units for e in u.entries)
    interval = ctx.param("user_data_progress_interval")
    bar = None
    if getattr(ctx, "interactive_session", None) is not None:
        from ispcp_lib.runbook.interactive import progress_bar

        bar = progress_bar(ctx, max(bytes_total, 1), "user data")
    clock = {"log": time.monotonic(), "high": 0}

    def tick() -> None:
        now = time.monotonic()
        running = worker.tracker.snapshot()
        with worker.lock:
            files, done_bytes = worker.files_done, worker.bytes_done
        # Never backwards: a finished copy leaves the running list a moment before its job is counted.
        clock["high"] = max(clock["high"], min(bytes_total, done_bytes + sum(r.bytes_done for r in running)))
        p = Progress("user data", clock["high"], bytes_total, files, files_total, now - started, running)
        if hook is not None:
            hook(p)
        if bar is not None:
            bar(p.bytes_done, f"{human(p.bytes_done)} of {human(bytes_total)}")
        if now - clock["log"] >= interval:
            clock["log"] = now
            ctx.log(p.line())

    return tick


def _shown(key: bytes) -> str:
    return tree_scan.show(key) if key != LOOSE else "(top)"


def _plan_rows(units: list[Unit], done: list[JobDone]) -> list[dict]:
    todo: dict[tuple[str, str], int] = {}
    for d in done:
        for domain, n in d.items.by_domain.items() if d.items is not None else ():
            todo[(d.job.tree.name, domain)] = todo.get((d.job.tree.name, domain), 0) + n
    rows = []
    for u in units:
        for key in u.keys:
            files, size = _file_totals(u.tree.groups[key])
            n = len(u.tree.groups[key]) if u.method == "cp" else todo.get((u.tree.name, _shown(key)), 0)
            rows.append(
                {
                    "tree": u.tree.name,
                    "domain": _shown(key),
                    "method": u.method,
                    "why": u.reason,
                    "backup files": files,
                    "backup bytes": size,
                    "items to transfer": n,
                }
            )
    return rows


def _verification(
    ctx: Context, t: Tree, units: list[Unit], done: list[JobDone], result: Result
) -> tuple[list[dict], list[str]]:
    """Files and bytes per domain, backup vs target, from the jobs' checks; the tree's own directory and
    the target's own top-level entries are checked here."""
    totals: dict[bytes, tuple[int, int]] = {}
    problems: list[tuple[bytes, str]] = []
    partial = fixed = 0
    for d in (d for d in done if d.job.tree is t):
        for key, (files, size) in d.totals.items():
            have = totals.get(key, (0, 0))
            totals[key] = (have[0] + files, have[1] + size)
        problems += d.problems
        partial += d.partial
        fixed += d.owners_fixed
    if partial:
        result.warn(
            f"{partial} entries remain in {rsync_copy.PARTIAL_DIR}/ directories under "
            f"{ctx.display_path(t.dest)} (an interrupted file rsync has not finished)"
        )
    assert t.root is not None
    problems += _compare(t, [t.root], [tree_scan.root_entry(t.dest)])
    own = tree_scan.scan_many([(t.dest, _target_only(t))])[0]
    if t.owner is not None:
        wrong = _wrong_owner((e for entries in own.values() for e in entries), t.owner)
        if wrong:
            fixed += ownership.lchown_known(t.dest, [e.rel for e in wrong], *t.owner)
        if fixed:
            result.note(
                f"After copying, {fixed} entries under {ctx.display_path(t.dest)} got the mailbox owner "
                f"{t.owner[0]}:{t.owner[1]}: files of the target's own, which no copy command touches."
            )
    own_totals: dict[bytes, tuple[int, int]] = {}
    for name, entries in own.items():
        key = name if entries[0].kind == "d" else LOOSE
        files, size = _file_totals(entries)
        have = own_totals.get(key, (0, 0))
        own_totals[key] = (have[0] + files, have[1] + size)
    method_of = {k: u.method for u in units if u.tree is t for k in u.keys}
    per_domain = Counter(key for key, _ in problems)
    rows = []
    for key in sorted(set(t.groups) | set(totals) | set(own_totals)):
        s = _file_totals(t.groups.get(key, []))
        copied, extra = totals.get(key, (0, 0)), own_totals.get(key, (0, 0))
        d = (copied[0] + extra[0], copied[1] + extra[1])
        if per_domain[key]:
            status = f"DIFFERS ({per_domain[key]} entries)"
        elif key not in t.groups:
            status = "only on the target"
        elif d != s:
            status = f"ok; the target also has {d[0] - s[0]} files of its own"
        else:
            status = "ok"
        rows.append(
            {
                "tree": t.name,
                "domain": _shown(key),
                "method": method_of.get(key, "-"),
                "backup files": s[0],
                "backup bytes": s[1],
                "target files": d[0],
                "target bytes": d[1],
                "status": status,
            }
        )
    if per_domain[LOOSE] and LOOSE not in t.groups and LOOSE not in own_totals:  # the top directory itself
        rows.append(
            {
                "tree": t.name,
                "domain": "(top)",
                "method": "-",
                "backup files": 0,
                "backup bytes": 0,
                "target files": 0,
                "target bytes": 0,
                "status": f"DIFFERS ({per_domain[LOOSE]} entries)",
            }
        )
    return rows, [text for _, text in problems]
