"""The DNS table against real servers: the backup's database read by a throwaway MariaDB, dnsmasq for the
records, and small real UDP servers for a dead nameserver and for counting queries in flight."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from ispcp_lib.core.action import action
from ispcp_lib.core.fileops import fingerprint
from ispcp_lib.facts import dns_table as d
from ispcp_lib.facts import mysql_creds
from ispcp_lib.facts.backup_db_reader import backup_database, read_backup_database
from ispcp_lib.runbook.session import open_run
from ispcp_lib.sandbox import dns as sdns
from ispcp_lib.sandbox.world import World
from ispcp_lib.steps import mail_guard


@pytest.fixture
def dns_world(world_template: World, tmp_path: Path) -> Iterator[tuple[World, str]]:
    """A stopped clone of the small world with its dnsmasq running, and the dns_nameserver parameter."""
    w = world_template.clone(tmp_path / "w")
    try:
        yield w, sdns.start_for_world(w)["dns_nameserver"]
    finally:
        sdns.stop_for_world(w)


class SilentServer:
    """A UDP socket that reads queries and never answers: a nameserver behind a dropping firewall."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class SlowServer(threading.Thread):
    """Answers every A/MX query with NXDOMAIN after `delay` s, counting how many were in flight at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.delay = delay
        self.pending: list[tuple[float, bytes, tuple]] = []
        self.max_in_flight = 0
        self.received = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(4096)
                self.received += 1
                self.pending.append((time.monotonic() + self.delay, data, peer))
                self.max_in_flight = max(self.max_in_flight, len(self.pending))
            except TimeoutError:
                pass
            now = time.monotonic()
            for item in [p for p in self.pending if p[0] <= now]:
                self.pending.remove(item)
                query = dns.message.from_wire(item[1])
                reply = dns.message.make_response(query)
                reply.set_rcode(dns.rcode.NXDOMAIN)
                self.sock.sendto(reply.to_wire(), item[2])
            # answer due queries promptly even while more arrive
            if self.pending:
                self.sock.settimeout(max(0.001, min(p[0] for p in self.pending) - time.monotonic()))
            else:
                self.sock.settimeout(0.2)

    def close(self) -> None:
        self.stop = True
        self.join(timeout=5)
        self.sock.close()


def _names(world: World) -> list[d.HostedName]:
    return sdns.world_names(world)


def test_backup_reader_finds_every_hosted_name_and_leaves_the_backup_alone(world_template: World) -> None:
    datadir = world_template.backup_root / "var/lib/mysql"
    before = fingerprint(datadir)
    names = read_backup_database(datadir, "ispcp", d.hosted_names)
    assert names == _names(world_template)  # domains, aliases, then subdomains joined to their domain
    kinds = {n.kind for n in names}
    assert kinds == {"domain", "alias", "subdomain"}
    assert fingerprint(datadir) == before


def test_backup_reader_removes_its_copy_and_stops_its_server(world_template: World) -> None:
    datadir = world_template.backup_root / "var/lib/mysql"
    with backup_database(datadir, "ispcp") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM domain")
            assert int(cur.fetchone()[0]) == world_template.manifest["counts"]["domains"]
            cur.execute("SELECT @@datadir, @@skip_networking")
            work_datadir, skip_networking = cur.fetchone()
    assert skip_networking == "1"  # nothing but our socket could reach the copy (the client returns strings)
    assert not Path(work_datadir).exists()
    assert str(datadir) not in work_datadir


def test_backup_reader_refuses_a_missing_database(world_template: World) -> None:
    from ispcp_lib.core.errors import PreconditionFailed

    with pytest.raises(PreconditionFailed, match="does not exist"):
        read_backup_database(world_template.backup_root / "var/lib/mysql", "nosuchdb", d.hosted_names)


def test_table_classifies_every_name_like_the_served_records(dns_world: tuple[World, str]) -> None:
    world, nameserver = dns_world
    expected = sdns.expected_for_world(world)
    table = d.resolve_all(
        _names(world),
        nameserver=nameserver,
        timeout=2,
        total_timeout=30,
        concurrency=8,
        old_ip="192.0.2.10",
        new_ip="192.0.2.20",
    )
    got = {r["name"]: (r["verdict"], r["mail_to"]) for r in table.rows}
    assert got == expected
    verdicts = {v for v, _ in got.values()}
    assert {d.OLD, d.NEW, d.ELSEWHERE, d.NO_MX, d.NXDOMAIN} <= verdicts
    assert table.cut_by_total == 0
    assert len(table.mail_to_old) == sum(1 for _, to in expected.values() if to == d.OLD)
    row = next(r for r in table.rows if r["name"] == "example-001.test")
    assert row["mx"] == "10 mail.example-001.test"
    assert row["mx_addresses"] == "mail.example-001.test: 192.0.2.10"


def test_refused_names_are_errors_not_hangs(dns_world: tuple[World, str]) -> None:
    _, nameserver = dns_world
    table = d.resolve_all(
        [d.HostedName("example.org", "domain", "example.org")], nameserver=nameserver, timeout=2, total_timeout=10
    )
    assert table.rows[0]["verdict"] == d.ERROR  # dnsmasq refuses names it is not local for
    assert "REFUSED" in table.rows[0]["detail"]


def test_unreachable_nameserver_gives_timeouts_within_the_bound() -> None:
    silent = SilentServer()
    try:
        names = [d.HostedName(f"d{i}.test", "domain", f"d{i}.test") for i in range(10)]
        table = d.resolve_all(
            names, nameserver=f"127.0.0.1:{silent.port}", timeout=0.4, total_timeout=5, concurrency=16
        )
    finally:
        silent.close()
    assert [r["verdict"] for r in table.rows] == [d.TIMEOUT] * 10
    assert all(r["mail_to"] == d.UNKNOWN for r in table.rows)
    # Each name timed out on its own query bound; none was cut by the total bound of 5 s, which one
    # query after the other (20 x 0.4 s = 8 s) would have reached.
    assert table.cut_by_total == 0
    assert not any("dns_total_timeout" in r["detail"] for r in table.rows)


def test_queries_run_side_by_side_up_to_the_concurrency() -> None:
    slow = SlowServer(delay=0.3)
    slow.start()
    try:
        names = [d.HostedName(f"d{i}.test", "domain", f"d{i}.test") for i in range(12)]
        ticks: list[tuple[int, str]] = []

        def progress(done: int, _text: str) -> None:
            ticks.append((done, threading.current_thread().name))

        table = d.resolve_all(
            names,
            nameserver=f"127.0.0.1:{slow.port}",
            timeout=3,
            total_timeout=30,
            concurrency=4,
            progress=progress,
        )
    finally:
        slow.close()
    assert [r["verdict"] for r in table.rows] == [d.NXDOMAIN] * 12 and table.cut_by_total == 0
    assert slow.received >= 12
    assert 1 < slow.max_in_flight <= 4  # parallel, and never more than the concurrency allows
    # The bar rises name by name, in the caller's thread (where a notebook's widgets live).
    counts = [n for n, _ in ticks]
    assert counts == sorted(counts) and counts[-1] == 12 and any(0 < n < 12 for n in counts)
    assert {thread for _, thread in ticks} == {threading.current_thread().name}


def test_total_bound_cuts_a_slow_table_short() -> None:
    silent = SilentServer()
    try:
        names = [d.HostedName(f"d{i}.test", "domain", f"d{i}.test") for i in range(40)]
        table = d.resolve_all(names, nameserver=f"127.0.0.1:{silent.port}", timeout=5, total_timeout=1, concurrency=4)
    finally:
        silent.close()
    # Every query would have waited its 5 s: all 40 names ended by the total bound of 1 s instead.
    assert table.cut_by_total == 40
    assert all(r["verdict"] == d.TIMEOUT and "dns_total_timeout" in r["detail"] for r in table.rows)
    assert "unfinished" in table.summary()


def test_concurrency_is_bounded() -> None:
    server = SlowServer(delay=0.1)
    server.start()
    try:
        names = [d.HostedName(f"d{i}.test", "domain", f"d{i}.test") for i in range(24)]
        table = d.resolve_all(names, nameserver=f"127.0.0.1:{server.port}", timeout=3, total_timeout=30, concurrency=4)
    finally:
        server.close()
    assert [r["verdict"] for r in table.rows] == [d.NXDOMAIN] * 24
    assert server.received == 48  # MX and A for each name
    assert 2 <= server.max_in_flight <= 4


def test_after_the_restore_the_names_come_from_the_target(world: World) -> None:
    """Once the journal shows mysql_restore applied and the target's database answers, it is the source."""
    ctx = open_run(**world.runbook_params(), apply=True, resume=False, options={})
    login = mysql_creds.target_admin(ctx)
    with ctx.mysql.connect(login.user, login.password, "ispcp") as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO domain (domain_id, domain_name, domain_uid, domain_gid, domain_admin_id, "
            "domain_status) VALUES (77, 'restored-only.test', 2077, 2077, 3, 'ok')"
        )

    @action("mysql_restore")
    def pretend_restore(ctx, result) -> None:  # only its journal record matters here
        result.noop_reason = "test: the restore is pretended"

    pretend_restore(ctx)
    from ispcp_lib.core.result import Result

    result = Result("mail_guard")
    names, source = mail_guard._hosted_names(ctx, result)
    assert [n.name for n in names] == ["restored-only.test"]
    assert "restored database" in source
