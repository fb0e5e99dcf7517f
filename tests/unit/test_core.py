"""The action core: diffs, atomic writes, fingerprints, redaction, the journal and resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ispcp_lib.core import fileops
from ispcp_lib.core.action import StepFailed, action, read_journal
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.result import Result
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import MASK, SecretRegistry


def make_ctx(tmp_path: Path, apply: bool = False, **kw) -> Context:
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    secrets = SecretRegistry()
    return Context(
        target_root=target,
        backup_root=tmp_path / "backup",
        state_dir=tmp_path / "state",
        run_id="r1",
        default_apply=apply,
        secrets=secrets,
        runner=Runner(apply),
        **kw,
    )


def test_unified_diff_shows_changed_line() -> None:
    diff = fileops.unified_diff("a\nDEBUG = 0\n", "a\nDEBUG = 1\n", "/etc/ispcp/ispcp.conf")
    assert "-DEBUG = 0" in diff and "+DEBUG = 1" in diff
    assert "a/etc/ispcp/ispcp.conf" in diff
    assert fileops.unified_diff("same\n", "same\n", "/x") == ""


def test_atomic_write_keeps_mode_and_owner(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("old")
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    fileops.atomic_write(p, "new")
    st = p.stat()
    assert p.read_text() == "new"
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert [x.name for x in tmp_path.iterdir()] == ["f"]  # no temp file left behind


def test_atomic_write_failure_leaves_old_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("old")
    with pytest.raises(TypeError):
        fileops.atomic_write(p, 42)  # type: ignore[arg-type]
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_fingerprint_sees_content_mode_owner_and_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "f"
    f.write_text("x")
    link = tmp_path / "d" / "l"
    os.symlink("f", link)
    base = fileops.fingerprint(tmp_path)
    assert fileops.fingerprint(tmp_path) == base
    for mutate, changed in (
        (lambda: f.write_text("y"), "changed d/f"),
        (lambda: os.chmod(f, 0o600), "changed d/f"),
        (lambda: os.chown(f, 4321, -1), "changed d/f"),
        (lambda: (os.unlink(link), os.symlink("g", link)), "changed d/l"),
    ):
        before = fileops.fingerprint(tmp_path)
        mutate()
        assert fileops.fingerprint_diff(before, fileops.fingerprint(tmp_path)) == [changed]


def test_fingerprint_excludes(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    base = fileops.fingerprint(tmp_path, exclude=[tmp_path / "state"])
    (tmp_path / "state" / "journal").write_text("x")
    assert fileops.fingerprint(tmp_path, exclude=[tmp_path / "state"]) == base


def test_redaction_longest_first_and_nested() -> None:
    reg = SecretRegistry()
    reg.add("abc")
    reg.add("abcdef")
    assert reg.redact("x abcdef y abc") == f"x {MASK} y {MASK}"
    assert reg.redact_obj({"k": ["abc", ("abcdef",)]}) == {"k": [MASK, (MASK,)]}
    reg.add("")
    assert len(reg) == 2


def test_redaction_in_result_html_and_journal(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ctx.secrets.add("s3cr3t-pass")

    @action("demo_step", mutating=False)
    def step(ctx: Context, result: Result) -> None:
        result.summary = "password is s3cr3t-pass"
        ctx.runner.run(["echo", "s3cr3t-pass"])

    r = step(ctx)
    assert "s3cr3t-pass" not in r._repr_html_()
    assert "s3cr3t-pass" not in repr(r)
    assert "s3cr3t-pass" not in ctx.journal_path.read_text()
    assert MASK in ctx.journal_path.read_text(encoding="utf-8")


def test_write_file_dry_run_changes_nothing_and_apply_keeps_copy(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    target = ctx.target_root / "etc/x.conf"
    target.parent.mkdir(parents=True)
    target.write_text("A = 1\n")

    @action("edit")
    def edit(ctx: Context, result: Result) -> None:
        ctx.write_file("/etc/x.conf", "A = 2\n")

    before = fileops.fingerprint(ctx.target_root)
    r = edit(ctx)
    assert r.status == "planned" and r.changed == 1
    assert "+A = 2" in r.diffs[0].text and r.diffs[0].path == "/etc/x.conf"
    assert fileops.fingerprint(ctx.target_root) == before
    ctx.default_apply = True
    r = edit(ctx)
    assert r.status == "done" and target.read_text() == "A = 2\n"
    assert Path(r.backups[0]).read_text() == "A = 1\n"
    ctx.resume = False
    r = edit(ctx)
    assert r.status == "noop" and r.noop_reason


def test_resume_skips_applied_step_unless_forced(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, apply=True)
    calls = []

    @action("once")
    def once(ctx: Context, result: Result) -> None:
        calls.append(1)
        result.change("did it")

    assert once(ctx).status == "done"
    r = once(ctx)
    assert r.status == "skipped" and "journal" in r.noop_reason and len(calls) == 1
    ctx.force_steps = {"once"}
    assert once(ctx).status == "done" and len(calls) == 2
    statuses = [rec["status"] for rec in read_journal(ctx)]
    assert statuses == ["done", "skipped", "done"]


def test_failure_is_recorded_and_raised(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)

    @action("bad", mutating=False)
    def bad(ctx: Context, result: Result) -> None:
        raise InputError("ispcp.conf", "line 3 is malformed", "fix it", path="/etc/ispcp/ispcp.conf")

    with pytest.raises(StepFailed) as info:
        bad(ctx)
    assert info.value.result.status == "failed"
    assert "line 3 is malformed" in info.value.result.errors[0] and "Fix: fix it" in info.value.result.errors[0]
    rec = json.loads(ctx.journal_path.read_text().splitlines()[-1])
    assert rec["status"] == "failed" and rec["name"] == "bad"


def test_runner_refuses_shell_strings_and_plans_mutations(tmp_path: Path) -> None:
    runner = Runner(apply=False)
    with pytest.raises(TypeError):
        runner.run("rm -rf /")  # type: ignore[arg-type]
    marker = tmp_path / "m"
    rec = runner.run(["touch", str(marker)], mutates=True)
    assert rec.planned and not marker.exists()
    runner.apply = True
    rec = runner.run(["touch", str(marker)], mutates=True)
    assert rec.rc == 0 and marker.exists()


def test_backup_view_sees_a_symlink_that_escapes(tmp_path: Path) -> None:
    (tmp_path / "backup" / "etc").mkdir(parents=True)
    os.symlink("/etc/passwd", tmp_path / "backup" / "etc" / "passwd")
    (tmp_path / "backup" / "etc" / "group").write_text("root:x:0:\n")
    ctx = make_ctx(tmp_path)
    assert ctx.backup is not None
    assert ctx.backup.escapes("/etc/passwd") == "/etc/passwd"
    assert ctx.backup.escapes("/etc/group") is None
    assert ctx.backup.read_text("/etc/group") == "root:x:0:\n"


def test_html_redacts_secrets_with_html_special_characters(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    secret = "K<ey&\"q'>9"
    ctx.secrets.add(secret)
    r = Result(step="x", secrets=ctx.secrets, summary=f"key {secret}")
    r.warn(f"w {secret}")
    page = r._repr_html_()
    import html as html_mod

    assert secret not in page and html_mod.escape(secret, quote=True) not in page
    assert MASK in page or html_mod.escape(MASK) in page


def test_runner_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    from ispcp_lib.core.errors import CommandFailed
    from ispcp_lib.mysql.service import pid_alive

    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    with pytest.raises(CommandFailed) as info:
        Runner(apply=True).run(["sh", "-c", script], timeout=1)
    assert "timeout after 1 s" in str(info.value)
    grandchild = int(pidfile.read_text())
    import time

    for _ in range(50):
        if not pid_alive(grandchild):
            break
        time.sleep(0.1)
    assert not pid_alive(grandchild), "the grandchild survived the timeout"


def test_journal_redacts_secret_across_the_tail_cut(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    secret = "Zq9-secret-across-cut-77"
    ctx.secrets.add(secret)
    text = "x" * 1990 + secret + "y" * 5  # the last 2000 characters start inside the secret

    @action("tail", mutating=False)
    def tail(ctx: Context, result: Result) -> None:
        ctx.runner.run(["printf", "%s", text])

    tail(ctx)
    journal = ctx.journal_path.read_text(encoding="utf-8")
    assert secret[5:] not in journal and secret[-10:] not in journal


def test_safety_copies_are_kept_per_step(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, apply=True)
    conf = ctx.target_root / "etc/x.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("v1\n")

    def writer(name: str, text: str):
        @action(name)
        def step(ctx: Context, result: Result) -> None:
            ctx.write_file("/etc/x.conf", text)

        return step

    first = writer("first", "v2\n")(ctx)
    second = writer("second", "v3\n")(ctx)
    assert Path(first.backups[0]).read_text() == "v1\n"
    assert Path(second.backups[0]).read_text() == "v2\n"  # what the second step replaced


def test_secrets_file_errors_never_quote_the_secret(tmp_path: Path) -> None:
    from ispcp_lib.runbook.session import load_secrets_file

    ctx = make_ctx(tmp_path)
    bad = tmp_path / "secrets.yaml"
    bad.write_text('vftp: "unterminated s3cr3t-VFTP\n')
    bad.chmod(0o600)
    with pytest.raises(InputError) as info:
        load_secrets_file(ctx, bad)
    assert "s3cr3t" not in str(info.value) and "not valid YAML" in str(info.value)
    nested = tmp_path / "nested.yaml"
    nested.write_text("db:\n  password: inner-s3cr3t\n")
    nested.chmod(0o600)
    with pytest.raises(InputError) as info:
        load_secrets_file(ctx, nested)
    assert "inner-s3cr3t" not in str(info.value) and "db is not a plain value" in str(info.value)
    loose = tmp_path / "loose.yaml"
    loose.write_text("mysql_admin_password: fine-s3cr3t\n")
    loose.chmod(0o644)
    with pytest.raises(InputError) as info:
        load_secrets_file(ctx, loose)
    assert "chmod 600" in str(info.value)
    loose.chmod(0o600)
    load_secrets_file(ctx, loose)
    assert "fine-s3cr3t" in ctx.secrets


def test_ispcp_conf_error_quotes_harmless_lines_only() -> None:
    from ispcp_lib.facts.ispcp_conf import IspcpConf

    with pytest.raises(InputError) as info:
        IspcpConf.parse("A = 1\nDATABASE_PASSWORD: c2VjcmV0Cg==\n")
    assert "line 2" in str(info.value) and "c2VjcmV0" not in str(info.value)
    with pytest.raises(InputError) as info:
        IspcpConf.parse("A = 1\ngarbage here\n")
    assert "'garbage here'" in str(info.value)
