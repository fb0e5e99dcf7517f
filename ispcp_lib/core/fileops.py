"""Safety copies, atomic writes, unified diffs and tree fingerprints."""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path


def unified_diff(old: str, new: str, path: str) -> str:
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), f"a{path}", f"b{path}")
    )


def atomic_write(
    path: Path,
    data: bytes | str,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> None:
    """Write via temp file + fsync + rename, so a crash leaves the old or the new file, never half.

    Mode and owner default to those of the file being replaced.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if path.exists():
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        uid = st.st_uid if uid is None else uid
        gid = st.st_gid if gid is None else gid
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if uid is not None or gid is not None:  # before chmod: chown clears the setuid and setgid bits
            os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def safety_copy(src: Path, backup_dir: Path, logical_path: str) -> Path:
    """Copy src (file, symlink or tree) to backup_dir/<logical_path>, keeping mode and owner."""
    dest = backup_dir / logical_path.lstrip("/")
    if os.path.lexists(dest):
        # A copy from the same run already holds the oldest state: keep it.
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dest, symlinks=True, copy_function=_copy_with_owner)
        _copy_owner(src, dest)
    else:
        _copy_with_owner(str(src), str(dest))
    return dest


def _copy_with_owner(src: str, dst: str) -> str:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)
    _copy_owner(Path(src), Path(dst))
    return dst


def _copy_owner(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    os.lchown(dst, st.st_uid, st.st_gid)


def fingerprint(root: Path, exclude: Iterable[Path] = ()) -> dict[str, tuple]:
    """Content, type, mode, owner and symlink target of everything under root.

    Two equal fingerprints mean nothing under root changed (atime aside).
    """
    root = Path(root)
    skip = {Path(p).resolve() for p in exclude}
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in skip)
        for name in sorted(dirnames) + sorted(filenames):
            p = here / name
            if p.resolve() in skip and not p.is_symlink():
                continue
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            meta = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = (*meta, "->" + os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = (*meta, _sha256(p))
            elif stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                out[rel] = meta  # a live server's socket: presence only
            else:
                out[rel] = meta
    return out


def fingerprint_diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Human-readable list of what differs between two fingerprints (empty means identical)."""
    lines = [f"removed {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"added {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"changed {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return lines


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
