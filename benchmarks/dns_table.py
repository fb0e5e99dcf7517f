"""The DNS table at the large scale (1,000 domains, 200 aliases, 5,000 subdomains) against a local dnsmasq.

Run: .venv/bin/python benchmarks/dns_table.py [--scale large] [--concurrency 32] [--sample 300]

The names are those of the sandbox scenario (no world is built); dnsmasq serves the sandbox's record
plan for them on a free loopback port. Measured in the same run:
  table       resolve_all() over every name (MX, the MX hosts' A, the name's A), as the step runs it
  sequential  the same lookups one after another with dnspython's plain resolver, on --sample names,
              extrapolated to all names (what a simple loop would cost)
The goal is the table in under 30 s; every verdict is also checked against the served plan.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

import dns.exception  # noqa: E402
import dns.resolver  # noqa: E402

from ispcp_lib.facts import dns_table as d  # noqa: E402
from ispcp_lib.sandbox import dns as sdns  # noqa: E402
from ispcp_lib.sandbox.private_mysql import free_port  # noqa: E402
from ispcp_lib.sandbox.scenario import NEW_IP, OLD_IP, make_scenario  # noqa: E402

GOAL_S = 30.0


def scenario_names(scale: str) -> list[d.HostedName]:
    sc = make_scenario(scale, seed=1)
    by_id = sc.domain_by_id()
    names = [d.HostedName(x.name, "domain", x.name) for x in sc.domains]
    names += [d.HostedName(a.name, "alias", by_id[a.domain_id].name) for a in sc.aliases]
    names += [
        d.HostedName(f"{s.label}.{by_id[s.domain_id].name}", "subdomain", by_id[s.domain_id].name)
        for s in sc.subdomains
    ]
    return names


def sequential(names: list[d.HostedName], port: int) -> tuple[float, int]:
    """The naive loop: one query at a time, no shared MX-host lookups. Returns (seconds, queries)."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port, r.lifetime, r.cache = ["127.0.0.1"], port, 3.0, None
    queries = 0
    started = time.monotonic()
    for hn in names:
        for rdtype in ("MX", "A"):
            queries += 1
            try:
                answer = r.resolve(hn.name, rdtype, raise_on_no_answer=False)
            except dns.exception.DNSException:
                continue
            if rdtype == "MX" and answer.rrset is not None:
                for rec in answer.rrset:
                    queries += 1
                    try:
                        r.resolve(rec.exchange, "A", raise_on_no_answer=False)
                    except dns.exception.DNSException:
                        pass
    return time.monotonic() - started, queries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="large")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sample", type=int, default=300, help="names for the sequential baseline")
    args = ap.parse_args()

    names = scenario_names(args.scale)
    plan = sdns.plan_records(names, OLD_IP, NEW_IP)
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        server = sdns.Dnsmasq(Path(tmp), free_port())
        t = time.monotonic()
        pid = server.start(plan.options)
        start_s = time.monotonic() - t
        try:
            table = d.resolve_all(
                names,
                nameserver=f"127.0.0.1:{server.port}",
                timeout=3,
                total_timeout=120,
                concurrency=args.concurrency,
                old_ip=OLD_IP,
                new_ip=NEW_IP,
            )
            sample = names[:: max(1, len(names) // args.sample)][: args.sample]
            seq_s, seq_q = sequential(sample, server.port)
        finally:
            sdns.stop_pid(pid, server.conf)

    wrong = [r["name"] for r in table.rows if (r["verdict"], r["mail_to"]) != plan.expected[r["name"]]]
    per_name_seq = seq_s / len(sample)
    seq_all = per_name_seq * len(names)
    print(
        f"scale {args.scale}: {len(names)} hosted names, {len(plan.options)} dnsmasq records "
        f"(dnsmasq up in {start_s:.2f} s)"
    )
    print(
        f"table       {table.elapsed_s:8.2f} s  {table.queries} queries, {table.queries / table.elapsed_s:7.0f} q/s,"
        f" concurrency {args.concurrency}"
    )
    print(f"sequential  {seq_all:8.2f} s  (extrapolated from {len(sample)} names: {seq_q} queries in {seq_s:.2f} s)")
    print(
        f"ratio table/sequential {table.elapsed_s / seq_all:.2f}; table/goal {table.elapsed_s / GOAL_S:.2f} "
        f"(goal < {GOAL_S:.0f} s: {'met' if table.elapsed_s < GOAL_S else 'MISSED'})"
    )
    print(
        f"verdicts: {table.counts}; mail to the old IP: {len(table.mail_to_old)}; "
        f"wrong verdicts: {len(wrong)}{' ' + str(wrong[:5]) if wrong else ''}"
    )
    return 0 if table.elapsed_s < GOAL_S and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
