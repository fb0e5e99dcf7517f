"""The SSH test servers: real sshd processes in lab servers (ispcp_lib/lab/host.py), one per profile.

The image is built and cached outside the repo on first use (about a minute); each session then starts
its servers in about a second. Stale servers of a killed earlier run are torn down first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ispcp_lib.lab.host import SshTarget, cleanup_stale, start_ssh_target


@pytest.fixture(scope="session")
def _lab_clean() -> None:
    cleanup_stale()


@pytest.fixture(scope="session")
def ssh_target(_lab_clean: None) -> Iterator[SshTarget]:
    """A server with a modern OpenSSH (ed25519 keys), at 127.0.0.2 in its own network namespace."""
    target = start_ssh_target("modern", address="127.0.0.2", hostname="srv01.ispcp.test")
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope="session")
def ssh_target_squeeze(_lab_clean: None) -> Iterator[SshTarget]:
    """A server whose sshd offers only what Squeeze's OpenSSH 5.5 offers (ssh-rsa, sha1 kex, CBC)."""
    target = start_ssh_target("squeeze", address="127.0.0.3", hostname="srv02.ispcp.test")
    try:
        yield target
    finally:
        target.stop()
