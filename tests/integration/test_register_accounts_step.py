"""register_accounts against the sandbox's restored ispCP database: useradd/groupadd --prefix for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.fileops import fingerprint_diff
from ispcp_lib.core.result import Result
from ispcp_lib.ispcp import root_mycnf
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import accounts, register_accounts
from tests.helpers import restore_ispcp_only

MY_CNF = "root/.my.cnf"


def ctx_for(world: World, apply: bool = False, **options):
    ctx = open_run(**world.runbook_params(), apply=apply, resume=False, options=options)
    ctx.progress = lambda line: None
    ctx.sandbox = True  # the stand-in request manager finds the world's tree through the engine's environment
    return ctx


def passwd(world: World) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (world.target_root / "etc/passwd").read_text().splitlines()}


def group(world: World) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (world.target_root / "etc/group").read_text().splitlines()}


def sql(world: World, statement: str) -> None:
    creds = world.credentials["new"]
    with world.target_mysql().connect("root", creds["root_password"], "ispcp") as conn, conn.cursor() as cur:
        cur.execute(statement)


@pytest.fixture
def restored(world: World) -> Iterator[World]:
    """The target with the old ispcp database, the old accounts merged, and the backup's FCGI starters
    placed as a fresh ispCP would leave them before the rebuild: owned by root."""
    restore_ispcp_only(world)
    accounts.run(ctx_for(world, apply=True))
    fcgi = world.target_root / "var/www/fcgi"
    shutil.copytree(world.backup_root / "var/www/fcgi", fcgi, symlinks=True)
    for dirpath, dirs, files in os.walk(fcgi):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(dirpath, name), 0, 0)
    web = world.target_root / "var/www/virtual"
    shutil.copytree(world.backup_root / "var/www/virtual", web, symlinks=True, dirs_exist_ok=True)
    yield world


def test_deleted_user_comes_back_with_the_right_ids(restored: World) -> None:
    world = restored
    subprocess.run(["userdel", "--prefix", str(world.target_root), "vu2002"], check=True)
    assert "vu2002" not in passwd(world)
    before = stable_fingerprint(world)

    dry = register_accounts.run(ctx_for(world))
    assert dry.status == "planned"
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert [c.argv[-1] for c in dry.commands if c.planned and "useradd" in c.argv[0]] == ["vu2002"]

    own_files = {n: (world.target_root / "etc" / n).read_bytes() for n in register_accounts.ACCOUNT_FILES}
    done = register_accounts.run(ctx_for(world, apply=True))
    assert done.status == "done"
    # useradd/groupadd rewrote the account files: each was kept first, as it was before the step.
    kept = {Path(b).name: Path(b) for b in done.backups if Path(b).parent.name == "etc"}
    assert sorted(kept) == sorted(register_accounts.ACCOUNT_FILES)
    assert {n: p.read_bytes() for n, p in kept.items()} == own_files
    entry = passwd(world)["vu2002"]
    assert entry[2:4] == ["2002", "2002"] and entry[5] == "/var/www/virtual/example-002.test"
    assert entry[6] == "/bin/false"
    assert group(world)["vu2002"][2] == "2002"
    useradd = next(c for c in done.commands if "useradd" in c.argv[0])
    assert useradd.argv[1:3] == ["--prefix", str(world.target_root)] and useradd.rc == 0
    for d in world.domains:
        assert_engine_layout(world, d)
    cnf = world.target_root / MY_CNF
    assert cnf.stat().st_mode & 0o777 == 0o600
    assert "[client]" in cnf.read_text()
    assert any("--defaults-file" in " ".join(c.argv) and c.rc == 0 for c in done.commands)  # the file works
    shown = done._repr_html_() + (world.state_dir / "journal.jsonl").read_text()
    assert world.credentials["new"]["root_password"] not in shown

    again = register_accounts.run(ctx_for(world, apply=True))
    assert again.status == "noop" and "exists" in again.noop_reason
    always = register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    assert always.status == "noop" and "already belong" in always.noop_reason, always.changes


WWW_DATA, ROOT, VMAIL = 33, 0, (1004, 8)


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def assert_engine_layout(world: World, d: dict) -> None:
    """Owners and modes as ispCP 1.0.7's engine sets them (engine/ispcp-dmn-mngr), not vuX:vuX everywhere."""
    uid, gid = d["uid"], d["gid"]
    home = world.target_root / "var/www/virtual" / d["name"]
    assert mode_owner(home) == (0o770, uid, WWW_DATA)  # Apache (group www-data) must enter the web space
    for name in ("logs", "phptmp"):
        assert mode_owner(home / name) == (0o770, uid, WWW_DATA)
    if (home / "backups").exists():
        assert mode_owner(home / "backups")[1:] == (ROOT, ROOT)
    if (home / "disabled").exists():
        assert mode_owner(home / "disabled")[1:] == (WWW_DATA, WWW_DATA)
    for name in (".htpasswd", ".htgroup"):
        if (home / name).exists():
            assert mode_owner(home / name) == (0o644, ROOT, ROOT)
    for below in ("htdocs", "cgi-bin", "errors"):
        for dirpath, dirs, files in os.walk(home / below):
            for name in [".", *dirs, *files]:
                assert mode_owner(Path(dirpath, name))[1:] == (uid, gid), Path(dirpath, name)
    fcgi = world.target_root / "var/www/fcgi" / d["name"]
    assert mode_owner(fcgi) == (0o555, uid, gid)
    assert mode_owner(fcgi / "php5-fcgi-starter") == (0o550, uid, gid)
    assert mode_owner(fcgi / "php5") == (0o550, uid, gid)
    mail = world.target_root / "var/mail/virtual" / d["name"]
    if mail.exists():
        assert mode_owner(mail) == (0o700, *VMAIL)


def test_ownership_is_the_engines_not_chown_r(restored: World) -> None:
    """The guide's groups.sh re-owns whole web trees to vuX:vuX: Apache then cannot enter the 0770 root
    (every site answers 403). The step must leave the engine's mixed layout, and set it where it is wrong."""
    world = restored
    d = world.domains[0]
    home = world.target_root / "var/www/virtual" / d["name"]
    for name, owner in (("backups", (d["uid"], d["gid"])), ("disabled", (d["uid"], d["gid"]))):
        (home / name).mkdir(exist_ok=True)
        (home / name / "kept.txt").write_text("x\n")
        os.lchown(home / name / "kept.txt", 4242, 4242)  # contents the engine never re-owns
        os.lchown(home / name, *owner)
    (home / ".htpasswd").write_text("user:hash\n")
    os.lchown(home / ".htpasswd", d["uid"], d["gid"])
    os.lchown(home / "htdocs/index.html", 0, 0)
    os.chmod(home, 0o755)
    done = register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    assert done.status == "done", done.errors
    for each in world.domains:
        assert_engine_layout(world, each)
    assert mode_owner(home / "htdocs/index.html")[1:] == (d["uid"], d["gid"])
    assert mode_owner(home / "backups/kept.txt")[1:] == (4242, 4242)
    assert mode_owner(home / "disabled/kept.txt")[1:] == (4242, 4242)
    assert not any(c.argv[:2] == ["chown", "-R"] for c in done.commands)
    again = register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    assert again.status == "noop" and "as ispCP's engine sets it" in again.noop_reason


def test_cleanup_removes_our_my_cnf_or_restores_roots_own(restored: World) -> None:
    world = restored
    own = world.target_root / MY_CNF
    own.parent.mkdir(exist_ok=True)
    own.write_text("[client]\nuser = root\npassword = roots-own-secret\n")
    own.chmod(0o640)
    register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    assert "roots-own-secret" not in own.read_text() and own.stat().st_mode & 0o777 == 0o600

    ctx = ctx_for(world, apply=True)
    result = Result("cleanup", apply=True, secrets=ctx.secrets)
    ctx.current = result
    root_mycnf.remove_root_mycnf(ctx, result)
    assert result.changed == 1 and own.read_text().endswith("password = roots-own-secret\n")
    assert own.stat().st_mode & 0o777 == 0o640


def test_our_earlier_my_cnf_is_replaced_without_a_copy(restored: World) -> None:
    """Our own file from an earlier run (other credentials): no safety copy may keep its password on disk."""
    world = restored
    cnf = world.target_root / MY_CNF
    cnf.parent.mkdir(exist_ok=True)
    cnf.write_text(root_mycnf.MARKER + '\n[client]\nuser = "root"\npassword = "earlier-ours-secret"\n')
    cnf.chmod(0o600)
    ctx = ctx_for(world, apply=True, register_accounts_mode="always")
    done = register_accounts.run(ctx)
    assert done.status == "done", done.errors
    assert cnf.read_text().startswith(root_mycnf.MARKER) and "earlier-ours-secret" not in cnf.read_text()
    assert cnf.stat().st_mode & 0o777 == 0o600
    assert any(".my.cnf" in c for c in done.changes)
    assert not [b for b in done.backups if "my.cnf" in b]
    left = [p for p in world.state_dir.rglob("*") if p.is_file() and b"earlier-ours-secret" in p.read_bytes()]
    assert left == []


def test_cleanup_removes_our_my_cnf_when_root_had_none(restored: World) -> None:
    world = restored
    cnf = world.target_root / MY_CNF
    assert not cnf.exists()
    register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    assert cnf.exists()
    for apply in (False, True):
        ctx = ctx_for(world, apply=apply)
        result = Result("cleanup", apply=apply, secrets=ctx.secrets)
        ctx.current = result
        root_mycnf.remove_root_mycnf(ctx, result)
        assert result.changed == 1 and cnf.exists() is not apply
    assert not any(world.state_dir.rglob("*my.cnf*"))  # no copy of the password left behind


def test_duplicate_uid_across_domains_is_refused(restored: World) -> None:
    world = restored
    sql(world, "UPDATE domain SET domain_uid = 2001 WHERE domain_name = 'example-002.test'")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    message = info.value.result.errors[0]
    assert "UID 2001 is shared by the domains example-001.test, example-002.test" in message
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


def test_id_already_used_by_another_account_is_refused(restored: World) -> None:
    world = restored
    subprocess.run(["userdel", "--prefix", str(world.target_root), "vu2003"], check=True)
    subprocess.run(
        ["useradd", "--prefix", str(world.target_root), "-u", "2003", "-M", "-N", "-g", "100", "someone"], check=True
    )
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        register_accounts.run(ctx_for(world, apply=True))
    assert "ID 2003 for user vu2003 already belongs to the target's user someone" in info.value.result.errors[0]
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


def test_hostile_domain_name_is_refused(restored: World) -> None:
    world = restored
    sql(world, "UPDATE domain SET domain_name = '../../../etc' WHERE domain_id = 1")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))
    assert "'../../../etc'" in info.value.result.errors[0] and "no plain domain name" in info.value.result.errors[0]
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


def test_ispcp_rebuild_marks_domains_and_runs_the_request_manager(
    restored: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = restored
    monkeypatch.setenv("ISPCP_SANDBOX_SLEEP_SCALE", "0.01")  # the stand-in managers' sleep(1) becomes 10 ms
    before = stable_fingerprint(world)
    dry = register_accounts.run(ctx_for(world, register_accounts_mode="ispcp_rebuild"))
    assert dry.status == "planned" and any(c.planned and c.argv[0].endswith("ispcp-rqst-mngr") for c in dry.commands)
    assert fingerprint_diff(before, stable_fingerprint(world)) == []

    done = register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="ispcp_rebuild"))
    assert done.status == "done"
    run = next(c for c in done.commands if c.argv[0].endswith("ispcp-rqst-mngr"))
    assert run.rc == 0 and not run.planned
    # The (stand-in) request manager rebuilt every marked domain and set it back to 'ok', as ispCP's does.
    assert domain_statuses(world) == {"ok"}
    recorded = register_accounts.rebuilt_ids(ctx_for(world), "ispcp")
    assert len(recorded) == len(world.domains)
    # A second apply does not mark them all again: it knows they were rebuilt.
    again = register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="ispcp_rebuild"))
    # (The stand-in's rebuild re-owns whole web spaces, which the real engine's change path does not do, so
    # this second run may set the engine's owners again; it must not mark the domains again.)
    assert not any("domain_status" in c for c in again.changes) and any("earlier run" in n for n in again.notes)
    assert not any(c.argv[0].endswith("ispcp-rqst-mngr") for c in again.commands)
    assert domain_statuses(world) == {"ok"}


def test_ispcp_rebuild_says_when_the_request_manager_left_domains_waiting(restored: World) -> None:
    world = restored
    register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="always"))  # owners already set
    sql(world, "UPDATE domain SET domain_status = 'change'")
    again = register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="ispcp_rebuild"))
    assert again.status == "noop" and "still wait in status 'change'" in again.noop_reason


def domain_statuses(world: World) -> set[str]:
    creds = world.credentials["new"]
    with world.target_mysql().connect("root", creds["root_password"], "ispcp") as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT domain_status FROM domain")
        return {r[0] for r in cur.fetchall()}


def test_never_and_bad_mode(restored: World) -> None:
    world = restored
    assert register_accounts.run(ctx_for(world, apply=True, register_accounts_mode="never")).status == "noop"
    with pytest.raises(InputError) as info:  # refused when the run opens, before any step
        ctx_for(world, apply=True, register_accounts_mode="sometimes")
    assert "register_accounts_mode" in str(info.value)


def test_server_down_is_a_clear_precondition(stopped_world: World) -> None:
    before = stable_fingerprint(stopped_world)
    with pytest.raises(StepFailed) as info:
        register_accounts.run(ctx_for(stopped_world, apply=True, register_accounts_mode="always"))
    assert "not running" in info.value.result.errors[0]
    assert fingerprint_diff(before, stable_fingerprint(stopped_world)) == []
    assert not Path(stopped_world.target_root / MY_CNF).exists()
