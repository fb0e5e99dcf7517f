"""The connection's file and command primitives behave the same locally and through a shell (chroot).

The chroot case uses this machine's own root as the chroot: every file operation then runs as a
POSIX sh script inside it, exactly the code path SSH takes. The SSH transport itself is tested
against a real sshd in tests/remote/.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ispcp_lib.core.connection import ChrootConnection, Connection, LocalConnection, RootedView
from ispcp_lib.core.errors import CommandFailed


@pytest.fixture(params=["local", "chroot"])
def conn_base(request, tmp_path: Path) -> tuple[Connection, str, Path]:
    """(connection, a folder as the target sees it, the same folder on this machine)."""
    if request.param == "local":
        root = tmp_path / "root"
        (root / "work").mkdir(parents=True)
        return LocalConnection(root), "/work", root / "work"
    (tmp_path / "work").mkdir()
    return ChrootConnection("/"), str(tmp_path / "work"), tmp_path / "work"


def test_write_read_stat_roundtrip(conn_base) -> None:
    conn, base, host = conn_base
    conn.write_atomic(f"{base}/a.conf", b"one\n\x00two\n", mode=0o640, uid=0, gid=0)
    assert (host / "a.conf").read_bytes() == b"one\n\x00two\n"
    assert conn.read_bytes(f"{base}/a.conf") == b"one\n\x00two\n"
    st = conn.stat(f"{base}/a.conf")
    assert st is not None and st.is_file and st.mode == 0o640 and st.size == 9
    # Mode and owner default to the replaced file's.
    os.chmod(host / "a.conf", 0o600)
    conn.write_atomic(f"{base}/a.conf", "new\n")
    assert stat.S_IMODE(os.stat(host / "a.conf").st_mode) == 0o600
    assert conn.read_text(f"{base}/a.conf") == "new\n"
    # No temp file is left beside it.
    assert sorted(p.name for p in host.iterdir()) == ["a.conf"]


def test_absent_paths_are_none_not_errors(conn_base) -> None:
    conn, base, _host = conn_base
    assert conn.read_bytes(f"{base}/missing") is None
    assert conn.stat(f"{base}/missing") is None
    assert conn.listdir(f"{base}/missing") is None
    assert not conn.exists(f"{base}/missing")


def test_symlinks_are_reported_not_followed(conn_base) -> None:
    conn, base, host = conn_base
    os.symlink("/etc/passwd", host / "link")
    st = conn.stat(f"{base}/link")
    assert st is not None and st.is_link and st.link == "/etc/passwd"


def test_directories_listing_rename_remove(conn_base) -> None:
    conn, base, host = conn_base
    conn.mkdir(f"{base}/d/e", mode=0o700)
    assert stat.S_IMODE(os.stat(host / "d" / "e").st_mode) == 0o700
    conn.write_atomic(f"{base}/d/e/f", "x")
    (host / "d" / "name with\nnewline").write_text("y")
    assert conn.listdir(f"{base}/d") == ["e", "name with\nnewline"]
    conn.rename(f"{base}/d/e", f"{base}/d/g")
    assert conn.read_text(f"{base}/d/g/f") == "x"
    with pytest.raises((IsADirectoryError, CommandFailed)):
        conn.remove(f"{base}/d/g")
    conn.remove(f"{base}/d", tree=True)
    assert not (host / "d").exists()


def test_append_creates_private_file(conn_base) -> None:
    conn, base, host = conn_base
    conn.append(f"{base}/journal", "a\n")
    conn.append(f"{base}/journal", "b\n")
    assert (host / "journal").read_text() == "a\nb\n"
    assert stat.S_IMODE(os.stat(host / "journal").st_mode) == 0o600


def test_commands_get_argv_input_env_and_cwd(conn_base) -> None:
    conn, base, host = conn_base
    done = conn.run(
        ["sh", "-c", 'printf "%s|%s|%s" "$1" "$FOO" "$(cat)"', "sh", "it's $HOME"], input="in", env={"FOO": "b r"}
    )
    assert done.rc == 0 and done.out == "it's $HOME|b r|in"
    done = conn.run(["pwd"], cwd=conn.path(base))
    assert done.out.strip() == conn.path(base)
    assert conn.run(["false"]).rc == 1
    with pytest.raises(CommandFailed):
        conn.run(["false"], check=True)
    with pytest.raises(CommandFailed, match="timeout"):
        conn.run(["sleep", "5"], timeout=0.5)


def test_private_file_is_0600_and_removed(conn_base) -> None:
    conn, base, _host = conn_base
    # The path is the one a command on the target sees (it goes into argv: --defaults-extra-file=).
    with conn.private_file("secret\n", directory=base) as where:
        assert conn.run(["stat", "-c", "%a", where]).out.strip() == "600"
        assert conn.run(["cat", where]).out == "secret\n"
    assert conn.run(["test", "-e", where]).rc == 1


def test_rooted_view_maps_paths_and_detects_escapes(tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    (backup / "etc").mkdir(parents=True)
    (backup / "etc" / "ispcp.conf").write_text("A = 1\n")
    os.symlink("/etc/hostname", backup / "etc" / "escape")
    view = RootedView(LocalConnection("/"), str(backup))
    assert view.read_text("/etc/ispcp.conf") == "A = 1\n"
    assert view.path("/etc/ispcp.conf") == str(backup / "etc" / "ispcp.conf")
    assert view.escapes("/etc/ispcp.conf") is None
    assert view.escapes("/etc/escape") == os.path.realpath("/etc/hostname")


def test_chroot_needs_a_system_tree(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no system tree"):
        ChrootConnection(tmp_path)


def test_round_trips_count_commands_started_on_the_target(tmp_path: Path) -> None:
    conn = LocalConnection(tmp_path)
    other = LocalConnection(tmp_path)
    conn.write_atomic("/f", "x")
    assert conn.read_text("/f") == "x" and conn.round_trips == 0  # local file operations run no command
    conn.run(["true"])
    conn.sh("exit 3")
    conn.popen(["true"]).wait()
    assert (conn.round_trips, other.round_trips) == (3, 0)
