"""SSH logins that need a secret: a key passphrase and a password, answered by the connection's askpass.

The secret comes from the secrets_file (ssh_password). While the master connection is up, no
process on this machine or in the server carries it in its argv; after close() nothing of it is
left on disk.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ispcp_lib.core.connection import SshConnection
from ispcp_lib.core.connection import SshTarget as Login
from ispcp_lib.lab.host import SshTarget, start_ssh_target

SECRET = "Tr0ub4dor&3 passphrase"
USER_PASSWORD = "c0rrect-h0rse battery"
PASSWORD_PORT = 2222


@pytest.fixture(scope="module")
def server(_lab_clean: None) -> Iterator[SshTarget]:
    """A server of its own: the password sshd added below must not change the shared ones."""
    target = start_ssh_target("modern", name="askpass", address="127.0.0.11", hostname="srv05.ispcp.test")
    try:
        yield target
    finally:
        target.stop()


def _argv_holding(secret: str) -> list[str]:
    """Every process (this machine's and the servers') whose command line contains the secret."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if secret.encode() in cmdline:
            found.append(entry.name + ": " + os.fsdecode(cmdline.replace(b"\0", b" ")))
    return found


def _files_holding(secret: str, folder: Path) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            try:
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def _login(server: SshTarget, **kw: object) -> Login:
    base = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "identity_file": str(server.identity_file),
        "known_hosts": str(server.known_hosts),
        "ssh_options": list(server.ssh_options),
    }
    return Login(**{**base, **kw})  # type: ignore[arg-type]


def _connected_without_leaks(login: Login, secret: str, tmp_path: Path) -> str:
    """Logs in with the secret, checks argv and files while connected and after close; returns `id -un`.

    tmp_path holds the test's own files (the encrypted key, known_hosts): none may hold the secret.
    """
    control = Path(tempfile.mkdtemp(prefix="ask", dir="/tmp"))  # a unix socket path has at most 107 bytes
    conn = SshConnection(login, control_dir=str(control), askpass_secret=secret)
    page = tmp_path / "page.html"
    page.write_text("<p>hello</p>\n")
    try:
        # rsync's own ssh logs in first (rsync -e carries the askpass), then commands ride its master.
        rsync = ["rsync", "-a", "-e", conn.rsync_remote_shell(), str(page), f"{login.host}:page.html"]
        copied = subprocess.run(rsync, capture_output=True, text=True, timeout=60)
        assert copied.returncode == 0, copied.stderr
        done = conn.run(["sh", "-c", "cat page.html && id -un"], timeout=60)
        assert done.rc == 0, done.err
        # The master persists in the background between commands: it is connected now.
        assert any(control.iterdir())
        assert _argv_holding(secret) == []
        assert "BatchMode=no" in conn.base_argv()
        again = conn.run(["true"], timeout=60)
        assert again.rc == 0, again.err
    finally:
        conn.close()
    assert not control.exists()
    assert _files_holding(secret, tmp_path) == []
    assert not list(Path("/tmp").glob("ispcp-ssh-*/askpass"))
    assert _argv_holding(secret) == []
    text, user = done.out.splitlines()
    assert text == "<p>hello</p>"
    return user


def test_key_passphrase_from_the_secret(server: SshTarget, tmp_path: Path) -> None:
    identity = tmp_path / "id_encrypted"
    identity.write_bytes(server.identity_file.read_bytes())
    identity.chmod(0o600)
    # ssh-keygen -p reads both passphrases from its argv: fine for a test key, and not the tool's secret path.
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", SECRET, "-f", str(identity)], check=True)
    login = _login(server, identity_file=str(identity))

    without = SshConnection(login)
    try:
        refused = without.run(["true"], timeout=60)
    finally:
        without.close()
    assert refused.rc == 255, "the encrypted key must not log in without its passphrase"

    assert _connected_without_leaks(login, SECRET, tmp_path) == "root"


def test_wrong_passphrase_is_refused(server: SshTarget, tmp_path: Path) -> None:
    identity = tmp_path / "id_encrypted"
    identity.write_bytes(server.identity_file.read_bytes())
    identity.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", SECRET, "-f", str(identity)], check=True)
    conn = SshConnection(_login(server, identity_file=str(identity)), askpass_secret="not it")
    try:
        done = conn.run(["true"], timeout=60)
    finally:
        conn.close()
    assert done.rc == 255
    assert "permission denied" in done.err.lower()


@pytest.fixture(scope="module")
def password_port(server: SshTarget) -> int:
    """A second sshd in the server that takes passwords, for a user `recovery` (no key of its own)."""
    conf = "\n".join(
        [
            f"ListenAddress {server.host}:{PASSWORD_PORT}",
            "HostKey /etc/ssh/lab_host_modern_ed25519_key",
            "PidFile /run/sshd-password.pid",
            "PermitRootLogin no",
            "PubkeyAuthentication no",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "MaxSessions 64",
            "",
        ]
    )
    server.exec(["/bin/sh", "-c", "cat > /etc/ssh/sshd_password.conf"], input=conf)
    server.exec(["useradd", "-m", "-s", "/bin/sh", "recovery"])
    server.exec(["chpasswd"], input=f"recovery:{USER_PASSWORD}\n")  # on stdin: no argv
    server.exec(["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_password.conf", "-E", "/var/log/sshd-password.log"])
    return server.server.forward(PASSWORD_PORT)


def test_password_login_from_the_secret(server: SshTarget, password_port: int, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    kind, blob = server.known_hosts.read_text().split()[1:3]
    known.write_text(f"[{server.host}]:{password_port} {kind} {blob}\n")
    login = _login(server, port=password_port, user="recovery", identity_file=None, known_hosts=str(known))
    assert _connected_without_leaks(login, USER_PASSWORD, tmp_path) == "recovery"
