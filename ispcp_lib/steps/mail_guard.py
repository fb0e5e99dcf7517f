"""mail_guard: keep mail for the hosted domains from bouncing for good while the server is rebuilt.

Contract for other steps:
    guard_state(ctx) -> dict | None       the guard recorded in the state dir, None if never set
    check_guard(ctx) -> (bool, str)       does it still hold? (cheap: no DNS, no throwaway servers)
    lift(ctx, result)                     restore exactly what was there before (cleanup calls it)
and a watchdog in ispcp_lib.core.action.WATCHDOGS that stops every later changing step while the guard
is broken.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ispcp_lib.core import fileops
from ispcp_lib.core.action import WATCHDOGS, action, last_applied
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import GuardBroken, InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Diff, Result
from ispcp_lib.core.runner import Runner
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts import dns_table as dt_facts
from ispcp_lib.facts import mysql_creds
from ispcp_lib.facts import postfix as pf
from ispcp_lib.facts.backup_db_reader import read_backup_database
from ispcp_lib.facts.ispcp_conf import IspcpConf

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
was switched off (installers like to start services and rewrite `main.cf`). The `cleanup` step lifts
the guard and restores exactly what was there before. The result shows what an SMTP server answers
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

STATE_FILE = "mail_guard.json"
POLICY_RC_D = "/usr/sbin/policy-rc.d"
SAVED_POLICY_RC_D = "/usr/sbin/policy-rc.d.before-ispcp-recovery"
POLICY_MARKER = "# ispcp-recovery mail guard"
SYSTEMD_UNITS = ("postfix.service", "postfix@-.service")
FULL_TABLE_ROWS = 200  # larger DNS tables show the rows that matter; all rows stay in result.data
# Steps the watchdog lets through: this one (it repairs a broken guard) and cleanup (it lifts it).
_UNGUARDED_STEPS = ("mail_guard", "cleanup")

POLICY_SCRIPT = f"""#!/bin/sh
{POLICY_MARKER}: Postfix stays off until the recovery has configured it.
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
saved="$(dirname "$0")/{Path(SAVED_POLICY_RC_D).name}"
if [ -x "$saved" ]; then
    exec "$saved" "$@"
fi
exit 0
"""


# --- parameters ------------------------------------------------------------------------------------


def _param(ctx: Context, name: str) -> Any:
    return getattr(ctx.step_params(PARAMETERS), name)


def _settings(ctx: Context) -> dict[str, Any]:
    """Every parameter, validated before anything is looked at or changed."""
    mode = str(_param(ctx, "mail_guard_mode")).strip()
    if mode not in MODES:
        raise InputError("mail_guard_mode", f"is {mode!r}", f"use one of {', '.join(MODES)}")
    out: dict[str, Any] = {"mode": mode}
    cfg = ctx.param("postfix_config_dir")
    out["config_dir"] = Path(cfg) if cfg else ctx.t("/etc/postfix")
    for name, kind, low in (
        ("postfix_smtp_port", int, 1),
        ("dns_concurrency", int, 1),
        ("dns_timeout", float, 0.01),
        ("dns_total_timeout", float, 0.01),
    ):
        try:
            value = kind(_param(ctx, name))
        except (TypeError, ValueError):
            raise InputError(name, f"is {_param(ctx, name)!r}, not a number", "give a positive number") from None
        if value < low or (name == "postfix_smtp_port" and value > 65535):
            raise InputError(name, f"is {value}, out of range", "give a positive number (a port: 1..65535)")
        out[name] = value
    try:
        dt_facts.parse_nameserver(ctx.param("dns_nameserver"))
    except ValueError as exc:
        raise InputError(
            "dns_nameserver",
            str(exc),
            "write an IP address with an optional port, e.g. '127.0.0.1:5353', or None for the system resolver",
        ) from None
    out["nameserver"] = ctx.param("dns_nameserver") or None
    return out


# --- the recorded guard ----------------------------------------------------------------------------


def _state_path(ctx: Context) -> Path:
    return ctx.state_dir / STATE_FILE


def guard_state(ctx: Context) -> dict[str, Any] | None:
    """The guard recorded in the state dir (mode, previous values, when), None if never set or lifted."""
    try:
        return json.loads(_state_path(ctx).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        # A damaged record still means a guard was set: report it as broken rather than absent.
        return {"mode": "unknown", "status": "damaged record", "config_dir": None}


def _save_state(ctx: Context, state: dict[str, Any]) -> None:
    if ctx.apply:
        ctx.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fileops.atomic_write(_state_path(ctx), json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o600)


def _copy_dir(ctx: Context) -> Path:
    """Where the guard keeps its own exact copies (main.cf before the edit)."""
    return ctx.state_dir / "mail_guard"


def check_guard(ctx: Context) -> tuple[bool, str]:
    """Does the recorded guard still hold? Cheap enough for every step: one postconf call at most."""
    state = guard_state(ctx)
    if state is None:
        return True, "no mail guard is set"
    mode = state.get("mode")
    if mode == "none":
        return True, "mail guard mode 'none': nothing is guarded, only checked"
    if mode not in ("soft_bounce", "stop") or not state.get("config_dir"):
        return False, f"the mail guard record {_state_path(ctx)} is damaged"
    cfg = Path(state["config_dir"])
    port = int(state.get("smtp_port") or 25)
    runner = Runner()  # unrecorded: the watchdog must not fill other steps' command lists
    if mode == "stop":
        queue = Path(state["queue_directory"]) if state.get("queue_directory") else None
        if queue is None and pf.installed(cfg):  # Postfix was installed after the guard was set
            queue = pf.queue_directory(runner, cfg, record=False)
        pid = pf.master_pid(queue)
        if pid is not None:
            return False, (
                f"Postfix is RUNNING (master pid {pid}, config {cfg}) although the guard is 'stop': "
                "it rejects mail for the hosted domains with hard errors"
            )
        if pf.port_answers(port):
            return False, (
                f"something ANSWERS on SMTP port {port} although the guard is 'stop': mail for the "
                "hosted domains can be rejected for good"
            )
        policy = ctx.t(POLICY_RC_D)
        if not _is_ours(policy):
            return False, (
                f"the policy-rc.d that keeps Postfix from starting is gone ({ctx.display_path(policy)}); "
                "the next package install may start it"
            )
        return True, f"Postfix is stopped, nothing answers on port {port}, and policy-rc.d blocks its start"
    if not (cfg / "main.cf").is_file():
        return False, f"{cfg / 'main.cf'} is gone, so soft_bounce is no longer set"
    value = pf.effective_value(runner, cfg, "soft_bounce", record=False)
    if value is None:
        return False, f"postconf cannot read {cfg / 'main.cf'} any more, so soft_bounce cannot be confirmed"
    if value != "yes":
        return False, (
            f"soft_bounce is '{value}' in {cfg / 'main.cf'}: Postfix rejects mail for the hosted "
            "domains with hard 5xx errors again"
        )
    return True, "soft_bounce = yes: every rejection is temporary, senders keep the mail and retry"


def watchdog(ctx: Context, result: Result) -> None:
    """Run by @action before every changing step: stop when the recorded guard no longer holds."""
    if result.step in _UNGUARDED_STEPS:
        return
    state = guard_state(ctx)
    if state is None:
        return
    ok, message = check_guard(ctx)
    if ok:
        return
    cfg = state.get("config_dir") or "/etc/postfix"
    if state.get("mode") == "stop":
        fix = (
            f"stop Postfix now (postfix -c {cfg} stop), find out what started it, then run mail_guard again "
            "(force_steps=['mail_guard']) before going on"
        )
    else:
        fix = (
            f"set it again now (postconf -c {cfg} -e soft_bounce=yes; postfix -c {cfg} reload) or run "
            "mail_guard again (force_steps=['mail_guard']) before going on"
        )
    raise GuardBroken("MAIL GUARD BROKEN", f"{message}. This step did not run", fix)


if watchdog not in WATCHDOGS:
    WATCHDOGS.append(watchdog)


# --- the step --------------------------------------------------------------------------------------


@action("mail_guard")
def run(ctx: Context, result: Result) -> None:
    s = _settings(ctx)
    cfg: Path = s["config_dir"]
    installed = pf.installed(cfg)
    if not installed and s["mode"] == "soft_bounce":
        raise PreconditionFailed(
            "Postfix",
            f"is not installed for {ctx.display_path(cfg)} (no main.cf, or no postconf program), so "
            "soft_bounce cannot be set",
            "set mail_guard_mode = 'stop': it installs a policy that keeps a later "
            "Postfix install from starting; or install Postfix first and run this step again",
            path=str(cfg / "main.cf"),
        )
    if installed:
        error = pf.config_error(ctx.runner, cfg)
        if error:
            raise InputError(
                "Postfix main.cf",
                f"postconf rejects it:\n{error}",
                "repair the line postconf names, then run this step again (nothing was changed)",
                path=str(cfg / "main.cf"),
            )
    state = guard_state(ctx)
    if state is not None and state.get("mode") not in (s["mode"], None) and s["mode"] != "none":
        raise PreconditionFailed(
            "mail guard",
            f"is already set in mode '{state.get('mode')}' (since {state.get('set_at', '?')})",
            f"keep mail_guard_mode = '{state.get('mode')}', or lift the guard first (the cleanup step) and then "
            "set the new mode",
            path=str(_state_path(ctx)),
        )

    names, source = _hosted_names(ctx, result)
    probe_address = f"postmaster@{names[0].domain}" if names else None
    before = pf.smtp_rcpt_answer(probe_address, s["postfix_smtp_port"]) if probe_address else None

    if s["mode"] == "soft_bounce":
        _guard_soft_bounce(ctx, result, s, state)
    elif s["mode"] == "stop":
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
        after = pf.smtp_rcpt_answer(probe_address, s["postfix_smtp_port"])
    _probe_table(result, before, after, s["postfix_smtp_port"])
    if before is not None and installed:
        _probe_source_note(ctx, result, cfg)

    if ctx.apply and s["mode"] != "none":
        ok, message = check_guard(ctx)
        if not ok:
            raise GuardBroken(
                "mail guard",
                f"does not hold right after it was set: {message}",
                "look at the commands above; stop Postfix by hand if it keeps running",
            )
        result.note(f"Guard check: {message}")
    result.table("Mail guard", _guard_frame(ctx, s, installed))

    table = _dns_table(ctx, result, s, names, source)
    parts = [f"guard mode {s['mode']}"]
    if before is not None:
        parts.append(f"SMTP probe before: {before.code or before.text}")
    if after is not None:
        parts.append(f"after: {after.code or after.text}")
    if table is not None:
        parts.append(f"DNS: {len(table.mail_to_old)} of {len(table.rows)} names send mail to the old IP")
    result.summary = "; ".join(parts)


def _guard_soft_bounce(ctx: Context, result: Result, s: dict[str, Any], state: dict[str, Any] | None) -> None:
    cfg: Path = s["config_dir"]
    main_cf = cfg / "main.cf"
    current = pf.effective_value(ctx.runner, cfg, "soft_bounce")
    explicit = pf.explicit_setting(ctx.runner, cfg, "soft_bounce")
    queue = pf.queue_directory(ctx.runner, cfg)
    running = pf.master_pid(queue)
    if current == "yes" and state is not None:
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
        "config_dir": str(cfg),
        "smtp_port": s["postfix_smtp_port"],
        "queue_directory": str(queue) if queue else None,
        "previous": previous,
        "set_at": dt.datetime.now().isoformat(timespec="seconds"),
        "run_id": ctx.run_id,
    }
    if current == "yes":
        result.change("record the guard: soft_bounce is yes already (lifting it will leave it yes)")
        new_state["main_cf_sha256"] = None
        _save_state(ctx, new_state)
        return
    how = "explicitly" if explicit is not None else "by default"
    result.change(f"set soft_bounce = yes in {ctx.display_path(main_cf)} (it was {current} {how})")
    old_bytes = main_cf.read_bytes()
    old_st = main_cf.stat()  # postconf -e writes a new file: restore mode and owner with the content
    copy = _copy_dir(ctx) / "main.cf.before"
    if ctx.apply:
        ctx.keep(main_cf)
        copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fileops.atomic_write(copy, old_bytes, mode=0o600)
    ctx.runner.run([pf.binary("postconf") or "postconf", "-c", str(cfg), "-e", "soft_bounce=yes"], mutates=True)
    if ctx.apply:
        new_bytes = main_cf.read_bytes()
        result.diffs.append(
            Diff(
                ctx.display_path(main_cf),
                fileops.unified_diff(
                    old_bytes.decode("utf-8", "replace"),
                    new_bytes.decode("utf-8", "replace"),
                    ctx.display_path(main_cf),
                ),
            )
        )
        new_state.update(
            {
                "main_cf_sha256": hashlib.sha256(new_bytes).hexdigest(),
                "main_cf_copy": str(copy),
                "main_cf_meta": {"mode": old_st.st_mode & 0o7777, "uid": old_st.st_uid, "gid": old_st.st_gid},
            }
        )
    if running is not None:
        result.change(f"reload Postfix (master pid {running}) so that smtpd answers with soft errors")
        ctx.runner.run([pf.binary("postfix") or "postfix", "-c", str(cfg), "reload"], mutates=True)
        if ctx.apply:
            time.sleep(0.5)  # let the master replace its idle smtpd processes before the probe
    _save_state(ctx, new_state)


def _guard_stop(ctx: Context, result: Result, s: dict[str, Any], state: dict[str, Any] | None, installed: bool) -> None:
    cfg: Path = s["config_dir"]
    port = s["postfix_smtp_port"]
    queue = pf.queue_directory(ctx.runner, cfg) if installed else None
    pid = pf.master_pid(queue)
    policy, saved = ctx.t(POLICY_RC_D), ctx.t(SAVED_POLICY_RC_D)
    systemd = pf.systemd_running(ctx.target_root)
    masked = {u: _unit_masked(ctx, u) for u in SYSTEMD_UNITS} if systemd else {}
    previous = (state or {}).get("previous") or {
        "master_running": pid is not None,
        "policy_rc_d_existed": os.path.lexists(policy) and not _is_ours(policy),
        "units_masked": masked,
    }
    if not installed:
        result.note(
            f"Postfix is not installed for {ctx.display_path(cfg)}: the policy below keeps a later install "
            "from starting it before it is configured."
        )
    if pid is not None:
        result.change(f"stop Postfix (master pid {pid})")
        ctx.runner.run(_service_argv(ctx, cfg, "stop"), mutates=True)
        if ctx.apply:
            _wait_stopped(queue, port)
    elif pf.port_answers(port):
        raise PreconditionFailed(
            f"SMTP port {port}",
            f"answers, but no Postfix master of {cfg} runs: another mail server listens",
            f"stop whatever listens there (ss -ltnp 'sport = :{port}' shows it), then run this step again",
        )

    if os.path.lexists(policy) and not _is_ours(policy):
        result.change(
            f"keep the existing {POLICY_RC_D} as {SAVED_POLICY_RC_D}; the guard's policy consults it "
            "for every other service"
        )
        if ctx.apply:
            ctx.keep(policy)
            os.replace(policy, saved)
    ctx.write_file(
        policy,
        POLICY_SCRIPT,
        mode=0o755,
        uid=0,
        gid=0,
        what=f"install {POLICY_RC_D}: package scripts may not start postfix",
    )
    for unit, was_masked in masked.items():
        if not was_masked:
            result.change(f"systemctl mask {unit}")
            ctx.runner.run(["systemctl", "mask", unit], mutates=True)
    if not result.changed and state is not None:
        result.noop_reason = f"Postfix is stopped and blocked from starting (guard set {state.get('set_at', '?')})"
        return
    _save_state(
        ctx,
        {
            "mode": "stop",
            "status": "set",
            "config_dir": str(cfg),
            "smtp_port": port,
            "queue_directory": str(queue) if queue else None,
            "previous": previous,
            "set_at": dt.datetime.now().isoformat(timespec="seconds"),
            "run_id": ctx.run_id,
        },
    )
    if state is None:
        result.change("record the guard in the state directory")


def _service_argv(ctx: Context, cfg: Path, verb: str) -> list[str]:
    """Start/stop through systemd when it supervises the target's default Postfix, else `postfix -c DIR`."""
    if pf.systemd_running(ctx.target_root) and cfg == Path("/etc/postfix"):
        return ["systemctl", verb, "postfix.service"]
    return [pf.binary("postfix") or "postfix", "-c", str(cfg), verb]


def _wait_stopped(queue: Path | None, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pf.master_pid(queue) is None and not pf.port_answers(port):
            return
        time.sleep(0.1)


def _is_ours(path: Path) -> bool:
    try:
        return POLICY_MARKER in Path(path).read_text(errors="replace")
    except OSError:
        return False


def _unit_masked(ctx: Context, unit: str) -> bool:
    rec = ctx.runner.run(["systemctl", "is-enabled", unit], check=False, timeout=30)
    return rec.stdout.strip() in ("masked", "masked-runtime")


# --- lifting (cleanup) -----------------------------------------------------------------------------


def lift(ctx: Context, result: Result) -> None:
    """Restore exactly the state before the guard. One code path: a dry run records the plan."""
    state = guard_state(ctx)
    if state is None:
        result.note("Mail guard: none is set, nothing to lift.")
        return
    mode = state.get("mode")
    cfg = Path(state["config_dir"]) if state.get("config_dir") else ctx.t("/etc/postfix")
    previous = state.get("previous") or {}
    if mode == "soft_bounce":
        _lift_soft_bounce(ctx, result, state, cfg, previous)
    elif mode == "stop":
        _lift_stop(ctx, result, state, cfg, previous)
    result.change(f"remove the mail guard record ({mode})")
    if ctx.apply:
        _state_path(ctx).unlink(missing_ok=True)


def _lift_soft_bounce(ctx: Context, result: Result, state: dict[str, Any], cfg: Path, previous: dict[str, Any]) -> None:
    main_cf = cfg / "main.cf"
    if not main_cf.is_file():
        result.warn(f"{ctx.display_path(main_cf)} is gone: nothing to restore")
        return
    copy = Path(state["main_cf_copy"]) if state.get("main_cf_copy") else None
    current = main_cf.read_bytes()
    changed = False
    if state.get("main_cf_sha256") is None:
        result.note("soft_bounce was yes before the guard; it stays yes.")
        return
    if copy is not None and copy.is_file() and hashlib.sha256(current).hexdigest() == state["main_cf_sha256"]:
        meta = state.get("main_cf_meta") or {}
        changed = ctx.write_file(
            main_cf,
            copy.read_bytes(),
            mode=meta.get("mode"),
            uid=meta.get("uid"),
            gid=meta.get("gid"),
            what=f"restore {ctx.display_path(main_cf)} as it was before the guard",
        )
    else:
        # Somebody (ispcp-update) rewrote main.cf since: only soft_bounce goes back, their changes stay.
        result.note(f"{ctx.display_path(main_cf)} changed since the guard was set: only soft_bounce is put back.")
        explicit_now = pf.explicit_setting(ctx.runner, cfg, "soft_bounce")
        wanted = previous.get("soft_bounce_explicit")
        exe = pf.binary("postconf") or "postconf"
        if wanted is None and explicit_now is not None:
            result.change(f"remove soft_bounce from {ctx.display_path(main_cf)} (it was not set before the guard)")
            ctx.runner.run([exe, "-c", str(cfg), "-X", "soft_bounce"], mutates=True)
            changed = True
        elif wanted is not None and explicit_now != wanted:
            result.change(f"set soft_bounce = {wanted} again in {ctx.display_path(main_cf)}")
            ctx.runner.run([exe, "-c", str(cfg), "-e", f"soft_bounce={wanted}"], mutates=True)
            changed = True
    pid = pf.master_pid(pf.queue_directory(ctx.runner, cfg))
    if changed and pid is not None:
        result.change(f"reload Postfix (master pid {pid})")
        ctx.runner.run([pf.binary("postfix") or "postfix", "-c", str(cfg), "reload"], mutates=True)


def _lift_stop(ctx: Context, result: Result, state: dict[str, Any], cfg: Path, previous: dict[str, Any]) -> None:
    policy, saved = ctx.t(POLICY_RC_D), ctx.t(SAVED_POLICY_RC_D)
    if _is_ours(policy):
        if previous.get("policy_rc_d_existed") and os.path.lexists(saved):
            result.change(f"put the previous {POLICY_RC_D} back")
            if ctx.apply:
                ctx.keep(policy)
                os.replace(saved, policy)
        else:
            result.change(f"remove {POLICY_RC_D} (there was none before the guard)")
            if ctx.apply:
                ctx.keep(policy)
                policy.unlink()
    elif os.path.lexists(policy):
        result.warn(f"{POLICY_RC_D} was replaced by someone else since the guard was set; it is left alone")
    for unit, was_masked in (previous.get("units_masked") or {}).items():
        if not was_masked and _unit_masked(ctx, unit):
            result.change(f"systemctl unmask {unit}")
            ctx.runner.run(["systemctl", "unmask", unit], mutates=True)
    if previous.get("master_running") and pf.installed(cfg):
        queue = pf.queue_directory(ctx.runner, cfg)
        if pf.master_pid(queue) is None:
            result.change("start Postfix again (it ran before the guard)")
            ctx.runner.run(_service_argv(ctx, cfg, "start"), mutates=True)


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


def _probe_source_note(ctx: Context, result: Result, cfg: Path) -> None:
    """Say so when the probe comes from an address Postfix trusts: then it does not show what outsiders get."""
    value = pf.effective_value(ctx.runner, cfg, "mynetworks", record=False)
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


def _probe_table(result: Result, before: pf.ProbeAnswer | None, after: pf.ProbeAnswer | None, port: int) -> None:
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


def _guard_frame(ctx: Context, s: dict[str, Any], installed: bool) -> Any:
    cfg: Path = s["config_dir"]
    runner = Runner()
    state = guard_state(ctx)
    queue = pf.queue_directory(runner, cfg, record=False) if installed else None
    pid = pf.master_pid(queue)
    rows = [
        ("guard recorded", f"{state.get('mode')} since {state.get('set_at')}" if state else "no"),
        ("Postfix config", f"{ctx.display_path(cfg)} ({'installed' if installed else 'not installed'})"),
        ("Postfix master", f"running, pid {pid}" if pid else "not running"),
        (f"SMTP port {s['postfix_smtp_port']}", "answers" if pf.port_answers(s["postfix_smtp_port"]) else "closed"),
    ]
    if installed:
        rows.append(("soft_bounce", pf.effective_value(runner, cfg, "soft_bounce", record=False) or "?"))
    policy = ctx.t(POLICY_RC_D)
    rows.append(
        (
            POLICY_RC_D,
            "the guard's (blocks postfix)"
            if _is_ours(policy)
            else "present (not the guard's)"
            if os.path.lexists(policy)
            else "absent",
        )
    )
    if state is not None:
        ok, message = check_guard(ctx)
        rows.append(("guard holds", ("yes: " if ok else "NO: ") + message))
    return pd.DataFrame([{"check": k, "state": v} for k, v in rows])


# --- the DNS table -----------------------------------------------------------------------------------


def _hosted_names(ctx: Context, result: Result) -> tuple[list[dt_facts.HostedName], str]:
    """Names from the restored database when it answers (after mysql_restore), else the backup's copy."""
    try:
        conf = bl.load_old_conf(ctx)
    except InputError as exc:
        result.warn(f"the backup's ispcp.conf is unreadable ({exc}); assuming database 'ispcp' in /var/lib/mysql")
        conf = None
    dbname = (conf.get("DATABASE_NAME") if conf else None) or "ispcp"
    datadir = (conf.get("DATABASE_DIR") if conf else None) or "/var/lib/mysql"
    if last_applied(ctx, "mysql_restore") and ctx.mysql is not None and ctx.mysql.status():
        login = mysql_creds.working_admin(ctx)
        if login is not None:
            try:
                with ctx.mysql.connect(login.user, login.password, dbname) as conn:
                    return dt_facts.hosted_names(conn), f"the restored database '{dbname}' on the target"
            except Exception as exc:
                result.warn(
                    f"the restored database did not answer ({type(exc).__name__}: {exc}); "
                    "reading the backup's copy instead"
                )
    try:
        path = ctx.b(datadir)
        names = read_backup_database(path, dbname, dt_facts.hosted_names)
        return names, f"the backup's copy of '{dbname}' (read by a throwaway MariaDB on a copy)"
    except Exception as exc:  # the guard matters more than the table: warn and go on
        result.warn(f"cannot read the hosted names from the backup's database: {exc}")
        return [], "nowhere"


def _ips(ctx: Context) -> tuple[str | None, str | None]:
    old_ip = ctx.param("old_server_ip")
    if not old_ip:
        try:
            conf = bl.load_old_conf(ctx)
        except InputError:
            conf = None
        old_ip = conf.get("BASE_SERVER_IP") if conf else None
    new_ip = ctx.param("new_server_ip")  # declared by the ispcp_conf step
    if not new_ip:
        target_conf = ctx.t("/etc/ispcp/ispcp.conf")
        try:
            new_ip = IspcpConf.load(target_conf).get("BASE_SERVER_IP") if target_conf.is_file() else None
        except InputError:
            new_ip = None
    return old_ip or None, new_ip or None


def _dns_table(
    ctx: Context, result: Result, s: dict[str, Any], names: list[dt_facts.HostedName], source: str
) -> dt_facts.DnsTable | None:
    if not names:
        result.warn("DNS table: no hosted names to look up")
        return None
    old_ip, new_ip = _ips(ctx)
    ctx.log(f"DNS table: {len(names)} names from {source}")
    try:
        table = dt_facts.resolve_all(
            names,
            nameserver=s["nameserver"],
            timeout=s["dns_timeout"],
            total_timeout=s["dns_total_timeout"],
            concurrency=s["dns_concurrency"],
            old_ip=old_ip,
            new_ip=new_ip,
        )
    except Exception as exc:  # no resolver configured, for example: the guard still stands
        result.warn(f"DNS table: cannot resolve ({type(exc).__name__}: {exc}); set dns_nameserver")
        return None
    result.note(f"DNS table: {len(names)} hosted names from {source}. {table.summary()}.")
    if old_ip and new_ip and old_ip == new_ip:
        result.note("The new server has the old server's IP: every name that points at it sends its mail HERE.")
    if table.counts.get(dt_facts.TIMEOUT):
        result.warn(f"DNS table: {table.counts[dt_facts.TIMEOUT]} names timed out (nameserver {table.nameserver})")
    result.table("DNS verdicts", table.counts_frame())
    if len(table.rows) <= FULL_TABLE_ROWS:
        result.table("DNS table: where each hosted name's mail goes", table.frame())
    else:
        keep = [r for r in table.rows if r["mail_to"] != dt_facts.NEW][:FULL_TABLE_ROWS]
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
