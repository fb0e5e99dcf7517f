"""A rehearsal: the runbook, headless over SSH, recovers a backup into a fresh real dummy built in the lab.

    ispcp-recover lab rehearse --backup /srv/recovery/old-server --source ispcp-omega-1.0.7.tar.xz

The dummy is the release's own install with its own keys and passwords (the situation the guide starts
from); the backup stays on this machine (`backup_location: controller`). The runbook gets no answers
written for it: only the connection, the backup and the dummy's address. A backup the lab took itself
carries the plan of what the old server served (`.plan.json`), and the lab's judge then checks the
recovered server with real clients.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ispcp_lib.lab.host import NamespaceHost
from ispcp_lib.lab.ispcp_server import ServerIdentity, start_server
from ispcp_lib.lab.roles import DUMMY

PLAN_FILE = ".plan.json"


@dataclass
class Rehearsal:
    host: NamespaceHost
    exit_codes: list[int]
    reports: list[Path]
    score: tuple[int, int] | None = None
    judge_text: str = ""


def lab_params(host: NamespaceHost, backup: Path) -> dict[str, Any]:
    """The runbook's parameters for a lab dummy: what an operator writes for a Squeeze-style server."""
    ssh = host.state["ssh"]["modern"]
    return {
        "target": {
            "connection": "ssh",
            "host": ssh["host"],
            "port": ssh["port"],
            "user": ssh["user"],
            "identity_file": ssh["identity_file"],
            "known_hosts": ssh["known_hosts"],
        },
        "backup_root": str(backup),
        "backup_location": "controller",
        "mysql": {"service": "sysv", "socket": "/var/run/mysqld/mysqld.sock"},
        # The lab's servers live on loopback addresses, which ispcp_conf refuses to guess.
        "new_server_ip": host.address,
    }


def rehearse(
    tarball: Path,
    backup: Path,
    report_dir: Path,
    *,
    name: str = "rehearsal",
    identity: ServerIdentity = DUMMY,
    runs: int = 1,
) -> Rehearsal:
    """Start a dummy, run the runbook with apply `runs` times (a second run must be a no-op), judge.

    The dummy keeps running for the caller to look at or stop (`host.stop()`).
    """
    from ispcp_lib.runbook.cli import run_runbook

    host = start_server(tarball, identity, name=name, detach=True)
    try:
        params = lab_params(host, backup)
        done = Rehearsal(host, [], [])
        for _ in range(runs):
            code, html = run_runbook({**params, "apply": True}, report_dir, log_output=False)
            done.exit_codes.append(code)
            done.reports.append(html)
        plan_file = backup / PLAN_FILE
        if plan_file.is_file():
            done.score, done.judge_text = judge_plan(host, plan_file)
        return done
    except BaseException:
        host.stop()
        raise


def judge_plan(host: NamespaceHost, plan_file: Path) -> tuple[tuple[int, int], str]:
    from ispcp_lib.lab.judge import judge, report
    from ispcp_lib.lab.provision import Plan

    out = io.StringIO()
    score = report(judge(host, Plan.from_json(plan_file.read_text())), out)
    return score, out.getvalue()


def summary_of(report_html: Path) -> dict[str, Any]:
    """The run's summary JSON, written beside its report."""
    return json.loads(report_html.with_suffix(".json").read_text())
