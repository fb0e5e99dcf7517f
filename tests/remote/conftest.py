"""The SSH test servers: real sshd processes in lab servers (ispcp_lib/lab/host.py), one per profile.

The image is built and cached outside the repo on first use (about a minute); each session then starts
its servers in about a second. Stale servers of a killed earlier run are torn down first.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ispcp_lib.core.connection import SshConnection
from ispcp_lib.lab.host import NamespaceHost, SshTarget, cleanup_stale, start_ssh_target
from ispcp_lib.lab.images import SSHTARGET, ensure_image
from ispcp_lib.sandbox import server_world
from ispcp_lib.sandbox.world import World, build_world


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


# -- the sandbox world inside an SSH test server ----------------------------------------------------------


@dataclass
class WorldServer:
    """A sandbox world built into a lab server with its sshd; `passwd_before` is the image's own file."""

    world: World
    target: SshTarget
    passwd_before: str
    group_before: str

    def ssh_connection(self) -> SshConnection:
        return server_world.ssh_connection(self.target)


def _world_server(sandbox_root: Path, profile: str, address: str, hostname: str) -> Iterator[WorldServer]:
    target = start_ssh_target(profile, name=f"world-{profile}", address=address, hostname=hostname)
    try:
        passwd = (target.root / "etc/passwd").read_text()
        group = (target.root / "etc/group").read_text()
        workdir = Path(tempfile.mkdtemp(prefix=f"srv-{profile}-", dir=sandbox_root))
        workdir.rmdir()
        world = build_world(workdir, "small", seed=1, target_root=target.root, system_root=True)
        server_world.attach(world, target.server, target.ssh, "ssh")
        world.start()
        try:
            yield WorldServer(world, target, passwd, group)
        finally:
            world.stop()
    finally:
        target.stop()


@pytest.fixture(scope="session")
def world_server(_lab_clean: None, sandbox_root: Path) -> Iterator[WorldServer]:
    """The small world built into its own modern SSH server, its MariaDB running inside."""
    yield from _world_server(sandbox_root, "modern", "127.0.0.4", "srv03.ispcp.test")


@pytest.fixture(scope="session")
def world_server_squeeze(_lab_clean: None, sandbox_root: Path) -> Iterator[WorldServer]:
    """The same, in a server whose sshd offers only what Squeeze's OpenSSH 5.5 offers."""
    yield from _world_server(sandbox_root, "squeeze", "127.0.0.5", "srv04.ispcp.test")


@dataclass
class FrozenWorld:
    """A small world built into a server, frozen as an overlay layer: every thaw starts from the same bytes."""

    world: World
    layer: Path
    image_layers: list[Path]


@pytest.fixture(scope="session")
def frozen_world(_lab_clean: None, sandbox_root: Path) -> Iterator[FrozenWorld]:
    layers = ensure_image(SSHTARGET)
    host = NamespaceHost.start(layers, name="world-frozen", address="127.0.0.6")
    try:
        workdir = Path(tempfile.mkdtemp(prefix="frozen-", dir=sandbox_root))
        workdir.rmdir()
        world = build_world(workdir, "small", seed=1, target_root=host.root, system_root=True)
        server_world.attach(world, host, None, "chroot")
        layer = server_world.freeze(world, host)
        yield FrozenWorld(world, layer, layers)
    finally:
        host.stop()
        shutil.rmtree(host.state_dir, ignore_errors=True)
