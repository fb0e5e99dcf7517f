"""What a restore step restored, from which backup files: its record in the state directory.

A record makes a second run a no-op when the same inputs were restored and are live. The inputs are
identified by a signature: every file's name, size and mtime of a database folder, or the dump
file's. The record lives on the machine that holds the state directory (ctx.state), mode 0600.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ispcp_lib.core.context import Context
from ispcp_lib.facts import mysql_state
from ispcp_lib.mysql.dumps import DumpFile


def read(ctx: Context, name: str) -> dict[str, Any]:
    """The step's record, {} when there is none (or it is unreadable)."""
    text = ctx.state.read_text(f"{ctx.state_dir}/{name}")
    try:
        data = json.loads(text) if text is not None else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write(ctx: Context, name: str, data: dict[str, Any]) -> None:
    ctx.ensure_state_dir()
    ctx.state.write_atomic(f"{ctx.state_dir}/{name}", json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)


def signature(ctx: Context, source: str | DumpFile) -> str:
    """What identifies an input of the backup: a database folder's files, or a dump file."""
    if isinstance(source, DumpFile):
        data: Any = [source.name, source.size, source.mtime]
    else:
        assert ctx.backup is not None
        data = mysql_state.tree_signature(ctx.backup, source)
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


# The records of the two restore steps (customer_databases reads mysql_restore's).
MYSQL_RESTORE = "mysql_restore.json"
CUSTOMER_DATABASES = "customer_databases.json"
