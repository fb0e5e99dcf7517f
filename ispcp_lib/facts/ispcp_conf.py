"""ispcp.conf: `KEY = value` lines, comments and blank lines, edited without disturbing layout.

CONF_PATH is the one place that names where ispCP keeps it; `IspcpConf.read` takes it from the target
or the backup through their connection, `IspcpConf.load` from a file on this machine (the CLI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import InputError

CONF_PATH = "/etc/ispcp/ispcp.conf"
DEFAULT_DATABASE_NAME = "ispcp"
_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>\s*=\s?)(?P<value>.*?)\s*$")

# What the update script would otherwise ask for, and the recovery relies on.
REQUIRED_KEYS = (
    "Version",
    "BuildDate",
    "SERVER_HOSTNAME",
    "BASE_SERVER_IP",
    "DEFAULT_ADMIN_ADDRESS",
    "DATABASE_HOST",
    "DATABASE_NAME",
    "DATABASE_USER",
    "DATABASE_PASSWORD",
)
# ispCP's setup offers "[none]" for the database password: present but empty is a valid value.
MAY_BE_EMPTY = ("DATABASE_PASSWORD",)


@dataclass
class IspcpConf:
    lines: list[str]
    values: dict[str, str] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)
    path: str = ""

    @classmethod
    def parse(cls, text: str, path: str = "ispcp.conf") -> IspcpConf:
        conf = cls(lines=text.splitlines(), path=path)
        for no, line in enumerate(conf.lines):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = _LINE.match(stripped)
            if m is None:
                # Never quote a line that may carry a password or key (it is not registered yet).
                shown = "" if re.search(r"PASS|KEY|IV|SECRET", stripped, re.I) else f": {stripped[:60]!r}"
                raise InputError(
                    "ispcp.conf",
                    f"line {no + 1} is not 'KEY = value' or a comment{shown}",
                    "repair or comment out that line in the backup's copy (keep the original aside)",
                    path=path,
                )
            conf.values[m["key"]] = m["value"]
            conf.index[m["key"]] = no
        return conf

    @classmethod
    def load(cls, path: Path, display: str | None = None) -> IspcpConf:
        """A file on this machine (the decrypt-password command's --conf)."""
        return cls.parse(_decode(Path(path).read_bytes()), display or str(path))

    @classmethod
    def read(cls, side: Connection, path: str = CONF_PATH, display: str | None = None) -> IspcpConf | None:
        """The file at path on the target or in the backup (a connection or a RootedView); None when absent."""
        data = side.read_bytes(path)
        return None if data is None else cls.parse(_decode(data), display or path)

    @property
    def database_name(self) -> str:
        """DATABASE_NAME, ispCP's default when it is unset or empty."""
        return self.values.get("DATABASE_NAME") or DEFAULT_DATABASE_NAME

    @property
    def old_conf_path(self) -> str:
        """Where ispcp-update reads the old server's config: CONF_DIR/ispcp.old.conf."""
        return f"{(self.values.get('CONF_DIR') or '/etc/ispcp').rstrip('/')}/ispcp.old.conf"

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def set(self, key: str, value: str) -> None:
        """Change one value in place; a new key goes to the end. Comments and order stay."""
        if key in self.index:
            no = self.index[key]
            m = _LINE.match(self.lines[no].strip())
            sep = m["sep"] if m and m["sep"].endswith(" ") else " = "
            self.lines[no] = f"{key}{sep}{value}" if value != "" else f"{key}{sep.rstrip()}"
        else:
            self.lines.append(f"{key} = {value}")
            self.index[key] = len(self.lines) - 1
        self.values[key] = value

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def missing(self, keys: tuple[str, ...] = REQUIRED_KEYS) -> list[str]:
        """Keys that are absent, or empty where a value is needed."""
        return [k for k in keys if not self.values.get(k) and not (k in MAY_BE_EMPTY and k in self.values)]

    def version_tuple(self) -> tuple[int, ...] | None:
        return parse_version(self.values.get("Version", ""))


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_version(text: str) -> tuple[int, ...] | None:
    """'1.0.5 OMEGA' -> (1, 0, 5); None when no number is there."""
    m = re.search(r"(\d+(?:\.\d+)+)", text or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else None
