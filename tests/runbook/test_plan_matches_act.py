"""Plan and act cannot drift: each step's dry run, taken right before its apply (as JupyterLab does),
plans exactly the operations the apply then performs, and shows the same change lines."""

from __future__ import annotations

import json
from typing import Any

from ispcp_lib import steps
from ispcp_lib.runbook.session import open_run, summary

# The update's own run rewrites main.cf and restarts Postfix: the guard's re-assertion afterwards adds
# changes no plan can know before the script has run (the plan says so: "re-asserted after the run").
ONLY_AFTER_THE_ACT = {"ispcp_update"}


def _operations(result: Any) -> list[tuple[str, str]]:
    return [(op.kind, op.what) for op in result.operations]


def test_each_step_performs_the_operations_its_dry_run_planned(served_params: dict[str, Any]) -> None:
    ctx = open_run(**served_params)
    drift: dict[str, Any] = {}
    applied = []
    try:
        for name in steps.STEP_ORDER:
            step = steps.load(name)
            ctx.default_apply = False
            planned = step.run(ctx)
            ctx.default_apply = True
            done = step.run(ctx)
            assert done.status in ("done", "noop"), (name, done.errors)
            applied.append((name, len(done.operations)))
            plan, act = _operations(planned), _operations(done)
            changes = done.changes
            if name in ONLY_AFTER_THE_ACT:
                act, changes = act[: len(plan)], changes[: len(planned.changes)]
            if plan != act or planned.changes != changes:
                drift[name] = {
                    "only planned": [o for o in plan if o not in act]
                    + [c for c in planned.changes if c not in changes],
                    "only performed": [o for o in act if o not in plan]
                    + [c for c in changes if c not in planned.changes],
                    "same items, another order": sorted(plan) == sorted(act) and plan != act,
                    "lists": (plan, act, planned.changes, changes) if len(plan) + len(act) < 40 else None,
                }
    finally:
        summary(ctx)
    assert drift == {}, json.dumps(drift, indent=1, ensure_ascii=False)
    # The comparison compared something: the recovery performs operations in most steps.
    assert sum(1 for _, n in applied if n) >= 10, applied
