"""ispcp_update: check everything the update needs, then drive engine/setup/ispcp-update on a pty."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import CommandRecord, Result
from ispcp_lib.facts import ispcp_login, mysql_creds, proftpd
from ispcp_lib.facts.ispcp_conf import REQUIRED_KEYS, IspcpConf
from ispcp_lib.ispcp import health
from ispcp_lib.ispcp.keyfiles import layout_paths
from ispcp_lib.ispcp.update_driver import FailurePattern, Outcome, Prompt, run_interactive
from ispcp_lib.steps import mail_guard

TITLE = "Run ispCP's update script"
GUIDE = "the section on calling engine/setup/ispcp-update and the remarks on the update process after it"
EXPLANATION = """
With the databases, accounts, data, FTP login, keys and configuration in place, ispCP's own update
script rebuilds everything from the database: it merges `ispcp.old.conf` into `ispcp.conf`, updates
the schema, and regenerates every service, panel and customer configuration. The guide is blunt about
this stage: expect to run it several times, and expect mostly errors on the way. It also insists on
starting the script from its own directory (`engine/setup`); this step always does.

To make each attempt count, the step first checks what the script will need: MySQL is up,
`ispcp.old.conf` is present and complete, the key files decrypt `DATABASE_PASSWORD` and it logs in,
the vftp login works (otherwise the script stops to ask for the vftp password, the guide's warning),
`DEBUG = 1` for readable errors, and the mail guard still holds (the script restarts the services,
Postfix included). Any failed check stops here, with the fix.

The script is interactive and needs a terminal, so it runs on a pseudo-terminal. Known questions are
answered from the parameters; a question nobody expected stops the run, quoted, instead of hanging.
The whole transcript (colours stripped, secrets masked) is shown here and kept in the state
directory, one file per attempt. Known failures (database refused, wrong password, vftp password
asked, no `ispcp.old.conf`) are explained with the next thing to do. Afterwards the health checks
show what works; if Apache would not start, the next step is `register_accounts`.
"""
PRECHECKS = ("mysql", "old_conf", "database_login", "vftp", "debug", "mail_guard")
PARAMETERS: tuple[Param, ...] = (
    Param(
        "ispcp_update_timeout",
        float,
        3600,
        "seconds the update may run before it is stopped (its process group killed)",
        minimum=1,
    ),
    Param(
        "ispcp_update_answers",
        dict,
        {},
        "extra answers: mapping of prompt regex -> answer; {old_conf}, "
        "{vftp_password} and {secret:NAME} (a value of the secrets_file) are filled "
        "in; they take precedence over the built-in ones. Never write a password "
        "here (parameters are copied into the report): use {secret:NAME}",
        example="{'Please enter a fully qualified hostname': 'new.example.com'}",
    ),
    Param(
        "ispcp_update_prompt_silence",
        float,
        10,
        "seconds of silence at an unanswered prompt before it counts as unexpected",
        minimum=0.1,
    ),
    Param(
        "ispcp_update_script",
        str,
        None,
        "path of the update script on the target (default ROOT_DIR/engine/setup/ispcp-update)",
    ),
    Param(
        "ispcp_update_skip_prechecks",
        list,
        [],
        "pre-checks to skip (all: every one): only when you know better than the check",
        choices=(*PRECHECKS, "all"),
    ),
    Param(
        "ispcp_update_require_mail_guard",
        bool,
        True,
        "stop when the mail guard is not in place (the update restarts Postfix)",
    ),
)

CONF_PATH = "/etc/ispcp/ispcp.conf"
LOG_DIR = "ispcp-update"  # under the state dir: one transcript per attempt, plus the last success
SUCCESS_FILE = "last-success.json"

DEFAULT_PROMPTS: tuple[tuple[str, str, str | None, bool, int], ...] = (
    # label, regex on the unfinished output line, answer (tokens filled in), secret, max answers
    ("continue [Y/n]", r"Do you want to continue ?\??\s*\[Y/n\]:\s*$", "Y", False, 3),
    ("continue [Y/n/?]", r"Do you want to continue ?\??\s*\[Y/n/\?\]:\s*$", "Y", False, 2),
    ("path to ispcp.old.conf", r"Please enter path to your ispcp\.old\.conf.*:\s*$", "{old_conf}", False, 1),
    ("installed ispCP?", r"Are you sure you have installed ispCP ?\?\s*\[Y/n\]:\s*$", "Y", False, 1),
    ("press Enter", r"type 'Enter' to continue", "", False, 2),
    ("vftp password", r"Please enter ispCP ftp SQL user password", "{vftp_password}", True, 1),
    ("vftp password again", r"Please repeat ispCP ftp SQL user password", "{vftp_password}", True, 1),
)

FAILURES: tuple[FailurePattern, ...] = (
    FailurePattern(
        "vftp password requested",
        r"Please enter ispCP ftp SQL user password|Access denied for user 'vftp'",
        "ispcp-update could not log into MySQL as vftp with the password in ispCP's working copy of "
        "proftpd.conf, so it asked for the vftp password (the guide's warning). Answering would only hide "
        "the mismatch, or let the script generate a new password",
        "check that MySQL runs, run the ftp step (it makes every proftpd.conf copy agree and sets the vftp "
        "password in MySQL), then run ispcp_update again",
    ),
    FailurePattern(
        "missing ispcp.old.conf",
        r"ispcp\.old\.conf.*(No such file|not found|again after)",
        "the script could not open ispcp.old.conf, the old server's configuration it merges into ispcp.conf",
        "run the ispcp_conf step (it places the backup's ispcp.conf as /etc/ispcp/ispcp.old.conf), then run "
        "ispcp_update again",
    ),
    FailurePattern(
        "key length",
        r"KEY or IV has invalid length|the ispCP key file is missing",
        "the engine's key file is missing or holds a key or IV of the wrong length, so DATABASE_PASSWORD "
        "cannot be decrypted",
        "run the keys step (restores the old key files), then run ispcp_update again",
    ),
    FailurePattern(
        "database connection refused",
        r"Can't connect to (local )?MySQL server|Connection refused|Lost connection to MySQL server",
        "the script could not reach the MySQL server: it is not running, or not at the socket ispCP uses",
        "start MySQL (the mysql_restore step starts it; read its error log if it does not come up), then run "
        "ispcp_update again",
    ),
    FailurePattern(
        "wrong database password",
        r"Access denied for user '(?!vftp')[^']*'",
        "MySQL refused ispCP's own login: the key files decrypt DATABASE_PASSWORD to a password that does "
        "not match the restored mysql database (keys or DATABASE_PASSWORD from another installation)",
        "run the keys step (old key files) and ispcp_conf (the old DATABASE_USER/DATABASE_PASSWORD in "
        "ispcp.conf and ispcp.old.conf), then run ispcp_update again",
    ),
)


@dataclass
class Precheck:
    name: str
    check: str
    ok: bool | None  # None: skipped or not applicable
    detail: str
    fix: str = ""

    def row(self, skipped: bool) -> dict[str, str]:
        state = "skipped" if skipped else ("n/a" if self.ok is None else "ok" if self.ok else "FAIL")
        return {"check": self.check, "result": state, "detail": self.detail, "fix": "" if self.ok else self.fix}


# -- facts ---------------------------------------------------------------------------------------


def target_conf(ctx: Context) -> IspcpConf:
    path = ctx.t(CONF_PATH)
    if not path.is_file():
        raise PreconditionFailed("ispcp.conf", "the target has none", "install the dummy ispCP first", path=CONF_PATH)
    return IspcpConf.load(path, display=CONF_PATH)


def old_conf_logical(conf: IspcpConf) -> str:
    return f"{(conf.get('CONF_DIR') or '/etc/ispcp').rstrip('/')}/ispcp.old.conf"


def script_logical(ctx: Context, conf: IspcpConf) -> str:
    return (
        ctx.param("ispcp_update_script")
        or f"{(conf.get('ROOT_DIR') or '/var/www/ispcp').rstrip('/')}/engine/setup/ispcp-update"
    )


def script_path(ctx: Context, logical: str) -> Path:
    """The script's real path: on the target, unless the parameter names an existing path outside it."""
    p = Path(logical)
    on_target = ctx.t(logical)
    if on_target.exists() or not p.is_absolute():
        return on_target
    return p if p.exists() else on_target


def inputs_digest(ctx: Context, conf: IspcpConf) -> str:
    """What the update consumes, hashed: configs (DEBUG aside), key files, the ProFTPd copies."""
    h = hashlib.sha256()
    for logical in (CONF_PATH, old_conf_logical(conf)):
        path = ctx.t(logical)
        if path.is_file():
            c = IspcpConf.load(path)
            h.update(json.dumps({k: v for k, v in c.values.items() if k != "DEBUG"}, sort_keys=True).encode())
        h.update(b"\0")
    keys = layout_paths(
        conf.get("ROOT_DIR") or "/var/www/ispcp", conf.get("GUI_ROOT_DIR") or None, conf.get("CONF_DIR") or "/etc/ispcp"
    )
    for logical in [*keys.values(), *proftpd.conf_paths(conf)]:
        path = ctx.t(logical)
        h.update(path.read_bytes() if path.is_file() else b"-")
        h.update(b"\0")
    return h.hexdigest()


def log_dir(ctx: Context) -> Path:
    return ctx.state_dir / LOG_DIR


def last_success(ctx: Context) -> dict[str, Any] | None:
    path = log_dir(ctx) / SUCCESS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def next_attempt(ctx: Context) -> int:
    numbers = (
        [int(m.group(1)) for p in log_dir(ctx).glob("attempt-*.log") if (m := re.match(r"attempt-(\d+)-", p.name))]
        if log_dir(ctx).is_dir()
        else []
    )
    return max(numbers, default=0) + 1


# -- pre-checks ----------------------------------------------------------------------------------


def precheck_mysql(ctx: Context) -> Precheck:
    up = ctx.mysql is not None and ctx.mysql.status()
    where = ctx.display_path(ctx.mysql.socket) if ctx.mysql else "?"
    return Precheck(
        "mysql",
        "MySQL is up",
        up,
        f"answers on {where}" if up else f"nothing answers on {where}",
        "start MySQL (mysql_restore starts it after the restore; read its error log)",
    )


def precheck_old_conf(ctx: Context, conf: IspcpConf) -> Precheck:
    logical = old_conf_logical(conf)
    path = ctx.t(logical)
    fix = "run the ispcp_conf step (it copies the backup's ispcp.conf to ispcp.old.conf)"
    if not path.is_file():
        return Precheck("old_conf", "ispcp.old.conf present and complete", False, f"{logical} does not exist", fix)
    try:
        old = IspcpConf.load(path, display=logical)
    except InputError as exc:
        return Precheck("old_conf", "ispcp.old.conf present and complete", False, exc.message, fix)
    ctx.secrets.add(old.get("DATABASE_PASSWORD"), "DATABASE_PASSWORD (encrypted)")
    missing = old.missing(REQUIRED_KEYS)
    if missing:
        return Precheck(
            "old_conf",
            "ispcp.old.conf present and complete",
            False,
            f"{logical} lacks {', '.join(missing)}: the update would stop to ask for them",
            f"set {', '.join(missing)} in {logical} (the ispcp_conf step checks them)",
        )
    return Precheck(
        "old_conf",
        "ispcp.old.conf present and complete",
        True,
        f"{logical}: ispCP {old.get('Version')}, all {len(REQUIRED_KEYS)} required values set",
    )


def precheck_database_login(ctx: Context, conf: IspcpConf) -> Precheck:
    name = "keys decrypt DATABASE_PASSWORD and it logs in"
    fix = "run the keys step (old key files) and ispcp_conf (old DATABASE_USER/DATABASE_PASSWORD)"
    logical = old_conf_logical(conf)
    try:
        old = ispcp_login.load_conf(ctx, "target", logical)
    except InputError as exc:
        return Precheck("database_login", name, False, exc.message, fix)
    if old is None:
        return Precheck("database_login", name, False, f"no {logical} to take DATABASE_PASSWORD from", fix)
    ok, text = ispcp_login.check_conf_login(ctx, old, ispcp_login.keyfile_states(ctx, "target", conf))
    return Precheck("database_login", name, ok, f"{logical}: {text}", fix)


def precheck_vftp(ctx: Context, conf: IspcpConf) -> tuple[Precheck, str | None]:
    """The vftp check on ispCP's working copy (what the update reads); returns the password when it works."""
    info = proftpd.target_login(ctx, conf, which="working")
    ok, text = proftpd.check_vftp(ctx, info)
    check = Precheck(
        "vftp",
        "vftp login works",
        ok,
        text,
        "run the ftp step (syncs the proftpd.conf copies and the vftp password in MySQL)",
    )
    return check, (info.password if ok and info is not None else None)


def precheck_debug(conf: IspcpConf) -> Precheck:
    value = (conf.get("DEBUG") or "").strip()
    return Precheck(
        "debug",
        "DEBUG = 1",
        value == "1",
        f"ispcp.conf has DEBUG = {value or '(unset)'}",
        "run the ispcp_conf step (sets DEBUG = 1, so the update explains its errors)",
    )


def precheck_mail_guard(ctx: Context) -> Precheck:
    name = "mail guard holds"
    required = ctx.param("ispcp_update_require_mail_guard")
    optional = " (not required: ispcp_update_require_mail_guard = False)"
    fix = "run the mail_guard step: the update restarts the services, Postfix included"
    if mail_guard.guard_state(ctx) is None:
        if not required:
            return Precheck("mail_guard", name, None, "no mail guard is set" + optional)
        return Precheck("mail_guard", name, False, "no mail guard is set, and the update will start Postfix", fix)
    ok, text = mail_guard.check_guard(ctx)
    if not ok and not required:
        return Precheck("mail_guard", name, None, text + optional)
    return Precheck("mail_guard", name, ok, text, fix)


def run_prechecks(ctx: Context, conf: IspcpConf) -> tuple[list[Precheck], str | None]:
    vftp, vftp_password = precheck_vftp(ctx, conf)
    checks = [
        precheck_mysql(ctx),
        precheck_old_conf(ctx, conf),
        precheck_database_login(ctx, conf),
        vftp,
        precheck_debug(conf),
        precheck_mail_guard(ctx),
    ]
    return checks, vftp_password


def skipped_prechecks(ctx: Context) -> set[str]:
    value = ctx.param("ispcp_update_skip_prechecks")
    names = {value} if isinstance(value, str) else set(value)
    if "all" in names:
        return set(PRECHECKS)
    unknown = names - set(PRECHECKS)
    if unknown:
        raise InputError(
            "ispcp_update_skip_prechecks",
            f"names unknown checks {sorted(unknown)}",
            f"use names from {', '.join(PRECHECKS)} (or 'all')",
        )
    return names


# -- prompts -------------------------------------------------------------------------------------


def build_prompts(ctx: Context, old_conf: str, vftp_password: str | None) -> list[Prompt]:
    tokens = {"old_conf": old_conf, "vftp_password": vftp_password}

    def fill(answer: str | None) -> str | None:
        if answer is None:
            return None
        if "{vftp_password}" in answer and vftp_password is None:
            return None  # the vftp login did not check out: asking for it is the failure, not a question
        for key, value in tokens.items():
            answer = answer.replace("{" + key + "}", value or "")
        return re.sub(r"\{secret:([A-Za-z0-9_.-]+)\}", _from_secrets_file, answer)

    def _from_secrets_file(m: re.Match[str]) -> str:
        given = ctx.params.get("secrets", {})
        if m.group(1) not in given:
            raise InputError(
                "ispcp_update_answers",
                f"names {{secret:{m.group(1)}}}, which the secrets_file lacks",
                f"add '{m.group(1)}: ...' to the secrets_file (mode 0600)",
            )
        return given[m.group(1)]  # registered as a secret when the file was loaded

    extra = ctx.param("ispcp_update_answers")
    if not isinstance(extra, dict):
        raise InputError(
            "ispcp_update_answers",
            "is not a mapping of prompt regex -> answer",
            "write it as {'Please enter a fully qualified hostname': 'new.example.com'}",
        )
    prompts = []
    for regex, answer in extra.items():
        try:
            re.compile(str(regex))
        except re.error as exc:
            raise InputError(
                "ispcp_update_answers",
                f"the regex {regex!r} is invalid: {exc}",
                "escape special characters such as ? [ ] ( ) with a backslash",
            ) from None
        # Plain answers are parameters (already in the report); an answer drawn from the secrets_file
        # is masked in the transcript. Registering short plain answers ("y") would mask every "y".
        filled = fill(str(answer))
        prompts.append(Prompt(f"answer for /{regex}/", str(regex), filled, "{secret:" in str(answer), 2))
    for label, regex, answer, secret, max_answers in DEFAULT_PROMPTS:
        prompts.append(Prompt(label, regex, fill(answer), secret, max_answers))
    return prompts


def script_env(ctx: Context) -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm"}
    if ctx.target_root != Path("/"):
        # Only the sandbox stand-in honours these; a real ispcp-update ignores them.
        env["ISPCP_SANDBOX_ROOT"] = str(ctx.target_root)
        if ctx.mysql is not None:
            env["ISPCP_SANDBOX_SOCKET"] = str(ctx.mysql.socket)
    return env


# -- the step ------------------------------------------------------------------------------------


@action("ispcp_update", repeatable=True)
def run(ctx: Context, result: Result) -> None:
    conf = target_conf(ctx)
    logical = script_logical(ctx, conf)
    script = script_path(ctx, logical)
    if not script.is_file():
        raise PreconditionFailed(
            "ispcp-update",
            "the update script does not exist",
            "install the dummy ispCP of the target version (ispcp_install_check), or set ispcp_update_script",
            path=logical,
        )
    if not os.access(script, os.X_OK):
        raise PreconditionFailed(
            "ispcp-update",
            "the update script is not executable",
            f"chmod 700 {logical} (a dummy install copied without modes?)",
            path=logical,
        )

    skip = skipped_prechecks(ctx)
    checks, vftp_password = run_prechecks(ctx, conf)
    result.table("Pre-checks", pd.DataFrame([c.row(c.name in skip) for c in checks]))
    if "vftp" in skip:
        vftp_password = None  # never type a password nobody proved
    failed = [c for c in checks if c.ok is False and c.name not in skip]

    done = last_success(ctx)
    digest = inputs_digest(ctx, conf)
    if done and done.get("inputs") == digest and "ispcp_update" not in ctx.force_steps:
        result.noop_reason = (
            f"attempt {done['attempt']} succeeded at {done['ts']} (run {done['run_id']}) with the "
            "same configuration, keys and ProFTPd files; add 'ispcp_update' to force_steps to "
            "run it again"
        )
        return
    if failed:
        if ctx.apply:
            first = failed[0]
            others = f" ({len(failed) - 1} more failed check(s) in the table)" if len(failed) > 1 else ""
            raise PreconditionFailed(f"pre-check '{first.check}'", first.detail + others, first.fix)
        for c in failed:
            result.warn(
                f"pre-check '{c.check}' fails now: {c.detail}. In a dry run, earlier steps' changes are "
                f"not in place yet; if it still fails when applying: {c.fix}"
            )

    keep_debug_through_merge(ctx, result, conf)
    attempt = next_attempt(ctx)
    result.change(f"run {logical} from {Path(logical).parent} (attempt {attempt})")
    if not ctx.apply:
        result.summary = f"would run ispcp-update (attempt {attempt})"
        return

    for path in files_the_update_rewrites(ctx, conf):  # rule 4: keep what the script is about to replace
        ctx.keep(path)
    register_known_secrets(ctx, conf)
    transcript = log_dir(ctx) / f"attempt-{attempt:03d}-{ctx.run_id}.log"
    old_conf = str(ctx.t(old_conf_logical(conf)))
    ctx.log(f"ispcp-update attempt {attempt}: transcript in {transcript}")
    outcome = run_interactive(
        [str(script)],
        cwd=script.parent,
        prompts=build_prompts(ctx, old_conf, vftp_password),
        secrets=ctx.secrets,
        transcript_path=transcript,
        env=script_env(ctx),
        timeout=ctx.param("ispcp_update_timeout"),
        silence=ctx.param("ispcp_update_prompt_silence"),
        failure_patterns=FAILURES,
        log=lambda line: ctx.log(f"  | {line}"),
    )
    _record(ctx, result, outcome, attempt, logical)
    if not outcome.ok:
        explanation, next_action = explain(outcome, ctx.param("ispcp_update_timeout"))
        result.data["failure"] = {
            "pattern": outcome.failure.name if outcome.failure else None,
            "explanation": explanation,
            "next_action": next_action,
        }
        raise PreconditionFailed(
            f"ispcp-update attempt {attempt}",
            f"{outcome.status_text()}. {explanation}",
            next_action,
            path=str(transcript),
        )
    _remember_success(ctx, attempt, transcript, inputs_digest(ctx, target_conf(ctx)))
    checks_after = health.run_checks(ctx)
    result.table("Health after the update", health.frame(checks_after))
    for c in checks_after:
        if c.failed:
            result.warn(f"health: {c.check}: {c.detail}" + (f" Next: {c.next_step}." if c.next_step else ""))
    result.summary = f"attempt {attempt} succeeded in {outcome.duration_s:.1f} s" + (
        "; all health checks pass" if health.all_ok(checks_after) else "; some health checks fail (see the table)"
    )


def register_known_secrets(ctx: Context, conf: IspcpConf) -> None:
    """Every password the script may print (DEBUG = 1 shows a lot), registered even when pre-checks were
    skipped: the database password from both configs, the vftp passwords, the maintainer logins."""
    proftpd.target_copies(ctx, conf)  # registers as it reads
    mysql_creds.target_admin(ctx)
    try:
        mysql_creds.backup_admin(ctx)
    except InputError:
        pass  # a backup debian.cnf that escapes the backup root is inventory's business
    found = ispcp_login.keysets(ctx, "target")
    for logical in (CONF_PATH, old_conf_logical(conf)):
        try:
            c = ispcp_login.load_conf(ctx, "target", logical)
            if c is not None and c.get("DATABASE_PASSWORD"):
                ispcp_login.try_decrypt(c, found, ctx.secrets)
        except InputError:
            continue


def files_the_update_rewrites(ctx: Context, conf: IspcpConf) -> list[Path]:
    """Configuration the script replaces: ispcp.conf (the merge), the ProFTPd copies, the vhost file."""
    sites = conf.get("APACHE_SITES_DIR") or "/etc/apache2/sites-available"
    logicals = [CONF_PATH, old_conf_logical(conf), *proftpd.conf_paths(conf), f"{sites}/ispcp.conf"]
    return [ctx.t(p) for p in logicals if ctx.t(p).is_file()]


def keep_debug_through_merge(ctx: Context, result: Result, conf: IspcpConf) -> None:
    """The update copies every value of ispcp.old.conf into ispcp.conf, DEBUG included: an old DEBUG = 0
    would switch the debug output off during the first attempt and fail the next attempt's pre-check.
    So ispcp.old.conf gets DEBUG = 1 as well (cleanup sets both back to 0)."""
    if (conf.get("DEBUG") or "").strip() != "1":
        return
    logical = old_conf_logical(conf)
    path = ctx.t(logical)
    if not path.is_file():
        return
    try:
        old = IspcpConf.load(path, display=logical)
    except InputError:
        return
    if "DEBUG" in old and (old.get("DEBUG") or "").strip() != "1":
        old.set("DEBUG", "1")
        ctx.write_file(path, old.text(), what=f"set DEBUG = 1 in {logical}, so that the update's merge keeps it")


def _record(ctx: Context, result: Result, outcome: Outcome, attempt: int, logical: str) -> None:
    result.commands.append(
        CommandRecord(
            [f"cd {Path(logical).parent} && ./{Path(logical).name}"],
            outcome.exit_status,
            outcome.transcript,
            "",
            outcome.duration_s,
        )
    )
    result.table(
        "Attempt",
        pd.DataFrame(
            [
                {
                    "attempt": attempt,
                    "duration (s)": round(outcome.duration_s, 1),
                    "exit status": outcome.exit_status,
                    "outcome": outcome.status_text(),
                    "prompts answered": ", ".join(outcome.answered),
                    "transcript": str(outcome.transcript_path),
                }
            ]
        ),
    )
    result.data["attempt"] = {
        "number": attempt,
        "exit_status": outcome.exit_status,
        "ok": outcome.ok,
        "duration_s": outcome.duration_s,
        "transcript": str(outcome.transcript_path),
    }


def explain(outcome: Outcome, timeout: float) -> tuple[str, str]:
    """A plain explanation of the failed attempt and the next action."""
    where = outcome.last_output.strip().splitlines()
    last = f" Its last output: {' / '.join(ln.strip() for ln in where[-3:])}" if where else ""
    if outcome.failure is not None:
        return outcome.failure.explanation + "." + last, outcome.failure.next_action
    if outcome.spawn_error:
        return f"the script could not be started: {outcome.spawn_error}", "check the path and its interpreter line"
    if outcome.timed_out:
        return (
            f"the script did not finish within {timeout:.0f} s, so its process group was killed.{last}",
            "read the transcript to see where it hung; if it was still rebuilding customers, run "
            "engine_speedup or raise ispcp_update_timeout, then run ispcp_update again",
        )
    if outcome.unexpected_prompt is not None:
        return (
            f"the script asked a question no answer is configured for: {outcome.unexpected_prompt!r}",
            "if it asks for a value of the old configuration, set it in ispcp.old.conf; otherwise add "
            "{regex: answer} to ispcp_update_answers, then run ispcp_update again",
        )
    if outcome.repeated_prompt is not None:
        return (
            f"the script did not accept the answer and asked again: {outcome.repeated_prompt!r}",
            "correct the answer (ispcp_update_answers) or the file it points to, then run again",
        )
    return (
        f"the script failed ({outcome.status_text()}) with an error this runbook does not know.{last}",
        "read the transcript's last lines (DEBUG = 1 adds detail), fix the cause, run ispcp_update again",
    )


def _remember_success(ctx: Context, attempt: int, transcript: Path, digest: str) -> None:
    path = log_dir(ctx) / SUCCESS_FILE
    path.write_text(
        json.dumps(
            {
                "attempt": attempt,
                "run_id": ctx.run_id,
                "transcript": str(transcript),
                "ts": dt.datetime.now().isoformat(timespec="seconds"),
                "inputs": digest,
            },
            indent=1,
        )
    )
    path.chmod(0o600)
