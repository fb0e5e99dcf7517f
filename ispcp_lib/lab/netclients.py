"""Real network clients run inside a lab server's network namespace (HTTP, SMTP, IMAP, FTP, DNS, MySQL).

Run as `nsenter --net=/proc/<holder>/ns/net python -m ispcp_lib.lab.netclients` with a JSON list of
operations on stdin; prints one JSON result per operation. Only the network namespace changes, so the
clients are this machine's Python libraries talking to the server's daemons on its loopback addresses,
as a client on the network would (FTP passive data connections included).
"""

from __future__ import annotations

import ftplib
import http.client
import imaplib
import json
import smtplib
import socket
import sys
from email.message import EmailMessage
from typing import Any


def send_request(host: str = "127.0.0.1", port: int = 9876, version: str = "1.0.7 OMEGA") -> dict[str, Any]:
    """The GUI's send_request(): greeting, `helo  <version>`, `execute query`, `bye` (CRLF)."""
    lines = []
    with socket.create_connection((host, port), timeout=30) as s:
        f = s.makefile("rwb")

        def read() -> str:
            line = f.readline().decode(errors="replace").strip()
            lines.append(line)
            return line

        read()
        for cmd in (f"helo  {version}", "execute query", "bye"):
            f.write(cmd.encode() + b"\r\n")
            f.flush()
            read()
    ok = all(line[:3] in ("250", "") or line.startswith("2") for line in lines if line)
    return {"ok": ok, "lines": lines}


def http_get(address: str, host: str, path: str = "/", port: int = 80) -> dict[str, Any]:
    conn = http.client.HTTPConnection(address, port, timeout=20)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read(200_000).decode(errors="replace")
    return {"ok": True, "status": resp.status, "body": body}


def smtp_send(address: str, sender: str, to: str, subject: str, body: str, port: int = 25) -> dict[str, Any]:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    with smtplib.SMTP(address, port, timeout=30) as smtp:
        banner = smtp.ehlo()[1].decode(errors="replace")
        refused = smtp.send_message(msg)
    return {"ok": not refused, "banner": banner, "refused": {k: str(v) for k, v in refused.items()}}


def imap_check(address: str, user: str, password: str, subject: str | None = None, port: int = 143) -> dict[str, Any]:
    imap = imaplib.IMAP4(address, port, timeout=20)
    try:
        imap.login(user, password)
        typ, data = imap.select("INBOX", readonly=True)
        count = int(data[0] or 0)
        subjects: list[str] = []
        if count:
            typ, fetched = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            for part in fetched:
                if isinstance(part, tuple):
                    subjects.append(part[1].decode(errors="replace").replace("Subject:", "").strip())
        imap.logout()
    except imaplib.IMAP4.error as exc:
        return {"ok": False, "error": str(exc)}
    found = subject is None or any(subject in s for s in subjects)
    return {"ok": found, "count": count, "subjects": subjects}


def ftp_login(address: str, user: str, password: str, port: int = 21) -> dict[str, Any]:
    try:
        with ftplib.FTP() as ftp:
            ftp.connect(address, port, timeout=20)
            ftp.login(user, password)
            names = ftp.nlst()
    except ftplib.all_errors as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "names": names}


def dns_query(server: str, name: str, rdtype: str = "A") -> dict[str, Any]:
    import dns.message
    import dns.query
    import dns.rcode

    q = dns.message.make_query(name, rdtype)
    try:
        resp = dns.query.udp(q, server, timeout=5)
    except Exception as exc:  # timeouts and refusals alike are a failed check
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    answers = [str(rr) for rrset in resp.answer for rr in rrset]
    return {
        "ok": resp.rcode() == dns.rcode.NOERROR and bool(answers),
        "answers": answers,
        "aa": bool(resp.flags & 0x400),
    }


def mysql_login(address: str, user: str, password: str, database: str, query: str | None = None) -> dict[str, Any]:
    import pymysql

    try:
        conn = pymysql.connect(host=address, user=user, password=password, database=database, connect_timeout=10)
    except pymysql.MySQLError as exc:
        return {"ok": False, "error": str(exc)}
    rows: list[Any] = []
    with conn, conn.cursor() as cur:
        if query:
            cur.execute(query)
            rows = [list(r) for r in cur.fetchall()]
    return {"ok": True, "rows": rows}


OPS = {
    "send_request": send_request,
    "http_get": http_get,
    "smtp_send": smtp_send,
    "imap_check": imap_check,
    "ftp_login": ftp_login,
    "dns_query": dns_query,
    "mysql_login": mysql_login,
}


def main() -> int:
    ops = json.load(sys.stdin)
    for op in ops:
        try:
            result = OPS[op["op"]](**op.get("args", {}))
        except Exception as exc:  # one failing client must not hide the others' results
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
