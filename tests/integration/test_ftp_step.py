"""ftp on the restored sandbox: the restore path, the set-password path, and broken inputs."""

from __future__ import annotations

import re

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.facts import proftpd
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.sandbox.world import stable_fingerprint
from ispcp_lib.steps import ftp
from tests.integration.recovered_world import (  # noqa: F401 (fixtures)
    open_ctx,
    recovered_fixture,
    recovered_template_fixture,
    sync_proftpd,
)

FTPD = "etc/proftpd.conf"
WORKING = "etc/ispcp/proftpd/working/proftpd.conf"


def login_works(world, password: str) -> bool:
    srv = world.target_mysql()
    return srv.login_error("vftp", password, "ispcp") is None


def test_restore_path(recovered) -> None:
    world = recovered
    old_pw, new_pw = world.credentials["old"]["vftp"], world.credentials["new"]["vftp"]
    assert not login_works(world, new_pw) and login_works(world, old_pw)  # the restored mysql has the old one
    before = stable_fingerprint(world)

    dry = ftp.run(open_ctx(world))
    assert dry.status == "planned"
    assert stable_fingerprint(world) == before
    assert any("restore FTPD_CONF_FILE /etc/proftpd.conf from the backup" in c for c in dry.changes)
    assert any("restore working copy" in c for c in dry.changes)
    assert not any("MySQL password" in c for c in dry.changes)
    html = dry._repr_html_()
    assert "SQLConnectInfo" in html and old_pw not in html and new_pw not in html
    # The diff shows the line, not the password: the dummy's and the old one as two different fingerprints.
    assert len(set(re.findall(r"vftp «redacted #([0-9a-f]{8})»", html))) == 2

    done = ftp.run(open_ctx(world, apply=True))
    assert done.status == "done"
    for rel in (FTPD, WORKING):
        assert (world.target_root / rel).read_bytes() == (world.backup_root / rel).read_bytes()
    assert len(done.backups) == 2  # the dummy install's two copies are kept
    assert done.tables[-1].frame["result"].tolist() == ["ok"]
    assert old_pw not in done._repr_html_() and old_pw not in str(done.as_dict())

    again = ftp.run(open_ctx(world, apply=True))
    assert again.status == "noop" and "agrees on the vftp password" in again.noop_reason


def test_set_password_path(recovered) -> None:
    world = recovered
    old_pw, new_pw = world.credentials["old"]["vftp"], world.credentials["new"]["vftp"]
    for rel in (FTPD, WORKING):
        (world.backup_root / rel).unlink()  # the old proftpd.conf did not survive
    before = stable_fingerprint(world)
    dry = ftp.run(open_ctx(world))
    assert dry.changes == ["set the MySQL password of vftp@localhost to the one in proftpd.conf"]
    assert stable_fingerprint(world) == before
    assert not login_works(world, new_pw)

    done = ftp.run(open_ctx(world, apply=True))
    assert done.status == "done" and done.backups == []  # no file touched
    assert login_works(world, new_pw) and not login_works(world, old_pw)
    assert [r["when"] for r in done.tables[-1].frame.to_dict("records")] == ["before", "after"]
    assert done.tables[-1].frame["result"].tolist() == ["FAIL", "ok"]

    again = ftp.run(open_ctx(world, apply=True))
    assert again.status == "noop"


def test_copies_that_disagree_are_synced(recovered) -> None:
    world = recovered
    sync_proftpd(world)
    old_pw = world.credentials["old"]["vftp"]
    working = world.target_root / WORKING
    working.write_text(proftpd.with_password(working.read_text(), "Wr0ngWorkingCopy"))
    done = ftp.run(open_ctx(world, apply=True))
    assert proftpd.parse(working.read_text()).password == old_pw
    assert len(done.changes) == 1 and WORKING.split("etc/")[1] in done.changes[0]
    assert "Wr0ngWorkingCopy" not in done._repr_html_()


def test_missing_grants_are_restored(recovered) -> None:
    world = recovered
    sync_proftpd(world)
    root = world.target_mysql().connect("debian-sys-maint", world.credentials["old"]["debian_sys_maint"])
    with root.cursor() as cur:
        cur.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'vftp'@'localhost'")
    root.close()
    done = ftp.run(open_ctx(world, apply=True))
    assert any("grant vftp@localhost SELECT, INSERT, UPDATE, DELETE" in c for c in done.changes)
    ok, _ = proftpd.check_vftp(open_ctx(world), proftpd.parse((world.target_root / FTPD).read_text()))
    assert ok


def test_no_sqlconnectinfo_anywhere(recovered) -> None:
    world = recovered
    for root in (world.target_root, world.backup_root):
        for rel in (FTPD, WORKING):
            p = root / rel
            p.write_text("\n".join(ln for ln in p.read_text().splitlines() if "SQLConnectInfo" not in ln) + "\n")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        ftp.run(open_ctx(world, apply=True))
    message = info.value.result.errors[0]
    assert "no proftpd.conf copy" in message and "SQLConnectInfo ispcp@localhost vftp" in message
    assert stable_fingerprint(world) == before


def test_mysql_stopped_fails_before_any_change(recovered) -> None:
    world = recovered
    world.stop()
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        ftp.run(open_ctx(world, apply=True))
    assert "MySQL server" in info.value.result.errors[0] and "mysql_restore" in info.value.result.errors[0]
    assert stable_fingerprint(world) == before


def test_no_admin_login_fails_before_any_file_changes(recovered) -> None:
    """The backup's copies carry a password MySQL does not know, and no admin login could set it: nothing
    may be written, or the config would name a password the database refuses."""
    world = recovered
    for rel in (FTPD, WORKING):
        p = world.backup_root / rel
        p.write_text(proftpd.with_password(p.read_text(), "Neither-old-nor-new-1"))
    for root in (world.target_root, world.backup_root):
        cnf = root / "etc/mysql/debian.cnf"
        cnf.write_text(cnf.read_text().replace("password", "#password"))
        conf = IspcpConf.load(root / "etc/ispcp/ispcp.conf")  # ispCP's own login (root) is an admin too
        conf.set("DATABASE_USER", "nobody-here")
        (root / "etc/ispcp/ispcp.conf").write_text(conf.text())
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        ftp.run(open_ctx(world, apply=True))
    message = info.value.result.errors[0]
    assert "MySQL admin login" in message and "nothing was changed" in message and "mysql_maintainer" in message
    assert stable_fingerprint(world) == before
    assert info.value.result.backups == []
