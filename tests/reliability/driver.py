"""One applying run of the recovery steps against a sandbox world, in its own process.

The reliability suite starts it with ISPCP_FAULT set to kill it at an operation boundary (the
executor's hook, a real os._exit), then again without, to resume. Usage:

    python -m tests.reliability.driver WORLD_DIR PARAMS_JSON [STEP ...]

PARAMS_JSON holds the extra runbook parameters (the sandbox Postfix and DNS). Exit 0 when every
step passed, 1 when one failed (its error on stderr), 137 when the fault hook killed the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ispcp_lib import steps
from ispcp_lib.core.action import StepFailed
from ispcp_lib.runbook.session import open_run, summary
from ispcp_lib.sandbox.world import World


def main(argv: list[str]) -> int:
    world = World.load(Path(argv[0]))
    extra = json.loads(argv[1])
    names = argv[2:] or list(steps.STEP_ORDER)
    ctx = open_run(**{**world.runbook_params(), **extra, "apply": True, "resume": True})
    ctx.progress = lambda line: None
    rc = 0
    try:
        for name in names:
            try:
                steps.load(name).run(ctx)
            except StepFailed as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                rc = 1
                break
    finally:
        summary(ctx)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
