"""Judge a lab server against the plan of what it served: real clients, from outside, `N/M checks`.

Checks (issue 15, part 4): every domain, subdomain and alias answers HTTP with its old page (Host
header); every mailbox logs in over IMAP with its old password and holds its old mail; mail sent over
SMTP is delivered; each FTP account logs in with its old password; Bind answers for every zone with the
server's address; each customer database logs in with its old SQL password; and the engine still works
(a mailbox added GUI-style is created and logs in).

    python -m ispcp_lib.lab.judge --state-dir <lab server state dir> --plan plan.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ispcp_lib.ispcp.crypto import encrypt_db_password
from ispcp_lib.lab.host import NamespaceHost
from ispcp_lib.lab.provision import Plan, db_keys, in_netns, q, send_request, sql, wait_engine


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def judge(host: NamespaceHost, plan: Plan, address: str | None = None, engine: bool = True) -> list[Check]:
    addr = address or host.address
    checks: list[Check] = []
    ops: list[dict] = []
    labels: list[tuple[str, object]] = []

    def add(label: str, expect: object, op: str, **args: object) -> None:
        ops.append({"op": op, "args": args})
        labels.append((label, expect))

    for name, marker in plan.pages.items():
        add(f"http {name}", marker, "http_get", address=addr, host=name)
    for m in plan.mailboxes:
        add(
            f"imap {m.address}",
            None,
            "imap_check",
            address=addr,
            user=m.address,
            password=m.password,
            subject=plan.mail_subjects.get(m.address),
        )
    for f in plan.ftp:
        add(f"ftp {f.userid}", None, "ftp_login", address=addr, user=f.userid, password=f.password)
    for d in [*plan.domains, *plan.aliases]:
        add(f"dns {d}", addr, "dns_query", server=addr, name=d)
    for sub in plan.subdomains:
        add(f"dns {sub}", addr, "dns_query", server=addr, name=sub)
    for c in plan.databases:
        add(
            f"mysql {c.user}@{c.name}",
            c.rows,
            "mysql_login",
            address="127.0.0.1",
            user=c.user,
            password=c.password,
            database=c.name,
            query="SELECT COUNT(*) FROM items",
        )
    results = in_netns(host, ops)
    for (label, expect), res in zip(labels, results):
        ok = bool(res.get("ok"))
        detail = res.get("error", "")
        if ok and label.startswith("http"):
            ok = res.get("status") == 200 and str(expect) in res.get("body", "")
            detail = f"HTTP {res.get('status')}" + ("" if ok else f": {res.get('body', '')[:120]!r}")
        elif ok and label.startswith("dns"):
            ok = any(a == expect for a in res.get("answers", []))
            detail = ",".join(res.get("answers", []))
        elif ok and label.startswith("mysql"):
            ok = res.get("rows") == [[expect]]
            detail = str(res.get("rows"))
        elif not ok and label.startswith("imap") and "count" in res:
            detail = f"logged in, {res['count']} messages, old mail missing"
        checks.append(Check(label, ok, str(detail)[:200]))

    # SMTP delivery: a new message to the first mailbox must arrive in its INBOX.
    target = plan.mailboxes[0]
    subject = f"judge {uuid.uuid4().hex[:8]}"
    sent = in_netns(
        host,
        [
            {
                "op": "smtp_send",
                "args": {
                    "address": addr,
                    "sender": f"judge@{plan.domains[-1]}",
                    "to": target.address,
                    "subject": subject,
                    "body": "hi\n",
                },
            }
        ],
    )[0]
    arrived = False
    for _ in range(40):
        res = in_netns(
            host,
            [
                {
                    "op": "imap_check",
                    "args": {"address": addr, "user": target.address, "password": target.password, "subject": subject},
                }
            ],
        )[0]
        if res.get("ok"):
            arrived = True
            break
        time.sleep(0.5)
    checks.append(
        Check(
            f"smtp delivery to {target.address}", bool(sent.get("ok")) and arrived, "" if arrived else str(sent)[:200]
        )
    )

    if engine:
        checks.append(_engine_adds_mailbox(host, plan, addr))
    return checks


def _engine_adds_mailbox(host: NamespaceHost, plan: Plan, addr: str) -> Check:
    """A mailbox added GUI-style (row 'toadd' + send_request) is built by the engine and logs in over IMAP."""
    d = plan.domains[-1]
    local = f"judge{uuid.uuid4().hex[:6]}"
    password = "JudgePw" + uuid.uuid4().hex[:6]
    key, iv = db_keys(host)
    enc = encrypt_db_password(password, key, iv, item="mail_pass")
    dom_id = sql(host, f"SELECT domain_id FROM domain WHERE domain_name={q(d)};")[0][0]
    sql(
        host,
        "INSERT INTO mail_users (mail_acc, mail_pass, mail_forward, domain_id, mail_type, sub_id, status, "
        f"mail_auto_respond, mail_auto_respond_text, mail_addr) VALUES ({q(local)}, {q(enc)}, '_no_', {dom_id}, "
        f"'normal_mail', 0, 'toadd', 0, NULL, {q(local + '@' + d)});",
    )
    try:
        send_request(host)
        wait_engine(host, timeout=120)
    except Exception as exc:  # the engine not finishing is this check failing, not the judge crashing
        return Check(f"engine adds mailbox {local}@{d}", False, str(exc)[:200])
    res = in_netns(
        host, [{"op": "imap_check", "args": {"address": addr, "user": f"{local}@{d}", "password": password}}]
    )[0]
    return Check(f"engine adds mailbox {local}@{d}", bool(res.get("ok")), res.get("error", ""))


def report(checks: list[Check], out=sys.stdout) -> tuple[int, int]:
    passed = sum(c.ok for c in checks)
    for c in checks:
        print(
            f"{'PASS' if c.ok else 'FAIL'}  {c.name}" + (f"  ({c.detail})" if c.detail and not c.ok else ""), file=out
        )
    print(f"{passed}/{len(checks)} checks", file=out)
    return passed, len(checks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-dir", required=True, type=Path, help="the lab server's state directory")
    ap.add_argument("--plan", required=True, type=Path, help="plan.json written when the server was provisioned")
    ap.add_argument("--address", help="the address the server now serves on (default: the lab server's)")
    ap.add_argument("--no-engine", action="store_true", help="skip the check that changes the server")
    args = ap.parse_args(argv)
    host = NamespaceHost.attach(args.state_dir)
    plan = Plan.from_json(args.plan.read_text())
    passed, total = report(judge(host, plan, args.address, engine=not args.no_engine))
    print(json.dumps({"passed": passed, "total": total}), file=sys.stderr)
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
