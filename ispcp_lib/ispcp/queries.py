"""Every query on ispCP's own database (its schema: domain, server_ips, mail_users, sql_user, config, …).

Named here so the tool's SQL lives in two places only: this module for ispCP's tables, and
mysql/dialect.py for everything that is the server's (accounts, information_schema, CHECK TABLE,
tablespaces, FLUSH). ispCP 1.0's schema is the same on every MySQL it ran on, so none of these
depends on the server's version. Statements are `(sql, args)` pairs, run with `dialect.execute`;
table and column names are fixed names of the schema, never input.
"""

from __future__ import annotations

from ispcp_lib.mysql.dialect import Statement, quote_ident

# -- domains -----------------------------------------------------------------------------------------
DOMAINS: Statement = (
    "SELECT domain_id, domain_name, domain_uid, domain_gid, domain_status FROM domain ORDER BY domain_id",
    (),
)
DOMAIN_OWNERS: Statement = (
    "SELECT domain_name, domain_uid, domain_gid, domain_status FROM domain ORDER BY domain_id",
    (),
)
DOMAIN_NAMES: Statement = ("SELECT domain_name FROM domain", ())


def mark_for_rebuild(domain_ids: list[int]) -> Statement:
    """domain_status 'ok' -> 'change' for the domains: the engine then rebuilds their configuration."""
    marks = ",".join(["%s"] * len(domain_ids))
    sql = f"UPDATE domain SET domain_status = 'change' WHERE domain_status = 'ok' AND domain_id IN ({marks})"
    return (sql, tuple(domain_ids))


def column_values(table: str, column: str) -> Statement:
    """Every value of one column (a hosted-name column such as subdomain.subdomain_name)."""
    return (f"SELECT {column} FROM {table}", ())


# Every name ispCP hosts, (kind, statement): name and the domain it belongs to, in database order.
HOSTED_NAMES: tuple[tuple[str, Statement], ...] = (
    ("domain", ("SELECT domain_name, domain_name FROM domain ORDER BY domain_id", ())),
    (
        "alias",
        (
            "SELECT a.alias_name, COALESCE(d.domain_name, '') FROM domain_aliasses a "
            "LEFT JOIN domain d ON d.domain_id = a.domain_id ORDER BY a.alias_id",
            (),
        ),
    ),
    (
        "subdomain",
        (
            "SELECT CONCAT(s.subdomain_name, '.', d.domain_name), d.domain_name FROM subdomain s "
            "JOIN domain d ON d.domain_id = s.domain_id ORDER BY s.subdomain_id",
            (),
        ),
    ),
    (
        "alias subdomain",
        (
            "SELECT CONCAT(sa.subdomain_alias_name, '.', a.alias_name), a.alias_name "
            "FROM subdomain_alias sa JOIN domain_aliasses a ON a.alias_id = sa.alias_id "
            "ORDER BY sa.subdomain_alias_id",
            (),
        ),
    ),
)

# The zones ispCP builds a file for: domains and domain aliases, each with the address it is served on.
ZONES: tuple[Statement, ...] = (
    (
        "SELECT d.domain_name, i.ip_number FROM domain d JOIN server_ips i ON i.ip_id = d.domain_ip_id "
        "ORDER BY d.domain_id",
        (),
    ),
    (
        "SELECT a.alias_name, i.ip_number FROM domain_aliasses a JOIN server_ips i ON i.ip_id = a.alias_ip_id "
        "ORDER BY a.alias_id",
        (),
    ),
)

# -- server IPs --------------------------------------------------------------------------------------
SERVER_IPS: Statement = ("SELECT ip_id, ip_number, ip_domain, ip_alias FROM server_ips ORDER BY ip_id", ())


def ip_references(table: str, column: str) -> Statement:
    """Rows per IP id of a table that points at server_ips (domain.domain_ip_id, domain_aliasses.alias_ip_id)."""
    return (f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}", ())


def change_server_ip(column: str, ip_id: int, old: str, new: str) -> Statement:
    """One server_ips value from old to new; the old value in the WHERE makes a rerun change nothing twice."""
    return (f"UPDATE server_ips SET {column} = %s WHERE ip_id = %s AND {column} = %s", (new, ip_id, old))


# -- customer SQL databases and users ------------------------------------------------------------------
SQL_DATABASES: Statement = (
    "SELECT d.sqld_id, d.sqld_name, dm.domain_name FROM sql_database d "
    "LEFT JOIN domain dm ON dm.domain_id = d.domain_id ORDER BY d.sqld_name",
    (),
)
SQL_USERS: Statement = ("SELECT sqlu_id, sqld_id, sqlu_name, sqlu_pass FROM sql_user ORDER BY sqlu_id", ())
# Rows of domain + sql_database: 0 in the dummy install's empty tables.
DOMAINS_AND_DATABASES: Statement = ("SELECT (SELECT COUNT(*) FROM domain) + (SELECT COUNT(*) FROM sql_database)", ())
# Rows of domain + mail_users + sql_user: 0 in the dummy install's empty tables.
DOMAINS_MAILBOXES_AND_SQL_USERS: Statement = (
    "SELECT (SELECT COUNT(*) FROM domain) + (SELECT COUNT(*) FROM mail_users) + (SELECT COUNT(*) FROM sql_user)",
    (),
)

# -- encrypted passwords (columns: id, account, cipher, database, status) ----------------------------------


def mailbox_ciphers(no_password: str) -> Statement:
    """Every mailbox that has a password (no_password: ispCP's marker for a forward-only address)."""
    sql = (
        "SELECT mail_id, mail_addr, mail_pass, NULL, status FROM mail_users "
        "WHERE mail_pass IS NULL OR mail_pass <> %s ORDER BY mail_id"
    )
    return (sql, (no_password,))


SQL_USER_CIPHERS: Statement = (
    "SELECT u.sqlu_id, u.sqlu_name, u.sqlu_pass, d.sqld_name, NULL FROM sql_user u "
    "LEFT JOIN sql_database d ON d.sqld_id = u.sqld_id ORDER BY u.sqlu_id",
    (),
)


def set_mailbox_cipher(mail_id: int, cipher: str) -> Statement:
    """A new encrypted mailbox password; status 'change' makes the engine write it out."""
    sql = "UPDATE mail_users SET mail_pass = %s, status = IF(status = 'ok', 'change', status) WHERE mail_id = %s"
    return (sql, (cipher, mail_id))


def set_sql_user_cipher(sqlu_id: int, cipher: str) -> Statement:
    return ("UPDATE sql_user SET sqlu_pass = %s WHERE sqlu_id = %s", (cipher, sqlu_id))


# -- config and FTP ----------------------------------------------------------------------------------


def config_value(name: str, database: str | None = None) -> Statement:
    """The config table's value for name (of the selected database, or of the one given)."""
    table = "config" if database is None else f"{quote_ident(database)}.config"
    return (f"SELECT value FROM {table} WHERE name = %s", (name,))


FTP_USER_COUNT: Statement = ("SELECT COUNT(*) FROM ftp_users", ())
