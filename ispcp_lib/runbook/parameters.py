"""What a run takes: the run-wide parameters, the secrets-file entries, and the validation of a whole
set of parameters (run-wide and every step's) before anything on the target changes.

The specs here and each step's `PARAMETERS` are the only place a default or an allowed value is
written down: the runbook's parameters cell, the README's tables and the validation come from them
(`ispcp_lib.core.params` has the rules).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ispcp_lib.core.errors import InputError
from ispcp_lib.core.params import Param, validate
from ispcp_lib.steps import STEP_ORDER
from ispcp_lib.steps import parameters as step_parameters
from ispcp_lib.system import disk_space

KINDS = ("local", "chroot", "ssh")

TARGET_FIELDS = (
    Param(
        "connection",
        str,
        "local",
        "local: this machine (the tree under target_root); chroot: a system tree on this machine "
        "(target.root); ssh: a server reached with the OpenSSH client",
        choices=KINDS,
    ),
    Param("host", str, None, "ssh: the server's host name or address"),
    Param("port", int, 22, "ssh: the server's SSH port", minimum=1, maximum=65535),
    Param("user", str, "root", "ssh: the login (root: the recovery changes system files)"),
    Param("identity_file", str, None, "ssh: private key on this machine (default: your ssh config and agent)"),
    Param(
        "known_hosts",
        str,
        None,
        "ssh: known_hosts file with the server's host key (default: ~/.ssh/known_hosts); "
        "host keys are always checked, never accepted unseen",
    ),
    Param(
        "ssh_options",
        list,
        [],
        "ssh: more ssh client options, e.g. the legacy algorithms of an old server",
        example="['-oHostKeyAlgorithms=+ssh-rsa', '-oKexAlgorithms=+diffie-hellman-group14-sha1']",
    ),
    Param("root", str, None, "chroot: the mounted root of the server's system"),
    Param("argv_prefix", list, [], "ssh: a command the ssh client runs under (the lab: nsenter into its network)"),
)

MYSQL_FIELDS = (
    Param("service", str, "systemd", "how MySQL is started and stopped", choices=("systemd", "sysv", "sandbox")),
    Param("unit", str, "mariadb", "systemd: the unit name (mariadb, mysql)"),
    Param("datadir", str, "/var/lib/mysql", "the data directory"),
    Param("socket", str, "/run/mysqld/mysqld.sock", "the server's socket"),
    Param("port", int, 3306, "the server's TCP port", minimum=1, maximum=65535),
    Param("pid_file", str, None, "default: the running server's @@pid_file, else <datadir>/mysqld.pid"),
    Param("log_file", str, None, "sandbox: the private server's error log"),
    Param("tmpdir", str, None, "sandbox: the private server's tmpdir"),
    Param("user", str, None, "sandbox: the account the private server runs as (default mysql)"),
)

RUN_PARAMETERS = (
    Param("backup_root", str, None, "the old server's files at their original absolute paths"),
    Param(
        "target_root",
        str,
        "/",
        "the local connection's root: / on the server itself, a folder for the sandbox (chroot and ssh: leave it /)",
    ),
    Param.mapping(
        "target",
        "how the server being recovered is reached",
        TARGET_FIELDS,
        example="{connection: ssh, host: server.example.com, known_hosts: ~/.ssh/known_hosts}",
    ),
    Param(
        "backup_location",
        str,
        "controller",
        "where backup_root is: on this machine (controller) or on the server (target)",
        choices=("controller", "target"),
    ),
    Param("sandbox", bool, False, "the built-in sandbox world (its services are private instances)"),
    Param("apply", bool, False, "False: dry run, plan and show, change nothing"),
    Param(
        "steps",
        list,
        None,
        "None: every step in guide order; or a list of step names",
        choices=STEP_ORDER,
        choices_name="step names",
        example="[inventory, preflight]",
    ),
    Param(
        "state_dir",
        str,
        None,
        "journal and safety copies; None: /var/lib/ispcp-recovery on the target (under target_root when local)",
    ),
    Param("secrets_file", str, None, "YAML name: value file (mode 0600) for secrets found on neither system"),
    Param.mapping(
        "mysql",
        "how to reach and control MySQL on the target",
        MYSQL_FIELDS,
        example="{service: sysv, datadir: /var/lib/mysql}",
    ),
    Param(
        "run_id",
        str,
        None,
        "None: a timestamp; names safety copies and journal records",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
        example="20240101-120000 (letters, digits, dot, dash, underscore)",
    ),
    Param("resume", bool, True, "skip changing steps that the journal shows applied already"),
    disk_space.RESERVE,
    Param(
        "break_lock",
        bool,
        False,
        "take over the target's recovery lock held by a run on another admin machine (only when that run is dead)",
    ),
    Param(
        "force_steps",
        list,
        [],
        "steps to run again even though the journal shows them applied",
        choices=STEP_ORDER,
        choices_name="step names",
    ),
    Param(
        "apply_steps",
        dict,
        {},
        "per-step override of apply, e.g. {'user_data': False}",
        keys=STEP_ORDER,
        choices_name="step names",
        item=bool,
        example="{user_data: false}",
    ),
    Param("summary_path", str, None, "where the summary JSON goes (the CLI sets it)"),
    Param(
        "interactive",
        bool,
        None,
        "None: status panel and Apply buttons only in a live JupyterLab (not when ISPCP_HEADLESS is "
        "set); plain papermill runs pass -p interactive False",
    ),
)

# The secrets-file entry that answers ssh's password or key passphrase prompt.
SSH_PASSWORD = "ssh_password"
# Entries of the secrets file the tool itself reads (more may be there, for {secret:NAME} answers).
SECRETS = (
    Param(SSH_PASSWORD, str, None, "the SSH password, or the passphrase of target.identity_file", secret=True),
    Param("mysql_admin_user", str, None, "the MySQL admin login when no debian.cnf works (default root)", secret=True),
    Param("mysql_admin_password", str, None, "its password", secret=True),
)

# ssh options that would accept an unknown or changed host key: refused, host keys are always checked.
_UNCHECKED = re.compile(
    r"StrictHostKeyChecking\s*=?\s*(no|off|accept-new)|UserKnownHostsFile\s*=?\s*/dev/null", re.IGNORECASE
)


def all_parameters() -> list[Param]:
    """The run-wide parameters, then every step's, in guide order."""
    return [*RUN_PARAMETERS, *(p for _, p in step_parameters())]


def validate_run(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter typed and defaulted, and the target's settings consistent; else an InputError."""
    secret = {p.name for p in SECRETS} | {p.name for _, p in step_parameters() if p.secret}
    for name in raw:
        if name in secret:
            raise InputError(
                f"parameter {name}",
                "is a secret, and parameters are copied into the notebook and the report",
                f"put '{name}: ...' into the secrets_file (mode 0600) and remove the parameter",
            )
    values = validate([p for p in all_parameters() if not p.secret], raw)
    check_target(values)
    return values


def check_target(values: Mapping[str, Any]) -> None:
    """The settings of the chosen connection are complete and none of another connection is set."""
    t = values["target"]
    kind = t["connection"]
    for name in ("host", "identity_file", "known_hosts", "ssh_options", "argv_prefix"):
        if kind != "ssh" and t[name]:
            raise InputError(f"parameter target.{name}", f"only applies to connection: ssh, not {kind}", "remove it")
    if kind != "chroot" and t["root"]:
        fix = "use target_root for the local connection's root" if kind == "local" else "remove it"
        raise InputError("parameter target.root", f"only applies to connection: chroot, not {kind}", fix)
    if kind != "local" and values["target_root"] != "/":
        raise InputError(
            "parameter target_root",
            f"only applies to connection: local, not {kind}",
            "leave target_root at / (a chroot's root is target.root)",
        )
    if kind == "ssh":
        _check_ssh(t)
    if kind == "chroot" and not (t["root"] or "").startswith("/"):
        raise InputError("parameter target.root", "is missing or not absolute", "give the chroot's root, e.g. /mnt/new")
    for name in ("state_dir", "backup_root"):
        remote = (
            name == "state_dir" and kind != "local" or name == "backup_root" and values["backup_location"] == "target"
        )
        if remote and values[name] and not values[name].startswith("/"):
            raise InputError(f"parameter {name}", "is a path on the target and not absolute", "give an absolute path")


def _check_ssh(t: Mapping[str, Any]) -> None:
    if not t["host"]:
        raise InputError(
            "parameter target.host", "is missing (connection: ssh)", "give the server's host name or address"
        )
    for name in ("known_hosts", "identity_file"):
        path = os.path.expanduser(t[name]) if t[name] else None
        if path and not os.path.isfile(path):
            raise InputError(
                f"parameter target.{name}",
                "is not a file on this machine",
                "give the path of the file on the admin machine",
                path=path,
            )
    unchecked = _UNCHECKED.search(" ".join(t["ssh_options"]))
    if unchecked:
        raise InputError(
            "parameter target.ssh_options",
            f"holds {unchecked.group(0)!r}, which would accept an unknown or changed host key",
            "remove it and add the server's key to known_hosts after checking its fingerprint",
        )
