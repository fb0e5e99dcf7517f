"""open_run: the `target` parameter becomes a checked connection, before anything on the target changes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ispcp_lib.core.connection import ChrootConnection, LocalConnection, SshConnection, SshTarget
from ispcp_lib.core.errors import InputError
from ispcp_lib.runbook.session import open_run, ssh_failure


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_local_target_with_its_tree_under_target_root(tmp_path: Path) -> None:
    target, backup = tmp_path / "target", tmp_path / "backup"
    (backup / "etc").mkdir(parents=True)
    (backup / "etc" / "hostname").write_text("old\n")
    target.mkdir()
    ctx = open_run(backup_root=str(backup), target_root=str(target), apply="false", sandbox=True)
    assert isinstance(ctx.target, LocalConnection) and ctx.target.path("/etc") == f"{target}/etc"
    assert ctx.state_dir == target / "var/lib/ispcp-recovery"  # under target_root, as the sandbox always had
    assert isinstance(ctx.state, LocalConnection) and ctx.state.path("/x") == "/x"
    assert ctx.backup is not None and ctx.backup.read_text("/etc/hostname") == "old\n"
    assert ctx.default_apply is False and ctx.sandbox is True
    assert _files(target) == []  # opening a run changed nothing


def test_local_target_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="target_root.*is not a directory"):
        open_run(target_root=str(tmp_path / "missing"))


def test_chroot_over_this_machines_root(tmp_path: Path) -> None:
    ctx = open_run(target={"connection": "chroot", "root": "/"}, backup_root=str(tmp_path), backup_location="target")
    assert isinstance(ctx.target, ChrootConnection)
    assert ctx.state is ctx.target and ctx.state_dir == Path("/var/lib/ispcp-recovery")  # on the target
    assert ctx.target.read_text("/etc/hostname") == Path("/etc/hostname").read_text()
    assert ctx.backup is not None and ctx.backup.inner is ctx.target  # backup_location: target
    assert ctx.sandbox is False


def test_chroot_without_a_system_tree(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="target.root.*holds no system tree"):
        open_run(target={"connection": "chroot", "root": str(tmp_path)})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ssh_target_fails_fast_and_says_why(tmp_path: Path) -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(InputError) as info:
        open_run(target={"connection": "ssh", "host": "127.0.0.1", "port": port}, state_dir=str(tmp_path / "s"))
    message = str(info.value)
    assert f"ssh root@127.0.0.1 port {port}" in message and "nothing listens" in message and "target.port" in message
    assert time.monotonic() - started < 10
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("stderr", "problem", "fix"),
    [
        (
            "No ED25519 host key is known for srv and you have requested strict checking.\r\n"
            "Host key verification failed.\r\n",
            "is not in /k",
            "ssh-keyscan -p 2222 srv",
        ),
        (
            "@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
            "Host key verification failed.\r\n",
            "differs from the one in /k",
            "ssh-keygen -R srv -f /k",
        ),
        (
            "Unable to negotiate with 10.0.0.5 port 2222: no matching host key type found. "
            "Their offer: ssh-rsa,ssh-dss\r\n",
            "algorithms",
            "-oHostKeyAlgorithms=+ssh-rsa",
        ),
        ("root@srv: Permission denied (publickey,password).\r\n", "refused", "ssh_password"),
        ("ssh: Could not resolve hostname srv: Name or service not known\r\n", "does not resolve", "target.host"),
    ],
)
def test_ssh_failures_are_explained(stderr: str, problem: str, fix: str) -> None:
    err = ssh_failure(SshTarget(host="srv", port=2222, known_hosts="/k"), stderr)
    assert err.item == "ssh root@srv port 2222" and problem in err.problem and fix in err.fix


def test_ssh_connection_is_built_from_the_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ispcp_lib.runbook import session

    known = tmp_path / "known_hosts"
    known.write_text("")
    seen: list[SshConnection] = []
    monkeypatch.setattr(session, "check_connection", seen.append)  # no sshd on this machine
    monkeypatch.setattr(session.atexit, "register", lambda f: None)
    ctx = open_run(
        target={
            "connection": "ssh",
            "host": "srv",
            "port": "2222",
            "known_hosts": str(known),
            "ssh_options": "-oKexAlgorithms=+diffie-hellman-group14-sha1",
        }
    )
    assert seen == [ctx.target] and isinstance(ctx.target, SshConnection)
    argv = ctx.target.wrap(["true"])
    assert argv[argv.index("-p") + 1] == "2222" and f"UserKnownHostsFile={known}" in argv
    assert "StrictHostKeyChecking=yes" in argv and "-oKexAlgorithms=+diffie-hellman-group14-sha1" in argv
    assert ctx.state_dir == Path("/var/lib/ispcp-recovery") and ctx.state is ctx.target
    ctx.target.close()
