"""Replacing the target's whole datadir with the backup's complete one (the only way back for InnoDB tables
inside the old shared tablespace), keeping the old one beside it and undoing the swap when the server
does not start."""

from __future__ import annotations

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.facts import mysql_state, system
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import accounts, customer_dbs, datadir, records
from ispcp_lib.mysql.customer_restore import FAILURES, Action, Plan

SWAP_UPGRADE_WHAT = "run mariadb-upgrade --force (the old files come from an older server)"


def decide(
    ctx: Context, result: Result, found: customer_dbs.Discovery, plans: list[Plan], mode: str, live: dict[str, int]
) -> tuple[bool, str]:
    """Whether this run replaces the target's datadir with the backup's, and, if not, why."""
    assert ctx.backup is not None
    if mode == "never":
        return False, ""
    candidates = [p for p in plans if p.action in (Action.RESTORE, Action.CANNOT)]
    needed = [p for p in plans if p.action == Action.CANNOT and p.db.folder is not None]
    if not candidates:
        return False, ""
    if mode == "auto" and not needed:
        if not found.datadir_complete:
            return False, ""
        return False, (
            "not needed, every database has a way back of its own (customer_databases_whole_datadir = always forces it)"
        )
    if not found.datadir_complete:
        return False, f"not possible: {found.datadir_reason}"
    old = mysql_state.datadir_version(ctx.backup, found.backup_datadir)
    verdict, text = system.compare_server_versions(old, ctx.mysql.version())
    if verdict not in ("same", "upgrade"):
        return False, f"not possible: server versions {text}"
    why = _restored_elsewhere(ctx, found)
    if why:
        return False, why
    busy = [p.name for p in plans if p.action in (Action.DONE, Action.REFUSE) and live.get(p.name)]
    if busy:
        return False, f"not possible: {', '.join(busy)} already live on the target would be replaced"
    folders = mysql_state.list_folder(ctx.backup, found.backup_datadir) or {}
    own = sorted(n for n in live if n not in customer_dbs.SYSTEM_DATABASES and n not in folders)
    if own:
        return False, (
            f"not possible: the target has database(s) the backup's datadir lacks ({', '.join(own)}); "
            "the swap would take them off the server"
        )
    ispcp_db = found.ispcp_db
    result.note(
        f"Whole-datadir restore: {found.datadir_reason}; server versions {text}; mysql_restore restored "
        f"{ispcp_db} and mysql from the same folders."
    )
    return True, ""


def _restored_elsewhere(ctx: Context, found: customer_dbs.Discovery) -> str:
    """Why mysql_restore's record forbids the swap ("" when it restored ispcp and mysql from these folders)."""
    done = records.read(ctx, records.MYSQL_RESTORE)
    if done.get("datadir") != datadir.live_datadir(ctx):
        return (
            "not possible: mysql_restore has not restored ispcp and mysql into this datadir; the swap "
            "would replace them unchecked"
        )
    for name in (found.ispcp_db, "mysql"):
        rec = done.get("sources", {}).get(name)
        folder = datadir.join(found.backup_datadir, name)
        if rec is None or rec.get("kind") != "binary" or rec.get("signature") != records.signature(ctx, folder):
            how = f"from {rec.get('kind')} ({rec.get('path')})" if rec else "not at all"
            return (
                f"not possible: mysql_restore restored {name} {how}, not from the backup's folder; the swap "
                "would bring back what it chose not to use"
            )
    return ""


def swap(
    ctx: Context,
    result: Result,
    found: customer_dbs.Discovery,
    layout: datadir.Layout,
    owner: tuple[int, int],
    login: Login,
) -> Login:
    """Replace the target's datadir by the backup's complete one, keeping the old; returns an admin login after.

    The stop, the exchange of the folders (undone when the server does not start), the password reset
    and the upgrade are procedures: the dry run lists the same operations applying journals.
    """
    assert ctx.backup is not None
    src, live = found.backup_datadir, layout.datadir
    staged, kept = layout.staged_datadir, layout.kept_datadir
    carried = accounts.carried_logins(ctx)
    what = f"copy the backup's whole datadir {src} to {staged}"
    datadir.stage_from_backup(ctx, result, src, staged, owner, what=what)
    old = mysql_state.datadir_version(ctx.backup, src)
    verdict, _ = system.compare_server_versions(old, ctx.mysql.version())
    datadir.stop_server(ctx)
    ctx.do(
        f"move everything in {live} aside to {kept} (kept), move the staged datadir's contents in, start MySQL",
        lambda: _exchange(ctx, layout),
    )
    if ctx.apply:  # said at once: a failure after this point leaves the target's own datadir there
        result.backups.append(ctx.target.path(kept))
    if carried:
        users = ", ".join(c.user for c in carried)
        ctx.do(
            f"set the password of {users} again if the old grants lack it, in a short --skip-grant-tables "
            "--skip-networking session (the target's debian.cnf and saved root login keep working)",
            lambda: _reapply_logins(ctx, result, carried),
        )
    working = _working_login(ctx, carried) if ctx.apply else login
    if verdict == "upgrade":
        datadir.upgrade(ctx, SWAP_UPGRADE_WHAT, working)
    if not ctx.apply:
        return login
    check_system_databases(ctx, result, working, [found.ispcp_db, "mysql"])
    return working


def _working_login(ctx: Context, carried: list[Login]) -> Login:
    working = (carried[0] if carried else None) or accounts.admin_login(ctx)
    if working is None:
        raise PreconditionFailed(
            "MySQL admin login",
            "no login works after the whole-datadir restore",
            "run mysql_maintainer again (it resets debian-sys-maint)",
        )
    return working


def _exchange(ctx: Context, layout: datadir.Layout) -> None:
    """Move the live datadir's entries aside, the staged ones in, and start MySQL; undone when it fails."""
    live, staged = layout.datadir, layout.staged_datadir
    moving_in = False  # from here on the datadir holds the backup's files, not the target's own
    try:
        # The dead server's pid/socket files would confuse the start.
        leftovers = [n for n in ctx.target.listdir(staged) or [] if n.endswith((".pid", ".sock"))]
        if leftovers:
            argv = ["rm", "-f", "--", *(ctx.target.path(datadir.join(staged, n)) for n in leftovers)]
            ctx.runner.run(argv, mutates=True)
        for entry in ctx.target.listdir(live) or []:
            datadir.move(ctx, datadir.join(live, entry), datadir.join(layout.kept_datadir, entry))
        moving_in = True
        for entry in ctx.target.listdir(staged) or []:
            datadir.move(ctx, datadir.join(staged, entry), datadir.join(live, entry))
        datadir.remove_if_empty(ctx, staged)
        ctx.mysql.start()
    except FAILURES as exc:
        datadir.put_own_datadir_back(ctx, layout, moved_in=moving_in)
        raise PreconditionFailed(
            "whole-datadir restore",
            f"failed ({datadir.first_line(exc)}); the target's own datadir was put back and the "
            f"server started again with it; the backup's copy is in {layout.failed if moving_in else staged}",
            "read the server's error log; or set customer_databases_whole_datadir = never",
        ) from None


def check_system_databases(ctx: Context, result: Result, login: Login, names: list[str]) -> None:
    """The swap brought ispcp and mysql back from the backup too: every table must still open."""
    bad = []
    with accounts.session(ctx, login) as conn:
        for name in names:
            tables = [t.name for t in mysql_state.live_tables(conn, name) if t.kind != "VIEW"]
            mysql_state.count_rows(conn, name, tables)  # opens each table first (Aria re-stamping)
            checks = mysql_state.check_tables(conn, name, tables)
            bad += [f"{name}.{t}: {v} {m}" for t, (v, m) in checks.items() if v != "OK"]
    if bad:
        result.warn(
            f"after the whole-datadir restore, {len(bad)} table(s) of {' and '.join(names)} fail CHECK "
            f"TABLE: {'; '.join(bad[:4])}"
        )
    else:
        result.note(
            f"After the swap every table of {' and '.join(names)} passes CHECK TABLE (the same files "
            "mysql_restore restored)."
        )


def _reapply_logins(ctx: Context, result: Result, carried: list[Login]) -> None:
    """After the swap, the grants are the old server's again: give the carried logins their passwords back."""
    lost = accounts.lost_logins(ctx, carried)
    if lost:
        still = accounts.reset_passwords(ctx, lost)
        if still:
            raise PreconditionFailed(
                "MySQL login",
                f"{', '.join(still)} still refused after setting the password again",
                "run mysql_maintainer again",
            )
        result.note(
            f"The old grants lacked the current password of {', '.join(c.user for c in lost)}: set again, "
            "so the files that hold it (debian.cnf, mysql-root.cnf) keep working."
        )
