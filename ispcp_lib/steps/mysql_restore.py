"""mysql_restore: the old `ispcp` and `mysql` databases back into the target's MariaDB, checked table by table."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pandas as pd
import pymysql

from ispcp_lib.core.action import action, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, PreconditionFailed
from ispcp_lib.core.operations import killed_run
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout, mysql_creds, mysql_state
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import accounts, datadir, dialect, dumps, records, verify
from ispcp_lib.mysql import restore_sources as sources_lib
from ispcp_lib.mysql.restore_sources import Kind, Source

TITLE = "Restore the ispCP and mysql databases"
GUIDE = (
    "the section that stops MySQL, replaces the `ispcp` and `mysql` folders under /var/lib/mysql with the "
    "backup's binary copies (renaming the fresh ones to keep them) and runs `chown -R mysql:mysql`"
)
EXPLANATION = """
This is the heart of the recovery. The `ispcp` database holds every domain, mailbox, FTP and SQL
account the panel manages; the `mysql` database holds the logins, ispCP's own among them. A binary
copy of both folders is enough, but only when it is done right: the server must be **stopped** (never
killed, or it leaves half-written tables), the fresh folders must be **kept**, the files must belong to
the target's `mysql` user, and the server version must be able to read the old files.

**Refused before anything changes:** a table with a missing part (`.frm`, or `.MYD`/`.MYI` for MyISAM,
`.MAD`/`.MAI` for Aria) or a file shorter than its header says; a table that `myisamchk`/`aria_chk
--check --read-only` find damaged (their verdicts are shown); InnoDB tables in these databases, because
an InnoDB table's data dictionary lives in the server's shared tablespace (`ibdata1`), so its folder
alone does not travel; a backup written by a newer server than the target's; a datadir on a read-only
filesystem. The one InnoDB exception are the tables a MariaDB keeps for itself in `mysql`
(`innodb_table_stats`, `innodb_index_stats`, `gtid_slave_pos`, `transaction_registry`): they hold
statistics and replication state, not configuration, so the target **keeps its own** and the backup's
are left behind (copied over, MariaDB reports them as corrupted). After an older server's files,
`mariadb-upgrade` runs once the server is up.

**The swap.** While the server still runs and the checks read the backup, the backup's folders are
copied (`cp -a`: every byte, mode and time) into a staging folder beside the datadir and given to the
`mysql` user and group of the target's own `/etc/passwd` and `/etc/group`. An Aria table whose data file
has a never-written page (`mysql.proc` of a current MariaDB) is rebuilt in the staged copy with
`aria_chk --recover --zerofill`: MariaDB re-stamps other moved Aria tables for itself, but calls that one
corrupt. A refusal removes the staged copies again. Only then is the server stopped through its service,
the target's `ispcp` and `mysql` folders are renamed into `<datadir>.restore-<run id>/kept/` (beside the
datadir, not inside it, where the server would take them for databases), the staged copies are renamed
into place, and the server is started. If it does not come up, the kept folders are put back and the
server is started again on them, so the target is never left without its database.

**Verified, not assumed.** `CHECK TABLE` runs on every table of both databases. The row-count table
compares the old server's count with the restored server's `COUNT(*)`. The old count is the number the
old server wrote into each MyISAM/Aria index header when it last closed the table (read from the
backup without a server); the offline check and `CHECK TABLE` read the rows themselves, so a header that
disagrees with its data is caught there. Finally the logins that the backup implies are tried: its
`debian.cnf`, and ispCP's `DATABASE_USER` with the password decrypted by the backup's key files. If none
works, the tables are checked in a short `--skip-grant-tables --skip-networking` session instead and
`mysql_maintainer` sets a new maintainer password next.

**SQL dumps** are accepted instead (`mysql_restore_source`): the dump `ispcp-backup-ispcp` leaves in
`BACKUP_FILE_DIR` (`.sql`, `.sql.gz`, `.sql.bz2`) and a mysqldump of the `mysql` database. They are
loaded with the `mariadb` client (the password in a temporary 0600 option file, never on a command line)
into a fresh database, the target's folder kept the same way; the old row counts are then the rows in
the dump's INSERT statements. A marker in the state directory records what was restored from which
files, so running the step again changes nothing.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "mysql_restore_source",
        str,
        "auto",
        "restore from the binary database folders (auto: when present) or from SQL dumps",
        choices=("auto", "binary", "dump"),
    ),
    Param(
        "mysql_restore_mysql_dump",
        str,
        None,
        "path in the backup of a mysqldump of the `mysql` database (default: looked "
        "for in BACKUP_FILE_DIR, /var/backups/mysql, /var/backups and /root)",
    ),
)

_FAILURE_KINDS = (PreconditionFailed, CommandFailed)


UPGRADE_WHAT = "run mariadb-upgrade --force (the old files come from an older or unknown server)"


@action("mysql_restore")
def run(ctx: Context, result: Result) -> None:
    backup_layout.check_backup_root(ctx)
    if ctx.mysql is None:
        raise PreconditionFailed("MySQL service", "is not configured", "set the mysql parameter")
    assert ctx.backup is not None
    conf = backup_layout.load_old_conf(ctx)
    backup_datadir = datadir.old_datadir(conf)
    live = datadir.live_datadir(ctx)
    sources = sources_lib.choose(ctx, result, conf, datadir.ispcp_database(conf), backup_datadir)

    undo_killed_run(ctx, result, live)
    reason = already_restored(ctx, sources, live)
    if reason is not None:
        result.noop_reason = reason
        result.summary = "already restored"
        _report_live_counts(ctx, result, sources)
        return

    # Every check comes before the first change.
    sources_lib.scan(ctx, sources)
    for src in sources:
        if src.kind is Kind.BINARY:
            sources_lib.check_binary(ctx, result, src, backup_datadir)
        elif src.kind is Kind.DUMP:
            sources_lib.check_dump(ctx, result, src)
    binary = any(s.kind is Kind.BINARY for s in sources)
    verdict = sources_lib.check_versions(ctx, result, backup_datadir, live) if binary else "same"
    layout = datadir.work_layout(ctx, live)
    datadir.check_writable(ctx, [live, layout.work])
    _check_space(ctx, result, sources, layout)
    owner = datadir.mysql_owner(ctx)
    loader = _early_loader(ctx, sources)
    _note_other_databases(ctx, result, backup_datadir, live, sources)

    old_counts = sources_lib.old_counts(sources)
    result.table("What is restored", pd.DataFrame([_plan_row(ctx, s, layout) for s in sources]))
    _restore(ctx, result, sources, layout, owner, verdict, loader, old_counts)


def _check_space(ctx: Context, result: Result, sources: list[Source], layout: datadir.Layout) -> None:
    """The staged copies, the target's folders kept and the dumps loaded must fit (before any change)."""
    binary = [s for s in sources if s.kind is Kind.BINARY and s.folder is not None]
    dumped = [s for s in sources if s.kind is Kind.DUMP and s.dump_file is not None]
    live = [datadir.join(layout.datadir, s.database) for s in sources]
    mysql_copied = [datadir.join(layout.datadir, "mysql") for s in dumped if s.database == "mysql"]
    datadir.check_space(
        ctx,
        result,
        layout,
        staged=[s.folder for s in binary if s.folder is not None],
        moved_aside=[p for p in live if p not in mysql_copied],
        copied_aside=mysql_copied,
        dump_bytes=sum(s.dump_file.size for s in dumped if s.dump_file is not None),
    )


def _early_loader(ctx: Context, sources: list[Source]) -> Login | None:
    """The login that loads the dumps when the target's grants stay live (None: chosen after the start).

    With a binary `mysql` folder the old grants are live once the server is up again: the loader is then
    chosen after the start (_load_dumps). Otherwise the target's grants are live and its admin loads.
    """
    if not any(s.kind is Kind.DUMP for s in sources) or sources_lib.old_grants_after_swap(sources):
        return None
    loader = mysql_creds.working_admin(ctx) if ctx.mysql.status() else mysql_creds.target_admin(ctx)
    if loader is None:
        raise PreconditionFailed(
            "target's debian.cnf",
            "gives no working admin login to load the dumps with",
            "fix /etc/mysql/debian.cnf of the target (or run the binary restore)",
        )
    return loader


# --- a run killed half way -------------------------------------------------------------------------


def undo_killed_run(ctx: Context, result: Result, live: str) -> None:
    """A run killed in this step: its record written means the restore was complete (only its empty
    staging folder is left); otherwise its half-done swap is undone from its run folder."""
    run = killed_run(read_journal(ctx), "mysql_restore", ctx.run_id)
    if run is None:
        return
    if records.read(ctx, records.MYSQL_RESTORE).get("run_id") == run:
        layout = datadir.Layout(live, f"{live.rstrip('/')}.restore-{run}")
        if ctx.target.is_dir(layout.staging):
            datadir.remove_if_empty(ctx, layout.staging)
        return
    datadir.undo_killed(ctx, result, live, "restore", run, replace_live=True)


# --- the record (idempotence) ---------------------------------------------------------------------


def already_restored(ctx: Context, sources: list[Source], live: str) -> str | None:
    """Why nothing needs doing (the same inputs were restored and are live), or None."""
    record = records.read(ctx, records.MYSQL_RESTORE)
    if record.get("datadir") != live:
        return None
    done = record.get("sources", {})
    for src in sources:
        if src.kind is Kind.KEEP:
            continue
        rec = done.get(src.database)
        if rec is None or rec.get("kind") != src.kind.value or rec.get("signature") != _signature(ctx, src):
            return None
        if not ctx.target.is_dir(datadir.join(live, src.database)):
            return None
    names = " and ".join(s.database for s in sources if s.kind is not Kind.KEEP)
    return (
        f"{names} were restored in run {record.get('run_id')} ({record.get('ts')}) from these same backup "
        f"files, and their folders are live in {live}"
    )


def _signature(ctx: Context, src: Source) -> str:
    assert src.input is not None
    return records.signature(ctx, src.input)


def _write_record(ctx: Context, sources: list[Source], layout: datadir.Layout, kept: dict[str, str]) -> None:
    records.write(
        ctx,
        records.MYSQL_RESTORE,
        {
            "run_id": ctx.run_id,
            "ts": dt.datetime.now().isoformat(timespec="seconds"),
            "datadir": layout.datadir,
            "work": layout.work,
            "kept": kept,
            "sources": {
                s.database: {
                    "kind": s.kind.value,
                    "path": s.path,
                    "signature": _signature(ctx, s),
                    "skipped": s.skipped,
                }
                for s in sources
                if s.kind is not Kind.KEEP
            },
        },
    )


# --- the plan -------------------------------------------------------------------------------------


def _plan_row(ctx: Context, src: Source, layout: datadir.Layout) -> dict[str, Any]:
    live = datadir.join(layout.datadir, src.database)
    present = ctx.target.is_dir(live)
    if src.kind is Kind.BINARY and src.files is not None:
        what = ", ".join(f"{n} {e}" for e, n in src.files.engines().items())
    elif src.kind is Kind.DUMP and src.dump is not None:
        what = f"{len(src.dump.tables)} tables, {sum(src.dump.rows.values())} rows"
    else:
        what = "—"
    return {
        "database": src.database,
        "source": src.kind.value,
        "from": src.path or "target's own",
        "holds": what,
        "target's folder now": live if present else "absent",
        "kept as": datadir.join(layout.kept, src.database) if src.kind is not Kind.KEEP and present else "—",
        "left behind": ", ".join(src.skipped) or "—",
    }


def _note_other_databases(ctx: Context, result: Result, backup_datadir: str, live: str, sources: list[Source]) -> None:
    assert ctx.backup is not None
    found = mysql_state.list_folders(ctx.backup, [backup_datadir])[backup_datadir] or {}
    here = mysql_state.list_folder(ctx.target, live) or {}
    ours = {s.database for s in sources}
    others = sorted(
        e.name
        for e in found.values()
        if e.kind == "d"
        and e.name not in ours
        and e.name not in ("performance_schema", "sys", "lost+found")
        and e.name not in here
    )
    if others:
        result.note(
            f"The backup holds {len(others)} more database folder(s) ({', '.join(others[:6])}"
            f"{' ...' if len(others) > 6 else ''}): customer databases. As in the guide, this step restores "
            "only ispcp and mysql; their logins come back with mysql, their data with the "
            "customer_databases step."
        )


# --- the restore ----------------------------------------------------------------------------------


def _restore(
    ctx: Context,
    result: Result,
    sources: list[Source],
    layout: datadir.Layout,
    owner: tuple[int, int],
    verdict: str,
    loader: Login | None,
    old_counts: dict[str, dict[str, tuple[str, int | None]]],
) -> None:
    binary = [s for s in sources if s.kind is Kind.BINARY]
    replaced = [s for s in sources if s.kind is not Kind.KEEP]
    _stage_and_check(ctx, result, binary, layout, owner)
    was_running = ctx.mysql.status()
    datadir.stop_server(ctx)
    kept: dict[str, str] = {}
    placed: list[str] = []
    try:
        for src in replaced:
            _keep_target(ctx, result, src, layout, kept)
        for src in binary:
            _place(ctx, result, src, layout, kept, placed)
        placed += [s.database for s in replaced if s.kind is Kind.DUMP and s.database != "mysql"]
        ctx.do("start MySQL", ctx.mysql.start)
        _load_dumps(ctx, result, sources, loader)
        if not ctx.apply:
            _plan_rest(ctx, result, sources, verdict, old_counts, was_running)
            datadir.remove_if_empty(ctx, layout.staging)
            return
    except (*_FAILURE_KINDS, OSError, pymysql.MySQLError) as exc:
        if not ctx.apply:
            raise
        _roll_back(ctx, result, layout, placed, kept, exc)
        raise PreconditionFailed(
            "MySQL restore",
            f"failed after the copy ({datadir.first_line(exc)}). The original folders were put back and "
            f"the server was started again with them; the restored copies are in {layout.failed}",
            "read the error above and the server's error log, fix the backup, then run this step again",
        ) from None

    _verify(ctx, result, sources, verdict, old_counts)
    _write_record(ctx, sources, layout, kept)
    datadir.remove_if_empty(ctx, layout.staging)
    names = " and ".join(s.database for s in replaced)
    result.summary = f"{names} restored, every table checked; originals kept in {layout.kept}"


def _stage_and_check(
    ctx: Context, result: Result, binary: list[Source], layout: datadir.Layout, owner: tuple[int, int]
) -> None:
    """Stage the binary folders beside the datadir while the server still serves; refuse damaged tables.

    The offline check reads the backup where it lies while the copies are staged (when that machine has
    myisamchk/aria_chk), else the staged copies on the target: the downtime is only the swap. A refusal
    removes the staged copies again.
    """
    assert ctx.backup is not None
    folders = [s.files for s in binary if s.files is not None]
    on_backup = bool(folders) and bool(mysql_state.chk_tools(ctx.backup))
    pending = mysql_state.OfflineCheck(ctx.backup, folders) if on_backup else None
    try:
        datadir.make_dir(ctx, layout.work)
        for src in binary:
            assert src.folder is not None
            staged = datadir.join(layout.staging, src.database)
            if src.skipped:
                result.change(f"leave the backup's system InnoDB tables behind: {', '.join(src.skipped)}")
            datadir.stage_from_backup(ctx, result, src.folder, staged, owner, src.files, src.skipped)
        if pending is not None:
            verdicts = pending.wait()
        elif folders and ctx.apply and mysql_state.chk_tools(ctx.target):
            staged_files = [
                dataclasses.replace(f, path=datadir.join(layout.staging, s.database)) for s, f in zip(binary, folders)
            ]
            verdicts = mysql_state.OfflineCheck(ctx.target, staged_files).wait()
        else:
            verdicts = None
        _judge_offline(result, binary, verdicts)
    except BaseException:
        if pending is not None:
            pending.cancel()
        if ctx.apply and ctx.target.exists(layout.work):
            datadir.remove_tree(ctx, layout.work)
            result.changes.clear()
            result.note("nothing on the target changed: the staged copies were removed again")
        raise


def _judge_offline(result: Result, binary: list[Source], found: list[list[mysql_state.ChkVerdict]] | None) -> None:
    """Refuse damaged tables, with the offline verdicts of myisamchk/aria_chk --read-only in the report."""
    if not binary:
        return
    if found is None:
        result.warn("myisamchk/aria_chk are not installed: the tables are checked only after the restore")
        found = [[] for _ in binary]
    for src, verdicts in zip(binary, found):
        ok = sum(1 for v in verdicts if v.verdict == "OK")
        if verdicts:
            result.note(
                f"{src.database}: {ok} of {len(verdicts)} MyISAM/Aria tables in the backup pass "
                "myisamchk/aria_chk --check --read-only"
            )
        frame = verify.verdict_frame(src.database, verdicts)
        if not frame.empty:
            result.table(f"Tables of the backup's {src.database} that the offline check questions", frame)
        for v in verdicts:
            if v.verdict == "warning":
                result.warn(f"{src.database}.{v.table}: {v.detail}")
        refusal = sources_lib.offline_problems(src, verdicts)
        if refusal is not None:
            raise refusal


def _keep_target(ctx: Context, result: Result, src: Source, layout: datadir.Layout, kept: dict[str, str]) -> None:
    """Move the target's folder aside (a copy, for a mysql dump loaded on top); record it once it is kept."""
    live = datadir.join(layout.datadir, src.database)
    if not ctx.target.is_dir(live):
        return
    dest = datadir.join(layout.kept, src.database)
    datadir.make_dir(ctx, layout.kept)
    if src.kind is Kind.DUMP and src.database == "mysql":
        ctx.runner.run(
            ["cp", "-a", "--", ctx.target.path(live), ctx.target.path(dest)],
            mutates=True,
            timeout=7200,
            what=f"copy {live} to {dest} (kept)",
        )
    else:
        result.change(f"move {live} aside to {dest} (kept)")
        datadir.move(ctx, live, dest)
    kept[src.database] = dest
    if ctx.apply:
        result.backups.append(ctx.target.path(dest))


def _place(
    ctx: Context, result: Result, src: Source, layout: datadir.Layout, kept: dict[str, str], placed: list[str]
) -> None:
    """Rename the staged copy into the datadir; the mysql folder gets the target's own system InnoDB tables."""
    live = datadir.join(layout.datadir, src.database)
    result.change(f"move the staged {src.database} into {layout.datadir}")
    datadir.move(ctx, datadir.join(layout.staging, src.database), live)
    if ctx.apply:
        placed.append(src.database)
    if src.skipped and src.database in kept:
        result.change(f"give the new mysql folder the target's own {', '.join(src.skipped)}")
        wanted = {f"{n}{suffix}" for n in src.skipped for suffix in (".frm", ".ibd")}
        present = set(ctx.target.listdir(kept[src.database]) or []) if ctx.apply else wanted
        own = [ctx.target.path(datadir.join(kept[src.database], n)) for n in sorted(wanted & present)]
        if own:
            ctx.runner.run(["cp", "-a", "--", *own, ctx.target.path(live)], mutates=True)


def _plan_rest(
    ctx: Context,
    result: Result,
    sources: list[Source],
    verdict: str,
    old_counts: dict[str, dict[str, tuple[str, int | None]]],
    was_running: bool,
) -> None:
    # What follows the start needs the started server (its grants decide the login): the same
    # procedures the apply performs, planned here without it.
    if any(s.kind is Kind.DUMP for s in sources) and sources_lib.old_grants_after_swap(sources):
        result.note(
            "The dump is loaded after the start, when the backup's grants are live: with a login the backup "
            "implies (its debian.cnf, ispCP's DATABASE_USER), else in a short grant-less session."
        )
    if verdict in ("upgrade", "unknown"):
        datadir.upgrade(ctx, UPGRADE_WHAT, None)
    result.note(
        "then verify (reads, no change): CHECK TABLE every table of both databases, compare row counts, "
        "try the implied logins"
    )
    result.table(
        "Row counts of the backup (the restored side is filled in when applying)",
        verify.counts_frame(old_counts, {}, {}),
    )
    if not was_running:
        result.note("MySQL is not running now; the restore starts it")
    result.summary = "planned: " + " and ".join(
        f"{s.database} from {s.kind.value}" for s in sources if s.kind is not Kind.KEEP
    )


def _implied(ctx: Context, sources: list[Source]) -> list[Login]:
    own_grants_kept = any(s.database == "mysql" and s.kind is Kind.KEEP for s in sources)
    return accounts.implied_logins(ctx, own_grants_kept)


def _load_dumps(ctx: Context, result: Result, sources: list[Source], loader: Login | None) -> None:
    """Plan or load the dumps after the start, with a login the live grants accept: one procedure (the
    login is chosen inside it, from the restored grants), with a change line per dump."""
    pending = [s for s in sources if s.kind is Kind.DUMP]
    if not pending:
        return
    for src in pending:
        result.change(_load_what(src))
    what = f"load the dump(s) of {', '.join(s.database for s in pending)}"
    ctx.do(what, lambda: _load_all(ctx, result, sources, pending, loader), announce=False)


def _load_all(ctx: Context, result: Result, sources: list[Source], pending: list[Source], loader: Login | None) -> None:
    if loader is None:  # the old grants are live: a login the backup implies, else a grant-less session
        loader = accounts.first_working(ctx, _implied(ctx, sources))
        if loader is not None:
            result.note(f"The dump is loaded with the login from {loader.source} (the old grants are live now).")
    if loader is not None:
        for src in pending:
            _load_dump(ctx, src, loader)
        return
    result.warn(
        "no login that the backup implies works against the restored grants: the dump is loaded in a short "
        "--skip-grant-tables --skip-networking session (MySQL restarted without grant tables, local socket "
        "only, then normally)"
    )
    with accounts.grantless_session(ctx):
        for src in pending:
            _load_dump(ctx, src, Login("root", "", "a --skip-grant-tables session"))


def _load_dump(ctx: Context, src: Source, loader: Login) -> None:
    assert src.sql is not None
    sql = src.sql
    if src.database == "mysql":
        sql += b"\n" + dialect.FLUSH_PRIVILEGES[0].encode() + b";\n"
    else:
        what = f"CREATE DATABASE {dialect.quote_ident(src.database)} for its dump"
        ctx.sql(what, [dialect.create_database(src.database)], connect=accounts.opener(ctx, loader), announce=False)
    with dumps.defaults_file(ctx.target, loader, str(ctx.mysql.socket)) as cnf:
        argv = dumps.client_argv(ctx.target, cnf, "--batch", src.database)
        ctx.runner.run(argv, input=sql, mutates=True, timeout=7200, what=_load_what(src))


def _load_what(src: Source) -> str:
    return f"load {src.path} into database {src.database} with the mariadb client"


def _roll_back(
    ctx: Context, result: Result, layout: datadir.Layout, placed: list[str], kept: dict[str, str], cause: BaseException
) -> None:
    """Put the target's own folders back and start the server on them."""
    try:
        ctx.mysql.stop()
    except _FAILURE_KINDS:
        pass  # it never came up
    for name in placed:
        live = datadir.join(layout.datadir, name)
        if ctx.target.exists(live):
            datadir.move(ctx, live, datadir.join(layout.failed, name))
    for name, dest in kept.items():
        live = datadir.join(layout.datadir, name)
        if ctx.target.exists(live):  # the mysql folder a dump was loaded into
            datadir.move(ctx, live, datadir.join(layout.failed, name))
        datadir.move(ctx, dest, live)
    result.backups[:] = [b for b in result.backups if b not in {ctx.target.path(d) for d in kept.values()}]
    result.warn(f"rolled back: the target's own {', '.join(kept) or 'folders'} are in place again")
    try:
        ctx.mysql.start()
    except _FAILURE_KINDS as exc:
        raise PreconditionFailed(
            "MySQL restore",
            f"failed after the copy ({datadir.first_line(cause)}); the target's own folders were put back, "
            f"but the server does not start with them either ({datadir.first_line(exc)})",
            f"read the server's error log; the restored copies are in {layout.failed}",
        ) from None


# --- verification ---------------------------------------------------------------------------------


def _verify(
    ctx: Context,
    result: Result,
    sources: list[Source],
    verdict: str,
    old_counts: dict[str, dict[str, tuple[str, int | None]]],
) -> None:
    with accounts.admin_connection(ctx, result, _implied(ctx, sources)) as (conn, login):
        if verdict in ("upgrade", "unknown"):
            datadir.upgrade(ctx, UPGRADE_WHAT, login)
        found = verify.read_live(conn, [s.database for s in sources if s.kind is not Kind.KEEP], check=True)
    own = {s.database: set(s.skipped) for s in sources}
    upgraded = verdict in ("upgrade", "unknown")
    frame = verify.counts_frame(old_counts, found.counts, found.checks, found.engines, own, upgraded)
    for row in frame[frame["CHECK TABLE"] == verify.UPGRADE_DROPPED].itertuples():
        result.note(f"{row.database}.{row.table}: removed by the server's own mariadb-upgrade (obsolete)")
    result.table(
        "Row counts: old server (index headers or dump) vs restored server (COUNT(*)), with CHECK TABLE", frame
    )
    result.data["row_counts"] = frame.to_dict("records")
    bad = verify.failing(frame)
    if not bad.empty:
        first = bad.iloc[0]
        raise PreconditionFailed(
            "restored database",
            f"{len(bad)} table(s) fail the verification, first {first['database']}."
            f"{first['table']}: CHECK TABLE {first['CHECK TABLE']}, old {first['old rows']} rows, restored "
            f"{first['restored rows']}",
            "see the table above; the restored folders stay in place and the "
            "originals are kept (listed under safety copies): repair the table or restore it from a dump",
        )


def _report_live_counts(ctx: Context, result: Result, sources: list[Source]) -> None:
    """For a no-op: what the live server says now (read only: no CHECK TABLE, it would write to MyISAM headers)."""
    if not ctx.mysql.status():
        return
    candidates = [*_implied(ctx, sources), mysql_creds.target_admin(ctx)]
    login = accounts.first_working(ctx, [c for c in candidates if c is not None])
    if login is None:
        return
    names = [s.database for s in sources if s.kind is not Kind.KEEP]
    with ctx.mysql.connect(login.user, login.password) as conn:
        found = verify.read_live(conn, names, check=False)
    rows = [
        {"database": n, "tables": len(found.engines[n]), "rows": sum(v for v in found.counts[n].values() if v)}
        for n in names
    ]
    result.table("The restored databases as the server reports them now", pd.DataFrame(rows))
