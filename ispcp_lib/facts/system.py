"""Facts about a system tree, read through a connection: its release, server versions, tools.

Old Debian releases have no /etc/os-release (Lenny 5.0.x, Squeeze 6.0.x): their release comes from
/etc/debian_version, with `lsb_release -a` (or /etc/lsb-release) naming the distribution when the
commands run inside that tree.
"""

from __future__ import annotations

import re
from pathlib import Path

from ispcp_lib.core.connection import Connection, LocalConnection
from ispcp_lib.facts.ispcp_conf import parse_version

# Debian's major releases by the first number of /etc/debian_version.
DEBIAN_CODENAMES = {
    "4": "etch",
    "5": "lenny",
    "6": "squeeze",
    "7": "wheezy",
    "8": "jessie",
    "9": "stretch",
    "10": "buster",
    "11": "bullseye",
    "12": "bookworm",
    "13": "trixie",
}
_LSB_FIELDS = {"Distributor ID": "ID", "Description": "PRETTY_NAME", "Release": "VERSION_ID", "Codename": "CODENAME"}


def _connection(where: Connection | Path) -> Connection:
    # A Path is a tree on this machine (callers not yet on connections: preflight, mysql_restore,
    # customer_databases); everything else passes the connection or the backup's view.
    return LocalConnection(where) if isinstance(where, Path) else where


def _key_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out


def os_release(where: Connection | Path) -> dict[str, str] | None:
    """The os-release mapping of the tree (ID, VERSION_ID, PRETTY_NAME, …), None when nothing tells.

    Without an os-release file the mapping is built from /etc/debian_version and lsb_release, with
    the keys os-release would have (VERSION_ID is the major release, as in Debian's own os-release).
    """
    conn = _connection(where)
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = conn.read_text(path)
        if text is not None:
            return _key_values(text)
    debian = (conn.read_text("/etc/debian_version") or "").strip()
    lsb = lsb_release(conn)
    if not debian and not lsb:
        return None
    out = {"source": "/etc/debian_version" if debian else "lsb_release"}
    if debian:
        major = debian.split(".")[0]
        codename = DEBIAN_CODENAMES.get(major, "")
        out.update({"ID": "debian", "NAME": "Debian GNU/Linux", "VERSION_ID": major, "DEBIAN_VERSION": debian})
        out["VERSION_CODENAME"] = codename
        out["PRETTY_NAME"] = f"Debian GNU/Linux {debian}" + (f" ({codename})" if codename else "")
    for key, value in lsb.items():
        if key == "ID":
            out.setdefault("ID", value.lower())
        elif key == "CODENAME":
            out["VERSION_CODENAME"] = out.get("VERSION_CODENAME") or value
        elif key == "VERSION_ID" and not debian:
            out["VERSION_ID"] = value
        elif key == "PRETTY_NAME" and not debian:
            out["PRETTY_NAME"] = value
    return out


def lsb_release(conn: Connection) -> dict[str, str]:
    """`lsb_release -a` (only where commands run inside the tree), else /etc/lsb-release; {} when neither."""
    if conn.path("/") == "/":
        done = conn.run(["lsb_release", "-a"], timeout=30)
        fields = {}
        for line in done.out.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() in _LSB_FIELDS and value.strip() not in ("", "n/a"):
                fields[_LSB_FIELDS[name.strip()]] = value.strip()
        if done.rc == 0 and fields:
            return fields
    values = _key_values(conn.read_text("/etc/lsb-release") or "")
    pairs = (("DISTRIB_ID", "ID"), ("DISTRIB_DESCRIPTION", "PRETTY_NAME"), ("DISTRIB_RELEASE", "VERSION_ID"))
    out = {new: values[old] for old, new in pairs if values.get(old)}
    if values.get("DISTRIB_CODENAME"):
        out["CODENAME"] = values["DISTRIB_CODENAME"]
    return out


def server_version_from_datadir(datadir: str | Path, conn: Connection | None = None) -> str | None:
    """The version that last ran on a datadir, as recorded by mysql_upgrade / mariadb-upgrade.

    conn: where the datadir is (the target, the backup's view); None: this machine.
    """
    where = conn or LocalConnection("/")
    for name in ("mariadb_upgrade_info", "mysql_upgrade_info"):
        data = where.read_bytes(f"{str(datadir).rstrip('/')}/{name}")
        if data:
            text = data.split(b"\0", 1)[0].decode("ascii", "replace").strip()
            if text:
                return text
    return None


def _flavour(version: str) -> str:
    return "mariadb" if "mariadb" in version.lower() else "mysql"


def compare_server_versions(old: str | None, new: str | None) -> tuple[str, str]:
    """Can the new server read the old server's files? Returns (verdict, explanation).

    verdict: same | upgrade (run the upgrade tool after start) | downgrade (refuse) | unknown.
    """
    if not old or not new:
        return "unknown", f"old server version {old or 'unknown'}, new {new or 'unknown'}"
    ov, nv = parse_version(old), parse_version(new)
    if ov is None or nv is None:
        return "unknown", f"cannot read versions {old!r} / {new!r}"
    o_f, n_f = _flavour(old), _flavour(new)
    if o_f == "mariadb" and n_f == "mysql":
        return "downgrade", (
            f"the backup was written by {old}; MySQL {new} cannot read MariaDB's system "
            "tables. Install MariaDB of at least the old version instead"
        )
    if o_f == "mysql" and n_f == "mariadb" and nv[0] >= 10:
        return "upgrade", f"{old} → {new}: MariaDB reads MySQL 5 files; run mariadb-upgrade after the start"
    if ov[:2] == nv[:2]:
        return "same", f"{old} → {new}: same major version"
    if ov[:2] < nv[:2]:
        return "upgrade", f"{old} → {new}: readable; run mariadb-upgrade/mysql_upgrade after the start"
    return "downgrade", (
        f"the backup was written by {old}, newer than {new}: the new server cannot be "
        "trusted to read its files. Install a server of at least the old version"
    )


def perl_module_version(module: str = "Crypt::CBC", conn: Connection | None = None) -> str | None:
    """Version of a Perl module where conn runs commands (the target; None: this machine), None if absent."""
    where = conn or LocalConnection("/")
    done = where.run(["perl", f"-M{module}", "-e", f"print ${module}::VERSION"], timeout=30)
    text = done.out.strip()
    return text if done.rc == 0 and re.match(r"^\d", text) else None
