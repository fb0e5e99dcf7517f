"""mail_guard against a real private Postfix and a real dnsmasq: the guard's promise is tested over SMTP."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.action import StepFailed, action
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.result import Result, render_html
from ispcp_lib.facts import postfix
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox import dns as sdns
from ispcp_lib.sandbox import postfix as spf
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import mail_guard
from ispcp_lib.system import postfix_guard as guard

ADDRESS = "info@example-001.test"
HOST_POLICY = Path("/usr/sbin/policy-rc.d")
HOST = LocalConnection("/")


@pytest.fixture
def mail_world(world: World) -> Iterator[tuple[World, dict[str, Any]]]:
    """The running small world plus its private Postfix and dnsmasq; the step parameters for them."""
    try:
        params = {**spf.start_for_world(world), **sdns.start_for_world(world)}
        yield world, params
    finally:
        sdns.stop_for_world(world)
        spf.stop_for_world(world)


def ctx_for(world: World, params: dict[str, Any], apply: bool, **options: Any) -> Context:
    return open_run(**world.runbook_params(), apply=apply, resume=False, options={**params, **options})


@action("cleanup")
def lift_step(ctx: Context, result: Result) -> None:
    """What the cleanup step does for the guard (its other work is not tested here)."""
    guard.lift(ctx, result)


@action("accounts")
def later_step(ctx: Context, result: Result) -> None:
    """Any later changing step: it must not run while the guard is broken."""
    result.change("would change something")


def answer(params: dict[str, Any]) -> postfix.ProbeAnswer:
    return spf.probe(params["postfix_smtp_port"], ADDRESS)


def files(world: World) -> dict[str, bytes | None]:
    """The files the guard may touch, byte for byte (None: absent)."""
    out = {}
    for rel in (
        "etc/postfix/main.cf",
        "etc/postfix/master.cf",
        "usr/sbin/policy-rc.d",
        "usr/sbin/policy-rc.d.before-ispcp-recovery",
    ):
        p = world.target_root / rel
        out[rel] = p.read_bytes() if p.exists() else None
    return out


def host_policy() -> bytes | None:
    return HOST_POLICY.read_bytes() if HOST_POLICY.exists() else None


def test_soft_bounce_dry_run_apply_again_and_lift(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    assert answer(params).code == 554  # an unconfigured Postfix bounces the hosted domains' mail for good
    original, fp = files(world), stable_fingerprint(world)

    dry = mail_guard.run(ctx_for(world, params, apply=False))
    assert dry.status == "planned"
    assert any("soft_bounce = yes" in c for c in dry.changes)
    assert any(c.planned and "soft_bounce=yes" in c.argv for c in dry.commands)
    assert stable_fingerprint(world) == fp and files(world) == original
    assert guard.guard_state(ctx_for(world, params, apply=False)) is None
    assert answer(params).code == 554
    assert dry.data["smtp_probe"]["before"]["code"] == 554

    ctx = ctx_for(world, params, apply=True)
    done = mail_guard.run(ctx)
    assert done.status == "done", done.errors
    probe = answer(params)
    assert probe.code == 454 and "Relay access denied" in probe.text  # now senders keep the mail and retry
    assert done.data["smtp_probe"]["before"]["code"] == 554
    assert done.data["smtp_probe"]["after"]["code"] == 454
    html = render_html(done)
    assert "554" in html and "454" in html  # the report shows the probe before and after
    assert "+soft_bounce = yes" in done.diffs[0].text
    # The dry run showed the very diff that postconf then wrote.
    planned_diff = {d.path: d.text for d in dry.diffs}
    for d in done.diffs:
        assert planned_diff.get(d.path) == d.text, d.path
    state = guard.guard_state(ctx)
    assert state["mode"] == "soft_bounce" and state["previous"]["soft_bounce"] == "no"
    assert state["previous"]["soft_bounce_explicit"] is None  # it was the default
    assert guard.check_guard(ctx)[0]
    assert (world.state_dir / "mail_guard.json").stat().st_mode & 0o777 == 0o600
    assert done.data["dns_summary"]["names"] == 11

    again = mail_guard.run(ctx_for(world, params, apply=True))
    assert again.status == "noop" and "already yes" in again.noop_reason

    # cleanup's dry run plans the lift and changes nothing
    guarded = files(world)
    planned = lift_step(ctx_for(world, params, apply=False))
    assert planned.status == "planned" and any("restore" in c for c in planned.changes)
    assert files(world) == guarded and guard.guard_state(ctx) is not None

    lifted = lift_step(ctx_for(world, params, apply=True))
    assert lifted.status == "done", lifted.errors
    assert files(world) == original  # byte for byte what was there before
    assert (world.target_root / "etc/postfix/main.cf").stat().st_mode & 0o777 == 0o644
    assert guard.guard_state(ctx) is None
    assert answer(params).code == 554


def test_watchdog_stops_later_steps_when_soft_bounce_is_switched_off(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    ctx = ctx_for(world, params, apply=True)
    mail_guard.run(ctx)
    assert later_step(ctx_for(world, params, apply=True)).status == "done"

    cfg = params["postfix_config_dir"]
    subprocess.run(["postconf", "-c", cfg, "-e", "soft_bounce=no"], check=True)
    ok, message = guard.check_guard(ctx)
    assert not ok and "soft_bounce is 'no'" in message
    with pytest.raises(StepFailed) as failed:
        later_step(ctx_for(world, params, apply=True))
    result = failed.value.result
    assert result.changes == []  # the step body never ran
    assert "MAIL GUARD BROKEN" in result.errors[0]
    assert "color:#cf222e" in render_html(result)  # loud and red in the report

    # Re-running mail_guard is allowed (the watchdog lets it through) and repairs the guard.
    repaired = mail_guard.run(ctx_for(world, params, apply=True))
    assert repaired.status == "done"
    assert guard.check_guard(ctx)[0]
    assert guard.guard_state(ctx)["previous"]["soft_bounce_explicit"] is None  # the ORIGINAL previous value

    # ispcp-update rewrites main.cf while the guard stands: lifting keeps its work, takes back only soft_bounce.
    subprocess.run(["postconf", "-c", cfg, "-e", "myorigin = rewritten-by-ispcp-update.test"], check=True)
    lifted = lift_step(ctx_for(world, params, apply=True))
    assert lifted.status == "done", lifted.errors
    assert any("changed since the guard" in n for n in lifted.notes)
    assert postfix.explicit_setting(HOST, cfg, "soft_bounce") is None
    assert postfix.explicit_setting(HOST, cfg, "myorigin") == "rewritten-by-ispcp-update.test"
    assert answer(params).code == 554


def test_stop_mode_refuses_connections_blocks_starts_and_lifts(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    host_before = host_policy()
    original, fp = files(world), stable_fingerprint(world)
    dry = mail_guard.run(ctx_for(world, params, apply=False, mail_guard_mode="stop"))
    assert dry.status == "planned" and any("stop Postfix" in c for c in dry.changes)
    assert stable_fingerprint(world) == fp and answer(params).code == 554

    ctx = ctx_for(world, params, apply=True, mail_guard_mode="stop")
    done = mail_guard.run(ctx)
    assert done.status == "done", done.errors
    after = answer(params)
    assert after.code is None and "refused" in after.text
    assert done.data["smtp_probe"]["after"]["code"] is None
    policy = world.target_root / "usr/sbin/policy-rc.d"
    assert policy.stat().st_mode & 0o777 == 0o755
    assert subprocess.run(["sh", str(policy), "postfix", "start"]).returncode == 101
    assert subprocess.run(["sh", str(policy), "--quiet", "postfix.service", "start"]).returncode == 101
    assert subprocess.run(["sh", str(policy), "apache2", "start"]).returncode == 0
    assert host_policy() == host_before  # the host's own policy-rc.d is never touched
    assert guard.check_guard(ctx)[0]
    assert mail_guard.run(ctx_for(world, params, apply=True, mail_guard_mode="stop")).status == "noop"

    # Somebody starts Postfix behind the guard's back: the next changing step refuses.
    subprocess.run(["postfix", "-c", params["postfix_config_dir"], "start"], check=True, capture_output=True)
    _wait(lambda: postfix.port_answers(HOST, params["postfix_smtp_port"]))
    ok, message = guard.check_guard(ctx)
    assert not ok and "RUNNING" in message
    with pytest.raises(StepFailed, match="MAIL GUARD BROKEN"):
        later_step(ctx_for(world, params, apply=True))
    subprocess.run(["postfix", "-c", params["postfix_config_dir"], "stop"], check=True, capture_output=True)
    _wait(lambda: not postfix.port_answers(HOST, params["postfix_smtp_port"]))

    lifted = lift_step(ctx_for(world, params, apply=True))
    assert lifted.status == "done", lifted.errors
    assert any("start Postfix again" in c for c in lifted.changes)  # it ran before the guard
    assert files(world) == original  # no policy-rc.d any more, as before
    _wait(lambda: postfix.port_answers(HOST, params["postfix_smtp_port"]))
    assert answer(params).code == 554


def test_stop_mode_wraps_an_existing_policy_and_puts_it_back(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    policy = world.target_root / "usr/sbin/policy-rc.d"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text('#!/bin/sh\n# the operator\'s own policy\n[ "$1" = apache2 ] && exit 104\nexit 0\n')
    policy.chmod(0o750)
    original = files(world)
    ctx = ctx_for(world, params, apply=True, mail_guard_mode="stop")
    done = mail_guard.run(ctx)
    assert done.status == "done", done.errors
    saved = world.target_root / "usr/sbin/policy-rc.d.before-ispcp-recovery"
    assert saved.read_bytes() == original["usr/sbin/policy-rc.d"]
    assert subprocess.run(["sh", str(policy), "postfix", "restart"]).returncode == 101
    assert subprocess.run(["sh", str(policy), "apache2", "start"]).returncode == 104  # still asks the old one
    assert any(b.endswith("usr/sbin/policy-rc.d") for b in done.backups)

    lift_step(ctx_for(world, params, apply=True))
    assert files(world) == original
    assert policy.stat().st_mode & 0o777 == 0o750


def test_postfix_not_installed(world: World) -> None:
    """No main.cf on the target: soft_bounce refuses clearly; stop still blocks a later install."""
    fp = stable_fingerprint(world)
    with pytest.raises(StepFailed) as failed:
        mail_guard.run(open_run(**world.runbook_params(), apply=True, resume=False, options={"dns_total_timeout": 5}))
    error = failed.value.result.errors[0]
    assert "not installed" in error and "mail_guard_mode = 'stop'" in error
    assert stable_fingerprint(world) == fp

    ctx = open_run(
        **world.runbook_params(),
        apply=True,
        resume=False,
        options={"mail_guard_mode": "stop", "postfix_smtp_port": _closed_port()},
    )
    done = mail_guard.run(ctx)
    assert done.status == "done", done.errors
    assert any("not installed" in n for n in done.notes)
    policy = world.target_root / "usr/sbin/policy-rc.d"
    assert subprocess.run(["sh", str(policy), "postfix", "start"]).returncode == 101
    assert guard.check_guard(ctx)[0]


def test_broken_main_cf_is_refused_with_postconf_error(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    main_cf = world.target_root / "etc/postfix/main.cf"
    main_cf.write_text(main_cf.read_text() + "this line has no equals sign\n")
    before, fp = main_cf.read_bytes(), stable_fingerprint(world)
    with pytest.raises(StepFailed) as failed:
        mail_guard.run(ctx_for(world, params, apply=True))
    error = failed.value.result.errors[0]
    assert "postconf rejects it" in error and "missing '='" in error and "line" in error
    assert main_cf.read_bytes() == before  # postconf -e would have rewritten it: it never ran
    assert stable_fingerprint(world) == fp
    assert guard.guard_state(ctx_for(world, params, apply=False)) is None


def test_unreachable_nameserver_does_not_hang_the_step(mail_world: tuple[World, dict[str, Any]]) -> None:
    import socket

    world, params = mail_world
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        nameserver = f"127.0.0.1:{silent.getsockname()[1]}"
        result = mail_guard.run(
            ctx_for(world, params, apply=False, dns_nameserver=nameserver, dns_timeout=0.3, dns_total_timeout=2)
        )
    # The step finished with a table of timeouts (each name's query bound or the total bound), not a hang.
    assert result.status == "planned"
    assert result.data["dns_summary"]["counts"] == {"timeout": 11}
    assert result.data["dns_summary"]["names"] == 11
    assert any("timed out" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mail_guard_mode": "sometimes"}, "mail_guard_mode.*soft_bounce, stop, none"),
        ({"dns_nameserver": "ns1.example.com"}, "dns_nameserver.*IP address"),
        ({"postfix_smtp_port": "smtp"}, "postfix_smtp_port.*not a whole number"),
        ({"dns_timeout": 0}, "dns_timeout.*out of range"),
    ],
)
def test_bad_parameters_fail_before_anything(
    mail_world: tuple[World, dict[str, Any]], options: dict[str, Any], match: str
) -> None:
    world, params = mail_world
    fp = stable_fingerprint(world)
    # Refused when the run opens (the parameter spec) or by the step's own checks, before any change.
    with pytest.raises((InputError, StepFailed), match=match):
        mail_guard.run(ctx_for(world, params, apply=True, **options))
    assert stable_fingerprint(world) == fp
    assert answer(params).code == 554


def test_switching_modes_needs_a_lift_first(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    mail_guard.run(ctx_for(world, params, apply=True))
    guarded = files(world)
    with pytest.raises(StepFailed, match="already set in mode 'soft_bounce'"):
        mail_guard.run(ctx_for(world, params, apply=True, mail_guard_mode="stop"))
    assert files(world) == guarded and answer(params).code == 454


def _wait(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_in_mynetworks_reads_postfix_network_lists() -> None:
    assert mail_guard.in_mynetworks("127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128") == "127.0.0.0/8"
    assert mail_guard.in_mynetworks("198.51.100.1/32, hash:/etc/postfix/network_table") is None
    assert mail_guard.in_mynetworks("/etc/postfix/networks 127.0.0.1") == "127.0.0.1"


def test_the_report_says_when_the_probe_comes_from_a_trusted_address(mail_world: tuple[World, dict[str, Any]]) -> None:
    world, params = mail_world
    plain = mail_guard.run(ctx_for(world, params, apply=False))
    assert plain.data["smtp_probe"]["source_in_mynetworks"] is None
    assert not any("Postfix trusts" in n for n in plain.notes)

    # A stock Postfix: 127.0.0.0/8 is in mynetworks, so it relays for the probe.
    subprocess.run(
        ["postconf", "-c", params["postfix_config_dir"], "-e", "mynetworks=127.0.0.0/8 [::1]/128"], check=True
    )
    trusted = mail_guard.run(ctx_for(world, params, apply=False))
    assert trusted.data["smtp_probe"]["source_in_mynetworks"] == "127.0.0.0/8"
    note = next(n for n in trusted.notes if "Postfix trusts" in n)
    assert "127.0.0.1" in note and "not what the senders of the hosted domains get" in note


def test_planned_soft_bounce_is_what_postconf_writes(tmp_path: Path) -> None:
    """postconf -e replaces the setting's line with its continuation lines, or appends one."""
    cases = [
        "myhostname = a.test\n",
        "soft_bounce = no\nrelay_domains =\n",
        "myhostname = a.test\nsoft_bounce =\n    no\nmydestination = a\n",
        "myhostname = a.test",
    ]
    for text in cases:
        (tmp_path / "main.cf").write_text(text)
        subprocess.run(["postconf", "-c", str(tmp_path), "-e", "soft_bounce=yes"], check=True)
        assert mail_guard.planned_soft_bounce(text) == (tmp_path / "main.cf").read_text(), text
