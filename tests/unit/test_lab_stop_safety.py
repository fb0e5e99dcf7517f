"""A lab server's teardown selects processes by its root and namespaces; a stale record must never select the host's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ispcp_lib.lab.host import _ns_ino, processes_of


def test_a_record_naming_the_hosts_own_namespaces_selects_nothing(tmp_path: Path) -> None:
    # What a stale state.json could hold once a namespace inode number is reused: the host's own.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        own_pid, own_net = _ns_ino(os.getpid(), "pid"), _ns_ino(os.getpid(), "net")
        assert own_pid and own_net
        assert processes_of(tmp_path / "no-such-root", own_pid, own_net) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_root_still_selects_when_the_namespaces_are_ignored() -> None:
    """The guard drops only the namespace criteria: a process whose root is the server's is still found
    (here the host's "/" stands in for a server root, with the host's namespaces recorded)."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        found = processes_of(Path("/"), _ns_ino(os.getpid(), "pid"), _ns_ino(os.getpid(), "net"))
        assert sleeper.pid in found and 1 not in found and os.getpid() not in found
    finally:
        sleeper.kill()
        sleeper.wait()
