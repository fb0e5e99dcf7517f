"""What the backup holds: one probe per item of the guide's checklist.

Every probe reads through `ctx.backup` (the old server's files at their original paths, on this
machine or on the target) and takes the old server's own absolute paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ispcp_lib.core.connection import LocalConnection, RootedView
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf

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


def backup(ctx: Context) -> RootedView:
    """The backup's view, or the InputError that says backup_root is missing."""
    if ctx.backup is None:
        raise InputError("backup_root", "is not set", "set backup_root to the directory holding the old files")
    return ctx.backup


def checked(ctx: Context, path: str, item: str = "backup file") -> str:
    """path, after refusing a backup path that a symlink leads out of the backup (untrusted input)."""
    real = backup(ctx).escapes(path)
    if real is not None:
        raise InputError(
            item,
            f"resolves to {real}, outside the backup root (a symlink escapes it)",
            "replace the symlink with the file it should hold, or remove it from the backup",
            path=shown(ctx, path),
        )
    return path


def shown(ctx: Context, path: str) -> str:
    """Where a backup path is, as the operator finds it (the backup folder's own path)."""
    return backup(ctx).path(path)


def local_path(ctx: Context, path: str) -> Path | None:
    """The backup path on this machine, for readers that need local files; None when the backup is elsewhere."""
    view = backup(ctx)
    return Path(view.path(path)) if isinstance(view.inner, LocalConnection) else None


def files_in(view: RootedView, folder: str) -> list[str] | None:
    """Names of the regular files directly in folder (one find), None when it is no directory."""
    if not view.is_dir(folder):
        return None
    done = view.run(["find", view.path(folder), "-mindepth", "1", "-maxdepth", "1", "-type", "f", "-printf", r"%f\n"])
    return sorted(done.out.splitlines()) if done.rc == 0 else None


def database_dir_state(view: RootedView, path: str) -> tuple[str, str]:
    """found/missing/invalid for a binary database directory, with what was seen."""
    st = view.stat(path)
    if st is not None and st.is_link:
        return "invalid", f"a symlink (to {st.link}), not the database folder itself"
    names = files_in(view, path)
    if names is None:
        return "missing", "no such directory"
    stems: dict[str, set[str]] = {}
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if dot:
            stems.setdefault(stem, set()).add("." + suffix)
    frms = sorted(stem for stem, suffixes in stems.items() if ".frm" in suffixes)
    if not frms:
        return "invalid", "no table definitions (.frm) in it"
    incomplete = []
    for table in frms:
        engine_files = stems[table]
        if ".MYD" in engine_files or ".MYI" in engine_files:
            missing = [s for s in (".MYD", ".MYI") if s not in engine_files]
            if missing:
                incomplete.append(f"{table} lacks {'/'.join(missing)}")
    innodb = [stem for stem, suffixes in stems.items() if ".ibd" in suffixes]
    detail = f"{len(frms)} tables"
    if innodb:
        detail += f", {len(innodb)} InnoDB (.ibd)"
    if incomplete:
        return "invalid", detail + "; " + "; ".join(incomplete[:5])
    return "found", detail


def ispcp_dumps(view: RootedView, backup_dir: str) -> list[str]:
    """SQL dumps that ispcp-backup-ispcp left in BACKUP_FILE_DIR (backup paths)."""
    names = files_in(view, backup_dir) or []
    return [f"{backup_dir.rstrip('/')}/{n}" for n in names if n.endswith(DUMP_SUFFIXES)]


def config_tars(view: RootedView, backup_dir: str) -> list[str]:
    names = files_in(view, backup_dir) or []
    return [f"{backup_dir.rstrip('/')}/{n}" for n in names if ".tar" in n]


def tar_members(view: RootedView, path: str) -> list[str] | None:
    """Names inside a tar (listed where the backup is, nothing extracted); None when it is unreadable."""
    done = view.run(["tar", "-tf", view.path(path)], timeout=600)
    return done.out.splitlines() if done.rc == 0 else None


# Prints "link<TAB>its target" for each symlink whose resolved path leaves $1 (the backup root).
_ESCAPING = r"""
root=$1; shift
for l do
  r=$(readlink -f -- "$l")
  case $r in "$root"|"$root"/*) ;; *) printf '%s\t%s\n' "$l" "$(readlink -- "$l")" ;; esac
done
"""


def escaping_symlinks(ctx: Context, top: str, limit: int = 20) -> list[str]:
    """Symlinks under top whose target leaves the backup root (they are copied as links, never followed)."""
    view = backup(ctx)
    root = view.inner.realpath(view.root)
    argv = [
        "find",
        view.path(top),
        "-type",
        "l",
        "-exec",
        "sh",
        "-c",
        _ESCAPING,
        "sh",
        view.inner.path(root),
        "{}",
        "+",
    ]
    done = view.run(argv, timeout=3600)
    return [line.replace("\t", " -> ", 1) for line in done.out.splitlines()[:limit]]


def load_old_conf(ctx: Context) -> IspcpConf | None:
    """The backup's ispcp.conf, None when absent; raises InputError when malformed or escaping."""
    path = checked(ctx, CONF_PATH, "ispcp.conf (backup)")
    return IspcpConf.read(backup(ctx), path, display=shown(ctx, path))


def check_backup_root(ctx: Context) -> RootedView:
    """The backup's view once its root is an existing directory; InputError with the fix otherwise."""
    view = backup(ctx)
    found = view.inner.stat(view.inner.realpath(view.root))
    if found is None:
        raise InputError(
            "backup_root",
            "does not exist",
            "mount or unpack the backup and point backup_root at it",
            path=view.root,
        )
    if not found.is_dir:
        raise InputError(
            "backup_root",
            "is a file, not a directory",
            "unpack the archive (tar -xpf) and point backup_root at the directory",
            path=view.root,
        )
    return view
