"""Real ispCP servers built from the release tarballs (`make lab-test`; kept out of `make test`).

The tarballs come from ../shared/ispcp-src (or $ISPCP_LAB_SOURCES). The images are built on first use
and cached under $ISPCP_LAB_CACHE (default /var/cache/ispcp-recovery/lab): cold about 3 minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
