"""One module per guide step, in the guide's order (DESIGN.md, "The guide, step by step").

Each built step module exposes `run(ctx, **options) -> Result` (an @action), and for the
runbook: TITLE, GUIDE (the guide's section it follows), EXPLANATION (markdown in our own
words), PARAMETERS (name -> (default, description)) and optionally CELLS (extra code cells).
"""

from __future__ import annotations

import importlib
from types import ModuleType

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


def load(name: str) -> ModuleType:
    """The step's module, by its name in STEP_ORDER."""
    if name not in STEP_ORDER:
        raise KeyError(f"unknown step {name!r}; steps are: {', '.join(STEP_ORDER)}")
    return importlib.import_module(f"ispcp_lib.steps.{name}")
