"""The whole runbook against the sandbox world inside a lab server, over ssh, chroot and local: same end state.

Each run gets its own server started over the same frozen world layer (conftest `frozen_world`), so
all three begin from identical bytes. The end state compared is the server's tree (stable_fingerprint:
no logs, runtime files, queues, state dir) and a logical dump of the ispcp database. No python may
have run on the server.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ispcp_lib.core.fileops import fingerprint_diff
from ispcp_lib.sandbox import server_world
from ispcp_lib.sandbox.world import stable_fingerprint
from tests.remote.conftest import FrozenWorld

ADDRESSES = {"ssh": "127.0.0.7", "chroot": "127.0.0.8", "local": "127.0.0.10"}
RUN_ID = "e2e-same-run"


@dataclass
class EndState:
    summary: dict
    fingerprint: dict[str, tuple]
    ispcp_dump: str
    python_attempts: str


def _dump_ispcp(host) -> str:  # type: ignore[no-untyped-def]
    """A logical dump of ispcp taken inside the server (the recovery fixed debian.cnf's login)."""
    return host.exec(
        [
            "mariadb-dump",
            "--defaults-file=/etc/mysql/debian.cnf",
            "--skip-dump-date",
            "--skip-comments",
            "--order-by-primary",
            "--databases",
            "ispcp",
        ],
        timeout=300,
    ).stdout


def _recover(frozen: FrozenWorld, connection: str, workdir: Path, reports: Path) -> EndState:
    world, host, _ssh = server_world.thaw(
        frozen.world,
        frozen.layer,
        frozen.image_layers,
        workdir,
        name=f"e2e-{connection}",
        address=ADDRESSES[connection],
        profile="modern" if connection == "ssh" else None,
        connection=connection,
    )
    try:
        world.start()
        try:
            # One run id for all three: the safety folders it names (mysql.restore-<run id>) are compared too.
            _rc, summary = server_world.run_recovery(world, reports, run_id=RUN_ID)
            dump = _dump_ispcp(host)
        finally:
            world.stop()
        attempts = host.root / "var/log/python-attempts.log"
        return EndState(summary, stable_fingerprint(world), dump, attempts.read_text() if attempts.exists() else "")
    finally:
        host.stop()


def test_same_end_state_over_ssh_chroot_and_local(frozen_world: FrozenWorld, sandbox_root: Path) -> None:
    assert server_world.connection_ports_missing() is None
    base = Path(tempfile.mkdtemp(prefix="e2e-", dir=sandbox_root))
    states: dict[str, EndState] = {}
    for connection in ("ssh", "chroot", "local"):
        states[connection] = _recover(frozen_world, connection, base / connection, base / f"reports-{connection}")
    for connection, state in states.items():
        failed = [s for s in state.summary["steps"] if s["status"] == "failed"]
        assert state.summary["status"] == "ok", f"{connection}: failed steps {failed}"
        assert state.summary["apply"] is True
    assert states["ssh"].python_attempts == states["chroot"].python_attempts == ""
    for other in ("chroot", "local"):
        theirs = states[other].fingerprint
        if other == "local":
            theirs = _with_server_group(theirs, states["ssh"].fingerprint)
        diff = fingerprint_diff(states["ssh"].fingerprint, theirs)
        shown = [(k, states["ssh"].fingerprint.get(k), theirs.get(k)) for k in _paths(diff)[:10]]
        assert not diff, f"ssh vs {other}: {diff[:40]}; first entries (ssh, {other}): {shown}"
        assert states["ssh"].ispcp_dump == states[other].ispcp_dump, f"ssh vs {other}: the ispcp databases differ"
    assert "CREATE TABLE `domain`" in states["ssh"].ispcp_dump
    shutil.rmtree(base, ignore_errors=True)


def _paths(diff: list[str]) -> list[str]:
    """The paths of fingerprint_diff's lines ("changed PATH", "added PATH", "removed PATH")."""
    return [line.split(" ", 1)[1] for line in diff]


def _with_server_group(local: dict[str, tuple], ssh: dict[str, tuple]) -> dict[str, tuple]:
    """The local run's fingerprint with the group of the files its MariaDB created taken from the ssh run.

    The local run's MariaDB is a process of this machine running as the server's mysql uid: mariadbd
    --user takes that uid's primary group from *this* machine's account files, so the files it creates
    (a re-created table's .frm) get another gid than inside the server. Only entries under the datadir
    that belong to the same uid and differ in nothing but the gid are aligned; anything else still counts.
    """
    out = dict(local)
    for path, entry in local.items():
        other = ssh.get(path)
        if (
            path.startswith("var/lib/mysql/")
            and other is not None
            and entry[:3] == other[:3]
            and entry[4:] == other[4:]
            and entry[3] != other[3]
        ):
            out[path] = other
    return out
