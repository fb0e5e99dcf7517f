"""What the runbook's setup and summary cells call: open a run, show where it stands."""

from __future__ import annotations

import atexit
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ispcp_lib.core.action import read_journal
from ispcp_lib.core.connection import (
    ChrootConnection,
    Connection,
    LocalConnection,
    RootedView,
    SshConnection,
    SshTarget,
)
from ispcp_lib.core.context import DEFAULT_STATE_DIR, Context, new_run_id
from ispcp_lib.core.errors import CommandFailed, InputError, IspcpError
from ispcp_lib.core.run_lock import RunLock
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import REGISTRY
from ispcp_lib.facts.ispcp_conf import CONF_PATH
from ispcp_lib.mysql import service as mysql_service
from ispcp_lib.runbook.parameters import SSH_PASSWORD, validate_run
from ispcp_lib.runbook.record import summary_from_records

T = TypeVar("T")


def open_run(*, options: Mapping[str, Any] | None = None, **params: Any) -> Context:
    """Validate the parameters, reach the target and build the Context; nothing on the target changes.

    params are the run-wide parameters, options the steps' (both may hold either; a name given in
    both is refused). Every value is typed and defaulted from the spec (`runbook.parameters` and each
    step's PARAMETERS) and lands in `ctx.params`. The connection is checked at once: a target that
    cannot be reached fails here, with the fix, before any step runs.
    """
    both = set(params) & set(options or {})
    if both:
        raise InputError(
            f"parameter {sorted(both)[0]}", "is given twice (as a parameter and in options)", "give it once"
        )
    values = validate_run({**params, **(options or {})})
    secrets = read_secrets_file(Path(values["secrets_file"])) if values["secrets_file"] else {}
    for key, value in secrets.items():
        REGISTRY.add(value, label=key)
    connection = open_target(values, secrets.get(SSH_PASSWORD))
    target = Path(values["target_root"])
    mysql = values["mysql"]
    runner = Runner(apply=values["apply"])
    ctx = Context(
        target_root=target,
        backup_root=Path(values["backup_root"]) if values["backup_root"] else None,
        state_dir=Path(state_dir(values)),
        run_id=values["run_id"] or new_run_id(),
        target=connection,
        backup=backup_view(values, connection),
        sandbox=values["sandbox"],
        default_apply=values["apply"],
        params=values,
        secrets=REGISTRY,
        runner=runner,
        resume=values["resume"],
        steps=values["steps"] or None,
        force_steps=set(values["force_steps"]),
        apply_steps=dict(values["apply_steps"]),
    )
    if secrets:
        ctx.params["secrets"] = secrets
    ctx.mysql = mysql_service.from_params(mysql or {}, ctx.target, runner)
    # One applying run per target: taken by the first step that changes something, released by summary().
    ctx.lock = RunLock(ctx.state, str(ctx.state_dir), ctx.run_id)
    mode = "APPLY" if ctx.default_apply else "dry run (nothing changes)"
    backup = ctx.backup.describe() if ctx.backup else None
    ctx.log(f"run {ctx.run_id}: {mode}; backup {backup}, target {connection.describe()}")
    return ctx


def state_dir(values: Mapping[str, Any]) -> str:
    """Where the journal and safety copies go: on the target; under target_root for the local connection."""
    if values["state_dir"]:
        return values["state_dir"]
    if values["target"]["connection"] == "local":
        return str(Path(values["target_root"]) / DEFAULT_STATE_DIR.lstrip("/"))
    return DEFAULT_STATE_DIR


def open_target(values: Mapping[str, Any], password: str | None = None) -> Connection:
    """The connection the `target` parameter asks for, proven by one `true` through it."""
    t = values["target"]
    if t["connection"] == "local":
        root = Path(values["target_root"])
        if not root.is_dir():
            raise InputError(
                "target_root", "is not a directory", "point target_root at the new system's root", path=str(root)
            )
        connection: Connection = LocalConnection(root)
    elif t["connection"] == "chroot":
        connection = ChrootConnection(t["root"])
    else:
        connection = SshConnection(ssh_target(t), askpass_secret=password)
        atexit.register(connection.close)  # the master connection ends with the kernel
    check_connection(connection)
    return connection


def ssh_target(t: Mapping[str, Any]) -> SshTarget:
    def home(path: str | None) -> str | None:
        return os.path.expanduser(path) if path else None

    return SshTarget(
        host=t["host"],
        port=t["port"],
        user=t["user"],
        identity_file=home(t["identity_file"]),
        known_hosts=home(t["known_hosts"]),
        ssh_options=list(t["ssh_options"]),
        argv_prefix=list(t["argv_prefix"]),
    )


def check_connection(connection: Connection) -> None:
    """One `true` on the target; a failure becomes an InputError that says what to do."""
    done = connection.run(["true"], timeout=60)
    if done.rc == 0:
        return
    connection.close()
    if isinstance(connection, SshConnection):
        raise ssh_failure(connection.target, done.err)
    raise InputError(
        f"target ({connection.describe()})",
        f"does not run commands: {done.err.strip() or f'exit {done.rc}'}",
        "run as root, and point target.root at a system tree with /bin/sh and coreutils",
    )


def ssh_failure(t: SshTarget, stderr: str) -> InputError:
    """What an ssh client's failure means, and the fix, from its own messages."""
    where = f"ssh {t.user}@{t.host} port {t.port}"
    known = t.known_hosts or "~/.ssh/known_hosts"
    text = stderr.lower()
    check_key = (
        f"compare the key's fingerprint with the server's own (on its console: ssh-keygen -lf "
        f"/etc/ssh/ssh_host_rsa_key.pub); ssh-keyscan -p {t.port} {t.host} > /tmp/{t.host}.key; "
        f"ssh-keygen -lf /tmp/{t.host}.key; when they match, append /tmp/{t.host}.key to {known}"
    )
    causes = (
        (
            "remote host identification has changed",
            f"the server's host key differs from the one in {known}",
            f"if the server was reinstalled, remove the old key (ssh-keygen -R {t.host} -f {known}), then " + check_key,
        ),
        ("host key verification failed", f"the server's host key is not in {known}", check_key),
        ("could not resolve hostname", "the host name does not resolve", "check target.host (or use its address)"),
        ("connection refused", "nothing listens on that port", "start sshd on the server, or correct target.port"),
        ("timed out", "the server does not answer", "check the address, the port and the firewalls between"),
        ("no route to host", "the server cannot be reached", "check the address and the network"),
        ("network is unreachable", "the server cannot be reached", "check the address and the network"),
        (
            "unable to negotiate",
            "the server offers only algorithms this ssh client no longer enables",
            "add the legacy options to target.ssh_options, e.g. for a Squeeze server: "
            "-oHostKeyAlgorithms=+ssh-rsa -oPubkeyAcceptedAlgorithms=+ssh-rsa "
            "-oKexAlgorithms=+diffie-hellman-group14-sha1 -oCiphers=+aes128-cbc (README)",
        ),
        (
            "permission denied",
            "the login was refused",
            "check target.user and target.identity_file (or your ssh agent); a password or key "
            f"passphrase goes into the secrets_file as {SSH_PASSWORD}",
        ),
    )
    for needle, problem, fix in causes:
        if needle in text:
            return InputError(where, problem, fix)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    return InputError(where, f"the connection failed ({last})", f"try ssh -p {t.port} {t.user}@{t.host} true by hand")


def backup_view(values: Mapping[str, Any], connection: Connection) -> RootedView | None:
    """The backup at its original paths, on the machine backup_location names."""
    root = values["backup_root"]
    if not root:
        return None
    if values["backup_location"] == "target":
        return RootedView(connection, root)
    return RootedView(LocalConnection("/"), str(Path(root).resolve()))


def load_secrets_file(ctx: Context, path: Path) -> None:
    """Register every value of the secrets file with the run, for masking and for the steps."""
    secrets = read_secrets_file(path)
    for key, value in secrets.items():
        ctx.secrets.add(value, label=key)
    ctx.params.setdefault("secrets", {}).update(secrets)


def read_secrets_file(path: Path) -> dict[str, str]:
    """A YAML mapping of secrets that cannot be found on either system (name: value, mode 0600)."""
    if not path.is_file():
        raise InputError(
            "secrets_file", "does not exist", "create it (mode 0600) or unset the parameter", path=str(path)
        )
    if path.stat().st_mode & 0o077:
        raise InputError("secrets_file", "is readable by group or others", f"chmod 600 {path}", path=str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        # PyYAML quotes the offending line, which holds a secret: report only where it is.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(
            "secrets_file",
            f"is not valid YAML{where}",
            "write one name: value per line, quoting values with special characters",
            path=str(path),
        ) from None
    bad = [str(k) for k, v in data.items() if not isinstance(v, (str, int, float))] if isinstance(data, dict) else None
    if bad is None or bad:
        raise InputError(
            "secrets_file",
            "is not a flat YAML mapping of name: value" + (f" ({', '.join(bad)} is not a plain value)" if bad else ""),
            "write one name: value per line",
            path=str(path),
        )
    return {str(k): str(v) for k, v in data.items()}


def summary(ctx: Context, summary_path: str | None = None) -> Any:
    """The summary table of this run; with summary_path, also the summary JSON (mode 0600)."""
    import pandas as pd

    data = summary_dict(ctx)
    if ctx.lock is not None:
        ctx.lock.release()
    if summary_path:
        write_private(Path(summary_path), json.dumps(data, indent=2))
    frame = pd.DataFrame(
        [
            {
                "step": s["name"],
                "status": s["status"],
                "changes": s["changed"],
                "duration (s)": s["duration_s"],
                "warnings": len(s["warnings"]),
            }
            for s in data["steps"]
        ]
    )
    return frame


def summary_dict(ctx: Context) -> dict[str, Any]:
    """The summary JSON (docs/architecture.md, "Contracts") of this run, from its journal on the target,
    with the run's facts (versions, hostnames) read through the run's connections, as a headless run's.

    Steps this kernel ran without a journal record (left out by the steps parameter) come from
    ctx.results, so the table never claims a step was not reached when it was only not selected.
    """
    data = summary_from_records(read_journal(ctx), ctx.run_id, ctx.default_apply, ctx.steps)
    data["facts"] = read_run_facts(ctx.target, ctx.backup)
    for row in data["steps"]:
        r = ctx.results.get(row["name"])
        if row.get("at") is None and r is not None:
            row.update(status=r.status, changed=r.changed, duration_s=round(r.duration_s, 3), warnings=list(r.warnings))
            row["reason"] = r.noop_reason or (r.errors[0] if r.errors else "")
    return ctx.secrets.redact_obj(data)


def journal_text(values: Mapping[str, Any]) -> str | None:
    """The journal of the run these validated run-wide values describe, read through its connection."""
    where = f"{state_dir(values)}/journal.jsonl"
    if values["target"]["connection"] == "local":
        path = Path(where)
        return path.read_text() if path.is_file() else None
    secrets = read_secrets_file(Path(values["secrets_file"])) if values["secrets_file"] else {}
    connection = open_target(values, secrets.get(SSH_PASSWORD))
    try:
        return connection.read_text(where)
    finally:
        connection.close()


def on_target(values: Mapping[str, Any], read: Callable[[Connection, RootedView | None], T]) -> T:
    """read(connection, backup view) through a connection of its own to the run's target, closed after."""
    secrets = read_secrets_file(Path(values["secrets_file"])) if values["secrets_file"] else {}
    connection = open_target(values, secrets.get(SSH_PASSWORD))
    try:
        return read(connection, backup_view(values, connection))
    finally:
        connection.close()


def read_run_facts(new: Connection | None, old: Connection | None) -> dict[str, str]:
    """Version and hostname of each side, each read through its connection (a target path of "/etc/…")."""
    facts = {}
    for side, conn in (("old", old), ("new", new)):
        facts[f"{side}_version"] = _conf_value(conn, "Version") if conn else None
        facts[f"{side}_hostname"] = _hostname(conn) if conn else None
    return {k: v or "unknown" for k, v in facts.items()}


def _read(conn: Connection, path: str) -> str:
    """A file's text, tolerantly: the report must not fail on a missing or unreadable file."""
    try:
        return conn.read_text(path) or ""
    except (OSError, IspcpError, CommandFailed):
        return ""


def _conf_value(conn: Connection, key: str) -> str | None:
    """A value of /etc/ispcp/ispcp.conf."""
    m = re.search(rf"^\s*{re.escape(key)}\s*=[ \t]*(.*?)\s*$", _read(conn, CONF_PATH), re.M)
    return m.group(1) if m and m.group(1) else None


def _hostname(conn: Connection) -> str | None:
    name = _read(conn, "/etc/hostname").strip()
    if name:
        return name
    from_conf = _conf_value(conn, "SERVER_HOSTNAME")
    return f"{from_conf} (SERVER_HOSTNAME in ispcp.conf)" if from_conf else None


def write_private(path: Path, text: str) -> None:
    """Reports and summaries are mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
