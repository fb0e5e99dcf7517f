"""Bind's working zone files, which ispCP's DNS managers read on every change and the guide's backup lacks.

ispcp-update sets every domain and alias to 'change'; ispcp-dmn-mngr and ispcp-als-mngr then read
CONF_DIR/bind/working/<name>.db to carry its subdomain entries over (1.0.7 ispcp-dmn-mngr:380-398,
ispcp-als-mngr:507-525). Without the file the domain ends in status "get_file() | [ERROR] File … does
not exist", no vhost is written and no zone served. The file the managers would have written when the
domain was added is the target's own parts/db_e.tpl with the four values they fill in (dmn-mngr:367-376);
its {TIMESTAMP} and the empty subdomain block are left for the managers, exactly as on the add path.
"""

from __future__ import annotations

from dataclasses import dataclass

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import queries
from ispcp_lib.ispcp.backup_input import domain_problem
from ispcp_lib.mysql import dialect


@dataclass(frozen=True)
class Zone:
    name: str
    address: str


def read_zones(ctx: Context, user: str, password: str | None, database: str) -> list[Zone]:
    assert ctx.mysql is not None
    zones = []
    with ctx.mysql.connect(user, password, database) as conn, conn.cursor() as cur:
        for query in queries.ZONES:
            dialect.execute(cur, query)
            zones += [Zone(str(name), str(ip)) for name, ip in cur.fetchall()]
    for zone in zones:  # the names become file names on the target
        problem = domain_problem(zone.name)
        if problem:
            raise InputError(
                f"zone {zone.name!r}", problem, "correct the name in ispCP's domain or domain_aliasses table"
            )
    return zones


def zone_text(template: str, zone: Zone, conf: IspcpConf) -> str:
    secondary = (conf.get("SECONDARY_DNS") or "").strip()
    values = {
        "{DMN_NAME}": zone.name,
        "{DMN_IP}": zone.address,
        "{BASE_SERVER_IP}": conf.get("BASE_SERVER_IP") or zone.address,
        "{SECONDARY_DNS_IP}": secondary or zone.address,
    }
    for key, value in values.items():
        template = template.replace(key, value)
    return template


def seed_missing(ctx: Context, conf: IspcpConf, zones: list[Zone]) -> list[str]:
    """Write the working file of every zone that has none; returns the zones planned or written."""
    conf_dir = conf.get("CONF_DIR") or "/etc/ispcp"
    template = ctx.target.read_text(f"{conf_dir}/bind/parts/db_e.tpl")
    if template is None:
        return []
    seeded = []
    for zone in zones:
        path = f"{conf_dir}/bind/working/{zone.name}.db"
        if ctx.target.exists(path):
            continue
        ctx.write_file(
            path,
            zone_text(template, zone, conf),
            mode=0o644,
            uid=0,
            gid=0,
            what=f"seed Bind's working zone {path} from parts/db_e.tpl",
            show_diff=False,
        )
        seeded.append(zone.name)
    return seeded
