"""inventory: what survived, and which recovery path that allows."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.connection import RootedView
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import backup_layout, ispcp_login
from ispcp_lib.facts.backup_db_reader import read_backup_database, scratch_dir
from ispcp_lib.facts.backup_layout import Item
from ispcp_lib.facts.ispcp_conf import CONF_PATH, DEFAULT_DATABASE_NAME, IspcpConf
from ispcp_lib.ispcp import backup_input, keyfiles, queries
from ispcp_lib.mysql import customer_dbs, dialect

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

What the old server says about where things live is untrusted: a folder setting of the old `ispcp.conf`
that is the system's own (`/`, `/etc`, `/usr`, the MySQL datadir, …) or that overlaps another tree, and a
domain name in the old database that is no DNS name (`../../etc`), are refused here, before anything
changes, with the setting, its value and the fix.
"""
PARAMETERS: tuple[Param, ...] = ()


def _conf_item(ctx: Context) -> tuple[Item, IspcpConf | None]:
    why = "holds the database credentials, paths, IDs and the values ispcp-update would ask for"
    path = backup_layout.shown(ctx, CONF_PATH)
    try:
        conf = backup_layout.load_old_conf(ctx)
    except InputError as exc:
        return Item("ispcp.conf", path, "invalid", exc.message, why, True), None
    if conf is None:
        return Item(
            "ispcp.conf",
            path,
            "missing",
            "copy it from any surviving source (an ispCP config tar, an old disk)",
            why,
            True,
        ), None
    missing = conf.missing(("DATABASE_USER", "DATABASE_PASSWORD"))  # an empty password is ispCP's "[none]"
    if missing:
        return Item("ispcp.conf", path, "invalid", f"lacks {', '.join(missing)}", why, True), conf
    return Item(
        "ispcp.conf", path, "found", f"ispCP {conf.get('Version', '?')}, build {conf.get('BuildDate', '?')}", why, True
    ), conf


def _key_items(ctx: Context, conf: IspcpConf | None) -> tuple[list[Item], dict[str, keyfiles.KeySet]]:
    paths = ispcp_login.key_paths(conf)
    why = {
        "php": "the GUI's key file: without the right keys the panel cannot reach its database",
        "perl_engine": "the engine's key file: ispcp-update decrypts DATABASE_PASSWORD with it",
        "perl_messenger": "the autoresponder's copy of the engine keys",
        "keys_conf": "the key file of ispCP 1.0.8 and later",
    }
    items, found = [], {}
    view = backup_layout.backup(ctx)
    for layout, logical in paths.items():
        path = backup_layout.shown(ctx, logical)
        try:
            text = view.read_text(backup_layout.checked(ctx, logical, f"key file ({layout})"))
        except InputError as exc:
            items.append(Item(f"key file ({layout})", logical, "invalid", exc.message, why[layout]))
            continue
        if text is None:
            items.append(Item(f"key file ({layout})", path, "missing", "", why[layout]))
            continue
        try:
            keys = keyfiles.parse_keyfile(layout, text, path)
        except InputError as exc:
            items.append(Item(f"key file ({layout})", path, "invalid", exc.message, why[layout]))
            continue
        ctx.secrets.add(keys.key, "db_pass_key")
        ctx.secrets.add(keys.iv, "db_pass_iv")
        found[layout] = keys
        items.append(Item(f"key file ({layout})", path, "found", "key and IV present", why[layout]))
    return items, found


def _dir_item(ctx: Context, name: str, logical: str, why: str) -> Item:
    view = backup_layout.backup(ctx)
    path = backup_layout.shown(ctx, backup_layout.checked(ctx, logical, name))
    entries = view.listdir(logical) if view.is_dir(logical) else None
    if entries is None:
        return Item(name, path, "missing", "", why)
    if not entries:
        return Item(name, path, "invalid", "empty", why)
    escapes = backup_layout.escaping_symlinks(ctx, logical)
    _refuse_escaping_folders(ctx, name, logical, escapes)
    detail = f"{len(entries)} entries"
    if escapes:
        detail += f"; {len(escapes)} symlink(s) point outside the backup (copied as links, never followed)"
    return Item(name, path, "found", detail, why)


# A symlink this close to a tree's top replaces a domain's folder (or its htdocs, mail, logs): the steps
# that copy, re-own and configure the domain (and ispcp-update) would follow it out of the tree.
FOLDER_DEPTH = 2


def _refuse_escaping_folders(ctx: Context, name: str, logical: str, escapes: list[str]) -> None:
    top = backup_layout.shown(ctx, logical).rstrip("/")
    for line in escapes:
        link = line.split(" -> ", 1)[0]
        if link.startswith(top + "/") and link[len(top) + 1 :].count("/") < FOLDER_DEPTH:
            raise InputError(
                f"{name}: symlink {link}",
                f"leaves the backup ({line.split(' -> ', 1)[-1]}) where a domain's folder belongs; the restore "
                "and ispcp-update would write through it outside the tree",
                "replace the symlink in the backup with the folder it stands for, or remove it",
                path=link,
            )


RSYNC_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")  # rsync's temporary name: .NAME.XXXXXX


def _warn_rsync_partials(ctx: Context, result: Result, www: str) -> None:
    """Files an interrupted rsync left in the web data: incomplete, never the customers' real files."""
    view = backup_layout.backup(ctx)
    if not view.is_dir(www) or view.escapes(www) is not None:
        return
    done = view.run(["find", view.path(www), "-type", "f", "-name", ".*.??????"], timeout=3600)
    found = [p for p in done.out.splitlines() if RSYNC_PARTIAL.match(p.rsplit("/", 1)[-1])]
    if found:
        result.warn(
            f"{len(found)} rsync partial file(s) in the backup's web data (an interrupted copy), e.g. {found[0]}: "
            "incomplete, so never counted as verified; copy those files again from the old server if it still runs"
        )
        result.data["rsync_partials"] = found


def _file_item(ctx: Context, name: str, logical: str, why: str) -> Item:
    try:
        backup_layout.checked(ctx, logical, name)
    except InputError as exc:
        return Item(name, logical, "invalid", exc.message, why)
    found = backup_layout.backup(ctx).is_file(logical)
    return Item(name, backup_layout.shown(ctx, logical), "found" if found else "missing", "", why)


@action("inventory", mutating=False)
def run(ctx: Context, result: Result) -> None:
    view = backup_layout.check_backup_root(ctx)
    conf_item, conf = _conf_item(ctx)
    if conf is not None:
        _check_settings(ctx, result, conf)  # refused here, before any step can act on them

    def get(key: str, default: str) -> str:
        return (conf.get(key) if conf else None) or default

    datadir = get("DATABASE_DIR", "/var/lib/mysql")
    db_name = conf.database_name if conf else DEFAULT_DATABASE_NAME
    items = [conf_item]
    for name, why, required in (
        (db_name, "every domain, mailbox, FTP and SQL account ispCP manages", True),
        ("mysql", "the database logins, ispCP's own among them; without it every login must be re-created", False),
    ):
        logical = backup_layout.checked(ctx, f"{datadir}/{name}", f"database {name}")
        state, detail = backup_layout.database_dir_state(view, logical)
        items.append(
            Item(f"database {name} (binary copy)", backup_layout.shown(ctx, logical), state, detail, why, required)
        )
        if name == "mysql" and state != "found":
            result.warn(
                f"database mysql: no usable binary copy in the backup ({state}); the old logins come back only "
                "from a dump of it, otherwise the target keeps its own and the customers' logins must be re-created"
            )
    key_items, keysets = _key_items(ctx, conf)
    items += key_items
    items.append(_dir_item(ctx, "web data", get("APACHE_WWW_DIR", "/var/www/virtual"), "the customers' web spaces"))
    _warn_rsync_partials(ctx, result, get("APACHE_WWW_DIR", "/var/www/virtual"))
    items.append(
        _dir_item(
            ctx,
            "mail data",
            get("MTA_VIRTUAL_MAIL_DIR", "/var/mail/virtual"),
            "the mailboxes: lost mail cannot be re-sent",
        )
    )
    for f in ("passwd", "shadow", "group", "gshadow"):
        item = _file_item(ctx, f"/etc/{f}", f"/etc/{f}", "the vu* domain users, vmail and the mail group")
        if f in ("passwd", "group"):  # the accounts step cannot merge without them
            item = dataclasses.replace(item, required=True)
        elif item.state == "missing":
            result.warn(f"the backup has no /etc/{f}: the accounts come without their passwords and are added locked")
        items.append(item)
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
    items += _ispcp_own_backup(ctx, get("BACKUP_FILE_DIR", "/var/www/ispcp/backups"), result)

    frame = pd.DataFrame([i.row() for i in items])
    result.table("What the backup holds", frame)
    verdict, path = _verdict(view, items, keysets)
    result.summary = verdict
    result.data.update({"path": path, "items": [i.row() for i in items], "key_layouts": sorted(keysets)})
    if len({(k.key, k.iv) for k in keysets.values()}) > 1:
        result.warn(
            "the key files in the backup disagree with each other; the keys step finds out which "
            "one decrypts DATABASE_PASSWORD"
        )
    if path == "blocked":
        raise PreconditionFailed("backup", verdict, "find the missing items listed in the table above")
    _check_domain_names(ctx, result, datadir, db_name)
    # The customers' own databases: the guide leaves them out, but every dynamic site needs them.
    customer_dbs.show(ctx, result)


def _check_settings(ctx: Context, result: Result, conf: IspcpConf) -> None:
    """The old ispcp.conf's settings: the required ones present and well-formed, the folders against the
    system's own folders and the target's ispcp.conf."""
    backup_input.check_required(conf)
    try:
        target = IspcpConf.read(ctx.target, CONF_PATH)
    except InputError:
        target = None  # a damaged dummy config is ispcp_install_check's to report
    for warning in backup_input.check_old_conf(ctx, conf, target):
        result.warn(warning)


def _check_domain_names(ctx: Context, result: Result, datadir: str, db_name: str) -> None:
    """Domain names of the old database against the DNS grammar (read by a throwaway server, nothing written)."""
    local = backup_layout.local_path(ctx, datadir)
    if local is None or not (local / db_name).is_dir():
        result.warn(
            "the domain names of the old database were not checked here (its binary copy is not on this "
            "machine); a name that is no DNS name is refused when it is used"
        )
        return
    try:
        names = read_backup_database(local, db_name, _domain_names, runner=ctx.runner, scratch=scratch_dir(ctx))
    except Exception as exc:  # unreadable here (InnoDB, no server binary): said, and the inventory goes on
        result.warn(f"the domain names of the old database could not be read: {ctx.secrets.redact(str(exc))}")
        return
    backup_input.check_domain_names(names)
    result.note(f"{sum(len(v) for v in names.values())} domain, subdomain and alias names checked: all DNS names.")


_NAME_COLUMNS = (
    ("domain", "domain_name"),
    ("subdomain", "subdomain_name"),
    ("domain_aliasses", "alias_name"),
    ("subdomain_alias", "subdomain_alias_name"),
)


def _domain_names(conn: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with conn.cursor() as cur:
        for table, column in _NAME_COLUMNS:
            dialect.execute(cur, queries.column_values(table, column))
            out[f"{table}.{column}"] = [str(row[0]) for row in cur.fetchall()]
    return out


def _ispcp_own_backup(ctx: Context, logical_dir: str, result: Result) -> list[Item]:
    view = backup_layout.backup(ctx)
    folder = backup_layout.checked(ctx, logical_dir, "BACKUP_FILE_DIR")
    dumps, tars = backup_layout.ispcp_dumps(view, folder), backup_layout.config_tars(view, folder)
    items = []
    if dumps:
        items.append(
            Item(
                "ispCP SQL dump",
                backup_layout.shown(ctx, dumps[-1]),
                "found",
                f"{len(dumps)} dump(s), newest shown",
                "ispcp-backup-ispcp's dump of the ispCP database: an alternative to the binary copy",
            )
        )
    for tar in tars[-1:]:
        names = backup_layout.tar_members(view, tar)
        if names is None:
            items.append(
                Item(
                    "ispCP config tar",
                    backup_layout.shown(ctx, tar),
                    "invalid",
                    "unreadable archive",
                    "ispcp-backup-ispcp's tar of /etc/ispcp",
                )
            )
            continue
        has_keys = any(n.endswith("ispcp-keys.conf") for n in names)
        items.append(
            Item(
                "ispCP config tar",
                backup_layout.shown(ctx, tar),
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


def _verdict(view: RootedView, items: list[Item], keysets: dict) -> tuple[str, str]:
    state = {i.name: i.state for i in items}
    if all(view.exists(p) for p in ("/bin", "/usr", "/var/lib/dpkg/status")):
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
