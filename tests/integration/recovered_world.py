"""A sandbox world brought, directly and without the runbook, to the state just before ispcp-update.

The ftp, engine_speedup, ispcp_update and cleanup tests need what earlier steps produce (restored
databases, old keys, ispcp.old.conf, accounts, user data). Those steps belong to other modules and
are tested there; here the same end state is made with plain file operations, so these tests do not
depend on the earlier steps' code:

* the backup's `ispcp` and `mysql` database directories copied into the stopped target datadir,
  keeping the target's own InnoDB tables of the mysql schema (their tablespace ids live in the
  target's ibdata1), chowned to the host's mysql user, server started again;
* the backup's three key files over the dummy install's;
* the backup's ispcp.conf as ispcp.old.conf, and its DATABASE_* values plus DEBUG = 1 in ispcp.conf;
* optionally: the backup's proftpd.conf copies, the vu*/vmail accounts, web trees, FCGI starters and
  Maildirs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.context import Context
from ispcp_lib.core.secrets import SecretRegistry
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp.keyfiles import LAYOUTS
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.private_mysql import mysql_ids
from ispcp_lib.sandbox.world import World
from tests.helpers import running_clone

# The mysql schema's InnoDB tables: their .ibd files only fit the ibdata1 they were created with.
KEEP_TARGET_INNODB = ("innodb_index_stats", "innodb_table_stats", "gtid_slave_pos", "transaction_registry")
FAST = 0.01  # ISPCP_SANDBOX_SLEEP_SCALE for tests: the managers' pause becomes 10 ms per item


def restore_databases(world: World) -> None:
    srv = world.target_mysql()
    srv.stop()
    datadir = Path(world.mysql_params["datadir"])
    src = world.backup_root / "var/lib/mysql"
    uid, gid = mysql_ids()
    for name in ("ispcp", "mysql"):
        dest = datadir / name
        keep = {}
        if name == "mysql":
            for table in KEEP_TARGET_INNODB:
                for suffix in (".frm", ".ibd"):
                    p = dest / f"{table}{suffix}"
                    if p.exists():
                        keep[p.name] = p.read_bytes()
        shutil.rmtree(dest)
        subprocess.run(["cp", "-a", str(src / name), str(dest)], check=True)
        for fname, data in keep.items():
            (dest / fname).write_bytes(data)
        for table in KEEP_TARGET_INNODB:  # a backup .ibd without its target twin would confuse InnoDB
            if f"{table}.ibd" not in keep and (dest / f"{table}.ibd").exists():
                (dest / f"{table}.ibd").unlink()
                (dest / f"{table}.frm").unlink(missing_ok=True)
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(dest)], check=True)
    srv.start()


def install_old_keys(world: World) -> None:
    for layout in ("php", "perl_engine", "perl_messenger"):
        logical = LAYOUTS[layout].lstrip("/")
        subprocess.run(["cp", "-a", str(world.backup_root / logical), str(world.target_root / logical)], check=True)


def install_old_conf(world: World, debug: str = "1") -> None:
    etc = world.target_root / "etc/ispcp"
    old = IspcpConf.load(world.backup_root / "etc/ispcp/ispcp.conf")
    shutil.copy2(world.backup_root / "etc/ispcp/ispcp.conf", etc / "ispcp.old.conf")
    new = IspcpConf.load(etc / "ispcp.conf")
    for key in ("DATABASE_HOST", "DATABASE_NAME", "DATABASE_USER", "DATABASE_PASSWORD"):
        new.set(key, old.get(key) or "")
    new.set("DEBUG", debug)
    (etc / "ispcp.conf").write_text(new.text())


def sync_proftpd(world: World) -> None:
    for logical in ("etc/proftpd.conf", "etc/ispcp/proftpd/working/proftpd.conf"):
        subprocess.run(["cp", "-a", str(world.backup_root / logical), str(world.target_root / logical)], check=True)


def restore_accounts(world: World) -> None:
    """Append the backup's vu*/vmail lines (and their groups) to the target's four account files."""
    for name, keep in (
        ("passwd", _is_ispcp_user),
        ("shadow", _is_ispcp_user),
        ("group", _is_ispcp_group),
        ("gshadow", _is_ispcp_group),
    ):
        src = world.backup_root / "etc" / name
        dest = world.target_root / "etc" / name
        have = {line.split(":", 1)[0] for line in dest.read_text().splitlines()}
        add = [line for line in src.read_text().splitlines() if keep(line) and line.split(":", 1)[0] not in have]
        if add:
            with open(dest, "a") as fh:
                fh.write("\n".join(add) + "\n")


def _is_ispcp_user(line: str) -> bool:
    name = line.split(":", 1)[0]
    return name.startswith("vu") or name == "vmail"


def _is_ispcp_group(line: str) -> bool:
    return line.split(":", 1)[0].startswith("vu")


def restore_user_data(world: World) -> None:
    for logical in ("var/www/virtual", "var/mail/virtual", "var/www/fcgi"):
        src = world.backup_root / logical
        dest = world.target_root / logical
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True)


def recover(world: World, *, ftp: bool = True, accounts: bool = True, user_data: bool = True) -> World:
    """Everything the earlier steps would have done. The target's MariaDB runs afterwards."""
    restore_databases(world)
    install_old_keys(world)
    install_old_conf(world)
    if ftp:
        sync_proftpd(world)
    if accounts:
        restore_accounts(world)
    if user_data:
        restore_user_data(world)
    return world


def open_ctx(world: World, *, apply: bool = False, private_secrets: bool = False, **options: Any) -> Context:
    """A Context for the world; the ispcp_update tests don't need the mail guard unless they say so.

    private_secrets: a fresh secret registry, so that a test sees only what the code itself registered
    (the process-wide one remembers every secret of earlier tests, which share the same world seed).
    """
    opts = {"ispcp_update_require_mail_guard": False, "ispcp_update_prompt_silence": 3, **options}
    ctx = open_run(**world.runbook_params(), apply=False, resume=False, options=opts)
    if private_secrets:
        ctx.secrets = SecretRegistry()
    ctx.default_apply = apply
    ctx.progress = lambda line: None  # keep test output short; the transcript file has everything
    return ctx


# -- fixtures: import recovered_fixture and recovered_template_fixture into a test module ---------------


@pytest.fixture(scope="session", name="recovered_template")
def recovered_template_fixture(world_template: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The small world after the restore (databases, keys, configs, accounts, data), ProFTPd untouched; stopped."""
    w = world_template.clone(tmp_path_factory.mktemp("recovered") / "w")
    try:
        recover(w, ftp=False)
    finally:
        w.stop()
    return w


@pytest.fixture(name="recovered")
def recovered_fixture(recovered_template: World, tmp_path: Path) -> Iterator[World]:
    """A private copy of the recovered world with its MariaDB running."""
    with running_clone(recovered_template, tmp_path / "w") as w:
        yield w
