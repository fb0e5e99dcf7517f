"""The sandbox's Python stand-ins, reached from a lab server that has no Python: the server's Perl shims
hand the terminal to the relay on this machine (ispcp_lib/sandbox/standin_relay.py), over ssh and chroot.

The server is started over the frozen world (conftest `frozen_world`), with its own sshd and MariaDB.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from ispcp_lib.core.connection import ChrootConnection, Connection, LocalConnection, SshConnection, SshTarget
from ispcp_lib.core.secrets import SecretRegistry
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp.update_driver import Outcome, Prompt, run_interactive
from ispcp_lib.lab.host import NamespaceHost, processes_of
from ispcp_lib.sandbox import server_world, standin_relay
from ispcp_lib.sandbox.world import World
from tests.remote.conftest import FrozenWorld

SETUP = "/var/www/ispcp/engine/setup"
UPDATE = f"{SETUP}/ispcp-update"
MANAGER = "/var/www/ispcp/engine/ispcp-rqst-mngr"
PYTHON_LOG = "var/log/python-attempts.log"
SUCCESS = r"Congratulations, you updated ispCP"
VHOST_QUESTION = r"Please enter the domain name where ispCP OMEGA will be reachable on"


@dataclass
class Relayed:
    world: World
    host: NamespaceHost
    relay: standin_relay.Relay

    @property
    def root(self) -> Path:
        return self.host.root

    def ssh(self) -> SshConnection:
        params = {k: v for k, v in self.world.runbook_params("ssh")["target"].items() if k != "connection"}
        return SshConnection(SshTarget(**params))

    def python_attempts(self) -> str:
        log = self.root / PYTHON_LOG
        return log.read_text() if log.exists() else ""

    def standins_here(self) -> list[int]:
        """Stand-in processes on this machine for this server's tree (by their argv, never by name)."""
        found = []
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"run_program" in b" ".join(argv) and os.fsencode(self.root) in argv:
                found.append(int(pid))
        return found

    def shims_inside(self) -> list[int]:
        """Processes in the server's pid namespace running a shim."""
        pids = processes_of(self.root, self.host.state["pidns"])
        return [p for p in pids if b"ispcp-update" in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def relayed(frozen_world: FrozenWorld, sandbox_root: Path) -> Iterator[Relayed]:
    dest = Path(tempfile.mkdtemp(prefix="relay-", dir=sandbox_root))
    dest.rmdir()
    world, host, _ssh = server_world.thaw(
        frozen_world.world,
        frozen_world.layer,
        frozen_world.image_layers,
        dest,
        name="relay",
        address="127.0.0.12",
        profile="modern",
        connection="ssh",
    )
    try:
        # The update reads the old server's config; a copy of the new one, BASE_SERVER_VHOST still empty.
        conf = host.root / "etc/ispcp"
        shutil.copy2(conf / "ispcp.conf", conf / "ispcp.old.conf")
        world.start()
        try:
            with standin_relay.serving(host.root) as relay:
                yield Relayed(world, host, relay)
        finally:
            world.stop()
    finally:
        host.stop()
        shutil.rmtree(dest, ignore_errors=True)


def _prompts(vhost: str) -> list[Prompt]:
    return [
        Prompt("continue", r"Do you want to continue \?? ?\[Y/n(/\?)?\]:", "y", max_answers=3),
        Prompt("panel domain", VHOST_QUESTION, vhost),
        Prompt("enter", r"type 'Enter' to continue", ""),
    ]


def _update(conn: Connection, vhost: str, cwd: str = SETUP) -> Outcome:
    return run_interactive(
        conn,
        [UPDATE],
        cwd=cwd,
        prompts=_prompts(vhost),
        secrets=SecretRegistry(),
        env={"TERM": "xterm", "ISPCP_SANDBOX_SLEEP_SCALE": "0.01"},
        timeout=180,
        silence=20,
        success=SUCCESS,
    )


def _conf(r: Relayed) -> IspcpConf:
    return IspcpConf.load(r.root / "etc/ispcp/ispcp.conf")


def _check_update(r: Relayed, outcome: Outcome, vhost: str) -> None:
    assert outcome.ok, f"{outcome.status_text()}\n{outcome.transcript[-3000:]}"
    assert outcome.answered == ["continue", "continue", "continue", "panel domain", "enter"]
    # The stand-in's own words came through the terminal, and what was typed reached it.
    assert "Welcome to ispCP '1.0.5 OMEGA' Update Dialog." in outcome.transcript
    assert f"Type http://{vhost} into your browser" in outcome.transcript
    assert _conf(r).get("BASE_SERVER_VHOST") == vhost
    assert r.relay.running() == [] and r.standins_here() == []
    assert r.python_attempts() == ""


def test_update_over_ssh_on_a_terminal(relayed: Relayed) -> None:
    conn = relayed.ssh()
    try:
        argv, _env, _cwd = conn.command([UPDATE], cwd=SETUP, tty=True)
        assert argv[:3] == ["ssh", "-tt", "-p"]
        _check_update(relayed, _update(conn, "admin.over-ssh.test"), "admin.over-ssh.test")
    finally:
        conn.close()


def test_update_through_chroot(relayed: Relayed) -> None:
    _check_update(relayed, _update(ChrootConnection(relayed.root), "admin.in-chroot.test"), "admin.in-chroot.test")


def test_update_on_the_local_connection(relayed: Relayed) -> None:
    """The shim run on this machine finds the relay from its own path (the server's root here)."""
    conn = LocalConnection(relayed.root)
    outcome = run_interactive(
        conn,
        [conn.path(UPDATE)],
        cwd=conn.path(SETUP),
        prompts=_prompts("admin.local.test"),
        secrets=SecretRegistry(),
        env={"TERM": "xterm"},
        timeout=180,
        silence=20,
        success=SUCCESS,
    )
    _check_update(relayed, outcome, "admin.local.test")


def test_exit_status_and_streams_cross(relayed: Relayed) -> None:
    conn = relayed.ssh()
    try:
        # Pipes: the stand-in's stdout and stderr stay apart, its status is the command's.
        wrong_dir = conn.run([UPDATE], cwd="/root", env={"TERM": "xterm"})
        assert wrong_dir.rc == 2
        assert "ispcp-update must be started from its own directory" in wrong_dir.err
        assert wrong_dir.out == ""
        no_input = conn.run([UPDATE], cwd=SETUP, env={"TERM": "xterm"})  # stdin at its end: Perl's chomp(undef)
        assert no_input.rc == 1
        assert "Do you want to continue ? [Y/n]:" in no_input.out and "[FATAL]" in no_input.out
        assert no_input.err == ""
        manager = conn.run([MANAGER], cwd="/var/www/ispcp/engine", env={"TERM": "xterm"})
        assert (manager.rc, manager.out, manager.err) == (0, "", "")
        # A terminal: the same refusal, and its status.
        outcome = _update(conn, "unused.test", cwd="/root")
        assert outcome.exit_status == 2 and not outcome.ok
        assert "must be started from its own directory" in outcome.transcript
    finally:
        conn.close()
    assert relayed.python_attempts() == ""


def _wait(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _spawn_at_first_question(conn: Connection) -> pexpect.spawn:
    argv, env, cwd = conn.command([UPDATE], cwd=SETUP, env={"TERM": "xterm"}, tty=True)
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=cwd, timeout=60)
    child.expect(rb"Do you want to continue \? \[Y/n\]: ")
    return child


@pytest.mark.parametrize("how", ["ssh client killed", "shim signalled"])
def test_a_dead_session_ends_the_standin(relayed: Relayed, how: str) -> None:
    conn = relayed.ssh()
    try:
        child = _spawn_at_first_question(conn)
        running = relayed.relay.running()
        assert len(running) == 1 and relayed.standins_here() == running
        assert len(relayed.shims_inside()) == 1
        if how == "ssh client killed":
            child.kill(signal.SIGKILL)  # sshd closes the session's terminal: a hangup
        else:
            (shim,) = relayed.shims_inside()
            os.kill(shim, signal.SIGTERM)
        assert _wait(lambda: not relayed.relay.running() and not relayed.standins_here()), relayed.standins_here()
        assert _wait(lambda: not relayed.shims_inside())
        child.close(force=True)
    finally:
        conn.close()
    assert relayed.python_attempts() == ""


def test_no_echo_of_a_password_read(relayed: Relayed, tmp_path: Path) -> None:
    """A secret question (the vftp password, asked when the working copy's login fails) does not echo.
    The answer is vftp's own password, so the server's state stays as it was."""
    password = relayed.world.credentials["new"]["vftp"]
    working = relayed.root / "etc/ispcp/proftpd/working/proftpd.conf"
    saved = working.read_text()
    conf_vftp = next(line for line in saved.splitlines() if line.startswith("SQLConnectInfo"))
    working.write_text(saved.replace(conf_vftp, conf_vftp.rsplit(" ", 1)[0] + " wrong-password"))
    conn = ChrootConnection(relayed.root)
    try:
        child = _spawn_at_first_question(conn)
        child.sendline("y")
        child.expect(rb"\[Y/n/\?\]: ")
        child.sendline("y")
        child.expect(rb"Do you want to continue \[Y/n\]: ")
        child.sendline("y")
        child.expect(rb"reachable on \[[^\]]*\]: ")  # Query.pm wraps the question
        child.sendline("admin.no-echo.test")
        child.expect(rb"type 'Enter' to continue")
        child.sendline("")
        child.expect(rb"ispCP FTP SQL user \[vftp\]: ")
        child.sendline("vftp")
        child.expect(rb"user password \[auto generate\]: ")
        child.sendline(password)
        child.expect(rb"repeat ispCP OMEGA ftp SQL user password: ")
        typed = child.before
        child.sendline(password)
        child.expect(pexpect.EOF, timeout=120)
        child.close()
    finally:
        working.write_text(saved)
    assert password.encode() not in typed + child.before
    assert child.exitstatus == 0, child.before[-2000:]
    assert SUCCESS.encode() in child.before
    assert relayed.python_attempts() == ""


def test_stop_is_idempotent_and_ends_what_runs(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "etc/ispcp").mkdir(parents=True)
    (root / "etc/ispcp/ispcp.conf").write_text("Version = 1.0.5 OMEGA\nDEBUG = 0\n")
    shim = standin_relay.install_shim(root, "ispcp-update")
    relay = standin_relay.Relay(root).start()
    child = pexpect.spawn(str(shim), cwd=str(shim.parent), env={"TERM": "xterm", "PATH": os.environ["PATH"]})
    child.expect(rb"\[Y/n\]: ", timeout=30)
    (pid,) = relay.running()
    relay.stop()
    relay.stop()
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped
    assert not (root / "run/ispcp-standin.sock").exists()
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.signalstatus == signal.SIGTERM
    assert [t.name for t in threading.enumerate() if t.name.endswith(f" {root}")] == []
    done = subprocess.run([str(shim)], cwd=shim.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Nothing answers" in done.stderr
