"""TEST SCAFFOLDING: a stand-in for ispCP Omega's engine/setup/ispcp-update. NOT ispCP.

The sandbox cannot run the real Perl update (no Apache, Courier, BIND or PHP there, and Debian 12's
Crypt::CBC rejects ispCP 1.0.x's options). This program behaves like ispCP 1.0.7's where the recovery
can tell the difference: it clears the screen and prints colours, asks the real prompts in the real
order with the real wording (each cites its line in the 1.0.7 source: engine/setup/ispcp-update,
engine/setup/ispcp-setup-methods.pl, engine/setup/PerlLib/Dialog/Query.pm, which wraps questions at
72 columns), reads ispcp.old.conf, merges it into ispcp.conf as the real update does, asks the
recovery-mode questions for settings left empty, decrypts DATABASE_PASSWORD with the key files, logs
into MySQL, checks the vftp login (and asks the FTP questions when that fails), rebuilds every
domain, subdomain, alias and mailbox through the engine managers, pausing one second per item in
every manager whose `sleep(1);` line is still active, and fails with the real messages where the
real one fails. It says nothing the real script does not say.

It only works inside a sandbox world: its tree is the one it was installed into (its own path minus
var/www/ispcp/engine/setup/ispcp-update), which must sit beside the world's manifest, or, for a world
inside a lab server (no Python there), the server's root that standin_relay gives it when the server's
Perl shim asks; the MariaDB socket is that tree's /run/mysqld/mysqld.sock. ISPCP_SANDBOX_SLEEP_SCALE
scales the managers' one-second pause (tests use 0.01).

Output the health checks can verify: one Apache vhost per domain, subdomain and alias in
APACHE_SITES_DIR/ispcp.conf, domain web trees and FastCGI starters owned by their vu<uid> users
(looked up in the target's /etc/passwd, as `chown` would), Maildirs for every mailbox, and each
item's status back to 'ok' in the database (or the error text, as ispCP's engine records it).
"""

from __future__ import annotations

import os
import sys
import termios
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT_REL = "var/www/ispcp/engine/setup/ispcp-update"
MANAGER_REL = "var/www/ispcp/engine/ispcp-rqst-mngr"
WORLD_MANIFEST = "world.json"  # ispcp_lib.sandbox.world.MANIFEST, beside the target tree
ENV_SCALE = "ISPCP_SANDBOX_SLEEP_SCALE"
DEFAULT_OLD_CONF = "/etc/ispcp/ispcp.old.conf"
BACKUP_LOCK = "/tmp/ispcp-backup-all.lock"
# The stand-ins run this checkout's code, whichever ispcp_lib the interpreter has installed.
PACKAGE_PATH = f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})"

HEADER = """\
# =====================================================================================
#  TEST SCAFFOLDING - NOT ispCP.
#  A stand-in for ispCP Omega's engine/setup/ispcp-update, written into the sandbox's
#  target by ispcp_lib.sandbox.update_standin for the recovery's tests and demo.
#  It refuses to run outside a sandbox world's target tree.
# =====================================================================================
"""

# The recovery dispatcher (ispcp-update:317-328): the settings it can ask for, with the ask_* query's
# text (Query.pm:45-108) and the value an empty answer gives. Any other empty setting ends the run.
ASK = {
    "DEFAULT_ADMIN_ADDRESS": ("Please enter administrator e-mail address: ", None),  # Query.pm:84
    "SERVER_HOSTNAME": ("Please enter a fully qualified hostname [{default}]: ", "{hostname}"),  # Query.pm:45
    "BASE_SERVER_IP": ("Please enter the system network address [{default}]: ", "127.0.0.1"),  # Query.pm:50
    "BASE_SERVER_VHOST": (  # Query.pm:53
        "Please enter the domain name where ispCP OMEGA will be reachable on [{default}]: ",
        "admin.{hostname}",
    ),
    "DATABASE_HOST": ("Please enter SQL server hostname [localhost]: ", "localhost"),  # Query.pm:56
    "DATABASE_NAME": ("Please enter ispCP OMEGA SQL database name [ispcp]: ", "ispcp"),  # Query.pm:59
    "DATABASE_USER": ("Please enter ispCP OMEGA SQL user name [root]: ", "root"),  # Query.pm:61
    "PHP_FASTCGI": ("Please select a Fast CGI module: [f]cgid or fast[c]gi. [fcgid]: ", "fcgid"),  # Query.pm:105
    "PHP_TIMEZONE": ("Please enter Server's Timezone [{default}]: ", "UTC"),  # Query.pm:108
    "LOCAL_DNS_RESOLVER": (  # Query.pm:90
        "Do you want allow the system resolver to use the local nameserver? [Y/n]: ",
        "yes",
    ),
}
# check_ispcp_cfg_file (ispcp-update:261-264): the settings that may stay empty.
MAY_BE_EMPTY = (
    "DATABASE_PASSWORD",
    "SECONDARY_DNS",
    "ISPCP_SUPPORT_SYSTEM_TARGET",
    "MYSQL_PREFIX_TYPE",
    "OTHER_ROOTKIT_LOG",
)
FATAL = (  # exit_msg, ispcp-setup-methods.pl:1204-1209
    "\n\t{red}[FATAL] {reset}An error occurred during update process!\n"
    "\tCorrect it and re-run this program.\n\n\tLog files are stored in /var/log/ispcp/setup\n"
    "\tYou can also find help at http://isp-control.net/forum\n\n"
)
NOT_MERGED = ("BuildDate", "Version", "CodeName")

# The managers in ispcp-rqst-mngr's order: (manager, table, status column, what it rebuilds).
MANAGERS = (
    ("ispcp-dmn-mngr", "domain", "domain_status"),
    ("ispcp-sub-mngr", "subdomain", "subdomain_status"),
    ("ispcp-alssub-mngr", "subdomain_alias", "subdomain_alias_status"),
    ("ispcp-als-mngr", "domain_aliasses", "alias_status"),
    ("ispcp-mbox-mngr", "mail_users", "status"),
    ("ispcp-htusers-mngr", "htaccess_users", "status"),
    ("ispcp-htgroups-mngr", "htaccess_groups", "status"),
)

BOLD, UNDERLINE, RED, GREEN, YELLOW, BLUE, RESET = (
    "\x1b[1m",
    "\x1b[4m",
    "\x1b[1;31m",
    "\x1b[1;32m",
    "\x1b[1;33m",
    "\x1b[1;34m",
    "\x1b[0m",
)


def install(target_root: Path, world: Any = None) -> Path:
    """Write the stand-in into the target's engine/setup (called by the sandbox world builder)."""
    path = Path(target_root) / SCRIPT_REL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!{sys.executable}\n{HEADER}\n"
        "import sys\n\n"
        f"{PACKAGE_PATH}\n"
        "from ispcp_lib.sandbox.update_standin import main\n\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    os.chown(path, 0, 0)
    path.chmod(0o700)
    return path


class Failed(Exception):
    """Ends the update with exit status `code` after printing `message` (as exit_msg does)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Update:
    def __init__(self, root: Path, socket: str | None, scale: float) -> None:
        from ispcp_lib.facts.ispcp_conf import IspcpConf

        self.root = root
        self.socket = socket
        self.scale = scale
        self.conf_path = root / "etc/ispcp/ispcp.conf"
        if not self.conf_path.is_file():
            raise Failed("FATAL: Can't load the ispcp.conf file")  # ispcp_common_code.pl:53
        self.conf = IspcpConf.load(self.conf_path)
        self.debug = (self.conf.get("DEBUG") or "0").strip() == "1"
        self.db: Any = None
        self._midline = False

    # -- terminal ------------------------------------------------------------------------------
    def out(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if text:
            self._midline = not text.endswith("\n")

    def ask(self, question: str, secret: bool = False) -> str:
        self.out(question)
        fd = sys.stdin.fileno()
        old = None
        if secret and os.isatty(fd):
            old = termios.tcgetattr(fd)
            new = termios.tcgetattr(fd)
            new[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSADRAIN, new)
        try:
            line = sys.stdin.readline()
        finally:
            if old is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, old)
                self.out("\n")
        if line == "":  # Perl's <STDIN> at end of input: chomp(undef), the script stops on its error
            raise Failed(FATAL.format(red=RED, reset=RESET), 1)
        return line.rstrip("\n")

    def query(self, text: str, secret: bool = False) -> str:
        """Query.pm's pr(): the question wrapped at 72 columns with a tab in front of each line (Query.pm:169)."""
        lines = textwrap.wrap(text.rstrip(), width=63, break_on_hyphens=False)  # 71 columns minus the tab
        self.out("\n")  # spacer(), Query.pm:125
        return self.ask("\t" + "\n\t".join(lines) + " ", secret)

    def clear(self) -> None:
        self.out("\x1b[H\x1b[2J")

    def title(self, text: str) -> None:
        self.out(f"\n\t{BOLD}{text}{RESET}\n\n")

    def subtitle(self, text: str) -> None:
        self.out(f"\t{text:<60}")

    def status(self, ok: bool) -> None:
        self.out(f"{GREEN}[ Done ]{RESET}\n" if ok else f"{RED}[ Failed ]{RESET}\n")

    def dbg(self, text: str) -> None:
        if self.debug:
            safe = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            self.out(("\n" if self._midline else "") + f"\t{BLUE}[DEBUG]{RESET} {safe}\n")

    def path(self, logical: str) -> Path:
        return self.root / logical.lstrip("/")

    # -- dialog --------------------------------------------------------------------------------
    def dialog(self) -> None:
        self.clear()
        self.out(
            f"\n\t{BOLD}{UNDERLINE}Welcome to ispCP '{self.conf.get('Version')}' Update Dialog.{RESET}\n\n"
            "\tThis program will update your current ispCP OMEGA installation on this\n"
            "\tserver.\n\tPlease make sure you did a backup of all your server data.\n\n"
            f"\t{BLUE}[NOTICE] {RESET}During the migration process some or all services might require to\n"
            "\tbe shut down.\n\n"
            f"\t{YELLOW}[WARNING] {RESET}Only services that are not marked with 'NO' in your ispcp.conf\n"
            "\tconfiguration file will be processed by this program.\n\n"
        )  # ispcp-update:109-122
        self._yes_no("\tDo you want to continue ? [Y/n]: ")  # ispcp-update:125
        self.clear()
        self.out(
            f"\n\t{BLUE}[NOTICE] {RESET}Make sure you have read and performed all steps from\n"
            "\tdocs/distro/INSTALL document (where distro is your linux distribution).\n\n"
        )  # ispcp-update:151-154
        while True:
            answer = self.ask("\tDo you want to continue ? [Y/n/?]: ").strip().lower()  # ispcp-update:162
            if answer == "?":  # ispcp-update:157-160
                self.out(
                    "\n\tOptions:\n\t\ty : Continue the update\n\t\tn : Abort and exit\n"
                    "\t\ts : Select specific tasks to perform (Not yet implemented)\n\n"
                )
                continue
            if answer in ("", "y", "yes"):
                return
            if answer in ("n", "no"):  # ispcp-update:169-172
                raise Failed(f"\n\t{BLUE}[NOTICE] {RESET}The update process was aborted by user...", 0)

    def _yes_no(self, question: str) -> None:
        while True:
            answer = self.ask(question).strip().lower()
            if answer in ("", "y", "yes"):
                return
            if answer in ("n", "no"):  # ispcp-update:132-135
                raise Failed(f"\n\t{BLUE}[NOTICE] {RESET}The update process was aborted by user...", 0)

    # -- configuration -------------------------------------------------------------------------
    def load_old_conf(self) -> Any:
        """load_old_ispcp_cfg (ispcp-update:182-206): the default path, asked for only when it cannot be loaded."""
        from ispcp_lib.core.errors import InputError
        from ispcp_lib.facts.ispcp_conf import IspcpConf

        self.subtitle("Loading old ispCP configuration file:")
        logical = DEFAULT_OLD_CONF
        while True:
            real = self.path(logical) if logical.startswith("/") else self.root / "var/www/ispcp/engine/setup" / logical
            try:
                if real.is_file():
                    self.old_conf_path = real
                    self.status(True)
                    return IspcpConf.load(real)
            except InputError:
                pass
            # get_file's error, shown only with DEBUG (ispcp_common_methods.pl:483)
            self.dbg(f"push_el() sub_name: get_file(), msg: [ERROR] File '{logical}' does not exist !")
            logical = self.ask(  # ispcp-update:194-195
                "\n\n\tPlease enter path to your ispcp.old.conf [/etc/ispcp/ispcp.old.conf]: "
            ).strip()

    def merge(self, old: Any) -> None:
        """The real update_ispcp_cfg: old values win for every key the new file has, except the version keys."""
        self.subtitle("Update ispCP configuration file:")
        for key, value in old.values.items():
            if key in NOT_MERGED or key not in self.conf.values:
                continue
            if self.conf.get(key) != value:
                self.conf.set(key, value)
        self._store_conf()
        self.status(True)

    def _store_conf(self) -> None:
        from ispcp_lib.core.fileops import atomic_write

        atomic_write(self.conf_path, self.conf.text())

    def check_conf(self) -> None:
        """check_ispcp_cfg_file and cfg_recovery_process (ispcp-update:257-427)."""
        self.subtitle("Check ispCP configuration file:")
        empty = sorted(k for k, v in self.conf.values.items() if (v or "") == "" and k not in MAY_BE_EMPTY)
        if not empty:
            self.status(True)
            return
        if len(empty) >= 3:
            self.out(
                f"\n\n\t{YELLOW}[WARNING] {RESET}Your ispCP configuration file has several settings set\n"
                "\tto an empty value!\n"
            )  # ispcp-update:333-335
            answer = self.ask("\n\tAre you sure you have installed ispCP ? [Y/n]: ").strip().lower()  # :338
            if answer == "n":
                raise Failed(
                    f"\n\t{BLUE}[NOTICE] {RESET}The program ends now!\n\tPlease, run "
                    f"'{self.conf.get('ROOT_DIR')}/engine/setup/ispcp-setup' instead!\n"
                    + FATAL.format(red=RED, reset=RESET)
                )  # ispcp-update:342-346
        self.out(
            f"\n\n\t{YELLOW}[WARNING] {RESET}Your ispCP configuration file has missing parameters!\n"
            "\tThe update script will switch to recovery/upgrade mode now...\n"
        )  # ispcp-update:349-351
        self._yes_no("\n\tDo you want to continue [Y/n]: ")  # ispcp-update:354
        hostname = self.conf.get("SERVER_HOSTNAME") or "localhost"
        for key in empty:
            if key not in ASK:
                self._store_conf()
                raise Failed(
                    f"\n\t{BLUE}[NOTICE] {RESET}The setting '{key}' can't be handle by\n\tthe recovery process!"
                    f"\n\n\tPlease, set it manually in your {DEFAULT_OLD_CONF}and\n\tre-run this script.\n\n"
                    "\tThe program will end now !\n" + FATAL.format(red=RED, reset=RESET)
                )  # ispcp-update:395-400
            question, default = ASK[key]
            shown = (default or "").format(hostname=hostname)
            while True:
                answer = self.query(question.format(default=shown)).strip() or shown
                if answer:
                    break
                self.out(f"\n\t{RED}[ERROR] {RESET}E-mail address not valid!\n")  # Query.pm:85
            if key == "LOCAL_DNS_RESOLVER":  # ask_resolver, ispcp-setup-methods.pl:468-469
                answer = "no" if answer.lower() in ("n", "no") else "yes"
            self.conf.set(key, answer)
        self._store_conf()
        self.out(
            f"\n\t{BLUE}[NOTICE] {RESET} The recovery/upgrade process ended successfully!\n\tThe update "
            "process will continue normally now...\n\n"
        )  # ispcp-update:416-418
        self.ask("\tPlease, type 'Enter' to continue...")  # ispcp-update:420

    # -- database ------------------------------------------------------------------------------
    def keys(self) -> Any:
        from ispcp_lib.core.errors import InputError
        from ispcp_lib.ispcp import keyfiles

        paths = keyfiles.layout_paths(
            self.conf.get("ROOT_DIR") or "/var/www/ispcp",
            self.conf.get("GUI_ROOT_DIR") or None,
            self.conf.get("CONF_DIR") or "/etc/ispcp",
        )
        for layout in ("keys_conf", "perl_engine"):
            real = self.path(paths[layout])
            if real.is_file():
                try:
                    return keyfiles.parse_keyfile(layout, real.read_text(errors="surrogateescape"), paths[layout])
                except InputError:
                    self.dbg("push_el() sub_name: decrypt_db_password(), msg: [ERROR] KEY or IV has invalid length")
                    raise Failed(FATAL.format(red=RED, reset=RESET), 255) from None
        # require 'ispcp-db-keys.pl' (ispcp_common_code.pl:41) without the file: Perl's own message
        root_dir = self.conf.get("ROOT_DIR") or "/var/www/ispcp"
        raise Failed(f"Can't locate ispcp-db-keys.pl in @INC at {root_dir}/engine/ispcp_common_code.pl line 41.", 2)

    def connect(self) -> None:
        """doSQL's connection (ispcp_common_methods.pl:259-269): on failure the DSN is pushed on the error
        stack, printed only with DEBUG, and the step fails with exit_msg's FATAL text."""
        import pymysql

        from ispcp_lib.core.errors import InputError
        from ispcp_lib.ispcp import crypto as crypto

        ks = self.keys()
        user = self.conf.get("DATABASE_USER") or "root"
        host = self.conf.get("DATABASE_HOST") or "localhost"
        name = self.conf.get("DATABASE_NAME") or "ispcp"
        try:
            password = crypto.decrypt_db_password(self.conf.get("DATABASE_PASSWORD") or "", ks.key, ks.iv, strict=False)
        except InputError as exc:
            if "invalid length" in exc.problem:  # ispcp_common_methods.pl:1772-1778
                self.dbg("push_el() sub_name: decrypt_db_password(), msg: [ERROR] KEY or IV has invalid length")
                self.status(False)
                raise Failed(FATAL.format(red=RED, reset=RESET), 255) from None
            password = ""
        try:
            self.db = pymysql.connect(
                unix_socket=self.socket,
                user=user,
                password=password.encode("utf-8", "surrogateescape"),
                database=name,
                autocommit=True,
                connect_timeout=10,
            )
        except pymysql.MySQLError:
            dsn = f"DBI:mysql:{name}:{host} {user} {password}"
            self.dbg(f"push_el() sub_name: doSQL(), msg: [ERROR] Unable to connect SQL server with current DSN: {dsn}")
            self.status(False)
            raise Failed(FATAL.format(red=RED, reset=RESET), 255) from None

    def sql(self, query: str, args: Any = None) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())

    # -- services ------------------------------------------------------------------------------
    def ftp(self) -> None:
        """setup_ftpd's update branch (ispcp-setup-methods.pl:2416-2476): the working file's login, checked;
        when it fails, a warning and the FTP user and password questions."""
        from ispcp_lib.facts import proftpd

        self.subtitle("ispCP ProFTPd configuration file:")
        conf_dir = self.conf.get("CONF_DIR") or "/etc/ispcp"
        working = f"{conf_dir}/proftpd/working/proftpd.conf"
        path = self.path(working)
        info = proftpd.parse(path.read_text(errors="replace")) if path.is_file() else None
        if info is not None:
            dsn = f"DBI:mysql:{self.conf.get('DATABASE_NAME') or 'ispcp'}:localhost {info.user} {info.password}"
            self.dbg(  # check_sql_connection, ispcp-setup-methods.pl:1000-1003
                "push_el() sub_name: check_sql_connection(), msg: Checking MySQL server connection with the "
                f"following DSN: {dsn}"
            )
            if self._vftp_ok(info.user or "vftp", info.password or ""):
                self.status(True)
                return
            self.out(
                "\n\t[WARNING] Unable to connect to the database with authentication information\n\tfound in "
                "your proftpd.conf file! We will create a new Ftpd Sql account.\n"
            )  # ispcp-setup-methods.pl:2444-2446
        else:
            self.out(
                f"\n\t{YELLOW}[WARNING] {RESET}Unable to find the Proftpd configuration file!"
                "\n\tThe program will create a new."
            )  # ispcp-setup-methods.pl:2451-2453
        user = self.query("Please enter ispCP FTP SQL user [vftp]: ").strip() or "vftp"  # Query.pm:67
        while True:
            first = self.query("Please enter ispCP OMEGA FTP SQL user password [auto generate]: ", True)  # Query.pm:70
            if first == "":
                self._new_vftp_password(user, info, path)
                return
            second = self.query("Please repeat ispCP OMEGA ftp SQL user password: ", True)  # Query.pm:71
            if first == second:
                self._set_vftp_password(user, first, info, path)
                self.status(True)
                return
            self.out(f"\n\t{RED}[ERROR] {RESET}Passwords do not match!\n")  # Query.pm:73

    def _vftp_ok(self, user: str, password: str) -> bool:
        import pymysql

        try:
            conn = pymysql.connect(
                unix_socket=self.socket or "",
                user=user,
                password=password,
                database=self.conf.get("DATABASE_NAME") or "ispcp",
                connect_timeout=10,
            )
        except pymysql.MySQLError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM ftp_users")
            return True
        except pymysql.MySQLError:
            return False
        finally:
            conn.close()

    def _new_vftp_password(self, user: str, info: Any, working: Path) -> None:
        """[auto generate] (ispcp-setup-methods.pl:316-320): a new password, shown once by printNotice."""
        import secrets as rnd
        import string

        password = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(18))
        self.out(f"\n\t{BLUE}[NOTICE] {RESET}ispCP ftp SQL user password set to: {password}\n")  # Query.pm:72
        self._set_vftp_password(user, password, info, working)

    def _set_vftp_password(self, user: str, password: str, info: Any, working: Path) -> None:
        """The new SQL account and both ProFTPd configs, as the real setup writes them."""
        from ispcp_lib.core.fileops import atomic_write
        from ispcp_lib.facts import proftpd

        for (host,) in self.sql("SELECT host FROM mysql.user WHERE user = %s", (user,)):
            self.sql("SET PASSWORD FOR %s@%s = PASSWORD(%s)", (user, host, password))
        ftpd = self.path(self.conf.get("FTPD_CONF_FILE") or "/etc/proftpd.conf")
        for path in (working, ftpd):
            if path.is_file() and proftpd.parse(path.read_text(errors="replace")) is not None:
                atomic_write(path, proftpd.with_password(path.read_text(errors="replace"), password))

    def services(self) -> None:
        self.title("Rebuilding all services configuration files")
        for name in (
            "ispCP crontab file:",
            "ispCP BIND9 main configuration file:",
            "ispCP PHP (fastcgi) configuration files:",
            "ispCP Apache main vhost file:",
            "ispCP Postfix configuration files:",
        ):
            self.subtitle(name)
            self.status(True)
        self.ftp()
        for name in ("ispCP Courier-Authentication:", "ispCP Rkhunter configuration:"):
            self.subtitle(name)
            self.status(True)

    # -- customers -----------------------------------------------------------------------------
    def manager_sleeps(self, manager: str) -> bool:
        from ispcp_lib.ispcp.engine_sleep import find_sleep_lines

        path = self.path(f"{self.conf.get('ROOT_DIR') or '/var/www/ispcp'}/engine/{manager}")
        if not path.is_file():
            return False
        return any(s.active for s in find_sleep_lines(manager, path.read_text(errors="replace")))

    def rebuild_customers(self) -> None:
        self.title("Rebuilding all customers configuration files")
        self.subtitle("Please wait, this may take some time:")
        for _manager, table, column in MANAGERS:
            self.sql(f"UPDATE `{table}` SET `{column}` = 'change' WHERE `{column}` = 'ok'")
        self.process_requests()
        self.status(True)

    def process_requests(self) -> None:
        """What ispcp-rqst-mngr does: each manager rebuilds its rows in status 'change' and sets them 'ok'.
        (The stand-in's vhost file then lists only the rebuilt domains: the update rebuilds all of them.)"""
        self.passwd = _read_ids(self.path("/etc/passwd"))
        self.groups = _read_ids(self.path("/etc/group"))
        self.vhosts: list[str] = []
        handlers: dict[str, Callable[[], int]] = {
            "ispcp-dmn-mngr": self.domains,
            "ispcp-sub-mngr": self.subdomains,
            "ispcp-alssub-mngr": lambda: self.simple("subdomain_alias", "subdomain_alias_status"),
            "ispcp-als-mngr": self.aliases,
            "ispcp-mbox-mngr": self.mailboxes,
            "ispcp-htusers-mngr": lambda: self.simple("htaccess_users", "status"),
            "ispcp-htgroups-mngr": lambda: self.simple("htaccess_groups", "status"),
        }
        started = time.monotonic()
        for manager, _table, _column in MANAGERS:
            self.delay = self.scale if self.manager_sleeps(manager) else 0.0
            count = handlers[manager]()
            self.dbg(f"{manager}: {count} item(s), {self.delay:.3f} s pause per item")
        sites = self.conf.get("APACHE_SITES_DIR") or "/etc/apache2/sites-available"
        vhost_file = self.path(f"{sites}/ispcp.conf")
        vhost_file.parent.mkdir(parents=True, exist_ok=True)
        from ispcp_lib.core.fileops import atomic_write

        atomic_write(vhost_file, _vhost_header() + "".join(self.vhosts), 0o644, 0, 0)
        self.dbg(f"customers rebuilt in {time.monotonic() - started:.2f} s")

    def pause(self) -> None:
        if self.delay > 0:
            time.sleep(self.delay)

    def _ids(self, uid: int, gid: int) -> tuple[str, str, str | None]:
        prefix = self.conf.get("APACHE_SUEXEC_USER_PREF") or "vu"
        user, group = f"{prefix}{uid}", f"{prefix}{gid}"
        if self.passwd.get(user) != uid or self.groups.get(group) != gid:
            return user, group, f"chown: invalid user: '{user}:{group}'"
        return user, group, None

    def domains(self) -> int:
        www = self.conf.get("APACHE_WWW_DIR") or "/var/www/virtual"
        starters = self.conf.get("PHP_STARTER_DIR") or "/var/www/fcgi"
        rows = self.sql(
            "SELECT d.domain_id, d.domain_name, d.domain_uid, d.domain_gid, COALESCE(i.ip_number, %s) "
            "FROM domain d LEFT JOIN server_ips i ON i.ip_id = d.domain_ip_id "
            "WHERE d.domain_status = 'change' ORDER BY d.domain_id",
            (self.conf.get("BASE_SERVER_IP"),),
        )
        self.domain_ids = {}
        for dom_id, name, uid, gid, ip in rows:
            user, group, error = self._ids(int(uid), int(gid))
            self.domain_ids[dom_id] = (name, ip, user, group)
            home = self.path(f"{www}/{name}")
            if error is None:
                error = _chown_tree(home, int(uid), int(gid)) or _chown_tree(
                    self.path(f"{starters}/{name}"), int(uid), int(gid), missing_ok=True
                )
            if error is not None:
                self.out(f"\n\t{RED}[ERROR]{RESET} ispcp-dmn-mngr: {name}: {error}\n")
            self.vhosts.append(_vhost(name, ip, f"{www}/{name}/htdocs", user, group, "dmn"))
            self.sql("UPDATE domain SET domain_status = %s WHERE domain_id = %s", (error or "ok", dom_id))
            self.dbg(f"ispcp-dmn-mngr: {name} -> {'ok' if error is None else 'error'}")
            self.pause()
        return len(rows)

    def subdomains(self) -> int:
        www = self.conf.get("APACHE_WWW_DIR") or "/var/www/virtual"
        rows = self.sql(
            "SELECT subdomain_id, domain_id, subdomain_name, subdomain_mount FROM subdomain "
            "WHERE subdomain_status = 'change' ORDER BY subdomain_id"
        )
        for sub_id, dom_id, label, mount in rows:
            dom = getattr(self, "domain_ids", {}).get(dom_id)
            status = "ok"
            if dom is None:
                status = f"parent domain {dom_id} not found"
            else:
                name, ip, user, group = dom
                docroot = f"{www}/{name}{mount or '/' + label}/htdocs"
                self.vhosts.append(_vhost(f"{label}.{name}", ip, docroot, user, group, "sub"))
                path = self.path(docroot)
                if not path.exists():
                    path.mkdir(parents=True)
                    uid_gid = (self.passwd.get(user), self.groups.get(group))
                    if None not in uid_gid:
                        os.chown(path, *uid_gid)
            self.sql("UPDATE subdomain SET subdomain_status = %s WHERE subdomain_id = %s", (status, sub_id))
            self.dbg(f"ispcp-sub-mngr: {label} -> {status}")
            self.pause()
        return len(rows)

    def aliases(self) -> int:
        www = self.conf.get("APACHE_WWW_DIR") or "/var/www/virtual"
        rows = self.sql(
            "SELECT alias_id, domain_id, alias_name, alias_mount FROM domain_aliasses "
            "WHERE alias_status = 'change' ORDER BY alias_id"
        )
        for als_id, dom_id, alias, mount in rows:
            dom = getattr(self, "domain_ids", {}).get(dom_id)
            status = "ok" if dom is not None else f"parent domain {dom_id} not found"
            if dom is not None:
                name, ip, user, group = dom
                self.vhosts.append(_vhost(alias, ip, f"{www}/{name}{mount}/htdocs", user, group, "als"))
            self.sql("UPDATE domain_aliasses SET alias_status = %s WHERE alias_id = %s", (status, als_id))
            self.dbg(f"ispcp-als-mngr: {alias} -> {status}")
            self.pause()
        return len(rows)

    def mailboxes(self) -> int:
        mail_dir = self.conf.get("MTA_VIRTUAL_MAIL_DIR") or "/var/mail/virtual"
        uid = int(self.conf.get("MTA_MAILBOX_UID") or 1004)
        gid = int(self.conf.get("MTA_MAILBOX_GID") or 8)
        rows = self.sql(
            "SELECT mail_id, mail_acc, mail_addr, mail_type FROM mail_users WHERE status = 'change' ORDER BY mail_id"
        )
        maps = []
        self.path(mail_dir).mkdir(parents=True, exist_ok=True)
        for mail_id, acc, addr, mail_type in rows:
            domain = str(addr).split("@", 1)[1] if "@" in str(addr) else ""
            if "mail" in str(mail_type) and domain:
                box = self.path(f"{mail_dir}/{domain}/{acc}")
                for p in (box.parent, box, box / "cur", box / "new", box / "tmp"):
                    if not p.exists():
                        p.mkdir(mode=0o700)
                        os.chown(p, uid, gid)
                maps.append(f"{addr}\t{domain}/{acc}/\n")
            self.sql("UPDATE mail_users SET status = 'ok' WHERE mail_id = %s", (mail_id,))
            self.dbg(f"ispcp-mbox-mngr: {addr}")
            self.pause()
        hash_file = self.path(self.conf.get("MTA_VIRTUAL_MAILBOX_HASH") or "/etc/postfix/ispcp/mailboxes")
        hash_file.parent.mkdir(parents=True, exist_ok=True)
        hash_file.write_text("".join(maps))
        return len(rows)

    def simple(self, table: str, column: str) -> int:
        rows = self.sql(f"SELECT COUNT(*) FROM `{table}` WHERE `{column}` = 'change'")
        count = int(rows[0][0]) if rows else 0
        for _ in range(count):
            self.pause()
        self.sql(f"UPDATE `{table}` SET `{column}` = 'ok' WHERE `{column}` = 'change'")
        return count

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> None:
        if self.path(BACKUP_LOCK).exists():  # update_startup, ispcp-update:649-654: exit_msg(0, …)
            raise Failed(f"\n\t{BLUE}[NOTICE] {RESET}Backup engine is currently running. Aborting...\n", 0)
        self.dialog()
        self.clear()
        self.title("Starting ispCP update")
        self.subtitle("Stopping services: ")
        self.status(True)
        self.title("ispCP main configuration file")
        old = self.load_old_conf()
        self.merge(old)
        self.check_conf()
        self.debug = (self.conf.get("DEBUG") or "0").strip() == "1" or self.debug
        self.title("ispCP database")
        self.subtitle("Update ispCP database schema:")
        self.connect()
        self.status(True)
        self.services()
        self.title("Rebuilding all GUI configuration files")
        self.subtitle("ispCP GUI configuration files:")
        self.status(True)
        self.rebuild_customers()
        self.title("Additional tasks")
        self.title("Permissions setup")
        self.subtitle("Setting permissions:")
        self.status(True)
        self.title("Finishing update")
        self.subtitle("Starting services: ")
        self.status(True)
        self.out(
            f"{BOLD}{UNDERLINE}\n\tCongratulations, you updated ispCP OMEGA'{self.conf.get('Version')}' "
            f"successfully!\n\n{RESET}\tType http://{self.conf.get('BASE_SERVER_VHOST')} into your browser to "
            "log in\n\tto your panel.\n\n"
        )  # update_shutdown, ispcp-update:795-800


def _read_ids(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                out[parts[0]] = int(parts[2])
    return out


def _chown_tree(top: Path, uid: int, gid: int, missing_ok: bool = False) -> str | None:
    if not top.exists():
        return None if missing_ok else f"{top.name}: No such file or directory"
    os.lchown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    return None


def _vhost_header() -> str:
    return (
        "# ispCP OMEGA customers' virtual hosts.\n"
        "# Written by the sandbox's ispcp-update stand-in (TEST SCAFFOLDING, not ispCP).\n\n"
    )


def _vhost(name: str, ip: str, docroot: str, user: str, group: str, kind: str) -> str:
    return (
        f"# httpd [{name}] {kind} entry BEGIN.\n"
        f"<VirtualHost {ip}:80>\n"
        f"    ServerName {name}\n"
        f"    ServerAlias www.{name}\n"
        f"    DocumentRoot {docroot}\n"
        f"    SuexecUserGroup {user} {group}\n"
        "</VirtualHost>\n"
        f"# httpd [{name}] {kind} entry END.\n\n"
    )


def sandbox_root(script: str, rel: str) -> Path | None:
    """The sandbox target tree a stand-in was installed into (its path minus rel); None outside a world."""
    path = Path(script).absolute()
    root = path.parents[len(Path(rel).parts) - 1]
    if path != root / rel or root == Path("/") or not (root.parent / WORLD_MANIFEST).is_file():
        return None
    return root if (root / "etc/ispcp").is_dir() else None


def _refusal(what: str) -> int:
    sys.stderr.write(
        f"This is the sandbox's {what} stand-in (TEST SCAFFOLDING, not ispCP).\n"
        "It only runs inside a sandbox world's target tree.\n"
    )
    return 2


def _scale() -> float:
    try:
        return float(os.environ.get(ENV_SCALE, "1.0"))
    except ValueError:
        return 1.0


def _socket(root: Path) -> str:
    """The tree's MariaDB socket, where Debian's client looks by default."""
    for rel in ("var/run/mysqld/mysqld.sock", "run/mysqld/mysqld.sock"):
        if (root / rel).exists():
            return str(root / rel)
    return str(root / "run/mysqld/mysqld.sock")


def _finish(work: Callable[[Update], None], root: Path) -> int:
    update = None
    try:
        update = Update(root, _socket(root), _scale())
        work(update)
    except Failed as exc:
        sys.stdout.write(f"\n{exc}\n")
        sys.stdout.flush()
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        if update is not None and update.db is not None:
            update.db.close()
    return 0


def request_manager_main(root: Path | None = None) -> int:
    """The sandbox's ispcp-rqst-mngr: process the pending requests (rows in status 'change').

    root: the tree, given by the relay of a world inside a lab server (standin_relay); else found from
    the program's own path."""
    root = root or sandbox_root(sys.argv[0] if sys.argv else "", MANAGER_REL)
    if root is None:
        return _refusal("ispcp-rqst-mngr")

    def work(update: Update) -> None:
        update.connect()
        update.process_requests()

    return _finish(work, root)


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """The sandbox's ispcp-update; root as for request_manager_main."""
    root = root or sandbox_root(sys.argv[0] if sys.argv else "", SCRIPT_REL)
    if root is None:
        return _refusal("ispcp-update")
    script_dir = root / Path(SCRIPT_REL).parent
    if Path.cwd().resolve() != script_dir.resolve():  # the guide: always start it from engine/setup
        sys.stderr.write(
            f"{RED}[ERROR]{RESET} ispcp-update must be started from its own directory:\n"
            "\tcd /var/www/ispcp/engine/setup && ./ispcp-update\n"
        )
        return 2
    return _finish(Update.run, root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
