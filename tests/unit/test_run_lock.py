"""The per-target run lock: a second run is refused with who holds it; a dead run's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ispcp_lib.core.connection import ChrootConnection, LocalConnection
from ispcp_lib.core.context import new_run_id
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.run_lock import RunLock


@pytest.fixture(params=["local", "chroot"])
def conn_state(request, tmp_path: Path):
    if request.param == "local":
        return LocalConnection("/"), str(tmp_path / "state")
    return ChrootConnection("/"), str(tmp_path / "state")


def test_second_run_is_refused_naming_the_holder(conn_state) -> None:
    conn, state = conn_state
    first = RunLock(conn, state, "run-a")
    first.acquire()
    other = RunLock(conn, state, "run-b")
    other.owner = other.owner.__class__("run-b", other.owner.controller, os.getppid(), "now")
    with pytest.raises(PreconditionFailed, match="run run-a"):
        other.acquire()
    first.release()
    other.acquire()  # free again
    assert other.holder() is not None and other.holder().run_id == "run-b"
    other.release()
    assert not conn.exists(state + "/lock")


def test_lock_of_a_dead_process_here_is_taken_over(conn_state) -> None:
    conn, state = conn_state
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    conn.mkdir(state + "/lock", mode=0o700)
    owner = {"run_id": "old", "controller": RunLock(conn, state, "x").owner.controller, "pid": dead.pid, "since": "t"}
    conn.write_atomic(state + "/lock/owner", json.dumps(owner))
    lock = RunLock(conn, state, "new")
    lock.acquire()
    assert lock.holder().run_id == "new"
    lock.release()


def test_lock_from_another_machine_needs_break_lock(conn_state) -> None:
    conn, state = conn_state
    conn.mkdir(state + "/lock", mode=0o700)
    owner = {"run_id": "far", "controller": "admin2.example", "pid": 1, "since": "t"}
    conn.write_atomic(state + "/lock/owner", json.dumps(owner))
    with pytest.raises(PreconditionFailed, match="admin2.example"):
        RunLock(conn, state, "new").acquire()
    lock = RunLock(conn, state, "new")
    lock.acquire(break_lock=True)
    assert lock.holder().run_id == "new"


def test_run_ids_differ_within_one_second() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50


def test_the_first_applying_step_takes_the_lock_and_a_second_run_is_refused(tmp_path: Path) -> None:
    from ispcp_lib.core.action import StepFailed, action
    from ispcp_lib.core.context import Context
    from ispcp_lib.core.run_lock import LockOwner
    from ispcp_lib.core.runner import Runner

    def ctx_for(run_id: str, apply: bool) -> Context:
        (tmp_path / "target").mkdir(exist_ok=True)
        ctx = Context(tmp_path / "target", None, tmp_path / "state", run_id, default_apply=apply, runner=Runner(apply))
        ctx.lock = RunLock(ctx.state, str(ctx.state_dir), run_id)
        return ctx

    @action("demo_lock")
    def change(ctx: Context, result) -> None:
        ctx.write_file("/f", run_id_of(ctx))

    def run_id_of(ctx: Context) -> str:
        return ctx.run_id

    dry = ctx_for("dry", apply=False)
    change(dry)
    assert not dry.lock.held and not (tmp_path / "state" / "lock").exists()  # a dry run takes no lock

    first = ctx_for("first", apply=True)
    change(first)
    assert first.lock.held and first.lock.holder().run_id == "first"

    second = ctx_for("second", apply=True)
    second.resume = False  # else the journal says the step is done and it is skipped
    second.lock.owner = LockOwner("second", second.lock.owner.controller, os.getppid(), "now")  # another process
    with pytest.raises(StepFailed, match="run first"):
        change(second)
    assert (tmp_path / "target" / "f").read_text() == "first"
