"""Progress of long work (the data copy, the DNS table, ispcp-update's phases) as steps report it.

Headless: a plain ctx.log line at most every `every_s` seconds, plus one when done. In a live
JupyterLab session the session draws a bar instead (`InteractiveGate.progress_widget`), so the steps
never import the notebook layer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ispcp_lib.core.result import human_size

if TYPE_CHECKING:
    from ispcp_lib.core.context import Context

Tick = Callable[[int, str], None]


def progress_bar(
    ctx: Context,
    total: int | None,
    label: str,
    every_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    unit: str = "",
    planned: bool = False,
) -> Tick:
    """A progress reporter for long work: call it as tick(done, text) as the work goes.

    unit="bytes" shows sizes (3.2 MiB), another unit is written after the numbers; planned=True (a dry
    run that walks the work without doing it) says so in the label, so a full bar does not read as work
    done.
    """
    if planned:
        label = f"{label} (dry run: planned, not done)"
    line = functools.partial(progress_line, label, total=total, unit=unit)
    session = ctx.interactive_session
    if session is not None:
        return session.progress_widget(ctx, total, label, line, planned)
    return _log_progress(ctx, total, line, every_s, clock)


def _log_progress(
    ctx: Context, total: int | None, line: Callable[..., str], every_s: float, clock: Callable[[], float]
) -> Tick:
    last = {"at": None, "finished": False}

    def tick(done: int, detail: str = "") -> None:
        now = clock()
        finished = bool(total) and done >= total
        if finished and last["finished"]:
            return
        if finished or last["at"] is None or now - last["at"] >= every_s:
            last["at"] = now
            last["finished"] = finished
            ctx.log(line(done, detail=detail))

    return tick


def progress_line(label: str, done: int, *, total: int | None, detail: str, unit: str = "") -> str:
    def amount(n: int) -> str:
        return human_size(n) if unit == "bytes" else f"{n} {unit}".rstrip()

    if total:
        text = f"{label}: {amount(done)} of {amount(total)} ({100 * min(done, total) // total}%)"
    else:
        text = f"{label}: {amount(done)}"
    return f"{text} {detail}".rstrip()
