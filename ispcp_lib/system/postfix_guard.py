"""The mail guard's record, its check, the watchdog and the lift: shared by the steps that must know it holds.

The mail_guard step sets the guard (soft_bounce, or Postfix stopped behind a policy-rc.d) and records
it in the state directory. Everything else only reads or lifts it through this module:

    guard_state(ctx) -> dict | None       the recorded guard, None if never set or lifted
    check_guard(ctx) -> (bool, str)       does it still hold? (cheap: no DNS, no throwaway servers)
    lift(ctx, result)                     restore exactly what was there before (cleanup calls it)
    register_watchdogs()                  put `watchdog` into ispcp_lib.core.action.WATCHDOGS

Every target access goes through the connection: postconf runs there with `-c DIR`, the policy
script is read and moved there, and "is Postfix running" is asked there.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ispcp_lib.core.action import WATCHDOGS
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import GuardBroken
from ispcp_lib.core.result import Result
from ispcp_lib.facts import postfix
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf

STATE_FILE = "mail_guard.json"
DEFAULT_CONFIG_DIR = "/etc/postfix"
POLICY_RC_D = "/usr/sbin/policy-rc.d"
SAVED_POLICY_RC_D = "/usr/sbin/policy-rc.d.before-ispcp-recovery"
POLICY_MARKER = "# ispcp-recovery mail guard"
# ispcp-setup and ispcp-update build main.cf from ispCP's template (CONF_DIR/postfix/main.cf) and copy it
# over Postfix's, then start Postfix with its init script (ispcp-setup-methods.pl setup_mta, 1.0.7
# :2152-2190): with the guard in the template, the main.cf they write carries soft_bounce from the start.
TEMPLATE_BLOCK = "# ispcp-recovery mail guard (the cleanup step removes these two lines)\nsoft_bounce = yes\n"
# For a template whose last line has no line break: the break added before the block goes with it.
JOINED_BLOCK = (
    "\n# ispcp-recovery mail guard (the cleanup step removes these lines and the break before)\nsoft_bounce = yes\n"
)
# Steps the watchdog lets through: mail_guard (it repairs a broken guard) and cleanup (it lifts it).
UNGUARDED_STEPS = ("mail_guard", "cleanup")


# --- the record ------------------------------------------------------------------------------------


def state_path(ctx: Context) -> str:
    return f"{ctx.state_dir}/{STATE_FILE}"


def copy_dir(ctx: Context) -> str:
    """Where the guard keeps its own exact copies (main.cf before the edit), beside its record."""
    return f"{ctx.state_dir}/mail_guard"


def guard_state(ctx: Context) -> dict[str, Any] | None:
    """The guard recorded in the state dir (mode, previous values, when), None if never set or lifted."""
    text = ctx.state.read_text(state_path(ctx))
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        # A damaged record still means a guard was set: report it as broken rather than absent.
        return {"mode": "unknown", "status": "damaged record", "config_dir": None}


def save_state(ctx: Context, state: dict[str, Any], what: str | None = None) -> None:
    """Record the guard (what: the step's change line for it, when recording is the change)."""
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    ctx.save_state(state_path(ctx), text, what=what or "record the mail guard", announce=what is not None)


def is_ours(ctx: Context, path: str) -> bool:
    """Is the target's policy-rc.d the guard's own script?"""
    return POLICY_MARKER in (ctx.target.read_text(path) or "")


# --- ispCP's template and the update attempts -------------------------------------------------------


def template_path(ctx: Context) -> str | None:
    """ispCP's Postfix template on the target (CONF_DIR/postfix/main.cf), None without an ispCP install."""
    text = ctx.target.read_text(CONF_PATH)
    conf_dir = (IspcpConf.parse(text).get("CONF_DIR") if text else None) or "/etc/ispcp"
    path = f"{conf_dir}/postfix/main.cf"
    return path if ctx.target.is_file(path) else None


def guard_template(ctx: Context) -> bool:
    """Put soft_bounce = yes into ispCP's template, so that a setup or update run writes it; True if changed."""
    path = template_path(ctx)
    text = ctx.target.read_text(path) if path else None
    if path is None or text is None or TEMPLATE_BLOCK in text or JOINED_BLOCK in text:
        return False
    block = TEMPLATE_BLOCK if text.endswith("\n") or not text else JOINED_BLOCK
    return ctx.write_file(path, text + block, what=f"add soft_bounce = yes to ispCP's Postfix template {path}")


def _lift_template(ctx: Context) -> None:
    path = template_path(ctx)
    text = ctx.target.read_text(path) if path else None
    if path is not None and text is not None and (TEMPLATE_BLOCK in text or JOINED_BLOCK in text):
        lifted = text.replace(JOINED_BLOCK, "").replace(TEMPLATE_BLOCK, "")
        ctx.write_file(path, lifted, what=f"remove the guard from ispCP's template {path}")


def reassert(ctx: Context, result: Result) -> None:
    """After a run of ispCP's own scripts (they rewrite main.cf and start Postfix): make the guard hold again."""
    state = guard_state(ctx)
    if state is None:
        return
    cfg = state.get("config_dir") or DEFAULT_CONFIG_DIR
    queue = postfix.queue_directory(ctx.target, cfg)
    if state.get("mode") == "soft_bounce":
        guard_template(ctx)
        if postfix.effective_value(ctx.target, cfg, "soft_bounce") != "yes":
            ctx.runner.run(
                postconf_argv(ctx, cfg, "-e", "soft_bounce=yes"),
                mutates=True,
                what=f"set soft_bounce = yes in {cfg}/main.cf again (the script rewrote it)",
            )
            if postfix.master_pid(ctx.target, queue) is not None:
                ctx.runner.run(postfix_argv(ctx, cfg, "reload"), mutates=True)
    elif state.get("mode") == "stop" and postfix.master_pid(ctx.target, queue) is not None:
        ctx.runner.run(service_argv(ctx, cfg, "stop"), mutates=True, what="stop Postfix again (the script started it)")


# --- the check -------------------------------------------------------------------------------------


def check_guard(ctx: Context) -> tuple[bool, str]:
    """Does the recorded guard still hold? Cheap enough for every step: a few commands on the target."""
    state = guard_state(ctx)
    if state is None:
        return True, "no mail guard is set"
    mode = state.get("mode")
    if mode == "none":
        return True, "mail guard mode 'none': nothing is guarded, only checked"
    if mode not in ("soft_bounce", "stop") or not state.get("config_dir"):
        return False, f"the mail guard record {state_path(ctx)} is damaged"
    if mode == "stop":
        return _check_stopped(ctx, state)
    return _check_soft_bounce(ctx, state["config_dir"])


def _check_stopped(ctx: Context, state: dict[str, Any]) -> tuple[bool, str]:
    cfg = state["config_dir"]
    port = int(state.get("smtp_port") or 25)
    queue = state.get("queue_directory")
    if queue is None and postfix.installed(ctx.target, cfg):  # Postfix was installed after the guard was set
        queue = postfix.queue_directory(ctx.target, cfg)
    pid = postfix.master_pid(ctx.target, queue)
    if pid is not None:
        return False, (
            f"Postfix is RUNNING (master pid {pid}, config {cfg}) although the guard is 'stop': "
            "it rejects mail for the hosted domains with hard errors"
        )
    if postfix.port_answers(ctx.target, port):
        return False, (
            f"something ANSWERS on SMTP port {port} although the guard is 'stop': mail for the "
            "hosted domains can be rejected for good"
        )
    if not is_ours(ctx, POLICY_RC_D):
        return False, (
            f"the policy-rc.d that keeps Postfix from starting is gone ({POLICY_RC_D}); "
            "the next package install may start it"
        )
    return True, f"Postfix is stopped, nothing answers on port {port}, and policy-rc.d blocks its start"


def _check_soft_bounce(ctx: Context, cfg: str) -> tuple[bool, str]:
    main_cf = f"{cfg}/main.cf"
    if not ctx.target.is_file(main_cf):
        return False, f"{main_cf} is gone, so soft_bounce is no longer set"
    value = postfix.effective_value(ctx.target, cfg, "soft_bounce")
    if value is None:
        return False, f"postconf cannot read {main_cf} any more, so soft_bounce cannot be confirmed"
    if value != "yes":
        return False, (
            f"soft_bounce is '{value}' in {main_cf}: Postfix rejects mail for the hosted domains with hard 5xx "
            "errors again"
        )
    return True, "soft_bounce = yes: every rejection is temporary, senders keep the mail and retry"


def watchdog(ctx: Context, result: Result) -> None:
    """Run by @action before every changing step: stop when the recorded guard no longer holds."""
    if result.step in UNGUARDED_STEPS:
        return
    state = guard_state(ctx)
    if state is None:
        return
    ok, message = check_guard(ctx)
    if ok:
        return
    cfg = state.get("config_dir") or DEFAULT_CONFIG_DIR
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


def register_watchdogs() -> None:
    """Make every changing step check the guard first (idempotent)."""
    if watchdog not in WATCHDOGS:
        WATCHDOGS.append(watchdog)


def service_argv(ctx: Context, cfg: str, verb: str) -> list[str]:
    """Start/stop through systemd when it supervises the target's default Postfix, else `postfix -c DIR`."""
    if cfg == DEFAULT_CONFIG_DIR and postfix.systemd_running(ctx.target):
        return ["systemctl", verb, "postfix.service"]
    return postfix_argv(ctx, cfg, verb)


def postfix_argv(ctx: Context, cfg: str, verb: str) -> list[str]:
    """`postfix -c DIR verb` on the target (start, stop, reload)."""
    return [postfix.binary(ctx.target, "postfix") or "postfix", "-c", ctx.target.path(cfg), verb]


def postconf_argv(ctx: Context, cfg: str, *args: str) -> list[str]:
    """`postconf -c DIR args…` on the target (-e to set, -X to remove a setting)."""
    return [postfix.binary(ctx.target, "postconf") or "postconf", "-c", ctx.target.path(cfg), *args]


def unit_masked(ctx: Context, unit: str) -> bool:
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
    cfg = state.get("config_dir") or DEFAULT_CONFIG_DIR
    previous = state.get("previous") or {}
    if mode == "soft_bounce":
        _lift_template(ctx)
        _lift_soft_bounce(ctx, result, state, cfg, previous)
    elif mode == "stop":
        _lift_stop(ctx, result, cfg, previous)
    ctx.remove(state_path(ctx), what=f"remove the mail guard record ({mode})", state=True)


def _lift_soft_bounce(ctx: Context, result: Result, state: dict[str, Any], cfg: str, previous: dict[str, Any]) -> None:
    main_cf = f"{cfg}/main.cf"
    current = ctx.target.read_bytes(main_cf)
    if current is None:
        result.warn(f"{main_cf} is gone: nothing to restore")
        return
    if state.get("main_cf_sha256") is None and state.get("status") != "setting":
        result.note("soft_bounce was yes before the guard; it stays yes.")
        return
    copy = ctx.state.read_bytes(state["main_cf_copy"]) if state.get("main_cf_copy") else None
    if copy is not None and hashlib.sha256(current).hexdigest() == state.get("main_cf_sha256"):
        meta = state.get("main_cf_meta") or {}
        changed = ctx.write_file(
            main_cf,
            copy,
            mode=meta.get("mode"),
            uid=meta.get("uid"),
            gid=meta.get("gid"),
            what=f"restore {main_cf} as it was before the guard",
        )
    else:
        # Somebody (ispcp-update) rewrote main.cf since: only soft_bounce goes back, their changes stay.
        result.note(f"{main_cf} changed since the guard was set: only soft_bounce is put back.")
        changed = _put_back_soft_bounce(ctx, result, cfg, previous.get("soft_bounce_explicit"))
    pid = postfix.master_pid(ctx.target, postfix.queue_directory(ctx.target, cfg))
    if changed and pid is not None:
        ctx.runner.run(postfix_argv(ctx, cfg, "reload"), mutates=True, what=f"reload Postfix (master pid {pid})")


def _put_back_soft_bounce(ctx: Context, result: Result, cfg: str, wanted: str | None) -> bool:
    explicit_now = postfix.explicit_setting(ctx.target, cfg, "soft_bounce")
    if wanted is None and explicit_now is not None:
        ctx.runner.run(
            postconf_argv(ctx, cfg, "-X", "soft_bounce"),
            mutates=True,
            what=f"remove soft_bounce from {cfg}/main.cf (it was not set before the guard)",
        )
        return True
    if wanted is not None and explicit_now != wanted:
        ctx.runner.run(
            postconf_argv(ctx, cfg, "-e", f"soft_bounce={wanted}"),
            mutates=True,
            what=f"set soft_bounce = {wanted} again in {cfg}/main.cf",
        )
        return True
    return False


def _lift_stop(ctx: Context, result: Result, cfg: str, previous: dict[str, Any]) -> None:
    if is_ours(ctx, POLICY_RC_D):
        if previous.get("policy_rc_d_existed") and ctx.target.stat(SAVED_POLICY_RC_D) is not None:
            what = f"put the previous {POLICY_RC_D} back"
            argv = ["mv", "-f", "--", ctx.target.path(SAVED_POLICY_RC_D), ctx.target.path(POLICY_RC_D)]
        else:
            what = f"remove {POLICY_RC_D} (there was none before the guard)"
            argv = ["rm", "-f", "--", ctx.target.path(POLICY_RC_D)]
        ctx.keep(POLICY_RC_D)
        ctx.runner.run(argv, mutates=True, what=what)
    elif ctx.target.stat(POLICY_RC_D) is not None:
        result.warn(f"{POLICY_RC_D} was replaced by someone else since the guard was set; it is left alone")
    for unit, was_masked in (previous.get("units_masked") or {}).items():
        if not was_masked and unit_masked(ctx, unit):
            ctx.runner.run(["systemctl", "unmask", unit], mutates=True, what=f"systemctl unmask {unit}")
    if previous.get("master_running") and postfix.installed(ctx.target, cfg):
        if postfix.master_pid(ctx.target, postfix.queue_directory(ctx.target, cfg)) is None:
            ctx.runner.run(
                service_argv(ctx, cfg, "start"), mutates=True, what="start Postfix again (it ran before the guard)"
            )
