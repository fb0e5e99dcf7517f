"""The sandbox world: an old ispCP server's backup, a fresh target with a dummy ispCP, and a manifest.

    world = build_world(Path("/tmp/w"), "small", seed=1)   # leaves nothing running
    world.start()                                          # the target's private MariaDB
    papermill params: world.runbook_params()
    world.stop()

Layout under workdir:
    backup/      the dead server's surviving files at their original absolute paths
    target/      the new server's root (its MariaDB datadir is target/var/lib/mysql)
    state/       the runbook's state_dir
    logs/        server error logs
    world.json   the manifest, including every secret (mode 0600; sandbox-only values)
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.fileops import fingerprint
from ispcp_lib.core.runner import Runner
from ispcp_lib.mysql.service import SandboxMysql
from ispcp_lib.sandbox import new_server, old_server, private_mysql, server_world, standin_relay, update_standin
from ispcp_lib.sandbox.accounts import OLD_SERVICE_GROUPS, OLD_SERVICE_USERS
from ispcp_lib.sandbox.private_mysql import free_port
from ispcp_lib.sandbox.scenario import NEW_IP, Scenario, make_scenario

__all__ = ["VOLATILE_DATADIR_FILES", "World", "build_world", "free_port", "mariadbd_pids_under", "stable_fingerprint"]

MANIFEST = "world.json"
DEFAULT_VARIANT: dict[str, Any] = {
    "dummy_version": "1.0.5 OMEGA",  # the ispCP version of the target's fresh install
    "no_dummy": False,  # True: no ispCP at all on the target (preflight/install-check scenarios)
    "new_ip": NEW_IP,  # the target's BASE_SERVER_IP
    "backup_mysql_owner": "old",  # "old": backup datadirs owned by the old server's mysql ids; "host"
    "backup_full_datadir": False,  # True: the backup holds the old datadir whole (ibdata1, redo log, every db)
    "customer_dumps": "per_database",  # per_database | all_databases | both | none (var/backups/mysql)
}

# Server-internal files at the top of a MariaDB datadir that change with no client action: redo and
# undo logs, the system tablespace (InnoDB's background purge/flush writes it), the temporary
# tablespace, Aria's control file and log, the buffer-pool dump written at shutdown, pid/socket files,
# crash-safe DDL and XA logs, and multi-master.info (created at startup). A dry run can't be blamed
# for them, so stable_fingerprint() leaves them out; database directories (ispcp/, mysql/, customer
# dbs) stay in, so a dry run that changed a table or a grant is still caught.
VOLATILE_DATADIR_FILES: tuple[str, ...] = (
    "ib_logfile*",
    "ibdata*",
    "ibtmp*",
    "undo[0-9]*",
    "aria_log*",
    "ib_buffer_pool",
    "*.pid",
    "*.sock",
    "mysql.sock",
    "mysqld.sock",
    "ddl_recovery.log",
    "tc.log",
    "multi-master.info",
    "*.err",
    "#sql*",
    "mysql_upgrade_info.tmp",
)


@dataclass
class World:
    workdir: Path
    backup_root: Path
    target_root: Path
    state_dir: Path
    manifest: dict[str, Any]
    mysql_params: dict[str, Any]
    secrets: list[str]
    _mysql: SandboxMysql | None = field(default=None, repr=False, compare=False)

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def mysql_tmpdir(self) -> Path:
        """The target server's private --tmpdir (outside target_root, so fingerprints ignore it)."""
        return Path(self.manifest.get("mysql_tmpdir") or self.workdir / "tmp" / "target-mysql")

    @property
    def credentials(self) -> dict[str, dict[str, str]]:
        """{'old'|'new': {root_password, debian_sys_maint, vftp, key, iv}}."""
        return self.manifest["credentials"]

    @property
    def domains(self) -> list[dict[str, Any]]:
        return self.manifest["domains"]

    @classmethod
    def load(cls, workdir: Path) -> World:
        workdir = Path(workdir).absolute()
        manifest = json.loads((workdir / MANIFEST).read_text())
        if manifest["paths"]["workdir"] != str(workdir):  # moved or copied by hand: follow it
            manifest = _rebase(manifest, manifest["paths"]["workdir"], str(workdir))
        paths = manifest["paths"]
        return cls(
            workdir=Path(paths["workdir"]),
            backup_root=Path(paths["backup_root"]),
            target_root=Path(paths["target_root"]),
            state_dir=Path(paths["state_dir"]),
            manifest=manifest,
            mysql_params=dict(manifest["mysql"]),
            secrets=list(manifest["secrets"]),
        )

    def save(self) -> None:
        path = self.workdir / MANIFEST
        path.write_text(json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")
        path.chmod(0o600)

    def target_mysql(self) -> SandboxMysql:
        """The target's private MariaDB (one object per World, so the child process gets reaped)."""
        if self._mysql is None:
            p = self.mysql_params
            private_mysql.check_socket_path(Path(p["socket"]))
            self._mysql = SandboxMysql(
                Path(p["datadir"]),
                Path(p["socket"]),
                int(p["port"]),
                Path(p["pid_file"]),
                Runner(),
                LocalConnection("/"),
                log_file=Path(p["log_file"]),
            )
        return self._mysql

    def start(self) -> None:
        """Start the target's MariaDB. On a port taken meanwhile, retry once on a new free port."""
        if server_world.in_server(self):
            server_world.start_mysql(self)
            return
        try:
            private_mysql.start(self.target_mysql(), self.mysql_tmpdir)
        except PreconditionFailed as exc:
            if "already in use" not in str(exc) and "Bind on TCP/IP port" not in str(exc):
                raise
            dead = self._mysql._proc if self._mysql is not None else None
            if dead is not None:
                dead.wait(timeout=10)  # reap the server that could not bind
            self.mysql_params["port"] = self.manifest["mysql"]["port"] = free_port()
            self.save()
            self._mysql = None
            private_mysql.start(self.target_mysql(), self.mysql_tmpdir)

    def stop(self) -> None:
        if server_world.in_server(self):
            server_world.stop_mysql(self)
            return
        self.target_mysql().stop()

    def running(self) -> bool:
        if server_world.in_server(self):
            return server_world.mysql_running(self)
        return bool(mariadbd_pids_under(self.workdir)) or self.target_mysql().status()

    def runbook_params(self, connection: str | None = None, backup_location: str = "controller") -> dict[str, Any]:
        """The papermill parameters that point the runbook at this world (no secrets in them).

        A world in a lab server (server_world.attach) is reached over `connection` (local, chroot or
        ssh; default: the one it was attached for), with backup_location controller or target.
        """
        if server_world.in_server(self):
            return server_world.runbook_params(self, connection, backup_location)
        return {
            "backup_root": str(self.backup_root),
            "target_root": str(self.target_root),
            "state_dir": str(self.state_dir),
            "mysql": {**self.mysql_params, "tmpdir": str(self.mysql_tmpdir)},
            "sandbox": True,
        }

    def clone(self, dest: Path) -> World:
        """An independent copy (cp -a keeps owners, modes and links) with its own MariaDB port."""
        if self.manifest.get("system_root"):
            raise PreconditionFailed(
                "sandbox world",
                "its target is a lab server's root, which a copy of the workdir would share",
                "start another server over the frozen world instead (server_world.freeze and thaw)",
                path=str(self.workdir),
            )
        if self.running():
            raise PreconditionFailed(
                "sandbox world",
                "its MariaDB is running; a copy would be torn",
                "call world.stop() before clone()",
                path=str(self.workdir),
            )
        dest = Path(dest)
        if dest.exists():
            if any(dest.iterdir()):
                raise PreconditionFailed("clone destination", "is not empty", "pick a new path", path=str(dest))
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        Runner().run(["cp", "-a", "--", str(self.workdir), str(dest)], timeout=1800)
        manifest = _rebase(self.manifest, str(self.workdir), str(dest))
        manifest["mysql"]["port"] = free_port()
        clone = World(
            workdir=dest,
            backup_root=Path(manifest["paths"]["backup_root"]),
            target_root=Path(manifest["paths"]["target_root"]),
            state_dir=Path(manifest["paths"]["state_dir"]),
            manifest=manifest,
            mysql_params=dict(manifest["mysql"]),
            secrets=list(manifest["secrets"]),
        )
        private_mysql.check_socket_path(Path(clone.mysql_params["socket"]))
        private_mysql.grant_traverse(dest)
        clone.save()
        return clone


def _rebase(value: Any, old: str, new: str) -> Any:
    """Every string that is `old` or a path below it, moved to `new` (other strings untouched)."""
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def mariadbd_pids_under(path: Path) -> list[int]:
    """pids of server processes whose --datadir lies under `path` (found by datadir, never by name)."""
    root = str(Path(path).resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            if arg.startswith(b"--datadir="):
                datadir = os.path.realpath(arg[len(b"--datadir=") :].decode(errors="replace"))
                if datadir == root or datadir.startswith(root + "/"):
                    pids.append(int(entry.name))
    return pids


def stable_fingerprint(world: World) -> dict[str, tuple]:
    """fingerprint(target_root) minus the state dir, target/run and VOLATILE_DATADIR_FILES."""
    if world.manifest.get("system_root"):
        return server_world.stable_system_fingerprint(world)
    fp = fingerprint(world.target_root, exclude=[world.state_dir, world.target_root / "run"])
    datadir = Path(world.mysql_params["datadir"])
    try:
        rel = datadir.relative_to(world.target_root)
    except ValueError:
        return fp
    return {
        k: v
        for k, v in fp.items()
        if not (Path(k).parent == rel and any(fnmatch.fnmatch(Path(k).name, p) for p in VOLATILE_DATADIR_FILES))
    }


def _secrets(sc: Scenario, hashes: dict[str, str]) -> list[str]:
    values: list[str] = []
    for srv in (sc.old, sc.new):
        values += [srv.root_password, srv.debian_sys_maint, srv.vftp, srv.key, srv.iv]
    values += [m.password for m in sc.mailboxes if m.password is not None]
    values += [c.password for c in sc.customer_dbs]
    values += [u.password for u in sc.ftp_users]
    values += list(sc.admin_passwords.values()) + list(sc.shadow_passwords.values())
    values += list(hashes.values())
    return list(dict.fromkeys(values))  # unique, in order


def build_world(
    workdir: Path,
    scale: str = "small",
    seed: int = 1,
    *,
    variant: dict[str, Any] | None = None,
    keep_old: bool = False,
    runner: Runner | None = None,
    target_root: Path | None = None,
    system_root: bool = False,
) -> World:
    """Build the whole world under workdir (absent or empty). Nothing is left running afterwards.

    keep_old keeps the old server's datadir under workdir/old-mysql (stopped) for debugging.
    target_root puts the target there instead of workdir/target; system_root=True says it is an
    installed system (a lab server's root) to build into without breaking it (see server_world).
    """
    unknown = set(variant or {}) - set(DEFAULT_VARIANT)
    if unknown:
        raise ValueError(f"unknown variant keys {sorted(unknown)}; known: {sorted(DEFAULT_VARIANT)}")
    var = {**DEFAULT_VARIANT, **(variant or {})}
    runner = runner or Runner()
    workdir = Path(workdir).absolute()
    if workdir.exists() and any(workdir.iterdir()):
        raise PreconditionFailed("sandbox workdir", "is not empty", "pass a new or empty directory", path=str(workdir))
    timings: dict[str, float] = {}
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    private_mysql.grant_traverse(workdir)
    backup, target, state, logs = (workdir / n for n in ("backup", "target", "state", "logs"))
    target = Path(target_root).absolute() if target_root is not None else target
    if system_root:
        server_world.check_same_mariadb(target)
    for d in (backup, target, state, logs):
        d.mkdir(mode=0o755, exist_ok=d == target and system_root)
    state.chmod(0o700)

    sc = make_scenario(scale, seed, new_ip=var["new_ip"])
    hashes = old_server.make_hashes(sc, runner)
    timings["hashes"] = time.monotonic() - started

    t = time.monotonic()
    old_mysql_ids = dict((n, u) for n, u, *_ in OLD_SERVICE_USERS)["mysql"], dict(OLD_SERVICE_GROUPS)["mysql"]
    owner = old_mysql_ids if var["backup_mysql_owner"] == "old" else private_mysql.mysql_ids()
    old_db = old_server.build_old_database(
        workdir,
        backup,
        sc,
        hashes,
        runner,
        keep_old,
        owner,
        full_datadir=bool(var["backup_full_datadir"]),
        customer_dumps=var["customer_dumps"],
    )
    timings["old_database"] = time.monotonic() - t
    t = time.monotonic()
    messages = old_server.write_old_files(backup, sc, hashes, 1 if scale == "large" else None)
    timings["old_files"] = time.monotonic() - t

    t = time.monotonic()
    params = new_server.target_mysql_params(workdir, target, free_port())
    dummy = not var["no_dummy"]
    new_server.write_system_files(target, sc, system_root)
    mysql_tmpdir = workdir / "tmp" / "target-mysql"
    new_version = new_server.build_target_database(params, sc, runner, dummy, mysql_tmpdir)
    if system_root:
        server_world.adopt_datadir(target, params)
        server_world.write_service_config(target, sc.new_hostname)
    if dummy:
        new_server.write_dummy_ispcp(target, sc, var["dummy_version"], system_root)
    timings["target"] = time.monotonic() - t

    manifest: dict[str, Any] = {
        "format": 1,
        "scale": scale,
        "seed": seed,
        "system_root": system_root,
        "variant": var,
        "paths": {
            "workdir": str(workdir),
            "backup_root": str(backup),
            "target_root": str(target),
            "state_dir": str(state),
            "logs_dir": str(logs),
        },
        "old": {
            "hostname": sc.old_hostname,
            "ip": sc.old_ip,
            "ispcp_version": old_server.OLD_VERSION,
            "mysql_version": old_db["version"],
            "mysql_owner": list(owner),
            "mysql": old_db["old_mysql"],
        },
        "new": {
            "hostname": sc.new_hostname,
            "ip": sc.new_ip,
            "ispcp_version": var["dummy_version"] if dummy else None,
            "mysql_version": new_version,
        },
        "counts": {**sc.summary(), "mail_messages": messages},
        "domains": sc.domain_records(),
        "customer_dbs": [
            {"name": c.name, "engine": c.engine, "domain_id": c.domain_id, "user": c.user} for c in sc.customer_dbs
        ],
        "mysql": params,
        "mysql_tmpdir": str(mysql_tmpdir),
        "credentials": {
            side: {
                "root_password": s.root_password,
                "debian_sys_maint": s.debian_sys_maint,
                "vftp": s.vftp,
                "key": s.key,
                "iv": s.iv,
            }
            for side, s in (("old", sc.old), ("new", sc.new))
        },
        "secrets": _secrets(sc, hashes),
        "timings": timings,
    }
    world = World(
        workdir=workdir,
        backup_root=backup,
        target_root=target,
        state_dir=state,
        manifest=manifest,
        mysql_params=dict(params),
        secrets=list(manifest["secrets"]),
    )
    if dummy and system_root:  # a lab server has no Python: its shim asks this machine's relay
        standin_relay.install_shim(world.target_root, "ispcp-update")
    elif dummy:
        update_standin.install(world.target_root, world)
    timings["total"] = time.monotonic() - started
    world.save()
    leftover = mariadbd_pids_under(workdir)
    if leftover:  # a bug in this module, not in the caller: say so loudly
        raise PreconditionFailed(
            "sandbox build",
            f"left MariaDB processes running: {leftover}",
            "report this; stop them with world.stop()",
            path=str(workdir),
        )
    return world


def remove_world(world: World) -> None:
    """Stop the target's MariaDB and delete the workdir."""
    world.stop()
    shutil.rmtree(world.workdir)
