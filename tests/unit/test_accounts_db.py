"""accounts_files and account_install: strict parsing, selection, merge planning, and the write under
shadow-utils' locks on the target."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.runner import Runner
from ispcp_lib.system import account_install
from ispcp_lib.system.account_install import FilesChanged, NewFile
from ispcp_lib.system.accounts_files import AccountFiles, parse, plan_merge, select_entries

H_ROOT_OLD = "$6$oldrootsalt0000$" + "R" * 86
H_ROOT_NEW = "$6$newrootsalt0000$" + "N" * 86
H1 = "$6$saltsaltsalt001$" + "a" * 40 + "/." + "b" * 44
H2 = "$1$salt0002$" + "c" * 22
H1_OTHER = "$6$saltsaltsalt009$" + "z" * 86

OLD = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/bin/sh\n"
        "vmail:x:1004:8::/var/mail:/bin/false\n"
        "vu2001:x:2001:2001:vu-master:/var/www/virtual/a.example:/bin/false\n"
        "vu2002:x:2002:2002:vu-master:/var/www/virtual/b.example:/bin/false\n"
    ),
    "shadow": (
        f"root:{H_ROOT_OLD}:15000:0:99999:7:::\n"
        "daemon:*:15000:0:99999:7:::\n"
        "vmail:!:15000:0:99999:7:::\n"
        f"vu2001:{H1}:15001:0:99999:7:::\n"
        f"vu2002:!{H2}:15002:0:99999:7:::\n"
    ),
    "group": "root:x:0:\ndaemon:x:1:\nmail:x:8:vmail\nvu2001:x:2001:\nvu2002:x:2002:\n",
    "gshadow": "root:*::\ndaemon:*::\nmail:*::vmail\nvu2001:!::\nvu2002:!::\n",
}

TARGET = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    ),
    "shadow": (f"root:{H_ROOT_NEW}:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\nwww-data:*:19700:0:99999:7:::\n"),
    "group": "root:x:0:\ndaemon:x:1:\nmail:x:8:\nwww-data:x:33:\n",
    "gshadow": "root:*::\ndaemon:*::\nmail:*::\nwww-data:*::\n",
}

MBOX = {"mailbox_user": "vmail", "mailbox_uid": 1004, "mailbox_group": "mail", "mailbox_gid": 8}


def files(texts: dict[str, str], **changes: str) -> AccountFiles:
    data = {k: (changes.get(k, v)).encode() for k, v in texts.items()}
    return AccountFiles.from_bytes(**data, paths={k: f"/srv/old/etc/{k}" for k in data})


def merge(old: AccountFiles | None = None, target: AccountFiles | None = None, resolutions=None, **mbox):
    sel = select_entries(old or files(OLD), "vu", **{**MBOX, **mbox})
    return plan_merge(target or files(TARGET), sel, resolutions, today=19500)


def row(plan, key: str) -> dict:
    kind, name = key.split(":")
    [found] = [r for r in plan.rows if r["kind"] == kind and r["name"] == name]
    return found


def old_line(name: str, kind: str) -> str:
    return next(line for line in OLD[kind].splitlines() if line.split(":")[0] == name)


# ------------------------------------------------------------------------------------------ golden cases


def test_add_golden_all_four_files():
    plan = merge()
    assert plan.ok and plan.conflicts == []
    out = plan.new.render()
    assert out["passwd"].decode() == TARGET["passwd"] + "".join(
        old_line(n, "passwd") + "\n" for n in ("vmail", "vu2001", "vu2002")
    )
    assert out["shadow"].decode() == TARGET["shadow"] + "".join(
        old_line(n, "shadow") + "\n" for n in ("vmail", "vu2001", "vu2002")
    )
    assert out["group"] == b"root:x:0:\ndaemon:x:1:\nmail:x:8:vmail\nwww-data:x:33:\nvu2001:x:2001:\nvu2002:x:2002:\n"
    assert out["gshadow"] == b"root:*::\ndaemon:*::\nmail:*::vmail\nwww-data:*::\nvu2001:!::\nvu2002:!::\n"
    # The hashes are the old bytes exactly (the '.' '/' and the '!' lock prefix included).
    assert f"vu2001:{H1}:15001:0:99999:7:::\n".encode() in out["shadow"]
    assert f"vu2002:!{H2}:15002:0:99999:7:::\n".encode() in out["shadow"]
    assert plan.new.changed() == ["passwd", "shadow", "group", "gshadow"]
    outcomes = {(r["kind"], r["name"]): r["outcome"] for r in plan.rows}
    assert outcomes == {
        ("user", "vmail"): "added",
        ("user", "vu2001"): "added",
        ("user", "vu2002"): "added",
        ("group", "mail"): "updated",
        ("group", "vu2001"): "added",
        ("group", "vu2002"): "added",
    }
    assert row(plan, "group:mail")["detail"] == "members +vmail"
    assert set(plan.rows[0]) == {"kind", "name", "id", "outcome", "detail", "conflict"}


def test_secrets_listed_and_never_in_rows_details_or_reprs():
    plan = merge(
        target=files(
            TARGET,
            shadow=TARGET["shadow"] + f"vu2001:{H1_OTHER}:19700:0:99999:7:::\n",
            passwd=TARGET["passwd"] + "vu2001:x:2001:2001::/x:/bin/false\n",
        )
    )
    hashes = (H1, H2, "!" + H2, H1_OTHER, H_ROOT_NEW)  # selected old entries + the whole target
    assert set(hashes) <= set(plan.secrets)
    hashes += (H_ROOT_OLD,)
    assert not {"x", "*", "!", "!!"} & set(plan.secrets)
    shown = repr(plan.rows) + repr(plan.warnings) + repr(plan) + repr(plan.new) + repr(plan.new.shadow.entries)
    for h in hashes:
        assert h not in shown and h[:20] not in shown


def test_identical_renders_byte_identical():
    # Target = the old server's own files (no final newline, a blank trailing line in group).
    texts = {**OLD, "passwd": OLD["passwd"].rstrip("\n"), "group": OLD["group"] + "\n"}
    target = files(texts)
    plan = merge(target=target)
    assert plan.ok
    assert {r["outcome"] for r in plan.rows} == {"identical"}
    assert all(r["detail"] == "" for r in plan.rows)
    assert plan.new.render() == {k: v.encode() for k, v in texts.items()}
    assert plan.new.changed() == []


def test_half_written_merge_is_completed_from_the_old_shadow_and_gshadow_entries():
    # An interrupted write renamed passwd and group into place, not shadow and gshadow.
    first = merge().new.render()
    half = files(TARGET, passwd=first["passwd"].decode(), group=first["group"].decode())
    plan = merge(target=half)
    assert plan.ok and plan.conflicts == []
    assert row(plan, "user:vu2001")["outcome"] == "completed"
    assert row(plan, "group:vu2002")["outcome"] == "completed"
    assert plan.new.render() == first
    assert plan.new.changed() == ["shadow", "gshadow"]


def test_identical_with_other_hash_is_reported_not_replaced():
    target_shadow = OLD["shadow"].replace(H1, H1_OTHER)
    plan = merge(target=files(OLD, shadow=target_shadow))
    r = row(plan, "user:vu2001")
    assert (r["outcome"], r["detail"]) == ("identical", "hash differs")
    assert plan.new.render()["shadow"] == target_shadow.encode()


def test_identical_with_other_hash_take_old_replaces_in_place():
    target_shadow = OLD["shadow"].replace(H1, H1_OTHER)
    plan = merge(target=files(OLD, shadow=target_shadow), resolutions={"user:vu2001": "take_old"})
    assert row(plan, "user:vu2001")["outcome"] == "replaced"
    assert plan.new.render()["shadow"] == OLD["shadow"].encode()  # same line, same position


# ------------------------------------------------------------------------------------------- conflicts


def test_name_id_mismatch():
    target = files(TARGET, passwd=TARGET["passwd"] + "vu2001:x:2005:33::/x:/bin/false\n")
    plan = merge(target=target)
    r = row(plan, "user:vu2001")
    assert r["outcome"] == "conflict" and r["conflict"] == "name_id_mismatch"
    assert r["detail"] == "name_id_mismatch: target has vu2001 with UID 2005, old has 2001"
    assert not plan.ok and plan.new is None


def test_group_name_id_mismatch_cascades_to_primary_group():
    plan = merge(target=files(TARGET, group=TARGET["group"] + "vu2001:x:2777:\n"))
    g = row(plan, "group:vu2001")
    assert g["detail"] == "name_id_mismatch: target has vu2001 with GID 2777, old has 2001"
    u = row(plan, "user:vu2001")
    assert (u["outcome"], u["conflict"]) == ("conflict", "missing_primary_group")


def test_id_taken():
    target = files(TARGET, passwd=TARGET["passwd"] + "legacy:x:2001:33::/x:/bin/false\n")
    plan = merge(target=target)
    r = row(plan, "user:vu2001")
    assert r["outcome"] == "conflict"
    assert r["detail"] == "id_taken: UID 2001 already used by target user legacy"
    assert not plan.ok


def test_duplicate_id_inside_the_old_selection_is_id_taken():
    old = files(OLD, passwd=OLD["passwd"] + "vu3001:x:2001:2001::/x:/bin/false\n")
    plan = merge(old=old)
    assert row(plan, "user:vu2001")["conflict"] == "id_taken"
    assert "shared with user vu3001" in row(plan, "user:vu2001")["detail"]


def test_unknown_member():
    plan = merge(old=files(OLD, group=OLD["group"].replace("vu2002:x:2002:", "vu2002:x:2002:vu2002,ghost")))
    r = row(plan, "group:vu2002")
    assert (r["outcome"], r["conflict"]) == ("conflict", "unknown_member")
    assert r["detail"] == "unknown_member: member(s) ghost not in the merged passwd"


def test_member_that_was_not_merged_is_unknown():
    # vu2001 stays out (id taken), so a group listing it would dangle.
    old = files(OLD, group=OLD["group"].replace("vu2002:x:2002:", "vu2002:x:2002:vu2001"))
    target = files(TARGET, passwd=TARGET["passwd"] + "legacy:x:2001:33::/x:/bin/false\n")
    plan = merge(old=old, target=target, resolutions={"user:vu2001": "skip"})
    assert row(plan, "group:vu2002")["conflict"] == "unknown_member"


def test_missing_primary_group():
    old = files(
        OLD,
        passwd=OLD["passwd"] + "vu2003:x:2003:3000::/x:/bin/false\n",
        shadow=OLD["shadow"] + "vu2003:!:15000:0:99999:7:::\n",
    )
    plan = merge(old=old)
    r = row(plan, "user:vu2003")
    assert r["detail"] == "missing_primary_group: primary GID 3000 not in the merged group file"
    assert not plan.ok


# ----------------------------------------------------------------------------------------- resolutions


def test_skip_leaves_the_entry_out_everywhere():
    target = files(TARGET, passwd=TARGET["passwd"] + "legacy:x:2001:33::/x:/bin/false\n")
    plan = merge(target=target, resolutions={"user:vu2001": "skip"})
    assert plan.ok
    r = row(plan, "user:vu2001")
    assert r["outcome"] == "skipped" and r["conflict"] == "id_taken"
    out = plan.new.render()
    assert b"vu2001" not in out["passwd"] and b"vu2001" not in out["shadow"]
    assert b"vu2001:x:2001:" in out["group"]  # the group is its own row


def test_keep_target_on_name_id_mismatch():
    passwd = TARGET["passwd"] + "vu2001:x:2005:33::/x:/bin/false\n"
    plan = merge(target=files(TARGET, passwd=passwd), resolutions={"user:vu2001": "keep_target"})
    assert plan.ok and row(plan, "user:vu2001")["outcome"] == "kept"
    out = plan.new.render()
    assert out["passwd"].startswith(passwd.encode())
    assert b"vu2001:x:2001" not in out["passwd"]


def test_take_old_on_name_id_mismatch_replaces_in_place():
    passwd = TARGET["passwd"].replace("www-data", "vu2001:x:2005:33::/x:/bin/false\nwww-data", 1)
    shadow = TARGET["shadow"] + f"vu2001:{H1_OTHER}:19700:0:99999:7:::\n"
    plan = merge(target=files(TARGET, passwd=passwd, shadow=shadow), resolutions={"user:vu2001": "take_old"})
    assert plan.ok and row(plan, "user:vu2001")["outcome"] == "replaced"
    lines = plan.new.render()["passwd"].decode().splitlines()
    assert lines[2] == old_line("vu2001", "passwd")  # where the target had it, before www-data
    assert lines[3].startswith("www-data:")
    assert f"vu2001:{H1}:15001".encode() in plan.new.render()["shadow"]
    assert H1_OTHER.encode() not in plan.new.render()["shadow"]


def test_take_old_on_id_taken_is_refused_when_the_owner_stays():
    target = files(TARGET, passwd=TARGET["passwd"] + "legacy:x:2001:33::/x:/bin/false\n")
    plan = merge(target=target, resolutions={"user:vu2001": "take_old"})
    r = row(plan, "user:vu2001")
    assert r["outcome"] == "conflict"
    assert "take_old refused unless legacy is replaced too" in r["detail"]
    assert not plan.ok


def test_take_old_on_swapped_ids_needs_both_owners_replaced():
    passwd = TARGET["passwd"] + "vu2001:x:2002:33::/a:/bin/false\nvu2002:x:2001:33::/b:/bin/false\n"
    target = files(TARGET, passwd=passwd)
    one = merge(target=target, resolutions={"user:vu2001": "take_old"})
    assert row(one, "user:vu2001")["conflict"] == "name_id_mismatch,id_taken"
    assert "take_old refused" in row(one, "user:vu2001")["detail"]
    both = merge(target=target, resolutions={"user:vu2001": "take_old", "user:vu2002": "take_old"})
    assert both.ok
    assert [row(both, f"user:{n}")["outcome"] for n in ("vu2001", "vu2002")] == ["replaced", "replaced"]
    lines = both.new.render()["passwd"].decode().splitlines()
    assert lines[3:5] == [old_line("vu2001", "passwd"), old_line("vu2002", "passwd")]


def test_resolution_keys_and_values_are_checked():
    with pytest.raises(InputError, match="'user:vu9999' names no selected user or group"):
        merge(resolutions={"user:vu9999": "skip"})
    with pytest.raises(InputError, match="unknown resolution 'overwrite'"):
        merge(resolutions={"user:vu2001": "overwrite"})


# ------------------------------------------------------------------------------- members and mailbox


def test_member_lists_of_an_existing_group_are_merged():
    target = files(
        TARGET,
        passwd=TARGET["passwd"] + "postfix:x:104:8::/var/spool/postfix:/usr/sbin/nologin\n",
        group=TARGET["group"].replace("mail:x:8:", "mail:x:8:postfix"),
        gshadow=TARGET["gshadow"].replace("mail:*::", "mail:*::postfix"),
    )
    plan = merge(target=target)
    assert row(plan, "group:mail")["outcome"] == "updated"
    out = plan.new.render()
    assert b"\nmail:x:8:postfix,vmail\n" in out["group"]
    assert b"\nmail:*::postfix,vmail\n" in out["gshadow"]


def test_keep_target_on_existing_group_merges_nothing():
    plan = merge(resolutions={"group:mail": "keep_target"})
    assert row(plan, "group:mail")["outcome"] == "kept"
    assert b"\nmail:x:8:\n" in plan.new.render()["group"]


def test_mailbox_uid_in_old_passwd_differs_from_ispcp_conf():
    plan = merge(old=files(OLD, passwd=OLD["passwd"].replace("vmail:x:1004:", "vmail:x:1000:")))
    r = row(plan, "user:vmail")
    assert (r["outcome"], r["id"]) == ("conflict", 1000)
    assert r["detail"] == "conf_mismatch: old passwd says vmail=1000 but ispcp.conf says 1004"
    assert not plan.ok
    old = files(OLD, passwd=OLD["passwd"].replace("vmail:x:1004:", "vmail:x:1000:"))
    # Skipping vmail leaves it dangling in the old `mail` member list ...
    skipped = merge(old=old, resolutions={"user:vmail": "skip"})
    assert row(skipped, "user:vmail")["outcome"] == "skipped"
    assert row(skipped, "group:mail")["conflict"] == "unknown_member"
    # ... until the target's `mail` is kept as it is.
    both = merge(old=old, resolutions={"user:vmail": "skip", "group:mail": "keep_target"})
    assert both.ok and b"vmail" not in both.new.render()["passwd"]
    assert b"\nmail:x:8:\n" in both.new.render()["group"]


def test_mailbox_gid_mismatch_for_the_group():
    plan = merge(mailbox_gid=12)
    r = row(plan, "group:mail")
    assert (r["outcome"], r["conflict"]) == ("conflict", "conf_mismatch")
    assert r["detail"] == "conf_mismatch: old group says mail=8 but ispcp.conf says 12; members +vmail"


def test_mailbox_user_missing_from_old_files():
    old = files(
        OLD,
        passwd=OLD["passwd"].replace("vmail:x:1004:8::/var/mail:/bin/false\n", ""),
        shadow=OLD["shadow"].replace("vmail:!:15000:0:99999:7:::\n", ""),
    )
    plan = merge(old=old)
    r = row(plan, "user:vmail")
    assert r["outcome"] == "conflict"
    assert (
        r["detail"]
        == "conf_mismatch: old passwd has no user vmail; ispcp.conf says vmail=1004; the target lacks it too"
    )
    # Harmless when the new server already has it with the ispcp.conf UID.
    target = files(
        TARGET,
        passwd=TARGET["passwd"] + "vmail:x:1004:8::/var/mail:/bin/false\n",
        group=TARGET["group"].replace("mail:x:8:", "mail:x:8:vmail"),
    )
    fine = merge(old=old, target=target)
    assert fine.ok and row(fine, "user:vmail")["outcome"] == "kept"


def test_missing_old_shadow_entry_adds_a_locked_one_and_warns():
    old = files(OLD, shadow=OLD["shadow"].replace(f"vu2001:{H1}:15001:0:99999:7:::\n", ""))
    plan = merge(old=old)
    assert plan.ok
    assert b"\nvu2001:!:19500::::::\n" in plan.new.render()["shadow"]
    assert plan.warnings == ["user:vu2001: no shadow entry in the old files: added a locked one"]
    assert "added a locked one" in row(plan, "user:vu2001")["detail"]
    assert parse("shadow", plan.new.render()["shadow"]).get("vu2001").fields[1] == "!"


def test_prefix_must_not_be_empty():
    with pytest.raises(InputError, match="prefix"):
        select_entries(files(OLD), "", **MBOX)


# ---------------------------------------------------------------------------------------------- parsing

BAD = [
    ("passwd", "root:x:0:0:root:/root:/bin/bash\nvu2001:x:2001:2001:/home:/bin/false\n", 2, "has 6 colon"),
    (
        "passwd",
        "root:x:0:0:root:/root:/bin/bash\nvu2001:x:20o1:2001::/h:/bin/false\n",
        2,
        "UID of 'vu2001' is not",
    ),
    ("passwd", "root:x:0:-5:root:/root:/bin/bash\n", 1, "GID of 'root' is negative"),
    ("passwd", "root:x:0:0:root:/root:/bin/bash\n:x:5:5::/h:/bin/sh\n", 2, "has an empty name"),
    ("passwd", "# comment\nroot:x:0:0:root:/root:/bin/bash\n", 1, "is a comment"),
    ("passwd", "root:x:0:0:root:/root:/bin/bash\n\ndaemon:x:1:1::/:/bin/sh\n", 2, "is blank"),
    ("passwd", "root:x:0:0:root:/root:/bin/bash\r\n", 1, "control character"),
    ("passwd", "root:x:0:0:root:/root:/bin/bash\nroot:x:5:5::/h:/bin/sh\n", 2, "already appears on line 1"),
    ("passwd", "root:x:4294967295:0:root:/root:/bin/bash\n", 1, "UID of 'root' is above"),
    ("shadow", f"root:{H_ROOT_OLD}:19000:0:99999:7::\n", 1, "has 8 colon"),
    ("group", "root:x:0:\nmail:x:eight:\n", 2, "GID of 'mail' is not a decimal number"),
    ("group", "root:x:0\n", 1, "has 3 colon"),
    ("gshadow", "root:*::\nmail:*:\n", 2, "has 3 colon"),
]


@pytest.mark.parametrize(("kind", "text", "lineno", "problem"), BAD)
def test_malformed_lines(kind, text, lineno, problem):
    with pytest.raises(InputError) as exc:
        files(OLD, **{kind: text})
    msg = str(exc.value)
    assert msg.startswith(f"{kind} line {lineno} (/srv/old/etc/{kind}): ")
    assert problem in msg and "Fix: " in msg
    assert H_ROOT_OLD not in msg


def test_shadow_without_passwd_entry():
    with pytest.raises(InputError) as exc:
        files(OLD, shadow=OLD["shadow"] + f"ghost:{H1}:15000:0:99999:7:::\n")
    msg = str(exc.value)
    assert msg.startswith("shadow line 6 (/srv/old/etc/shadow): entry 'ghost' has no passwd entry")
    assert "Fix: " in msg and H1 not in msg


def test_gshadow_without_group_entry():
    with pytest.raises(InputError, match=r"gshadow line 6 .*'ghost' has no group entry"):
        files(OLD, gshadow=OLD["gshadow"] + "ghost:!::\n")


def test_non_utf8_bytes():
    data = b"root:x:0:0:root:/root:/bin/bash\nvu2001:x:2001:2001:J\xfcrgen:/h:/bin/false\n"
    with pytest.raises(InputError) as exc:
        parse("passwd", data, "/srv/old/etc/passwd")
    msg = str(exc.value)
    assert msg.startswith(
        "passwd line 2 (/srv/old/etc/passwd): byte 21 of the line (offset 52 in the file) is not UTF-8"
    )
    assert "iconv" in msg


def test_trailing_blank_lines_and_missing_newline_round_trip():
    for data in (b"root:x:0:\n\n\n", b"root:x:0:", b"root:x:0:\n  \n", b""):
        db = parse("group", data)
        assert db.render() == data
        assert [e.name for e in db] == ([] if not data else ["root"])


def test_changed_file_drops_trailing_blanks_and_ends_with_newline():
    target = files(TARGET, group=TARGET["group"].rstrip("\n") + "\n\n")
    plan = merge(target=target)
    assert plan.new.render()["group"].endswith(b"vu2002:x:2002:\n")
    parse("group", plan.new.render()["group"])  # and stays parseable


# -------------------------------------------------------------------------------------------- scale


def test_twenty_thousand_accounts_merge():
    # Correctness at scale; the speed goal is printed by benchmarks/accounts_merge.py, not timed here.
    n = 20_000
    ids = range(2000, 2000 + n)
    old = AccountFiles.from_bytes(
        "".join(f"vu{i}:x:{i}:{i}:vu-master:/var/www/virtual/d{i}:/bin/false\n" for i in ids).encode(),
        "".join(f"vu{i}:$6$s{i}$" + "h" * 86 + ":15000:0:99999:7:::\n" for i in ids).encode(),
        "".join(f"vu{i}:x:{i}:\n" for i in ids).encode(),
        "".join(f"vu{i}:!::\n" for i in ids).encode(),
    )
    sel = select_entries(old, "vu", "vmail", 1004, "mail", 8)
    plan = plan_merge(files(TARGET, passwd=TARGET["passwd"] + "vmail:x:1004:8::/var/mail:/bin/false\n"), sel)
    out = plan.new.render()
    assert plan.ok and out["passwd"].count(b"\n") == 3 + 1 + n


# ------------------------------------------------------------------------------- lock-and-write on the target

LOCKF_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)  # what glibc's lckpwdf() takes
print("locked", flush=True)
sys.stdin.read()
"""
LOCKF_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except OSError:
    print("held")
"""


def make_root(tmp_path: Path) -> Path:
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    for name in ("passwd", "shadow", "group", "gshadow"):
        (etc / name).write_text(TARGET[name])
    os.chmod(etc / "shadow", 0o640)
    return etc


def target_of(etc: Path) -> tuple[LocalConnection, Runner]:
    conn = LocalConnection(etc.parent)
    return conn, Runner(apply=True, connection=conn)


def base_of(etc: Path) -> dict[str, bytes | None]:
    return {name: (etc / name).read_bytes() for name in ("passwd", "shadow", "group", "gshadow")}


def new_files(etc: Path) -> list[NewFile]:
    new = merge(target=files(TARGET)).new.render()
    return [
        NewFile(name, new[name], stat.S_IMODE((etc / name).stat().st_mode), 0, 0)
        for name in ("passwd", "shadow", "group", "gshadow")
    ]


def install(etc: Path, timeout: float = 0.5, base: dict | None = None) -> None:
    conn, runner = target_of(etc)
    account_install.install(runner, conn, "/etc", base or base_of(etc), new_files(etc), timeout)


@contextmanager
def holding_lockf(etc: Path) -> Iterator[subprocess.Popen]:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKF_HOLDER, str(etc / ".pwd.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        yield holder
    finally:
        holder.communicate(b"", timeout=30)


def test_all_four_files_are_written_with_their_modes_and_no_lock_is_left(tmp_path):
    etc = make_root(tmp_path)
    install(etc)
    for f in new_files(etc):
        assert (etc / f.name).read_bytes() == f.data
    assert stat.S_IMODE((etc / "shadow").stat().st_mode) == 0o640
    assert b"vu2001" in (etc / "shadow").read_bytes()
    assert sorted(p.name for p in etc.iterdir()) == [".pwd.lock", "group", "gshadow", "passwd", "shadow"]


def test_the_lckpwdf_lock_of_another_process_is_waited_for_then_reported(tmp_path):
    etc = make_root(tmp_path)
    before = base_of(etc)
    with holding_lockf(etc) as holder:
        start = time.monotonic()
        with pytest.raises(PreconditionFailed, match=f"still locked after 0.5 s \\(held by PID {holder.pid}\\)"):
            install(etc)
        assert time.monotonic() - start >= 0.5
        assert base_of(etc) == before
    install(etc)
    assert base_of(etc) != before


def test_a_link_lock_of_a_live_process_is_waited_for_a_stale_one_removed(tmp_path):
    etc = make_root(tmp_path)
    live = subprocess.Popen(["sleep", "30"])
    try:
        (etc / "group.lock").write_text(str(live.pid))
        with pytest.raises(PreconditionFailed, match=f"held by PID {live.pid}"):
            install(etc, timeout=0.3)
        assert (etc / "group.lock").read_text() == str(live.pid)  # someone else's lock is never taken away
        assert not (etc / "passwd.lock").exists()  # what was taken before the failure is released
    finally:
        live.kill()
        live.wait()
    install(etc, timeout=1)  # now stale: its process is gone
    assert not (etc / "group.lock").exists()


def test_a_killed_write_leaves_nothing_after_clear_leftovers(tmp_path):
    etc = make_root(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        for name in ("passwd", "group"):  # what a killed write left: its locks, its pid files, its stage
            (etc / f"{name}.lock").write_text(str(dead.pid))
        (etc / f"shadow.{dead.pid}").write_text(str(dead.pid))
        (etc / "gshadow.lock").write_text(str(live.pid))  # a live tool's lock stays
        (etc / ".ispcp-accounts.ab12cd34").mkdir()
        ((etc / ".ispcp-accounts.ab12cd34") / "passwd").write_text("half")
        conn, runner = target_of(etc)
        removed = account_install.clear_leftovers(runner, conn, "/etc")
        assert sorted(Path(p).name for p in removed) == sorted(
            ["passwd.lock", "group.lock", f"shadow.{dead.pid}", ".ispcp-accounts.ab12cd34"]
        )
        assert sorted(p.name for p in etc.iterdir()) == ["group", "gshadow", "gshadow.lock", "passwd", "shadow"]
    finally:
        live.kill()
        live.wait()


def test_a_lock_file_without_pid_fails_at_once(tmp_path):
    etc = make_root(tmp_path)
    (etc / "gshadow.lock").write_text("garbage")
    start = time.monotonic()
    with pytest.raises(PreconditionFailed, match="holds no valid PID"):
        install(etc, timeout=10)
    assert time.monotonic() - start < 5
    assert not (etc / "passwd.lock").exists() and not (etc / "group.lock").exists()


def test_files_changed_since_reading_are_not_overwritten(tmp_path):
    etc = make_root(tmp_path)
    base = base_of(etc)
    with open(etc / "passwd", "a") as fh:
        fh.write("late:x:3000:3000::/:/bin/false\n")  # a useradd between reading and locking
    changed = base_of(etc)
    with pytest.raises(FilesChanged):
        install(etc, base=base)
    assert base_of(etc) == changed
    assert sorted(p.name for p in etc.iterdir()) == [".pwd.lock", "group", "gshadow", "passwd", "shadow"]


def test_the_locks_are_shadow_utils_own_while_the_write_waits(tmp_path):
    """While the command holds its locks (its input not sent yet), lckpwdf() and <file>.lock are ours."""
    etc = make_root(tmp_path)
    conn, _runner = target_of(etc)
    files = new_files(etc)
    argv = account_install.install_argv(conn, "/etc", base_of(etc), files, 5)
    proc = conn.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (etc / "shadow.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = subprocess.run([sys.executable, "-c", LOCKF_PROBE, str(etc / ".pwd.lock")], capture_output=True)
        assert probe.stdout.strip() == b"held"
        for name in ("passwd", "group", "gshadow", "shadow"):
            assert (etc / f"{name}.lock").read_text() == str(proc.pid)  # one PID (perl exec'd sh), no newline
    finally:
        out, err = proc.communicate(account_install.tar_stream(files), timeout=30)
    assert proc.returncode == 0, err
    probe = subprocess.run([sys.executable, "-c", LOCKF_PROBE, str(etc / ".pwd.lock")], capture_output=True)
    assert probe.stdout.strip() == b"free"


USERADD = Path("/usr/sbin/useradd")
needs_useradd = pytest.mark.skipif(not USERADD.exists() or os.geteuid() != 0, reason="needs /usr/sbin/useradd and root")


def useradd_waits(etc: Path, argv: list[str]) -> None:
    shutil.copy("/etc/login.defs", etc / "login.defs")
    conn, _runner = target_of(etc)
    files = new_files(etc)
    ours = conn.popen(
        account_install.install_argv(conn, "/etc", base_of(etc), files, 5),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not (etc / "shadow.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    theirs = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2.5)
    assert theirs.poll() is None, "useradd did not wait for our lock"
    _out, err = ours.communicate(account_install.tar_stream(files), timeout=30)
    assert ours.returncode == 0, err
    out, _ = theirs.communicate(timeout=30)
    assert theirs.returncode == 0, out
    passwd = (etc / "passwd").read_text()
    assert "\nvu2001:x:2001:" in passwd and "\nnewuser:x:" in passwd  # both writes, neither lost


@needs_useradd
def test_useradd_prefix_waits_for_the_lock(tmp_path):
    # shadow-utils with --prefix only honours the <file>.lock link locks, not .pwd.lock.
    etc = make_root(tmp_path)
    useradd_waits(etc, [str(USERADD), "--prefix", str(etc.parent), "-M", "newuser"])


@needs_useradd
def test_useradd_root_waits_for_the_lock(tmp_path):
    # --root chroots and calls glibc lckpwdf(): the fcntl lock on <root>/etc/.pwd.lock.
    etc = make_root(tmp_path)
    useradd_waits(etc, [str(USERADD), "--root", str(etc.parent), "-M", "newuser"])


def test_prefix_selects_only_prefix_plus_digits():
    old = files(OLD, passwd=OLD["passwd"] + "vuurmuur:x:3100:3100::/x:/bin/false\n")
    plan = merge(old=old)
    assert not [r for r in plan.rows if r["name"] == "vuurmuur"]
    assert row(plan, "user:vu2001")["outcome"] == "added"
