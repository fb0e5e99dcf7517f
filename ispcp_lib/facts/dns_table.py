"""The DNS table: where each hosted name's mail (MX, else the A fallback) and web (A) really go.

Names come from ispCP's database (domains, aliases, subdomains, alias subdomains). Lookups run
concurrently with dnspython on an asyncio loop in a worker thread (a notebook kernel already runs
a loop in its main thread), bounded by a semaphore, with a lifetime per query and a bound on the
whole table: whatever is unfinished when that bound is hit is shown as a timeout, never waited for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from ispcp_lib.ispcp import queries
from ispcp_lib.mysql import dialect

# The verdicts of the table (the mail_guard row of the README's step table).
OLD = "old IP"
NEW = "new IP"
ELSEWHERE = "elsewhere"
NO_MX = "no MX (A fallback)"
NXDOMAIN = "NXDOMAIN"
TIMEOUT = "timeout"
ERROR = "error"  # the server failed or refused (SERVFAIL, REFUSED), or the name is invalid
NO_ADDRESS = "no address"  # MX hosts without A records, a null MX, or neither MX nor A
NOWHERE = "nowhere"
UNKNOWN = "unknown"

# How often the caller hears how many names are resolved (its progress bar).
PROGRESS_EVERY_S = 0.25

VERDICTS = (OLD, NEW, ELSEWHERE, NO_MX, NXDOMAIN, TIMEOUT, ERROR, NO_ADDRESS)


@dataclass(frozen=True)
class HostedName:
    name: str
    kind: str  # domain | alias | subdomain | alias subdomain
    domain: str  # the customer domain (or alias) it belongs to


@dataclass(frozen=True)
class Lookup:
    """The outcome of one query. status: ok | nodata | nxdomain | timeout | error."""

    status: str
    values: tuple[Any, ...] = ()  # MX: (preference, host) pairs; A: address strings
    detail: str = ""


# --- collecting names -------------------------------------------------------------------------------


def hosted_names(conn: Any) -> list[HostedName]:
    """Every name ispCP hosts, in database order, lower-cased and without duplicates.

    `conn` is a DB-API connection with the ispCP database selected. A table missing in an older
    schema (subdomain_alias came with 1.0.x) is skipped; the domain table must exist.
    """
    out: list[HostedName] = []
    seen: set[str] = set()
    for kind, query in queries.HOSTED_NAMES:
        with conn.cursor() as cur:
            try:
                dialect.execute(cur, query)
            except Exception:
                if kind == "domain":
                    raise
                continue
            rows = cur.fetchall()
        for name, domain in rows:
            fqdn = normalise(name)
            if fqdn and fqdn not in seen:
                seen.add(fqdn)
                out.append(HostedName(fqdn, kind, normalise(domain) or fqdn))
    return out


def normalise(name: Any) -> str:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name or "").strip().rstrip(".").lower()


# --- classifying (pure) -----------------------------------------------------------------------------


def ip_class(ips: Iterable[str], old_ip: str | None, new_ip: str | None) -> str:
    """OLD if any address is the old server's, else NEW, else ELSEWHERE; NOWHERE for no address."""
    ips = set(ips)
    if not ips:
        return NOWHERE
    if old_ip and old_ip in ips:
        return OLD
    if new_ip and new_ip in ips:
        return NEW
    return ELSEWHERE


def classify(
    mx: Lookup, a: Lookup, mx_hosts: dict[str, Lookup], old_ip: str | None, new_ip: str | None
) -> dict[str, str]:
    """Verdict, where mail goes (mail_to) and a detail text for one name, from its raw answers.

    Mail follows the MX records of the best (lowest) preference; only without any MX record does
    a sender fall back to the name's own A record (RFC 5321, 5.1).
    """
    if mx.status == "nxdomain":
        return {"verdict": NXDOMAIN, "mail_to": NOWHERE, "detail": "the name does not exist in DNS"}
    if mx.status in ("timeout", "error"):
        verdict = TIMEOUT if mx.status == "timeout" else ERROR
        return {"verdict": verdict, "mail_to": UNKNOWN, "detail": f"MX query: {mx.detail}".strip()}
    if mx.status == "nodata" or not mx.values:
        if a.status == "ok":
            target = ip_class(a.values, old_ip, new_ip)
            return {
                "verdict": NO_MX,
                "mail_to": target,
                "detail": "no MX record: senders deliver to the name's A record",
            }
        if a.status in ("timeout", "error"):
            return {"verdict": NO_MX, "mail_to": UNKNOWN, "detail": f"no MX record; A query: {a.detail}"}
        return {"verdict": NO_ADDRESS, "mail_to": NOWHERE, "detail": "neither MX nor A record"}
    records = sorted(mx.values)
    if [h for _, h in records] in (["."], [""]):
        return {"verdict": NO_ADDRESS, "mail_to": NOWHERE, "detail": "null MX: the domain accepts no mail"}
    best = records[0][0]
    classes: list[str] = []
    backup: set[str] = set()
    unresolved: list[str] = []
    for pref, host in records:
        look = mx_hosts.get(host, Lookup("error", detail="not looked up"))
        if look.status != "ok":
            unresolved.append(f"{host}: {look.status}")
            if pref == best and look.status == "timeout":
                classes.append(TIMEOUT)
            continue
        cls = ip_class(look.values, old_ip, new_ip)
        if pref == best:
            classes.append(cls)
        else:
            backup.add(cls)
    detail = []
    for verdict in (OLD, NEW, ELSEWHERE):
        if verdict in classes:
            others = (set(classes) | backup) - {verdict, TIMEOUT}
            if others:
                detail.append("other MX hosts: " + ", ".join(sorted(others)))
            if unresolved:
                detail.append("unresolved MX hosts: " + "; ".join(unresolved))
            return {"verdict": verdict, "mail_to": verdict, "detail": "; ".join(detail)}
    if TIMEOUT in classes:
        return {"verdict": TIMEOUT, "mail_to": UNKNOWN, "detail": "; ".join(unresolved)}
    return {"verdict": NO_ADDRESS, "mail_to": NOWHERE, "detail": "MX hosts without address: " + "; ".join(unresolved)}


# --- resolving --------------------------------------------------------------------------------------


def parse_nameserver(text: str | None) -> tuple[str, int] | None:
    """'127.0.0.1:5353', '127.0.0.1', '[::1]:53' or '::1' -> (address, port); None = system resolver.

    Raises ValueError with a readable reason for anything else.
    """
    if text is None or str(text).strip() == "":
        return None
    text = str(text).strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [address]:port")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: the nameserver must be an IP address (optionally with :port)") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: {text!r} is not a port number")
    return int(text)


@dataclass
class DnsTable:
    rows: list[dict[str, str]]
    elapsed_s: float
    queries: int
    nameserver: str
    old_ip: str | None
    new_ip: str | None
    cut_by_total: int = 0  # names not finished within the total bound
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = dict(Counter(r["verdict"] for r in self.rows))

    @property
    def mail_to_old(self) -> list[str]:
        return [r["name"] for r in self.rows if r["mail_to"] == OLD]

    def summary(self) -> str:
        parts = [f"{self.counts.get(v, 0)} {v}" for v in VERDICTS if self.counts.get(v)]
        text = (
            f"{len(self.mail_to_old)} of {len(self.rows)} hosted names still send mail to the old server "
            f"({self.old_ip or 'old IP unknown'}); verdicts: {', '.join(parts) or 'none'}; "
            f"{self.queries} queries to {self.nameserver} in {self.elapsed_s:.1f} s"
        )
        if self.cut_by_total:
            text += f"; {self.cut_by_total} names unfinished when the total time bound was reached"
        return text

    def frame(self, rows: Sequence[dict[str, str]] | None = None) -> Any:
        import pandas as pd

        columns = ["name", "kind", "mail goes to", "verdict", "MX", "MX addresses", "A", "detail"]
        data = [
            {
                "name": r["name"],
                "kind": r["kind"],
                "mail goes to": r["mail_to"],
                "verdict": r["verdict"],
                "MX": r["mx"],
                "MX addresses": r["mx_addresses"],
                "A": r["a"],
                "detail": r["detail"],
            }
            for r in (self.rows if rows is None else rows)
        ]
        return pd.DataFrame(data, columns=columns)

    def counts_frame(self) -> Any:
        import pandas as pd

        mail = Counter(r["mail_to"] for r in self.rows)
        return pd.DataFrame(
            [{"verdict": v, "names": self.counts.get(v, 0)} for v in VERDICTS]
            + [{"verdict": f"mail goes to: {k}", "names": n} for k, n in sorted(mail.items())]
        )


def resolve_all(
    names: Sequence[HostedName],
    *,
    nameserver: str | None = None,
    timeout: float = 3.0,
    total_timeout: float = 120.0,
    concurrency: int = 32,
    old_ip: str | None = None,
    new_ip: str | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> DnsTable:
    """Resolve MX, the MX hosts' A records and each name's A record; classify every name.

    progress(names resolved, text) is called from the caller's thread (where a notebook's widgets
    live) a few times a second while the lookups run, and once at the end.
    Returns within about total_timeout (+ one query lifetime for cancellation), whatever the
    nameserver does. Raises ValueError for an unusable nameserver parameter and
    dns.resolver.NoResolverConfiguration when the system has no resolver configured.
    """
    server = parse_nameserver(nameserver)
    resolver = dns.asyncresolver.Resolver(configure=server is None)
    if server is not None:
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.timeout = float(timeout)
    resolver.lifetime = float(timeout)
    resolver.cache = None  # each table shows what DNS says now
    label = (
        f"{server[0]}:{server[1]}"
        if server
        else "the system resolver (" + ", ".join(str(n) for n in resolver.nameservers) + ")"
    )
    started = time.monotonic()
    box: dict[str, Any] = {}
    resolved = [0]  # names finished, counted by the worker's loop

    def worker() -> None:
        try:
            box["value"] = asyncio.run(
                _resolve(
                    resolver,
                    list(names),
                    float(timeout),
                    float(total_timeout),
                    max(1, int(concurrency)),
                    old_ip,
                    new_ip,
                    resolved,
                )
            )
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=worker, name="dns-table", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(PROGRESS_EVERY_S)
        if progress is not None:
            progress(resolved[0], "")
    if "error" in box:
        raise box["error"]
    rows, queries, cut = box["value"]
    return DnsTable(rows, time.monotonic() - started, queries, label, old_ip, new_ip, cut)


async def _resolve(
    resolver: dns.asyncresolver.Resolver,
    names: list[HostedName],
    timeout: float,
    total: float,
    concurrency: int,
    old_ip: str | None,
    new_ip: str | None,
    resolved: list[int],
) -> tuple[list[dict[str, str]], int, int]:
    sem = asyncio.Semaphore(concurrency)
    host_lookups: dict[str, asyncio.Task[Lookup]] = {}
    queries = 0

    async def query(name: str, rdtype: str) -> Lookup:
        nonlocal queries
        async with sem:
            queries += 1
            try:
                answer = await resolver.resolve(name, rdtype, lifetime=timeout, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN:
                return Lookup("nxdomain")
            except dns.exception.Timeout:
                return Lookup("timeout", detail=f"no answer within {timeout:g} s")
            except dns.resolver.NoNameservers as exc:
                return Lookup("error", detail=_short(exc))
            except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
                return Lookup("error", detail=f"{type(exc).__name__}: {_short(exc)}")
        if answer.rrset is None:
            return Lookup("nodata")
        if rdtype == "MX":
            return Lookup("ok", tuple((r.preference, normalise(r.exchange.to_text())) for r in answer.rrset))
        return Lookup("ok", tuple(sorted(r.address for r in answer.rrset)))

    def host_lookup(host: str) -> asyncio.Task[Lookup]:
        # Many names share MX hosts: each host is resolved once per table.
        if host not in host_lookups:
            host_lookups[host] = asyncio.ensure_future(query(host, "A"))
        return host_lookups[host]

    async def one(hn: HostedName) -> dict[str, str]:
        mx, a = await asyncio.gather(query(hn.name, "MX"), query(hn.name, "A"))
        hosts = sorted({h for _, h in mx.values if h not in (".", "")}) if mx.status == "ok" else []
        looked = await asyncio.gather(*(host_lookup(h) for h in hosts))
        mx_hosts = dict(zip(hosts, looked))
        resolved[0] += 1
        return _row(hn, mx, a, mx_hosts, classify(mx, a, mx_hosts, old_ip, new_ip))

    tasks = [asyncio.ensure_future(one(hn)) for hn in names]
    cut = 0
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=total)
        for task in pending:
            task.cancel()
        for task in host_lookups.values():
            task.cancel()
        cut = len(pending)
        await asyncio.gather(*pending, *host_lookups.values(), return_exceptions=True)
    rows = []
    for hn, task in zip(names, tasks):
        if task.cancelled() or task.exception() is not None:
            why = (
                f"not finished within dns_total_timeout ({total:g} s)"
                if task.cancelled()
                else f"{type(task.exception()).__name__}: {task.exception()}"
            )
            rows.append(
                _row(
                    hn,
                    Lookup("timeout"),
                    Lookup("timeout"),
                    {},
                    {"verdict": TIMEOUT if task.cancelled() else ERROR, "mail_to": UNKNOWN, "detail": why},
                )
            )
        else:
            rows.append(task.result())
    return rows, queries, cut


def _row(hn: HostedName, mx: Lookup, a: Lookup, mx_hosts: dict[str, Lookup], verdict: dict[str, str]) -> dict[str, str]:
    mx_text = ", ".join(f"{p} {h}" for p, h in sorted(mx.values)) if mx.status == "ok" else mx.status
    addresses = []
    for host, look in sorted(mx_hosts.items()):
        addresses.append(f"{host}: {' '.join(look.values)}" if look.status == "ok" else f"{host}: {look.status}")
    return {
        "name": hn.name,
        "kind": hn.kind,
        **verdict,
        "mx": mx_text,
        "mx_addresses": "; ".join(addresses),
        "a": " ".join(a.values) if a.status == "ok" else a.status,
    }


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 160 else text[:157] + "..."
