"""The DNS table's pure parts: classifying raw answers, parsing the nameserver, the sandbox's record plan."""

from __future__ import annotations

import pytest

from ispcp_lib.facts import dns_table as d
from ispcp_lib.facts.dns_table import HostedName, Lookup
from ispcp_lib.sandbox.dns import plan_records

OLD, NEW = "192.0.2.10", "192.0.2.20"
NODATA = Lookup("nodata")


def classify(mx: Lookup, a: Lookup = NODATA, hosts: dict[str, Lookup] | None = None) -> dict[str, str]:
    return d.classify(mx, a, hosts or {}, OLD, NEW)


@pytest.mark.parametrize(
    ("ips", "expected"),
    [
        ([OLD], d.OLD),
        ([NEW], d.NEW),
        (["203.0.113.5"], d.ELSEWHERE),
        ([], d.NOWHERE),
        ([NEW, OLD], d.OLD),  # any address at the old server still draws mail there
    ],
)
def test_ip_class(ips: list[str], expected: str) -> None:
    assert d.ip_class(ips, OLD, NEW) == expected


def test_mx_to_old_new_and_elsewhere() -> None:
    for ip, verdict in ((OLD, d.OLD), (NEW, d.NEW), ("198.51.100.7", d.ELSEWHERE)):
        out = classify(Lookup("ok", ((10, "mx.x.test"),)), Lookup("ok", (NEW,)), {"mx.x.test": Lookup("ok", (ip,))})
        assert (out["verdict"], out["mail_to"]) == (verdict, verdict)


def test_only_the_best_preference_decides_but_backups_are_mentioned() -> None:
    out = classify(
        Lookup("ok", ((20, "backup.test"), (10, "primary.test"))),
        Lookup("nodata"),
        {"primary.test": Lookup("ok", (NEW,)), "backup.test": Lookup("ok", (OLD,))},
    )
    assert out["verdict"] == d.NEW
    assert "old IP" in out["detail"]


def test_no_mx_falls_back_to_a_record() -> None:
    out = classify(Lookup("nodata"), Lookup("ok", (OLD,)))
    assert (out["verdict"], out["mail_to"]) == (d.NO_MX, d.OLD)
    out = classify(Lookup("nodata"), Lookup("ok", (NEW,)))
    assert (out["verdict"], out["mail_to"]) == (d.NO_MX, d.NEW)
    out = classify(Lookup("nodata"), Lookup("nodata"))
    assert (out["verdict"], out["mail_to"]) == (d.NO_ADDRESS, d.NOWHERE)


def test_nxdomain_timeout_error() -> None:
    assert classify(Lookup("nxdomain"))["verdict"] == d.NXDOMAIN
    out = classify(Lookup("timeout", detail="no answer within 2 s"))
    assert (out["verdict"], out["mail_to"]) == (d.TIMEOUT, d.UNKNOWN)
    assert "2 s" in out["detail"]
    assert classify(Lookup("error", detail="REFUSED"))["verdict"] == d.ERROR


def test_mx_host_without_address_and_null_mx() -> None:
    out = classify(Lookup("ok", ((10, "gone.test"),)), hosts={"gone.test": Lookup("nxdomain")})
    assert (out["verdict"], out["mail_to"]) == (d.NO_ADDRESS, d.NOWHERE)
    assert "gone.test" in out["detail"]
    out = classify(Lookup("ok", ((10, "slow.test"),)), hosts={"slow.test": Lookup("timeout")})
    assert out["verdict"] == d.TIMEOUT
    assert classify(Lookup("ok", ((0, "."),)))["detail"].startswith("null MX")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_nameserver(text: str | None, expected: tuple[str, int] | None) -> None:
    assert d.parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["ns1.example.com", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:x", "[::1]x"])
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver|port|address"):
        d.parse_nameserver(text)


def test_sandbox_plan_covers_every_verdict_and_never_nxdomains_a_parent() -> None:
    names = [HostedName(f"d{i}.test", "domain", f"d{i}.test") for i in range(8)]
    names.append(HostedName("www.d7.test", "subdomain", "d7.test"))  # makes d7.test exist in DNS
    plan = plan_records(names, OLD, NEW)
    verdicts = {v for v, _ in plan.expected.values()}
    assert {d.OLD, d.NEW, d.ELSEWHERE, d.NO_MX} <= verdicts
    assert plan.expected["d7.test"][0] != d.NXDOMAIN  # index 7 would be NXDOMAIN, but it has a child
    assert plan.expected["d4.test"] == (d.NO_MX, d.OLD)
    assert "mx-host=d0.test,mail.d0.test,10" in plan.options
    # Every MX target has an address record in the plan.
    hosts = {o.split(",")[1] for o in plan.options if o.startswith("mx-host=")}
    addressed = {o.split("=", 1)[1].split(",")[0] for o in plan.options if o.startswith("host-record=")}
    assert hosts <= addressed


def test_table_summary_counts_mail_to_old() -> None:
    rows = [
        {
            "name": "a.test",
            "kind": "domain",
            "verdict": d.OLD,
            "mail_to": d.OLD,
            "mx": "",
            "mx_addresses": "",
            "a": "",
            "detail": "",
        },
        {
            "name": "b.test",
            "kind": "alias",
            "verdict": d.NO_MX,
            "mail_to": d.OLD,
            "mx": "",
            "mx_addresses": "",
            "a": "",
            "detail": "",
        },
        {
            "name": "c.test",
            "kind": "alias",
            "verdict": d.NEW,
            "mail_to": d.NEW,
            "mx": "",
            "mx_addresses": "",
            "a": "",
            "detail": "",
        },
    ]
    table = d.DnsTable(rows, 0.1, 6, "127.0.0.1:53", OLD, NEW)
    assert table.mail_to_old == ["a.test", "b.test"]
    assert table.summary().startswith("2 of 3 hosted names still send mail to the old server")
    assert list(table.frame().columns)[:4] == ["name", "kind", "mail goes to", "verdict"]
