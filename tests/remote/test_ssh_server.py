"""The SSH test server: strict host keys, the Squeeze profile, no Python, and a clean stop()."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ispcp_lib.lab.host import SshTarget, _mountpoints_under, processes_of, start_ssh_target


def _ssh(target: SshTarget, command: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(target.ssh_argv(command), capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


@pytest.fixture(params=["modern", "squeeze"])
def target(request: pytest.FixtureRequest) -> SshTarget:
    return request.getfixturevalue("ssh_target" if request.param == "modern" else "ssh_target_squeeze")


def test_key_login_with_strict_host_key_checking(target: SshTarget) -> None:
    r = _ssh(target, "id -u; hostname -f")
    assert r.returncode == 0, r.stderr
    uid, fqdn = r.stdout.split()
    assert uid == "0"
    assert fqdn == ("srv01.ispcp.test" if target.ssh.profile == "modern" else "srv02.ispcp.test")
    assert target.argv_prefix == []  # plain ssh from the host reaches it


def test_wrong_host_key_is_refused(target: SshTarget, tmp_path: Path) -> None:
    keytype = "ed25519" if target.ssh.profile == "modern" else "rsa"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", keytype, "-N", "", "-f", str(other)], check=True)
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{target.host}]:{target.port} {kind} {blob}\n")
    argv = target.ssh_argv("true")
    argv[argv.index(f"UserKnownHostsFile={target.known_hosts}")] = f"UserKnownHostsFile={wrong}"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    argv[argv.index(f"UserKnownHostsFile={wrong}")] = f"UserKnownHostsFile={empty}"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 255, "an unknown host key must never be accepted"


def test_squeeze_server_refuses_a_modern_only_client(ssh_target_squeeze: SshTarget) -> None:
    t = ssh_target_squeeze
    argv = [a for a in t.ssh_argv("true") if a not in t.ssh_options]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 255
    assert "no matching" in r.stderr  # key exchange / host key algorithm negotiation fails
    offered = _ssh(t, "true")
    assert offered.returncode == 0, offered.stderr
    log = (t.root / "var/log/sshd-lab-squeeze.log").read_text()
    assert "no matching" in log or "Unable to negotiate" in log


def test_multiplexed_connection_and_rsync(ssh_target: SshTarget, tmp_path: Path) -> None:
    """What the connection code does: a ControlMaster socket shared by later commands, rsync over it."""
    short = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))  # a unix socket path has at most 107 bytes
    control = short / "%C"
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=30"]
    base = ssh_target.ssh_argv("true")
    argv = [*base[:-2], *mux, *base[-2:]]
    assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "page.html").write_text("<p>hello</p>\n")
    rsh = " ".join(["ssh", *base[1:-2], *mux])
    r = subprocess.run(
        ["rsync", "-a", "-e", rsh, f"{src}/", f"{ssh_target.user}@{ssh_target.host}:/srv/rsynced/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (ssh_target.root / "srv/rsynced/page.html").read_text() == "<p>hello</p>\n"
    subprocess.run([*base[:-2], *mux, "-O", "exit", base[-1]], capture_output=True, timeout=30)
    shutil.rmtree(short, ignore_errors=True)


def test_no_python_on_the_server_and_attempts_are_recorded(target: SshTarget) -> None:
    r = _ssh(
        target,
        "ls /usr/bin/python* /bin/python* 2>/dev/null; "
        "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' 'python*' 2>/dev/null | grep -c ' installed$'",
    )
    assert r.stdout.split() == ["0"], r.stdout
    before = _ssh(target, "cat /var/log/python-attempts.log").stdout
    r = _ssh(target, "python3 -c 'print(1)'")
    assert r.returncode == 127
    r = _ssh(target, "command -v python; command -v python3; command -v python2")
    assert r.stdout.split() == ["/usr/local/bin/python", "/usr/local/bin/python3", "/usr/local/bin/python2"]
    after = _ssh(target, "cat /var/log/python-attempts.log").stdout
    new = after[len(before) :]
    assert "/usr/local/bin/python3 -c print(1)" in new


def test_stop_leaves_no_process_and_no_mount(tmp_path: Path) -> None:
    target = start_ssh_target("modern", name="stoptest", address="127.0.0.9")
    server = target.server
    state_dir, root = server.state_dir, server.root
    pidns, netns = server.state["pidns"], server.state["netns"]
    # A daemon that detaches, one started from the host with a plain chroot, and a live SSH session.
    server.sh("setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
    host_chroot = subprocess.Popen(["chroot", str(root), "sleep", "1000"], start_new_session=True)
    session = subprocess.Popen(target.ssh_argv("sleep 1000"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _ssh(target, "true").returncode == 0
    forwarders = list(server.state["forwarders"])
    assert len(processes_of(root, pidns, netns)) >= 4
    target.stop()
    host_chroot.wait(timeout=10)
    session.wait(timeout=10)
    assert processes_of(root, pidns, netns) == []
    assert all(not os.path.exists(f"/proc/{pid}") for pid in forwarders)
    assert _mountpoints_under(state_dir) == []
    assert not state_dir.exists()
    target.stop()  # idempotent
