"""accounts: bring the vu* domain users, the mailbox user and the mail group back into /etc."""

from __future__ import annotations

import functools
from collections import Counter

import pandas as pd

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.operations import unfinished
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.core.secrets import MASK
from ispcp_lib.facts import backup_layout
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.system import account_install
from ispcp_lib.system.account_install import FilesChanged, NewFile
from ispcp_lib.system.accounts_files import (
    FILE_NAMES,
    RESOLUTIONS,
    AccountFiles,
    MergePlan,
    Selection,
    plan_merge,
    select_entries,
)

TITLE = "Restore the system accounts"
GUIDE = "the paragraph on restoring users from /etc/passwd, shadow, group and gshadow"
EXPLANATION = """
Every web space belongs to a system user `vu<uid>` with its own group, and every mailbox belongs to
the mailbox user and group (vmail and mail). The new server has none of them, so the guide copies
these entries from the old `passwd`, `shadow`, `group` and `gshadow` into the new ones. Without them
Apache's suexec refuses to run the customers' scripts, and the mail server cannot reach the mail.

The guide names fixed numbers for vmail and mail. ispCP itself records them in `ispcp.conf`
(`MTA_MAILBOX_UID`/`_NAME`, `MTA_MAILBOX_GID`/`_NAME`), and the domain users' name prefix
(`APACHE_SUEXEC_USER_PREF`), so this step takes all of them from the old `ispcp.conf`.

The four files are merged together: an account is added to `passwd` and `shadow` (or `group` and
`gshadow`) at once, password hashes are carried over byte for byte, and the files are written on the
server while holding the same locks `useradd` and `passwd` use, all four renamed into place together,
keeping the previous versions. If another tool changed them between reading and locking, the merge
is planned again. A collision (a name the new server already uses with another ID, an ID another
name already has, a group member that does not exist) stops the step until the parameter
`accounts_resolutions` says what to do with that entry: `skip` it, `take_old` (the old entry wins),
or `keep_target`. Password hashes never appear in the report; the diffs of `shadow` and `gshadow`
show them masked.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "accounts_resolutions",
        dict,
        {},
        "per-account answers to collisions, e.g. {'user:vu2001': 'skip'}",
        choices=RESOLUTIONS,
        example="{'user:vu2001': 'skip', 'group:mail': 'keep_target'}",
    ),
    Param(
        "accounts_lock_timeout",
        float,
        15,
        "seconds to wait for /etc/.pwd.lock when another useradd/passwd holds it",
        minimum=0,
    ),
)

SECRET_FILES = ("shadow", "gshadow")
MAILBOX_KEYS = (
    "APACHE_SUEXEC_USER_PREF",
    "MTA_MAILBOX_UID_NAME",
    "MTA_MAILBOX_UID",
    "MTA_MAILBOX_GID_NAME",
    "MTA_MAILBOX_GID",
)
TABLE = "Accounts from the old server"
ATTEMPTS = 3  # plans made again when another tool changed the files between reading and locking


def mailbox_settings(conf: IspcpConf) -> tuple[str, str, int, str, int]:
    """(prefix, mailbox user, uid, mailbox group, gid) from an ispcp.conf; InputError naming the key."""
    values: dict[str, str] = {}
    for key in MAILBOX_KEYS:
        value = (conf.get(key) or "").strip()
        if not value:
            raise InputError(
                key,
                "is missing or empty in ispcp.conf",
                f"add the line '{key} = ...' from the "
                "old server's configuration (ispCP's template has vu, vmail 1004, mail 8)",
                path=conf.path,
            )
        if key.endswith(("_UID", "_GID")) and not value.isdigit():
            raise InputError(key, f"is {value!r}, not a number", f"set {key} to the numeric ID", path=conf.path)
        values[key] = value
    return (
        values["APACHE_SUEXEC_USER_PREF"],
        values["MTA_MAILBOX_UID_NAME"],
        int(values["MTA_MAILBOX_UID"]),
        values["MTA_MAILBOX_GID_NAME"],
        int(values["MTA_MAILBOX_GID"]),
    )


def _conf(ctx: Context, result: Result) -> IspcpConf:
    conf = backup_layout.load_old_conf(ctx)
    if conf is not None:
        return conf
    text = ctx.target.read_text(CONF_PATH)
    if text is not None:
        result.warn(
            "the backup has no etc/ispcp/ispcp.conf: the prefix and mailbox IDs come from the target's "
            "fresh ispcp.conf, which holds ispCP's defaults; check them against the old server"
        )
        return IspcpConf.parse(text, CONF_PATH)
    raise InputError(
        "ispcp.conf",
        "neither the backup nor the target has one, so the domain-user prefix and the mailbox IDs are unknown",
        "put the old ispcp.conf into the backup (etc/ispcp/ispcp.conf)",
        path=CONF_PATH,
    )


def _read_old(ctx: Context, result: Result) -> AccountFiles:
    assert ctx.backup is not None
    data: dict[str, bytes] = {}
    for name in FILE_NAMES:
        content = ctx.backup.read_bytes(f"/etc/{name}")
        if content is not None:
            data[name] = content
        elif name in SECRET_FILES:
            data[name] = b""
            result.warn(f"the backup has no /etc/{name}: accounts come without their passwords and are added locked")
        else:
            raise InputError(
                f"/etc/{name}",
                "is missing from the backup",
                f"restore the old /etc/{name} into the backup; without it the accounts cannot be merged",
                path=ctx.backup.path(f"/etc/{name}"),
            )
    return AccountFiles.from_bytes(**data, paths={n: ctx.backup.path(f"/etc/{n}") for n in FILE_NAMES})


def _read_target(ctx: Context) -> tuple[dict[str, bytes | None], AccountFiles]:
    """The target's four files as read (None: absent) and parsed."""
    raw = {name: ctx.target.read_bytes(f"/etc/{name}") for name in FILE_NAMES}
    data = {name: content or b"" for name, content in raw.items()}
    return raw, AccountFiles.from_bytes(**data, paths={n: f"/etc/{n}" for n in FILE_NAMES})


def _resolutions(ctx: Context) -> dict[str, str]:
    return dict(ctx.param("accounts_resolutions"))


def masked(data: bytes) -> str:
    """shadow/gshadow text with every password field replaced by a mask, for diffs."""
    lines = []
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) > 1 and fields[1] not in ("", "*", "!", "!!", "x"):
            fields[1] = MASK
        lines.append(":".join(fields))
    return "\n".join(lines) + ("\n" if lines else "")


def _plan(
    ctx: Context, target: AccountFiles, selection: Selection, resolutions: dict[str, str], result: Result
) -> MergePlan:
    plan = plan_merge(target, selection, resolutions)
    for value in plan.secrets:
        ctx.secrets.add(value, "password hash")
    if not plan.ok:
        _show(plan, result)
        _refuse(plan.conflicts)
    return plan


@action("accounts")
def run(ctx: Context, result: Result) -> None:
    backup_layout.check_backup_root(ctx)
    prefix, mbox_user, mbox_uid, mbox_group, mbox_gid = mailbox_settings(_conf(ctx, result))
    old = _read_old(ctx, result)
    selection = select_entries(old, prefix, mbox_user, mbox_uid, mbox_group, mbox_gid)
    plan = _write(ctx, result, selection, _resolutions(ctx))
    _show(plan, result)
    for warning in plan.warnings:
        result.warn(warning)
    counts = Counter(str(r["outcome"]) for r in plan.rows)
    result.summary = f"prefix {prefix!r}, mailbox {mbox_user}={mbox_uid} / {mbox_group}={mbox_gid}: " + ", ".join(
        f"{n} {outcome}" for outcome, n in sorted(counts.items())
    )
    if not result.changes:
        result.noop_reason = (
            f"all {len(plan.rows)} selected accounts are already on the target as they were "
            "on the old server (or skipped by accounts_resolutions)"
        )


def _write(ctx: Context, result: Result, selection: Selection, resolutions: dict[str, str]) -> MergePlan:
    """Plan, show the changes, and (apply) write them under the target's locks; plan again if the files moved."""
    timeout = float(ctx.param("accounts_lock_timeout", 15) or 15)
    _clear_killed_write(ctx, result)
    for _attempt in range(ATTEMPTS):
        raw, target = _read_target(ctx)
        plan = _plan(ctx, target, selection, resolutions, result)
        assert plan.new is not None
        changed = plan.new.changed()
        if not changed:
            return plan
        files = [_new_file(ctx, target, name, plan.new.render()[name]) for name in changed]
        _record(ctx, result, raw, plan, files)
        for name in changed:
            ctx.keep(f"/etc/{name}")
        try:
            what = f"write {', '.join(f'/etc/{n}' for n in changed)} under the account files' locks"
            install = functools.partial(account_install.install, ctx.runner, ctx.target, "/etc", raw, files, timeout)
            ctx.do(what, install, announce=False)  # _record showed one change line per file
            return plan
        except FilesChanged:
            result.changes.clear()
            result.diffs.clear()
            ctx.log("accounts: another tool changed the account files meanwhile; planning again")
    raise PreconditionFailed(
        "account files",
        f"changed under this step {ATTEMPTS} times between reading and locking them",
        "wait until no useradd/passwd runs on the server (a provisioning job?), then run the step again",
        path="/etc/passwd",
    )


def _clear_killed_write(ctx: Context, result: Result) -> None:
    """A run killed while its write held the locks leaves them (its PID is gone) and its staging folder."""
    killed = [r for r in unfinished(read_journal(ctx), "accounts") if r["op"].get("kind") == "command"]
    if not killed:
        return
    what = f"remove the stale locks of the account files' write that run {killed[0]['run_id']} left"
    removed = ctx.do(what, lambda: account_install.clear_leftovers(ctx.runner, ctx.target, "/etc"))
    if removed is not None:
        result.note(f"Left by the killed run and removed: {', '.join(map(ctx.logical_path, removed)) or 'nothing'}.")


def _new_file(ctx: Context, target: AccountFiles, name: str, data: bytes) -> NewFile:
    """Mode and owner of the file it replaces; a new shadow or gshadow gets Debian's root:shadow 0640."""
    st = ctx.target.stat(f"/etc/{name}")
    if st is not None:
        return NewFile(name, data, st.mode, st.uid, st.gid)
    if name in SECRET_FILES:
        group = target.group.get("shadow")
        return NewFile(name, data, 0o640, 0, group.id if group is not None else 0)
    return NewFile(name, data, 0o644, 0, 0)


def _record(ctx: Context, result: Result, raw: dict[str, bytes | None], plan: MergePlan, files: list[NewFile]) -> None:
    """One change and one diff per file (shadow and gshadow masked)."""
    for f in files:
        path = f"/etc/{f.name}"
        result.change(f"write {path} ({_added(plan.rows, f.name)})")
        before = raw[f.name] or b""
        if f.name in SECRET_FILES:
            diff = fileops.unified_diff(masked(before), masked(f.data), path)
        else:
            diff = fileops.unified_diff(before.decode("utf-8", "replace"), f.data.decode("utf-8", "replace"), path)
        result.diffs.append(Diff(path, diff))


def _show(plan: MergePlan, result: Result) -> None:
    frame = pd.DataFrame(plan.rows, columns=["kind", "name", "id", "outcome", "detail", "conflict"])
    result.tables = [t for t in result.tables if t.title != TABLE]
    result.table(TABLE, frame)
    result.data["outcomes"] = {f"{r['kind']}:{r['name']}": r["outcome"] for r in plan.rows}


def _added(rows: list[dict], name: str) -> str:
    kind = "user" if name in ("passwd", "shadow") else "group"
    counts = Counter(
        str(r["outcome"]) for r in rows if r["kind"] == kind and r["outcome"] not in ("identical", "skipped", "kept")
    )
    return ", ".join(f"{n} {kind}s {outcome}" for outcome, n in sorted(counts.items())) or "entries updated"


def _refuse(conflicts: list[dict]) -> None:
    listed = "; ".join(f"{r['kind']}:{r['name']} ({r['detail']})" for r in conflicts[:10])
    more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
    example = ", ".join(f"'{r['kind']}:{r['name']}': 'skip'" for r in conflicts[:2])
    raise InputError(
        "accounts",
        f"{len(conflicts)} collision(s) between the old accounts and the target's: {listed}{more}. Nothing was written",
        "decide per entry with the parameter accounts_resolutions, e.g. {" + example + "} "
        "(skip: leave it out; take_old: the old entry replaces the target's; keep_target: keep the target's)",
    )
