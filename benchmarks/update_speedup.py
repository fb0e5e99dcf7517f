"""The update's wall time on the guide's mid-size system, with and without the engine_speedup step.

The guide: 25 domains, 100 subdomains and 500 mailboxes take the update from about 15 minutes down to
1-2 minutes once the managers' `sleep(1);` lines are commented out. This script measures both on the
sandbox's `mid` world, in the same run, and prints the ratio.

The sandbox's ispcp-update stand-in pauses like the real engine, once per item in every manager whose
`sleep(1);` is still active, but the pause is scaled (ISPCP_SANDBOX_SLEEP_SCALE, default here 0.01,
i.e. 10 ms instead of 1 s) so the benchmark takes seconds, not a quarter of an hour. The printout
states the factor and what the measurement means at the real one-second pause.

Run:
    .venv/bin/python benchmarks/update_speedup.py                 # the whole runbook under papermill, twice
    .venv/bin/python benchmarks/update_speedup.py --mode step     # only the ispcp_update step, twice
Options: --scale-factor F (the pause scale), --workdir DIR (default: a temporary directory), --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from ispcp_lib.sandbox.world import World, build_world  # noqa: E402
from ispcp_lib.steps import STEP_ORDER  # noqa: E402

SCALE = "mid"


def _items(world: World) -> int:
    c = world.manifest["counts"]
    return sum(c[k] for k in ("domains", "subdomains", "aliases", "mailboxes", "forwards"))


def run_step_mode(world: World, speedup: bool) -> float:
    """Restore directly (as the integration tests do), then time only the ispcp_update step."""
    from ispcp_lib.steps import engine_speedup, ispcp_update
    from tests.integration.recovered_world import open_ctx, recover, sync_proftpd

    world.start()
    try:
        recover(world)
        sync_proftpd(world)
        ctx = open_ctx(world, apply=True)
        if speedup:
            engine_speedup.run(ctx)
        started = time.monotonic()
        result = ispcp_update.run(ctx)
        elapsed = time.monotonic() - started
        if result.status != "done":
            raise SystemExit(f"ispcp_update did not succeed: {result.errors}")
        return elapsed
    finally:
        world.stop()


def run_runbook_mode(world: World, speedup: bool, report_dir: Path) -> float:
    """The whole runbook under papermill (as `ispcp-recover demo` runs it); the update's time from the summary."""
    from ispcp_lib.runbook.cli import run_runbook
    from ispcp_lib.sandbox.demo import world_services

    steps = [s for s in STEP_ORDER if speedup or s != "engine_speedup"]
    params: dict[str, Any] = {**world.runbook_params(), "apply": True, "steps": steps}
    world.start()
    try:
        with world_services(world) as services:
            rc, html = run_runbook({**params, **services}, report_dir, log_output=False)
    finally:
        world.stop()
    summary = json.loads(html.with_suffix(".json").read_text())
    row = next((s for s in summary["steps"] if s["name"] == "ispcp_update"), None)
    if rc != 0 or row is None or row["status"] != "done":
        failed = [s["name"] for s in summary["steps"] if s["status"] == "failed"]
        raise SystemExit(
            f"the runbook did not get through the update (failed: {failed or 'none'}; report {html}). "
            "Try --mode step to time the update step alone."
        )
    return float(row["duration_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("runbook", "step"), default="runbook")
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=0.01,
        help="ISPCP_SANDBOX_SLEEP_SCALE: the stand-in's pause per item, in seconds (real: 1.0)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the worlds and reports")
    args = parser.parse_args(argv)

    os.environ["ISPCP_SANDBOX_SLEEP_SCALE"] = str(args.scale_factor)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="upd-", dir="/tmp"))  # short: socket path limit
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.monotonic()
        base = build_world(work / "base", SCALE, seed=1)
        print(f"built the {SCALE} world in {time.monotonic() - t:.1f} s: {base.manifest['counts']}", flush=True)
        times = {}
        for label, speedup in (("without engine_speedup", False), ("with engine_speedup", True)):
            world = base.clone(work / ("fast" if speedup else "slow"))
            if args.mode == "step":
                times[label] = run_step_mode(world, speedup)
            else:
                times[label] = run_runbook_mode(world, speedup, work / "reports")
            print(f"  ispcp_update {label}: {times[label]:.2f} s", flush=True)
    finally:
        if not args.keep:
            for name in ("slow", "fast", "base"):
                if (work / name / "world.json").exists():
                    World.load(work / name).stop()
            shutil.rmtree(work, ignore_errors=True)

    slow, fast = times["without engine_speedup"], times["with engine_speedup"]
    items = _items(base)
    real_slow = fast + items * 1.0  # the same work plus the real one-second pause per item
    print()
    print(
        f"mid world: {items} items rebuilt by the engine managers "
        f"({base.manifest['counts']['domains']} domains, {base.manifest['counts']['subdomains']} subdomains, "
        f"{base.manifest['counts']['aliases']} aliases, "
        f"{base.manifest['counts']['mailboxes'] + base.manifest['counts']['forwards']} mail accounts)"
    )
    print(
        f"mode: {args.mode}; pause per item scaled by {args.scale_factor} "
        f"({args.scale_factor * 1000:.0f} ms instead of the real 1 s)"
    )
    print(f"update without engine_speedup: {slow:8.2f} s")
    print(f"update with engine_speedup:    {fast:8.2f} s")
    print(f"ratio (without / with):        {slow / fast:8.1f}x")
    print(
        f"at the real 1 s pause the update without the speed-up would take about {real_slow / 60:.1f} min "
        f"({items} items x 1 s + {fast:.1f} s of work), with it {fast:.1f} s: {real_slow / fast:.0f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
