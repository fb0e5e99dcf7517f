"""facts.system on trees of the releases ispCP ran on: os-release where it exists, debian_version before."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection, RootedView
from ispcp_lib.facts import system


def tree(root: Path, files: dict[str, str]) -> LocalConnection:
    for logical, text in files.items():
        path = root / logical.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return LocalConnection(root)


@pytest.mark.parametrize(
    ("version", "major", "codename"), [("5.0.10", "5", "lenny"), ("6.0.10", "6", "squeeze"), ("4.0", "4", "etch")]
)
def test_release_from_debian_version_when_os_release_is_absent(
    tmp_path: Path, version: str, major: str, codename: str
) -> None:
    found = system.os_release(tree(tmp_path, {"/etc/debian_version": version + "\n"}))
    assert found is not None
    assert (found["ID"], found["VERSION_ID"], found["VERSION_CODENAME"]) == ("debian", major, codename)
    assert found["PRETTY_NAME"] == f"Debian GNU/Linux {version} ({codename})"
    assert found["source"] == "/etc/debian_version"


def test_os_release_wins_and_a_path_still_works(tmp_path: Path) -> None:
    tree(tmp_path, {"/etc/os-release": 'ID=debian\nVERSION_ID="12"\n', "/etc/debian_version": "12.5\n"})
    assert system.os_release(tmp_path) == {"ID": "debian", "VERSION_ID": "12"}
    # The backup's view: the same tree seen from a folder of another connection.
    assert system.os_release(RootedView(LocalConnection("/"), str(tmp_path)))["VERSION_ID"] == "12"


def test_lsb_release_file_names_a_non_debian_release(tmp_path: Path) -> None:
    conn = tree(tmp_path, {"/etc/lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=10.04\nDISTRIB_CODENAME=lucid\n"})
    found = system.os_release(conn)
    assert (found["ID"], found["VERSION_ID"], found["VERSION_CODENAME"]) == ("ubuntu", "10.04", "lucid")


def test_nothing_tells(tmp_path: Path) -> None:
    assert system.os_release(LocalConnection(tmp_path)) is None


def test_server_version_from_a_datadir_on_a_connection(tmp_path: Path) -> None:
    conn = tree(tmp_path, {"/var/lib/mysql/mysql_upgrade_info": "5.1.73\0"})
    assert system.server_version_from_datadir("/var/lib/mysql", conn) == "5.1.73"
    assert system.server_version_from_datadir(tmp_path / "var/lib/mysql") == "5.1.73"  # a path of this machine
    assert system.server_version_from_datadir("/nowhere", conn) is None
