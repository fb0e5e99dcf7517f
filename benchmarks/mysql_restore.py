"""The mysql_restore step's apply wall time against a plain cp -a of the same two folders plus one restart.

Run: .venv/bin/python benchmarks/mysql_restore.py [--scales mid large] [--repeat 3] [--workdir DIR]

For each scale a sandbox world is built once (not timed; its web and mail data are dropped, they play no
part here and only slow the clones down) and cloned for every measurement, so each restore starts from
the same fresh target. Best of --repeat each, all measured in the same run:
  by hand   the guide's commands and nothing more: stop the server, rename the two folders aside,
            `cp -a` the backup's ispcp and mysql folders into the datadir, `chown -R`, start the server
  cp+rst    `cp -a` of the two folders to a scratch folder, then a restart of the server on its own,
            untouched data (a lower bound: the first start on restored files has more to do, loading
            the old grants and re-stamping moved Aria tables)
  step      mysql_restore.run(ctx) with apply=True (offline checks, staging, stop, swap, start,
            CHECK TABLE, row counts, logins, marker)
  python    shutil.copytree(copy2) + os.chown of every entry: the in-process alternative to cp -a + chown -R
The goal is step / by hand <= 1.3; step / cp+rst is printed too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from ispcp_lib.core.connection import LocalConnection  # noqa: E402
from ispcp_lib.facts import mysql_state  # noqa: E402
from ispcp_lib.runbook.session import open_run  # noqa: E402
from ispcp_lib.sandbox.world import World, build_world  # noqa: E402
from ispcp_lib.steps import mysql_restore  # noqa: E402

GOAL = 1.3
DATABASES = ("ispcp", "mysql")


def size_of(folders: list[Path]) -> tuple[int, int]:
    files = total = 0
    for folder in folders:
        for p in folder.iterdir():
            files += 1
            total += p.stat().st_size
    return files, total


def baseline(world: World) -> float:
    """The guide's commands, nothing more: stop, rename aside, cp -a, chown -R, start."""
    src = world.backup_root / "var/lib/mysql"
    datadir = Path(world.mysql_params["datadir"])
    aside = datadir.parent / "bench-aside"
    uid, gid = mysql_state.mysql_owner(LocalConnection(world.target_root)) or (0, 0)
    srv = world.target_mysql()
    aside.mkdir()
    started = time.perf_counter()
    srv.stop()
    for name in DATABASES:
        os.rename(datadir / name, aside / name)
    subprocess.run(["cp", "-a", "--", *(str(src / n) for n in DATABASES), str(datadir)], check=True)
    subprocess.run(["chown", "-R", f"{uid}:{gid}", "--", *(str(datadir / n) for n in DATABASES)], check=True)
    srv.start()
    return time.perf_counter() - started


def copy_and_restart(world: World) -> float:
    """cp -a of the two folders beside the datadir, then one restart of the server on its own data."""
    src = world.backup_root / "var/lib/mysql"
    scratch = Path(world.mysql_params["datadir"]).parent / "bench-copy"
    srv = world.target_mysql()
    scratch.mkdir()
    started = time.perf_counter()
    subprocess.run(["cp", "-a", "--", *(str(src / n) for n in DATABASES), str(scratch)], check=True)
    srv.restart()
    elapsed = time.perf_counter() - started
    shutil.rmtree(scratch)
    return elapsed


def python_copy(world: World) -> float:
    """copytree with copy2 plus a chown walk: what the step would do without cp -a and chown -R."""
    src = world.backup_root / "var/lib/mysql"
    scratch = Path(world.mysql_params["datadir"]).parent / "bench-py"
    uid, gid = mysql_state.mysql_owner(LocalConnection(world.target_root)) or (0, 0)
    started = time.perf_counter()
    for name in DATABASES:
        shutil.copytree(src / name, scratch / name, copy_function=shutil.copy2)
        for dirpath, _dirs, files in os.walk(scratch / name):
            os.chown(dirpath, uid, gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), uid, gid)
    elapsed = time.perf_counter() - started
    shutil.rmtree(scratch)
    return elapsed


def step(world: World) -> float:
    ctx = open_run(**world.runbook_params(), apply=True, resume=False)
    ctx.progress = lambda line: None
    started = time.perf_counter()
    result = mysql_restore.run(ctx)
    elapsed = time.perf_counter() - started
    if result.status != "done":
        raise SystemExit(f"the step did not finish: {result.status} {result.errors}")
    return elapsed


def measure(template: World, base: Path, repeat: int) -> dict[str, float]:
    """Best times; each measurement that changes a target gets its own fresh clone."""
    runs = {"baseline": baseline, "copy_restart": copy_and_restart, "python": python_copy, "step": step}
    best = {name: float("inf") for name in runs}
    for i in range(repeat):
        # Alternate the order so that neither side always finds the backup in the page cache first.
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            world = template.clone(base / f"{name}{i}")
            try:
                world.start()
                best[name] = min(best[name], runs[name](world))
            finally:
                world.stop()
                shutil.rmtree(world.workdir, ignore_errors=True)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["mid", "large"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temp dir otherwise")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ispcp-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # mariadbd runs as mysql and must traverse to its datadir
    worst = 0.0
    try:
        print(
            f"{'scale':6} {'files':>6} {'MB':>5} {'by hand':>8} {'cp+rst':>7} {'step':>7} {'ratio':>6} "
            f"{'vs cp+rst':>9} {'copytree+chown':>15}"
        )
        for scale in args.scales:
            started = time.perf_counter()
            template = build_world(root / f"{scale}-template", scale, seed=1)
            built = time.perf_counter() - started
            for bulky in ("var/mail/virtual", "var/www/virtual", "var/www/fcgi"):
                shutil.rmtree(template.backup_root / bulky, ignore_errors=True)
            files, total = size_of([template.backup_root / "var/lib/mysql" / n for n in DATABASES])
            best = measure(template, root / scale, args.repeat)
            ratio = best["step"] / best["baseline"]
            worst = max(worst, ratio)
            print(
                f"{scale:6} {files:6d} {total / 1e6:5.1f} {best['baseline']:7.2f}s {best['copy_restart']:6.2f}s "
                f"{best['step']:6.2f}s {ratio:6.2f} {best['step'] / best['copy_restart']:9.2f} "
                f"{best['python']:14.3f}s   (world built in {built:.0f} s)",
                flush=True,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"goal: step / by hand <= {GOAL}: {'met' if worst <= GOAL else 'MISSED'} (worst {worst:.2f})")
    return 0 if worst <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
