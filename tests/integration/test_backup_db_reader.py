"""The throwaway reader's copies of the backup's databases: under the state dir, gone after success, after
failure and after a killed run (swept, its server stopped, by the next reader)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ispcp_lib.facts import backup_db_reader as r
from ispcp_lib.mysql.service import is_mysql_server
from ispcp_lib.sandbox.world import World


def _count_domains(conn: object) -> int:
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("SELECT COUNT(*) FROM domain")
        return int(cur.fetchone()[0])


def test_copy_lives_under_the_state_dir_and_is_gone_on_success_and_failure(
    world_template: World, sandbox_dir: Path
) -> None:
    datadir = world_template.backup_root / "var/lib/mysql"
    scratch = sandbox_dir / "state" / r.SCRATCH
    seen: list[str] = []

    def query(conn: object) -> int:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("SELECT @@datadir")
            seen.append(cur.fetchone()[0])
        return _count_domains(conn)

    assert (
        r.read_backup_database(datadir, "ispcp", query, scratch=scratch) == world_template.manifest["counts"]["domains"]
    )
    assert seen[0].startswith(str(scratch) + "/")
    assert list(scratch.iterdir()) == []
    assert (sandbox_dir / "state").stat().st_mode & 0o707 == 0o700  # nobody else may list or enter it

    def broken(conn: object) -> None:
        raise RuntimeError("the query failed")

    with pytest.raises(RuntimeError):
        r.read_backup_database(datadir, "ispcp", broken, scratch=scratch)
    assert list(scratch.iterdir()) == []


def test_a_killed_readers_copy_and_server_are_swept_by_the_next_reader(
    world_template: World, sandbox_dir: Path
) -> None:
    datadir = world_template.backup_root / "var/lib/mysql"
    scratch = sandbox_dir / "state" / r.SCRATCH
    program = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ispcp_lib.facts.backup_db_reader import backup_database\n"
        f"with backup_database(Path({str(datadir)!r}), 'ispcp', scratch=Path({str(scratch)!r})):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (left,) = list(scratch.iterdir())
    assert left.name.startswith(f"{child.pid}-")
    server_pid = int((left / "mysqld.pid").read_text())
    assert is_mysql_server(server_pid)  # the killed run's server outlives it

    alive = scratch / f"{os.getpid()}-mine"  # a folder of a live process (a reader running now) stays
    alive.mkdir()
    assert r.read_backup_database(datadir, "ispcp", _count_domains, scratch=scratch) > 0
    assert not left.exists()
    assert not is_mysql_server(server_pid)
    assert [p.name for p in scratch.iterdir()] == [alive.name]
