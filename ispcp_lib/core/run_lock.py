"""One recovery run per target at a time: a lock directory under the state dir, on the target.

`mkdir` is atomic on every file system and needs nothing but the target's own tools, so the lock
works the same over SSH, in a chroot and locally, and with several admin machines. The lock holds
a small `owner` file (run id, admin machine, process id, start time) so a refused second run can say
who holds it. A lock left by a run that died on *this* machine (its process is gone) is taken over;
one from another machine is only broken on the operator's word (`break_lock`), because a live run
elsewhere cannot be told from a dead one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import PreconditionFailed


@dataclass(frozen=True)
class LockOwner:
    run_id: str
    controller: str
    pid: int
    since: str

    def describe(self) -> str:
        return f"run {self.run_id} from {self.controller} (pid {self.pid}) since {self.since}"


def _me(run_id: str) -> LockOwner:
    return LockOwner(run_id, socket.gethostname(), os.getpid(), dt.datetime.now().isoformat(timespec="seconds"))


def _alive_here(owner: LockOwner) -> bool:
    if owner.controller != socket.gethostname():
        return True  # another machine: assume it runs
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock of one run on one target; `acquire()` then `release()` (or use it as a context manager)."""

    def __init__(self, conn: Connection, state_dir: str, run_id: str) -> None:
        self.conn = conn
        self.dir = state_dir.rstrip("/") + "/lock"
        self.owner = _me(run_id)
        self.held = False

    def holder(self) -> LockOwner | None:
        text = self.conn.read_text(self.dir + "/owner")
        if text is None:
            return None
        try:
            return LockOwner(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def acquire(self, *, break_lock: bool = False) -> None:
        self.conn.mkdir(os.path.dirname(self.dir), mode=0o700)
        for _attempt in range(2):
            if self.conn.run(["mkdir", "-m", "700", "--", self.conn.path(self.dir)], timeout=60).rc == 0:
                self.conn.write_atomic(self.dir + "/owner", json.dumps(self.owner.__dict__) + "\n", mode=0o600)
                self.held = True
                return
            holder = self.holder()
            if holder is not None and (holder.controller, holder.pid) == (self.owner.controller, self.owner.pid):
                # This very process opened a run again (a notebook's setup cell re-run): it is ours.
                self.conn.write_atomic(self.dir + "/owner", json.dumps(self.owner.__dict__) + "\n", mode=0o600)
                self.held = True
                return
            stale = holder is None or not _alive_here(holder)
            if not (stale or break_lock):
                raise PreconditionFailed(
                    "recovery lock",
                    f"another run holds {self.dir}: {holder.describe() if holder else 'an unknown run'}",
                    "wait for it to finish; if it is dead (its machine crashed), run again with break_lock: true",
                )
            self.conn.remove(self.dir, tree=True)
        raise PreconditionFailed(
            "recovery lock", f"could not take {self.dir}", "check the state dir's permissions on the target"
        )

    def release(self) -> None:
        if not self.held:
            return
        holder = self.holder()
        if holder is None or (holder.controller, holder.pid) == (self.owner.controller, self.owner.pid):
            self.conn.remove(self.dir, tree=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
