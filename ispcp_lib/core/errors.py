"""Typed errors. Each names the item, where it is, and what the operator should do."""

from __future__ import annotations


class IspcpError(Exception):
    """Base class: a message an operator can act on at 3 a.m."""

    def __init__(self, item: str, problem: str, fix: str = "", path: str | None = None) -> None:
        self.item = item
        self.problem = problem
        self.fix = fix
        self.path = path
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f" ({self.path})" if self.path else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.item}{where}: {self.problem}.{fix}"


class InputError(IspcpError):
    """The backup, a parameter or a file is malformed or unusable."""


class PreconditionFailed(IspcpError):
    """The target is not in a state where the step can run safely."""


class GuardBroken(PreconditionFailed):
    """The mail guard no longer holds: mail could bounce for good."""


class CommandFailed(Exception):
    """A command exited with a code that the caller did not accept."""

    def __init__(self, argv: list[str], rc: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        super().__init__(f"command {argv[0]} exited with {rc}: {' '.join(argv)}\n{tail}")
