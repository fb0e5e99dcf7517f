"""The sandbox scenario as plain data: hosts, domains, mailboxes, FTP and SQL users, and every secret.

Everything comes from one random.Random(seed), so the same seed gives the same world. The secrets
use that RNG too: they only ever protect throw-away sandbox services.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from ispcp_lib.ispcp.crypto import IV_LENGTH, KEY_CHARSET, KEY_LENGTH, PASSWORD_CHARSET

OLD_HOSTNAME = "old.sandbox.test"
NEW_HOSTNAME = "new.sandbox.test"
OLD_IP = "192.0.2.10"  # TEST-NET-1: never routed, so nothing real is ever reached
NEW_IP = "192.0.2.20"
FIRST_DOMAIN_UID = 2001  # APACHE_SUEXEC_MIN_UID 2000 is the panel's own vu2000
VMAIL_UID = 1004  # MTA_MAILBOX_UID of the shipped ispcp.conf template
MAIL_GID = 8  # MTA_MAILBOX_GID

# (domains, subdomains, aliases, mailboxes, ftp users); "mid" is the guide's mid-size system.
SCALES: dict[str, tuple[int, int, int, int, int]] = {
    "small": (3, 6, 2, 10, 3),
    "mid": (25, 100, 10, 500, 25),
    "large": (1000, 5000, 200, 20000, 1000),
}

_SUB_LABELS = ("www2", "shop", "blog", "dev", "test", "forum", "cdn", "wiki", "mail2", "docs")
_LOCAL_PARTS = (
    "info",
    "office",
    "anna",
    "ben",
    "carla",
    "dieter",
    "eva",
    "frank",
    "gabi",
    "hans",
    "ines",
    "jonas",
    "kai",
    "lena",
    "max",
    "nina",
    "otto",
    "paula",
    "sales",
    "support",
)


@dataclass
class Domain:
    id: int
    name: str
    uid: int
    gid: int
    admin_id: int  # the 'user' admin owning this domain

    @property
    def user(self) -> str:
        return f"vu{self.uid}"

    @property
    def group(self) -> str:
        return f"vu{self.gid}"


@dataclass
class Subdomain:
    id: int
    domain_id: int
    label: str  # ispCP stores only the label; the FQDN is label + "." + domain


@dataclass
class Alias:
    id: int
    domain_id: int
    name: str


@dataclass
class Mailbox:
    id: int
    domain_id: int
    domain: str
    local_part: str
    password: str | None  # None: forward-only, stored as '_no_'
    forward: str | None = None

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"


@dataclass
class FtpUser:
    userid: str
    password: str
    uid: int
    gid: int
    domain: str


@dataclass
class CustomerDb:
    id: int
    domain_id: int
    name: str
    engine: str  # MyISAM can be restored as a lone directory, InnoDB cannot
    user_id: int
    user: str
    password: str


@dataclass
class ServerSecrets:
    root_password: str
    debian_sys_maint: str
    vftp: str
    key: str
    iv: str


@dataclass
class Scenario:
    scale: str
    seed: int
    old_ip: str
    new_ip: str
    domains: list[Domain]
    subdomains: list[Subdomain]
    aliases: list[Alias]
    mailboxes: list[Mailbox]
    ftp_users: list[FtpUser]
    customer_dbs: list[CustomerDb]
    old: ServerSecrets
    new: ServerSecrets
    admin_passwords: dict[str, str] = field(default_factory=dict)  # admin_name -> plaintext
    shadow_passwords: dict[str, str] = field(default_factory=dict)  # system user -> plaintext
    salts: dict[str, str] = field(default_factory=dict)  # "kind:name" -> crypt salt

    old_hostname: str = OLD_HOSTNAME
    new_hostname: str = NEW_HOSTNAME

    def domain_by_id(self) -> dict[int, Domain]:
        return {d.id: d for d in self.domains}

    def summary(self) -> dict[str, Any]:
        return {
            "domains": len(self.domains),
            "subdomains": len(self.subdomains),
            "aliases": len(self.aliases),
            "mailboxes": sum(1 for m in self.mailboxes if m.password is not None),
            "forwards": sum(1 for m in self.mailboxes if m.password is None),
            "ftp_users": len(self.ftp_users),
            "customer_dbs": len(self.customer_dbs),
        }

    def domain_records(self) -> list[dict[str, Any]]:
        return [{**asdict(d), "user": d.user, "group": d.group} for d in self.domains]


def _secret(rng: random.Random, length: int, alphabet: str = PASSWORD_CHARSET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def _server_secrets(rng: random.Random) -> ServerSecrets:
    # Keys from the installer's alphabet, so quoting/escaping in the key files gets exercised.
    return ServerSecrets(
        root_password=_secret(rng, 16),
        debian_sys_maint=_secret(rng, 16),
        vftp=_secret(rng, 16),
        key=_secret(rng, KEY_LENGTH, KEY_CHARSET),
        iv=_secret(rng, IV_LENGTH, KEY_CHARSET),
    )


def make_scenario(scale: str = "small", seed: int = 1, new_ip: str = NEW_IP) -> Scenario:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    n_dom, n_sub, n_als, n_mail, n_ftp = SCALES[scale]
    rng = random.Random(seed)
    old, new = _server_secrets(rng), _server_secrets(rng)

    # admin_id 1 = admin, 2 = reseller, 3.. = one 'user' admin per domain (ispCP's own layout).
    domains = [
        Domain(
            id=i,
            name=f"example-{i:03d}.test",
            uid=FIRST_DOMAIN_UID + i - 1,
            gid=FIRST_DOMAIN_UID + i - 1,
            admin_id=i + 2,
        )
        for i in range(1, n_dom + 1)
    ]
    subdomains = []
    for i in range(n_sub):
        dom = domains[i % n_dom]
        n = i // n_dom
        label = _SUB_LABELS[n % len(_SUB_LABELS)] + (str(n // len(_SUB_LABELS)) if n >= len(_SUB_LABELS) else "")
        subdomains.append(Subdomain(id=i + 1, domain_id=dom.id, label=label))
    aliases = [Alias(id=i + 1, domain_id=domains[i % n_dom].id, name=f"alias-{i + 1:03d}.test") for i in range(n_als)]

    mailboxes = []
    for i in range(n_mail):
        dom = domains[i % n_dom]
        n = i // n_dom
        local = _LOCAL_PARTS[n % len(_LOCAL_PARTS)] + (str(n // len(_LOCAL_PARTS)) if n >= len(_LOCAL_PARTS) else "")
        forward_only = i % 10 == 9  # about one in ten
        mailboxes.append(
            Mailbox(
                id=i + 1,
                domain_id=dom.id,
                domain=dom.name,
                local_part=local,
                password=None if forward_only else _secret(rng, 12),
                forward=f"{local}@elsewhere.test" if forward_only else None,
            )
        )
    ftp_users = []
    for i in range(n_ftp):
        dom = domains[i % n_dom]
        n = i // n_dom
        ftp_users.append(
            FtpUser(
                userid=f"ftp{n + 1}@{dom.name}", password=_secret(rng, 12), uid=dom.uid, gid=dom.gid, domain=dom.name
            )
        )

    customer_dbs = []
    for idx, (suffix, engine) in enumerate((("shop", "MyISAM"), ("blog", "InnoDB"))):
        if idx >= n_dom:
            break
        dom = domains[idx]
        prefix = dom.name.split(".")[0].replace("-", "")  # example001
        customer_dbs.append(
            CustomerDb(
                id=idx + 1,
                domain_id=dom.id,
                name=f"{prefix}_{suffix}",
                engine=engine,
                user_id=idx + 1,
                user=f"ex{dom.id:03d}{suffix}",
                password=_secret(rng, 14),  # <= 16 chars: MySQL 5.0's limit
            )
        )

    admin_names = ["admin", "reseller1", *(d.name for d in domains)]
    admin_passwords = {name: _secret(rng, 12) for name in admin_names}
    shadow_passwords = {"root": _secret(rng, 16), **{d.user: _secret(rng, 16) for d in domains}}
    salt_chars = PASSWORD_CHARSET + "./"
    salts = {f"admin:{n}": _secret(rng, 8, salt_chars) for n in admin_names}
    salts.update({f"shadow:{n}": _secret(rng, 16, salt_chars) for n in shadow_passwords})
    salts.update({f"ftp:{u.userid}": _secret(rng, 16, salt_chars) for u in ftp_users})

    return Scenario(
        scale=scale,
        seed=seed,
        old_ip=OLD_IP,
        new_ip=new_ip,
        domains=domains,
        subdomains=subdomains,
        aliases=aliases,
        mailboxes=mailboxes,
        ftp_users=ftp_users,
        customer_dbs=customer_dbs,
        old=old,
        new=new,
        admin_passwords=admin_passwords,
        shadow_passwords=shadow_passwords,
        salts=salts,
    )
