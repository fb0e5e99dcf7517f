"""The connection's file and command primitives behave the same locally and through a shell (chroot).

The chroot case uses this machine's own root as the chroot: every file operation then runs as a
POSIX sh script inside it, exactly the code path SSH takes. The SSH transport itself is tested
against a real sshd in tests/remote/.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
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


def test_read_many_is_binary_safe_and_says_none_for_absent_files(conn_base) -> None:
    conn, base, host = conn_base
    every_byte = bytes(range(256)) + b"\n12\n-\n"
    (host / "bin").write_bytes(every_byte)
    (host / "empty").write_bytes(b"")
    (host / "name with\nnewline").write_bytes(b"x")
    (host / "dir").mkdir()
    os.symlink("missing", host / "dangling")
    names = ["bin", "missing", "empty", "dir", "name with\nnewline", "dangling", "bin"]
    before = conn.round_trips
    found = conn.read_many([f"{base}/{n}" for n in names])
    assert found == {
        f"{base}/bin": every_byte,
        f"{base}/missing": None,
        f"{base}/empty": b"",
        f"{base}/dir": None,
        f"{base}/name with\nnewline": b"x",
        f"{base}/dangling": None,
    }
    assert conn.round_trips - before == (0 if conn.kind == "local" else 1)
    assert conn.read_many([]) == {}


def test_write_atomic_takes_mode_and_owner_from_the_replaced_file(conn_base) -> None:
    conn, base, host = conn_base
    (host / "old").write_text("old\n")
    os.chmod(host / "old", 0o640)
    os.chown(host / "old", 1234, 2345)
    conn.write_atomic(f"{base}/old", b"new\n")
    st = os.stat(host / "old")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 2345)
    assert (host / "old").read_bytes() == b"new\n"
    # What is given wins; what is not still comes from the replaced file.
    conn.write_atomic(f"{base}/old", "newer\n", mode=0o4750, uid=4321)
    st = os.stat(host / "old")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4750, 4321, 2345)
    # A new file: 0644, root's.
    conn.write_atomic(f"{base}/new", "")
    st = os.stat(host / "new")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o644, 0, 0, 0)
    assert sorted(p.name for p in host.iterdir()) == ["new", "old"]


def test_write_atomic_takes_large_data_through_stdin(conn_base) -> None:
    conn, base, host = conn_base
    data = os.urandom(3 << 20)  # beyond the long-lived shell's input limit: the one-shot path
    conn.write_atomic(f"{base}/big", data, mode=0o600)
    assert (host / "big").read_bytes() == data
    assert sorted(p.name for p in host.iterdir()) == ["big"]


def test_a_failed_write_atomic_leaves_no_temp_file(conn_base) -> None:
    conn, base, host = conn_base
    (host / "taken" / "inside").mkdir(parents=True)  # rename cannot replace a non-empty folder
    with pytest.raises((OSError, CommandFailed)) as caught:
        conn.write_atomic(f"{base}/taken", b"data")
    if isinstance(caught.value, CommandFailed):
        assert f"{base}/taken" in caught.value.stderr and caught.value.rc == 1
    assert sorted(p.name for p in host.iterdir()) == ["taken"]
    assert [p.name for p in (host / "taken").iterdir()] == ["inside"]
    with pytest.raises((OSError, CommandFailed)):
        conn.write_atomic(f"{base}/no/such/folder/f", b"data")
    assert sorted(p.name for p in host.iterdir()) == ["taken"]


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
    assert view.read_many(["/etc/ispcp.conf", "/etc/missing"]) == {"/etc/ispcp.conf": b"A = 1\n", "/etc/missing": None}
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


# --- the long-lived shell (core/remote_shell.py), through a real chroot of this machine ---------------


@pytest.fixture
def conn() -> Iterator[ChrootConnection]:
    connection = ChrootConnection("/")
    try:
        yield connection
    finally:
        connection.close()


def test_commands_share_one_long_lived_shell(conn: ChrootConnection) -> None:
    first = conn.run(["sh", "-c", "echo $PPID"]).out
    assert conn.run(["sh", "-c", "echo $PPID"]).out == first  # the same shell started both
    # Binary output and input, both ways, through the stream.
    blob = bytes(range(256)) * 300
    assert conn.run(["cat"], input=blob).stdout == blob
    done = conn.run(["sh", "-c", "printf 'a\\0b'; printf 'err\\n' >&2; exit 7"])
    assert (done.rc, done.stdout, done.err) == (7, b"a\0b", "err\n")
    assert conn.run(["no-such-command-here"]).rc == 127
    # A command's stdin is empty, never the shell's own stream.
    assert conn.run(["cat"]).stdout == b""


def test_a_daemon_left_running_does_not_hold_the_stream(conn: ChrootConnection, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    conn.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo started"], timeout=10)
    try:
        assert conn.run(["echo", "next"], timeout=10).out == "next\n"
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_a_timeout_ends_the_shell_and_the_next_command_gets_a_new_one(conn: ChrootConnection) -> None:
    before = conn.run(["sh", "-c", "echo $PPID"]).out
    with pytest.raises(CommandFailed, match="timeout"):
        conn.run(["sleep", "30"], timeout=0.5)
    after = conn.run(["sh", "-c", "echo $PPID"])
    assert after.rc == 0 and after.out != before


def test_a_shell_that_dies_mid_command_reports_255_and_is_replaced(conn: ChrootConnection) -> None:
    done = conn.run(["sh", "-c", "kill -9 $PPID; sleep 1"])
    assert done.rc == 255 and "ended" in done.err
    assert conn.run(["echo", "again"]).out == "again\n"


def test_large_inputs_and_a_busy_shell_take_the_one_shot_path(conn: ChrootConnection) -> None:
    shell_ppid = conn.run(["sh", "-c", "echo $PPID"]).out
    big = b"x" * (2 << 20)
    assert conn.run(["wc", "-c"], input=big).out.strip() == str(len(big))
    assert conn._shell is not None
    with conn._shell.lock:  # another thread holds the shell: this command goes one-shot
        assert conn.run(["sh", "-c", "echo $PPID"]).out != shell_ppid


def test_output_files_are_removed_in_batches_and_after_a_large_output(conn: ChrootConnection) -> None:
    from ispcp_lib.core.remote_shell import BIG_OUTPUT, KEEP_OUTPUTS

    def kept() -> list[str]:  # the shell's folder, as a script in its subshell sees it (its own files too)
        return conn.sh('ls -A "$d"').out.split()

    for _ in range(3 * KEEP_OUTPUTS):
        conn.run(["true"])
        assert len(kept()) <= 2 * (KEEP_OUTPUTS + 2)
    assert len(conn.run(["head", "-c", str(BIG_OUTPUT + 1), "/dev/zero"]).stdout) == BIG_OUTPUT + 1
    assert len(kept()) == 2  # only the files of the `ls` itself


def test_scripts_run_in_the_subshell_with_their_arguments_and_traps(conn: ChrootConnection, tmp_path: Path) -> None:
    flag = tmp_path / "trap-ran"
    script = 'case "$1" in a) echo "one:$1 two:$2";; esac; trap "touch $3" EXIT; umask 077; exit 4'
    done = conn.sh(script, "a", "b c", str(flag))
    assert (done.rc, done.out) == (4, "one:a two:b c\n") and flag.exists()
    assert conn.sh("umask").out.strip() != "0077"  # the script's umask stayed in its subshell
    assert conn.sh('echo "$#"').out == "0\n"


def test_an_interrupted_exchange_never_leaves_the_stream_out_of_step(
    conn: ChrootConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.run(["true"])
    shell = conn._shell
    assert shell is not None

    def interrupted(deadline: float) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(shell, "_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        conn.run(["echo", "first"])
    assert conn._shell is None  # dropped: its stream still holds the first command's answer
    assert conn.run(["echo", "second"]).out == "second\n"
