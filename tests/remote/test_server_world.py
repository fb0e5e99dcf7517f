"""The sandbox world's target inside an SSH test server: built into a live system without breaking it,
its MariaDB running inside, and the same answers from the target over ssh, chroot and local."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ispcp_lib.core.connection import ChrootConnection, Connection, LocalConnection
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.lab.host import _ns_ino
from ispcp_lib.sandbox import accounts, server_world
from tests.remote.conftest import WorldServer

PYTHON_LOG = "var/log/python-attempts.log"


def _python_attempts(root: Path) -> str:
    log = root / PYTHON_LOG
    return log.read_text() if log.exists() else ""


def _entries(text: str) -> dict[str, str]:
    return {line.split(":")[0]: line for line in text.splitlines() if line}


@pytest.fixture(params=["modern", "squeeze"])
def ws(request: pytest.FixtureRequest) -> WorldServer:
    return request.getfixturevalue("world_server" if request.param == "modern" else "world_server_squeeze")


def test_build_keeps_the_system_and_sshd_working(world_server: WorldServer) -> None:
    ws = world_server
    root = ws.target.root
    passwd, group = (root / "etc/passwd").read_text(), (root / "etc/group").read_text()
    before, after = _entries(ws.passwd_before), _entries(passwd)
    assert all(after.get(name) == line for name, line in before.items()), "an image account line changed or vanished"
    assert "sshd" in before and {"mysql", "postfix"} <= before.keys()
    assert {"www-data", "backup", "list"} <= after.keys()
    assert all(_entries(group).get(n) == line for n, line in _entries(ws.group_before).items())
    shadow_names = set(_entries((root / "etc/shadow").read_text()))
    assert set(after) == shadow_names, "passwd and shadow name different users"
    # The datadir belongs to the server's own mysql, whatever this machine's mysql is.
    mysql_uid, mysql_gid = (int(x) for x in before["mysql"].split(":")[2:4])
    for path in (root / "var/lib/mysql", root / "var/lib/mysql/ispcp", root / "run/mysqld"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (mysql_uid, mysql_gid), path
    r = subprocess.run(ws.target.ssh_argv("id -un; hostname"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["root", "srv03.ispcp.test"]


def test_mariadb_runs_inside_the_server_and_answers_over_ssh(ws: WorldServer) -> None:
    conn = ws.ssh_connection()
    try:
        done = conn.run(
            [
                "mysql",
                "--defaults-file=/etc/mysql/debian.cnf",
                "--batch",
                "--skip-column-names",
                "-e",
                "SELECT @@datadir, @@socket; SELECT COUNT(*) FROM ispcp.config WHERE name = 'DATABASE_REVISION'",
            ],
            check=True,
        )
    finally:
        conn.close()
    first, second = done.out.splitlines()
    assert first.split("\t") == ["/var/lib/mysql/", "/run/mysqld/mysqld.sock"]
    assert second == "1"
    # Its server process lives in the lab server's pid namespace, not among this machine's processes.
    pidns = ws.target.server.state["pidns"]
    inside = [
        p for p in os.listdir("/proc") if p.isdigit() and _comm(p) == "mariadbd" and _ns_ino(int(p), "pid") == pidns
    ]
    assert len(inside) == 1
    assert _python_attempts(ws.target.root) == ""


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _connections(ws: WorldServer) -> dict[str, Connection]:
    root = ws.target.root
    return {"ssh": ws.ssh_connection(), "chroot": ChrootConnection(root), "local": LocalConnection(root)}


def _find_listing(conn: Connection, top: str) -> list[str]:
    done = conn.run(["find", conn.path(top), "-mindepth", "1", "-printf", r"%P|%y|%m|%U|%G|%s|%l\n"], check=True)
    return sorted(done.out.splitlines())


def _walk_listing(top: Path) -> list[str]:
    """The same listing from this machine's own view of the tree (os.lstat), as the expectation."""
    rows = []
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = os.lstat(p)
            kind = "l" if p.is_symlink() else "d" if p.is_dir() else "f"
            link = os.readlink(p) if kind == "l" else ""
            rows.append(
                f"{p.relative_to(top)}|{kind}|{st.st_mode & 0o7777:o}|{st.st_uid}|{st.st_gid}|{st.st_size}|{link}"
            )
    return sorted(rows)


def test_same_answers_over_ssh_chroot_and_local(ws: WorldServer) -> None:
    root, world = ws.target.root, ws.world
    conns = _connections(ws)
    attempts_before = _python_attempts(root)
    try:
        ssh = conns["ssh"]
        # The user data copied into the server over the connection's own master, as the recovery will.
        src = world.backup_root / "var/www/virtual"
        rsync = ["rsync", "-a", "--numeric-ids", "--delete", "-e", ssh.rsync_remote_shell()]
        subprocess.run([*rsync, f"{src}/", f"{ws.target.host}:/var/www/virtual/"], check=True, timeout=600)
        conf = (root / "etc/ispcp/ispcp.conf").read_bytes()
        expected = _walk_listing(src)
        assert len(expected) > 20
        stats: dict[str, tuple[str, int, int, int, int]] = {}
        for kind, conn in conns.items():
            assert conn.read_bytes("/etc/ispcp/ispcp.conf") == conf, kind
            assert conn.read_text("/etc/ispcp/no-such-file") is None
            many = conn.read_many(["/etc/ispcp/ispcp.conf", "/etc/ispcp/no-such-file"])
            assert many == {"/etc/ispcp/ispcp.conf": conf, "/etc/ispcp/no-such-file": None}, kind
            assert _find_listing(conn, "/var/www/virtual") == expected, kind
            path = f"/root/probe-{kind}"
            conn.write_atomic(path, f"written over {kind}\n", 0o640, 33, 34)
            st = conn.stat(path)
            assert st is not None
            stats[kind] = (st.kind, st.mode, st.uid, st.gid, st.size)
            on_disk = os.stat(root / path.lstrip("/"))
            assert (on_disk.st_mode & 0o7777, on_disk.st_uid, on_disk.st_gid) == (0o640, 33, 34)
            assert (root / path.lstrip("/")).read_text() == f"written over {kind}\n"
            with conn.private_file("s3cret\n", "/root") as where:
                host_path = Path(where) if kind == "local" else root / where.lstrip("/")
                assert host_path.read_text() == "s3cret\n"
                assert os.stat(host_path).st_mode & 0o777 == 0o600
            assert not host_path.exists()
        assert stats == {k: ("f", 0o640, 33, 34, len(f"written over {k}\n")) for k in conns}
    finally:
        conns["ssh"].close()
    assert _python_attempts(root) == attempts_before == ""


def test_runbook_params_per_connection(world_server: WorldServer) -> None:
    world, t = world_server.world, world_server.target
    ssh = world.runbook_params("ssh")
    assert ssh["target"] == {
        "connection": "ssh",
        "host": t.host,
        "port": t.port,
        "user": "root",
        "identity_file": str(t.identity_file),
        "known_hosts": str(t.known_hosts),
        "ssh_options": [],
    }
    assert ssh["mysql"]["datadir"] == "/var/lib/mysql" and ssh["mysql"]["service"] == "sysv"
    assert ssh["sandbox"] is True and ssh["backup_location"] == "controller"
    assert ssh["backup_root"] == str(world.backup_root)
    chroot = world.runbook_params("chroot", backup_location="target")
    assert chroot["target"] == {"connection": "chroot", "root": str(t.root)}
    assert chroot["backup_root"] == server_world.BACKUP_ON_TARGET
    copied = t.root / "srv/backup/etc/ispcp/ispcp.conf"
    assert copied.read_bytes() == (world.backup_root / "etc/ispcp/ispcp.conf").read_bytes()
    local = world.runbook_params("local")
    assert local["target"] == {"connection": "local"} and local["target_root"] == str(t.root)
    assert local["mysql"]["datadir"] == str(t.root / "var/lib/mysql")
    with pytest.raises(ValueError):
        world.runbook_params("telnet")


def test_merge_keeps_every_line_and_refuses_a_taken_id(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    files = {
        "passwd": "root:x:0:0:root:/root:/bin/bash\nsshd:x:102:65534::/run/sshd:/usr/sbin/nologin\n",
        "shadow": "root:*:19000:0:99999:7:::\nsshd:!:19000::::::\n",
        "group": "root:x:0:\nmysql:x:101:\n",
        "gshadow": "root:*::\nmysql:!::\n",
    }
    for name, text in files.items():
        (etc / name).write_text(text)
    acc = accounts.Accounts(
        users=[("root", 0, 0, "r", "/", "/bin/sh"), ("vmail", 1004, 8, "", "/var/mail", "/bin/false")]
    )
    acc.groups = [("mysql", 101, []), ("mail", 8, [])]
    acc.merge_into(etc)
    passwd = (etc / "passwd").read_text()
    assert passwd == files["passwd"] + "vmail:x:1004:8::/var/mail:/bin/false\n"
    assert (etc / "group").read_text() == files["group"] + "mail:x:8:\n"
    assert (etc / "shadow").read_text().startswith(files["shadow"]) and "vmail:*:" in (etc / "shadow").read_text()
    taken = accounts.Accounts(users=[("intruder", 102, 102, "", "/", "/bin/false")])
    with pytest.raises(PreconditionFailed, match="sshd"):
        taken.merge_into(etc)
    assert (etc / "passwd").read_text() == passwd


def test_a_world_in_a_server_is_not_cloned(world_server: WorldServer, tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="thaw"):
        world_server.world.clone(tmp_path / "copy")
