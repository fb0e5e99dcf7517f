"""What the reliability suites share: sandbox worlds with their services, one run of steps in its own
process (driver.py), and the end state of a target (tree, logical dump, pwck/grpck, the guard record).

Two end states compare equal when nothing a recovery is about differs: the run ids in the names of the
recovery's own safety folders are replaced by RUN, the datadir's files count by presence, owner and
mode (their content is what the logical dump compares, table by table, without the server's own
statistics), and the state dir counts only through the mail guard's record (its `previous` values are
what cleanup puts back).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ispcp_lib.core.fileops import fingerprint, fingerprint_diff
from ispcp_lib.sandbox.demo import world_services
from ispcp_lib.sandbox.server_world import _postfix_settings as postfix_settings
from ispcp_lib.sandbox.world import VOLATILE_DATADIR_FILES, World

REPO = Path(__file__).resolve().parents[2]
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
# Tables the server writes for itself (statistics, replication position, logs): not the recovery's doing.
SERVER_TABLES = {
    ("mysql", "innodb_table_stats"),
    ("mysql", "innodb_index_stats"),
    ("mysql", "gtid_slave_pos"),
    ("mysql", "transaction_registry"),
    ("mysql", "general_log"),
    ("mysql", "slow_log"),
}
SKIP_SCHEMAS = ("information_schema", "performance_schema", "sys")
POSTFIX_FILES = ("etc/postfix/main.cf", "etc/postfix/master.cf")
KILLED = 137  # the fault hook's exit code (a kill -9)


@contextlib.contextmanager
def served(world: World) -> Iterator[dict[str, Any]]:
    """The world's MariaDB, Postfix and DNS running; yields the runbook parameters; all stopped after."""
    main_cf = world.target_root / "etc/postfix/main.cf"
    text = main_cf.read_text() if main_cf.exists() else ""  # written when the services first start
    guard = [line for line in text.splitlines() if line.startswith("soft_bounce")]
    world.start()
    try:
        with world_services(world) as params:
            # A copy's private Postfix gets a new main.cf for its own paths: the guard's line goes back in.
            if guard and guard[0] not in main_cf.read_text().splitlines():
                main_cf.write_text(main_cf.read_text() + "\n".join(guard) + "\n")
                subprocess.run(["postfix", "-c", str(main_cf.parent), "reload"], capture_output=True, timeout=60)
            yield {**world.runbook_params(), **params}
    finally:
        world.stop()


def run_steps(world: World, params: dict[str, Any], steps: list[str], fault: str | None = None) -> tuple[int, str]:
    """One applying run of steps in a new process (a kill stays a real kill); (exit code, stderr)."""
    extra = {k: v for k, v in params.items() if k not in world.runbook_params()}
    env = {k: v for k, v in os.environ.items() if k != "ISPCP_FAULT"}
    if fault is not None:
        env["ISPCP_FAULT"] = fault
    argv = [sys.executable, "-m", "tests.reliability.driver", str(world.workdir), json.dumps(extra), *steps]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stderr


def journal(world: World) -> list[dict[str, Any]]:
    path = world.state_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def operations_of_last_run(world: World, step: str) -> int:
    """How many operations step started in the newest run that ran it."""
    ops = [r for r in journal(world) if r.get("type") == "operation" and r["step"] == step and r["phase"] == "intent"]
    if not ops:
        return 0
    return sum(1 for r in ops if r["run_id"] == ops[-1]["run_id"])


def end_state(world: World) -> dict[str, Any]:
    """The target as the comparison sees it (the world's MariaDB must run)."""
    return {
        "tree": _tree(world),
        "dump": _dump(world),
        "accounts": _account_checks(world),
        "guard": _guard(world),
    }


def differences(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs between two end states, one line each (empty: converged)."""
    out = [f"tree: {line}" for line in fingerprint_diff(want["tree"], got["tree"])]
    tables = sorted(set(want["dump"]) | set(got["dump"]))
    out += [f"dump: table {t}" for t in tables if want["dump"].get(t) != got["dump"].get(t)]
    if want["accounts"] != got["accounts"]:
        out.append(f"pwck/grpck: {got['accounts']}")
    if want["guard"] != got["guard"]:
        out.append(f"mail guard record: want {want['guard']}, got {got['guard']}")
    return out


def _tree(world: World) -> dict[str, tuple]:
    root = world.target_root
    fp = fingerprint(root, exclude=[world.state_dir, root / "run"])
    datadir = str(Path(world.mysql_params["datadir"]).relative_to(root))
    out: dict[str, tuple] = {}
    for key, value in fp.items():
        name = RUN_ID.sub("RUN", key)
        if key == datadir or key.startswith((datadir + "/", datadir + ".")):
            if any(fnmatch.fnmatch(Path(key).name, p) for p in VOLATILE_DATADIR_FILES):
                continue
            value = value[:4]  # presence, type, mode and owner; the content is the dump's to compare
        if key in POSTFIX_FILES:  # the private Postfix's paths and port are the copy's own
            value = (*value[:4], postfix_settings(root / key))
        out[name] = value
    return out


def _dump(world: World) -> dict[str, str]:
    """Every table's definition and rows (sorted), per `db.table`, through the first admin login that works."""
    conn = _admin(world)
    out: dict[str, str] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            names = [r[0] for r in cur.fetchall() if r[0] not in SKIP_SCHEMAS]
            for db in names:
                cur.execute(f"SHOW FULL TABLES FROM `{db}`")
                for table, kind in cur.fetchall():
                    if (db, table) in SERVER_TABLES:
                        continue
                    cur.execute(f"SHOW CREATE TABLE `{db}`.`{table}`")
                    text = re.sub(r" AUTO_INCREMENT=\d+", "", cur.fetchone()[1])
                    if kind != "VIEW":
                        cur.execute(f"SELECT * FROM `{db}`.`{table}`")
                        text += "\n" + "\n".join(sorted(repr(r) for r in cur.fetchall()))
                    out[f"{db}.{table}"] = text
    finally:
        conn.close()
    return out


def _admin(world: World) -> Any:
    creds = world.credentials
    tries = [("root", creds[w]["root_password"]) for w in ("new", "old")]
    tries += [("debian-sys-maint", creds[w]["debian_sys_maint"]) for w in ("new", "old")]
    last: Exception | None = None
    for _ in range(20):  # a server the run just restarted may need a moment
        for user, password in tries:
            try:
                return world.target_mysql().connect(user, password)
            except Exception as exc:  # noqa: BLE001 - the next login may work
                last = exc
        time.sleep(0.5)
    raise RuntimeError(f"no admin login works on the target: {last}")


def _account_checks(world: World) -> str:
    etc = world.target_root / "etc"
    out = []
    for argv in (["pwck", "-r", "-q", "passwd", "shadow"], ["grpck", "-r", "group", "gshadow"]):
        done = subprocess.run(argv, cwd=etc, capture_output=True, text=True, timeout=60)
        out.append(f"{argv[0]} {done.returncode} {done.stdout.strip()} {done.stderr.strip()}".strip())
    return "; ".join(out)


def _guard(world: World) -> dict[str, Any] | None:
    path = world.state_dir / "mail_guard.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return {k: record.get(k) for k in ("mode", "status", "previous", "config_dir")}
