"""The guide's partial backup, taken from a lab server that is about to be thrown away.

What the recovery guide tells an operator to have kept: the binary `ispcp` and `mysql` database folders
and every customer database folder (copied with MariaDB stopped), ispcp.conf, the key files, the web and
mail trees, the account files, debian.cnf and the ProFTPd configuration. Files keep their absolute paths
under the backup directory and their numeric owners, modes and times. Nothing else is kept: in
particular not Bind's working zones, which is one of the things a real recovery then has to cope with.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ispcp_lib.lab.host import LabError, NamespaceHost
from ispcp_lib.lab.provision import sql

FIXED_PATHS = (
    "etc/ispcp/ispcp.conf",
    "var/www/ispcp/engine/ispcp-db-keys.pl",
    "var/www/ispcp/gui/include/ispcp-db-keys.php",
    "etc/ispcp/ispcp-keys.conf",  # newer releases keep the keys here too
    "var/www/virtual",
    "var/mail/virtual",
    "etc/passwd",
    "etc/shadow",
    "etc/group",
    "etc/gshadow",
    "etc/mysql/debian.cnf",
    "etc/proftpd/proftpd.conf",
    "etc/proftpd/ispcp",
)


def backup_paths(host: NamespaceHost) -> list[str]:
    """Relative paths to keep; the database folders are those of `ispcp`, `mysql` and sql_database."""
    dbs = ["ispcp", "mysql"] + [r[0] for r in sql(host, "SELECT sqld_name FROM sql_database;")]
    paths = [f"var/lib/mysql/{d}" for d in dbs]
    return paths + [p for p in FIXED_PATHS if (host.root / p).exists()]


def take_backup(host: NamespaceHost, dest: Path) -> list[str]:
    """Stops MariaDB (a binary copy of a running server is not a backup), copies, returns what was kept."""
    paths = backup_paths(host)
    host.exec(["/etc/init.d/mariadb", "stop"], timeout=120)
    if host.exec(["pgrep", "-x", "mariadbd"], check=False).returncode == 0:
        raise LabError("MariaDB still runs after stop; refusing a binary copy")
    dest.mkdir(parents=True, exist_ok=True)
    pack = subprocess.Popen(["tar", "-C", str(host.root), "-cf", "-", *paths], stdout=subprocess.PIPE)
    unpack = subprocess.run(["tar", "-C", str(dest), "-xpf", "-", "--numeric-owner"], stdin=pack.stdout)
    assert pack.stdout is not None
    pack.stdout.close()
    if pack.wait() != 0 or unpack.returncode != 0:
        raise LabError(f"backup copy failed (tar exit {pack.returncode}/{unpack.returncode})")
    return paths
