"""`ispcp-recover demo`: build the sandbox world, run the whole runbook against it with apply=True,
and stop every process it started, whatever happens."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ispcp_lib.core.errors import InputError
from ispcp_lib.mysql.service import pid_alive
from ispcp_lib.sandbox import dns, postfix

# Sandbox services beside MariaDB; each module offers start_for_world(world) -> params, stop_for_world(world).
SERVICE_MODULES: tuple[ModuleType, ...] = (postfix, dns)


@contextlib.contextmanager
def world_services(world: Any) -> Iterator[dict[str, Any]]:
    """Start the sandbox Postfix and DNS for a world; yields the runbook parameters that point at them."""
    started: list[ModuleType] = []
    params: dict[str, Any] = {}
    try:
        for module in SERVICE_MODULES:
            params.update(module.start_for_world(world))
            started.append(module)
        yield params
    finally:
        for module in reversed(started):
            module.stop_for_world(world)


def _leftover_pids(workdir: Path) -> list[int]:
    """Processes whose command line mentions the demo's workdir (we started them; none may survive)."""
    marker = str(workdir.resolve()).encode()
    found = []
    ours = _ancestors(os.getpid())  # this demo and the shell that started it name the workdir too
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in ours:
            try:
                if marker in (proc / "cmdline").read_bytes() and pid_alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _ancestors(pid: int) -> set[int]:
    chain = set()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain


def clear_workdir(workdir: Path) -> Path:
    """Make room for a new world. Only an empty directory or a previous demo's world (it holds world.json)
    is removed: --workdir may name anything, and deleting an unrelated tree would be a disaster."""
    from ispcp_lib.sandbox.world import MANIFEST, World

    workdir = workdir.resolve()
    if not workdir.exists():
        return workdir
    if not workdir.is_dir():
        raise InputError("demo --workdir", "is not a directory", "name a new or empty directory", path=str(workdir))
    if (workdir / MANIFEST).is_file():
        World.load(workdir).stop()  # a previous demo that was interrupted
    elif any(workdir.iterdir()):
        raise InputError(
            "demo --workdir",
            f"is not empty and holds no {MANIFEST} of an earlier demo, so it is not ours to delete",
            "name a new or empty directory, or an earlier demo's workdir",
            path=str(workdir),
        )
    shutil.rmtree(workdir)
    return workdir


def run_demo(workdir: Path, scale: str, report_dir: Path, no_input: bool = False) -> int:
    from ispcp_lib.runbook.cli import run_runbook
    from ispcp_lib.sandbox.world import build_world

    try:
        workdir = clear_workdir(workdir)
    except InputError as exc:
        print(f"demo: {exc}", flush=True)
        return 2
    started_at = time.monotonic()
    print(f"demo: building the {scale} sandbox world in {workdir}", flush=True)
    world = build_world(workdir, scale)
    print(f"demo: world built in {time.monotonic() - started_at:.1f} s", flush=True)
    rc = 1
    try:
        world.start()
        with world_services(world) as service_params:
            params = {**world.runbook_params(), **service_params, "apply": True}
            rc, _ = run_runbook(params, report_dir)
    finally:
        world.stop()
        left = _leftover_pids(workdir)
        if left:
            print(f"demo: WARNING: processes still running from {workdir}: {left}", flush=True)
            rc = rc or 1
    print(f"demo: finished in {time.monotonic() - started_at:.1f} s (exit {rc})", flush=True)
    return rc
