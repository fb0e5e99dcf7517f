"""What the backup holds: one probe per item of the guide's checklist."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.ispcp_conf import IspcpConf

MYISAM_PARTS = (".frm", ".MYD", ".MYI")
DUMP_SUFFIXES = (".sql", ".sql.gz", ".sql.bz2")


@dataclass
class Item:
    name: str
    path: str
    state: str  # found | missing | invalid
    detail: str
    why: str
    required: bool = False

    def row(self) -> dict[str, str]:
        return {
            "item": self.name,
            "state": self.state,
            "path": self.path,
            "detail": self.detail,
            "why it matters": self.why,
        }


def database_dir_state(path: Path) -> tuple[str, str]:
    """found/missing/invalid for a binary database directory, with what was seen."""
    if not path.is_dir():
        return "missing", "no such directory"
    files = [p for p in path.iterdir() if p.is_file()]
    frms = {p.stem for p in files if p.suffix == ".frm"}
    if not frms:
        return "invalid", "no table definitions (.frm) in it"
    incomplete = []
    for table in sorted(frms):
        engine_files = {p.suffix for p in files if p.stem == table}
        if ".MYD" in engine_files or ".MYI" in engine_files:
            missing = [s for s in (".MYD", ".MYI") if s not in engine_files]
            if missing:
                incomplete.append(f"{table} lacks {'/'.join(missing)}")
    innodb = sorted(p.stem for p in files if p.suffix == ".ibd")
    detail = f"{len(frms)} tables"
    if innodb:
        detail += f", {len(innodb)} InnoDB (.ibd)"
    if incomplete:
        return "invalid", detail + "; " + "; ".join(incomplete[:5])
    return "found", detail


def ispcp_dumps(backup_dir: Path) -> list[Path]:
    """SQL dumps that ispcp-backup-ispcp left in BACKUP_FILE_DIR."""
    if not backup_dir.is_dir():
        return []
    return sorted(p for p in backup_dir.iterdir() if p.is_file() and p.name.endswith(DUMP_SUFFIXES))


def config_tars(backup_dir: Path) -> list[Path]:
    if not backup_dir.is_dir():
        return []
    return sorted(p for p in backup_dir.iterdir() if p.is_file() and ".tar" in p.name)


def tar_members(path: Path) -> list[str] | None:
    """Names inside a tar (read only, nothing extracted); None when it is unreadable."""
    try:
        with tarfile.open(path) as tf:
            return tf.getnames()
    except (tarfile.TarError, OSError):
        return None


def escaping_symlinks(ctx: Context, top: Path, limit: int = 20) -> list[str]:
    """Symlinks under top whose target leaves the backup root (they are copied as links, never followed)."""
    root = os.path.realpath(ctx.backup_root) if ctx.backup_root else "/"
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != root and not real.startswith(root + os.sep):
                    found.append(f"{p} -> {os.readlink(p)}")
                    if len(found) >= limit:
                        return found
    return found


def load_old_conf(ctx: Context) -> IspcpConf | None:
    """The backup's ispcp.conf, None when absent; raises InputError when malformed or escaping."""
    path = ctx.b("/etc/ispcp/ispcp.conf")
    if not path.is_file():
        return None
    return IspcpConf.load(path, display=str(path))


def check_backup_root(ctx: Context) -> Path:
    root = ctx.backup_root
    if root is None:
        raise InputError("backup_root", "is not set", "set backup_root to the directory holding the old files")
    if not root.exists():
        raise InputError(
            "backup_root", "does not exist", "mount or unpack the backup and point backup_root at it", path=str(root)
        )
    if not root.is_dir():
        raise InputError(
            "backup_root",
            "is a file, not a directory",
            "unpack the archive (tar -xpf) and point backup_root at the directory",
            path=str(root),
        )
    return root
