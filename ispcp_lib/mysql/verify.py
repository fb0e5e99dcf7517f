"""Verification of restored databases: every table opens, its rows are counted and compared with the old server's.

Reading the live server (`read_live`) is kept apart from the tables shown in the report (the
`*_frame` functions), so the checks can be tested without pandas and the rendering without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ispcp_lib.facts import mysql_state

COLUMNS = ["database", "table", "engine", "old rows", "restored rows", "CHECK TABLE", "match"]


@dataclass
class LiveRead:
    """What the running server says of some databases."""

    engines: dict[str, dict[str, str]] = field(default_factory=dict)  # database -> table -> engine or VIEW
    counts: dict[str, dict[str, int | None]] = field(default_factory=dict)
    checks: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # only with check=True


def read_live(conn: Any, databases: list[str], check: bool) -> LiveRead:
    """Tables, COUNT(*) and (check=True) CHECK TABLE of each database.

    Counting first opens every table the normal way: MariaDB then re-stamps Aria tables that come from
    another server ("zerofilling moved table"); a CHECK TABLE as first access calls them corrupt.
    CHECK TABLE writes to MyISAM headers: a read-only look passes check=False.
    """
    out = LiveRead()
    for name in databases:
        tables = mysql_state.live_tables(conn, name)
        out.engines[name] = {t.name: t.engine or t.kind for t in tables}
        out.counts[name] = mysql_state.count_rows(conn, name, [t.name for t in tables if t.kind != "VIEW"])
        if check:
            out.checks[name] = mysql_state.check_tables(conn, name, [t.name for t in tables])
    return out


# The verdict of a system table the target's own mariadb-upgrade removed as obsolete.
UPGRADE_DROPPED = "dropped by mariadb-upgrade"


def _match(checked: bool, in_live: bool, before: int | None, after: int | None) -> str:
    if not checked:
        return ""
    if not in_live:
        return "NO"
    return "yes" if before is None or after is None or before == after else "NO"


def counts_frame(
    old: dict[str, dict[str, tuple[str, int | None]]],
    live: dict[str, dict[str, int | None]],
    checks: dict[str, dict[str, tuple[str, str]]],
    engines: dict[str, dict[str, str]] | None = None,
    own: dict[str, set[str]] | None = None,
    upgraded: bool = False,
) -> pd.DataFrame:
    """One row per table: old count, restored count, CHECK TABLE verdict and whether they agree.

    own: tables the target keeps its own copy of (not compared). upgraded: mariadb-upgrade ran, and it
    drops system tables its version no longer has (mysql.host since MariaDB 10.4): those are no failure.
    """
    engines, own = engines or {}, own or {}
    rows = []
    for database in sorted(set(old) | set(checks)):
        done = checks.get(database, {})
        for name in sorted(set(old.get(database, {})) | set(done)):
            engine, before = old.get(database, {}).get(name, ("", None))
            engine = engine or engines.get(database, {}).get(name, "")
            after = live.get(database, {}).get(name)
            verdict, message = done.get(name, ("", ""))
            if checks and name not in done:
                verdict, message = "missing", "not on the restored server"
                if upgraded and database == "mysql":
                    verdict, message = UPGRADE_DROPPED, ""
            match = _match(bool(checks), name in done, before, after)
            if verdict == UPGRADE_DROPPED:
                match = "obsolete"
            elif engine == "VIEW":
                match = "view" if checks else ""
            elif name in own.get(database, set()):
                match = "target's own"
            rows.append(_row(database, name, engine, before, after, verdict, message, match))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(
    database: str,
    table: str,
    engine: str,
    before: int | None,
    after: int | None,
    verdict: str,
    message: str,
    match: str,
) -> dict[str, Any]:
    return {
        "database": database,
        "table": table,
        "engine": engine,
        "old rows": "" if before is None else before,
        "restored rows": "" if after is None else after,
        "CHECK TABLE": verdict if verdict in ("", "OK", "missing") or not message else f"{verdict}: {message}",
        "match": match,
    }


def live_frame(
    found: LiveRead, old: dict[str, dict[str, tuple[str, int | None]]], databases: list[str]
) -> pd.DataFrame:
    """One row per table of databases restored on their own (customer databases); a database without tables
    gets a row saying so."""
    rows = []
    for name in databases:
        tables = found.engines.get(name, {})
        for table, engine in tables.items():
            _, before = old.get(name, {}).get(table, ("", None))
            after = found.counts.get(name, {}).get(table)
            verdict, message = found.checks.get(name, {}).get(table, ("", ""))
            if verdict == UPGRADE_DROPPED:
                match = "obsolete"
            elif engine == "VIEW":
                match = "view"
            elif before is None or after is None:
                match = ""
            else:
                match = "yes" if before == after else "NO"
            rows.append(_row(name, table, engine, before, after, verdict, message, match))
        if not tables:
            rows.append(_row(name, "(none)", "", None, None, "no tables on the server", "", "NO"))
    return pd.DataFrame(rows, columns=COLUMNS)


def failing(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose table does not open or whose count disagrees."""
    return frame[(~frame["CHECK TABLE"].isin(["", "OK", UPGRADE_DROPPED])) | (frame["match"] == "NO")]


def verdict_frame(database: str, verdicts: list[mysql_state.ChkVerdict]) -> pd.DataFrame:
    """The offline check's verdicts other than OK."""
    return pd.DataFrame(
        [
            {"database": database, "table": v.table, "engine": v.engine, "verdict": v.verdict, "detail": v.detail}
            for v in verdicts
            if v.verdict != "OK"
        ]
    )
