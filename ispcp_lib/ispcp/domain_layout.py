"""Owners and modes ispCP 1.0.7's engine gives a domain's directories: the layout register_accounts restores.

Taken from the engine's source (engine/ispcp-dmn-mngr, dmn_add_httpd_file_data and
dmn_add_mta_file_data; engine/ispcp-htusers-mngr and ispcp-htgroups-mngr; ispcp-sub-mngr and
ispcp-als-mngr for subdomain and alias folders, ispcp-htaccess-mngr for .htaccess) and checked on a
real 1.0.7 server (docs: ispcp-reference/real-server-lab.md, "Real ownership of a domain tree"):

    <APACHE_WWW_DIR>/<dmn>             vuX:<APACHE_GROUP> 0770   make_dir(..., $sys_user, $httpd_gid, 0770)
    <dmn>/logs, <dmn>/phptmp           vuX:<APACHE_GROUP> 0770
    <dmn>/backups                      <ROOT_USER>:<ROOT_GROUP>  (the backup engine writes there)
    <dmn>/disabled                     <APACHE_USER>:<APACHE_GROUP>
    <dmn>/.htpasswd, .htgroup          <ROOT_USER>:<ROOT_GROUP> 0644 (htusers/htgroups managers)
    everything else under <dmn>        vuX:vuX (htdocs, cgi-bin, errors, subdomain and alias
                                       folders, .htaccess files, what FTP users upload)
    <PHP_STARTER_DIR>/<dmn>            vuX:vuX 0555, php5-fcgi-starter 0550, php5/ 0550,
                                       php5/php.ini 0440
    <MTA_VIRTUAL_MAIL_DIR>/<dmn>       <MTA_MAILBOX_UID_NAME>:<MTA_MAILBOX_GID_NAME> 0700

The contents of logs, phptmp, backups and disabled are left as the copy brought them (the engine
never re-owns them on a rebuild either: the change path, dmn_change_httpd_file_data, only creates
what is missing). Pure data: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Owners:
    """Numeric IDs of the accounts the layout names (resolved from the target's passwd and group)."""

    apache_uid: int
    apache_gid: int
    root_uid: int
    root_gid: int
    mailbox_uid: int
    mailbox_gid: int


@dataclass(frozen=True)
class Places:
    """Where ispCP keeps a domain's files (ispcp.conf) and the htaccess file names."""

    www: str = "/var/www/virtual"  # APACHE_WWW_DIR
    starters: str = "/var/www/fcgi"  # PHP_STARTER_DIR
    mail: str = "/var/mail/virtual"  # MTA_VIRTUAL_MAIL_DIR
    htpasswd: str = ".htpasswd"  # HTACCESS_USERS_FILE_NAME
    htgroup: str = ".htgroup"  # HTACCESS_GROUPS_FILE_NAME


@dataclass(frozen=True)
class Exact:
    """One entry set exactly: owner, and mode when given (None keeps the copied mode)."""

    path: str
    uid: int
    gid: int
    mode: int | None = None


@dataclass(frozen=True)
class Tree:
    """Every entry below root (root itself excluded) owned by uid:gid, the pruned paths left alone."""

    root: str
    uid: int
    gid: int
    prune: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainLayout:
    domain: str
    trees: tuple[Tree, ...]
    exact: tuple[Exact, ...]


def domain_layout(places: Places, owners: Owners, domain: str, uid: int, gid: int) -> DomainLayout:
    """The engine's layout for one domain whose system user and group have the IDs uid and gid."""
    home = f"{places.www.rstrip('/')}/{domain}"
    fcgi = f"{places.starters.rstrip('/')}/{domain}"
    apache = owners.apache_gid
    root_owned = (owners.root_uid, owners.root_gid)
    special = {
        f"{home}/logs": Exact(f"{home}/logs", uid, apache, 0o770),
        f"{home}/phptmp": Exact(f"{home}/phptmp", uid, apache, 0o770),
        f"{home}/backups": Exact(f"{home}/backups", *root_owned),
        f"{home}/disabled": Exact(f"{home}/disabled", owners.apache_uid, apache),
        f"{home}/{places.htpasswd}": Exact(f"{home}/{places.htpasswd}", *root_owned, 0o644),
        f"{home}/{places.htgroup}": Exact(f"{home}/{places.htgroup}", *root_owned, 0o644),
    }
    exact = (
        Exact(home, uid, apache, 0o770),
        *special.values(),
        Exact(fcgi, uid, gid, 0o555),
        Exact(f"{fcgi}/php5-fcgi-starter", uid, gid, 0o550),
        Exact(f"{fcgi}/php5", uid, gid, 0o550),
        Exact(f"{fcgi}/php5/php.ini", uid, gid, 0o440),
        Exact(f"{places.mail.rstrip('/')}/{domain}", owners.mailbox_uid, owners.mailbox_gid, 0o700),
    )
    trees = (Tree(home, uid, gid, tuple(special)), Tree(fcgi, uid, gid))
    return DomainLayout(domain, trees, exact)
