"""The real ispCP 1.0.7 lab: a provisioned dead server, the judge on it, its partial backup, a fresh dummy."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ispcp_lib.lab.backup import take_backup
from ispcp_lib.lab.host import NamespaceHost, _mountpoints_under, processes_of
from ispcp_lib.lab.ispcp_server import patch_tree, start_server
from ispcp_lib.lab.judge import judge, report
from ispcp_lib.lab.provision import Plan, sql
from ispcp_lib.lab.roles import DEAD, DUMMY


def _keys(root: Path) -> tuple[str, str]:
    text = (root / "var/www/ispcp/engine/ispcp-db-keys.pl").read_text()
    return re.search(r"db_pass_key = '(.*)'", text).group(1), re.search(r"db_pass_iv = '(.*)'", text).group(1)  # type: ignore[union-attr]


def test_the_engine_built_every_customer(dead_server: tuple[NamespaceHost, Plan]) -> None:
    host, plan = dead_server
    assert len(plan.domains) >= 8 and len(plan.mailboxes) == 20 and len(plan.databases) == 2
    rows = sql(host, "SELECT domain_name, domain_uid, domain_status FROM domain ORDER BY domain_id;")
    assert [r[0] for r in rows] == plan.domains
    assert all(r[2] == "ok" for r in rows)
    first = host.root / f"var/www/virtual/{plan.domains[0]}"
    st = first.stat()
    uid = int(rows[0][1])
    assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o770)  # vuXXXX:www-data 0770, as the facts say
    assert (first / "htdocs").stat().st_uid == uid
    assert (first / "backups").stat().st_uid == 0
    passwd = (host.root / "etc/passwd").read_text()
    assert f"vu{uid}:" in passwd or f":{uid}:" in passwd


def test_judge_passes_every_check_on_the_live_original(dead_server: tuple[NamespaceHost, Plan]) -> None:
    host, plan = dead_server
    out = io.StringIO()
    passed, total = report(judge(host, plan), out)
    print(out.getvalue())
    assert total >= 50
    assert passed == total, out.getvalue()


def test_partial_backup_then_the_server_is_gone(
    dead_server: tuple[NamespaceHost, Plan], tmp_path_factory: pytest.TempPathFactory
) -> None:
    host, plan = dead_server
    dest = tmp_path_factory.mktemp("backup")
    kept = take_backup(host, dest)
    for rel in (
        "var/lib/mysql/ispcp",
        "var/lib/mysql/mysql",
        "etc/ispcp/ispcp.conf",
        "etc/mysql/debian.cnf",
        "var/www/ispcp/engine/ispcp-db-keys.pl",
        "var/www/ispcp/gui/include/ispcp-db-keys.php",
        "etc/shadow",
        "etc/gshadow",
        "etc/proftpd/proftpd.conf",
    ):
        assert (dest / rel).exists(), rel
    for c in plan.databases:
        assert (dest / f"var/lib/mysql/{c.name}/items.MYD").exists()
    page = dest / f"var/www/virtual/{plan.domains[0]}/htdocs/index.html"
    assert plan.pages[plan.domains[0]] in page.read_text()
    assert page.stat().st_uid == (host.root / f"var/www/virtual/{plan.domains[0]}/htdocs/index.html").stat().st_uid
    box = plan.mailboxes[0].address.split("@")
    assert list((dest / f"var/mail/virtual/{box[1]}/{box[0]}").glob("*/*"))
    assert not (dest / "etc/ispcp/bind/working").exists()  # the guide's backup has no working zones
    assert "var/lib/mysql/performance_schema" not in kept

    state_dir, root = host.state_dir, host.root
    pidns, netns = host.state["pidns"], host.state["netns"]
    host.stop()
    assert processes_of(root, pidns, netns) == []
    assert _mountpoints_under(state_dir) == []
    assert not state_dir.exists()
    # What part 4 starts from: the backup alone (kept for the rest of the session).
    (dest / ".plan.json").write_text(plan.to_json())
    assert _keys(dest) != ("", "")


def test_dummy_is_a_fresh_install_with_its_own_keys_and_passwords(tarball_107: Path) -> None:
    dummy = start_server(tarball_107, DUMMY, name="lab-dummy")
    try:
        conf = (dummy.root / "etc/ispcp/ispcp.conf").read_text()
        assert re.search(r"^BASE_SERVER_IP = 127\.0\.0\.3$", conf, re.M)
        assert re.search(r"^SERVER_HOSTNAME = srv02\.ispcp\.test$", conf, re.M)
        assert sql(dummy, "SELECT COUNT(*) FROM domain;") == [["0"]]
        dead_keys = _keys_of_identity(tarball_107)
        assert _keys(dummy.root) != dead_keys
        ssh = dummy.state["ssh"]["modern"]
        r = subprocess.run(
            [
                "ssh",
                "-p",
                str(ssh["port"]),
                "-i",
                ssh["identity_file"],
                "-o",
                f"UserKnownHostsFile={ssh['known_hosts']}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"root@{ssh['host']}",
                "hostname -f; pgrep -x mariadbd >/dev/null && echo mariadb; "
                "pgrep -x ispcp_daemon >/dev/null && echo daemon",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.stdout.split() == ["srv02.ispcp.test", "mariadb", "daemon"], r.stderr
    finally:
        dummy.stop()


def _keys_of_identity(tarball: Path) -> tuple[str, str]:
    from ispcp_lib.lab.ispcp_server import ensure_server_image

    top = ensure_server_image(tarball, DEAD)[0]
    return _keys(top)


def test_the_adaptations_apply_to_1_0_5_too(tarball_107: Path, tmp_path: Path) -> None:
    tarball = tarball_107.with_name("ispcp-omega-1.0.5.tar.xz")
    if not tarball.exists():
        pytest.skip(f"no {tarball}")
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp_path, filter="fully_trusted")
    top = next(tmp_path.glob("ispcp-omega-*"))
    changed = patch_tree(top)
    assert any("ispcp_common_methods.pl" in line for line in changed)
    assert any("postfix/main.cf" in line for line in changed)
    shutil.rmtree(top)


def test_lab_cli_start_list_stop(tarball_107: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ispcp_lib.runbook.cli import main

    assert main(["lab", "start", "cli-srv", "--source", str(tarball_107)]) == 0
    out = capsys.readouterr().out
    assert "ssh -p" in out and "StrictHostKeyChecking=yes" in out
    assert main(["lab", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^cli-srv\s+srv01\.ispcp\.test\s+127\.0\.0\.2\s.*running$", listing, re.M), listing
    assert main(["lab", "stop", "cli-srv"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert main(["lab", "list"]) == 0
    assert "cli-srv" not in capsys.readouterr().out


def test_the_real_update_runs_to_congratulations(tarball_107: Path) -> None:
    """INSTALL's update procedure and the release's own ispcp-update, with the bookworm adaptations."""
    from ispcp_lib.lab.ispcp_server import run_update

    host = start_server(tarball_107, DEAD, name="lab-update")
    try:
        transcript = run_update(host)
        assert "Congratulations, you updated ispCP" in transcript
        assert (host.root / "etc/ispcp/ispcp.old.conf").exists()
    finally:
        host.stop()
