"""One module per guide step, in the guide's order (docs/architecture.md, "Steps").

Each step module exposes `run(ctx, **options) -> Result` (an @action), and for the runbook:
TITLE, GUIDE (the guide's section it follows), EXPLANATION (markdown in our own words),
PARAMETERS (a tuple of `ispcp_lib.core.params.Param`) and optionally CELLS (extra code cells).
No step imports another step; code outside this package reaches the steps only through here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ispcp_lib.core.params import Param
from ispcp_lib.system import disk_space
from ispcp_lib.system.postfix_guard import register_watchdogs

STEP_ORDER: tuple[str, ...] = (
    "inventory",
    "preflight",
    "mail_guard",
    "ispcp_install_check",
    "mysql_restore",
    "mysql_maintainer",
    "customer_databases",
    "accounts",
    "user_data",
    "ftp",
    "keys",
    "engine_speedup",
    "ispcp_conf",
    "ispcp_update",
    "register_accounts",
    "cleanup",
)

# Every changing step first checks that the mail guard still holds (ispcp_lib.core.action.WATCHDOGS).
register_watchdogs()
# A step that runs out of disk space names the full filesystem and the fix.
disk_space.register_advice()


def load(name: str) -> ModuleType:
    """The step's module, by its name in STEP_ORDER."""
    if name not in STEP_ORDER:
        raise KeyError(f"unknown step {name!r}; steps are: {', '.join(STEP_ORDER)}")
    return importlib.import_module(f"ispcp_lib.steps.{name}")


def parameters() -> list[tuple[str, Param]]:
    """(step name, Param) of every step, in guide order; a name declared twice is a bug."""
    out: list[tuple[str, Param]] = []
    seen: dict[str, str] = {}
    for name in STEP_ORDER:
        for param in load(name).PARAMETERS:
            if param.name in seen:
                raise ValueError(f"parameter {param.name} is declared by both {seen[param.name]} and {name}")
            seen[param.name] = name
            out.append((name, param))
    return out
