"""Real ispCP servers built from the release tarballs (`make lab-test`; kept out of `make test`).

The tarballs come from ../shared/ispcp-src (or $ISPCP_LAB_SOURCES). The images are built on first use
and cached under $ISPCP_LAB_CACHE (default /var/cache/ispcp-recovery/lab): cold about 3 minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def dead_backup_105(tarball_107: Path, tmp_path_factory: pytest.TempPathFactory) -> DeadBackup:
    """The upgrade scenario's start: a provisioned 1.0.5 server's partial backup (the server thrown away)."""
    tarball = tarball_107.with_name("ispcp-omega-1.0.5.tar.xz")
    if not tarball.exists():
        pytest.skip(f"no {tarball}")
    host = start_server(tarball, DEAD, name="lab-dead105")
    try:
        plan = make_plan()
        provision(host, plan)
        return _backup_of(host, plan, tmp_path_factory.mktemp("backup105"))
    finally:
        host.stop()
