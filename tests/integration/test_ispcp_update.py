"""ispcp_update against the sandbox stand-in: success, each known failure, a hang, an unexpected prompt."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import keyfiles
from ispcp_lib.ispcp.keyfiles import LAYOUTS, KeySet
from ispcp_lib.ispcp.update_driver import UPDATE_PHASES
from ispcp_lib.sandbox.world import stable_fingerprint
from ispcp_lib.steps import ispcp_update
from tests.integration.recovered_world import (  # noqa: F401 (fixtures)
    FAST,
    open_ctx,
    recovered_fixture,
    recovered_template_fixture,
    sync_proftpd,
)

OLD_CONF = "etc/ispcp/ispcp.old.conf"
CONF = "etc/ispcp/ispcp.conf"


@pytest.fixture(autouse=True)
def fast_managers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISPCP_SANDBOX_SLEEP_SCALE", str(FAST))


@pytest.fixture
def ready(recovered):
    """Everything in place for the update, as the earlier steps leave it."""
    sync_proftpd(recovered)
    return recovered


def transcripts(world) -> list[Path]:
    d = world.state_dir / "ispcp-update"
    return sorted(d.glob("attempt-*.log")) if d.is_dir() else []


def failing(world, **options) -> StepFailed:
    with pytest.raises(StepFailed) as info:
        ispcp_update.run(open_ctx(world, apply=True, **options))
    return info.value


def test_success_dry_run_apply_and_apply_again(ready) -> None:
    world = ready
    before = stable_fingerprint(world)
    dry = ispcp_update.run(open_ctx(world))
    assert dry.status == "planned", dry.errors
    assert set(dry.tables[0].frame["result"]) <= {"ok", "n/a"}
    assert stable_fingerprint(world) == before and transcripts(world) == []

    ctx = open_ctx(world, apply=True)
    lines: list[str] = []
    ctx.progress = lines.append
    done = ispcp_update.run(ctx)
    assert done.status == "done", done.errors
    assert done.data["attempt"]["exit_status"] == 0
    # headless, the phase bar is a log line; it ends with every known phase seen
    assert any(
        ln.endswith(f"ispcp-update, phases: {len(UPDATE_PHASES)} of {len(UPDATE_PHASES)} (100%) Finishing update")
        for ln in lines
    )
    kept = {Path(b).name for b in done.backups}
    assert {"ispcp.conf", "ispcp.old.conf", "proftpd.conf"} <= kept  # what the script rewrites is kept first
    [log] = transcripts(world)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "Congratulations, you updated ispCP OMEGA" in text and "\x1b" not in text
    for secret in world.secrets:  # DEBUG = 1 makes the stand-in print the database password
        assert secret not in text, "a sandbox secret reached the transcript"
        assert secret not in done._repr_html_()
    assert "with the following DSN: DBI:mysql:" in text and "«redacted»" in text  # vftp's password, masked
    # The sandbox's configs leave BASE_SERVER_VHOST empty: recovery mode asks for it, the script's default is taken.
    assert "answered 'recovery: BASE_SERVER_VHOST' with ''" in text
    health = {r["check"]: r["result"] for r in done.tables[-1].frame.to_dict("records")}
    assert health["every domain has its web dir and system user"] == "ok"
    assert health["Apache vhosts written for every domain"] == "ok"
    assert health["ispCP logs into its database"] == "ok"
    vhosts = (world.target_root / "etc/apache2/sites-available/ispcp.conf").read_text()
    for d in world.domains:
        assert f"ServerName {d['name']}" in vhosts
        assert (world.target_root / "var/www/virtual" / d["name"]).stat().st_uid == d["uid"]
    # the update merged the old configuration into ispcp.conf (old hostname), kept the new version keys
    conf = IspcpConf.load(world.target_root / "etc/ispcp/ispcp.conf")
    assert conf.get("SERVER_HOSTNAME") == world.manifest["old"]["hostname"]
    assert conf.get("Version") == world.manifest["new"]["ispcp_version"]

    again = ispcp_update.run(open_ctx(world, apply=True))
    assert again.status == "noop" and "attempt 1 succeeded" in again.noop_reason
    assert len(transcripts(world)) == 1

    ctx = open_ctx(world, apply=True)
    ctx.force_steps = {"ispcp_update"}
    forced = ispcp_update.run(ctx)
    assert forced.status == "done" and forced.data["attempt"]["number"] == 2
    assert len(transcripts(world)) == 2  # each attempt keeps its own transcript


REAL_TRANSCRIPT = Path(__file__).resolve().parents[1] / "data" / "ispcp-update-1.0.7-transcript.log"


def answered_prompts(text: str) -> list[str]:
    """The questions a transcript shows answered: the line before each "[ispcp-recovery] answered", its echoed
    answer cut off."""
    lines = [ln.strip() for ln in text.splitlines()]
    marks = [i for i, ln in enumerate(lines) if ln.startswith("[ispcp-recovery] answered")]
    return [lines[i - 1].rsplit(":", 1)[0] + ":" for i in marks]


def test_the_standin_asks_what_the_real_script_asks(ready) -> None:
    """The stand-in's questions and landmarks against a real 1.0.7 transcript from the lab (tests/data)."""
    real = REAL_TRANSCRIPT.read_text()
    done = ispcp_update.run(open_ctx(ready, apply=True))
    assert done.status == "done", done.errors
    [log] = transcripts(ready)
    standin = log.read_text()
    real_prompts, standin_prompts = answered_prompts(real), answered_prompts(standin)
    assert real_prompts == ["Do you want to continue ? [Y/n]:", "Do you want to continue ? [Y/n/?]:"]
    assert standin_prompts[: len(real_prompts)] == real_prompts  # then recovery mode's, which the real run skipped
    for landmark in ("Starting ispCP update", "Finishing update", "Please make sure you did a backup of all your"):
        assert landmark in real and landmark in standin, landmark
    success = r"Congratulations, you updated ispCP OMEGA'[^']+' successfully!"
    assert re.search(success, real) and re.search(success, standin)


def test_the_sleep_lines_cost_a_pause_per_item(ready, monkeypatch: pytest.MonkeyPatch) -> None:
    world = ready
    monkeypatch.setenv("ISPCP_SANDBOX_SLEEP_SCALE", "0.2")
    items = sum(world.manifest["counts"][k] for k in ("domains", "subdomains", "aliases", "mailboxes", "forwards"))
    ispcp_update.run(open_ctx(world, apply=True))
    # The stand-in's DEBUG lines say how many items each manager rebuilt and the pause it spent per item:
    # every item pays the pause while the sleep(1) lines are active (counted, not timed).
    paused = re.findall(
        r"(ispcp-\w+-mngr): (\d+) item\(s\), ([\d.]+) s pause per item", transcripts(world)[-1].read_text()
    )
    assert paused and {float(p) for _, _, p in paused} == {0.2}
    assert sum(int(n) for _, n, _ in paused) == items


def test_wrong_keys(ready) -> None:
    world = ready
    new = world.credentials["new"]
    for layout in ("php", "perl_engine", "perl_messenger"):  # the dummy install's keys are back
        (world.target_root / LAYOUTS[layout].lstrip("/")).write_text(
            keyfiles.render_keyfile(layout, KeySet(new["key"], new["iv"]))
        )
    before = stable_fingerprint(world)
    dry = ispcp_update.run(open_ctx(world))  # a dry run only warns: earlier steps may not have run yet
    assert dry.status == "planned" and any("keys decrypt DATABASE_PASSWORD" in w for w in dry.warnings)
    err = failing(world)
    message = err.result.errors[0]
    assert "keys decrypt DATABASE_PASSWORD" in message and "keys step" in message
    assert stable_fingerprint(world) == before and transcripts(world) == []

    err = failing(world, ispcp_update_skip_prechecks=["database_login"])
    assert err.result.data["failure"]["pattern"] == "wrong database password"
    assert "run the keys step" in err.result.errors[0]
    assert "Unable to connect SQL server with current DSN" in transcripts(world)[0].read_text()


def test_mysql_stopped(ready) -> None:
    world = ready
    world.stop()
    err = failing(world)
    assert "MySQL is up" in err.result.errors[0] and "start MySQL" in err.result.errors[0]
    with pytest.raises(StepFailed) as info:  # every pre-check skipped: nothing proved, nothing registered
        ispcp_update.run(open_ctx(world, apply=True, private_secrets=True, ispcp_update_skip_prechecks="all"))
    err = info.value
    assert err.result.data["failure"]["pattern"] == "database connection refused"
    assert "start MySQL" in err.result.data["failure"]["next_action"]
    text = transcripts(world)[-1].read_text()
    assert "current DSN: DBI:mysql:ispcp:localhost root «redacted»" in text  # DEBUG = 1 prints the password
    assert not [s for s in world.secrets if s in text]


def test_vftp_password_changed(ready) -> None:
    world = ready
    conn = world.target_mysql().connect("debian-sys-maint", world.credentials["old"]["debian_sys_maint"])
    with conn.cursor() as cur:
        cur.execute("SET PASSWORD FOR 'vftp'@'localhost' = PASSWORD('S0meoneElse')")
    conn.close()
    err = failing(world)
    assert "vftp login works" in err.result.errors[0] and "ftp step" in err.result.errors[0]
    err = failing(world, ispcp_update_skip_prechecks=["vftp"])
    assert err.result.data["failure"]["pattern"] == "vftp password requested"
    text = transcripts(world)[0].read_text()
    assert "Unable to connect to the database with authentication information" in text
    assert "Please enter ispCP FTP SQL user [vftp]:" in text and "set to:" not in text  # never auto-generated


def test_no_old_conf(ready) -> None:
    world = ready
    (world.target_root / OLD_CONF).unlink()
    err = failing(world)
    assert "ispcp.old.conf" in err.result.errors[0] and "ispcp_conf step" in err.result.errors[0]
    err = failing(world, ispcp_update_skip_prechecks=["old_conf", "database_login"])
    assert err.result.data["failure"]["pattern"] == "missing ispcp.old.conf"
    assert "was not accepted (asked again)" in err.result.errors[0]
    assert "File '/etc/ispcp/ispcp.old.conf' does not exist !" in transcripts(world)[0].read_text()


def set_value(path: Path, key: str, value: str) -> None:
    conf = IspcpConf.load(path)
    conf.set(key, value)
    path.write_text(conf.text())


def test_recovery_mode_questions_are_answered_from_the_configs(ready) -> None:
    world = ready
    set_value(
        world.target_root / OLD_CONF, "SERVER_HOSTNAME", ""
    )  # ispcp.old.conf lacks it: the backup's ispcp.conf has it
    err = failing(world)  # the pre-check sees the gap
    assert "lacks SERVER_HOSTNAME" in err.result.errors[0]
    done = ispcp_update.run(open_ctx(world, apply=True, ispcp_update_skip_prechecks=["old_conf"]))
    assert done.status == "done", done.errors
    text = transcripts(world)[-1].read_text()
    assert "switch to recovery/upgrade mode" in text and "Please enter a fully qualified hostname [" in text
    assert f"answered 'recovery: SERVER_HOSTNAME' with '{world.manifest['old']['hostname']}'" in text
    conf = IspcpConf.load(world.target_root / "etc/ispcp/ispcp.conf")
    assert conf.get("SERVER_HOSTNAME") == world.manifest["old"]["hostname"]


def test_an_unexpected_prompt_is_quoted(ready) -> None:
    world = ready
    # A setting no config holds and the script offers no default for: nobody knows the answer.
    for path in (world.target_root / OLD_CONF, world.target_root / CONF, world.backup_root / CONF):
        set_value(path, "DEFAULT_ADMIN_ADDRESS", "")
    err = failing(world, ispcp_update_skip_prechecks=["old_conf"], ispcp_update_prompt_silence=1)
    # Stopped at the prompt itself, not by the overall timeout.
    assert "no answer is configured for" in err.result.data["failure"]["explanation"]
    assert "timed out" not in err.result.errors[0]
    assert "Please enter administrator e-mail address:" in err.result.errors[0]
    assert "ispcp_update_answers" in err.result.errors[0]
    # the operator answers it through the parameter, the value drawn from the secrets_file
    # ({secret:NAME}); the next attempt gets through and the value stays masked.
    from ispcp_lib.runbook.session import load_secrets_file

    ctx = open_ctx(
        world,
        apply=True,
        ispcp_update_skip_prechecks=["old_conf"],
        ispcp_update_answers={r"administrator e-mail address": "{secret:typed_address}"},
    )
    secrets_file = world.workdir / "answers.yaml"
    secrets_file.write_text("typed_address: typed-by-the-admin@example.test\n")
    secrets_file.chmod(0o600)
    load_secrets_file(ctx, secrets_file)
    done = ispcp_update.run(ctx)
    assert done.status == "done"
    transcript = transcripts(world)[-1].read_text()
    assert "answered 'answer for /administrator e-mail address/' with «secret»" in transcript
    assert "typed-by-the-admin@example.test" not in transcript
    assert "typed-by-the-admin@example.test" not in done._repr_html_() + ctx.journal_path.read_text()


def test_exit_status_0_while_a_backup_runs_is_not_a_success(ready) -> None:
    world = ready
    lock = world.target_root / "tmp/ispcp-backup-all.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text("")
    err = failing(world)
    assert (
        err.result.data["attempt"]["exit_status"] == 0
        and err.result.data["failure"]["pattern"] == "backup engine running"
    )
    assert "without the success line" in err.result.errors[0]
    assert "/tmp/ispcp-backup-all.lock" in err.result.data["failure"]["next_action"]


def test_an_answer_naming_a_missing_secret_is_refused(ready) -> None:
    err = failing(
        ready,
        ispcp_update_skip_prechecks=["old_conf"],
        ispcp_update_answers={r"administrator e-mail address": "{secret:nowhere}"},
    )
    assert "{secret:nowhere}" in err.result.errors[0] and "secrets_file" in err.result.errors[0]


def test_a_hanging_script_is_killed_and_the_report_says_where(ready) -> None:
    world = ready
    engine = world.target_root / "opt/fake/engine/setup"  # a script of the target, named by its own path
    engine.mkdir(parents=True)
    fake = engine / "ispcp-update"
    fake.write_text(
        "#!/bin/bash\n"
        "echo 'Rebuilding all customers configuration files'\n"
        "sleep 600 &\necho $! > grandchild\n"
        "printf '\\tPlease wait, this may take some time:'\nwait\n"
    )
    fake.chmod(0o700)
    err = failing(
        world,
        ispcp_update_script="/opt/fake/engine/setup/ispcp-update",
        ispcp_update_timeout=2,
        ispcp_update_prompt_silence=30,
    )
    message = err.result.errors[0]
    assert "timed out after" in message and "process group was killed" in message
    assert "Please wait, this may take some time" in message  # where it hung
    pid = int((engine / "grandchild").read_text())
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_script_missing_or_not_executable(ready) -> None:
    world = ready
    script = world.target_root / "var/www/ispcp/engine/setup/ispcp-update"
    script.chmod(0o600)
    assert "not executable" in failing(world).result.errors[0]
    script.unlink()
    assert "does not exist" in failing(world).result.errors[0]


def test_mail_guard_is_required_by_default(ready) -> None:
    world = ready
    err = failing(world, ispcp_update_require_mail_guard=True)
    assert "mail guard" in err.result.errors[0] and "mail_guard step" in err.result.errors[0]


def test_the_standin_is_labelled_and_refuses_outside_the_sandbox(ready, tmp_path: Path) -> None:
    import shutil
    import subprocess

    world = ready
    script = world.target_root / "var/www/ispcp/engine/setup/ispcp-update"
    assert "TEST SCAFFOLDING - NOT ispCP" in script.read_text()
    # A copy in a tree that is not a sandbox world's target refuses to touch it.
    elsewhere = tmp_path / "var/www/ispcp/engine/setup/ispcp-update"
    elsewhere.parent.mkdir(parents=True)
    (tmp_path / "etc/ispcp").mkdir(parents=True)
    shutil.copy2(script, elsewhere)
    outside = subprocess.run([str(elsewhere)], cwd=elsewhere.parent, capture_output=True, text=True, timeout=60)
    assert outside.returncode == 2 and "TEST SCAFFOLDING" in outside.stderr
    wrong_dir = subprocess.run([str(script)], cwd=world.target_root, capture_output=True, text=True, timeout=60)
    assert wrong_dir.returncode == 2 and "cd /var/www/ispcp/engine/setup" in wrong_dir.stderr
