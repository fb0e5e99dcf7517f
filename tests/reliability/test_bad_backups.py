"""The bad-backup corpus: backups and parameters an attacker or an accident would bring.

Each case must end one of two ways, never a third:

* refused early: the first step that looks at it (the parameter check when the run opens, inventory
  or preflight) fails before the first change of the run, the message names the item and the fix
  ("Fix: ..."), and the target's fingerprint is unchanged;
* handled: the early checks pass and say so in a warning naming the item.

A case that passes the early checks silently, fails with a Python error, or leaves the target changed
counts as late or a traceback. conftest.py prints `N cases: N refused early or handled, 0 late, 0
tracebacks` at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.errors import IspcpError
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.private_mysql import mysql_ids
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import inventory, preflight
from tests.helpers import fetch


@dataclass(frozen=True)
class Case:
    id: str
    spoil: Callable[[World, Path], None] = lambda world, backup: None  # changes the backup copy
    params: dict[str, Any] | None = None  # parameters over the world's
    names: str = ""  # the refusal or warning must name this


# --- ways to spoil a backup ---------------------------------------------------------------------------


def conf_value(key: str, value: str | None) -> Callable[[World, Path], None]:
    def spoil(world: World, backup: Path) -> None:
        path = backup / "etc/ispcp/ispcp.conf"
        if value is None:
            path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith(key)))
            return
        conf = IspcpConf.load(path)
        conf.set(key, value)
        path.write_text(conf.text())

    return spoil


def conf_text(make: Callable[[str], str]) -> Callable[[World, Path], None]:
    def spoil(world: World, backup: Path) -> None:
        path = backup / "etc/ispcp/ispcp.conf"
        path.write_text(make(path.read_text()))

    return spoil


def removed(logical: str) -> Callable[[World, Path], None]:
    def spoil(world: World, backup: Path) -> None:
        path = backup / logical
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    return spoil


def linked(logical: str, target: str) -> Callable[[World, Path], None]:
    """Replace a backup path (or the first entry of a folder, with '*') by a symlink to target."""

    def spoil(world: World, backup: Path) -> None:
        path = backup / logical
        if path.name == "*":
            path = sorted(p for p in path.parent.iterdir() if not p.name.startswith("."))[0]
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)

    return spoil


def written(logical: str, data: bytes) -> Callable[[World, Path], None]:
    def spoil(world: World, backup: Path) -> None:
        path = backup / logical
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return spoil


def in_first_htdocs(name: str, data: bytes) -> Callable[[World, Path], None]:
    def spoil(world: World, backup: Path) -> None:
        www = backup / "var/www/virtual"
        first = sorted(p for p in www.iterdir() if p.is_dir())[0]
        (first / "htdocs").mkdir(exist_ok=True)
        (first / "htdocs" / name).write_bytes(data)

    return spoil


def truncated_table(pattern: str) -> Callable[[World, Path], None]:
    """Cut a customer database's first table file in half, and drop its dumps."""

    def spoil(world: World, backup: Path) -> None:
        db = world.manifest["customer_dbs"][0]["name"]
        files = sorted((backup / "var/lib/mysql" / db).glob(pattern))
        data = files[0].read_bytes()
        files[0].write_bytes(data[: len(data) // 2])
        dumps = backup / "var/backups/mysql"
        for dump in dumps.glob(f"*{db}*") if dumps.is_dir() else []:
            dump.unlink()

    return spoil


def domain_row(column: str, value: str, table: str = "domain") -> Callable[[World, Path], None]:
    def spoil(world: World, backup: Path) -> None:
        key = {"domain": "domain_id", "subdomain": "subdomain_id", "domain_aliasses": "alias_id"}[table]
        _edit_backup_database(world, backup, f"UPDATE {table} SET {column} = %s ORDER BY {key} LIMIT 1", (value,))

    return spoil


def _edit_backup_database(world: World, backup: Path, statement: str, args: tuple) -> None:
    """One statement on the backup copy's binary ispcp database, through the world's own server."""
    scratch = Path(world.mysql_params["datadir"]) / "badcopy"
    shutil.copytree(backup / "var/lib/mysql/ispcp", scratch)
    uid, gid = mysql_ids()
    for path in [scratch, *scratch.iterdir()]:
        os.chown(path, uid, gid)
    root = world.credentials["new"]["root_password"]
    fetch(world, "root", root, statement, "badcopy", args)
    fetch(world, "root", root, "FLUSH TABLES")
    for path in scratch.iterdir():
        shutil.copy2(path, backup / "var/lib/mysql/ispcp" / path.name)
    fetch(world, "root", root, "DROP DATABASE badcopy")


# --- the corpus ---------------------------------------------------------------------------------------

HOSTILE_DIRS = [
    ("APACHE_WWW_DIR", "/"),
    ("APACHE_WWW_DIR", "/etc"),
    ("APACHE_WWW_DIR", "/usr"),
    ("APACHE_WWW_DIR", "/var/lib/mysql"),
    ("APACHE_WWW_DIR", "/var/lib/ispcp-recovery"),
    ("APACHE_WWW_DIR", "/var/www"),
    ("APACHE_WWW_DIR", "/home"),
    ("APACHE_WWW_DIR", "var/www/virtual"),
    ("APACHE_WWW_DIR", "/var/www/virtual/../../../etc"),
    ("APACHE_WWW_DIR", "/etc/apache2/sites"),
    ("MTA_VIRTUAL_MAIL_DIR", "/etc"),
    ("MTA_VIRTUAL_MAIL_DIR", "/root"),
    ("MTA_VIRTUAL_MAIL_DIR", "/var/lib/mysql/mail"),
    ("PHP_STARTER_DIR", "/usr"),
    ("PHP_STARTER_DIR", "/etc/ssl"),
    ("PHP_STARTER_DIR", "/bin"),
    ("ROOT_DIR", "/"),
    ("GUI_ROOT_DIR", "/etc"),
    ("CONF_DIR", "/"),
]
MISSING_VALUES = [
    "APACHE_WWW_DIR",
    "MTA_VIRTUAL_MAIL_DIR",
    "MTA_MAILBOX_UID",
    "MTA_MAILBOX_GID",
    "APACHE_SUEXEC_USER_PREF",
    "DATABASE_NAME",
    "DATABASE_USER",
]
BAD_VALUES = [
    ("MTA_MAILBOX_UID", "abc"),
    ("MTA_MAILBOX_GID", "-8"),
    ("APACHE_SUEXEC_USER_PREF", ""),
    ("DATABASE_NAME", "../mysql"),
    ("DATABASE_NAME", "ispcp; DROP DATABASE mysql"),
    ("BASE_SERVER_IP", "not-an-ip"),
]
BAD_NAMES = [
    ("domain_name", "../../etc", "domain"),
    ("domain_name", "a/b.example", "domain"),
    ("domain_name", "-bad.example", "domain"),
    ("domain_name", "a..b.example", "domain"),
    ("domain_name", "with space.example", "domain"),
    ("domain_name", "", "domain"),
    ("domain_name", "x" * 64 + ".example", "domain"),
    ("domain_name", ".", "domain"),
    ("subdomain_name", "../../../etc", "subdomain"),
    ("alias_name", "x/../../y.example", "domain_aliasses"),
]

CASES: list[Case] = [
    *(Case(f"dir-{k}={v}", conf_value(k, v), names=k) for k, v in HOSTILE_DIRS),
    *(Case(f"missing-{k}", conf_value(k, None), names=k) for k in MISSING_VALUES),
    *(Case(f"bad-{k}={v}", conf_value(k, v), names=k) for k, v in BAD_VALUES),
    Case("conf-truncated", conf_text(lambda t: t[: len(t) // 3]), names="ispcp.conf"),
    Case("conf-empty", conf_text(lambda t: ""), names="ispcp.conf"),
    Case("conf-binary", written("etc/ispcp/ispcp.conf", bytes(range(256)) * 4), names="ispcp.conf"),
    Case("conf-missing", removed("etc/ispcp/ispcp.conf"), names="ispcp.conf"),
    Case("conf-symlink-out", linked("etc/ispcp/ispcp.conf", "/etc/hostname"), names="ispcp.conf"),
    *(Case(f"name-{t}.{c}={v[:20]}", domain_row(c, v, t), names=c) for c, v, t in BAD_NAMES),
    Case("www-domain-symlink-out", linked("var/www/virtual/*", "/etc"), names="var/www/virtual"),
    Case("www-htdocs-symlink-out", linked("var/www/virtual/*/htdocs", "../../../../../etc"), names="htdocs"),
    Case("mail-symlink-out", linked("var/mail/virtual", "/etc"), names="var/mail/virtual"),
    Case("www-symlink-out", linked("var/www/virtual", "/usr"), names="var/www/virtual"),
    Case("missing-passwd", removed("etc/passwd"), names="/etc/passwd"),
    Case("missing-group", removed("etc/group"), names="/etc/group"),
    Case("missing-shadow", removed("etc/shadow"), names="/etc/shadow"),
    Case("missing-ispcp-db", removed("var/lib/mysql/ispcp"), names="ispcp"),
    Case("missing-mysql-db", removed("var/lib/mysql/mysql"), names="mysql"),
    Case("missing-keys", removed("var/www/ispcp/gui/include/ispcp-db-keys.php"), names="key"),
    Case("customer-db-damaged-no-dump", truncated_table("*.MYD"), names="customer"),
    Case("rsync-partial-in-htdocs", in_first_htdocs(".big.iso.Xa1b2C", b"\0" * 4096), names="rsync"),
    Case("param-mysql-string", params={"mysql": "foo"}, names="mysql"),
    Case("param-apply_steps-list", params={"apply_steps": ["user_data"]}, names="apply_steps"),
    Case("param-bwlimit-word", params={"options": {"user_data_bwlimit": "fast"}}, names="user_data_bwlimit"),
    Case("param-apply-maybe", params={"apply": "maybe"}, names="apply"),
    Case("param-resume-number", params={"resume": 2}, names="resume"),
    Case("param-unknown", params={"aplly": True}, names="aplly"),
    Case("param-steps-unknown", params={"steps": ["inventroy"]}, names="steps"),
    Case("param-force-steps-unknown", params={"force_steps": "everything"}, names="force_steps"),
    Case("param-target-string", params={"target": "ssh"}, names="target"),
    Case("param-mysql-port-word", params={"mysql": {"port": "x"}}, names="port"),
    Case("param-guard-mode", params={"options": {"mail_guard_mode": "off"}}, names="mail_guard_mode"),
    Case("param-smtp-port", params={"options": {"postfix_smtp_port": 70000}}, names="postfix_smtp_port"),
    Case("param-dns-timeout", params={"options": {"dns_timeout": -1}}, names="dns_timeout"),
    Case("param-resolutions-list", params={"options": {"accounts_resolutions": ["skip"]}}, names="accounts_res"),
    Case("param-lock-timeout", params={"options": {"accounts_lock_timeout": "soon"}}, names="accounts_lock_timeout"),
    Case("param-break-lock", params={"break_lock": "perhaps"}, names="break_lock"),
    Case("param-disk-reserve-word", params={"disk_reserve_mb": "lots"}, names="disk_reserve_mb"),
    Case("param-disk-reserve-negative", params={"disk_reserve_mb": -1}, names="disk_reserve_mb"),
]


def _early_checks(world: World, backup: Path, params: dict[str, Any]) -> list[str]:
    """Open an applying run and run the steps before the first change; their warnings."""
    options = params.pop("options", None)
    ctx = open_run(**{**world.runbook_params(), "backup_root": str(backup), "apply": True, **params}, options=options)
    ctx.progress = lambda line: None
    warnings: list[str] = []
    try:
        for step in (inventory, preflight):
            warnings += step.run(ctx).warnings
    finally:
        if ctx.lock is not None:
            ctx.lock.release()
    return warnings


def _judge(world: World, backup: Path, case: Case) -> tuple[str, str]:
    before = stable_fingerprint(world)
    try:
        warnings = _early_checks(world, backup, dict(case.params or {}))
    except (StepFailed, IspcpError) as exc:
        message = exc.result.errors[0] if isinstance(exc, StepFailed) else str(exc)
        if message.startswith(("TypeError", "ValueError", "KeyError", "AttributeError", "IndexError")):
            return "traceback", message
        if stable_fingerprint(world) != before:
            return "late", f"refused, but the target changed: {message}"
        if case.names.lower() not in message.lower() or "Fix: " not in message:
            return "late", f"refused without naming {case.names!r} and a fix: {message}"
        return "refused early", message
    except Exception as exc:  # noqa: BLE001 - exactly what the corpus counts
        return "traceback", f"{type(exc).__name__}: {exc}"
    if stable_fingerprint(world) != before:
        return "late", "the early checks changed the target"
    named = [w for w in warnings if case.names.lower() in w.lower()]
    if named:
        return "handled", named[0]
    return "late", f"passed the early checks without a warning naming {case.names!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_backup_is_refused_early_or_handled(
    world: World, tmp_path: Path, case: Case, corpus_outcomes: dict[str, str]
) -> None:
    backup = tmp_path / "backup"
    shutil.copytree(world.backup_root, backup, symlinks=True)
    case.spoil(world, backup)
    verdict, message = _judge(world, backup, case)
    corpus_outcomes[case.id] = verdict
    assert verdict in ("refused early", "handled"), f"{verdict}: {message}"


def test_the_corpus_has_the_cases_the_issue_implies() -> None:
    assert len(CASES) >= 59 and len({c.id for c in CASES}) == len(CASES)
