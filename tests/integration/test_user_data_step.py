"""user_data on the sandbox: rsync for real, owners file by file, an interrupted copy, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ispcp_lib import rsync_copy
from ispcp_lib.action import StepFailed
from ispcp_lib.fileops import fingerprint, fingerprint_diff
from ispcp_lib.runbook import open_run
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import user_data

WWW, MAIL = "var/www/virtual", "var/mail/virtual"
VMAIL = (1004, 8)


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


def test_dry_run_apply_and_apply_again(stopped_world: World) -> None:
    world = stopped_world
    # The target already holds a message and a web file of its own: they must survive, the message re-owned.
    extra_mail = world.target_root / MAIL / "example-001.test/info/new/1290000000.new-server"
    extra_mail.parent.mkdir(parents=True)
    extra_mail.write_text("delivered on the new server\n")
    extra_web = world.target_root / WWW / "example-002.test/htdocs/new-server.html"
    extra_web.parent.mkdir(parents=True)
    extra_web.write_text("<p>new</p>\n")
    before = stable_fingerprint(world)

    dry = user_data.run(ctx_for(world))
    assert dry.status == "planned" and dry.changed == 3
    assert fingerprint_diff(before, stable_fingerprint(world)) == []
    plan = dry.tables[-1].frame
    assert "items to transfer" in plan.columns and plan["items to transfer"].sum() > 0
    assert any("--dry-run" in c.argv and "--itemize-changes" in c.argv for c in dry.commands)

    done = user_data.run(ctx_for(world, apply=True))
    assert done.status == "done"
    # Mail: every entry, the tree's own directory and the new server's message included, is vmail:mail.
    mail_owners = owners(world.target_root / MAIL)
    assert len(mail_owners) > 50 and set(mail_owners.values()) == {VMAIL}
    assert extra_mail.read_text() == "delivered on the new server\n"
    # Web: the backup's numeric owners, modes, contents and symlinks, unchanged; nothing deleted.
    src, dst = fingerprint(world.backup_root / WWW), fingerprint(world.target_root / WWW)
    assert {k: v for k, v in dst.items() if "new-server" not in k} == src
    assert extra_web.exists()
    assert os.readlink(world.target_root / WWW / "example-001.test/htdocs/start.html") == "index.html"
    verify = done.tables[-1].frame
    assert set(verify["status"]).issubset({"ok", "ok; the target also has 1 files of its own"})
    assert len(verify) == 2 * len(world.domains)
    row = verify[(verify["tree"] == "mail") & (verify["domain"] == "example-001.test")].iloc[0]
    assert (row["target files"], row["backup files"]) == (row["backup files"] + 1, row["backup files"])
    argv = next(c.argv for c in done.commands if c.argv[0] == "rsync")
    assert "--numeric-ids" in argv and not any(a.startswith("--delete") for a in argv)

    again = user_data.run(ctx_for(world, apply=True))
    assert again.status == "noop" and again.changed == 0
    assert "nothing to transfer" in again.noop_reason


def _add_big_files(world: World, count: int = 8, size: int = 4 << 20) -> Path:
    media = world.backup_root / WWW / "example-001.test/htdocs/media"
    media.mkdir()
    for i in range(count):
        f = media / f"clip{i}.bin"
        f.write_bytes(os.urandom(size))
        os.chown(f, 2001, 2001)
    os.chown(media, 2001, 2001)
    return media


def test_interrupted_copy_resumes_and_completes(stopped_world: World) -> None:
    world = stopped_world
    _add_big_files(world)
    seen: list[rsync_copy.Progress] = []
    lines: list[str] = []
    killed: list[int] = []

    def kill_midway(p: rsync_copy.Progress) -> None:
        seen.append(p)
        if not killed and p.label.startswith("web") and p.bytes_done > 8 << 20:
            os.kill(p.pid, signal.SIGTERM)  # the rsync this step started, by its pid
            killed.append(p.pid)

    ctx = ctx_for(world, apply=True, user_data_bwlimit=4000, user_data_progress_interval=1)
    ctx.progress = lines.append
    with pytest.raises(StepFailed) as info:
        user_data.run(ctx, progress=kill_midway)
    assert killed and "run this step again" in info.value.result.errors[0]
    assert rsync_copy.group_members(killed[0]) == []  # no rsync helper left behind
    copied = fingerprint(world.target_root / WWW)
    assert 0 < sum(1 for k in copied if k.startswith("example-001.test/htdocs/media/clip")) < 8
    assert any("copied" in line and "by rsync's estimate" in line for line in lines)  # headless progress lines
    done_bytes = [p.bytes_done for p in seen if p.pid == killed[0]]
    assert done_bytes == sorted(done_bytes) and done_bytes[-1] > 8 << 20  # the hook saw the copy grow

    resumed = user_data.run(ctx_for(world, apply=True))
    assert resumed.status == "done"
    src, dst = fingerprint(world.backup_root / WWW), fingerprint(world.target_root / WWW)
    assert dst == src  # every byte, mode and owner, and no leftover partial directory
    assert set(owners(world.target_root / MAIL).values()) == {VMAIL}
    assert user_data.run(ctx_for(world, apply=True)).status == "noop"


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
    etc_before = fingerprint(world.target_root / "etc")
    done = user_data.run(ctx_for(world, apply=True))
    warning = next(w for w in done.warnings if "point outside" in w)
    assert "shadow-link -> /etc/shadow" in warning and "htdocs/up -> ../../../../../etc (leads to /etc)" in warning
    target = world.target_root / WWW / "example-003.test/htdocs"
    assert os.readlink(target / "shadow-link") == "/etc/shadow" and (target / "shadow-link").is_symlink()
    assert os.readlink(target / "up") == "../../../../../etc"
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
