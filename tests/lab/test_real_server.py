"""The real ispCP 1.0.7 lab: a provisioned dead server, the judge on it, its partial backup, a fresh dummy."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.lab.host import NamespaceHost, _mountpoints_under, processes_of
from ispcp_lib.lab.ispcp_server import patch_tree, start_server
from ispcp_lib.lab.judge import judge, report
from ispcp_lib.lab.provision import Plan, sql
from ispcp_lib.lab.roles import DEAD, DUMMY
from tests.lab.conftest import DeadBackup


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


def test_partial_backup_then_the_server_is_gone(dead_backup: DeadBackup) -> None:
    dest, plan = dead_backup.path, dead_backup.plan
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
    uid = backup_uid(dest, plan.domains[0])
    assert page.stat().st_uid == uid
    box = plan.mailboxes[0].address.split("@")
    assert list((dest / f"var/mail/virtual/{box[1]}/{box[0]}").glob("*/*"))
    assert not (dest / "etc/ispcp/bind/working").exists()  # the guide's backup has no working zones
    assert "var/lib/mysql/performance_schema" not in dead_backup.kept

    gone = dead_backup.gone
    assert processes_of(gone["root"], gone["pidns"], gone["netns"]) == []
    assert _mountpoints_under(gone["state_dir"]) == []
    assert not gone["state_dir"].exists()
    assert _keys(dest) != ("", "")


def backup_uid(backup: Path, domain: str) -> int:
    """The domain's system user as the backup's passwd has it (vu2001 … in ispCP's numbering)."""
    for line in (backup / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 5 and fields[5].rstrip("/").endswith(f"/{domain}"):
            return int(fields[2])
    raise AssertionError(f"no passwd entry with the home of {domain}")


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


def _journal_whats(root: Path, step: str) -> list[str]:
    """What the run's intent records say each changing operation of a step did."""
    records = [json.loads(line) for line in (root / "var/lib/ispcp-recovery/journal.jsonl").read_text().splitlines()]
    return [
        r["op"].get("what", "")
        for r in records
        if r.get("type") == "operation" and r.get("phase") == "intent" and r.get("step") == step
    ]


def _recover(backup: DeadBackup, tarball: Path, reports: Path, name: str, runs: int) -> tuple[Any, str]:
    """The runbook recovers `backup` into a fresh 1.0.7 dummy over SSH; checks what every scenario must show
    and returns the rehearsal (dummy still running) and the update's transcript."""
    from ispcp_lib.lab.rehearse import rehearse, summary_of

    done = rehearse(tarball, backup.path, reports, name=name, runs=runs)
    try:
        print(done.judge_text)
        summaries = [summary_of(html) for html in done.reports]
        assert done.exit_codes == [0] * runs, summaries
        statuses = {s["name"]: s["status"] for s in summaries[0]["steps"]}
        assert statuses["ispcp_update"] == "done" and statuses["cleanup"] == "done", statuses
        root = done.host.root
        transcripts = sorted((root / "var/lib/ispcp-recovery/ispcp-update").glob("attempt-*.log"))
        assert len(transcripts) == 1
        transcript = transcripts[0].read_text()
        assert "Congratulations, you updated ispCP" in transcript

        # The backup has no Bind working zones: one seeded per domain and alias, before the update.
        seeded = [w for w in _journal_whats(root, "ispcp_update") if "working zone" in w]
        assert len(seeded) == len(backup.plan.domains) + len(backup.plan.aliases)
        # The update rewrote main.cf from ispCP's template, which carried the guard: nothing to re-assert.
        assert not [w for w in _journal_whats(root, "ispcp_update") if "soft_bounce" in w]
        # Cleanup lifted the guard from Postfix and from the template.
        assert "ispcp-recovery mail guard" not in (root / "etc/ispcp/postfix/main.cf").read_text()
        assert not re.search(r"^soft_bounce\s*=\s*yes", (root / "etc/postfix/main.cf").read_text(), re.M)
        for later in summaries[1:]:  # a second apply changes nothing
            assert sum(s["changed"] for s in later["steps"]) == 0, later

        assert done.score is not None
        passed, total = done.score
        assert total >= 50 and passed == total, done.judge_text
    except BaseException:
        done.host.stop()
        raise
    return done, transcript


def test_recovery_over_ssh_into_a_real_dummy(dead_backup: DeadBackup, tarball_107: Path, tmp_path: Path) -> None:
    """Part 4: the runbook, headless over SSH with no written answers, recovers the dead server into a real
    dummy; the real ispcp-update runs to its success line; real clients then find every customer again;
    a second apply changes nothing."""
    done, _ = _recover(dead_backup, tarball_107, tmp_path / "reports", "lab-recovery", runs=2)
    done.host.stop()


def test_upgrade_recovery_from_1_0_5_into_a_1_0_7_dummy(
    dead_backup_105: DeadBackup, tarball_107: Path, tmp_path: Path
) -> None:
    """Part 5, the guide's recommendation: a 1.0.5 server's backup onto a 1.0.7 dummy. Its ispcp.conf lacks
    settings 1.0.7 has (LOCAL_DNS_RESOLVER, PHP_TIMEZONE, …); the update's merge keeps the dummy's values for
    them (its recovery mode asks only for settings still empty after the merge, and the dummy's setup
    filled them all), and updDB.php brings the 1.0.5 database schema to 1.0.7."""
    done, transcript = _recover(dead_backup_105, tarball_107, tmp_path / "reports", "lab-upgrade", runs=1)
    try:
        old = (dead_backup_105.path / "etc/ispcp/ispcp.conf").read_text()
        assert re.search(r"^Version = 1\.0\.5", old, re.M) and "LOCAL_DNS_RESOLVER" not in old
        assert "Congratulations, you updated ispCP OMEGA'1.0.7 OMEGA' successfully!" in transcript
        conf = (done.host.root / "etc/ispcp/ispcp.conf").read_text()
        assert re.search(r"^Version = 1\.0\.7", conf, re.M)
        assert re.search(r"^LOCAL_DNS_RESOLVER = (yes|no)$", conf, re.M)
        # updDB.php: the schema of 1.0.5 (revision 29) brought to 1.0.7's, with 1.0.6's new columns.
        assert int(sql(done.host, "SELECT value FROM config WHERE name='DATABASE_REVISION';")[0][0]) > 29
        assert sql(done.host, "SHOW COLUMNS FROM subdomain LIKE 'subdomain_url_forward';")
    finally:
        done.host.stop()
