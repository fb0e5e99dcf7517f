"""user_data: copy the customers' web spaces and mailboxes from the backup, resumably and verified.

The copying itself (listing, plan, jobs, verification) is in ispcp_lib/system/tree_copy.py; this step
reads the settings, runs the checks before copying and reports.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.connection import ChrootConnection, LocalConnection, SshConnection
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.progress import progress_bar
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.system import ownership, rsync_copy, tree_copy, tree_scan
from ispcp_lib.system.rsync_copy import STAGING_DIR, Capabilities, Items, Progress, ProgressHook, Route, human
from ispcp_lib.system.tree_copy import LOOSE, JobDone, Tree, Unit, Worker, file_totals, shown_key, wrong_owner
from ispcp_lib.system.tree_scan import Entry

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
deletes anything on the target. A domain that is not on the target yet is copied with `cp` (rsync when the
backup is on this machine and the server is reached over SSH) into a hidden staging directory next to
it and then renamed into place, so it appears whole or not at all. The copy runs on the server when
the backup is there, and from this machine otherwise.
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


def settings(ctx: Context, result: Result) -> tuple[str, str, tuple[int, int]]:
    """The old ispcp.conf's tree paths and mailbox IDs (the target's, or ispCP's defaults, when it is missing)."""
    conf = backup_layout.load_old_conf(ctx)
    if conf is None:
        text = ctx.target.read_text(CONF_PATH)
        conf = None if text is None else IspcpConf.parse(text, CONF_PATH)
        source = "the target's ispcp.conf" if conf else "ispCP's defaults (vmail 1004, mail 8)"
        result.warn(f"the backup has no etc/ispcp/ispcp.conf: paths and mailbox IDs come from {source}")
    values = conf.values if conf is not None else {}
    ids = []
    for key, default in (("MTA_MAILBOX_UID", "1004"), ("MTA_MAILBOX_GID", "8")):
        value = values.get(key) or default
        if not value.isdigit():
            raise InputError(
                key,
                f"is {value!r}, not a number",
                f"set {key} in the old ispcp.conf to the numeric ID",
                path=conf.path if conf else None,
            )
        ids.append(int(value))
    www = values.get("APACHE_WWW_DIR") or DEFAULT_WWW
    return www, values.get("MTA_VIRTUAL_MAIL_DIR") or DEFAULT_MAIL, (ids[0], ids[1])


def route(ctx: Context) -> Route:
    """Where the copy commands run: the target when it sees the backup, else this machine."""
    assert ctx.backup is not None
    legacy = rsync_copy.rsync_version(ctx.target) < (3, 1)  # the target's rsync receives in every case
    if ctx.backup.inner is ctx.target or isinstance(ctx.target, LocalConnection):
        return Route(ctx.target, ctx.backup.path, ctx.target.path, legacy=legacy)
    here = LocalConnection("/")
    if isinstance(ctx.target, ChrootConnection):
        root = str(ctx.target.root).rstrip("/")
        return Route(here, ctx.backup.path, lambda p: root + p)
    assert isinstance(ctx.target, SshConnection)
    ssh = ctx.target.target
    # -s: the remote rsync gets each path as it is (no word splitting by the remote shell).
    options = ["-s", "-e", ctx.target.rsync_remote_shell()]
    return Route(
        here,
        ctx.backup.path,
        lambda p: f"{ssh.host}:{p}",
        options,
        cp=False,
        prefix=list(ssh.argv_prefix),
        legacy=legacy,
    )


def _trees(ctx: Context, result: Result) -> list[Tree]:
    assert ctx.backup is not None
    www, mail, mailbox = settings(ctx, result)
    trees = []
    for name, logical, owner in (("web", www, None), ("mail", mail, mailbox)):
        leads_to = ctx.backup.escapes(logical)
        if leads_to is not None:
            raise InputError(
                f"backup {name} tree",
                f"resolves to {leads_to}, outside the backup root (a symlink escapes it)",
                "replace the symlink with the folder it should hold, or remove it from the backup",
                path=ctx.backup.path(logical),
            )
        if not ctx.backup.is_dir(logical):
            result.warn(f"the backup has no {name} tree {logical}: nothing of it can be restored")
            continue
        st = ctx.target.stat(logical)
        if st is not None and st.is_link:
            result.warn(f"{logical} on the target is a symlink to {st.link}: the data goes where it points")
        trees.append(Tree(name, logical, owner))
    return trees


def _list_backup(ctx: Context, trees: list[Tree]) -> None:
    """The one listing of the backup: every tree, both find processes at work."""
    assert ctx.backup is not None
    requests = [(t.logical, tree_scan.top_names(ctx.backup, t.logical)) for t in trees]
    for t, tops in zip(trees, tree_scan.scan_many(ctx.backup, requests)):
        t.root = tree_scan.root_entry(ctx.backup, t.logical)
        t.groups = tree_copy.grouped(tops)


# -- checks before copying, all from the one listing of the backup ---------------------------------


def _refuse_newline_names(ctx: Context, trees: list[Tree], result: Result) -> None:
    odd = [(t, e) for t in trees for e in tree_scan.with_newlines(t.entries())]
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
        path=odd[0][0].logical,
    )


def _warn_links(trees: list[Tree], result: Result) -> None:
    for t in trees:
        if STAGING_DIR.encode() in t.groups:
            raise InputError(
                "backup tree",
                f"holds an entry named {STAGING_DIR}, the name this step uses for its staging directory",
                "rename it in the backup",
                path=t.staging,
            )
        escapes = list(tree_scan.escaping_links(t.entries(), t.logical))
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
        devices = [e for e in t.entries() if e.kind in ("b", "c")]
        if devices:
            result.warn(
                f"{len(devices)} device file(s) in the {t.name} tree (unusual in customer data): "
                + "; ".join(tree_scan.show(e.rel) for e in devices[:10])
            )


def _check_space(ctx: Context, trees: list[Tree], units: list[Unit], result: Result) -> None:
    """Room for the data on every target filesystem, checked before a single byte is copied."""
    by_fs: dict[int, dict] = {}
    for t in trees:
        room = rsync_copy.room(ctx.target, t.logical)
        slot = by_fs.setdefault(room.device, {"room": room, "need": 0, "inodes": 0, "largest": 0, "trees": []})
        for u in (u for u in units if u.tree is t):
            needed, inodes, largest = tree_copy.need(u.entries, u.before, room.block or 4096)
            slot["need"] += needed
            slot["inodes"] += inodes
            if u.method != "cp":  # rsync writes a temporary copy of a file before it renames it
                slot["largest"] = max(slot["largest"], largest)
        slot["trees"].append(t.logical)
    rows = [_room_row(slot) for slot in by_fs.values()]
    table = pd.DataFrame(rows)
    for slot in by_fs.values():
        room, where = slot["room"], " and ".join(slot["trees"])
        needed = slot["need"] + slot["largest"]
        if needed > room.free:
            result.table("Room on the target", table)
            raise PreconditionFailed(
                "target disk",
                f"{where} needs about {human(needed)} for the backup's data, but its filesystem "
                f"has only {human(room.free)} free",
                "free space there or mount a bigger disk, then run the step again",
                path=room.probe,
            )
        if room.inodes_total and slot["inodes"] > room.inodes_free:
            result.table("Room on the target", table)
            raise PreconditionFailed(
                "target disk",
                f"{where} needs {slot['inodes']} new files and directories, but its filesystem has "
                f"only {room.inodes_free} free inodes",
                "use a filesystem with more inodes, then run the step again",
                path=room.probe,
            )
    result.table("Room on the target", table)


def _room_row(slot: dict) -> dict[str, object]:
    room = slot["room"]
    return {
        "target": ", ".join(slot["trees"]),
        "needed": human(slot["need"] + slot["largest"]),
        "free": human(room.free),
        "inodes needed": slot["inodes"],
        "inodes free": room.inodes_free if room.inodes_total else "n/a",
    }


def _plan(ctx: Context, trees: list[Tree], bwlimit: int, result: Result) -> list[Unit]:
    units: list[Unit] = []
    for t in trees:
        planned, orphans = tree_copy.plan_tree(ctx.target, t, bwlimit)
        units += planned
        if orphans:
            result.warn(
                f"{len(orphans)} entries in {t.staging} are copies of an earlier, interrupted run that this run "
                "does not complete (the domain is on the target now, or no longer in the backup): "
                + ", ".join(tree_scan.show(n) for n in orphans[:10])
                + ". Compare them with the target and remove them by hand."
            )
    return units


def _caps(ctx: Context, trees: list[Tree], units: list[Unit], result: Result) -> dict[str, Capabilities]:
    assert ctx.backup is not None
    caps: dict[str, Capabilities] = {}
    for t in trees:
        caps[t.name], dropped = tree_copy.rsync_caps(ctx.backup, ctx.target, t, units)
        for note in t.caps.notes:
            result.warn(note)
        if dropped:
            result.note(
                f"The entries of the {t.name} tree that rsync copies carry no ACLs or extended attributes: "
                "rsync runs without -A/-X, which saves it a lookup per file on both sides."
            )
    return caps


# -- the step ----------------------------------------------------------------------------------------


@action("user_data")
def run(ctx: Context, result: Result, progress: ProgressHook | None = None) -> None:
    """progress: called with an rsync_copy.Progress a few times a second (a live bar); headless runs log lines."""
    started = time.monotonic()
    backup_layout.check_backup_root(ctx)
    assert ctx.backup is not None
    trees = _trees(ctx, result)
    result.note(
        "The FastCGI starters (PHP_STARTER_DIR, /var/www/fcgi) are not copied: ispCP writes each domain's "
        "starter again from its templates when ispcp-update rebuilds the domains, and register_accounts "
        "sets their owners."
    )
    if not trees:
        result.noop_reason = "the backup holds neither a web nor a mail tree"
        return
    _list_backup(ctx, trees)
    _refuse_newline_names(ctx, trees, result)
    _warn_links(trees, result)
    bwlimit = int(ctx.param("user_data_bwlimit", 0) or 0)
    units = _plan(ctx, trees, bwlimit, result)
    extra_before = tree_copy.list_present(ctx.backup, ctx.target, trees, units)
    _check_space(ctx, trees, units, result)
    caps = _caps(ctx, trees, units, result)
    _plan_changes(trees, units, extra_before, result)
    copy_route = route(ctx)
    outcome = _copy(ctx, copy_route, trees, units, caps, bwlimit, progress, started, result)
    rows: list[dict] = []
    problems: list[str] = []
    for t in trees:
        _finish_tree(ctx, copy_route, t, any(u.tree is t and u.method in ("cp", "resume") for u in units), result)
        if ctx.apply:
            tree_rows, tree_problems = _verification(ctx, t, units, outcome, result)
            rows += tree_rows
            problems += tree_problems
    _report(ctx, trees, units, outcome, rows, problems, started, result)


def _copy(
    ctx: Context,
    copy_route: Route,
    trees: list[Tree],
    units: list[Unit],
    caps: dict[str, Capabilities],
    bwlimit: int,
    progress: ProgressHook | None,
    started: float,
    result: Result,
) -> list[JobDone]:
    assert ctx.backup is not None
    worker = Worker(ctx.backup, ctx.target, copy_route, ctx.apply, ctx.runner.sink)
    if ctx.apply:
        for t in trees:
            ctx.target.mkdir(t.logical)
            if any(u.tree is t and u.method == "cp" for u in units):
                ctx.target.mkdir(t.staging, mode=0o700)  # root only: nothing staged is reachable before its rename
    jobs = tree_copy.make_jobs(copy_route, trees, units, caps, not ctx.apply, bwlimit)
    tick = _ticker(ctx, worker, units, progress, started)
    outcome = rsync_copy.run_jobs(jobs, worker, tracker=worker.tracker, tick=tick)
    _record_rsync_changes(trees, outcome.results, result)
    cps = [d for d in outcome.results if d.job.argv[0] == "cp"]
    if any(d.lean for d in cps):
        result.note(
            f"{sum(d.lean for d in cps)} of {len(cps)} cp commands found no POSIX ACL in what they copy "
            "(checked entry by entry): they keep owners, times and hard links but leave out cp's ACL work, "
            "and the permission bits come from the umask 0 they run with (setuid, setgid and sticky bits "
            "are set afterwards from the backup's listing)."
        )
    if outcome.failure is not None:
        raise outcome.failure
    return outcome.results


def _finish_tree(ctx: Context, copy_route: Route, t: Tree, renames: bool, result: Result) -> None:
    """Our staging folder goes when empty; the tree's own folder gets the backup's attributes, last (every
    rename into it changed its time), through the same route as the copy.

    renames: staged domains are renamed into the tree, so applying finds its time changed even where a
    dry run's rsync sees none; the plan counts the change as the apply will."""
    if ctx.apply and ctx.target.listdir(t.staging) == []:
        ctx.target.run(["rmdir", "--", ctx.target.path(t.staging)])
    argv = rsync_copy.dir_attrs_argv(
        copy_route.src(t.logical), copy_route.dest(t.logical), dry_run=not ctx.apply, caps=t.caps, owner=t.owner
    )
    items = rsync_copy.run(copy_route.conn, copy_route.rsync(argv), label=f"{t.name} tree folder", sink=ctx.runner.sink)
    if items.items.total or (renames and not ctx.apply):
        result.change(f"give {t.logical} itself the backup's owner, mode, time and attributes")
    if ctx.apply and copy_route.legacy and t.owner is not None:  # no --chown on the server's rsync
        ownership.lchown_known(ctx.target, t.logical, [b""], *t.owner)


def _report(
    ctx: Context,
    trees: list[Tree],
    units: list[Unit],
    done: list[JobDone],
    rows: list[dict],
    problems: list[str],
    started: float,
    result: Result,
) -> None:
    if ctx.apply:
        result.table("Verification: backup vs target, per domain", pd.DataFrame(rows))
    else:
        result.table(
            "The plan: method and what would be copied, per domain (dry run)", pd.DataFrame(_plan_rows(units, done))
        )
    files, size = file_totals(e for t in trees for e in t.entries())
    methods = Counter(u.method for u in units for _ in u.keys)
    what = "copied and verified" if ctx.apply else "planned"
    ctx.log(
        f"user data: {files} files ({human(size)}) {what} in {time.monotonic() - started:.1f} s; domains by method: "
        + ", ".join(f"{m} {n}" for m, n in sorted(methods.items()))
    )
    if problems:
        state = f"{len(problems)} entries differ after the copy"
    else:
        state = "verified on the target" if ctx.apply else "dry run: nothing copied"
    result.summary = f"{len(trees)} tree(s), {files} files, {human(size)} in the backup; {state}"
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


def _plan_changes(trees: list[Tree], units: list[Unit], extra_before: dict[str, list[Entry]], result: Result) -> None:
    """The changes known before copying: domains copied with cp, staged copies completed, owners to set."""
    for t in trees:
        new = [u for u in units if u.tree is t and u.method == "cp"]
        if new:
            files, size = file_totals(e for u in new for e in u.entries)
            result.change(
                f"copy {sum(len(u.names) for u in new)} domain(s) that are new on the target with cp -a into "
                f"{t.staging}, then rename each into place: {files} files, {human(size)}"
            )
        resumed = [u for u in units if u.tree is t and u.method == "resume"]
        if resumed:
            result.change(
                f"complete {sum(len(u.names) for u in resumed)} interrupted staged copies in "
                f"{t.staging} with rsync, then rename each into place"
            )
        if t.owner is not None:
            _plan_owner_changes(t, units, extra_before, result)


def _plan_owner_changes(t: Tree, units: list[Unit], extra_before: dict[str, list[Entry]], result: Result) -> None:
    assert t.owner is not None
    new = [u for u in units if u.tree is t and u.method == "cp"]
    from_backup = sum(len(wrong_owner(u.entries, t.owner)) for u in new)
    if from_backup:
        result.change(
            f"give {from_backup} entries that the backup holds with another owner the mailbox owner "
            f"{t.owner[0]}:{t.owner[1]} (in staging, before the rename)"
        )
    synced = [u for u in units if u.tree is t and u.method == "rsync"]
    in_backup = {e.rel for u in synced for e in u.entries}
    theirs = [e for u in synced for e in wrong_owner(u.before, t.owner) if e.rel not in in_backup]
    theirs += wrong_owner(extra_before.get(t.name, []), t.owner)
    if theirs:
        result.change(
            f"set the mailbox owner {t.owner[0]}:{t.owner[1]} on {len(theirs)} entries of "
            f"{t.logical} that are not in the backup: " + ", ".join(tree_scan.show(e.rel) for e in theirs[:5])
        )


def _record_rsync_changes(trees: list[Tree], done: list[JobDone], result: Result) -> None:
    for t in trees:
        items = Items()
        for d in done:
            if d.job.tree is t and d.job.method == "rsync" and d.items is not None:
                items.merge(d.items)
        if items.total:
            result.change(f"rsync into {t.logical} (domains already there): {items.describe()}")


def _ticker(
    ctx: Context, worker: Worker, units: list[Unit], hook: ProgressHook | None, started: float
) -> Callable[[], None]:
    """Called by run_jobs a few times a second: the hook, a bar in JupyterLab, a plain line every interval."""
    files_total, bytes_total = file_totals(e for u in units for e in u.entries)
    interval = float(ctx.param("user_data_progress_interval", 5) or 5)
    bar = None
    if getattr(ctx, "interactive_session", None) is not None:
        bar = progress_bar(ctx, max(bytes_total, 1), "user data", unit="bytes", planned=not ctx.apply)
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
            bar(p.bytes_done, f"· {files} of {files_total} files")
        if now - clock["log"] >= interval:
            clock["log"] = now
            ctx.log(p.line())

    return tick


def _plan_rows(units: list[Unit], done: list[JobDone]) -> list[dict]:
    todo: Counter[tuple[str, str]] = Counter()
    for d in done:
        if d.items is not None:
            for domain, n in d.items.by_domain.items():
                todo[(d.job.tree.name, domain)] += n
    rows = []
    for u in units:
        for key in u.keys:
            files, size = file_totals(u.tree.groups[key])
            n = len(u.tree.groups[key]) if u.method == "cp" else todo[(u.tree.name, shown_key(key))]
            rows.append(
                {
                    "tree": u.tree.name,
                    "domain": shown_key(key),
                    "method": u.method,
                    "why": u.reason,
                    "backup files": files,
                    "backup bytes": size,
                    "items to transfer": n,
                }
            )
    return rows


def _add(totals: dict[bytes, tuple[int, int]], key: bytes, files: int, size: int) -> None:
    have = totals.get(key, (0, 0))
    totals[key] = (have[0] + files, have[1] + size)


def _verification(
    ctx: Context, t: Tree, units: list[Unit], done: list[JobDone], result: Result
) -> tuple[list[dict], list[str]]:
    """Files and bytes per domain, backup vs target, from the jobs' checks; the tree's own directory and
    the target's own top-level entries are checked here."""
    assert ctx.backup is not None and t.root is not None
    totals: dict[bytes, tuple[int, int]] = {}
    problems: list[tuple[bytes, str]] = []
    removed = fixed = 0
    for d in (d for d in done if d.job.tree is t):
        for key, (files, size) in d.totals.items():
            _add(totals, key, files, size)
        problems += d.problems
        removed += d.leftovers
        fixed += d.owners_fixed
    if removed:
        result.note(
            f"{removed} temporary files of an interrupted rsync under {t.logical} were removed after the copy "
            "(half-written copies of files the backup holds; never counted as copied)."
        )
    problems += tree_copy.compare(t, [t.root], [tree_scan.root_entry(ctx.target, t.logical)])
    listing = tree_scan.scan_many(ctx.target, [(t.logical, tree_copy.target_only(ctx.backup, ctx.target, t))])[0]
    own, temps = tree_copy.without_rsync_temps([e for entries in listing.values() for e in entries])
    problems += [(LOOSE, _leftover_problem(t, e)) for e in temps]
    if t.owner is not None:
        fixed += _own_entries_owner(ctx, t, own, fixed, result)
    own_totals: dict[bytes, tuple[int, int]] = {}
    for e in own:
        top = e.rel.split(b"/", 1)[0]
        key = top if listing.get(top, [e])[0].kind == "d" else LOOSE
        _add(own_totals, key, *file_totals([e]))
    return _verification_rows(t, units, totals, own_totals, problems), [text for _, text in problems]


def _leftover_problem(t: Tree, e: Entry) -> str:
    return (
        f"{t.logical}/{tree_scan.show(e.rel)} is a temporary file of an interrupted rsync outside the domains of "
        "the backup (remove it, then run user_data again)"
    )


def _own_entries_owner(ctx: Context, t: Tree, own: list[Entry], fixed: int, result: Result) -> int:
    """The mailbox owner on the target's own entries of the mail tree (files no copy command touches)."""
    assert t.owner is not None
    wrong = wrong_owner(own, t.owner)
    now = ownership.lchown_known(ctx.target, t.logical, [e.rel for e in wrong], *t.owner) if wrong else 0
    if fixed + now:
        result.note(
            f"After copying, {fixed + now} entries under {t.logical} got the mailbox owner "
            f"{t.owner[0]}:{t.owner[1]}: files of the target's own, which no copy command touches."
        )
    return now


def _verification_rows(
    t: Tree,
    units: list[Unit],
    totals: dict[bytes, tuple[int, int]],
    own_totals: dict[bytes, tuple[int, int]],
    problems: list[tuple[bytes, str]],
) -> list[dict]:
    method_of = {k: u.method for u in units if u.tree is t for k in u.keys}
    per_domain = Counter(key for key, _ in problems)
    rows = []
    for key in sorted(set(t.groups) | set(totals) | set(own_totals)):
        backup = file_totals(t.groups.get(key, []))
        copied, extra = totals.get(key, (0, 0)), own_totals.get(key, (0, 0))
        there = (copied[0] + extra[0], copied[1] + extra[1])
        rows.append(_row(t, key, method_of.get(key, "-"), backup, there, _status(key, t, per_domain, backup, there)))
    if per_domain[LOOSE] and LOOSE not in t.groups and LOOSE not in own_totals:  # the top directory itself
        rows.append(_row(t, LOOSE, "-", (0, 0), (0, 0), f"DIFFERS ({per_domain[LOOSE]} entries)"))
    return rows


def _status(key: bytes, t: Tree, per_domain: Counter, backup: tuple[int, int], there: tuple[int, int]) -> str:
    if per_domain[key]:
        return f"DIFFERS ({per_domain[key]} entries)"
    if key not in t.groups:
        return "only on the target"
    if there != backup:
        return f"ok; the target also has {there[0] - backup[0]} files of its own"
    return "ok"


def _row(t: Tree, key: bytes, method: str, backup: tuple[int, int], there: tuple[int, int], status: str) -> dict:
    return {
        "tree": t.name,
        "domain": shown_key(key),
        "method": method,
        "backup files": backup[0],
        "backup bytes": backup[1],
        "target files": there[0],
        "target bytes": there[1],
        "status": status,
    }
