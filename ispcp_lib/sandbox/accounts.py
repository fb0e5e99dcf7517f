"""passwd, shadow, group and gshadow for the two sandbox servers.

The old server has Debian's base set, its service accounts with 2010-era ids, the vu<uid> domain
users and vmail. The new server has the base set plus mysql and postfix with the HOST's ids, because
the sandbox's MariaDB and Postfix really run as the host's users.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ispcp_lib.core.errors import PreconditionFailed

LASTCHG = 14700  # days since 1970: mid-2010, when the old server was set up

# (name, uid, gid, gecos, home, shell): Debian 12's base-passwd set.
BASE_USERS: tuple[tuple[str, int, int, str, str, str], ...] = (
    ("root", 0, 0, "root", "/root", "/bin/bash"),
    ("daemon", 1, 1, "daemon", "/usr/sbin", "/usr/sbin/nologin"),
    ("bin", 2, 2, "bin", "/bin", "/usr/sbin/nologin"),
    ("sys", 3, 3, "sys", "/dev", "/usr/sbin/nologin"),
    ("sync", 4, 65534, "sync", "/bin", "/bin/sync"),
    ("games", 5, 60, "games", "/usr/games", "/usr/sbin/nologin"),
    ("man", 6, 12, "man", "/var/cache/man", "/usr/sbin/nologin"),
    ("lp", 7, 7, "lp", "/var/spool/lpd", "/usr/sbin/nologin"),
    ("mail", 8, 8, "mail", "/var/mail", "/usr/sbin/nologin"),
    ("news", 9, 9, "news", "/var/spool/news", "/usr/sbin/nologin"),
    ("uucp", 10, 10, "uucp", "/var/spool/uucp", "/usr/sbin/nologin"),
    ("proxy", 13, 13, "proxy", "/bin", "/usr/sbin/nologin"),
    ("www-data", 33, 33, "www-data", "/var/www", "/usr/sbin/nologin"),
    ("backup", 34, 34, "backup", "/var/backups", "/usr/sbin/nologin"),
    ("list", 38, 38, "Mailing List Manager", "/var/list", "/usr/sbin/nologin"),
    ("irc", 39, 39, "ircd", "/run/ircd", "/usr/sbin/nologin"),
    ("_apt", 42, 65534, "", "/nonexistent", "/usr/sbin/nologin"),
    ("nobody", 65534, 65534, "nobody", "/nonexistent", "/usr/sbin/nologin"),
)

BASE_GROUPS: tuple[tuple[str, int], ...] = (
    ("root", 0),
    ("daemon", 1),
    ("bin", 2),
    ("sys", 3),
    ("adm", 4),
    ("tty", 5),
    ("disk", 6),
    ("lp", 7),
    ("mail", 8),
    ("news", 9),
    ("uucp", 10),
    ("man", 12),
    ("proxy", 13),
    ("kmem", 15),
    ("dialout", 20),
    ("fax", 21),
    ("voice", 22),
    ("cdrom", 24),
    ("floppy", 25),
    ("tape", 26),
    ("sudo", 27),
    ("audio", 29),
    ("dip", 30),
    ("www-data", 33),
    ("backup", 34),
    ("operator", 37),
    ("list", 38),
    ("irc", 39),
    ("src", 40),
    ("shadow", 42),
    ("utmp", 43),
    ("video", 44),
    ("sasl", 45),
    ("plugdev", 46),
    ("staff", 50),
    ("games", 60),
    ("users", 100),
    ("nogroup", 65534),
)

# The old server's service accounts, numbered as a 2010 Debian install would have left them.
# mysql deliberately differs from the host's: a restored datadir then has to be chowned.
OLD_SERVICE_USERS: tuple[tuple[str, int, int, str, str, str], ...] = (
    ("bind", 101, 103, "", "/var/cache/bind", "/bin/false"),
    ("ftp", 102, 65534, "", "/home/ftp", "/bin/false"),
    ("proftpd", 103, 65534, "", "/var/run/proftpd", "/bin/false"),
    ("mysql", 104, 106, "MySQL Server,,,", "/var/lib/mysql", "/bin/false"),
    ("postfix", 105, 107, "", "/var/spool/postfix", "/bin/false"),
)
OLD_SERVICE_GROUPS: tuple[tuple[str, int], ...] = (
    ("bind", 103),
    ("ssl-cert", 104),
    ("mysql", 106),
    ("postfix", 107),
    ("postdrop", 108),
)


@dataclass
class Accounts:
    """Ordered user and group entries, rendered in the four files' formats."""

    users: list[tuple[str, int, int, str, str, str]] = field(default_factory=list)
    groups: list[tuple[str, int, list[str]]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # user -> crypt hash; others get '*'

    def passwd(self) -> str:
        return "".join(f"{n}:x:{u}:{g}:{gecos}:{home}:{shell}\n" for n, u, g, gecos, home, shell in self.users)

    def shadow(self) -> str:
        return "".join(f"{n}:{self.hashes.get(n, '*')}:{LASTCHG}:0:99999:7:::\n" for n, *_ in self.users)

    def group(self) -> str:
        return "".join(f"{n}:x:{gid}:{','.join(members)}\n" for n, gid, members in self.groups)

    def gshadow(self) -> str:
        return "".join(f"{n}:{'*' if gid < 1000 else '!'}::{','.join(members)}\n" for n, gid, members in self.groups)

    def write(self, etc: Path) -> None:
        """Write the four files with Debian's modes (shadow files root:shadow 0640)."""
        etc.mkdir(parents=True, exist_ok=True)
        for name, text, mode, gid in (
            ("passwd", self.passwd(), 0o644, 0),
            ("group", self.group(), 0o644, 0),
            ("shadow", self.shadow(), 0o640, 42),
            ("gshadow", self.gshadow(), 0o640, 42),
        ):
            path = etc / name
            path.write_text(text)
            path.chmod(mode)
            os.chown(path, 0, gid)

    def merge_into(self, etc: Path) -> None:
        """Add these entries to an installed system's four files: every line already there stays.

        sshd's privilege-separation user and the image's own service accounts must survive; a name
        already present keeps its line (its ids are the ones the system's services run as). A new
        entry whose id another name already holds is refused: files of both would be confused.
        """
        planned: list[tuple[Path, str, list[str]]] = []
        for name, text, id_field in (
            ("passwd", self.passwd(), 2),
            ("group", self.group(), 2),
            ("shadow", self.shadow(), None),
            ("gshadow", self.gshadow(), None),
        ):
            path = etc / name
            old = path.read_text()
            names = {line.split(":")[0]: line.split(":") for line in old.splitlines() if line}
            ids = {int(f[id_field]): n for n, f in names.items() if id_field is not None}
            added = [line for line in text.splitlines(keepends=True) if line.split(":")[0] not in names]
            for line in added:
                fields = line.split(":")
                if id_field is not None and int(fields[id_field]) in ids:
                    raise PreconditionFailed(
                        f"account {fields[0]}",
                        f"its id {fields[id_field]} is {ids[int(fields[id_field])]}'s in {path}",
                        "build the world into a root whose ids do not collide with Debian's base set",
                        path=str(path),
                    )
            planned.append((path, old, added))
        for path, old, added in planned:  # written only when no file refused
            if added:
                st = path.stat()
                path.write_text(old + ("" if old.endswith("\n") or not old else "\n") + "".join(added))
                os.chown(path, st.st_uid, st.st_gid)
                path.chmod(st.st_mode & 0o7777)


def base_accounts() -> Accounts:
    return Accounts(users=list(BASE_USERS), groups=[(n, g, []) for n, g in BASE_GROUPS])


def _lookup(path: Path, name: str, field: int) -> int | None:
    for line in path.read_text().splitlines():
        parts = line.split(":")
        if len(parts) > field and parts[0] == name:
            return int(parts[field])
    return None


def host_gid(name: str, group: Path = Path("/etc/group")) -> int | None:
    return _lookup(group, name, 2)


def host_ids(name: str, passwd: Path = Path("/etc/passwd"), group: Path = Path("/etc/group")) -> tuple[int, int]:
    """uid of user `name` and gid of group `name` on this host (the sandbox's services run as them)."""
    uid, gid = _lookup(passwd, name, 2), _lookup(group, name, 2)
    if uid is None or gid is None:
        raise PreconditionFailed(
            f"host account {name}",
            "is missing from /etc/passwd or /etc/group",
            "install mariadb-server and postfix (they create these accounts)",
        )
    return uid, gid
