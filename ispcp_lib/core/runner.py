"""Commands as argv lists only: never a shell string, always a timeout, always recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.result import CommandRecord


class Runner:
    def __init__(self, apply: bool = False) -> None:
        self.apply = apply
        # The running action points this at its Result.commands; None means "don't record".
        self.sink: list[CommandRecord] | None = None
        self.log: Callable[[str], None] | None = None

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
    ) -> CommandRecord:
        """Run argv. With mutates=True and a dry run, the command is only recorded as planned.

        Dry run and apply go through this same call, so the plan cannot drift from the act.
        """
        if isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"commands are argv lists of str, not {argv!r}")
        argv = list(argv)
        if mutates and not self.apply:
            rec = CommandRecord(argv, None, planned=True)
            self._record(rec, record)
            return rec
        full_env = None
        if env is not None:
            full_env = {**os.environ, **env}
        started = time.monotonic()
        try:
            # Own process group: on a timeout the whole group goes, grandchildren included.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError:
            rec = CommandRecord(argv, 127, "", f"{argv[0]}: not found", time.monotonic() - started)
            self._record(rec, record)
            if check:
                raise CommandFailed(argv, 127, rec.stderr) from None
            return rec
        try:
            out, err = proc.communicate(input.encode() if isinstance(input, str) else input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            rec = CommandRecord(
                argv, None, _text(out), _text(err) + f"\n[timeout after {timeout} s]", time.monotonic() - started
            )
            self._record(rec, record)
            raise CommandFailed(argv, None, rec.stderr) from None
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        rec = CommandRecord(argv, proc.returncode, _text(out), _text(err), time.monotonic() - started)
        self._record(rec, record)
        if check and proc.returncode not in ok_codes:
            raise CommandFailed(argv, proc.returncode, rec.stderr or rec.stdout)
        return rec

    def _record(self, rec: CommandRecord, record: bool) -> None:
        if record and self.sink is not None:
            self.sink.append(rec)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")
