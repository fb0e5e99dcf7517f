"""The ispcp_conf step on the sandbox world: DEBUG, the carried login, ispcp.old.conf, the IP/host name move."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispcp_lib.facts import ispcp_login
from ispcp_lib.facts.ispcp_conf import REQUIRED_KEYS, IspcpConf
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox.world import World, stable_fingerprint
from ispcp_lib.steps import ispcp_conf, keys
from tests.helpers import refused, restore_databases

OLD_IP, NEW_IP = "192.0.2.10", "192.0.2.20"
OLD_HOST, NEW_HOST = "old.sandbox.test", "new.sandbox.test"


def ctx_for(world: World, apply: bool = False, **options):
    return open_run(**world.runbook_params(), apply=apply, resume=False, options=options)


@pytest.fixture
def keyed(world: World) -> World:
    """Databases restored and the keys step applied: the state ispcp_conf runs in."""
    restore_databases(world)
    keys.run(ctx_for(world, apply=True))
    return world


def target_conf(world: World) -> IspcpConf:
    return IspcpConf.load(world.target_root / "etc/ispcp/ispcp.conf")


def backup_conf(world: World) -> IspcpConf:
    return IspcpConf.load(world.backup_root / "etc/ispcp/ispcp.conf")


def old_conf_path(world: World) -> Path:
    return world.target_root / "etc/ispcp/ispcp.old.conf"


def server_ips(world: World) -> list[tuple]:
    conn = world.target_mysql().connect("debian-sys-maint", world.credentials["old"]["debian_sys_maint"], "ispcp")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT ip_id, ip_number, ip_domain, ip_alias FROM server_ips ORDER BY ip_id")
        return [(int(row[0]), *row[1:]) for row in cur.fetchall()]  # the client returns strings


def domain_ip_ids(world: World) -> set[int]:
    conn = world.target_mysql().connect("debian-sys-maint", world.credentials["old"]["debian_sys_maint"], "ispcp")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT domain_ip_id FROM domain UNION SELECT DISTINCT alias_ip_id FROM domain_aliasses")
        return {int(r[0]) for r in cur.fetchall()}  # the client returns strings


def fails(world: World, apply: bool = True, **options) -> str:
    """Run ispcp_conf expecting a failure that leaves the target untouched; return the error text."""
    return refused(world, lambda: ispcp_conf.run(ctx_for(world, apply=apply, **options)))


def test_ispcp_conf_dry_run_apply_and_again_with_an_ip_change(keyed: World) -> None:
    world = keyed
    dummy_lines = target_conf(world).lines
    before = stable_fingerprint(world)
    ctx = ctx_for(world)
    planned = ispcp_conf.run(ctx)
    assert planned.status == "planned"
    assert stable_fingerprint(world) == before  # the MyISAM files of server_ips included
    assert server_ips(world) == [(1, OLD_IP, OLD_HOST, OLD_HOST)]
    plan = planned.tables[0].frame
    assert set(plan["state"]) <= {"planned", "unchanged"}
    assert {"BASE_SERVER_IP", "SERVER_HOSTNAME", "server_ips row 1: ip_number"} <= set(plan["item"])
    assert "3 domains, 2 aliases" in plan[plan["item"] == "domains/aliases on row 1"]["old"].iloc[0]

    ctx.default_apply = True
    done = ispcp_conf.run(ctx)
    assert done.status == "done"
    assert server_ips(world) == [(1, NEW_IP, NEW_HOST, NEW_HOST)]
    assert domain_ip_ids(world) == {1}  # the domains follow the row; nothing repointed
    new, old = target_conf(world), backup_conf(world)
    assert new.get("DEBUG") == "1"
    for key in ("DATABASE_HOST", "DATABASE_NAME", "DATABASE_USER", "DATABASE_PASSWORD"):
        assert new.get(key) == old.get(key)
    # Only the edited lines differ from the dummy's file: comments, blank lines and order stay.
    changed = [i for i, (a, b) in enumerate(zip(dummy_lines, new.lines, strict=True)) if a != b]
    assert {new.lines[i].split(" ")[0] for i in changed} == {"DEBUG", "DATABASE_PASSWORD"}
    copy = IspcpConf.load(old_conf_path(world))
    differing = [(a, b) for a, b in zip(old.lines, copy.lines, strict=True) if a != b]
    assert differing == [
        (f"SERVER_HOSTNAME = {OLD_HOST}", f"SERVER_HOSTNAME = {NEW_HOST}"),
        (f"BASE_SERVER_IP = {OLD_IP}", f"BASE_SERVER_IP = {NEW_IP}"),
    ]
    assert not copy.missing(REQUIRED_KEYS)
    assert old_conf_path(world).stat().st_mode & 0o777 == 0o640
    ok, message = ispcp_login.check_ispcp_login(ctx)
    assert ok, message
    assert any(d.path.endswith("/etc/ispcp/ispcp.conf") and "+DEBUG = 1" in d.text for d in done.diffs)
    assert any("ispcp.old.conf" in d.path and f"+BASE_SERVER_IP = {NEW_IP}" in d.text for d in done.diffs)
    assert len(done.backups) == 1  # the dummy's ispcp.conf; ispcp.old.conf is new

    again = ispcp_conf.run(ctx)
    assert again.status == "noop" and again.changed == 0 and "already" in again.noop_reason
    shown = again._repr_html_() + done._repr_html_() + planned._repr_html_() + ctx.journal_path.read_text()
    for secret in [*world.secrets, *ctx.secrets.values()]:
        assert secret not in shown
    assert old.get("DATABASE_PASSWORD") not in shown  # the encrypted value is treated as a secret too


def test_ispcp_conf_same_ip_and_host_changes_no_database(keyed: World) -> None:
    world = keyed
    ctx = ctx_for(world, apply=True, new_server_ip=OLD_IP, new_server_hostname=OLD_HOST)
    result = ispcp_conf.run(ctx)
    assert result.status == "done" and result.changed == 2  # ispcp.conf and the new ispcp.old.conf
    assert "Host name and IP change" not in [t.title for t in result.tables]
    assert server_ips(world) == [(1, OLD_IP, OLD_HOST, OLD_HOST)]
    assert IspcpConf.load(old_conf_path(world)).lines == backup_conf(world).lines
    assert any("nothing to move" in n for n in result.notes)


def test_ispcp_conf_parameters_override_detection(keyed: World) -> None:
    world = keyed
    result = ispcp_conf.run(
        ctx_for(world, apply=True, new_server_ip="198.51.100.7", new_server_hostname="panel.example.net")
    )
    assert result.status == "done"
    assert server_ips(world) == [(1, "198.51.100.7", "panel.example.net", "panel.example.net")]
    copy = IspcpConf.load(old_conf_path(world))
    assert copy.get("BASE_SERVER_IP") == "198.51.100.7" and copy.get("SERVER_HOSTNAME") == "panel.example.net"


def test_ispcp_conf_hostname_from_etc_hostname(keyed: World) -> None:
    world = keyed
    path = world.target_root / "etc/ispcp/ispcp.conf"
    conf = target_conf(world)
    conf.set("SERVER_HOSTNAME", "")
    path.write_text(conf.text())
    (world.target_root / "etc/hostname").write_text("fallback.sandbox.test\n")
    result = ispcp_conf.run(ctx_for(world))
    assert result.data["new_hostname"] == "fallback.sandbox.test"


# --- bad input -------------------------------------------------------------------------------------


def test_ispcp_conf_old_config_lacks_required_values(keyed: World) -> None:
    world = keyed
    path = world.backup_root / "etc/ispcp/ispcp.conf"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(("SERVER_HOSTNAME", "DEFAULT_ADMIN"))]
    path.write_text("\n".join(lines) + "\n")
    error = fails(world)
    assert "DEFAULT_ADMIN_ADDRESS" in error and "SERVER_HOSTNAME" in error and "ispcp-update would stop" in error
    assert str(path) in error


@pytest.mark.parametrize("value, problem", [("300.1.2.3", "not an IP address"), ("2001:db8::1", "IPv4")])
def test_ispcp_conf_bad_new_ip(keyed: World, value: str, problem: str) -> None:
    error = fails(keyed, new_server_ip=value)
    assert "new_server_ip" in error and problem in error


def test_ispcp_conf_bad_hostname(keyed: World) -> None:
    error = fails(keyed, new_server_hostname="bad_host name")
    assert "new_server_hostname" in error and "not a valid host name" in error


def test_ispcp_conf_refuses_a_detected_loopback_ip(keyed: World) -> None:
    world = keyed
    path = world.target_root / "etc/ispcp/ispcp.conf"
    conf = target_conf(world)
    conf.set("BASE_SERVER_IP", "127.0.0.1")  # the installer's default, never the server's address
    path.write_text(conf.text())
    error = fails(world)
    assert "loopback" in error and "new_server_ip" in error


def test_ispcp_conf_before_the_keys_step(world: World) -> None:
    restore_databases(world)  # the dummy's keys are still in place
    error = fails(world)
    assert "key files (target)" in error and "apply the keys step first" in error
    before = stable_fingerprint(world)
    planned = ispcp_conf.run(ctx_for(world))
    assert planned.status == "planned" and any("keys step" in w for w in planned.warnings)
    assert stable_fingerprint(world) == before


def test_ispcp_conf_old_and_new_ip_both_in_server_ips(keyed: World) -> None:
    world = keyed
    conn = world.target_mysql().connect("debian-sys-maint", world.credentials["old"]["debian_sys_maint"], "ispcp")
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO server_ips (ip_id, ip_number, ip_domain, ip_alias, ip_card, ip_status) "
            "VALUES (2, %s, %s, %s, 'eth0', 'ok')",
            (NEW_IP, NEW_HOST, NEW_HOST),
        )
    error = fails(world)
    assert "server_ips" in error and "both the old IP" in error and "domain_ip_id" in error
