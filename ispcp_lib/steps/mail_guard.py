"""mail_guard: keep mail for the hosted domains from bouncing for good while the server is rebuilt.

The guard's record, its check, the watchdog and the lift live in ispcp_lib.system.postfix_guard,
which the other steps use; this module sets the guard and shows the probe and the DNS table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action, last_applied
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import GuardBroken, InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.progress import progress_bar
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.facts import backup_layout, dns_table, mysql_creds, postfix
from ispcp_lib.facts.backup_db_reader import read_backup_database, scratch_dir
from ispcp_lib.facts.ispcp_conf import DEFAULT_DATABASE_NAME
from ispcp_lib.ispcp import update_env
from ispcp_lib.system import postfix_guard as guard

TITLE = "Guard incoming mail"
GUIDE = (
    "the section on preparing Postfix before ispCP is installed (the two options: re-point DNS, or keep "
    "Postfix off until it is configured), and its background on MX records and hard errors"
)
EXPLANATION = """
**Why mail is in danger now.** A sending mail server looks up the MX records of the recipient's domain
and tries those hosts in order of preference; only when a domain has **no** MX record at all does it
fall back to the domain's A record. Either way, mail for the hosted domains soon arrives at this new
machine. Its freshly installed Postfix does not know those domains yet, treats their mail as relay,
and refuses it with `554 5.7.1 Relay access denied`. A 5xx answer is a *hard* error: the sender
gives up at once and returns the message to its author. The mail is lost. A server that does not
answer, or answers with a 4xx *soft* error, only delays it: senders queue the message and retry for
days.

**The defences.** The guide offers two: point the domains' DNS records away from the server a day or
two ahead (slow, and stubborn caches may ignore it), or keep Postfix stopped until ispCP has
configured it (quick, but somebody has to watch that nothing starts it). This step adds a third and
makes the second safer:

* `soft_bounce` (the default): sets Postfix's `soft_bounce = yes` with `postconf`, keeping the previous
  value, and reloads a running Postfix. Every rejection becomes a temporary 4xx; senders retry later.
* `stop`: stops Postfix and blocks it from starting: a `policy-rc.d` that refuses `postfix` (an existing
  policy is kept and still consulted for every other service), plus `systemctl mask` where systemd runs.
* `none`: changes nothing; only the checks and the DNS table.

The guard is recorded in the state directory. **Every later changing step checks it first** and stops
with a red error when Postfix runs or listens although the guard says `stop`, or when `soft_bounce`
was switched off (installers like to start services and rewrite `main.cf`). ispCP's own setup and
update build `main.cf` from ispCP's template (`/etc/ispcp/postfix/main.cf`), copy it over Postfix's and
start Postfix with its init script, which no `policy-rc.d` stops: so the `soft_bounce` guard also goes
into that template (every `main.cf` the update writes carries it from the first second), and
`ispcp_update` checks and re-asserts the guard after each attempt. The `cleanup` step lifts the guard
from both and restores exactly what was there before.

**During the dummy install**, before this runbook can run, the new server's `ispcp-setup` starts
Postfix too. Keep mail off it meanwhile: keep the domains' MX records away from the new address until
the recovery is done, or block port 25 (`iptables -I INPUT -p tcp --dport 25 -j REJECT`: a refused
connection is retried by senders), or put `soft_bounce = yes` on a line of its own at the end of
`/etc/ispcp/postfix/main.cf` of the unpacked release before running `ispcp-setup`. Then run this step
first. The result shows what an SMTP server answers
to `RCPT TO` for an address at a hosted domain, before and after the guard. The probe comes from
127.0.0.1: a stock Postfix trusts 127.0.0.0/8 (`mynetworks`) and relays for it, so its answer is then
250 and tells nothing about outside senders; the result says so when the probe's source is in
`mynetworks`.

**The DNS table** lists every name ispCP hosts (domains, aliases, subdomains), taken from the
backup's database before the restore (read by a throwaway MariaDB on a copy) or from the restored
one afterwards. For each name it resolves the MX records, the MX hosts' addresses and the name's own
A record, and says where mail goes: the old server's IP, the new one, elsewhere, nowhere (NXDOMAIN),
or via the A fallback when there is no MX. The names that still point at the old IP tell you how much
mail depends on the old address (or on this server, if it took the old IP over). Queries run in
parallel with a bound, a timeout per query and a bound on the whole table, so a dead nameserver shows
up as timeouts instead of hanging the run.
"""
MODES = ("soft_bounce", "stop", "none")
PARAMETERS: tuple[Param, ...] = (
    Param(
        "mail_guard_mode",
        str,
        "soft_bounce",
        "how mail_guard keeps Postfix from bouncing mail for good until ispCP configured it",
        choices=MODES,
    ),
    Param("postfix_config_dir", str, None, "Postfix config dir (postconf -c); None = /etc/postfix on the target"),
    Param(
        "postfix_smtp_port",
        int,
        25,
        "the SMTP port the guard watches and the SMTP probe asks",
        minimum=1,
        maximum=65535,
    ),
    Param("dns_nameserver", str, None, "nameserver for the DNS table, 'IP' or 'IP:port'; None = the system resolver"),
    Param(
        "dns_timeout",
        float,
        3.0,
        "seconds one DNS query may take (the DNS table shows 'timeout' after that)",
        minimum=0.01,
    ),
    Param(
        "dns_total_timeout",
        float,
        120.0,
        "seconds the whole DNS table may take; unfinished names show as timeouts",
        minimum=0.01,
    ),
    Param("dns_concurrency", int, 32, "DNS queries in flight at once", minimum=1),
    Param(
        "old_server_ip",
        str,
        None,
        "the old server's IP for the DNS table; None = BASE_SERVER_IP of the backup's ispcp.conf",
    ),
)

SYSTEMD_UNITS = ("postfix.service", "postfix@-.service")
FULL_TABLE_ROWS = 200  # larger DNS tables show the rows that matter; all rows stay in result.data

POLICY_SCRIPT = f"""#!/bin/sh
{guard.POLICY_MARKER}: Postfix stays off until the recovery has configured it.
# invoke-rc.d and deb-systemd-invoke ask this script before starting a service; exit 101 = refused.
# The cleanup step of the recovery runbook removes it (and puts back a previous policy, if any).
for arg in "$@"; do
    case "$arg" in
        --*) continue ;;
        postfix|postfix.service|postfix@*) exit 101 ;;
    esac
    break
done
# The policy that was here before the guard, kept beside this script.
saved="$(dirname "$0")/{PurePosixPath(guard.SAVED_POLICY_RC_D).name}"
if [ -x "$saved" ]; then
    exec "$saved" "$@"
fi
exit 0
"""


# --- parameters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The step's parameters, validated before anything is looked at or changed."""

    mode: str
    config_dir: str  # the target's own path
    smtp_port: int
    nameserver: str | None
    dns_timeout: float
    dns_total_timeout: float
    dns_concurrency: int


def _param(ctx: Context, name: str) -> Any:
    return getattr(ctx.step_params(PARAMETERS), name)


def _number(ctx: Context, name: str, kind: type, low: float) -> Any:
    try:
        value = kind(_param(ctx, name))
    except (TypeError, ValueError):
        raise InputError(name, f"is {_param(ctx, name)!r}, not a number", "give a positive number") from None
    if value < low or (name == "postfix_smtp_port" and value > 65535):
        raise InputError(name, f"is {value}, out of range", "give a positive number (a port: 1..65535)")
    return value


def settings(ctx: Context) -> Settings:
    mode = str(_param(ctx, "mail_guard_mode")).strip()
    if mode not in MODES:
        raise InputError("mail_guard_mode", f"is {mode!r}", f"use one of {', '.join(MODES)}")
    try:
        dns_table.parse_nameserver(ctx.param("dns_nameserver"))
    except ValueError as exc:
        raise InputError(
            "dns_nameserver",
            str(exc),
            "write an IP address with an optional port, e.g. '127.0.0.1:5353', or None for the system resolver",
        ) from None
    # The sandbox hands over its config dir as a path of this machine: it is the target's /etc/postfix.
    cfg = ctx.logical_path(ctx.param("postfix_config_dir") or guard.DEFAULT_CONFIG_DIR).rstrip("/") or "/"
    return Settings(
        mode=mode,
        config_dir=cfg,
        smtp_port=_number(ctx, "postfix_smtp_port", int, 1),
        nameserver=ctx.param("dns_nameserver") or None,
        dns_timeout=_number(ctx, "dns_timeout", float, 0.01),
        dns_total_timeout=_number(ctx, "dns_total_timeout", float, 0.01),
        dns_concurrency=_number(ctx, "dns_concurrency", int, 1),
    )


# --- the step --------------------------------------------------------------------------------------


@action("mail_guard")
def run(ctx: Context, result: Result) -> None:
    s = settings(ctx)
    cfg = s.config_dir
    installed = postfix.installed(ctx.target, cfg)
    if not installed and s.mode == "soft_bounce":
        raise PreconditionFailed(
            "Postfix",
            f"is not installed for {cfg} (no main.cf, or no postconf program), so soft_bounce cannot be set",
            "set mail_guard_mode = 'stop': it installs a policy that keeps a later "
            "Postfix install from starting; or install Postfix first and run this step again",
            path=f"{cfg}/main.cf",
        )
    if installed:
        error = postfix.config_error(ctx.target, cfg)
        if error:
            raise InputError(
                "Postfix main.cf",
                f"postconf rejects it:\n{error}",
                "repair the line postconf names, then run this step again (nothing was changed)",
                path=f"{cfg}/main.cf",
            )
    state = guard.guard_state(ctx)
    if state is not None and state.get("mode") not in (s.mode, None) and s.mode != "none":
        raise PreconditionFailed(
            "mail guard",
            f"is already set in mode '{state.get('mode')}' (since {state.get('set_at', '?')})",
            f"keep mail_guard_mode = '{state.get('mode')}', or lift the guard first (the cleanup step) and then "
            "set the new mode",
            path=guard.state_path(ctx),
        )

    names, source = _hosted_names(ctx, result)
    probe_address = f"postmaster@{names[0].domain}" if names else None
    before = postfix.smtp_rcpt_answer(ctx.target, probe_address, s.smtp_port) if probe_address else None

    if s.mode == "soft_bounce":
        _guard_soft_bounce(ctx, result, s, state)
    elif s.mode == "stop":
        _guard_stop(ctx, result, s, state, installed)
    else:
        result.note(
            "mail_guard_mode = 'none': nothing is changed; make sure by other means that no mail for the "
            "hosted domains reaches an unconfigured Postfix"
        )
        if state is not None:
            result.note(f"A guard set earlier (mode '{state.get('mode')}') stays in place until cleanup lifts it.")
        elif not result.noop_reason:
            result.noop_reason = "mail_guard_mode is 'none': only the checks run"

    after = None
    if probe_address and ctx.apply and result.changed:
        after = postfix.smtp_rcpt_answer(ctx.target, probe_address, s.smtp_port)
    _probe_table(result, before, after, s.smtp_port)
    if before is not None and installed:
        _probe_source_note(ctx, result, cfg)

    if ctx.apply and s.mode != "none":
        ok, message = guard.check_guard(ctx)
        if not ok:
            raise GuardBroken(
                "mail guard",
                f"does not hold right after it was set: {message}",
                "look at the commands above; stop Postfix by hand if it keeps running",
            )
        result.note(f"Guard check: {message}")
    result.table("Mail guard", _guard_frame(ctx, s, installed))

    table = _dns_table(ctx, result, s, names, source)
    parts = [f"guard mode {s.mode}"]
    if before is not None:
        parts.append(f"SMTP probe before: {before.code or before.text}")
    if after is not None:
        parts.append(f"after: {after.code or after.text}")
    if table is not None:
        parts.append(f"DNS: {len(table.mail_to_old)} of {len(table.rows)} names send mail to the old IP")
    result.summary = "; ".join(parts)


def _guard_soft_bounce(ctx: Context, result: Result, s: Settings, state: dict[str, Any] | None) -> None:
    cfg = s.config_dir
    main_cf = f"{cfg}/main.cf"
    current = postfix.effective_value(ctx.target, cfg, "soft_bounce")
    explicit = postfix.explicit_setting(ctx.target, cfg, "soft_bounce")
    queue = postfix.queue_directory(ctx.target, cfg)
    running = postfix.master_pid(ctx.target, queue)
    if guard.guard_template(ctx):
        result.note("ispCP's setup and update copy its template over main.cf: the template carries the guard too.")
    # A record with status "setting" is the intent a killed run wrote before its postconf: a "yes" now is
    # then the guard's own doing, never the operator's setting.
    setting = state is not None and state.get("status") == "setting"
    if current == "yes" and state is not None and not setting:
        if not result.changed:
            result.noop_reason = f"soft_bounce is already yes (guard set {state.get('set_at', '?')})"
        return
    previous = (state or {}).get("previous") or {
        "soft_bounce": current,
        "soft_bounce_explicit": explicit,
        "master_running": running is not None,
    }
    new_state = {
        "mode": "soft_bounce",
        "status": "set",
        "config_dir": cfg,
        "smtp_port": s.smtp_port,
        "queue_directory": queue,
        "previous": previous,
        "set_at": dt.datetime.now().isoformat(timespec="seconds"),
        "run_id": ctx.run_id,
    }
    if current == "yes" and not setting:
        new_state["main_cf_sha256"] = None
        guard.save_state(ctx, new_state, "record the guard: soft_bounce is yes already (lifting it will leave it yes)")
        return
    copy = f"{guard.copy_dir(ctx)}/main.cf.before"
    if setting and state is not None:  # keep what the killed run recorded of main.cf before its edit
        new_state.update({k: state[k] for k in ("main_cf_copy", "main_cf_meta") if k in state})
    old_bytes = (ctx.state.read_bytes(copy) if setting else None) or ctx.target.read_bytes(main_cf) or b""
    finish = None
    if current == "yes":
        finish = f"finish the guard a killed run set: soft_bounce = yes in {main_cf} is the guard's own"
    else:
        how = "explicitly" if explicit is not None else "by default"
        what = f"set soft_bounce = yes in {main_cf} (it was {current} {how})"
        _set_soft_bounce(ctx, new_state, cfg, old_bytes, copy, what)
    old_text = old_bytes.decode("utf-8", "replace")
    if ctx.apply:
        new_bytes = ctx.target.read_bytes(main_cf) or b""
        new_text = new_bytes.decode("utf-8", "replace")
        result.diffs.append(Diff(main_cf, fileops.unified_diff(old_text, new_text, main_cf)))
        new_state["main_cf_sha256"] = hashlib.sha256(new_bytes).hexdigest()
    elif current != "yes":  # the dry run shows what postconf -e will write
        result.diffs.append(Diff(main_cf, fileops.unified_diff(old_text, planned_soft_bounce(old_text), main_cf)))
    if running is not None:
        ctx.runner.run(
            guard.postfix_argv(ctx, cfg, "reload"),
            mutates=True,
            what=f"reload Postfix (master pid {running}) so that smtpd answers with soft errors",
        )
        if ctx.apply:
            time.sleep(0.5)  # let the master replace its idle smtpd processes before the probe
    new_state["status"] = "set"
    guard.save_state(ctx, new_state, finish)


def planned_soft_bounce(text: str) -> str:
    """main.cf as `postconf -e soft_bounce=yes` writes it: the setting's line (with its continuation lines)
    replaced in place, or appended when there is none (tests/integration/test_mail_guard.py runs postconf)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if re.match(r"soft_bounce\s*=", line):
            end = i + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t") and lines[end].strip():
                end += 1
            return "".join([*lines[:i], "soft_bounce = yes\n", *lines[end:]])
    return text + "soft_bounce = yes\n"  # postconf appends even to a last line without its newline


def _set_soft_bounce(ctx: Context, new_state: dict[str, Any], cfg: str, old_bytes: bytes, copy: str, what: str) -> None:
    """Write the guard's record ahead (status "setting", main.cf's copy beside it), then run postconf."""
    main_cf = f"{cfg}/main.cf"
    old_st = ctx.target.stat(main_cf)  # postconf -e writes a new file: restore mode and owner with the content
    ctx.keep(main_cf)
    ctx.save_state(copy, old_bytes, what=f"record {main_cf} as it is before the guard")
    new_state["main_cf_copy"] = copy
    if old_st is not None and "main_cf_meta" not in new_state:
        new_state["main_cf_meta"] = {"mode": old_st.mode, "uid": old_st.uid, "gid": old_st.gid}
    guard.save_state(ctx, {**new_state, "status": "setting"})
    ctx.runner.run(guard.postconf_argv(ctx, cfg, "-e", "soft_bounce=yes"), mutates=True, what=what)


def _guard_stop(ctx: Context, result: Result, s: Settings, state: dict[str, Any] | None, installed: bool) -> None:
    cfg, port = s.config_dir, s.smtp_port
    queue = postfix.queue_directory(ctx.target, cfg) if installed else None
    pid = postfix.master_pid(ctx.target, queue)
    policy_here = ctx.target.stat(guard.POLICY_RC_D) is not None
    ours = guard.is_ours(ctx, guard.POLICY_RC_D)
    systemd = postfix.systemd_running(ctx.target)
    masked = {u: guard.unit_masked(ctx, u) for u in SYSTEMD_UNITS} if systemd else {}
    previous = (state or {}).get("previous") or {
        "master_running": pid is not None,
        "policy_rc_d_existed": policy_here and not ours,
        "units_masked": masked,
    }
    record = {
        "mode": "stop",
        "status": "set",
        "config_dir": cfg,
        "smtp_port": port,
        "queue_directory": queue,
        "previous": previous,
        "set_at": dt.datetime.now().isoformat(timespec="seconds"),
        "run_id": ctx.run_id,
    }
    setting = state is not None and state.get("status") == "setting"
    if state is None:  # the intent first: a killed run's resume then knows what was there before
        guard.save_state(ctx, {**record, "status": "setting"})
    if not installed:
        result.note(
            f"Postfix is not installed for {cfg}: the policy below keeps a later install "
            "from starting it before it is configured."
        )
    if pid is not None:
        ctx.runner.run(guard.service_argv(ctx, cfg, "stop"), mutates=True, what=f"stop Postfix (master pid {pid})")
        if ctx.apply:
            _wait_stopped(ctx, queue, port)
    elif postfix.port_answers(ctx.target, port):
        raise PreconditionFailed(
            f"SMTP port {port}",
            f"answers, but no Postfix master of {cfg} runs: another mail server listens",
            f"stop whatever listens there (ss -ltnp 'sport = :{port}' shows it), then run this step again",
        )

    if policy_here and not ours:
        ctx.keep(guard.POLICY_RC_D)
        argv = ["mv", "-f", "--", ctx.target.path(guard.POLICY_RC_D), ctx.target.path(guard.SAVED_POLICY_RC_D)]
        what = (
            f"keep the existing {guard.POLICY_RC_D} as {guard.SAVED_POLICY_RC_D}; the guard's policy consults it "
            "for every other service"
        )
        ctx.runner.run(argv, mutates=True, what=what)
    ctx.write_file(
        guard.POLICY_RC_D,
        POLICY_SCRIPT,
        mode=0o755,
        uid=0,
        gid=0,
        what=f"install {guard.POLICY_RC_D}: package scripts may not start postfix",
    )
    for unit, was_masked in masked.items():
        if not was_masked:
            ctx.runner.run(["systemctl", "mask", unit], mutates=True, what=f"systemctl mask {unit}")
    if not result.changed and state is not None and not setting:
        result.noop_reason = f"Postfix is stopped and blocked from starting (guard set {state.get('set_at', '?')})"
        return
    guard.save_state(ctx, record, "record the guard in the state directory" if state is None or setting else None)


def _wait_stopped(ctx: Context, queue: str | None, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if postfix.master_pid(ctx.target, queue) is None and not postfix.port_answers(ctx.target, port):
            return
        time.sleep(0.1)


# --- showing ----------------------------------------------------------------------------------------

PROBE_SOURCE = "127.0.0.1"


def in_mynetworks(value: str, address: str = PROBE_SOURCE) -> str | None:
    """The mynetworks entry (CIDR or address) that contains address, None if none does. Table and file
    entries (hash:..., /etc/postfix/...) cannot be judged here and are skipped."""
    ip = ipaddress.ip_address(address)
    for entry in value.replace(",", " ").split():
        try:
            if ip in ipaddress.ip_network(entry.replace("[", "").replace("]", ""), strict=False):
                return entry
        except ValueError:
            continue
    return None


def _probe_source_note(ctx: Context, result: Result, cfg: str) -> None:
    """Say so when the probe comes from an address Postfix trusts: then it does not show what outsiders get."""
    value = postfix.effective_value(ctx.target, cfg, "mynetworks")
    entry = in_mynetworks(value) if value else None
    if result.data.get("smtp_probe") is not None:
        result.data["smtp_probe"]["source_in_mynetworks"] = entry
    if entry is not None:
        result.note(
            f"The SMTP probe is sent from {PROBE_SOURCE}, which Postfix trusts (mynetworks entry {entry}): "
            "it may relay for the probe and answer 250 although an outside sender gets 554 or 454. So the "
            "probe shows what Postfix answers a local client, not what the senders of the hosted domains "
            "get; check `postconf mynetworks` and send a test from outside to be sure."
        )


def _probe_table(
    result: Result, before: postfix.ProbeAnswer | None, after: postfix.ProbeAnswer | None, port: int
) -> None:
    if before is None:
        result.note("SMTP probe: no hosted domain is known, so there is no address to probe.")
        return
    rows = [
        {
            "when": "before the guard",
            "RCPT TO": before.address,
            "code": before.code,
            "answer": before.text,
            "meaning": before.kind,
        }
    ]
    if after is not None:
        rows.append(
            {
                "when": "after the guard",
                "RCPT TO": after.address,
                "code": after.code,
                "answer": after.text,
                "meaning": after.kind,
            }
        )
    elif not result.apply:
        rows.append(
            {
                "when": "after the guard",
                "RCPT TO": before.address,
                "code": None,
                "answer": "(dry run: not set yet)",
                "meaning": "",
            }
        )
    result.table(f"SMTP probe on 127.0.0.1:{port} (stops before DATA: no mail is sent)", pd.DataFrame(rows))
    result.data["smtp_probe"] = {"before": before.__dict__, "after": after.__dict__ if after else None}


def _guard_frame(ctx: Context, s: Settings, installed: bool) -> Any:
    cfg = s.config_dir
    state = guard.guard_state(ctx)
    queue = postfix.queue_directory(ctx.target, cfg) if installed else None
    pid = postfix.master_pid(ctx.target, queue)
    rows = [
        ("guard recorded", f"{state.get('mode')} since {state.get('set_at')}" if state else "no"),
        ("Postfix config", f"{cfg} ({'installed' if installed else 'not installed'})"),
        ("Postfix master", f"running, pid {pid}" if pid else "not running"),
        (f"SMTP port {s.smtp_port}", "answers" if postfix.port_answers(ctx.target, s.smtp_port) else "closed"),
    ]
    if installed:
        rows.append(("soft_bounce", postfix.effective_value(ctx.target, cfg, "soft_bounce") or "?"))
    if guard.is_ours(ctx, guard.POLICY_RC_D):
        policy = "the guard's (blocks postfix)"
    else:
        policy = "absent" if ctx.target.stat(guard.POLICY_RC_D) is None else "present (not the guard's)"
    rows.append((guard.POLICY_RC_D, policy))
    if state is not None:
        ok, message = guard.check_guard(ctx)
        rows.append(("guard holds", ("yes: " if ok else "NO: ") + message))
    return pd.DataFrame([{"check": k, "state": v} for k, v in rows])


# --- the DNS table -----------------------------------------------------------------------------------


def _hosted_names(ctx: Context, result: Result) -> tuple[list[dns_table.HostedName], str]:
    """Names from the restored database when it answers (after mysql_restore), else the backup's copy."""
    try:
        conf = backup_layout.load_old_conf(ctx)
    except InputError as exc:
        result.warn(f"the backup's ispcp.conf is unreadable ({exc}); assuming database 'ispcp' in /var/lib/mysql")
        conf = None
    dbname = conf.database_name if conf else DEFAULT_DATABASE_NAME
    datadir = (conf.get("DATABASE_DIR") if conf else None) or "/var/lib/mysql"
    if last_applied(ctx, "mysql_restore") and ctx.mysql is not None and ctx.mysql.status():
        login = mysql_creds.working_admin(ctx)
        if login is not None:
            try:
                with ctx.mysql.connect(login.user, login.password, dbname) as conn:
                    return dns_table.hosted_names(conn), f"the restored database '{dbname}' on the target"
            except Exception as exc:
                result.warn(
                    f"the restored database did not answer ({type(exc).__name__}: {exc}); "
                    "reading the backup's copy instead"
                )
    try:
        if ctx.backup is None:
            raise InputError("backup_root", "is not set", "set the backup_root parameter")
        escaped = ctx.backup.escapes(datadir)
        if escaped is not None:
            raise InputError("backup database", f"leads to {escaped}, outside the backup", "copy it into the backup")
        # The throwaway server runs on this machine: it reads the backup where this machine sees it.
        scratch = scratch_dir(ctx)
        names = read_backup_database(Path(ctx.backup.path(datadir)), dbname, dns_table.hosted_names, scratch=scratch)
        return names, f"the backup's copy of '{dbname}' (read by a throwaway MariaDB on a copy)"
    except Exception as exc:  # the guard matters more than the table: warn and go on
        result.warn(f"cannot read the hosted names from the backup's database: {exc}")
        return [], "nowhere"


def _ips(ctx: Context) -> tuple[str | None, str | None]:
    old_ip = ctx.param("old_server_ip")
    if not old_ip:
        try:
            conf = backup_layout.load_old_conf(ctx)
        except InputError:
            conf = None
        old_ip = conf.get("BASE_SERVER_IP") if conf else None
    new_ip = ctx.param("new_server_ip")  # declared by the ispcp_conf step
    if not new_ip:
        conf = update_env.target_conf(ctx)
        new_ip = conf.get("BASE_SERVER_IP") if conf else None
    return old_ip or None, new_ip or None


def _dns_table(
    ctx: Context, result: Result, s: Settings, names: list[dns_table.HostedName], source: str
) -> dns_table.DnsTable | None:
    if not names:
        result.warn("DNS table: no hosted names to look up")
        return None
    old_ip, new_ip = _ips(ctx)
    ctx.log(f"DNS table: {len(names)} names from {source}")
    try:
        table = dns_table.resolve_all(
            names,
            nameserver=s.nameserver,
            timeout=s.dns_timeout,
            total_timeout=s.dns_total_timeout,
            concurrency=s.dns_concurrency,
            old_ip=old_ip,
            new_ip=new_ip,
            progress=progress_bar(ctx, len(names), "DNS table, names resolved"),
        )
    except Exception as exc:  # no resolver configured, for example: the guard still stands
        result.warn(f"DNS table: cannot resolve ({type(exc).__name__}: {exc}); set dns_nameserver")
        return None
    result.note(f"DNS table: {len(names)} hosted names from {source}. {table.summary()}.")
    if old_ip and new_ip and old_ip == new_ip:
        result.note("The new server has the old server's IP: every name that points at it sends its mail HERE.")
    if table.counts.get(dns_table.TIMEOUT):
        result.warn(f"DNS table: {table.counts[dns_table.TIMEOUT]} names timed out (nameserver {table.nameserver})")
    result.table("DNS verdicts", table.counts_frame())
    if len(table.rows) <= FULL_TABLE_ROWS:
        result.table("DNS table: where each hosted name's mail goes", table.frame())
    else:
        keep = [r for r in table.rows if r["mail_to"] != dns_table.NEW][:FULL_TABLE_ROWS]
        result.table(
            f"DNS table: the {len(keep)} first names whose mail does not go to the new IP "
            f"(of {len(table.rows)}; all rows are in result.data['dns_table'])",
            table.frame(keep),
        )
    result.data["dns_table"] = table.rows
    result.data["dns_summary"] = {
        "mail_to_old": len(table.mail_to_old),
        "names": len(table.rows),
        "counts": table.counts,
        "elapsed_s": round(table.elapsed_s, 2),
    }
    return table
