"""Writing sandbox files with exact owners and modes (numeric ids: they need not exist on the host)."""

from __future__ import annotations

import os
from pathlib import Path


def put_file(root: Path, logical: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Path:
    """Write `text` at root + logical path (e.g. '/etc/hostname'), creating parents as root 0755."""
    path = root / logical.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_owned(path, text, uid, gid, mode)


def write_owned(path: Path, text: str, uid: int, gid: int, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def mkdir_owned(path: Path, uid: int, gid: int, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path
