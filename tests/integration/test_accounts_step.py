"""accounts on the sandbox: the merge of passwd/shadow/group/gshadow, its collisions and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.fileops import fingerprint_diff
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import accounts
from ispcp_lib.system import account_install

FILES = ("passwd", "shadow", "group", "gshadow")


def ctx_for(world: World, apply: bool = False, **options):
    return open_run(**world.runbook_params(), apply=apply, resume=False, options=options)


def lines(root: Path, name: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line for line in (root / "etc" / name).read_text().splitlines()}


def test_dry_run_apply_and_apply_again(stopped_world: World) -> None:
    world = stopped_world
    before = stable_fingerprint(world)
    dry = accounts.run(ctx_for(world))
    assert dry.status == "planned"
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    assert not (world.target_root / "etc/.pwd.lock").exists()

    done = accounts.run(ctx_for(world, apply=True))
    assert done.status == "done" and done.changed == 4
    old_passwd, old_shadow = lines(world.backup_root, "passwd"), lines(world.backup_root, "shadow")
    new_passwd, new_shadow = lines(world.target_root, "passwd"), lines(world.target_root, "shadow")
    new_group, new_gshadow = lines(world.target_root, "group"), lines(world.target_root, "gshadow")
    for d in world.domains:
        assert new_passwd[d["user"]] == old_passwd[d["user"]]
        assert new_shadow[d["user"]] == old_shadow[d["user"]]  # the hash, byte for byte
        assert new_group[d["group"]].split(":")[2] == str(d["gid"]) and d["group"] in new_gshadow
    assert new_passwd["vmail"].split(":")[2:4] == ["1004", "8"]
    assert new_passwd["mysql"] == lines(world.target_root, "passwd")["mysql"]  # the target's own stay
    # Mode and group of shadow stay Debian's; the previous files are kept.
    shadow = (world.target_root / "etc/shadow").stat()
    assert (shadow.st_mode & 0o777, shadow.st_gid) == (0o640, 42)
    kept = {Path(b).name for b in done.backups}
    assert set(FILES) <= kept
    # No password hash in the table, the diffs, the HTML or the journal.
    hashes = [line.split(":")[1] for line in old_shadow.values() if line.split(":")[1].startswith("$")]
    assert hashes
    shown = done._repr_html_() + (world.state_dir / "journal.jsonl").read_text()
    shown += "".join(d.text for d in done.diffs) + done.tables[0].frame.to_string()
    assert not [h for h in hashes if h in shown]
    assert "«redacted»" in "".join(d.text for d in done.diffs if d.path.endswith("/etc/shadow"))

    again = accounts.run(ctx_for(world, apply=True))
    assert again.status == "noop" and again.changed == 0 and "already on the target" in again.noop_reason
    assert set(again.tables[0].frame["outcome"]) == {"identical"}


def test_mailbox_ids_come_from_the_old_ispcp_conf(stopped_world: World) -> None:
    world = stopped_world
    conf = world.backup_root / "etc/ispcp/ispcp.conf"
    conf.write_text(
        conf.read_text()
        .replace("MTA_MAILBOX_UID = 1004", "MTA_MAILBOX_UID = 1010")
        .replace("MTA_MAILBOX_UID_NAME = vmail", "MTA_MAILBOX_UID_NAME = vmail2")
    )
    passwd = world.backup_root / "etc/passwd"
    passwd.write_text(passwd.read_text().replace("vmail:x:1004:8:", "vmail2:x:1010:8:"))
    shadow = world.backup_root / "etc/shadow"
    shadow.write_text(shadow.read_text().replace("vmail:", "vmail2:"))
    accounts.run(ctx_for(world, apply=True))
    assert lines(world.target_root, "passwd")["vmail2"].split(":")[2] == "1010"
    assert "vmail" not in lines(world.target_root, "passwd")


def test_collision_is_refused_until_a_resolution_names_it(stopped_world: World) -> None:
    world = stopped_world
    passwd = world.target_root / "etc/passwd"
    passwd.write_text(passwd.read_text() + "vu2001:x:3001:3001::/home/vu2001:/bin/sh\n")
    shadow = world.target_root / "etc/shadow"
    shadow.write_text(shadow.read_text() + "vu2001:!:19000:0:99999:7:::\n")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        accounts.run(ctx_for(world, apply=True))
    message = info.value.result.errors[0]
    assert "user:vu2001" in message and "accounts_resolutions" in message and "3001" in message
    assert fingerprint_diff(before, stable_fingerprint(world)) == []

    done = accounts.run(ctx_for(world, apply=True, accounts_resolutions={"user:vu2001": "keep_target"}))
    assert done.status == "done"
    assert lines(world.target_root, "passwd")["vu2001"].split(":")[2] == "3001"
    assert lines(world.target_root, "passwd")["vu2002"].split(":")[2] == "2002"


def test_id_taken_by_another_name(stopped_world: World) -> None:
    world = stopped_world
    group = world.target_root / "etc/group"
    group.write_text(group.read_text() + "webteam:x:2002:\n")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        accounts.run(ctx_for(world, apply=True))
    assert "group:vu2002" in info.value.result.errors[0] and "webteam" in info.value.result.errors[0]
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


BAD_INPUT = [
    ("passwd", lambda t: t.replace("vu2002:x:2002:2002:", "vu2002:x:2002:"), "passwd line", "fields"),
    ("passwd", lambda t: t.replace("vu2002:x:2002:", "vu2002:x:two:"), "passwd line", "not a decimal number"),
    ("shadow", lambda t: t + "ghost:!:14700:0:99999:7:::\n", "shadow line", "no passwd entry"),
    ("group", lambda t: t.replace("vu2003:x:2003:", "vu2003:x:20\xe903:"), "group line", "not a decimal"),
]


@pytest.mark.parametrize(("name", "damage", "item", "problem"), BAD_INPUT)
def test_bad_input_fails_clearly_and_changes_nothing(stopped_world: World, name, damage, item, problem) -> None:
    world = stopped_world
    path = world.backup_root / "etc" / name
    path.write_text(damage(path.read_text()))
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        accounts.run(ctx_for(world, apply=True))
    message = info.value.result.errors[0]
    assert item in message and problem in message and str(path) in message
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


def test_non_utf8_bytes_are_refused(stopped_world: World) -> None:
    world = stopped_world
    path = world.backup_root / "etc/passwd"
    path.write_bytes(path.read_bytes().replace(b"vu-master", b"M\xfcller", 1))
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        accounts.run(ctx_for(world, apply=True))
    assert "not UTF-8" in info.value.result.errors[0] and "iconv" in info.value.result.errors[0]
    assert fingerprint_diff(before, stable_fingerprint(world)) == []


HOLD_LCKPWDF = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)  # glibc's lckpwdf(), as passwd or useradd on the server take it
print("locked", flush=True)
sys.stdin.read()
"""


def test_waits_for_the_shadow_utils_lock(stopped_world: World) -> None:
    world = stopped_world
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LCKPWDF, str(world.target_root / "etc/.pwd.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        before = {n: (world.target_root / "etc" / n).read_bytes() for n in FILES}
        started = time.monotonic()
        with pytest.raises(StepFailed) as info:
            accounts.run(ctx_for(world, apply=True, accounts_lock_timeout=1))
        assert time.monotonic() - started >= 1
        assert "still locked" in info.value.result.errors[0] and f"PID {holder.pid}" in info.value.result.errors[0]
        assert before == {n: (world.target_root / "etc" / n).read_bytes() for n in FILES}
    finally:
        holder.communicate(b"", timeout=30)
    done = accounts.run(ctx_for(world, apply=True))
    assert done.status == "done"
    records = [json.loads(x) for x in (world.state_dir / "journal.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records if r.get("name") == "accounts"] == ["failed", "done"]


def test_a_change_made_meanwhile_is_merged_not_lost(stopped_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A useradd on the server between reading and locking: the step plans again and keeps its entry."""
    world = stopped_world
    passwd = world.target_root / "etc/passwd"
    real_install = account_install.install
    calls: list[int] = []

    def useradd_first(*args, **kwargs):
        if not calls:
            passwd.write_text(passwd.read_text() + "late:x:3000:100::/:/bin/false\n")
        calls.append(1)
        return real_install(*args, **kwargs)

    monkeypatch.setattr(account_install, "install", useradd_first)
    done = accounts.run(ctx_for(world, apply=True))
    assert done.status == "done" and len(calls) == 2
    merged = lines(world.target_root, "passwd")
    assert merged["late"] == "late:x:3000:100::/:/bin/false" and "vu2001" in merged
