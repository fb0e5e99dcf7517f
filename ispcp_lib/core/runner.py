"""Commands as argv lists only: never a shell string, always a timeout, always recorded."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ispcp_lib.core.connection import Connection, LocalConnection
from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.operations import Executor, RunCommand
from ispcp_lib.core.result import CommandRecord


class Runner:
    def __init__(self, apply: bool = False, connection: Connection | None = None) -> None:
        self.apply = apply
        # Where commands run: the target's connection (the Context sets it); this machine by default.
        self.connection: Connection = connection or LocalConnection("/")
        # The running action points this at its Result.commands; None means "don't record".
        self.sink: list[CommandRecord] | None = None
        # Journals the intent and completion of every changing command (the Context sets it).
        self.executor: Executor | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        mutates: bool = False,
        check: bool = True,
        ok_codes: Sequence[int] = (0,),
        timeout: float = 600,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        record: bool = True,
        what: str | None = None,
    ) -> CommandRecord:
        """Run argv. With mutates=True and a dry run, the command is only recorded as planned.

        Dry run and apply go through this same call (the executor's perform), so the plan cannot
        drift from the act. what: the step's change line for a changing command (rendered from it).
        """
        if isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"commands are argv lists of str, not {argv!r}")
        argv = list(argv)

        def act() -> CommandRecord:
            done = self.connection.run(
                argv, input=input, timeout=timeout, env=env, cwd=None if cwd is None else str(cwd)
            )
            return CommandRecord(argv, done.rc, done.out, done.err, done.duration_s)

        if not mutates:
            rec = act()
        elif self.executor is not None:
            op = RunCommand(what=what or " ".join(argv)[:300], argv=tuple(argv), where=self.connection.kind)
            ran = self.executor.perform(
                op, act, announce=what is not None, apply=self.apply, outcome=lambda r: {"rc": r.rc}
            )
            rec = ran if ran is not None else CommandRecord(argv, None, planned=True)
        else:  # a runner of its own (tests, the sandbox): no journal, no change lines
            rec = act() if self.apply else CommandRecord(argv, None, planned=True)
        self._record(rec, record)
        if check and not rec.planned and rec.rc not in ok_codes:
            raise CommandFailed(argv, rec.rc, rec.stderr or rec.stdout)
        return rec

    def _record(self, rec: CommandRecord, record: bool) -> None:
        if record and self.sink is not None:
            self.sink.append(rec)
