"""user_data on the sandbox: cp -a into staging and rsync for real, owners file by file, interrupted
copies on both paths, and bad input."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.core.fileops import fingerprint, fingerprint_diff
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import user_data
from ispcp_lib.system import rsync_copy

WWW, MAIL = "var/www/virtual", "var/mail/virtual"
VMAIL = (1004, 8)
STAGING = rsync_copy.STAGING_DIR
# A POSIX ACL as the kernel stores it: user::rw- user:2001:r-- group::r-- mask::r-- other::r--
ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, uid)
    for tag, perm, uid in (
        (0x01, 6, 0xFFFFFFFF),
        (0x02, 4, 2001),
        (0x04, 4, 0xFFFFFFFF),
        (0x10, 4, 0xFFFFFFFF),
        (0x20, 4, 0xFFFFFFFF),
    )
)


def ctx_for(world: World, apply: bool = False, **options):
    ctx = open_run(**world.runbook_params(), apply=apply, resume=False, options=options)
    ctx.progress = lambda line: None  # keep the test output quiet
    return ctx


def owners(root: Path) -> dict[str, tuple[int, int]]:
    out = {".": (os.lstat(root).st_uid, os.lstat(root).st_gid)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_uid, st.st_gid)
    return out


def mtimes(root: Path) -> dict[str, int]:
    """Modification times of every entry (fingerprint() leaves them out)."""
    out = {".": os.lstat(root).st_mtime_ns}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_mtime_ns
    return out


def test_dry_run_apply_and_apply_again(stopped_world: World) -> None:
    world = stopped_world
    web = world.backup_root / WWW
    # Hard links: inside one domain, and across two domains (they must be copied by one command).
    os.link(web / "example-003.test/htdocs/index.html", web / "example-003.test/htdocs/same.html")
    os.link(web / "example-001.test/htdocs/robots.txt", web / "example-003.test/htdocs/shared-robots.txt")
    # Bits that cp without --preserve=mode leaves out: the step sets them again from its listing.
    os.chmod(web / "example-001.test/htdocs/images", 0o2775)
    os.chmod(web / "example-001.test/cgi-bin/hello.pl", 0o4755)
    os.chmod(web / "example-001.test/phptmp", 0o1770)
    # The target already holds a message and a web file of its own: they must survive, the message re-owned.
    extra_mail = world.target_root / MAIL / "example-001.test/info/new/1290000000.new-server"
    extra_mail.parent.mkdir(parents=True)
    extra_mail.write_text("delivered on the new server\n")
    extra_web = world.target_root / WWW / "example-002.test/htdocs/new-server.html"
    extra_web.parent.mkdir(parents=True)
    extra_web.write_text("<p>new</p>\n")
    before = stable_fingerprint(world)

    dry = user_data.run(ctx_for(world))
    assert dry.status == "planned"
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    plan = dry.tables[-1].frame.set_index(["tree", "domain"])
    assert plan.loc[("web", "example-001.test"), "method"] == "cp"
    assert plan.loc[("web", "example-002.test"), "method"] == "rsync"  # already on the target
    assert plan.loc[("mail", "example-001.test"), "method"] == "rsync"
    assert plan.loc[("mail", "example-002.test"), "method"] == "cp"
    assert "hard links" in plan.loc[("web", "example-003.test"), "why"]
    assert plan.loc[("web", "example-002.test"), "items to transfer"] > 0
    assert (
        plan.loc[("web", "example-001.test"), "items to transfer"]
        > plan.loc[("web", "example-001.test"), "backup files"]
    )  # every entry, directories too
    assert any("--dry-run" in c.argv and "--itemize-changes" in c.argv for c in dry.commands)
    # No ACLs in the sandbox backup: cp keeps owners, times and links, and runs without its ACL work.
    assert any(c.argv[:3] == ["cp", "-dR", "--preserve=ownership,timestamps,links"] and c.planned for c in dry.commands)
    assert any("new on the target with cp -a" in c for c in dry.changes)
    assert any("mailbox owner 1004:8 on 1 entries" in c for c in dry.changes)

    done = user_data.run(ctx_for(world, apply=True))
    assert done.status == "done"
    assert done.changes == dry.changes  # the tree folders' times too, which only the renames change
    # Mail: every entry, the tree's own directory and the new server's message included, is vmail:mail.
    mail_owners = owners(world.target_root / MAIL)
    assert len(mail_owners) > 50 and set(mail_owners.values()) == {VMAIL}
    assert extra_mail.read_text() == "delivered on the new server\n"
    # Web: the backup's numeric owners, modes (setgid, setuid, sticky too), contents, times and symlinks;
    # nothing deleted.
    src, dst = fingerprint(web), fingerprint(world.target_root / WWW)
    assert {k: v for k, v in dst.items() if "new-server" not in k} == src
    assert extra_web.exists()
    src_times, dst_times = mtimes(web), mtimes(world.target_root / WWW)
    assert {k: dst_times[k] for k in src_times} == src_times  # the tree's own directory included
    assert os.readlink(world.target_root / WWW / "example-001.test/htdocs/start.html") == "index.html"
    target = world.target_root / WWW
    assert (
        os.stat(target / "example-003.test/htdocs/same.html").st_ino
        == os.stat(target / "example-003.test/htdocs/index.html").st_ino
    )
    assert (
        os.stat(target / "example-003.test/htdocs/shared-robots.txt").st_ino
        == os.stat(target / "example-001.test/htdocs/robots.txt").st_ino
    )
    assert not (target / STAGING).exists() and not (world.target_root / MAIL / STAGING).exists()
    verify = done.tables[-1].frame
    assert set(verify["status"]).issubset({"ok", "ok; the target also has 1 files of its own"})
    assert len(verify) == 2 * len(world.domains)
    row = verify[(verify["tree"] == "mail") & (verify["domain"] == "example-001.test")].iloc[0]
    assert (row["target files"], row["method"]) == (row["backup files"] + 1, "rsync")
    argv = next(c.argv for c in done.commands if c.argv[0] == "rsync")
    assert "--numeric-ids" in argv and not any(a.startswith("--delete") for a in argv)

    again = user_data.run(ctx_for(world, apply=True))
    assert again.status == "noop" and again.changed == 0
    assert "nothing to copy" in again.noop_reason and "rsync found nothing to transfer" in again.noop_reason
    assert {c.argv[0] for c in again.commands} == {"rsync"}
    assert any("without -A/-X" in n for n in again.notes)  # the sandbox backup holds no ACLs or xattrs


def test_acls_and_extended_attributes_survive_both_copy_paths(stopped_world: World) -> None:
    world = stopped_world
    web = world.backup_root / WWW
    for domain in ("example-001.test", "example-002.test"):  # 001 is copied by cp, 002 merged by rsync
        page = web / domain / "htdocs/index.html"
        os.setxattr(page, "user.origin", b"old server")
        os.setxattr(page, "system.posix_acl_access", ACL)
    (world.target_root / WWW / "example-002.test").mkdir(parents=True)
    done = user_data.run(ctx_for(world, apply=True))
    methods = done.tables[-1].frame.set_index(["tree", "domain"])["method"]
    assert (methods[("web", "example-001.test")], methods[("web", "example-002.test")]) == ("cp", "rsync")
    for domain in ("example-001.test", "example-002.test"):
        page = world.target_root / WWW / domain / "htdocs/index.html"
        assert os.getxattr(page, "user.origin") == b"old server"
        assert os.getxattr(page, "system.posix_acl_access") == ACL
    rsync_argv = next(
        c.argv for c in done.commands if c.argv[0] == "rsync" and c.argv[-2].endswith(f"{WWW}/example-002.test")
    )
    assert rsync_argv[1] == "-aHAX"  # the probe found them, so rsync keeps them
    cp_argv = next(
        c.argv
        for c in done.commands
        if c.argv[0] == "cp" and any(a.endswith(f"{WWW}/example-001.test") for a in c.argv)
    )
    assert cp_argv[:2] == ["cp", "-a"]  # and so does cp (--preserve=all)


def _add_big_files(world: World, domain: str = "example-001.test", count: int = 8, size: int = 4 << 20) -> Path:
    media = world.backup_root / WWW / domain / "htdocs/media"
    media.mkdir()
    for i in range(count):
        f = media / f"clip{i:02d}.bin"
        f.write_bytes(os.urandom(size))
        os.chown(f, 2001, 2001)
    os.chown(media, 2001, 2001)
    return media


def test_interrupted_rsync_resumes_and_completes(stopped_world: World) -> None:
    world = stopped_world
    _add_big_files(world)
    seen: list[rsync_copy.Progress] = []
    lines: list[str] = []
    killed: list[int] = []

    def kill_midway(p: rsync_copy.Progress) -> None:
        seen.append(p)
        web = [r for r in p.running if r.method == "rsync" and r.tree == "web"]
        if not killed and web and web[0].bytes_done > 8 << 20:
            os.kill(web[0].pid, signal.SIGTERM)  # the rsync this step started, by its pid
            killed.append(web[0].pid)

    # A bandwidth limit sends every domain through rsync (cp cannot limit its rate).
    ctx = ctx_for(world, apply=True, user_data_bwlimit=4000, user_data_progress_interval=1)
    ctx.progress = lines.append
    with pytest.raises(StepFailed) as info:
        user_data.run(ctx, progress=kill_midway)
    assert killed and "run this step again" in info.value.result.errors[0]
    assert rsync_copy.group_members(killed[0]) == []  # no rsync helper left behind
    copied = fingerprint(world.target_root / WWW)
    assert 0 < sum(1 for k in copied if k.startswith("example-001.test/htdocs/media/clip")) < 8
    assert not (world.target_root / WWW / STAGING).exists()  # rsync writes in place, never through staging
    assert any("user data:" in line and "copies running (rsync)" in line for line in lines)  # headless progress
    done_bytes = [p.bytes_done for p in seen]
    assert done_bytes == sorted(done_bytes) and done_bytes[-1] > 8 << 20  # the hook saw the copy grow

    resumed = user_data.run(ctx_for(world, apply=True))
    assert resumed.status == "done"
    assert resumed.tables[-1].frame.set_index(["tree", "domain"]).loc[("web", "example-001.test"), "method"] == "rsync"
    src, dst = fingerprint(world.backup_root / WWW), fingerprint(world.target_root / WWW)
    assert dst == src  # every byte, mode and owner, and no leftover partial directory
    assert set(owners(world.target_root / MAIL).values()) == {VMAIL}
    assert user_data.run(ctx_for(world, apply=True)).status == "noop"


def test_interrupted_cp_leaves_a_staged_copy_that_the_next_run_completes(
    stopped_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = stopped_world
    _add_big_files(world, count=64)
    monkeypatch.setattr(rsync_copy, "HOOK_EVERY_S", 0.01)  # look at the running copies often
    killed: list[int] = []

    def kill_midway(p: rsync_copy.Progress) -> None:
        big = [r for r in p.running if r.method == "cp" and "example-001.test" in r.names]
        if not killed and big and big[0].bytes_done > 8 << 20:  # two clips written, or nearly
            os.kill(big[0].pid, signal.SIGTERM)  # the cp this step started, by its pid
            killed.append(big[0].pid)

    with pytest.raises(StepFailed) as info:
        user_data.run(ctx_for(world, apply=True), progress=kill_midway)
    assert killed and "run this step again" in info.value.result.errors[0]
    assert rsync_copy.group_members(killed[0]) == []
    staged = world.target_root / WWW / STAGING / "example-001.test"
    clips = list((staged / "htdocs/media").glob("clip*"))
    assert 0 < len(clips) < 64, len(clips)  # cp stopped halfway through the domain...
    assert not (world.target_root / WWW / "example-001.test").exists()  # ...which is not under its real name

    dry = user_data.run(ctx_for(world))
    plan = dry.tables[-1].frame.set_index(["tree", "domain"])
    assert plan.loc[("web", "example-001.test"), "method"] == "resume"
    resumed = user_data.run(ctx_for(world, apply=True))
    assert resumed.status == "done"
    assert any("interrupted staged copies" in c for c in resumed.changes)
    assert fingerprint(world.target_root / WWW) == fingerprint(world.backup_root / WWW)
    assert not (world.target_root / WWW / STAGING).exists()
    assert set(owners(world.target_root / MAIL).values()) == {VMAIL}
    assert user_data.run(ctx_for(world, apply=True)).status == "noop"


def test_a_staged_copy_that_cannot_be_completed_is_kept_and_reported(stopped_world: World) -> None:
    world = stopped_world
    staged = world.target_root / WWW / STAGING / "example-002.test/htdocs/half.html"
    staged.parent.mkdir(parents=True)
    staged.write_text("half")
    (world.target_root / WWW / "example-002.test").mkdir()  # meanwhile the domain exists on the target
    done = user_data.run(ctx_for(world, apply=True))
    assert done.status == "done"
    warning = next(w for w in done.warnings if STAGING in w)
    assert "example-002.test" in warning and "remove them by hand" in warning
    assert staged.read_text() == "half"  # never deleted
    verify = done.tables[-1].frame
    assert STAGING not in set(verify["domain"]) and set(verify["status"]) == {"ok"}


def test_a_killed_rsyncs_leftovers_are_removed_and_never_verified(stopped_world: World) -> None:
    world = stopped_world
    web = world.target_root / WWW
    # Two crashes of an rsync into an existing domain: a half-written copy beside its file, a --delay-updates
    # folder and a --partial-dir folder. A file of the backup with a name of the same shape is data.
    htdocs = web / "example-001.test/htdocs"
    htdocs.mkdir(parents=True)
    (htdocs / ".index.html.Xa1b2C").write_bytes(b"\0" * 4096)
    (htdocs / ".~tmp~").mkdir()
    (htdocs / ".~tmp~/robots.txt").write_text("half")
    (htdocs / ".rsync-partial").mkdir()
    (htdocs / ".rsync-partial/index.html").write_text("half")
    data = world.backup_root / WWW / "example-002.test/htdocs/.config.backup"
    data.write_text("a customer's file\n")
    done = user_data.run(ctx_for(world, apply=True))
    assert done.status == "done"
    assert any("3 temporary files of an interrupted rsync" in n and "removed" in n for n in done.notes)
    assert fingerprint(web) == fingerprint(world.backup_root / WWW)  # leftovers gone, the look-alike copied
    assert (web / "example-002.test/htdocs/.config.backup").read_text() == data.read_text()

    # A leftover outside the backup's domains is never removed, and the tree is not called verified.
    stray = web / ".stray.tar.Q1w2E3"
    stray.write_text("half")
    with pytest.raises(StepFailed) as info:
        user_data.run(ctx_for(world, apply=True))
    message = info.value.result.errors[0]
    assert "/var/www/virtual/.stray.tar.Q1w2E3" in message and "run user_data again" in message
    assert stray.exists()


def test_mail_with_another_owner_in_the_backup_gets_the_mailbox_owner(stopped_world: World) -> None:
    world = stopped_world
    box = world.backup_root / MAIL / "example-002.test"
    subprocess.run(["chown", "-R", "0:0", str(box)], check=True)  # a backup restored without owners
    before = fingerprint(box)
    done = user_data.run(ctx_for(world, apply=True))
    assert any("backup holds with another owner" in c for c in done.changes)
    assert set(owners(world.target_root / MAIL).values()) == {VMAIL}
    assert fingerprint(box) == before  # the backup itself is never changed


def test_file_names_with_newlines_are_refused_or_copied_on_request(stopped_world: World) -> None:
    world = stopped_world
    odd = world.backup_root / WWW / "example-002.test/htdocs/bad\nname.html"
    odd.write_text("odd\n")
    before = stable_fingerprint(world)
    with pytest.raises(StepFailed) as info:
        user_data.run(ctx_for(world, apply=True))
    message = info.value.result.errors[0]
    assert "example-002.test/htdocs/bad\\nname.html" in message and "user_data_allow_newline_names" in message
    assert fingerprint_diff(before, stable_fingerprint(world)) == []

    done = user_data.run(ctx_for(world, apply=True, user_data_allow_newline_names=True))
    assert done.status == "done" and any("newline" in w for w in done.warnings)
    assert (world.target_root / WWW / "example-002.test/htdocs/bad\nname.html").read_text() == "odd\n"


def test_symlinks_out_of_the_tree_are_copied_as_links_and_never_followed(stopped_world: World) -> None:
    world = stopped_world
    htdocs = world.backup_root / WWW / "example-003.test/htdocs"
    os.symlink("/etc/shadow", htdocs / "shadow-link")
    os.symlink("../../../../../etc", htdocs / "up")
    os.symlink("/etc", world.backup_root / WWW / "etc-link")  # loose at the top of the tree: rsync
    etc_before = fingerprint(world.target_root / "etc")
    done = user_data.run(ctx_for(world, apply=True))
    warning = next(w for w in done.warnings if "point outside" in w)
    assert "shadow-link -> /etc/shadow" in warning and "htdocs/up -> ../../../../../etc (leads to /etc)" in warning
    target = world.target_root / WWW / "example-003.test/htdocs"
    assert os.readlink(target / "shadow-link") == "/etc/shadow" and (target / "shadow-link").is_symlink()
    assert os.readlink(target / "up") == "../../../../../etc"
    assert os.readlink(world.target_root / WWW / "etc-link") == "/etc"
    assert fingerprint(world.target_root / "etc") == etc_before


def test_target_disk_too_small_is_refused_before_copying(stopped_world: World) -> None:
    world = stopped_world
    mount_point = world.target_root / MAIL
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], check=True)
    try:
        before = stable_fingerprint(world)
        with pytest.raises(StepFailed) as info:
            user_data.run(ctx_for(world, apply=True))
        message = info.value.result.errors[0]
        assert "target disk" in message and "/var/mail/virtual" in message and "free" in message
        assert fingerprint_diff(before, stable_fingerprint(world)) == []
        assert list(mount_point.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_missing_tree_in_the_backup_is_a_warning(stopped_world: World) -> None:
    world = stopped_world
    subprocess.run(["rm", "-rf", str(world.backup_root / MAIL)], check=True)
    done = user_data.run(ctx_for(world, apply=True))
    assert done.status == "done" and any("no mail tree" in w for w in done.warnings)
    assert not any((world.target_root / MAIL).iterdir())


def test_a_server_with_rsync_before_3_1_still_gets_the_mailbox_owner(
    stopped_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lenny and Squeeze ship rsync 3.0 (no --chown, no --info=progress2): owners are set after the copy."""
    world = stopped_world
    box = world.backup_root / MAIL / "example-001.test"
    subprocess.run(["chown", "-R", "0:0", str(box)], check=True)
    extra = world.target_root / MAIL / "example-002.test/info/new/1.new-server"
    extra.parent.mkdir(parents=True)
    extra.write_text("x\n")
    monkeypatch.setattr(rsync_copy, "rsync_version", lambda conn: (3, 0))
    done = user_data.run(ctx_for(world, apply=True, user_data_bwlimit=100000))  # every domain through rsync
    rsyncs = [c.argv for c in done.commands if c.argv[0] == "rsync"]
    assert rsyncs and not any(a == "--info=progress2" or a.startswith("--chown") for argv in rsyncs for a in argv)
    assert set(owners(world.target_root / MAIL).values()) == {VMAIL}
    assert fingerprint(world.target_root / WWW) == fingerprint(world.backup_root / WWW)
    assert user_data.run(ctx_for(world, apply=True)).status == "noop"
