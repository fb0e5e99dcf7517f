"""accounts: bring the vu* domain users, the mailbox user and the mail group back into /etc."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.core.secrets import MASK
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.system import accounts_files as accounts_db
from ispcp_lib.system.accounts_files import AccountFiles

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
`gshadow`) at once, password hashes are carried over byte for byte, and the files are written
atomically while holding the same lock `useradd` and `passwd` use, keeping the previous versions.
A collision (a name the new server already uses with another ID, an ID another name already has,
a group member that does not exist) stops the step until the parameter `accounts_resolutions` says
what to do with that entry: `skip` it, `take_old` (the old entry wins), or `keep_target`.
Password hashes never appear in the report; the diffs of `shadow` and `gshadow` show them masked.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "accounts_resolutions",
        dict,
        {},
        "per-account answers to collisions, e.g. {'user:vu2001': 'skip'}",
        choices=accounts_db.RESOLUTIONS,
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

FILES = accounts_db.FILE_NAMES
# Writing passwd and group before shadow and gshadow: an interruption leaves a user without a shadow
# entry (legal: the account is just locked), never a shadow entry without its user.
WRITE_ORDER = ("passwd", "group", "shadow", "gshadow")
SECRET_FILES = ("shadow", "gshadow")


def mailbox_settings(conf: IspcpConf) -> tuple[str, str, int, str, int]:
    """(prefix, mailbox user, uid, mailbox group, gid) from an ispcp.conf; InputError naming the key."""
    values: dict[str, str] = {}
    for key in (
        "APACHE_SUEXEC_USER_PREF",
        "MTA_MAILBOX_UID_NAME",
        "MTA_MAILBOX_UID",
        "MTA_MAILBOX_GID_NAME",
        "MTA_MAILBOX_GID",
    ):
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
    conf = bl.load_old_conf(ctx)
    if conf is not None:
        return conf
    target = ctx.t("/etc/ispcp/ispcp.conf")
    if target.is_file():
        result.warn(
            "the backup has no etc/ispcp/ispcp.conf: the prefix and mailbox IDs come from the target's "
            "fresh ispcp.conf, which holds ispCP's defaults; check them against the old server"
        )
        return IspcpConf.load(target)
    raise InputError(
        "ispcp.conf",
        "neither the backup nor the target has one, so the domain-user prefix and the mailbox IDs are unknown",
        "put the old ispcp.conf into the backup (etc/ispcp/ispcp.conf)",
        path=str(ctx.b("/etc/ispcp/ispcp.conf")),
    )


def _read_old(ctx: Context, result: Result) -> AccountFiles:
    data: dict[str, bytes] = {}
    paths: dict[str, str] = {}
    for name in FILES:
        path = ctx.b(f"/etc/{name}")
        paths[name] = str(path)
        if path.is_file():
            data[name] = path.read_bytes()
        elif name in SECRET_FILES:
            data[name] = b""
            result.warn(f"the backup has no /etc/{name}: accounts come without their passwords and are added locked")
        else:
            raise InputError(
                f"/etc/{name}",
                "is missing from the backup",
                f"restore the old /etc/{name} into the backup; without it the accounts cannot be merged",
                path=str(path),
            )
    return AccountFiles.from_bytes(**data, paths=paths)


def _read_target(ctx: Context) -> AccountFiles:
    data = {}
    for name in FILES:
        path = ctx.t(f"/etc/{name}")
        data[name] = path.read_bytes() if path.is_file() else b""
    return AccountFiles.from_bytes(**data, paths={n: ctx.display_path(ctx.t(f"/etc/{n}")) for n in FILES})


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


def _shadow_meta(ctx: Context, target: AccountFiles, path: Path) -> tuple[int | None, int | None]:
    """A new shadow file gets Debian's mode root:shadow 0640 (an existing one keeps its own)."""
    if path.exists():
        return None, None
    group = target.group.get("shadow")
    return 0o640, (group.id if group is not None else 0)


def _plan(
    ctx: Context, old: AccountFiles, selection: accounts_db.Selection, resolutions: dict[str, str], result: Result
) -> tuple[AccountFiles, accounts_db.MergePlan]:
    target = _read_target(ctx)
    plan = accounts_db.plan_merge(target, selection, resolutions)
    for value in plan.secrets:
        ctx.secrets.add(value, "password hash")
    if not plan.ok or plan.new is None:
        _show(plan, result)
        _refuse(plan.conflicts)
    return target, plan


def _show(plan: accounts_db.MergePlan, result: Result) -> None:
    frame = pd.DataFrame(plan.rows, columns=["kind", "name", "id", "outcome", "detail", "conflict"])
    result.tables = [t for t in result.tables if t.title != TABLE]
    result.table(TABLE, frame)
    result.data["outcomes"] = {f"{r['kind']}:{r['name']}": r["outcome"] for r in plan.rows}


TABLE = "Accounts from the old server"


@action("accounts")
def run(ctx: Context, result: Result) -> None:
    bl.check_backup_root(ctx)
    conf = _conf(ctx, result)
    prefix, mbox_user, mbox_uid, mbox_group, mbox_gid = mailbox_settings(conf)
    old = _read_old(ctx, result)
    selection = accounts_db.select_entries(old, prefix, mbox_user, mbox_uid, mbox_group, mbox_gid)
    resolutions = _resolutions(ctx)
    target, plan = _plan(ctx, old, selection, resolutions, result)
    assert plan.new is not None
    if plan.new.changed() and ctx.apply:
        # The lock is taken only to write (creating /etc/.pwd.lock is itself a change), and the plan is
        # made again under it, so no useradd can slip in between reading and writing.
        timeout = ctx.param("accounts_lock_timeout")
        with accounts_db.pwd_lock(ctx.t("/etc"), timeout=timeout):
            target, plan = _plan(ctx, old, selection, resolutions, result)
            assert plan.new is not None
            _write(ctx, result, target, plan)
    else:
        _write(ctx, result, target, plan)  # a dry run records the planned writes and diffs
    _show(plan, result)
    for warning in plan.warnings:
        result.warn(warning)
    counts: dict[str, int] = {}
    for r in plan.rows:
        counts[str(r["outcome"])] = counts.get(str(r["outcome"]), 0) + 1
    result.summary = f"prefix {prefix!r}, mailbox {mbox_user}={mbox_uid} / {mbox_group}={mbox_gid}: " + ", ".join(
        f"{n} {o}" for o, n in sorted(counts.items())
    )
    if not result.changes:
        result.noop_reason = (
            f"all {len(plan.rows)} selected accounts are already on the target as they were "
            "on the old server (or skipped by accounts_resolutions)"
        )


def _write(ctx: Context, result: Result, target: AccountFiles, plan: accounts_db.MergePlan) -> None:
    assert plan.new is not None
    rendered = plan.new.render()
    changed = plan.new.changed()
    for name in WRITE_ORDER:
        if name not in changed:
            continue
        path = ctx.t(f"/etc/{name}")
        secret = name in SECRET_FILES
        mode, gid = _shadow_meta(ctx, target, path) if secret else (None, None)
        before = path.read_bytes() if path.exists() else b""
        ctx.write_file(
            path,
            rendered[name],
            mode=mode,
            gid=gid,
            show_diff=not secret,
            what=f"write {ctx.display_path(path)} ({_added(plan.rows, name)})",
        )
        if secret:
            shown = ctx.display_path(path)
            result.diffs.append(Diff(shown, fileops.unified_diff(masked(before), masked(rendered[name]), shown)))


def _added(rows: list[dict], name: str) -> str:
    kind = "user" if name in ("passwd", "shadow") else "group"
    counts: dict[str, int] = {}
    for r in rows:
        if r["kind"] == kind and r["outcome"] not in ("identical", "skipped", "kept"):
            counts[str(r["outcome"])] = counts.get(str(r["outcome"]), 0) + 1
    return ", ".join(f"{n} {kind}s {o}" for o, n in sorted(counts.items())) or "entries updated"


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
