"""Context: everything one recovery run knows about where it works and how it may act."""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ispcp_lib.core import fileops
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import REGISTRY, SecretRegistry

if TYPE_CHECKING:
    from ispcp_lib.mysql.service import MysqlService

DEFAULT_STATE_DIR = "/var/lib/ispcp-recovery"


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


@dataclass
class Context:
    target_root: Path
    backup_root: Path | None
    state_dir: Path
    run_id: str
    default_apply: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    secrets: SecretRegistry = field(default=REGISTRY)
    runner: Runner = field(default_factory=Runner)
    mysql: MysqlService | None = None
    resume: bool = True
    steps: list[str] | None = None  # None: every step
    force_steps: set[str] = field(default_factory=set)
    apply_steps: dict[str, bool] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    current: Result | None = None
    progress: Callable[[str], None] | None = None

    # -- where things are ------------------------------------------------------------------
    def t(self, path: str) -> Path:
        """An absolute path of the target system, under target_root."""
        return self.target_root / str(path).lstrip("/")

    def b(self, path: str) -> Path:
        """An absolute path of the old server inside the backup; refuses escapes via symlinks."""
        if self.backup_root is None:
            raise InputError("backup_root", "is not set", "set the backup_root parameter")
        p = self.backup_root / str(path).lstrip("/")
        real = Path(os.path.realpath(p))
        root = Path(os.path.realpath(self.backup_root))
        if real != root and root not in real.parents:
            raise InputError(
                "backup file",
                f"resolves to {real}, outside the backup root (a symlink escapes it)",
                "replace the symlink with the file it should hold, or remove it from the backup",
                path=str(p),
            )
        return p

    @property
    def apply(self) -> bool:
        """Whether the running action may change the target (a per-step override can say no)."""
        return self.current.apply if self.current is not None else self.default_apply

    def apply_for(self, step: str) -> bool:
        return self.default_apply and self.apply_steps.get(step, True)

    @property
    def backup_dir(self) -> Path:
        return self.state_dir / "backups" / self.run_id

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.jsonl"

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    # -- acting ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A plain progress line (headless runs print these instead of widgets)."""
        line = f"[{dt.datetime.now():%H:%M:%S}] {self.secrets.redact(message)}"
        if self.progress is not None:
            self.progress(line)
        else:
            print(line, file=sys.stdout, flush=True)

    def keep(self, path: Path) -> Path | None:
        """Safety-copy a target path before it is replaced; returns where the copy is."""
        if not os.path.lexists(path):
            return None
        logical = "/" + str(Path(path).relative_to(self.target_root)) if self._under_target(path) else str(path)
        # One folder per step: each step's copy holds the state that step replaced, even when an
        # earlier step of the same run changed the file already.
        step = self.current.step if self.current is not None else "outside-steps"
        dest = fileops.safety_copy(Path(path), self.backup_dir / step, logical)
        if self.current is not None and str(dest) not in self.current.backups:
            self.current.backups.append(str(dest))
        return dest

    def write_file(
        self,
        path: Path,
        new: str | bytes,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        what: str | None = None,
        show_diff: bool = True,
    ) -> bool:
        """Plan or perform one file write: diff, safety copy, atomic replace. True if it changes."""
        path = Path(path)
        old_bytes = path.read_bytes() if path.exists() else None
        new_bytes = new.encode("utf-8") if isinstance(new, str) else new
        if old_bytes == new_bytes and not self._meta_differs(path, mode, uid, gid):
            return False
        result = self.current
        if result is not None:
            result.change(what or f"write {self.display_path(path)}")
            if show_diff and old_bytes != new_bytes:
                old_text = (old_bytes or b"").decode("utf-8", "replace")
                diff = fileops.unified_diff(old_text, new_bytes.decode("utf-8", "replace"), self.display_path(path))
                result.diffs.append(Diff(self.display_path(path), diff))
        if self.apply:
            self.keep(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fileops.atomic_write(path, new_bytes, mode, uid, gid)
        return True

    def display_path(self, path: Path) -> str:
        """The path as the operator knows it on the target (without the sandbox prefix)."""
        if self._under_target(path) and self.target_root != Path("/"):
            return "/" + str(Path(path).relative_to(self.target_root))
        return str(path)

    def _under_target(self, path: Path) -> bool:
        try:
            Path(path).relative_to(self.target_root)
            return True
        except ValueError:
            return False

    @staticmethod
    def _meta_differs(path: Path, mode: int | None, uid: int | None, gid: int | None) -> bool:
        if not path.exists():
            return True
        st = path.stat()
        return (
            (mode is not None and (st.st_mode & 0o7777) != mode)
            or (uid is not None and st.st_uid != uid)
            or (gid is not None and st.st_gid != gid)
        )
