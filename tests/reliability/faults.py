"""The fault-injection suite: kill a recovery at operation boundaries, resume, compare with a clean run.

    python -m tests.reliability.faults [--all] [--steps a,b] [--keep]

On the small sandbox world, the steps run one by one as in a clean run; before each changing step a
stopped copy of the world is kept. Then, per kill point (step S, before or after its operation N): a
copy of the world before S runs S with ISPCP_FAULT (the executor's hook: os._exit at that boundary, a
kill -9), the killed run is resumed (S again, a new process), and the end state (the target's tree,
a logical dump of every database, pwck/grpck, the mail guard's record) must equal the clean run's
after S. "lost" counts the kill points that did not converge.

Every boundary of the steps with known hazards (EVERY_BOUNDARY) is killed; customer_databases at its
first, middle and last operation, the other steps before their first and after their last operation
(a deterministic sample), unless --all: every boundary of every step takes about 40 minutes on two
cores. Two kill points run at a time (--jobs). The output says which points were chosen.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ispcp_lib import steps as step_modules
from ispcp_lib.sandbox.world import World, build_world
from tests.reliability.harness import (
    KILLED,
    differences,
    end_state,
    operations_of_last_run,
    run_steps,
    served,
)

# Steps with known hazards of a kill (issue 16): every boundary of the first three; customer_databases
# (the same datadir moves) first, middle and last. The small world takes no whole-datadir swap: kills
# inside one are tests/integration/test_customer_databases.py's (moving out, moving in).
EVERY_BOUNDARY = ("mail_guard", "mysql_restore", "accounts")
HAZARD_STEPS = (*EVERY_BOUNDARY, "customer_databases")


@dataclass(frozen=True)
class KillPoint:
    step: str
    phase: str  # before | after
    seq: int

    @property
    def fault(self) -> str:
        return f"{self.phase}:{self.step}:{self.seq}"


def changing_steps() -> list[str]:
    return [n for n in step_modules.STEP_ORDER if step_modules.load(n).run.mutating]


def kill_points(step: str, ops: int, every: bool) -> list[KillPoint]:
    if every or step in EVERY_BOUNDARY:
        return [KillPoint(step, phase, n) for n in range(1, ops + 1) for phase in ("before", "after")]
    if not ops:
        return []
    if step in HAZARD_STEPS:
        seqs = sorted({1, (ops + 1) // 2, ops})
        return [KillPoint(step, phase, n) for n in seqs for phase in ("before", "after")]
    return [KillPoint(step, "before", 1), KillPoint(step, "after", ops)]


def clean_run(template: World, root: Path) -> tuple[dict[str, World], dict[str, dict], dict[str, int]]:
    """The steps one by one on a copy: the world before each changing step, the end state after it, its op count."""
    world = template.clone(root / "clean")
    before: dict[str, World] = {}
    after: dict[str, dict] = {}
    counts: dict[str, int] = {}
    changing = set(changing_steps())
    for name in step_modules.STEP_ORDER:
        if name in changing:
            before[name] = world.clone(root / f"before-{name}")
        with served(world) as params:
            rc, err = run_steps(world, params, [name])
            if rc != 0:
                raise SystemExit(f"the clean run failed in {name}: {err[-2000:]}")
            if name in changing:
                after[name] = end_state(world)
                counts[name] = operations_of_last_run(world, name)
    return before, after, counts


def try_point(point: KillPoint, start: World, want: dict, root: Path, n: int) -> tuple[str, list[str]]:
    """'converged', 'lost' (with the differences) or 'not reached' (the step ended before that boundary)."""
    world = start.clone(root / f"k{n}")
    ran = 0
    try:
        with served(world) as params:
            rc, err = run_steps(world, params, [point.step], fault=point.fault)
            if rc == 0 and point.phase == "after":
                ran = operations_of_last_run(world, point.step)
            if rc != KILLED and not 0 < ran < point.seq:
                return "not reached", [f"the run was not killed (exit {rc}): {err[-500:]}"]
            if rc == KILLED:
                rc, err = run_steps(world, params, [point.step])
                if rc != 0:
                    return "lost", [f"the resumed run failed: {err.strip()[-1500:]}"]
                found = differences(want, end_state(world))
                return ("lost" if found else "converged"), found
    finally:
        shutil.rmtree(world.workdir, ignore_errors=True)
    # A copy's private Postfix gets a main.cf of its own: lifting the mail guard there takes one
    # operation fewer than in the clean run. "After the last" is then the copy's last, on a fresh copy.
    last = KillPoint(point.step, "after", ran)
    verdict, found = try_point(last, start, want, root, n + 10_000)
    return verdict, [f"(the copy ran {ran} operations: killed at {last.fault})", *found]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every boundary of every changing step")
    parser.add_argument("--steps", help="only these steps (comma-separated)")
    parser.add_argument("--points", help="only these kill points, e.g. before:accounts:5,after:ftp:4")
    parser.add_argument("--jobs", type=int, default=2, help="kill points tried at once")
    parser.add_argument("--keep", action="store_true", help="keep the worlds (in /tmp) for a post-mortem")
    args = parser.parse_args(argv)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="ispcp-sandbox-faults-"))
    root.chmod(0o711)  # the mysql user must traverse to its datadirs
    try:
        template = build_world(root / "template", "small", seed=1)
        before, after, counts = clean_run(template, root)
        print(f"clean run, step by step: {time.monotonic() - started:.0f} s", flush=True)
        chosen = args.steps.split(",") if args.steps else list(before)
        points = [p for s in chosen for p in kill_points(s, counts[s], args.all)]
        if args.points:
            points = [KillPoint(s, ph, int(n)) for ph, s, n in (x.split(":") for x in args.points.split(","))]
        lost = unreached = 0
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(try_point, p, before[p.step], after[p.step], root, n) for n, p in enumerate(points)]
            for point, future in zip(points, futures):
                verdict, found = future.result()
                print(f"  {point.fault:32} {verdict}", flush=True)
                for line in found[:12]:
                    print(f"      {line}", flush=True)
                lost += verdict == "lost"
                unreached += verdict == "not reached"
        tried = len(points) - unreached
        scope = (
            "every boundary of every changing step"
            if args.all
            else f"every boundary of {', '.join(EVERY_BOUNDARY)}; customer_databases before and after its first, "
            "middle and last operation; the other steps before their first and after their last"
        )
        print(f"ops per step in the clean run: {', '.join(f'{s} {n}' for s, n in counts.items())}")
        print(f"kill points: {scope}; {unreached} not reached")
        print(f"{tried} kill points, {tried - lost} converged, {lost} lost ({time.monotonic() - started:.0f} s)")
        return 1 if lost or not tried else 0
    finally:
        if args.keep:
            print(f"worlds kept in {root}")
        else:
            for world_dir in root.iterdir():
                with_world = world_dir / "world.json"
                if with_world.exists():
                    World.load(world_dir).stop()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
