"""inventory: what survived, and which recovery path that allows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout as bl
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import keyfiles
from ispcp_lib.mysql import customer_dbs

TITLE = "Inventory of the backup"
GUIDE = "the checklist at the start of the guide"
EXPLANATION = """
Before anything is copied we need to know what survived. The guide distinguishes two situations:
a backup of **every** file of the old server (then ispCP's normal migration procedure applies), or a
partial backup holding the customer data plus a handful of critical pieces: binary copies of the
`ispcp` and `mysql` databases, the old `ispcp.conf`, and the key files that decrypt the database
password. One key file can be rebuilt from another; with none left, the database password has to be
reset, and every password ispCP encrypted is lost with the keys.

This step only reads the backup. It lists each item as found, missing or invalid, with the path and
why it matters, and ends with a verdict on which recovery path applies. It also recognises the output
of ispCP's own `ispcp-backup-ispcp` (a SQL dump and a tar of `/etc/ispcp`) and says what that lacks.

The guide stops at ispCP's own two databases, but the customers' databases (shops, blogs, forums,
listed in ispCP's `sql_database` table) matter just as much. A second table lists each of them, what
the backup holds for it (a directory, a dump), its storage engines, and whether and how it can be
restored: InnoDB tables cannot travel as a lone directory.
"""
PARAMETERS: tuple[Param, ...] = ()


def _conf_item(ctx: Context) -> tuple[bl.Item, IspcpConf | None]:
    why = "holds the database credentials, paths, IDs and the values ispcp-update would ask for"
    path = str(ctx.backup_root / "etc/ispcp/ispcp.conf") if ctx.backup_root else "/etc/ispcp/ispcp.conf"
    try:
        conf = bl.load_old_conf(ctx)
    except InputError as exc:
        return bl.Item("ispcp.conf", path, "invalid", exc.message, why, True), None
    if conf is None:
        return bl.Item(
            "ispcp.conf",
            path,
            "missing",
            "copy it from any surviving source (an ispCP config tar, an old disk)",
            why,
            True,
        ), None
    missing = [k for k in ("DATABASE_PASSWORD", "DATABASE_USER") if not conf.get(k)]
    if missing:
        return bl.Item("ispcp.conf", path, "invalid", f"lacks {', '.join(missing)}", why, True), conf
    return bl.Item(
        "ispcp.conf", path, "found", f"ispCP {conf.get('Version', '?')}, build {conf.get('BuildDate', '?')}", why, True
    ), conf


def _key_items(ctx: Context, conf: IspcpConf | None) -> tuple[list[bl.Item], dict[str, keyfiles.KeySet]]:
    paths = keyfiles.layout_paths(
        conf.get("ROOT_DIR") or "/var/www/ispcp" if conf else "/var/www/ispcp",
        conf.get("GUI_ROOT_DIR") if conf else None,
        conf.get("CONF_DIR") or "/etc/ispcp" if conf else "/etc/ispcp",
    )
    why = {
        "php": "the GUI's key file: without the right keys the panel cannot reach its database",
        "perl_engine": "the engine's key file: ispcp-update decrypts DATABASE_PASSWORD with it",
        "perl_messenger": "the autoresponder's copy of the engine keys",
        "keys_conf": "the key file of ispCP 1.0.8 and later",
    }
    items, found = [], {}
    for layout, logical in paths.items():
        try:
            path = ctx.b(logical)
        except InputError as exc:
            items.append(bl.Item(f"key file ({layout})", logical, "invalid", exc.message, why[layout]))
            continue
        if not path.is_file():
            items.append(bl.Item(f"key file ({layout})", str(path), "missing", "", why[layout]))
            continue
        try:
            keys = keyfiles.parse_keyfile(layout, path.read_text(errors="replace"), str(path))
        except InputError as exc:
            items.append(bl.Item(f"key file ({layout})", str(path), "invalid", exc.message, why[layout]))
            continue
        ctx.secrets.add(keys.key, "db_pass_key")
        ctx.secrets.add(keys.iv, "db_pass_iv")
        found[layout] = keys
        items.append(bl.Item(f"key file ({layout})", str(path), "found", "key and IV present", why[layout]))
    return items, found


def _dir_item(ctx: Context, name: str, logical: str, why: str, required: bool = False) -> bl.Item:
    path = ctx.b(logical)
    if not path.is_dir():
        return bl.Item(name, str(path), "missing", "", why, required)
    entries = sum(1 for _ in path.iterdir())
    escapes = bl.escaping_symlinks(ctx, path)
    detail = f"{entries} entries"
    if escapes:
        detail += f"; {len(escapes)} symlink(s) point outside the backup (copied as links, never followed)"
    return bl.Item(name, str(path), "found" if entries else "invalid", detail if entries else "empty", why, required)


def _file_item(ctx: Context, name: str, logical: str, why: str) -> bl.Item:
    try:
        path = ctx.b(logical)
    except InputError as exc:
        return bl.Item(name, logical, "invalid", exc.message, why)
    return bl.Item(name, str(path), "found" if path.is_file() else "missing", "", why)


@action("inventory", mutating=False)
def run(ctx: Context, result: Result) -> None:
    root = bl.check_backup_root(ctx)
    conf_item, conf = _conf_item(ctx)
    get = (lambda k, d: conf.get(k) or d) if conf else (lambda k, d: d)
    datadir = get("DATABASE_DIR", "/var/lib/mysql")
    items = [conf_item]
    db_name = get("DATABASE_NAME", "ispcp")
    for name, why, required in (
        (db_name, "every domain, mailbox, FTP and SQL account ispCP manages", True),
        ("mysql", "the database logins, ispCP's own among them; without it every login must be re-created", False),
    ):
        state, detail = bl.database_dir_state(ctx.b(f"{datadir}/{name}"))
        items.append(
            bl.Item(f"database {name} (binary copy)", str(ctx.b(f"{datadir}/{name}")), state, detail, why, required)
        )
    key_items, keysets = _key_items(ctx, conf)
    items += key_items
    items.append(_dir_item(ctx, "web data", get("APACHE_WWW_DIR", "/var/www/virtual"), "the customers' web spaces"))
    items.append(
        _dir_item(
            ctx,
            "mail data",
            get("MTA_VIRTUAL_MAIL_DIR", "/var/mail/virtual"),
            "the mailboxes: lost mail cannot be re-sent",
        )
    )
    for f in ("passwd", "shadow", "group", "gshadow"):
        items.append(_file_item(ctx, f"/etc/{f}", f"/etc/{f}", "the vu* domain users, vmail and the mail group"))
    items.append(
        _file_item(
            ctx,
            "ProFTPd config",
            get("FTPD_CONF_FILE", "/etc/proftpd.conf"),
            "the vftp database password the FTP server logs in with",
        )
    )
    items.append(
        _file_item(ctx, "debian.cnf", "/etc/mysql/debian.cnf", "the maintainer login; without it it must be reset")
    )
    items.append(_file_item(ctx, "os-release", "/etc/os-release", "which distribution the old server ran"))
    own = _ispcp_own_backup(ctx, get("BACKUP_FILE_DIR", "/var/www/ispcp/backups"), result)
    items += own

    frame = pd.DataFrame([i.row() for i in items])
    result.table("What the backup holds", frame)
    verdict, path = _verdict(root, items, keysets)
    result.summary = verdict
    result.data.update({"path": path, "items": [i.row() for i in items], "key_layouts": sorted(keysets)})
    if len({(k.key, k.iv) for k in keysets.values()}) > 1:
        result.warn(
            "the key files in the backup disagree with each other; the keys step finds out which "
            "one decrypts DATABASE_PASSWORD"
        )
    if path == "blocked":
        raise PreconditionFailed("backup", verdict, "find the missing items listed in the table above")
    # The customers' own databases: the guide leaves them out, but every dynamic site needs them.
    customer_dbs.show(ctx, result)


def _ispcp_own_backup(ctx: Context, logical_dir: str, result: Result) -> list[bl.Item]:
    folder = ctx.b(logical_dir)
    dumps, tars = bl.ispcp_dumps(folder), bl.config_tars(folder)
    items = []
    if dumps:
        items.append(
            bl.Item(
                "ispCP SQL dump",
                str(dumps[-1]),
                "found",
                f"{len(dumps)} dump(s), newest shown",
                "ispcp-backup-ispcp's dump of the ispCP database: an alternative to the binary copy",
            )
        )
    for tar in tars[-1:]:
        names = bl.tar_members(tar)
        if names is None:
            items.append(
                bl.Item(
                    "ispCP config tar",
                    str(tar),
                    "invalid",
                    "unreadable archive",
                    "ispcp-backup-ispcp's tar of /etc/ispcp",
                )
            )
            continue
        has_keys = any(n.endswith("ispcp-keys.conf") for n in names)
        items.append(
            bl.Item(
                "ispCP config tar",
                str(tar),
                "found",
                f"{len(names)} members{', has ispcp-keys.conf' if has_keys else ''}",
                "ispcp-backup-ispcp's tar of /etc/ispcp",
            )
        )
    if dumps or tars:
        result.note(
            "ispCP's own backup holds the ispCP database dump and /etc/ispcp, but neither the `mysql` "
            "database (every login) nor the GUI key file (ispcp-db-keys.php); those must come from "
            "elsewhere, or be re-created (mysql_maintainer, keys)."
        )
    return items


def _verdict(root: Path, items: list[bl.Item], keysets: dict) -> tuple[str, str]:
    state = {i.name: i.state for i in items}
    if all((root / p).exists() for p in ("bin", "usr", "var/lib/dpkg/status")):
        return (
            "The backup holds a full system tree: ispCP's migration guide applies. This runbook still "
            "guards mail and verifies each step.",
            "full",
        )
    blockers = [i for i in items if i.required and i.state != "found"]
    has_dump = state.get("ispCP SQL dump") == "found"
    blockers = [i for i in blockers if not (i.name.startswith("database ") and has_dump)]
    if blockers:
        names = ", ".join(f"{i.name} ({i.state})" for i in blockers)
        return f"Recovery blocked: {names}. Without these this runbook cannot rebuild ispCP.", "blocked"
    parts = ["Partial backup with the guide's essentials: the minimal-data recovery applies."]
    if not keysets:
        parts.append(
            "No usable key file: DATABASE_PASSWORD cannot be decrypted; the keys step must reset it "
            "(lost-keys path), and every mailbox and customer SQL password is lost with the keys."
        )
        return " ".join(parts), "lost_keys"
    if len(keysets) < 3:
        parts.append(f"Key layouts present: {', '.join(sorted(keysets))}; the others are rebuilt from them.")
    if state.get("database mysql (binary copy)") != "found":
        parts.append("The mysql database is missing: every login (ispCP's, vftp, customers') must be re-created.")
    return " ".join(parts), "minimal"
