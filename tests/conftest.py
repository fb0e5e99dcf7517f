"""Shared fixtures: one sandbox world built per session, cloned for each test that needs one.

Building takes a few seconds (two real MariaDB instances); cloning is a `cp -a`. Every MariaDB a
test starts is stopped at teardown, and the session fails loudly if one survives anyway.

Worlds live under a session directory in /tmp, not under pytest's tmp_path: mariadbd runs as the
mysql user and must be able to traverse every parent directory, but each pytest session that starts
(other engineers run theirs concurrently) resets /tmp/pytest-of-<user> to mode 0700.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ispcp_lib.mysql.service import pid_alive
from ispcp_lib.sandbox.world import World, build_world, mariadbd_pids_under
from tests.helpers import restore_databases, running_clone

_SANDBOX_ROOTS: list[Path] = []
_KEPT: list[Path] = []  # worlds of failed tests, kept for a post-mortem


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Remember each phase's report on the item, so fixtures can tell whether their test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def sandbox_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ispcp-sandbox-"))
    root.chmod(0o711)  # search only: the mysql user can reach its datadirs, nobody can list them
    _SANDBOX_ROOTS.append(root)
    yield root
    if not mariadbd_pids_under(root) and not _KEPT:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sandbox_dir(sandbox_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory for a test that builds or clones worlds itself (removed unless it failed)."""
    path = Path(tempfile.mkdtemp(prefix="t", dir=sandbox_root))
    path.chmod(0o711)
    yield path
    _cleanup(path, request)


def _cleanup(path: Path, request: pytest.FixtureRequest) -> None:
    reports = [getattr(request.node, f"rep_{when}", None) for when in ("setup", "call")]
    if any(r is not None and r.failed for r in reports):
        _KEPT.append(path)
    elif not mariadbd_pids_under(path):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def world_template(sandbox_root: Path) -> World:
    """The small world, never started: clone it, don't change it."""
    return build_world(sandbox_root / "template", "small", seed=1)


@pytest.fixture
def world(world_template: World, sandbox_dir: Path) -> Iterator[World]:
    """A private copy of the small world with its target MariaDB running."""
    with running_clone(world_template, sandbox_dir / "w") as w:
        yield w


@pytest.fixture
def restored(world: World) -> World:
    """The world after the guide's binary copy of the old `ispcp` and `mysql` databases (test scaffolding,
    not the mysql_restore step): the old databases are live on the target."""
    restore_databases(world)
    return world


@pytest.fixture
def stopped_world(world_template: World, sandbox_dir: Path) -> Iterator[World]:
    """A private copy of the small world, MariaDB not started (the test may start it)."""
    w = world_template.clone(sandbox_dir / "w")
    try:
        yield w
    finally:
        w.stop()


def _stop_leftovers(roots: list[Path]) -> tuple[list[int], list[int]]:
    leftover = sorted({pid for root in roots for pid in mariadbd_pids_under(root)})
    for pid in leftover:  # SIGTERM is mariadbd's normal shutdown; these pids are ours (datadir match)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(pid_alive(p) for p in leftover):
        time.sleep(0.2)
    for pid in leftover:  # started by this process: reap them, or they linger as zombies
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return leftover, [p for p in leftover if pid_alive(p)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No mariadbd whose datadir is under this session's directories may outlive the session."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)
    roots = [*_SANDBOX_ROOTS, *([Path(base)] if base is not None else [])]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if _KEPT and reporter is not None:
        reporter.write_line(f"sandbox worlds of failed tests kept: {', '.join(map(str, _KEPT))}", yellow=True)
    leftover, still = _stop_leftovers(roots)
    if not leftover:
        return
    message = (
        f"LEAKED MariaDB servers under {', '.join(map(str, roots))}: pids {leftover} were still running "
        "at session end (a fixture or test did not stop its world); sent SIGTERM"
        + (f", STILL RUNNING: {still}" if still else ", all stopped now")
    )
    if reporter is not None:
        reporter.write_sep("=", "leaked MariaDB servers", red=True, bold=True)
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
