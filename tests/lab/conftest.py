"""Real ispCP servers built from the release tarballs (`make lab-test`; kept out of `make test`).

The tarballs come from ../shared/ispcp-src (or $ISPCP_LAB_SOURCES). The images are built on first use
and cached under $ISPCP_LAB_CACHE (default /var/cache/ispcp-recovery/lab).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ispcp_lib.lab.backup import take_backup
from ispcp_lib.lab.host import NamespaceHost, cleanup_stale
from ispcp_lib.lab.ispcp_server import start_server
from ispcp_lib.lab.provision import Plan, make_plan, provision
from ispcp_lib.lab.roles import DEAD

REPO = Path(__file__).resolve().parents[2]


def sources_dir() -> Path:
    return Path(os.environ.get("ISPCP_LAB_SOURCES") or REPO.parent / "shared" / "ispcp-src")


@pytest.fixture(scope="session")
def tarball_107() -> Path:
    path = sources_dir() / "ispcp-omega-1.0.7.tar.xz"
    if not path.exists():
        pytest.skip(f"no ispCP release tarball at {path} (set ISPCP_LAB_SOURCES)")
    cleanup_stale()
    return path


@pytest.fixture(scope="session")
def dead_server(tarball_107: Path) -> Iterator[tuple[NamespaceHost, Plan]]:
    """The old server, provisioned through its real engine; thrown away at the end of the session."""
    host = start_server(tarball_107, DEAD, name="lab-dead")
    try:
        plan = make_plan()
        provision(host, plan)
        yield host, plan
    finally:
        host.stop()


@dataclass
class DeadBackup:
    path: Path
    plan: Plan
    kept: list[str]
    gone: dict  # what identified the server's processes and mounts, to prove they are gone


@pytest.fixture(scope="session")
def dead_backup(dead_server: tuple[NamespaceHost, Plan], tmp_path_factory: pytest.TempPathFactory) -> DeadBackup:
    """The guide's partial backup of the dead server, which is then thrown away (part 4 starts from it)."""
    host, plan = dead_server
    try:
        return _backup_of(host, plan, tmp_path_factory.mktemp("backup"))
    finally:
        host.stop()


def _backup_of(host: NamespaceHost, plan: Plan, dest: Path) -> DeadBackup:
    kept = take_backup(host, dest)
    (dest / ".plan.json").write_text(plan.to_json())
    gone = {"state_dir": host.state_dir, "root": host.root, "pidns": host.state["pidns"], "netns": host.state["netns"]}
    return DeadBackup(dest, plan, kept, gone)


def _provisioned_backup(tarball: Path, name: str, dest: Path) -> DeadBackup:
    host = start_server(tarball, DEAD, name=name)
    try:
        plan = make_plan()
        provision(host, plan)
        return _backup_of(host, plan, dest)
    finally:
        host.stop()


@pytest.fixture(scope="session", autouse=True)
def upgrade_start(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[DeadBackup] | None]:
    """The upgrade scenario's start, begun in a thread as the session starts: a 1.0.5 server is built,
    provisioned, backed up and thrown away while the 1.0.7 tests run. The two chains share only cached
    layers (built under a lock, once) and use their own names and ports, so the lab takes about as long
    as its longer chain instead of the sum of both."""
    tarball = sources_dir() / "ispcp-omega-1.0.5.tar.xz"
    wanted = any("dead_backup_105" in getattr(item, "fixturenames", ()) for item in request.session.items)
    if not (wanted and tarball.exists() and tarball.with_name("ispcp-omega-1.0.7.tar.xz").exists()):
        yield None
        return
    cleanup_stale()  # before the thread starts: a server of a run killed hard is gone first
    dest = tmp_path_factory.mktemp("backup105")
    with ThreadPoolExecutor(1, thread_name_prefix="lab-1.0.5") as pool:
        yield pool.submit(_provisioned_backup, tarball, "lab-dead105", dest)
    # Leaving the pool waited for the chain, which stops its own server whatever happened.


@pytest.fixture(scope="session")
def dead_backup_105(upgrade_start: Future[DeadBackup] | None) -> DeadBackup:
    """The upgrade scenario's start: a provisioned 1.0.5 server's partial backup (the server thrown away)."""
    if upgrade_start is None:
        pytest.skip(f"no ispCP 1.0.5 and 1.0.7 release tarballs in {sources_dir()}")
    return upgrade_start.result()
