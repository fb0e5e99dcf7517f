"""Text of the configuration and program files both sandbox servers carry.

ispcp.conf and proftpd.conf start from the real 1.0.5 templates in data/; the engine managers are
small stand-ins with the one property the recovery cares about (the `\\tsleep(1);` loop line).
"""

from __future__ import annotations

import sys

from ispcp_lib.facts.ispcp_conf import IspcpConf, parse_version
from ispcp_lib.ispcp.crypto import encrypt_db_password
from ispcp_lib.sandbox import update_standin
from ispcp_lib.sandbox.private_mysql import data_file

SLEEP_LINE = "\tsleep(1);"
# A decoy for the engine_speedup step: it must change only the exact statement line.
DECOY_COMMENT = "\t# sleep(1) here would be wrong: the request row is still locked"
DECOY_MANAGER = "ispcp-dmn-mngr"

STANDIN_BANNER = (
    "# SANDBOX STAND-IN written by ispcp_lib.sandbox for tests: NOT the real ispCP engine.\n"
    "# It only mimics the file layout and the main loop the recovery's engine_speedup step edits.\n"
)


def ispcp_conf(version: str, hostname: str, ip: str, root_password: str, key: str, iv: str) -> str:
    conf = IspcpConf.parse(data_file("ispcp.conf"), "ispcp.conf")
    for name, value in (
        ("Version", version),
        ("SERVER_HOSTNAME", hostname),
        ("BASE_SERVER_IP", ip),
        ("DEFAULT_ADMIN_ADDRESS", f"admin@{hostname}"),
        ("DATABASE_HOST", "localhost"),
        ("DATABASE_NAME", "ispcp"),
        ("DATABASE_USER", "root"),
        ("DATABASE_PASSWORD", encrypt_db_password(root_password, key, iv)),
    ):
        conf.set(name, value)
    return conf.text()


def proftpd_conf(hostname: str, vftp_password: str) -> str:
    text = data_file("proftpd.conf")
    for placeholder, value in (
        ("{HOST_NAME}", hostname),
        ("{DATABASE_NAME}", "ispcp"),
        ("{DATABASE_HOST}", "localhost"),
        ("{DATABASE_USER}", "vftp"),
        ("{DATABASE_PASS}", vftp_password),
        ("{FTPD_MIN_UID}", "2000"),
        ("{FTPD_MIN_GID}", "2000"),
    ):
        text = text.replace(placeholder, value)
    return text


def debian_cnf(password: str) -> str:
    """Debian's maintainer credentials file, in the layout the guide gives as template."""
    return (
        "# Automatically generated for Debian scripts. DO NOT TOUCH!\n"
        "[client]\n"
        "host     = localhost\n"
        "user     = debian-sys-maint\n"
        f"password = {password}\n"
        "socket   = /var/run/mysqld/mysqld.sock\n"
        "[mysql_upgrade]\n"
        "user     = debian-sys-maint\n"
        f"password = {password}\n"
        "socket   = /var/run/mysqld/mysqld.sock\n"
        "basedir  = /usr\n"
    )


def os_release() -> str:
    return (
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
        'NAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\n'
        'VERSION="12 (bookworm)"\n'
        "VERSION_CODENAME=bookworm\n"
        "ID=debian\n"
        'HOME_URL="https://www.debian.org/"\n'
        'SUPPORT_URL="https://www.debian.org/support"\n'
        'BUG_REPORT_URL="https://bugs.debian.org/"\n'
    )


def has_sleep_lines(version: str) -> bool:
    """1.0.5 and 1.0.6 end the managers' loops with sleep(1); 1.0.7 removed it."""
    v = parse_version(version)
    return v is None or v < (1, 0, 7)


def key_layouts(version: str) -> tuple[str, ...]:
    """Key file layouts a version writes: the PHP + two Perl files up to 1.0.7, ispcp-keys.conf after."""
    v = parse_version(version)
    if v is not None and v >= (1, 0, 8):
        return ("keys_conf",)
    return ("php", "perl_engine", "perl_messenger")


def engine_manager(name: str, version: str) -> str:
    item = name.removeprefix("ispcp-").removesuffix("-mngr")
    body = [
        "#!/usr/bin/perl",
        "",
        "# ispCP (OMEGA) a Virtual Hosting Control Panel - " + name,
        STANDIN_BANNER.rstrip("\n"),
        "",
        "use strict;",
        "use warnings;",
        "",
        "use FindBin;",
        'use lib "$FindBin::Bin/";',
        "require 'ispcp_common_code.pl';",
        "",
        f"my @rows = get_{item}_requests();",
        "",
        "foreach my $row (@rows) {",
    ]
    if name == DECOY_MANAGER:
        body.append(DECOY_COMMENT)
    body.append(f"\tprocess_{item}($row);")
    if has_sleep_lines(version):
        body.append(SLEEP_LINE)
    body += ["}", "", "exit 0;", ""]
    return "\n".join(body)


def request_manager() -> str:
    """A stand-in that works the pending requests like the real one: every row in status 'change' is rebuilt
    and set back to 'ok' (ispcp_lib.sandbox.update_standin.request_manager_main; sandbox only)."""
    return (
        f"#!{sys.executable}\n"
        "# ispCP (OMEGA) a Virtual Hosting Control Panel - ispcp-rqst-mngr\n"
        "# SANDBOX STAND-IN written by ispcp_lib.sandbox for tests: NOT the real ispCP engine.\n"
        "# It runs only inside a sandbox world's target tree.\n\n"
        "import sys\n\n"
        f"{update_standin.PACKAGE_PATH}\n"
        "from ispcp_lib.sandbox.update_standin import request_manager_main\n\n"
        "sys.exit(request_manager_main())\n"
    )


def php_fcgi_starter(domain: str, uid: int) -> str:
    return (
        "#!/bin/sh\n"
        f"# PHP5 FastCGI starter for {domain} (vu{uid})\n"
        f'PHPRC="/var/www/fcgi/{domain}/php5/"\n'
        "export PHPRC\n"
        f'TMPDIR="/var/www/virtual/{domain}/phptmp"\n'
        "export TMPDIR\n"
        "PHP_FCGI_MAX_REQUESTS=1000\n"
        "export PHP_FCGI_MAX_REQUESTS\n"
        "exec /usr/bin/php5-cgi\n"
    )


def php_ini(domain: str) -> str:
    return (
        "[PHP]\n"
        "memory_limit = 64M\n"
        f'open_basedir = "/var/www/virtual/{domain}/:/usr/share/php/"\n'
        f'upload_tmp_dir = "/var/www/virtual/{domain}/phptmp/"\n'
        f'session.save_path = "/var/www/virtual/{domain}/phptmp/"\n'
        "safe_mode = Off\n"
    )
