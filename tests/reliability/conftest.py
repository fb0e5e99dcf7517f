"""The bad-backup corpus records each case's outcome here and the session prints the sums at its end."""

from __future__ import annotations

from typing import Any

import pytest

OUTCOMES: dict[str, str] = {}  # case id -> refused early | handled | late | traceback


@pytest.fixture
def corpus_outcomes() -> dict[str, str]:
    return OUTCOMES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES:
        return
    ok = sum(1 for v in OUTCOMES.values() if v in ("refused early", "handled"))
    late = sum(1 for v in OUTCOMES.values() if v == "late")
    tracebacks = sum(1 for v in OUTCOMES.values() if v == "traceback")
    terminalreporter.write_line(
        f"{len(OUTCOMES)} cases: {ok} refused early or handled, {late} late, {tracebacks} tracebacks"
    )
