"""The customers' files on the old server: web trees, PHP FastCGI starters and Maildirs.

Owners are numeric: vu<uid> and vmail need not exist on the host, just as they do not exist on a
freshly installed target until the accounts step has run.
"""

from __future__ import annotations

import os
from pathlib import Path

from ispcp_lib.sandbox import ispcp_files
from ispcp_lib.sandbox.files import mkdir_owned as _mkdir
from ispcp_lib.sandbox.files import write_owned as _write
from ispcp_lib.sandbox.scenario import MAIL_GID, VMAIL_UID, Scenario


def web_trees(root: Path, sc: Scenario) -> None:
    """/var/www/virtual/<domain> with htdocs, cgi-bin, logs, phptmp, subdomain mounts, a symlink."""
    www = _mkdir(root / "var/www/virtual", 0, 0)
    subs: dict[int, list[str]] = {}
    for s in sc.subdomains:
        subs.setdefault(s.domain_id, []).append(s.label)
    for d in sc.domains:
        u, g = d.uid, d.gid
        home = _mkdir(www / d.name, u, g)
        htdocs = _mkdir(home / "htdocs", u, g)
        _write(htdocs / "index.html", f"<html><body><h1>{d.name}</h1></body></html>\n", u, g)
        _write(htdocs / "robots.txt", "User-agent: *\nDisallow:\n", u, g)
        _mkdir(htdocs / "images", u, g)
        _write(htdocs / "images" / "logo.svg", f"<svg><text>{d.name}</text></svg>\n", u, g)
        # A relative link inside the tree: copies must keep it a link, not follow it.
        os.symlink("index.html", htdocs / "start.html")
        os.lchown(htdocs / "start.html", u, g)
        cgi = _mkdir(home / "cgi-bin", u, g)
        _write(cgi / "hello.pl", '#!/usr/bin/perl\nprint "Content-type: text/plain\\n\\nhello\\n";\n', u, g, 0o755)
        _mkdir(home / "logs", u, g, 0o750)
        _write(home / "logs" / "access.log", f'192.0.2.99 - - [01/Jul/2010] "GET / HTTP/1.1" 200 {d.id}\n', u, g, 0o640)
        _mkdir(home / "phptmp", u, g, 0o770)
        _mkdir(home / "errors", u, g)
        _write(home / "errors" / "404.html", "<h1>Not found</h1>\n", u, g)
        for label in subs.get(d.id, []):
            sub = _mkdir(_mkdir(home / label, u, g) / "htdocs", u, g)
            _write(sub / "index.html", f"<h1>{label}.{d.name}</h1>\n", u, g)


def fcgi_starters(root: Path, sc: Scenario) -> None:
    fcgi = _mkdir(root / "var/www/fcgi", 0, 0)
    for d in sc.domains:
        u, g = d.uid, d.gid
        base = _mkdir(fcgi / d.name, u, g, 0o550)
        # Read-only for the domain user: a starter it could edit would run any code as vu<uid>.
        _write(base / "php5-fcgi-starter", ispcp_files.php_fcgi_starter(d.name, u), u, g, 0o550)
        php5 = _mkdir(base / "php5", u, g, 0o550)
        _write(php5 / "php.ini", ispcp_files.php_ini(d.name), u, g, 0o440)


def maildirs(root: Path, sc: Scenario, messages_per_box: int | None = None) -> int:
    """Maildirs for real mailboxes (not forwards), all vmail:mail. Returns the number of messages."""
    u, g = VMAIL_UID, MAIL_GID
    virtual = _mkdir(root / "var/mail/virtual", u, g, 0o755)
    count = 0
    for m in sc.mailboxes:
        if m.password is None:
            continue
        box = virtual / m.domain / m.local_part
        _mkdir(virtual / m.domain, u, g, 0o700)
        for sub in ("cur", "new", "tmp"):
            _mkdir(box / sub, u, g, 0o700)
        _mkdir(box, u, g, 0o700)
        n = messages_per_box or 1 + m.id % 3
        for i in range(n):
            stamp = 1278000000 + m.id * 10 + i
            body = (
                f"From: sender{i}@elsewhere.test\nTo: {m.address}\nSubject: message {i + 1}\n"
                f"Date: Thu, 01 Jul 2010 12:00:{i:02d} +0200\n\nHello {m.local_part}, message {i + 1}.\n"
            )
            name = f"{stamp}.M{m.id}P{i}.{sc.old_hostname},S={len(body)}"
            target = box / "cur" / f"{name}:2,S" if i % 2 == 0 else box / "new" / name
            _write(target, body, u, g, 0o600)
            count += 1
    return count
