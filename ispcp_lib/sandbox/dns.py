"""The sandbox's DNS (test scaffolding): dnsmasq on a loopback port serving the hosted names' records.

The records are a deterministic plan over the hosted names, so tests know the right verdict for
each name: mail for some goes to the old server's IP, for some to the new one, for some to another
provider; one in ten has no MX (mail falls back to its A record, here the old IP) and one in ten
does not exist at all. Everything else under `.test` is NXDOMAIN (`--local=/test/`); dnsmasq never
forwards a query anywhere (`--no-resolv`, `--no-hosts`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.facts.dns_table import ELSEWHERE, NEW, NO_MX, NXDOMAIN, OLD, HostedName
from ispcp_lib.mysql.service import pid_alive
from ispcp_lib.sandbox.private_mysql import free_port
from ispcp_lib.sandbox.scenario import NEW_HOSTNAME, OLD_HOSTNAME, make_scenario

ELSEWHERE_MX = "mx.mail-provider.test"
ELSEWHERE_IP = "203.0.113.25"  # TEST-NET-3: another provider's mail server
STATE_FILE = "dns.json"  # in the world's workdir: lets stop_for_world work from another process
START_TIMEOUT = 15.0
# Which verdict the i-th hosted name gets (i modulo 10): every kind shows up in 10 names.
CYCLE = (OLD, NEW, ELSEWHERE, OLD, NO_MX, NEW, OLD, NXDOMAIN, NEW, OLD)

_children: dict[int, subprocess.Popen[bytes]] = {}  # started by this process: reaped when stopped


@dataclass
class ZonePlan:
    options: list[str]  # dnsmasq options (conf-file lines: mx-host=..., host-record=...)
    expected: dict[str, tuple[str, str]]  # name -> (verdict, where mail goes)


def plan_records(
    names: Sequence[HostedName], old_ip: str, new_ip: str, old_host: str = OLD_HOSTNAME, new_host: str = NEW_HOSTNAME
) -> ZonePlan:
    """dnsmasq records for the names and the verdict each name must get from the DNS table."""
    options = [
        f"host-record={old_host},{old_ip}",
        f"host-record={new_host},{new_ip}",
        f"host-record={ELSEWHERE_MX},{ELSEWHERE_IP}",
    ]
    expected: dict[str, tuple[str, str]] = {}
    all_names = {hn.name for hn in names}
    # A name with records below it exists in DNS (an "empty non-terminal"), so it cannot be NXDOMAIN.
    parents = {n.split(".", i)[-1] for n in all_names for i in range(1, n.count("."))}
    for i, hn in enumerate(names):
        verdict = CYCLE[i % len(CYCLE)]
        if verdict == NXDOMAIN and hn.name in parents:
            verdict = OLD
        name = hn.name
        if verdict in (OLD, NEW):
            ip, host = (old_ip, old_host) if verdict == OLD else (new_ip, new_host)
            if hn.kind == "domain":  # customer domains often have their own mail.<domain> name
                host = f"mail.{name}"
                options.append(f"host-record={host},{ip}")
            options.append(f"mx-host={name},{host},10")
            options.append(f"host-record={name},{ip}")
            expected[name] = (verdict, verdict)
        elif verdict == ELSEWHERE:
            options.append(f"mx-host={name},{ELSEWHERE_MX},10")
            options.append(f"host-record={name},{new_ip}")  # the web site moved, the mail is hosted elsewhere
            expected[name] = (ELSEWHERE, ELSEWHERE)
        elif verdict == NO_MX:
            options.append(f"host-record={name},{old_ip}")
            expected[name] = (NO_MX, OLD)
        else:
            expected[name] = (NXDOMAIN, "nowhere")
    return ZonePlan(options, expected)


def world_names(world: Any) -> list[HostedName]:
    """The world's hosted names in ispCP's database order (rebuilt from the world's scenario seed)."""
    m = world.manifest
    sc = make_scenario(m["scale"], m["seed"], new_ip=m["new"]["ip"])
    by_id = sc.domain_by_id()
    names = [HostedName(d.name, "domain", d.name) for d in sc.domains]
    names += [HostedName(a.name, "alias", by_id[a.domain_id].name) for a in sc.aliases]
    names += [
        HostedName(f"{s.label}.{by_id[s.domain_id].name}", "subdomain", by_id[s.domain_id].name) for s in sc.subdomains
    ]
    return names


class Dnsmasq:
    """One dnsmasq in the foreground, bound to 127.0.0.1:port, records from a conf file."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.dir = Path(workdir)
        self.port = int(port)

    @property
    def conf(self) -> Path:
        return self.dir / "dnsmasq.conf"

    @property
    def log(self) -> Path:
        return self.dir / "dnsmasq.log"

    def argv(self) -> list[str]:
        return [
            "dnsmasq",
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local=/test/",
            f"--conf-file={self.conf}",
        ]

    def start(self, options: Sequence[str], probe_name: str = NEW_HOSTNAME) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("# sandbox records (test scaffolding)\n" + "\n".join(options) + "\n")
        self.conf.chmod(0o644)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        _children[proc.pid] = proc
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if self.answers(probe_name):
                return proc.pid
            time.sleep(0.1)
        stop_pid(proc.pid, self.conf)
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        raise PreconditionFailed(
            "sandbox dnsmasq",
            f"does not answer on 127.0.0.1:{self.port}:\n{tail}",
            "read the log; is the port taken?",
            path=str(self.log),
        )

    def answers(self, name: str) -> bool:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 0.5
        try:
            resolver.resolve(name, "A")
            return True
        except dns.exception.DNSException:
            return False


def stop_pid(pid: int, conf: Path) -> None:
    """SIGTERM the dnsmasq we started (checked by its command line, never by name) and reap it."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if pid_alive(pid) and f"--conf-file={conf}".encode() in cmdline:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=10)


def start_for_world(world: Any) -> dict[str, Any]:
    """Serve the world's names; returns the runbook parameters (dns_nameserver, old_server_ip)."""
    stop_for_world(world)
    m = world.manifest
    old_ip, new_ip = m["old"]["ip"], m["new"]["ip"]
    plan = plan_records(world_names(world), old_ip, new_ip, m["old"]["hostname"], m["new"]["hostname"])
    server = Dnsmasq(Path(world.workdir) / "dns", free_port())
    pid = server.start(plan.options, m["new"]["hostname"])
    (Path(world.workdir) / STATE_FILE).write_text(
        json.dumps({"workdir": str(world.workdir), "pid": pid, "port": server.port, "conf": str(server.conf)}, indent=1)
        + "\n"
    )
    return {"dns_nameserver": f"127.0.0.1:{server.port}"}


def expected_for_world(world: Any) -> dict[str, tuple[str, str]]:
    m = world.manifest
    return plan_records(
        world_names(world), m["old"]["ip"], m["new"]["ip"], m["old"]["hostname"], m["new"]["hostname"]
    ).expected


def stop_for_world(world: Any) -> None:
    path = Path(world.workdir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if state.get("workdir") != str(world.workdir):
        return  # a clone carries its template's file: that server is not ours
    stop_pid(int(state["pid"]), Path(state["conf"]))
    path.unlink(missing_ok=True)
