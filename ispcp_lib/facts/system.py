"""Facts about a system: its distribution, server versions, Perl modules."""

from __future__ import annotations

import re
from pathlib import Path

from ispcp_lib.core.connection import Connection
from ispcp_lib.facts.ispcp_conf import parse_version


def distribution(side: Connection) -> dict[str, str] | None:
    """ID and VERSION_ID of the system on that side (the target, or the backup's tree), None when unknown.

    os-release first; Lenny and Squeeze have none, only /etc/debian_version ("5.0.10", "6.0.10").
    """
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = side.read_text(path)
        if text is not None:
            pairs = (
                line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#")
            )
            return {k.strip(): v.strip().strip('"') for k, v in pairs}
    version = (side.read_text("/etc/debian_version") or "").strip()
    return {"ID": "debian", "VERSION_ID": version} if version else None


def server_version_from_datadir(datadir: Path) -> str | None:
    """The version that last ran on a datadir, as recorded by mysql_upgrade / mariadb-upgrade."""
    for name in ("mariadb_upgrade_info", "mysql_upgrade_info"):
        p = datadir / name
        if p.is_file():
            text = p.read_bytes().split(b"\0", 1)[0].decode("ascii", "replace").strip()
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


def perl_module_version(side: Connection, module: str = "Crypt::CBC") -> str | None:
    """Version of a Perl module on that side (the target), None if it or perl is not installed."""
    done = side.run(["perl", f"-M{module}", "-e", f"print ${module}::VERSION"], timeout=30)
    text = done.out.strip()
    return text if done.rc == 0 and re.match(r"^\d", text) else None
