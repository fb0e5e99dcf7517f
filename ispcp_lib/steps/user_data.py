"""user_data: copy the customers' web spaces and mailboxes from the backup, resumably and verified."""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ispcp_lib import ownership, rsync_copy, tree_scan
from ispcp_lib.action import action
from ispcp_lib.context import Context
from ispcp_lib.errors import InputError, PreconditionFailed
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.result import Result
from ispcp_lib.rsync_copy import ProgressHook, human

TITLE = "Restore the web and mail data"
GUIDE = "the paragraph after the system accounts, on copying back /var/www/virtual and /var/mail/virtual"
EXPLANATION = """
With the database and the system accounts back, the customers' files can return: every web space
under `/var/www/virtual/<domain>` and every mailbox under `/var/mail/virtual/<domain>/<user>`. The
guide is relaxed about the web trees, because ispCP sets their owners itself when it rebuilds the
domains later, but strict about the mail: every file and directory of the mail tree must belong to
the mailbox user and group (vmail:mail), or the mail server cannot read or deliver.

The copy uses rsync with numeric owners, hard links, ACLs and extended attributes. It never deletes
anything on the target, and it can be interrupted and started again: files that were complete are
not copied twice, and a half-copied file never appears under its real name. Symlinks are copied as
links and never followed; links that point outside the tree are listed as a warning. The mail tree
gets the mailbox owner (the IDs recorded in the old `ispcp.conf`, not the guide's example numbers)
while it is copied. Before copying, the step checks that the target filesystem has room for the
data. Afterwards it compares files and bytes per domain between backup and target.

A dry run shows what rsync would transfer. The FastCGI starter directory (`/var/www/fcgi`) is not
copied: ispCP writes every starter again from its templates during the rebuild.
"""
PARAMETERS: dict[str, tuple[object, str]] = {
    "user_data_bwlimit": (0, "limit the user-data copy to this many KiB/s (rsync --bwlimit; 0 means no limit)"),
    "user_data_allow_newline_names": (False, "copy files whose names contain a newline instead of refusing them"),
    "user_data_progress_interval": (5, "seconds between the plain progress lines of the user-data copy"),
}

DEFAULT_WWW = "/var/www/virtual"
DEFAULT_MAIL = "/var/mail/virtual"


@dataclass
class Tree:
    name: str  # "web" or "mail"
    logical: str
    src: Path
    dest: Path
    owner: tuple[int, int] | None  # forced owner (mail); None keeps the backup's numeric owners


def settings(ctx: Context, result: Result) -> tuple[IspcpConf | None, str, str, tuple[int, int]]:
    """The old ispcp.conf's paths and mailbox IDs (the target's, or ispCP's defaults, when it is missing)."""
    conf = bl.load_old_conf(ctx)
    if conf is None:
        target = ctx.t("/etc/ispcp/ispcp.conf")
        conf = IspcpConf.load(target) if target.is_file() else None
        result.warn("the backup has no etc/ispcp/ispcp.conf: paths and mailbox IDs come from "
                    + ("the target's ispcp.conf" if conf else "ispCP's defaults (vmail 1004, mail 8)"))
    get = (lambda k, d: conf.get(k) or d) if conf else (lambda k, d: d)
    ids = []
    for key, default in (("MTA_MAILBOX_UID", "1004"), ("MTA_MAILBOX_GID", "8")):
        value = get(key, default)
        if not value.isdigit():
            raise InputError(key, f"is {value!r}, not a number", f"set {key} in the old ispcp.conf to the numeric ID",
                             path=conf.path if conf else None)
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
            result.warn(f"{ctx.display_path(dest)} on the target is a symlink to {os.readlink(dest)}: "
                        "the data goes where it points")
        trees.append(Tree(name, logical, src, dest, owner))
    return trees


def _refuse_newline_names(ctx: Context, scans: dict[str, list[tree_scan.Entry]], trees: list[Tree],
                          result: Result) -> None:
    odd = [(t, e) for t in trees for e in tree_scan.with_newlines(scans[t.name])]
    if not odd:
        return
    listed = "; ".join(f"{t.logical}/{tree_scan.show(e.rel)}" for t, e in odd[:10])
    if ctx.param("user_data_allow_newline_names", False):
        result.warn(f"{len(odd)} name(s) with a newline are copied as they are (allowed by "
                    f"user_data_allow_newline_names): {listed}")
        return
    raise InputError(
        "backup file names",
        f"{len(odd)} name(s) contain a newline (shown as \\n), which breaks line-based tools and scripts "
        f"on the new server: {listed}",
        "rename them in the backup (e.g. with a file manager or `mv`), or set user_data_allow_newline_names = True "
        "to copy them as they are",
        path=str(odd[0][0].src),
    )


def _warn_links(ctx: Context, scans: dict[str, list[tree_scan.Entry]], trees: list[Tree], result: Result) -> None:
    for t in trees:
        escapes = list(tree_scan.escaping_links(scans[t.name], t.logical))
        if escapes:
            shown = "; ".join(f"{t.logical}/{tree_scan.show(e.rel)} -> {tree_scan.show(e.link)}"
                              + (f" (leads to {dest})" if dest != tree_scan.show(e.link) else "")
                              for e, dest in escapes[:10])
            result.warn(f"{len(escapes)} symlink(s) in the {t.name} tree point outside {t.logical}; they are copied "
                        f"as links and never followed: {shown}")
        devices = [e for e in scans[t.name] if e.kind in ("b", "c")]
        if devices:
            result.warn(f"{len(devices)} device file(s) in the {t.name} tree (unusual in customer data): "
                        + "; ".join(tree_scan.show(e.rel) for e in devices[:10]))


def _need(src: list[tree_scan.Entry], dest: list[tree_scan.Entry], block: int) -> tuple[int, int, int]:
    """Bytes (in whole filesystem blocks) and inodes the copy adds, and the largest file (rsync's temp copy)."""
    have = {e.rel: e for e in dest}
    need = inodes = largest = 0
    for e in src:
        there = have.get(e.rel)
        if e.kind == "f":
            largest = max(largest, e.size)
            if there is None or there.kind != "f" or there.size != e.size:
                need += math.ceil(e.size / block) * block
                inodes += there is None
        elif there is None:
            inodes += 1
            need += block if e.kind == "d" or (e.kind == "l" and len(e.link) > 59) else 0
    return need, inodes, largest


def _check_space(ctx: Context, trees: list[Tree], scans: dict[str, list[tree_scan.Entry]],
                 before: dict[str, list[tree_scan.Entry]], result: Result) -> None:
    """Room for the data on every target filesystem, checked before a single byte is copied."""
    by_fs: dict[int, dict] = {}
    for t in trees:
        probe = rsync_copy.existing_ancestor(t.dest)
        vfs = os.statvfs(probe)
        need, inodes, largest = _need(scans[t.name], before[t.name], vfs.f_frsize or 4096)
        slot = by_fs.setdefault(os.stat(probe).st_dev, {"probe": probe, "vfs": vfs, "need": 0, "inodes": 0,
                                                        "largest": 0, "trees": []})
        slot["need"] += need
        slot["inodes"] += inodes
        slot["largest"] = max(slot["largest"], largest)
        slot["trees"].append(ctx.display_path(t.dest))
    rows = []
    for slot in by_fs.values():
        free = shutil.disk_usage(slot["probe"]).free
        vfs = slot["vfs"]
        need = slot["need"] + slot["largest"]  # rsync writes a temporary copy before it renames
        rows.append({"target": ", ".join(slot["trees"]), "needed": human(need), "free": human(free),
                     "inodes needed": slot["inodes"], "inodes free": vfs.f_favail if vfs.f_files else "n/a"})
        where = " and ".join(slot["trees"])
        if need > free:
            result.table("Room on the target", pd.DataFrame(rows))
            raise PreconditionFailed(
                "target disk", f"{where} needs about {human(need)} for the backup's data, but its filesystem "
                f"has only {human(free)} free", "free space there or mount a bigger disk, then run the step again",
                path=str(slot["probe"]))
        if vfs.f_files and slot["inodes"] > vfs.f_favail:
            result.table("Room on the target", pd.DataFrame(rows))
            raise PreconditionFailed(
                "target disk", f"{where} needs {slot['inodes']} new files and directories, but its filesystem has "
                f"only {vfs.f_favail} free inodes", "use a filesystem with more inodes, then run the step again",
                path=str(slot["probe"]))
    result.table("Room on the target", pd.DataFrame(rows))


def _has_entries(path: Path) -> bool:
    if not path.is_dir():
        return False
    with os.scandir(path) as it:
        return any(True for _ in it)


def _without_partial(entries: list[tree_scan.Entry]) -> list[tree_scan.Entry]:
    marker = rsync_copy.PARTIAL_DIR.encode()
    return [e for e in entries if marker not in e.rel.split(b"/")]


def _verify(ctx: Context, t: Tree, src: list[tree_scan.Entry], result: Result) -> tuple[list[dict], list[str]]:
    """Per-domain files and bytes, backup vs target, and every entry that did not arrive intact."""
    after = tree_scan.scan(t.dest)
    kept = _without_partial(after)
    if len(kept) != len(after):
        result.warn(f"{len(after) - len(kept)} entries remain in {rsync_copy.PARTIAL_DIR}/ directories under "
                    f"{ctx.display_path(t.dest)} (an interrupted file rsync has not finished)")
    have = {e.rel: e for e in kept}
    problems: list[tuple[str, str]] = []  # (domain, text)

    def bad(e: tree_scan.Entry, text: str) -> None:
        problems.append((tree_scan.group_of(e), f"{t.logical}/{tree_scan.show(e.rel)}: {text}"))

    for e in src:
        there = have.get(e.rel)
        if there is None or there.kind != e.kind:
            bad(e, "missing on the target")
        elif e.kind == "f" and there.size != e.size:
            bad(e, f"{there.size} bytes on the target, {e.size} in the backup")
        elif e.kind == "l" and there.link != e.link:
            bad(e, "the link points elsewhere on the target")
        elif t.owner is None and (there.uid, there.gid) != (e.uid, e.gid):
            bad(e, f"owner {there.uid}:{there.gid}, the backup has {e.uid}:{e.gid}")
    if t.owner is not None:  # the whole mail tree, including what only the target has
        for e in kept:
            if (e.uid, e.gid) != t.owner:
                bad(e, f"owner {e.uid}:{e.gid}, not the mailbox owner {t.owner[0]}:{t.owner[1]}")
    src_totals, dst_totals = tree_scan.per_top(src), tree_scan.per_top(kept)
    per_domain = Counter(dom for dom, _ in problems)
    rows = []
    for domain in sorted(set(src_totals) | set(dst_totals)):
        s, d = src_totals.get(domain, tree_scan.Totals()), dst_totals.get(domain, tree_scan.Totals())
        differ = per_domain[domain]
        if domain == "(top)" and not (s.files or d.files or differ):
            continue  # just the tree's own directory
        if differ:
            status = f"DIFFERS ({differ} entries)"
        elif (d.files, d.bytes) != (s.files, s.bytes):
            status = f"ok; the target also has {d.files - s.files} files of its own"
        else:
            status = "ok"
        rows.append({"tree": t.name, "domain": domain, "backup files": s.files, "backup bytes": s.bytes,
                     "target files": d.files, "target bytes": d.bytes, "status": status})
    return rows, [text for _, text in problems]


@action("user_data")
def run(ctx: Context, result: Result, progress: ProgressHook | None = None) -> None:
    """progress: called with each rsync_copy.Progress (a live bar in Jupyter); headless runs log lines."""
    bl.check_backup_root(ctx)
    trees = _trees(ctx, result)
    result.note("The FastCGI starters (PHP_STARTER_DIR, /var/www/fcgi) are not copied: ispCP writes each domain's "
                "starter again from its templates when ispcp-update rebuilds the domains, and register_accounts "
                "sets their owners.")
    if not trees:
        result.noop_reason = "the backup holds neither a web nor a mail tree"
        return
    scans = {t.name: tree_scan.scan(t.src) for t in trees}
    _refuse_newline_names(ctx, scans, trees, result)
    _warn_links(ctx, scans, trees, result)
    before = {t.name: _without_partial(tree_scan.scan(t.dest)) if _has_entries(t.dest) else [] for t in trees}
    _check_space(ctx, trees, scans, before, result)

    interval = float(ctx.param("user_data_progress_interval", 5) or 5)
    bwlimit = int(ctx.param("user_data_bwlimit", 0) or 0)
    rows: list[dict] = []
    problems: list[str] = []
    plan_rows: list[dict] = []
    for t in trees:
        caps = rsync_copy.probe_capabilities(t.dest)
        for note in caps.notes:
            result.warn(note)
        if ctx.apply:
            t.dest.parent.mkdir(parents=True, exist_ok=True)
        argv = rsync_copy.build_argv(t.src, t.dest, dry_run=not ctx.apply, caps=caps, owner=t.owner,
                                     bwlimit_kbps=bwlimit)
        label = f"{t.name} data {ctx.display_path(t.dest)}"
        ctx.log(f"{label}: {'copying' if ctx.apply else 'planning (rsync --dry-run)'} from {t.src}")
        done = rsync_copy.run(argv, label=label, sink=ctx.runner.sink, log=ctx.log, on_progress=progress,
                              log_every_s=interval)
        if done.items.total:
            result.change(f"copy {t.src} to {ctx.display_path(t.dest)}: {done.items.describe()}, "
                          f"{human(done.bytes_transferred)} of file data")
        src_totals = tree_scan.per_top(scans[t.name])
        for domain in sorted(set(src_totals) | set(done.items.by_domain)):
            s = src_totals.get(domain, tree_scan.Totals())
            if domain == "(top)" and not (s.files or done.items.by_domain.get(domain)):
                continue
            plan_rows.append({"tree": t.name, "domain": domain, "backup files": s.files, "backup bytes": s.bytes,
                              "items to transfer": done.items.by_domain.get(domain, 0)})
        if t.owner is not None:
            _fix_mail_owner(ctx, t, scans[t.name], result)
        if ctx.apply:
            tree_rows, tree_problems = _verify(ctx, t, scans[t.name], result)
            rows += tree_rows
            problems += tree_problems
    if ctx.apply:
        result.table("Verification: backup vs target, per domain", pd.DataFrame(rows))
    else:
        result.table("What rsync would transfer, per domain (dry run)", pd.DataFrame(plan_rows))
    files = sum(1 for t in trees for e in scans[t.name] if e.kind == "f")
    size = sum(e.size for t in trees for e in scans[t.name] if e.kind == "f")
    result.summary = (f"{len(trees)} tree(s), {files} files, {human(size)} in the backup; "
                      + (f"{len(problems)} entries differ after the copy" if problems else
                         ("verified on the target" if ctx.apply else "dry run: nothing copied")))
    result.data.update({"trees": [t.logical for t in trees], "files": files, "bytes": size})
    if problems:
        raise PreconditionFailed(
            "user data verification", f"{len(problems)} entries differ between backup and target: "
            + "; ".join(problems[:10]), "run the step again (rsync resumes); if the difference stays, check the "
            "target disk (dmesg, df) and the rsync output above")
    if not result.changes:
        result.noop_reason = (f"rsync found nothing to transfer: all {files} files ({human(size)}) of the backup's "
                              "trees are on the target with the same size, time and owners, and the mail tree "
                              "belongs to the mailbox user; nothing on the target was deleted")


def _fix_mail_owner(ctx: Context, t: Tree, src: list[tree_scan.Entry], result: Result) -> None:
    """rsync --chown sets the owner of everything it copies; this catches what was on the target already."""
    assert t.owner is not None
    uid, gid = t.owner
    if ctx.apply:
        fixed = ownership.fix_tree(ctx.runner, t.dest, uid, gid, apply=True)
        if fixed.count:
            result.change(f"set owner {uid}:{gid} under {ctx.display_path(t.dest)} on what the backup did not "
                          f"hold: {fixed.describe()}")
        return
    if not t.dest.exists():
        return
    in_backup = {e.rel for e in src}
    extra = [e for e in tree_scan.scan(t.dest) if e.rel not in in_backup and (e.uid, e.gid) != (uid, gid)]
    if extra:
        result.change(f"set owner {uid}:{gid} on {len(extra)} entries of {ctx.display_path(t.dest)} that are not "
                      "in the backup: " + ", ".join(tree_scan.show(e.rel) for e in extra[:5]))
