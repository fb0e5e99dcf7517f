"""A private Postfix for the sandbox (test scaffolding): the new server's freshly installed, unconfigured MTA.

Layout: the config dir is the target's /etc/postfix (main.cf, master.cf), so the mail guard edits
the file it would edit on a real server; the queue and data dirs and the mail log live in the
world's workdir (outside the target tree, so a running instance does not disturb fingerprints).
smtpd listens on a free loopback port. `postfix -c DIR start` only accepts a DIR that the host's
default main.cf lists in alternate_config_directories: start registers it (under a lock, pruning
entries whose directory is gone), stop removes it again.

Like a fresh Postfix of 2010 (reject_unauth_destination, before Postfix 2.10's relay restrictions),
it answers mail for the hosted domains with a hard `554 5.7.1 Relay access denied`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.facts import postfix as pf
from ispcp_lib.sandbox.accounts import host_ids
from ispcp_lib.sandbox.private_mysql import free_port

HOST_CONFIG_DIR = Path("/etc/postfix")
HOST = LocalConnection("/")  # the sandbox's Postfix runs on this machine, from the host's installation
LOCK_FILE = Path("/run/lock/ispcp-sandbox-postfix.lock")
STATE_FILE = "postfix.json"  # in the world's workdir: lets stop_for_world work from another process
START_TIMEOUT = 30.0
_SMTPD_LINE = re.compile(r"^\S+\s+inet\s+.*\ssmtpd(\s|$)")

MAIN_CF = """\
# Private Postfix of the ispcp-recovery sandbox (test scaffolding, not a real server's file).
# A fresh install that does not know the hosted domains yet: mail for them is relay, and relay
# from outside mynetworks is rejected with a hard 554 5.7.1, as in 2010.
compatibility_level = 3.6
myhostname = {hostname}
mydestination = $myhostname, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# TEST-NET-2: the loopback probe is NOT a trusted client, like a sender on the internet
mynetworks = 198.51.100.1/32
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
biff = no
queue_directory = {queue}
data_directory = {data}
maillog_file_prefixes = {spool}
maillog_file = {spool}/maillog
"""


class PrivatePostfix:
    """One private instance: config_dir (main.cf, master.cf) and spool (queue, data, maillog)."""

    def __init__(
        self, config_dir: Path, spool: Path, port: int, hostname: str = "new.sandbox.test", runner: Runner | None = None
    ) -> None:
        self.config_dir = Path(config_dir)
        self.spool = Path(spool)
        self.port = int(port)
        self.hostname = hostname
        self.runner = runner or Runner()

    @property
    def queue_directory(self) -> Path:
        return self.spool / "queue"

    @property
    def data_directory(self) -> Path:
        return self.spool / "data"

    @property
    def maillog(self) -> Path:
        return self.spool / "maillog"

    def write_config(self) -> None:
        """main.cf and master.cf (the host's, with smtpd moved to our loopback port)."""
        postfix_uid, postfix_gid = host_ids("postfix")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_directory.mkdir(parents=True, exist_ok=True)
        self.data_directory.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_directory, postfix_uid, postfix_gid)  # postfix writes master.lock there
        (self.config_dir / "main.cf").write_text(
            MAIN_CF.format(
                hostname=self.hostname, queue=self.queue_directory, data=self.data_directory, spool=self.spool
            )
        )
        lines = []
        for line in (HOST_CONFIG_DIR / "master.cf").read_text().splitlines():
            lines.append("#" + line if _SMTPD_LINE.match(line) else line)
        lines.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        (self.config_dir / "master.cf").write_text("\n".join(lines) + "\n")

    def configured_here(self) -> bool:
        """main.cf exists and points at this instance's queue (a cloned world's does not)."""
        main = self.config_dir / "main.cf"
        return main.is_file() and f"queue_directory = {self.queue_directory}\n" in main.read_text()

    def master_pid(self) -> int | None:
        return pf.master_pid(HOST, str(self.queue_directory))

    def start(self) -> None:
        if not pf.installed(HOST, str(HOST_CONFIG_DIR)) or pf.binary(HOST, "postfix") is None:
            raise PreconditionFailed(
                "sandbox Postfix", "Postfix is not installed on this machine", "apt-get install postfix"
            )
        register_alternate_dir(self.config_dir, self.runner)
        if self.master_pid() is None:
            self.runner.run([pf.binary(HOST, "postfix") or "postfix", "-c", str(self.config_dir), "start"], timeout=60)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if pf.port_answers(HOST, self.port):
                return
            time.sleep(0.1)
        raise PreconditionFailed(
            "sandbox Postfix",
            f"smtpd does not answer on 127.0.0.1:{self.port}",
            f"read {self.maillog}",
            path=str(self.config_dir),
        )

    def stop(self) -> None:
        """Stop the master (if it runs) and unregister the config dir from the host's main.cf."""
        try:
            if self.master_pid() is not None:
                self.runner.run(
                    [pf.binary(HOST, "postfix") or "postfix", "-c", str(self.config_dir), "stop"],
                    check=False,
                    timeout=60,
                )
            pid = self._wait_master_gone(10)
            if pid is not None:
                # `postfix stop` refuses while main.cf is broken (a test may break it on purpose); SIGTERM
                # is the master's own clean shutdown, and master_pid() checked the pid is this master.
                os.kill(pid, signal.SIGTERM)
                pid = self._wait_master_gone(10)
            if pid is not None:
                raise PreconditionFailed(
                    "sandbox Postfix",
                    f"master pid {pid} did not stop",
                    f"postfix -c {self.config_dir} stop",
                    path=str(self.config_dir),
                )
        finally:
            unregister_alternate_dir(self.config_dir, self.runner)

    def _wait_master_gone(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        pid = self.master_pid()
        while pid is not None and time.monotonic() < deadline:
            time.sleep(0.1)
            pid = self.master_pid()
        return pid


# --- the host's alternate_config_directories ---------------------------------------------------------


@contextmanager
def _host_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def alternate_dirs() -> list[str]:
    value = pf.explicit_setting(HOST, str(HOST_CONFIG_DIR), "alternate_config_directories") or ""
    return [d for d in re.split(r"[\s,]+", value) if d]


def _set_alternate_dirs(dirs: list[str], runner: Runner) -> None:
    exe = pf.binary(HOST, "postconf") or "postconf"
    if dirs:
        runner.run([exe, "-c", str(HOST_CONFIG_DIR), "-e", "alternate_config_directories = " + " ".join(dirs)])
    else:  # leave the host's main.cf as it was before any sandbox: no line at all
        runner.run([exe, "-c", str(HOST_CONFIG_DIR), "-X", "alternate_config_directories"])


def register_alternate_dir(config_dir: Path, runner: Runner) -> None:
    """Add config_dir to the host's alternate_config_directories (idempotent; prunes vanished dirs)."""
    with _host_lock():
        current = alternate_dirs()
        wanted = [d for d in current if Path(d).is_dir()]
        if str(config_dir) not in wanted:
            wanted.append(str(config_dir))
        if wanted != current:
            _set_alternate_dirs(wanted, runner)


def unregister_alternate_dir(config_dir: Path, runner: Runner) -> None:
    with _host_lock():
        current = alternate_dirs()
        wanted = [d for d in current if d != str(config_dir) and Path(d).is_dir()]
        if wanted != current:
            _set_alternate_dirs(wanted, runner)


# --- the world's instance ----------------------------------------------------------------------------


def for_world(world: Any) -> PrivatePostfix:
    """The world's instance, with the port recorded in the workdir (a new free port the first time)."""
    state = _read_state(world)
    port = state.get("port") if state.get("workdir") == str(world.workdir) else None
    return PrivatePostfix(
        Path(world.target_root) / "etc/postfix",
        Path(world.workdir) / "postfix",
        int(port or free_port()),
        world.manifest.get("new", {}).get("hostname", "new.sandbox.test"),
    )


def start_for_world(world: Any) -> dict[str, Any]:
    """Start the world's Postfix; returns the runbook parameters that point the mail guard at it."""
    inst = for_world(world)
    if not inst.configured_here():
        inst.write_config()
    _write_state(
        world,
        {
            "workdir": str(world.workdir),
            "config_dir": str(inst.config_dir),
            "port": inst.port,
            "queue_directory": str(inst.queue_directory),
        },
    )
    inst.start()
    _write_state(world, {**_read_state(world), "master_pid": inst.master_pid()})
    return {"postfix_config_dir": str(inst.config_dir), "postfix_smtp_port": inst.port}


def stop_for_world(world: Any) -> None:
    """Stop the world's Postfix (whichever process started it) and unregister its config dir."""
    state = _read_state(world)
    if state.get("workdir") != str(world.workdir):
        return  # never started for this world (a clone carries its template's file)
    PrivatePostfix(Path(state["config_dir"]), Path(state["queue_directory"]).parent, int(state["port"])).stop()


def probe(port: int, address: str, timeout: float = 10.0) -> pf.ProbeAnswer:
    """The RCPT TO answer of the smtpd on 127.0.0.1:port for address (no mail is sent)."""
    return pf.smtp_rcpt_answer(HOST, address, port, timeout=timeout)


def _read_state(world: Any) -> dict[str, Any]:
    path = Path(world.workdir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(world: Any, data: dict[str, Any]) -> None:
    (Path(world.workdir) / STATE_FILE).write_text(json.dumps(data, indent=1) + "\n")
