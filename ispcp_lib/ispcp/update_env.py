"""What ispcp-update works with on the target, and the records its attempts leave in the state dir.

Shared by the ispcp_update step (which runs the script), the health checks and the cleanup step
(which lifts the mail guard only after a successful attempt). Paths are the target's own; the
records live in the state dir, read and written through `ctx.state`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf

LOG_DIR = "ispcp-update"  # under the state dir: one transcript per attempt, plus the last success
SUCCESS_FILE = "last-success.json"
_ATTEMPT = re.compile(r"attempt-(\d+)-")


def load_conf(ctx: Context, path: str = CONF_PATH) -> IspcpConf | None:
    """An ispcp.conf of the target, None when absent; raises InputError when malformed."""
    text = ctx.target.read_text(path)
    return None if text is None else IspcpConf.parse(text, path)


def target_conf(ctx: Context) -> IspcpConf | None:
    """The target's ispcp.conf, None when absent or unreadable."""
    try:
        return load_conf(ctx)
    except InputError:
        return None


def old_conf_path(conf: IspcpConf) -> str:
    return f"{(conf.get('CONF_DIR') or '/etc/ispcp').rstrip('/')}/ispcp.old.conf"


def root_dir(conf: IspcpConf | None) -> str:
    return ((conf.get("ROOT_DIR") if conf else None) or "/var/www/ispcp").rstrip("/")


def log_dir(ctx: Context) -> str:
    return f"{ctx.state_dir}/{LOG_DIR}"


def last_success(ctx: Context) -> dict[str, Any] | None:
    """The record of the last successful attempt, None when no attempt succeeded."""
    try:
        return json.loads(ctx.state.read_text(f"{log_dir(ctx)}/{SUCCESS_FILE}") or "null")
    except ValueError:
        return None


def next_attempt(ctx: Context) -> int:
    """The number of the next attempt: one more than the highest transcript's."""
    names = ctx.state.listdir(log_dir(ctx)) or []
    numbers = [int(m.group(1)) for n in names if n.endswith(".log") and (m := _ATTEMPT.match(n))]
    return max(numbers, default=0) + 1


def remember_success(ctx: Context, attempt: int, transcript: str, digest: str) -> None:
    record = {
        "attempt": attempt,
        "run_id": ctx.run_id,
        "transcript": transcript,
        "ts": dt.datetime.now().isoformat(timespec="seconds"),
        "inputs": digest,
    }
    ctx.state.write_atomic(f"{log_dir(ctx)}/{SUCCESS_FILE}", json.dumps(record, indent=1), mode=0o600)


def update_verdict(ctx: Context) -> tuple[bool, str]:
    """Whether the update's last attempt succeeded, from its records in the state dir, and why."""
    done = last_success(ctx)
    last = next_attempt(ctx) - 1
    if done is None:
        return False, (f"none of ispcp_update's {last} attempt(s) succeeded" if last else "ispcp_update never ran")
    if last > int(done.get("attempt") or 0):
        return False, f"ispcp_update's last attempt ({last}) failed after attempt {done.get('attempt')} had succeeded"
    return True, f"ispcp_update attempt {done.get('attempt')} succeeded ({done.get('ts')})"
