"""The services ispcp-update rebuilds, and the MySQL server the recovery works on.

For every `CMD_*` service entry of ispcp.conf: does the named command exist, is the program behind it
installed (binary, sysvinit script or systemd unit), and if not, which Debian package provides it.
Paths are looked up on the target through its connection; in the built-in sandbox (`ctx.sandbox`) the
controller's own programs count too, because those are what the sandbox runs, and the result says
where each was found. Old releases are covered: sysvinit scripts, `mysqld`/`mysql` beside MariaDB's
names, pid files and sockets under /var/run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from ispcp_lib.core.connection import Connection, LocalConnection
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.mysql import dialect

if TYPE_CHECKING:
    from ispcp_lib.core.context import Context

INIT_DIR = "/etc/init.d"
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
INSTALLER = "ispCP's own installer"  # not a Debian package: the dummy install brings it


@dataclass(frozen=True)
class Program:
    """One installable program and how to recognise it on a system."""

    name: str
    package: str  # the Debian 12 package(s) to install; INSTALLER for ispCP's own scripts
    binaries: tuple[str, ...] = ()
    init_scripts: tuple[str, ...] = ()  # names under /etc/init.d
    units: tuple[str, ...] = ()  # systemd unit names
    role: str = ""  # programs sharing a role replace each other (courier / dovecot)


def _p(
    name: str,
    package: str,
    binaries: tuple[str, ...] = (),
    init: tuple[str, ...] = (),
    units: tuple[str, ...] = (),
    role: str = "",
) -> Program:
    return Program(name, package, binaries, init, units, role)


APACHE = _p(
    "Apache 2", "apache2", ("/usr/sbin/apache2", "/usr/sbin/apache2ctl"), ("apache2",), ("apache2.service",), "web"
)
POSTFIX = _p("Postfix", "postfix", ("/usr/sbin/postfix",), ("postfix",), ("postfix.service",), "mta")
# Since Debian 9 the -ssl variants are part of courier-imap / courier-pop (they replace the old packages).
COURIER_IMAP = _p(
    "Courier IMAP",
    "courier-imap",
    ("/usr/sbin/imapd", "/usr/bin/imapd"),
    ("courier-imap",),
    ("courier-imap.service",),
    "imap",
)
COURIER_IMAP_SSL = _p(
    "Courier IMAP (SSL)",
    "courier-imap",
    ("/usr/sbin/imapd-ssl",),
    ("courier-imap-ssl",),
    ("courier-imap-ssl.service",),
    "imap",
)
COURIER_POP = _p(
    "Courier POP3",
    "courier-pop",
    ("/usr/sbin/pop3d", "/usr/bin/pop3d"),
    ("courier-pop",),
    ("courier-pop.service",),
    "pop",
)
COURIER_POP_SSL = _p(
    "Courier POP3 (SSL)",
    "courier-pop",
    ("/usr/sbin/pop3d-ssl",),
    ("courier-pop-ssl",),
    ("courier-pop-ssl.service",),
    "pop",
)
COURIER_AUTHD = _p(
    "Courier authdaemon",
    "courier-authdaemon",
    ("/usr/sbin/authdaemond",),
    ("courier-authdaemon",),
    ("courier-authdaemon.service",),
    "authd",
)
DOVECOT = _p(
    "Dovecot", "dovecot-imapd dovecot-pop3d", ("/usr/sbin/dovecot",), ("dovecot",), ("dovecot.service",), "imap"
)
PROFTPD = _p(
    "ProFTPD", "proftpd-core proftpd-mod-mysql", ("/usr/sbin/proftpd",), ("proftpd",), ("proftpd.service",), "ftp"
)
BIND = _p("BIND 9", "bind9", ("/usr/sbin/named",), ("bind9", "named"), ("named.service", "bind9.service"), "dns")
CRON = _p("cron", "cron", ("/usr/sbin/cron", "/usr/bin/crontab"), ("cron",), ("cron.service",), "cron")
AMAVIS = _p("amavisd-new", "amavisd-new", ("/usr/sbin/amavisd-new",), ("amavis",), ("amavis.service",), "amavis")
ISPCP_DAEMON = _p("ispCP daemon", INSTALLER, (), ("ispcp_daemon",), (), "ispcp_daemon")
ISPCP_NETWORK = _p("ispCP traffic counter", INSTALLER, (), ("ispcp_network",), (), "ispcp_network")
MARIADB = _p(
    "MariaDB/MySQL server",
    "mariadb-server",
    ("/usr/sbin/mariadbd", "/usr/sbin/mysqld"),
    ("mariadb", "mysql"),
    ("mariadb.service", "mysql.service"),
    "sql",
)

# The small static map: basename of a CMD_* path -> the program that provides it.
BY_COMMAND: dict[str, Program] = {
    "apache2ctl": APACHE,
    "apache2": APACHE,
    "postfix": POSTFIX,
    "courier-imap": COURIER_IMAP,
    "courier-imap-ssl": COURIER_IMAP_SSL,
    "courier-pop": COURIER_POP,
    "courier-pop-ssl": COURIER_POP_SSL,
    "courier-authdaemon": COURIER_AUTHD,
    "dovecot": DOVECOT,
    "proftpd": PROFTPD,
    "bind9": BIND,
    "named": BIND,
    "crontab": CRON,
    "cron": CRON,
    "amavis": AMAVIS,
    "amavisd-new": AMAVIS,
    "ispcp_daemon": ISPCP_DAEMON,
    "ispcp_network": ISPCP_NETWORK,
}

# The CMD_* entries for services ispcp-update stops, reconfigures and starts again, in its order.
SERVICE_KEYS: tuple[tuple[str, str], ...] = (
    ("CMD_HTTPD", "web server"),
    ("CMD_MTA", "mail transfer agent"),
    ("CMD_AUTHD", "IMAP/POP authentication"),
    ("CMD_IMAP", "IMAP server"),
    ("CMD_IMAP_SSL", "IMAP server (SSL)"),
    ("CMD_POP", "POP3 server"),
    ("CMD_POP_SSL", "POP3 server (SSL)"),
    ("CMD_FTPD", "FTP server"),
    ("CMD_NAMED", "DNS server"),
    ("CMD_CRONTAB", "cron (ispCP installs its jobs with crontab)"),
    ("CMD_AMAVIS", "virus/spam filter"),
    ("CMD_ISPCPD", "ispCP daemon"),
    ("CMD_ISPCPN", "ispCP traffic counter"),
)
# Where ispCP's shipped 1.0.x config points them, for a config that lacks an entry.
DEFAULT_COMMANDS = {
    "CMD_HTTPD": "/usr/sbin/apache2ctl",
    "CMD_MTA": "/etc/init.d/postfix",
    "CMD_AUTHD": "/etc/init.d/courier-authdaemon",
    "CMD_IMAP": "/etc/init.d/courier-imap",
    "CMD_IMAP_SSL": "/etc/init.d/courier-imap-ssl",
    "CMD_POP": "/etc/init.d/courier-pop",
    "CMD_POP_SSL": "/etc/init.d/courier-pop-ssl",
    "CMD_FTPD": "/etc/init.d/proftpd",
    "CMD_NAMED": "/etc/init.d/bind9",
    "CMD_CRONTAB": "/usr/bin/crontab",
    "CMD_AMAVIS": "no",
    "CMD_ISPCPD": "/etc/init.d/ispcp_daemon",
    "CMD_ISPCPN": "/etc/init.d/ispcp_network",
}
ALTERNATIVES = (COURIER_IMAP, COURIER_POP, DOVECOT)


# Which of the paths ($@) exist (a dangling symlink counts: it names the target's own path).
_EXISTING = r"""
for p do
    if [ -e "$p" ] || [ -L "$p" ]; then printf '%s\n' "$p"; fi
done
"""


@dataclass
class Roots:
    """Where to look: the target first, then (sandbox only) this machine. Answers are cached per path."""

    target: Connection
    host: Connection | None = None
    _known: dict[tuple[str, str], bool] = field(default_factory=dict)

    @classmethod
    def for_context(cls, ctx: Context) -> Roots:
        return cls(ctx.target, LocalConnection("/") if ctx.sandbox else None)

    def places(self) -> list[tuple[str, Connection]]:
        return [("target", self.target)] + ([("host", self.host)] if self.host is not None else [])

    def prefetch(self, paths: Iterable[str]) -> None:
        """Learn which of the paths exist: one command per place, whatever their number."""
        for where, conn in self.places():
            todo = sorted({p for p in paths if (where, p) not in self._known})
            if not todo:
                continue
            seen = {conn.path(p): p for p in todo}
            done = conn.sh(_EXISTING, *seen, timeout=60)
            found = {seen[line] for line in done.out.splitlines() if line in seen}
            self._known.update({(where, p): p in found for p in todo})

    def find(self, logical: str) -> tuple[str, str] | None:
        """(logical path, "target"|"host") of the first place the path exists; never follows links out."""
        self.prefetch([logical])
        for where, _ in self.places():
            if self._known.get((where, logical)):
                return logical, where
        return None


@dataclass
class Presence:
    """What of a program was found, and where."""

    found: list[tuple[str, str]] = field(default_factory=list)  # (logical path, target|host)

    @property
    def installed(self) -> bool:
        return bool(self.found)

    @property
    def where(self) -> str:
        places = {w for _, w in self.found}
        if not places:
            return ""
        return "target root" if "target" in places else "host only (not under the target root)"

    def describe(self) -> str:
        return ", ".join(f"{p} ({'target' if w == 'target' else 'host'})" for p, w in self.found[:3])


def candidates(program: Program) -> list[str]:
    """The paths that show a program is installed: binaries, sysvinit scripts, systemd units."""
    return [
        *program.binaries,
        *(f"{INIT_DIR}/{s}" for s in program.init_scripts),
        *(f"{d}/{u}" for u in program.units for d in UNIT_DIRS),
    ]


def presence(program: Program, roots: Roots) -> Presence:
    roots.prefetch(candidates(program))
    found = [hit for c in candidates(program) if (hit := roots.find(c)) is not None]
    found.sort(key=lambda h: h[1] != "target")  # the target's own copies first
    return Presence(found)


@dataclass
class ServiceCheck:
    key: str  # CMD_* entry
    role: str
    command: str  # the value in ispcp.conf ("" when absent)
    state: str  # ok | missing | mismatch | disabled | unknown
    program: Program | None
    command_at: tuple[str, str] | None  # where the CMD path itself exists
    presence: Presence
    detail: str
    package: str = ""  # what to install when state is missing/mismatch/unknown

    @property
    def problem(self) -> bool:
        return self.state in ("missing", "mismatch", "unknown")

    def row(self) -> dict[str, str]:
        where = self.presence.where or (
            "target root"
            if self.command_at and self.command_at[1] == "target"
            else "host only (not under the target root)"
            if self.command_at
            else ""
        )
        return {
            "service": self.role,
            "ispcp.conf": f"{self.key} = {self.command}" if self.command else f"{self.key} (not set)",
            "state": self.state,
            "found at": self.presence.describe() or (self.command_at[0] if self.command_at else "—"),
            "where": where or "—",
            "package to install": self.package or "—",
            "detail": self.detail,
        }


def program_for(command: str) -> Program | None:
    """The program a CMD_* path belongs to, by its basename (the small static map)."""
    return BY_COMMAND.get(PurePosixPath(command.strip()).name)


def check_service(key: str, role: str, command: str, roots: Roots) -> ServiceCheck:
    command = command.strip()
    if command.lower() in ("", "no"):
        return ServiceCheck(
            key,
            role,
            command,
            "disabled",
            None,
            None,
            Presence(),
            "switched off in ispcp.conf" if command else "not in ispcp.conf",
        )
    program = program_for(command)
    at = roots.find(command) if command.startswith("/") else None
    pres = presence(program, roots) if program is not None else Presence([at] if at else [])
    if program is None:
        if at is not None:
            return ServiceCheck(
                key, role, command, "ok", None, at, pres, "the command exists (program not in this check's map)"
            )
        return ServiceCheck(
            key,
            role,
            command,
            "unknown",
            None,
            None,
            pres,
            "the command does not exist and no package is known for it",
            f"apt-file search {command}",
        )
    if at is not None:
        return ServiceCheck(key, role, command, "ok", program, at, pres, f"{program.name} is installed")
    if pres.installed:
        return ServiceCheck(
            key,
            role,
            command,
            "mismatch",
            program,
            None,
            pres,
            f"{program.name} is installed, but {command} does not exist: ispcp-update calls that path, "
            f"so point {key} at what exists or reinstall {program.package}",
            program.package,
        )
    return ServiceCheck(
        key, role, command, "missing", program, None, pres, f"{program.name} is not installed", program.package
    )


def check_services(conf: IspcpConf | None, roots: Roots) -> list[ServiceCheck]:
    """One check per service entry of the target's ispcp.conf (its shipped defaults when it lacks one)."""
    commands = {
        key: (conf.get(key) if conf is not None and key in conf else DEFAULT_COMMANDS.get(key, "")) or ""
        for key, _ in SERVICE_KEYS
    }
    programs = [p for c in commands.values() if (p := program_for(c)) is not None]
    roots.prefetch([c for c in commands.values() if c.startswith("/")])
    roots.prefetch(p for program in [*programs, *ALTERNATIVES] for p in candidates(program))
    checks = [check_service(key, role, commands[key], roots) for key, role in SERVICE_KEYS]
    _note_alternatives(checks, roots)
    return checks


def _note_alternatives(checks: list[ServiceCheck], roots: Roots) -> None:
    """A missing Courier while Dovecot is installed (or the reverse) is a config mismatch, not a gap."""
    for check in checks:
        if check.state != "missing" or check.program is None or check.program.role not in ("imap", "pop"):
            continue
        for other in ALTERNATIVES:
            if other.package == check.program.package or other.name == check.program.name:
                continue
            pres = presence(other, roots)
            if pres.installed:
                check.state = "mismatch"
                check.detail += (
                    f"; {other.name} is installed instead ({pres.describe()}): point {check.key} "
                    f"at it, or install {check.program.package}"
                )
                break


def control_argv(conn: Connection, service: str, verb: str) -> list[str]:
    """How to start/stop a service on the target: systemctl under systemd, else sysvinit's invoke-rc.d
    (it asks policy-rc.d, as package scripts do), else the init script itself."""
    if conn.is_dir("/run/systemd/system"):
        return ["systemctl", verb, service]
    if conn.which("invoke-rc.d") is not None:
        return ["invoke-rc.d", service, verb]
    return [f"{INIT_DIR}/{service}", verb]


# --- the MySQL server ---------------------------------------------------------------------------

MY_CNF_FILES = ("/etc/mysql/my.cnf", "/etc/mysql/mariadb.cnf")
MY_CNF_DIRS = ("/etc/mysql/conf.d", "/etc/mysql/mariadb.conf.d")
SERVER_SECTIONS = {"mysqld", "server", "mariadb", "mariadbd", "mariadb-10.11", "mysqld_safe"}
# /var/run is a directory on Lenny and Squeeze and a link to /run since: this path is right on both.
DEBIAN_DEFAULTS = {"datadir": "/var/lib/mysql", "socket": "/var/run/mysqld/mysqld.sock"}
_OPTION = re.compile(r"^([A-Za-z0-9_-]+)\s*(?:=\s*(.*?))?\s*$")


def server_options_from_config(conn: Connection) -> dict[str, tuple[str, str]]:
    """datadir/socket/pid-file/port from the server sections of the target's my.cnf family.

    Returns option -> (value, file it came from, as on the target). Later files win, as with mysqld's
    own reading order; `!include` lines are ignored because Debian's includes are the dirs read here.
    """
    files = list(MY_CNF_FILES)
    for d in MY_CNF_DIRS:
        files += [f"{d}/{n}" for n in conn.listdir(d) or [] if n.endswith(".cnf")]
    found: dict[str, tuple[str, str]] = {}
    for logical in files:
        text = conn.read_text(logical)
        if text is None:
            continue
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";", "!")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip().lower()
                continue
            m = _OPTION.match(line)
            if section in SERVER_SECTIONS and m is not None:
                name = m.group(1).replace("_", "-").lower()
                if name in ("datadir", "socket", "pid-file", "port"):
                    found[name] = ((m.group(2) or "").strip().strip("\"'"), logical)
    return found


@dataclass
class MysqlServer:
    running: bool
    version: str | None
    datadir: str | None  # as the target knows it (without the sandbox prefix)
    socket: str | None
    source: str  # where datadir/socket came from
    pid_file: str | None = None
    installed: Presence = field(default_factory=Presence)
    version_source: str = ""
    notes: list[str] = field(default_factory=list)


def mysql_server(ctx: Context) -> MysqlServer:
    """Version, datadir and socket from the running server's own variables, else the config files."""
    from ispcp_lib.facts import mysql_creds

    svc = ctx.mysql
    running = bool(svc is not None and svc.status())
    version = svc.version() if running and svc is not None else None
    if version and version.startswith("5.5.5-") and "mariadb" in version.lower():
        version = version[len("5.5.5-") :]  # MariaDB's greeting prefix for old clients, not its version
    installed = presence(MARIADB, Roots.for_context(ctx))
    if running and svc is not None:
        login = mysql_creds.working_admin(ctx)
        if login is not None:
            with svc.connect(login.user, login.password) as conn, conn.cursor() as cur:
                dialect.execute(cur, dialect.SERVER_PATHS)
                datadir, sock, full_version, pid = cur.fetchone()
            source = f"the server's own variables (login {login.user} from {ctx.display_path(login.source)})"
            return MysqlServer(
                True,
                full_version or version,
                ctx.display_path(str(datadir)).rstrip("/") or "/",
                ctx.display_path(str(sock)) if sock else None,
                source,
                ctx.display_path(str(pid)) if pid else None,
                installed,
                version_source="@@version",
            )
    options = server_options_from_config(ctx.target)
    notes = []
    if running:
        notes.append("the server runs but no admin login works (debian.cnf), so its variables are unread")
    datadir = options.get("datadir", (DEBIAN_DEFAULTS["datadir"], "Debian's default"))
    sock = options.get("socket", (DEBIAN_DEFAULTS["socket"], "Debian's default"))
    sources = sorted({datadir[1], sock[1]})
    pid = options.get("pid-file")
    return MysqlServer(
        running,
        version,
        datadir[0],
        sock[0],
        "config: " + ", ".join(sources),
        pid[0] if pid else None,
        installed,
        version_source="protocol greeting" if version else "",
        notes=notes,
    )
