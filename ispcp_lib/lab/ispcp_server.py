"""A real ispCP Omega server in a lab host: packages, the release's `make install`, its own `ispcp-setup`.

Three cached layers over the minbase image (ispcp_lib/lab/images.py):
  ispcp-base            the Squeeze package list with bookworm substitutes + the system adaptations
  ispcp-<v>-install     the release tarball, patched (SOURCE_PATCHES), `make install`, `cp -R /tmp/ispcp/* /`
  ispcp-<v>-setup-<tag> `engine/setup/ispcp-setup` answered through a pseudo-terminal, services stopped
Every adaptation below names the symptom it fixes (measured facts: ../shared/ispcp-reference/real-server-lab.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ispcp_lib.lab.host import LabError, NamespaceHost
from ispcp_lib.lab.images import ImageSpec, ensure_image, log

# -- packages ---------------------------------------------------------------------------------------
# docs/Debian/debian-packages-squeeze, with bookworm's names. Left out (ispcp-setup tolerates their
# absence): apache2-mpm-worker, libapache2-mod-fastcgi (not packaged; fcgid is used), awstats
# (answered "no"), rkhunter, chkrootkit, php5-adodb (no PHP 8 package), and the
# library/version packages folded into others (apache2.2-common, libperl5.10, perl-modules,
# libmysqlclient16, libdigest-md5-perl: part of perl).
# php-mcrypt (PECL) stands in for php5-mcrypt: updDB.php (ispcp-update) stops with "PHP extension
# 'mcrypt' not loaded!" without it, as the GUI's decrypt_db_password() needs it.
ISPCP_PACKAGES = tuple(
    """
    apache2 apache2-suexec-pristine apache2-utils libapache2-mod-fcgid bash bind9 dnsutils bzip2
    courier-authdaemon courier-base courier-imap courier-pop maildrop courier-authlib-userdb
    diffutils gcc libc6-dev make patch gzip iptables ispell
    libberkeleydb-perl libcrypt-blowfish-perl libcrypt-cbc-perl libcrypt-passwdmd5-perl libdate-calc-perl
    libdate-manip-perl libdatetime-perl libdatetime-timezone-perl libdbd-mysql-perl libdbi-perl
    libfile-copy-recursive-perl libfile-mimeinfo-perl libio-stringy-perl libmail-sendmail-perl
    libmailtools-perl libmcrypt4 libmime-tools-perl libnet-dns-perl libnet-libidn-perl libnet-netmask-perl
    libnet-smtp-server-perl libsasl2-2 libsasl2-modules libsnmp-session-perl libterm-readkey-perl
    libterm-readpassword-perl libhtml-parser-perl libtimedate-perl
    locales lsb-base lsb-release lynx xz-utils original-awk perl perl-base
    mariadb-client mariadb-server mysql-common
    php-pear php-cli php-cgi php-mysql php-gd php-mcrypt
    policyd-weight postfix postgrey procmail proftpd-basic proftpd-mod-mysql sasl2-bin
    openssh-server openssh-client rsync tar wget net-tools cron rsyslog procps iproute2 passwd findutils
    """.split()
)

ISPCP_PRESEED = (
    "postfix postfix/main_mailer_type select Internet Site",
    "postfix postfix/mailname string srv01.ispcp.test",
    "courier-base courier-base/webadmin-configmode boolean false",
    "courier-base courier-base/maildirpath note",
    "proftpd-basic shared/proftpd/inetd_or_standalone select standalone",
)

# Bookworm's system, adapted where the 2010 code expects Squeeze (each line: the symptom it fixes).
SYSTEM_ADAPTATIONS = r"""
set -e
# ispCP calls /usr/bin/php5 (CMD_PHP) and php5-cgi (FastCGI starter): PHP 8.2 under the old names.
ln -sf php /usr/bin/php5; ln -sf php-cgi /usr/bin/php5-cgi
# setup's `a2dismod fastcgi_ispcp` fails: mod_fastcgi is no longer packaged. Inert, never enabled.
printf '# placeholder: mod_fastcgi is not packaged on bookworm; ispCP uses fcgid\n' \
  > /etc/apache2/mods-available/fastcgi.load
# ProFTPD: "unknown directive IdentLookups" (ispCP's proftpd.conf): mod_ident is commented out.
sed -i 's/^#\s*\(LoadModule mod_ident.c\)/\1/' /etc/proftpd/modules.conf
# Bind never starts: ispCP calls /etc/init.d/bind9 (CMD_NAMED); bookworm renamed it `named`.
[ -e /etc/init.d/bind9 ] || ln -s named /etc/init.d/bind9
# The 2010 code expects MySQL 5.1 behaviour (empty sql_mode) and MyISAM tables (the guide's binary copy).
printf '[mysqld]\nsql_mode = ""\ndefault-storage-engine = MyISAM\n' > /etc/mysql/mariadb.conf.d/99-ispcp-lab.cnf
# rsyslog inside a namespace cannot read the kernel log; /dev/log is needed by init scripts and policyd-weight.
sed -i 's/^module(load="imklog"/#&/' /etc/rsyslog.conf
"""


def _base_post(host: NamespaceHost) -> None:
    host.sh(SYSTEM_ADAPTATIONS)


ISPCP_BASE = ImageSpec(
    name="ispcp-base",
    packages=ISPCP_PACKAGES,
    preseed=ISPCP_PRESEED,
    post=_base_post,
    recipe="1",
)


# -- the release: source patches ------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePatch:
    """A minimal change to the release tree, with the symptom that made it necessary."""

    symptom: str
    paths: tuple[str, ...]  # globs relative to the release's top folder
    apply: Callable[[str], str]
    optional: bool = False  # the files are not in every release (1.0.5 has no ispCP/Registry.php)


def _literal(old: str, new: str) -> Callable[[str], str]:
    def fix(text: str) -> str:
        if old not in text:
            raise LabError(f"patch does not apply: {old!r} not found")
        return text.replace(old, new)

    return fix


def _regex(pattern: str, new: str) -> Callable[[str], str]:
    def fix(text: str) -> str:
        out, n = re.subn(pattern, new, text)
        if not n:
            raise LabError(f"patch does not apply: /{pattern}/ not found")
        return out

    return fix


def _where_present(pattern: str, new: str) -> Callable[[str], str]:
    """A regex fix for text that only some releases have (1.0.5's Makefiles test the Debian release)."""

    def fix(text: str) -> str:
        return re.sub(pattern, new, text)

    return fix


def _prepend_include(header: str) -> Callable[[str], str]:
    def fix(text: str) -> str:
        return text if f"#include <{header}>" in text else f"#include <{header}>\n" + text

    return fix


def _apache_options(text: str) -> str:
    """`Options -Indexes Includes FollowSymLinks` -> `Options -Indexes +Includes +FollowSymLinks`."""

    def fix_line(m: re.Match[str]) -> str:
        words = m.group(2).split()
        if any(w[0] in "+-" for w in words) and not all(w[0] in "+-" for w in words):
            words = [w if w[0] in "+-" else "+" + w for w in words]
        return m.group(1) + " ".join(words)

    return re.sub(r"^(\s*Options\s+)([^\n#]+?)\s*$", fix_line, text, flags=re.M)


def _daemon_pidfile(text: str) -> str:
    old = "fclose(file);"
    if old not in text:
        raise LabError("ispcp_daemon.c: pid file block not found")
    text = text.replace(old, "fclose(file);\n\t\tchmod(pidfile_path, 0644);", 1)
    return text if "#include <sys/stat.h>" in text else "#include <sys/stat.h>\n" + text


SOURCE_PATCHES: tuple[SourcePatch, ...] = (
    SourcePatch(
        "make install: 'SIGCHLD' undeclared in the daemon (newer glibc headers no longer pull in signal.h)",
        ("tools/daemon/ispcp_daemon.c", "tools/daemon/signal-handlers.c"),
        _prepend_include("signal.h"),
    ),
    SourcePatch(
        "the daemon cannot be stopped (later 'Text file busy' in the update): umask(0) leaves a world-writable "
        "pid file that start-stop-daemon refuses to trust; make it 0644",
        ("tools/daemon/ispcp_daemon.c",),
        _daemon_pidfile,
    ),
    SourcePatch(
        "setup dies: 'regenerate_key' is not a recognized argument (Crypt::CBC 3.x); literal_key keeps the "
        "ciphertexts byte-identical to the GUI's",
        ("engine/ispcp_common_methods.pl", "engine/messenger/ispcp-arpl-msgr"),
        _regex(r"'regenerate_key'\s*=>\s*0", "'literal_key' => 1"),  # 1.0.5 aligns with two blanks
    ),
    SourcePatch(
        "Apache 2.4 refuses 'Either all Options must start with + or -, or no Option may'",
        ("configs/debian/apache/00_master.conf", "configs/debian/apache/parts/*.tpl"),
        _apache_options,
    ),
    SourcePatch(
        "Postfix 'starts' but is not running: daemon_directory moved to /usr/lib/postfix/sbin",
        ("configs/debian/postfix/main.cf",),
        _literal(
            "daemon_directory             = /usr/lib/postfix\n",
            "daemon_directory             = /usr/lib/postfix/sbin\n",
        ),
    ),
    SourcePatch(
        "1.0.5 setup: File '/etc/ispcp/apache/fastcgi_ispcp.conf' does not exist: its Makefiles install the "
        "FastCGI and ProFTPd configs only for Debian releases up to squeeze (lsb_release -c); bookworm as squeeze",
        ("configs/debian/apache/Makefile", "configs/debian/proftpd/Makefile"),
        _where_present(r"\[ \$\(RELEASE\) = 'squeeze' \]", "[ $(RELEASE) = 'squeeze' ] || [ $(RELEASE) = 'bookworm' ]"),
    ),
    SourcePatch(
        "1.0.5 engine: 'SocketPath cannot occur within <VirtualHost> section' (mod_fcgid 2.3): its vhost parts "
        "include fcgid_ispcp.conf in every vhost; the module's own load already reads it (as 1.0.7's parts do)",
        ("configs/debian/apache/parts/*_php2_entry.tpl",),
        _where_present(r"\n[ \t]*Include \{MODS_DIR\}/fcgid_ispcp\.conf", ""),
    ),
    # ispcp-update runs engine/setup/updDB.php, which loads the PHP 5 GUI library under PHP 8.2:
    SourcePatch(
        "update: 'Update ispCP database schema ... Failed': array_key_exists() on an object (PHP 8)",
        ("gui/include/ispCP/Registry.php",),
        _literal("array_key_exists($index, self::getInstance())", "property_exists(self::getInstance(), $index)"),
        optional=True,
    ),
    SourcePatch(
        "update: updDB.php fails to compile: string offsets with braces $s{$i} were removed in PHP 8",
        ("gui/include/net_idna/idna_convert.class.php",),
        _regex(r"(\$\w+)\{(\$[^{}]*)\}", r"\1[\2]"),
    ),
    SourcePatch(
        "update: updDB.php fails to compile: '=& new' is a parse error since PHP 7",
        ("gui/include/Net_DNS/DNS/RR.php",),
        _regex(r"=\s*&\s*new\b", "= new"),
        optional=True,
    ),
)
# Bump when a patch changes what it writes without changing which files and symptoms it reports.
PATCH_RECIPE = "2"


@functools.cache
def patch_digest(tarball: Path) -> str:
    """What patch_tree does to this release (its report lines, hashed): the install layer's cache key, so a
    patch for another release leaves this one's cached images alone."""
    with tempfile.TemporaryDirectory(prefix="ispcp-lab-patch-") as tmp:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="fully_trusted")
        lines = patch_tree(next(Path(tmp).glob("ispcp-omega-*")))
    return hashlib.sha256("\n".join([PATCH_RECIPE, *lines]).encode()).hexdigest()[:8]


def patch_tree(top: Path) -> list[str]:
    """Applies SOURCE_PATCHES to an extracted release; returns one line per changed file."""
    done = []
    for patch in SOURCE_PATCHES:
        files = sorted({p for g in patch.paths for p in top.glob(g)})
        if not files and patch.optional:
            continue
        if not files:
            raise LabError(f"no file for patch: {patch.symptom}")
        for path in files:
            text = path.read_text(encoding="latin-1")
            new = patch.apply(text)
            if new != text:
                path.write_text(new, encoding="latin-1")
                done.append(f"{path.relative_to(top)}: {patch.symptom}")
    return done


def release_version(tarball: Path) -> str:
    """'1.0.7' from the tarball's top folder ispcp-omega-1.0.7/."""
    with tarfile.open(tarball) as tf:
        first = tf.next()
    m = re.match(r"ispcp-omega-([\w.]+)", first.name if first else "")
    if not m:
        raise LabError(f"{tarball}: not an ispCP Omega release tarball (top folder ispcp-omega-<version>/)")
    return m.group(1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_spec(tarball: Path, version_name: str | None = None) -> ImageSpec:
    tarball = Path(tarball).resolve()
    version = version_name or release_version(tarball)

    def post(host: NamespaceHost) -> None:
        src = host.root / "usr/local/src"
        src.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(src, filter="fully_trusted")
        top = next(src.glob("ispcp-omega-*"))
        for line in patch_tree(top):
            log(f"patched {line}")
        started = time.monotonic()
        inner = f"/usr/local/src/{top.name}"
        host.exec(["make", "install"], cwd=inner, env={"MAKEFLAGS": "-j2"})
        host.sh("cp -R /tmp/ispcp/* / && rm -rf /tmp/ispcp")
        log(f"make install + copy: {time.monotonic() - started:.0f} s")

    return ImageSpec(
        name=f"ispcp-{version}-install",
        parent=ISPCP_BASE,
        post=post,
        recipe=f"{_sha256(tarball)[:16]}-{patch_digest(tarball)}",
    )


# -- running ispcp-setup ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerIdentity:
    """What a lab server is set up with: its address, names and every password setup asks for."""

    address: str = "127.0.0.2"
    hostname: str = "srv01.ispcp.test"
    sql_root_password: str = "Root-pw-2010"
    vftp_password: str = "Vftp-pw-2010"
    pma_password: str = "Pma-pw-2010"
    admin_password: str = "Admin-pw-2010"
    tag: str = "srv01"

    @property
    def vhost(self) -> str:
        return f"admin.{self.hostname}"


def setup_answers(ident: ServerIdentity) -> list[tuple[str, str]]:
    """ispcp-setup's questions (normalised text a prompt contains) and the answers; most specific first."""
    return [
        ("Please enter a fully qualified hostname", ident.hostname),
        ("Are you sure you want to use this hostname?", "Y"),
        ("Please enter the system network address", ident.address),
        ("Please enter the domain name where ispCP OMEGA will be reachable on", ident.vhost),
        ("Please enter SQL server hostname", "localhost"),
        ("Please enter ispCP OMEGA SQL database name", "ispcp"),
        ("Please enter ispCP OMEGA SQL user name", "root"),
        ("Please enter ispCP OMEGA SQL password", ident.sql_root_password),
        ("Please repeat ispCP OMEGA SQL password", ident.sql_root_password),
        ("Please enter ispCP FTP SQL user", "vftp"),
        ("Please enter ispCP OMEGA FTP SQL user password", ident.vftp_password),
        ("Please repeat ispCP OMEGA ftp SQL user password", ident.vftp_password),
        ("Please enter ispCP OMEGA PMA control user password", ident.pma_password),
        ("Please repeat ispCP OMEGA PMA control user password", ident.pma_password),
        ("Please enter ispCP OMEGA PMA control user", "pma"),
        ("Please enter administrator login name", "admin"),
        ("Please enter administrator password", ident.admin_password),
        ("Please repeat administrator password", ident.admin_password),
        ("Please enter administrator e-mail address", f"admin@{ident.hostname}"),
        ("Secondary DNS server address IP", ""),
        ("Do you want allow the system resolver to use the local nameserver?", "Y"),
        ("Use MySQL Prefix?", "n"),
        ("Please select a Fast CGI module", "f"),
        ("Please enter Server's Timezone", "UTC"),
        ("Should AWStats be activated?", "no"),
        ("Would you really drop the current database?", "Y"),
        ("Do you want to continue?", "Y"),
        # 1.0.5's wording (engine/setup/ispcp-setup-methods.pl:128-770), where it differs from 1.0.7's
        ("Please enter system network address", ident.address),
        ("Please enter SQL server host.", "localhost"),
        ("Please enter system SQL database", "ispcp"),
        ("Please enter system SQL user", "root"),
        ("Please enter system SQL password", ident.sql_root_password),
        ("Please repeat system SQL password", ident.sql_root_password),
        ("Please enter ispCP ftp SQL user password", ident.vftp_password),
        ("Please repeat ispCP ftp SQL user password", ident.vftp_password),
        ("Please enter ispCP ftp SQL user", "vftp"),
        ("Please enter the domain name where ispCP OMEGA will run on", ident.vhost),
        ("IP of Secondary DNS", ""),
        ("Use MySQL Prefix", ""),
        ("Please enter ispCP phpMyAdmin Control user password", ident.pma_password),
        ("Please repeat ispCP phpMyAdmin Control user password", ident.pma_password),
        ("Please enter ispCP phpMyAdmin Control user", "pma"),
        ("FastCGI Version", "f"),
        ("Activate AWStats", "no"),
    ]


MARIADB_PREPARE = """
set -e
for i in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.1; done
mariadb <<'SQL'
ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('{pw}');
-- GRANT ... ON mysql.host fails (ispcp-setup, the PMA user): the table was removed in MariaDB 10.4.
-- The server still loads the table when it exists, so it must have MariaDB 10.3's structure.
CREATE TABLE IF NOT EXISTS mysql.host (
  Host char(60) binary DEFAULT '' NOT NULL, Db char(64) binary DEFAULT '' NOT NULL,
  Select_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Insert_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Update_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Delete_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Create_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Drop_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Grant_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  References_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Index_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Alter_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Create_tmp_table_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Lock_tables_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Create_view_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Show_view_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Create_routine_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Alter_routine_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Execute_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  Trigger_priv enum('N','Y') COLLATE utf8_general_ci DEFAULT 'N' NOT NULL,
  PRIMARY KEY Host (Host, Db)) ENGINE=MyISAM CHARACTER SET utf8 COLLATE utf8_bin;
DELETE FROM mysql.global_priv WHERE User='';
DROP DATABASE IF EXISTS test;
FLUSH PRIVILEGES;
SQL
"""

# Services in the order a booting server starts them (init scripts, as sysvinit on Squeeze would).
SERVICES = (
    "rsyslog",
    "mariadb",
    "ispcp_daemon",
    "ispcp_network",
    "bind9",
    "postgrey",
    "policyd-weight",
    "postfix",
    "courier-authdaemon",
    "courier-imap",
    "courier-pop",
    "proftpd",
    "apache2",
    "cron",
)


# Bookworm ships rsyslog without an init script (systemd only); the daemon forks by itself.
DIRECT_START = {"rsyslog": ["/usr/sbin/rsyslogd"]}


def start_services(host: NamespaceHost, services: tuple[str, ...] = SERVICES) -> dict[str, int]:
    """Starts each service's init script; returns the exit status of each (0 = started)."""
    status = {}
    for name in services:
        argv = DIRECT_START.get(name) or [f"/etc/init.d/{name}", "start"]
        if not (host.root / argv[0].lstrip("/")).exists():
            continue
        r = host.exec(argv, check=False, timeout=120)
        status[name] = r.returncode
        if r.returncode != 0:
            log(f"{host.name}: {name} start exited {r.returncode}: {(r.stderr or r.stdout)[-300:]}")
    return status


def stop_mariadb(host: NamespaceHost) -> None:
    """A clean MariaDB shutdown before a snapshot (the rest may be killed)."""
    host.sh(
        "mariadb-admin shutdown 2>/dev/null || true; "
        "for i in $(seq 100); do pgrep -x mariadbd >/dev/null || exit 0; sleep 0.1; done"
    )


def clean_runtime(host: NamespaceHost) -> None:
    """Pid files and sockets of the stopped services out of the snapshot (pids are reused in a new namespace)."""
    host.sh(
        "find /run /var/run -xdev \\( -name '*.pid' -o -type s \\) -delete 2>/dev/null; "
        "rm -rf /tmp/* /var/tmp/* /tmp/.[!.]* 2>/dev/null; true"
    )


def run_setup(host: NamespaceHost, ident: ServerIdentity, timeout: float = 600) -> str:
    """Runs the release's own ispcp-setup through a pseudo-terminal; returns the transcript."""
    from ispcp_lib.lab.pty_driver import drive

    start_services(host, ("rsyslog", "mariadb"))
    host.sh(MARIADB_PREPARE.replace("{pw}", ident.sql_root_password))
    argv = host.exec_argv(
        ["perl", "ispcp-setup"],
        env={"PERL_USE_UNSAFE_INC": "1", "TERM": "xterm"},
        cwd="/var/www/ispcp/engine/setup",
    )
    transcript = drive(
        argv,
        setup_answers(ident),
        success="Congratulations you installed ispCP",
        timeout=timeout,
    )
    meta = {
        "identity": ident.__dict__,
        "setup_transcript_tail": transcript[-2000:],
    }
    path = host.root / "root/ispcp-lab.json"
    path.write_text(json.dumps(meta, indent=2))
    path.chmod(0o600)
    return transcript


def setup_spec(tarball: Path, ident: ServerIdentity, version_name: str | None = None) -> ImageSpec:
    parent = install_spec(tarball, version_name)

    def post(host: NamespaceHost) -> None:
        started = time.monotonic()
        run_setup(host, ident)
        log(f"ispcp-setup: {time.monotonic() - started:.0f} s")
        stop_mariadb(host)
        clean_runtime(host)

    key = hashlib.sha256(json.dumps(ident.__dict__, sort_keys=True).encode()).hexdigest()[:8]
    return ImageSpec(
        name=parent.name.replace("-install", f"-setup-{ident.tag}"),
        parent=parent,
        post=post,
        recipe=f"{key}-1",
        address=ident.address,
        hostname=ident.hostname,
    )


def ensure_server_image(tarball: Path, ident: ServerIdentity, version_name: str | None = None) -> list[Path]:
    return ensure_image(setup_spec(tarball, ident, version_name))


def start_server(
    tarball: Path,
    ident: ServerIdentity,
    *,
    name: str | None = None,
    version_name: str | None = None,
    detach: bool = False,
    sshd: bool = True,
) -> NamespaceHost:
    """A running ispCP server: the cached setup snapshot under a fresh overlay, every service started."""
    layers = ensure_server_image(tarball, ident, version_name)
    host = NamespaceHost.start(
        layers, name=name or ident.tag, address=ident.address, hostname=ident.hostname, detach=detach
    )
    try:
        started = time.monotonic()
        status = start_services(host)
        failed = {k: v for k, v in status.items() if v != 0}
        if failed:
            log(f"{host.name}: services that did not start: {failed}")
        if sshd:
            host.start_sshd("modern")
        log(f"{host.name}: services up in {time.monotonic() - started:.1f} s")
    except BaseException:
        host.stop()
        raise
    return host


def shell_quote(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# The INSTALL "Update" procedure (docs/Debian/INSTALL, section 5, steps 4-8), for a release tree
# already under /usr/local/src (the install layer keeps it there).
UPDATE_PREPARE = r"""
set -e
cd "$1"
/etc/init.d/ispcp_daemon stop || true
make install >/dev/null
cp -v /var/www/ispcp/engine/ispcp-db-keys.pl /tmp/ispcp/var/www/ispcp/engine/
cp -v /var/www/ispcp/engine/messenger/ispcp-db-keys.pl /tmp/ispcp/var/www/ispcp/engine/messenger/
cp -v /var/www/ispcp/gui/include/ispcp-db-keys.php /tmp/ispcp/var/www/ispcp/gui/include/
cp -TRv /var/www/ispcp/gui/domain_default_page /tmp/ispcp/var/www/ispcp/gui/domain_default_page
rm -Rf /var/www/ispcp/engine/
rm -Rf /var/www/ispcp/gui/admin /var/www/ispcp/gui/client /var/www/ispcp/gui/include \
  /var/www/ispcp/gui/orderpanel /var/www/ispcp/gui/themes /var/www/ispcp/gui/reseller
rm -Rf /var/www/ispcp/gui/tools/pma/ /var/www/ispcp/gui/tools/filemanager/ /var/www/ispcp/gui/tools/webmail/ \
  /var/www/ispcp/gui/tools/index.php
rm -Rf /var/www/ispcp/gui/*.php /var/www/ispcp/gui/favicon.ico /var/www/ispcp/gui/robots.txt
cp -R /tmp/ispcp/usr/* /usr/
cp -R /tmp/ispcp/var/* /var/
mv /etc/ispcp/ispcp.conf /etc/ispcp/ispcp.old.conf
cp -R /tmp/ispcp/etc/* /etc/
"""


def run_update(host: NamespaceHost, timeout: float = 900) -> str:
    """The release's own ispcp-update after INSTALL's update steps; returns the transcript.

    Only for an update of a healthy lab server (same identity): a recovery answers from its backup.
    """
    from ispcp_lib.lab.pty_driver import drive

    top = next((host.root / "usr/local/src").glob("ispcp-omega-*"))
    host.exec(["/bin/sh", "-c", UPDATE_PREPARE, "update", f"/usr/local/src/{top.name}"], timeout=300)
    argv = host.exec_argv(
        ["perl", "ispcp-update"], env={"PERL_USE_UNSAFE_INC": "1", "TERM": "xterm"}, cwd="/var/www/ispcp/engine/setup"
    )
    return drive(
        argv,
        [("Do you want to continue ?", "Y"), ("Please, type 'Enter' to continue", "")],
        success="Congratulations, you updated ispCP",
        timeout=timeout,
    )
