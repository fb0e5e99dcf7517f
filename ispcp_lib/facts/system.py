"""Facts about a system tree: os-release, server versions, tools."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ispcp_lib.facts.ispcp_conf import parse_version


def os_release(root: Path) -> dict[str, str] | None:
    """The os-release mapping of the tree at root, None when it has none."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        p = root / rel
        if p.is_file():
            out = {}
            for line in p.read_text(errors="replace").splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, v = line.split("=", 1)
                    out[k.strip()] = v.strip().strip('"')
            return out
    return None


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


def perl_module_version(module: str = "Crypt::CBC") -> str | None:
    """Version of a Perl module on this machine, None if it is not installed."""
    import subprocess

    perl = shutil.which("perl")
    if perl is None:
        return None
    proc = subprocess.run(
        [perl, f"-M{module}", "-e", f"print ${module}::VERSION"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    text = proc.stdout.strip()
    return text if proc.returncode == 0 and re.match(r"^\d", text) else None
