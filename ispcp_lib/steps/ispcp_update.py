"""ispcp_update: check everything the update needs, then drive engine/setup/ispcp-update on a pty."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.progress import progress_bar
from ispcp_lib.core.result import CommandRecord, Result
from ispcp_lib.facts import backup_layout, ispcp_login, mysql_creds, proftpd
from ispcp_lib.facts.ispcp_conf import REQUIRED_KEYS, IspcpConf
from ispcp_lib.ispcp import bind_zones, health, update_env
from ispcp_lib.ispcp.engine import engine_env
from ispcp_lib.ispcp.keyfiles import layout_paths
from ispcp_lib.ispcp.update_driver import UPDATE_PHASES, FailurePattern, Outcome, Prompt, run_interactive
from ispcp_lib.ispcp.update_env import CONF_PATH
from ispcp_lib.system import postfix_guard as guard

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

PRECHECKS = ("mysql", "old_conf", "database_login", "vftp", "debug", "mail_guard")
# Success is this line, never the exit status alone: 1.0.7 exits 0 when it aborts (a running backup,
# an answer "n"). 1.0.7: ispcp-update:795-797 ("…ispCP OMEGA'1.0.7 OMEGA' successfully!");
# 1.0.5: ispcp-update "Congratulations, you updated ispCP '1.0.5 OMEGA' successfully!".
SUCCESS = r"Congratulations, you updated ispCP\b.*successfully!"

# The questions ispcp-update asks, with the real wording (1.0.7's; 1.0.5's where it differs) and
# where each is in the source. Matched on the joined text of a question wrapped over lines.
# label, regex, answer (tokens filled in), secret, max answers
DEFAULT_PROMPTS: tuple[tuple[str, str, str | None, bool, int], ...] = (
    # welcome_note ispcp-update:125, cfg_recovery_process :354 (1.0.5: "continue [Y/n]", :378 and :601)
    ("continue [Y/n]", r"Do you want to continue ?\??\s*\[Y/n\]:\s*$", "Y", False, 3),
    # warn_msg ispcp-update:162 (1.0.5 :416)
    ("continue [Y/n/?]", r"Do you want to continue ?\??\s*\[Y/n/\?\]:\s*$", "Y", False, 2),
    # load_old_ispcp_cfg ispcp-update:194, asked only when the default path cannot be loaded
    ("path to ispcp.old.conf", r"Please enter path to your ispcp\.old\.conf.*:\s*$", "{old_conf}", False, 1),
    # cfg_recovery_process ispcp-update:338, when three or more settings are empty (1.0.5: two)
    ("installed ispCP?", r"Are you sure you have installed ispCP ?\?\s*\[Y/n\]:\s*$", "Y", False, 1),
    # cfg_recovery_process ispcp-update:420
    ("press Enter", r"type 'Enter' to continue", "", False, 2),
    # setup_ftpd (ispcp-setup-methods.pl:2462-2468) when the working proftpd.conf's login fails:
    # Query.pm:67, :70, :71 (1.0.5 ispcp-setup-methods.pl:258, :294, :308)
    ("FTP SQL user", r"Please enter ispCP (FTP SQL user|ftp SQL user\.) \[[^\]]*\]:\s*$", "{vftp_user}", False, 1),
    (
        "vftp password",
        r"Please enter ispCP (OMEGA FTP|ftp) SQL user password\.? \[auto generate\]:\s*$",
        "{vftp_password}",
        True,
        1,
    ),
    ("vftp password again", r"Please repeat ispCP (OMEGA )?ftp SQL user password:\s*$", "{vftp_password}", True, 1),
    # setup_gui_pma (ispcp-setup-methods.pl:2941-2948) without a working config.inc.php: Query.pm:96 and
    # :100 (1.0.5 ispcp-setup-methods.pl:613, :658). Empty answers: the current PMA_USER, and a new
    # generated password (shown once: the transcript masks it).
    (
        "PMA control user",
        r"Please enter (ispCP OMEGA PMA control user|ispCP phpMyAdmin Control user\.) \[[^\]]*\]:\s*$",
        "",
        False,
        1,
    ),
    (
        "PMA control password",
        r"Please enter (ispCP OMEGA PMA control user|ispCP phpMyAdmin Control user) password\.? "
        r"\[auto generate\]:\s*$",
        "",
        False,
        1,
    ),
    # ask_hostname's confirmation for a name of fewer than three labels: Query.pm:47
    ("use this hostname?", r"Are you sure you want to use this hostname\? \[Y/n\]:\s*$", "Y", False, 1),
)
# Recovery mode (cfg_recovery_process, ispcp-update:317-328): a question per empty setting, the
# ask_* queries of Query.pm (1.0.5's wording of ispcp-setup-methods.pl beside it). Answered from the
# configs (SETTING_SOURCES); a setting none of them holds is left to ispcp_update_answers.
RECOVERY_PROMPTS: tuple[tuple[str, str], ...] = (
    ("DEFAULT_ADMIN_ADDRESS", r"Please enter administrator e-mail address:\s*$"),  # Query.pm:84
    ("SERVER_HOSTNAME", r"Please enter a fully qualified hostname\.? \[[^\]]*\]:\s*$"),  # Query.pm:45
    ("BASE_SERVER_IP", r"Please enter (the )?system network address\.? \[[^\]]*\]:\s*$"),  # Query.pm:50
    (  # Query.pm:53
        "BASE_SERVER_VHOST",
        r"Please enter the domain name where ispCP OMEGA will (be reachable on|run on) \[[^\]]*\]:\s*$",
    ),
    ("DATABASE_HOST", r"Please enter SQL server (hostname|host\.) \[[^\]]*\]:\s*$"),  # Query.pm:56
    (  # Query.pm:59
        "DATABASE_NAME",
        r"Please enter (ispCP OMEGA SQL database name|system SQL database\.) \[[^\]]*\]:\s*$",
    ),
    ("DATABASE_USER", r"Please enter (ispCP OMEGA SQL user name|system SQL user\.) \[[^\]]*\]:\s*$"),  # :61
    ("PHP_FASTCGI", r"Please select a Fast CGI module: \[f\]cgid or fast\[c\]gi\. \[[^\]]*\]:\s*$"),  # :105
    ("PHP_TIMEZONE", r"Please enter Server's Timezone \[[^\]]*\]:\s*$"),  # Query.pm:108
    (  # Query.pm:90
        "LOCAL_DNS_RESOLVER",
        r"Do you want allow the system resolver to use the local nameserver\? \[Y/n\]:\s*$",
    ),
)
SETTING_SOURCES = "ispcp.old.conf on the target, the backup's ispcp.conf, the target's ispcp.conf"
# Every recovery question but this one offers a default (the setup's own: hostname -f, the first
# address, admin.<hostname>, …): an empty answer takes it when no config holds the setting.
NO_DEFAULT = ("DEFAULT_ADMIN_ADDRESS",)

# With DEBUG = 1 most of the real script's lines are its call trace ("[DEBUG] push_el() sub_name: get_file(),
# msg: Starting..."): some 20,000 per update. The transcript file keeps them; the live log leaves them out.
ENTER_LEAVE = re.compile(r"^\.?\[DEBUG\] push_el\(\) sub_name: [^,]*, msg: (Starting|Ending)\.\.\.$")

DB_LOGIN = "database login failed"
DB_DOWN = FailurePattern(
    "database connection refused",
    r"Unable to connect SQL server",
    "the script could not reach the MySQL server: it is not running, or not at the socket ispCP uses",
    "start MySQL (the mysql_restore step starts it; read its error log if it does not come up), then run "
    "ispcp_update again",
)
DB_PASSWORD = FailurePattern(
    "wrong database password",
    r"Unable to connect SQL server",
    "MySQL refused ispCP's own login: the key files decrypt DATABASE_PASSWORD to a password that does "
    "not match the restored mysql database (keys or DATABASE_PASSWORD from another installation)",
    "run the keys step (old key files) and ispcp_conf (the old DATABASE_USER/DATABASE_PASSWORD in "
    "ispcp.conf and ispcp.old.conf), then run ispcp_update again",
)
# The real messages. doSQL's "[ERROR] Unable to connect SQL server with current DSN: …" (1.0.7
# ispcp_common_methods.pl:266; 1.0.5 :223 "ERROR: Unable to connect SQL server !") is printed only
# with DEBUG = 1 and does not say why: the pre-checks tell a stopped server from a wrong password.
FAILURES: tuple[FailurePattern, ...] = (
    FailurePattern(
        "backup engine running",
        r"Backup engine is currently running\. Aborting",  # ispcp-update:649-654 (exit status 0)
        "the script stopped at once because /tmp/ispcp-backup-all.lock exists on the target (ispCP's backup "
        "engine runs, or died and left its lock); it exits 0 all the same",
        "wait until ispcp-backup-all has finished, or remove a stale /tmp/ispcp-backup-all.lock, then run "
        "ispcp_update again",
    ),
    FailurePattern(
        "vftp password requested",
        # setup_ftpd's warning (ispcp-setup-methods.pl:2444) and the FTP questions that follow it
        r"Unable to connect to the database with authentication information|Please enter ispCP (OMEGA )?"
        r"(FTP|ftp) SQL user",
        "ispcp-update could not log into MySQL as vftp with the password in ispCP's working copy of "
        "proftpd.conf, so it asked for the FTP SQL user and password (the guide's warning). Answering would "
        "only hide the mismatch, or let the script generate a new password",
        "check that MySQL runs, run the ftp step (it makes every proftpd.conf copy agree and sets the vftp "
        "password in MySQL), then run ispcp_update again",
    ),
    FailurePattern(
        "missing ispcp.old.conf",
        r"Please enter path to your ispcp\.old\.conf",  # asked only when the default path fails (:192)
        "the script could not load ispcp.old.conf, the old server's configuration it merges into ispcp.conf",
        "run the ispcp_conf step (it places the backup's ispcp.conf as /etc/ispcp/ispcp.old.conf), then run "
        "ispcp_update again",
    ),
    FailurePattern(
        "setting the recovery cannot ask for",
        r"The setting '\w+' can't be handle",  # ispcp-update:395-400
        "ispcp.conf has an empty setting that the update's recovery mode has no question for",
        "set the setting the transcript names in ispcp.old.conf (the ispcp_conf step writes that file), then "
        "run ispcp_update again",
    ),
    FailurePattern(
        "key length",
        # decrypt_db_password (ispcp_common_methods.pl:1775); require 'ispcp-db-keys.pl' without the file
        r"KEY or IV has invalid length|Can't locate ispcp-db-keys\.pl",
        "the engine's key file is missing or holds a key or IV of the wrong length, so DATABASE_PASSWORD "
        "cannot be decrypted",
        "run the keys step (restores the old key files), then run ispcp_update again",
    ),
    FailurePattern(
        DB_LOGIN,
        r"Unable to connect SQL server",
        "the script could not log into MySQL with ispCP's own DSN",
        "check the pre-checks 'MySQL is up' and 'keys decrypt DATABASE_PASSWORD and it logs in'",
    ),
    FailurePattern(
        "database schema update",
        r"Update ispCP database schema:.*Failed",  # update_database_schema (updDB.php), ispcp-update:716-719
        "updDB.php, the schema update, failed (ispCP 1.0.5 writes its output to "
        "/tmp/ispcp-update-database.log on the target)",
        "read the transcript's DEBUG lines or /tmp/ispcp-update-database.log on the target, fix the cause, "
        "then run ispcp_update again",
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


def require_conf(ctx: Context) -> IspcpConf:
    conf = update_env.load_conf(ctx)
    if conf is None:
        raise PreconditionFailed("ispcp.conf", "the target has none", "install the dummy ispCP first", path=CONF_PATH)
    return conf


def script_logical(ctx: Context, conf: IspcpConf) -> str:
    return ctx.param("ispcp_update_script") or f"{update_env.root_dir(conf)}/engine/setup/ispcp-update"


def inputs_digest(ctx: Context, conf: IspcpConf) -> str:
    """What the update consumes, hashed: configs (DEBUG aside), key files, the ProFTPd copies."""
    h = hashlib.sha256()
    for path in (CONF_PATH, update_env.old_conf_path(conf)):
        c = update_env.load_conf(ctx, path)
        if c is not None:
            h.update(json.dumps({k: v for k, v in c.values.items() if k != "DEBUG"}, sort_keys=True).encode())
        h.update(b"\0")
    keys = layout_paths(
        conf.get("ROOT_DIR") or "/var/www/ispcp", conf.get("GUI_ROOT_DIR") or None, conf.get("CONF_DIR") or "/etc/ispcp"
    )
    for path in [*keys.values(), *proftpd.conf_paths(conf)]:
        h.update(ctx.target.read_bytes(path) or b"-")
        h.update(b"\0")
    return h.hexdigest()


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
    logical = update_env.old_conf_path(conf)
    fix = "run the ispcp_conf step (it copies the backup's ispcp.conf to ispcp.old.conf)"
    try:
        old = update_env.load_conf(ctx, logical)
    except InputError as exc:
        return Precheck("old_conf", "ispcp.old.conf present and complete", False, exc.message, fix)
    if old is None:
        return Precheck("old_conf", "ispcp.old.conf present and complete", False, f"{logical} does not exist", fix)
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
    logical = update_env.old_conf_path(conf)
    try:
        old = ispcp_login.load_conf(ctx, "target", logical)
    except InputError as exc:
        return Precheck("database_login", name, False, exc.message, fix)
    if old is None:
        return Precheck("database_login", name, False, f"no {logical} to take DATABASE_PASSWORD from", fix)
    ok, text = ispcp_login.check_conf_login(ctx, old, ispcp_login.keyfile_states(ctx, "target", conf))
    return Precheck("database_login", name, ok, f"{logical}: {text}", fix)


def precheck_vftp(ctx: Context, conf: IspcpConf) -> tuple[Precheck, proftpd.SqlConnect | None]:
    """The vftp check on ispCP's working copy (what the update reads); returns the login when it works."""
    info = proftpd.target_login(ctx, conf, which="working")
    ok, text = proftpd.check_vftp(ctx, info)
    check = Precheck(
        "vftp",
        "vftp login works",
        ok,
        text,
        "run the ftp step (syncs the proftpd.conf copies and the vftp password in MySQL)",
    )
    return check, (info if ok else None)


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
    if guard.guard_state(ctx) is None:
        if not required:
            return Precheck("mail_guard", name, None, "no mail guard is set" + optional)
        return Precheck("mail_guard", name, False, "no mail guard is set, and the update will start Postfix", fix)
    ok, text = guard.check_guard(ctx)
    if not ok and not required:
        return Precheck("mail_guard", name, None, text + optional)
    return Precheck("mail_guard", name, ok, text, fix)


def run_prechecks(ctx: Context, conf: IspcpConf) -> tuple[list[Precheck], proftpd.SqlConnect | None]:
    vftp, vftp_login = precheck_vftp(ctx, conf)
    checks = [
        precheck_mysql(ctx),
        precheck_old_conf(ctx, conf),
        precheck_database_login(ctx, conf),
        vftp,
        precheck_debug(conf),
        precheck_mail_guard(ctx),
    ]
    return checks, vftp_login


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


def setting_answers(ctx: Context, conf: IspcpConf) -> dict[str, str]:
    """The recovery-mode answers: each setting's first non-empty value in SETTING_SOURCES, else the
    script's default (an empty answer) where it offers one."""
    configs = [update_env.load_conf(ctx, update_env.old_conf_path(conf))]
    try:
        configs.append(backup_layout.load_old_conf(ctx))
    except InputError:
        pass  # an unreadable backup config is inventory's business; the others may still answer
    configs.append(conf)
    out = {}
    for key, _ in RECOVERY_PROMPTS:
        value = next((v for c in configs if c is not None and (v := (c.get(key) or "").strip())), None)
        if value is not None:
            # ask_resolver takes y/n (ispcp-setup-methods.pl:468); ispcp.conf says yes/no.
            out[key] = {"yes": "y", "no": "n"}.get(value.lower(), value) if key == "LOCAL_DNS_RESOLVER" else value
        elif key not in NO_DEFAULT:
            out[key] = ""
    return out


def build_prompts(
    ctx: Context, old_conf: str, vftp: proftpd.SqlConnect | None, settings: dict[str, str] | None = None
) -> list[Prompt]:
    """The parameter's answers first (they override), then the known questions, then recovery mode's."""
    tokens = {
        "old_conf": old_conf,
        "vftp_user": vftp.user if vftp else None,
        "vftp_password": vftp.password if vftp else None,
    }

    def fill(answer: str | None) -> str | None:
        if answer is None:
            return None
        if any("{" + k + "}" in answer and v is None for k, v in tokens.items()):
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
    for key, regex in RECOVERY_PROMPTS:
        if settings and key in settings:  # else: an unexpected question, quoted with the way to answer it
            prompts.append(Prompt(f"recovery: {key}", regex, settings[key], False, 2))
    return prompts


# -- the step ------------------------------------------------------------------------------------


@action("ispcp_update", repeatable=True)
def run(ctx: Context, result: Result) -> None:
    conf = require_conf(ctx)
    script = script_logical(ctx, conf)
    st = ctx.target.stat(ctx.target.realpath(script)) if ctx.target.exists(script) else None
    if st is None or not st.is_file:
        raise PreconditionFailed(
            "ispcp-update",
            "the update script does not exist",
            "install the dummy ispCP of the target version (ispcp_install_check), or set ispcp_update_script",
            path=script,
        )
    if not st.mode & 0o100:
        raise PreconditionFailed(
            "ispcp-update",
            "the update script is not executable",
            f"chmod 700 {script} (a dummy install copied without modes?)",
            path=script,
        )

    skip = skipped_prechecks(ctx)
    checks, vftp = run_prechecks(ctx, conf)
    result.table("Pre-checks", pd.DataFrame([c.row(c.name in skip) for c in checks]))
    if "vftp" in skip:
        vftp = None  # never type a password nobody proved
    failed = [c for c in checks if c.ok is False and c.name not in skip]

    done = update_env.last_success(ctx)
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
            result.blocked.append(f"pre-check '{c.check}'")
            result.warn(
                f"pre-check '{c.check}' fails now: {c.detail}. In a dry run, earlier steps' changes are "
                f"not in place yet; if it still fails when applying: {c.fix}"
            )

    keep_debug_through_merge(ctx, result, conf)
    seed_bind_zones(ctx, result, conf)
    attempt = update_env.next_attempt(ctx)
    folder = str(PurePosixPath(script).parent)
    for path in files_the_update_rewrites(ctx, conf):  # rule 4: keep what the script is about to replace
        ctx.keep(path)
    register_known_secrets(ctx, conf)
    transcript = f"{update_env.log_dir(ctx)}/attempt-{attempt:03d}-{ctx.run_id}.log"
    timeout = float(ctx.param("ispcp_update_timeout", 3600))

    def run_update() -> Outcome:
        ctx.log(f"ispcp-update attempt {attempt}: transcript in {transcript}")
        with transcript_file(ctx, transcript) as local:
            outcome = run_interactive(
                ctx.target,
                [ctx.target.path(script)],
                cwd=ctx.target.path(folder),  # the guide: always from engine/setup
                prompts=build_prompts(ctx, update_env.old_conf_path(conf), vftp, setting_answers(ctx, conf)),
                secrets=ctx.secrets,
                transcript_path=local,
                env=engine_env(ctx),
                timeout=timeout,
                silence=float(ctx.param("ispcp_update_prompt_silence", 10)),
                failure_patterns=FAILURES,
                success=SUCCESS,
                log=lambda line: None if ENTER_LEAVE.search(line) else ctx.log(f"  | {line}"),
                phases=progress_bar(ctx, len(UPDATE_PHASES), "ispcp-update, phases"),
            )
        outcome.transcript_path = Path(transcript)
        return outcome

    outcome = ctx.do(f"run {script} from {folder} (attempt {attempt})", run_update)
    if outcome is None:
        result.summary = f"would run ispcp-update (attempt {attempt})"
        return
    guard.reassert(ctx, result)  # the script rewrote main.cf and restarted Postfix, attempt failed or not
    if outcome.failure is not None and outcome.failure.name == DB_LOGIN:
        outcome.failure = DB_DOWN if any(c.name == "mysql" and c.ok is False for c in checks) else DB_PASSWORD
    _record(ctx, result, outcome, attempt, script)
    if not outcome.ok:
        explanation, next_action = explain(outcome, timeout)
        result.data["failure"] = {
            "pattern": outcome.failure.name if outcome.failure else None,
            "explanation": explanation,
            "next_action": next_action,
        }
        raise PreconditionFailed(
            f"ispcp-update attempt {attempt}", f"{outcome.status_text()}. {explanation}", next_action, path=transcript
        )
    update_env.remember_success(ctx, attempt, transcript, inputs_digest(ctx, require_conf(ctx)))
    checks_after = health.run_checks(ctx)
    result.table("Health after the update", health.frame(checks_after))
    for c in checks_after:
        if c.failed:
            result.warn(f"health: {c.check}: {c.detail}" + (f" Next: {c.next_step}." if c.next_step else ""))
    result.summary = f"attempt {attempt} succeeded in {outcome.duration_s:.1f} s" + (
        "; all health checks pass" if health.all_ok(checks_after) else "; some health checks fail (see the table)"
    )


@contextmanager
def transcript_file(ctx: Context, path: str) -> Iterator[Path]:
    """Where the driver streams the transcript: the state dir itself when it is on this machine, else a
    private temporary file whose text is written to the state dir (0600) when the attempt ends."""
    ctx.state.mkdir(str(PurePosixPath(path).parent), mode=0o700)
    if isinstance(ctx.state, LocalConnection):
        yield Path(ctx.state.path(path))
        return
    with tempfile.TemporaryDirectory(prefix="ispcp-update-") as tmp:
        local = Path(tmp) / "transcript.log"
        try:
            yield local
        finally:
            if local.exists():
                ctx.state.write_atomic(path, local.read_bytes(), mode=0o600)


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
    for logical in (CONF_PATH, update_env.old_conf_path(conf)):
        try:
            c = ispcp_login.load_conf(ctx, "target", logical)
            if c is not None and c.get("DATABASE_PASSWORD"):
                ispcp_login.try_decrypt(c, found, ctx.secrets)
        except InputError:
            continue


def files_the_update_rewrites(ctx: Context, conf: IspcpConf) -> list[str]:
    """Configuration the script replaces: ispcp.conf (the merge), the ProFTPd copies, the vhost file."""
    sites = conf.get("APACHE_SITES_DIR") or "/etc/apache2/sites-available"
    paths = [CONF_PATH, update_env.old_conf_path(conf), *proftpd.conf_paths(conf), f"{sites}/ispcp.conf"]
    return [p for p in paths if ctx.target.is_file(p)]


def seed_bind_zones(ctx: Context, result: Result, conf: IspcpConf) -> None:
    """The DNS managers the update calls need Bind's working zone files, which the backup does not hold."""
    login = next(ispcp_login.database_logins(ctx), None)
    if login is None or ctx.mysql is None or not ctx.mysql.status():
        if not ctx.apply:
            result.warn("Bind's working zones cannot be listed yet (no working database login); planned when applying")
        return
    zones = bind_zones.read_zones(ctx, login.user, login.password, conf.database_name)
    seeded = bind_zones.seed_missing(ctx, conf, zones)
    if seeded:
        result.note(
            f"{len(seeded)} of {len(zones)} zones had no working file in {conf.get('CONF_DIR') or '/etc/ispcp'}"
            "/bind/working (the backup has none): seeded from the target's parts/db_e.tpl, as the DNS managers "
            "write it when a domain is added"
        )


def keep_debug_through_merge(ctx: Context, result: Result, conf: IspcpConf) -> None:
    """The update copies every value of ispcp.old.conf into ispcp.conf, DEBUG included: an old DEBUG = 0
    would switch the debug output off during the first attempt and fail the next attempt's pre-check.
    So ispcp.old.conf gets DEBUG = 1 as well (cleanup sets both back to 0)."""
    if (conf.get("DEBUG") or "").strip() != "1":
        return
    path = update_env.old_conf_path(conf)
    try:
        old = update_env.load_conf(ctx, path)
    except InputError:
        return
    if old is not None and "DEBUG" in old and (old.get("DEBUG") or "").strip() != "1":
        old.set("DEBUG", "1")
        ctx.write_file(path, old.text(), what=f"set DEBUG = 1 in {path}, so that the update's merge keeps it")


def _record(ctx: Context, result: Result, outcome: Outcome, attempt: int, script: str) -> None:
    where = PurePosixPath(script)
    result.commands.append(
        CommandRecord(
            [f"cd {where.parent} && ./{where.name}"],
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
