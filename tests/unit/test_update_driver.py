"""The pty driver against real throw-away scripts: answers, unexpected prompts, timeouts, redaction."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.secrets import SecretRegistry
from ispcp_lib.ispcp.update_driver import (
    UPDATE_PHASES,
    FailurePattern,
    Outcome,
    Prompt,
    classify,
    looks_like_prompt,
    run_interactive,
    strip_ansi,
)
from ispcp_lib.sandbox import update_standin
from ispcp_lib.steps.ispcp_update import FAILURES

CONTINUE = Prompt("continue", r"continue \[Y/n\]:\s*$", "Y")


def script(tmp_path: Path, body: str, name: str = "fake") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o700)
    return path


def drive(path: Path, prompts: list[Prompt], secrets: SecretRegistry | None = None, **kw) -> Outcome:
    kw.setdefault("silence", 1.0)
    kw.setdefault("timeout", 30.0)
    return run_interactive(
        LocalConnection("/"),
        [str(path)],
        cwd=str(path.parent),
        prompts=prompts,
        secrets=secrets if secrets is not None else SecretRegistry(),
        transcript_path=path.parent / "transcript.log",
        **kw,
    )


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_strip_ansi() -> None:
    raw = "\x1b[H\x1b[2J\x1b[1;4mWelcome\x1b[0m\r\n\t\x1b[1;32m[ Done ]\x1b[0m\r\n\x1b]0;title\x07x\x08"
    assert strip_ansi(raw) == "Welcome\n\t[ Done ]\nx"


def test_prompt_heuristic() -> None:
    assert looks_like_prompt("\tPlease enter system SQL user. [root]: ")
    assert looks_like_prompt("Are you sure?")
    assert not looks_like_prompt("\tStopping services  [ Done ]")
    assert not looks_like_prompt("")


def test_known_prompts_are_answered_and_the_transcript_is_clean(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        r"""
printf '\033[2J\033[H\033[1;4mWelcome\033[0m\n'
printf '\tDo you want to continue [Y/n]: '; read a; echo "answer=$a"
printf '\tPlease enter path [x]: '; read p; echo "path=$p"
printf '\t\033[1;32m[ Done ]\033[0m\n'
""",
    )
    lines: list[str] = []
    out = drive(
        path, [CONTINUE, Prompt("path", r"enter path \[x\]:\s*$", "/etc/ispcp/ispcp.old.conf")], log=lines.append
    )
    assert out.ok, out.status_text()
    assert out.exit_status == 0
    assert out.answered == ["continue", "path"]
    assert "answer=Y" in out.transcript and "path=/etc/ispcp/ispcp.old.conf" in out.transcript
    assert "\x1b" not in out.transcript and "\r" not in out.transcript
    on_disk = (tmp_path / "transcript.log").read_text()
    assert on_disk == out.transcript
    assert stat.S_IMODE((tmp_path / "transcript.log").stat().st_mode) == 0o600
    assert any("[ Done ]" in ln for ln in lines)


def test_secrets_never_reach_the_transcript(tmp_path: Path) -> None:
    secrets = SecretRegistry()
    secrets.add("DbPassw0rdXYZ", "DATABASE_PASSWORD")
    path = script(
        tmp_path,
        r"""
echo "[DEBUG] connecting as root with password 'DbPassw0rdXYZ'"
printf 'Please enter ispCP ftp SQL user password. [auto generate]: '
stty -echo; read pw; stty echo; echo
echo "you typed $pw"
""",
    )
    lines: list[str] = []
    out = drive(path, [Prompt("vftp", r"ftp SQL user password", "VftpS3cret", secret=True)], secrets, log=lines.append)
    assert out.ok, out.status_text()
    text = out.transcript + (tmp_path / "transcript.log").read_text() + "\n".join(lines)
    assert "DbPassw0rdXYZ" not in text and "VftpS3cret" not in text
    assert "«redacted»" in out.transcript
    assert "you typed «redacted»" in out.transcript


def test_an_unexpected_prompt_stops_the_run_quoted(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        r"""
echo $$ > pid
printf 'Do you want to continue [Y/n]: '; read a
printf '\n\tPlease enter a fully qualified hostname. [debian]: '; read h
echo "never here"
""",
    )
    started = time.monotonic()
    out = drive(path, [CONTINUE], silence=1.0)
    assert time.monotonic() - started < 15
    assert not out.ok and out.killed
    assert out.unexpected_prompt == "Please enter a fully qualified hostname. [debian]:"
    assert "never here" not in out.transcript
    assert pid_gone(int((tmp_path / "pid").read_text()))


def test_a_busy_script_behind_a_colon_is_not_a_prompt(tmp_path: Path) -> None:
    # The real update prints "Please wait, this may take some time:" and then works silently.
    path = script(
        tmp_path,
        r"""
printf '\tPlease wait, this may take some time:'
sleep 2.5
echo ' [ Done ]'
""",
    )
    out = drive(path, [], silence=0.5)
    assert out.ok, out.status_text()
    assert "this may take some time: [ Done ]" in out.transcript


def test_known_phase_headlines_are_counted_once_each(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        r"""
printf '\033[H\033[2J\n\t\033[1mStarting ispCP update\033[0m\n\n'
printf '\tStopping services:  [ Done ]\n'
printf '\n\t\033[1mispCP database\033[0m\n\n'
printf '\tispCP database schema is up to date\n'
printf '\n\t\033[1mispCP database\033[0m\n\n'
printf '\n\t\033[1mFinishing update\033[0m\n\n'
""",
    )
    ticks: list[tuple[int, str]] = []
    lines: list[str] = []
    out = drive(path, [], log=lines.append, phases=lambda n, headline: ticks.append((n, headline)))
    assert out.exit_status == 0
    assert ticks == [(1, "Starting ispCP update"), (2, "ispCP database"), (3, "Finishing update")]
    assert {t for _, t in ticks} <= set(UPDATE_PHASES) and any("up to date" in ln for ln in lines)  # log kept


def test_the_phases_are_the_headlines_the_update_prints() -> None:
    """The sandbox's stand-in prints the real script's title lines (cited there): the same set."""
    source = Path(update_standin.__file__).read_text()
    titles = re.findall(r'self\.title\("([^"]+)"\)', source)
    assert set(titles) == set(UPDATE_PHASES)


def test_timeout_kills_the_whole_process_group_and_says_where(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        r"""
echo "Rebuilding all customers configuration files"
sleep 300 &
echo $! > grandchild
echo $$ > pid
printf 'Please wait, this may take some time:'
wait
""",
    )
    out = drive(path, [], timeout=2.0, silence=30.0)
    assert out.timed_out and out.killed and not out.ok
    assert "timed out after" in out.status_text()
    assert "this may take some time" in out.last_output
    for name in ("pid", "grandchild"):
        pid = int((tmp_path / name).read_text())
        assert pid_gone(pid), f"{name} {pid} survived the timeout"


def test_a_prompt_that_must_not_be_answered(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        r"""
printf '\n\t[WARNING] Unable to connect to the database with authentication information\n'
printf '\tfound in your proftpd.conf file! We will create a new Ftpd Sql account.\n'
printf '\n\tPlease enter ispCP OMEGA FTP SQL user password [auto generate]: '; read pw
echo "generated a new password"
""",
    )
    out = drive(path, [Prompt("vftp password", r"FTP SQL user password", None, secret=True)], failure_patterns=FAILURES)
    assert out.refused_prompt is not None and out.refused_prompt.label == "vftp password"
    assert "generated" not in out.transcript
    assert out.failure is not None and out.failure.name == "vftp password requested"


def test_the_same_prompt_again_means_the_answer_was_refused(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        r"""
for i in 1 2 3 4 5; do
  printf '\n\n\tPlease enter path to your ispcp.old.conf [/etc/ispcp/ispcp.old.conf]: '; read p
  echo "[DEBUG] push_el() sub_name: get_file(), msg: [ERROR] File '$p' does not exist !"
done
""",
    )
    out = drive(
        path,
        [Prompt("path", r"ispcp\.old\.conf.*:\s*$", "/nowhere/ispcp.old.conf", max_answers=1)],
        failure_patterns=FAILURES,
    )
    assert out.repeated_prompt is not None and "ispcp.old.conf" in out.repeated_prompt
    assert out.answered == ["path"]
    assert out.failure is not None and out.failure.name == "missing ispcp.old.conf"


def test_exit_status_and_a_missing_program(tmp_path: Path) -> None:
    out = drive(
        script(
            tmp_path,
            "echo '[DEBUG] push_el() sub_name: doSQL(), msg: [ERROR] Unable to connect SQL server with current DSN: "
            "DBI:mysql:ispcp:localhost root secret'; exit 255\n",
        ),
        [],
        failure_patterns=FAILURES,
    )
    assert out.exit_status == 255 and not out.ok
    assert out.failure is not None and out.failure.name == "database login failed"
    (tmp_path / "transcript.log").unlink()
    missing = drive(tmp_path / "no-such-script", [])
    assert missing.spawn_error and not missing.ok


@pytest.mark.parametrize(
    ("text", "name"),
    [
        # the real messages of ispCP 1.0.7 (1.0.5 where it differs), as DEBUG = 1 prints them
        (
            "[DEBUG] push_el() sub_name: doSQL(), msg: [ERROR] Unable to connect SQL server with current DSN: "
            "DBI:mysql:ispcp:localhost root x",
            "database login failed",
        ),
        ("ERROR: Unable to connect SQL server !", "database login failed"),
        ("\t[WARNING] Unable to connect to the database with authentication information", "vftp password requested"),
        ("\tPlease enter ispCP FTP SQL user [vftp]: ", "vftp password requested"),
        ("[DEBUG] push_el() sub_name: decrypt_db_password(), msg: [ERROR] KEY or IV has invalid length", "key length"),
        ("Can't locate ispcp-db-keys.pl in @INC (@INC contains: ..)", "key length"),
        ("\tPlease enter path to your ispcp.old.conf [/etc/ispcp/ispcp.old.conf]: ", "missing ispcp.old.conf"),
        ("\t[NOTICE] Backup engine is currently running. Aborting...", "backup engine running"),
        ("\t[NOTICE] The setting 'SOME_SETTING' can't be handle by", "setting the recovery cannot ask for"),
        ("\t * Update ispCP database schema:              [ Failed ]", "database schema update"),
        ("all fine", None),
    ],
)
def test_failure_patterns(text: str, name: str | None) -> None:
    found = classify(text, Outcome(argv=["x"]), FAILURES)
    assert (found.name if found else None) == name


def test_custom_patterns_are_searched_in_order() -> None:
    pats = [FailurePattern("a", "boom", "e", "n"), FailurePattern("b", "bo", "e", "n")]
    assert classify("big boom", Outcome(argv=["x"]), pats).name == "a"


def test_transcript_file_is_never_overwritten(tmp_path: Path) -> None:
    path = script(tmp_path, "echo hi\n")
    (tmp_path / "transcript.log").write_text("an earlier attempt\n")
    with pytest.raises(FileExistsError):
        drive(path, [])
    assert (tmp_path / "transcript.log").read_text() == "an earlier attempt\n"
    assert os.path.exists(path)


def test_a_question_wrapped_by_query_pm_is_matched_on_its_joined_text(tmp_path: Path) -> None:
    # Query.pm wraps at 72 columns: the question's start is on a finished line, its end on the prompt line.
    path = script(
        tmp_path,
        r"""
printf '\tDo you want to continue ? [Y/n]: '; read a
printf '\n\tPlease enter the domain name where ispCP OMEGA will be reachable on\n\t[admin.srv01.ispcp.test]: '
read v; echo "vhost=$v"
""",
    )
    vhost = Prompt("vhost", r"will be reachable on \[[^\]]*\]:\s*$", "admin.example.test")
    out = drive(path, [Prompt("continue", r"continue \? \[Y/n\]:\s*$", "Y"), vhost])
    assert out.ok, out.status_text()
    assert out.answered == ["continue", "vhost"] and "vhost=admin.example.test" in out.transcript


def test_exit_status_0_without_the_success_line_is_a_failure(tmp_path: Path) -> None:
    # ispCP 1.0.7 exits 0 when /tmp/ispcp-backup-all.lock exists (ispcp-update:649-654).
    path = script(tmp_path, "printf '\\n\\t[NOTICE] Backup engine is currently running. Aborting...\\n' >&2\n")
    out = drive(path, [], failure_patterns=FAILURES, success=r"Congratulations, you updated ispCP")
    assert out.exit_status == 0 and not out.ok
    assert out.status_text() == "exit status 0 without the success line"
    assert out.failure is not None and out.failure.name == "backup engine running"
    (tmp_path / "transcript.log").unlink()
    good = script(tmp_path, "echo \"Congratulations, you updated ispCP OMEGA'1.0.7 OMEGA' successfully!\"\n")
    assert drive(good, [], success=r"Congratulations, you updated ispCP").ok


def test_a_password_the_script_shows_is_masked(tmp_path: Path) -> None:
    secrets = SecretRegistry()
    path = script(tmp_path, "printf '\\t[NOTICE] PMA control user password set to: Gen3rated99\\n'; echo Gen3rated99\n")
    out = drive(path, [], secrets)
    assert "Gen3rated99" not in out.transcript and "Gen3rated99" in secrets.values()


def test_the_terminal_command_carries_env_and_cwd_to_the_target(tmp_path: Path) -> None:
    """Over SSH nothing crosses by itself: the remote command sets TERM and changes to engine/setup."""
    import shlex

    from ispcp_lib.core.connection import SshConnection, SshTarget

    conn = SshConnection(SshTarget("srv.example.test"), control_dir=str(tmp_path))
    script = "/var/www/ispcp/engine/setup/ispcp-update"
    argv, env, cwd = conn.command([script], env={"TERM": "xterm"}, cwd="/var/www/ispcp/engine/setup", tty=True)
    assert argv[0] == "ssh" and "-tt" in argv and env is None and cwd is None
    remote = shlex.split(argv[-1])
    assert remote[:3] == ["sh", "-c", 'cd "$1" && shift && exec "$@"']
    assert remote[4:] == ["/var/www/ispcp/engine/setup", "env", "TERM=xterm", script]
    local_argv, local_env, local_cwd = LocalConnection("/").command([script], env={"TERM": "xterm"}, cwd="/tmp")
    assert local_argv == [script] and local_env["TERM"] == "xterm" and local_cwd == "/tmp"


def test_every_phase_headline_is_a_line_of_the_real_script() -> None:
    """The progress bar's phases against a real 1.0.7 transcript from the lab (tests/data)."""
    real = Path(__file__).resolve().parents[1] / "data" / "ispcp-update-1.0.7-transcript.log"
    lines = {line.strip() for line in real.read_text().splitlines()}
    assert [p for p in UPDATE_PHASES if p not in lines] == []
