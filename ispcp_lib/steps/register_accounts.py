"""register_accounts: re-create every domain's system user and group from the ispCP database (groups.sh)."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import mysql_creds
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.facts.ispcp_login import ispcp_login
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.ispcp import queries
from ispcp_lib.ispcp.domain_layout import DomainLayout, Owners, Places, domain_layout
from ispcp_lib.ispcp.engine import engine_env
from ispcp_lib.ispcp.root_mycnf import write_root_mycnf
from ispcp_lib.mysql import accounts, dialect
from ispcp_lib.system import ownership
from ispcp_lib.system.accounts_files import FILE_NAMES, AccountFiles

TITLE = "Register the domains' system accounts"
GUIDE = "the closing section on Apache not starting after the update, and its groups.sh script"
EXPLANATION = """
If Apache still refuses to start after ispcp-update, usually some domain's system user or group is
missing: suexec will not run a web space whose owner does not exist. The guide's remedy is a small
script (groups.sh) that reads every domain from ispCP's database, adds the missing users and groups
with `useradd`/`groupadd`, and sets the owners of each web space and FastCGI starter directory again.
It needs the database login in root's `~/.my.cnf`.

This step does the same from ispCP's `domain` table (`domain_uid`, `domain_gid`, `domain_name` are
the truth): user `vu<uid>` and group `vu<gid>` with the web space as home directory and no login
shell, as ispCP's engine adds them. Before anything changes it looks for IDs that two domains share,
or that another account on the new server already uses, and stops with the list, because handing one
ID to two owners would mix up their files. It writes `~/.my.cnf` with mode 0600 (any existing one is
kept and comes back in the `cleanup` step, which removes ours).

Owners are set the way ispCP's engine sets them, not with the guide's `chown -R vu<uid>:vu<gid>`
over the whole web space: the domain's own folder, `logs` and `phptmp` belong to the domain user and
Apache's group (mode 0770: Apache must enter them), `backups` to root, `disabled` to Apache,
`.htpasswd`/`.htgroup` to root (0644); everything else in the web space, and the FastCGI starter
folder (0555, the starter and `php5/` 0550), to the domain user and group; the mail folder of the
domain to the mailbox user (0700). Only what differs is changed.

`register_accounts_mode` chooses when it runs: `auto` (only when an account is missing), `always`,
`never`, or `ispcp_rebuild`: as `always`, and then every domain is marked for ispCP's rebuild
(`domain_status = 'change'`) and the engine's request manager runs, which writes every domain's
configuration, starters and missing folders again. The engine does not add users or fix owners on
that path (only when a domain is first added), which is why the accounts and owners come first.
The marked domains are recorded in the state directory, so a second run does not mark them again.
Before the first `groupadd`/`useradd`, `passwd`, `group`, `shadow` and `gshadow` are kept as safety
copies.
"""
PARAMETERS: tuple[Param, ...] = (
    Param(
        "register_accounts_mode",
        str,
        "auto",
        "auto: only when a domain's user or group is missing; always; never; "
        "ispcp_rebuild: ispCP's status-driven rebuild instead of useradd",
        choices=("auto", "always", "never", "ispcp_rebuild"),
    ),
)

MODES = ("auto", "always", "never", "ispcp_rebuild")
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")
# engine/ispcp_common_methods.pl add_dmn_suexec_user(): useradd -c virtual-user -s /bin/false.
GECOS = "virtual-user"
SHELL = "/bin/false"
# ispCP stores IDNs in punycode: domain names are plain ASCII labels. Anything else (a slash, "..")
# could steer the ownership fix out of the web tree, so it is refused.
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$")


@dataclass
class Domain:
    id: int
    name: str
    uid: int
    gid: int
    status: str

    def user(self, prefix: str) -> str:
        return f"{prefix}{self.uid}"

    def group(self, prefix: str) -> str:
        return f"{prefix}{self.gid}"


def target_conf(ctx: Context) -> IspcpConf:
    text = ctx.target.read_text(CONF_PATH)
    if text is None:
        raise PreconditionFailed(
            "ispcp.conf",
            "the target has none, so ispCP is not installed there",
            "install the dummy ispCP and run the earlier steps first",
            path=CONF_PATH,
        )
    return IspcpConf.parse(text, CONF_PATH)


def database_login(ctx: Context) -> Login:
    """ispCP's own login (the target's ispcp.conf, decrypted with the target's keys), else an admin login."""
    if ctx.mysql is None or not ctx.mysql.status():
        raise PreconditionFailed(
            "MySQL server",
            "is not running",
            "start it (the mysql_restore step leaves it running); then run this step again",
        )
    login = ispcp_login(ctx)
    if login is not None:
        ctx.secrets.add(login.password, "ispCP database password")
        if ctx.mysql.login_error(login.user, login.password) is None:
            return login
    admin = mysql_creds.working_admin(ctx)
    if admin is None:
        raise PreconditionFailed(
            "database login",
            "neither ispCP's own login (ispcp.conf + key files) nor an admin "
            "login (debian.cnf of the target or the backup) is accepted by the server",
            "run the keys and mysql_maintainer steps first",
        )
    return admin


def read_domains(ctx: Context, login: Login, database: str) -> list[Domain]:
    assert ctx.mysql is not None
    with ctx.mysql.connect(login.user, login.password, database) as conn, conn.cursor() as cur:
        dialect.execute(cur, queries.DOMAINS)
        rows = cur.fetchall()
    return [_domain(*row) for row in rows]


def _domain(did: object, name: object, uid: object, gid: object, status: object) -> Domain:
    if not isinstance(name, str) or not _DOMAIN.match(name):
        raise InputError(
            f"domain {did}",
            f"has the name {name!r}, which is no plain domain name",
            "correct domain_name in ispCP's domain table (IDNs are stored in punycode)",
        )
    uid_number, gid_number = int(str(uid or 0)), int(str(gid or 0))
    if not uid_number or not gid_number:
        raise InputError(
            f"domain {name}",
            f"has domain_uid {uid} / domain_gid {gid}; 0 would hand the web space to root",
            "set the domain's real IDs in ispCP's domain table",
        )
    return Domain(int(str(did)), name, uid_number, gid_number, str(status or ""))


def find_conflicts(domains: list[Domain], accounts: AccountFiles, prefix: str) -> list[str]:
    """IDs two domains share, and IDs or names the target already gives to someone else."""
    problems = []
    for label, key in (("UID", "uid"), ("GID", "gid")):
        seen: dict[int, list[str]] = {}
        for d in domains:
            seen.setdefault(getattr(d, key), []).append(d.name)
        problems += [
            f"{label} {i} is shared by the domains {', '.join(names)}" for i, names in seen.items() if len(names) > 1
        ]
    users = {e.name: e.id for e in accounts.passwd}
    uid_owner = {e.id: e.name for e in accounts.passwd}
    groups = {e.name: e.id for e in accounts.group}
    gid_owner = {e.id: e.name for e in accounts.group}
    for d in domains:
        for kind, name, wanted, by_name, by_id in (
            ("user", d.user(prefix), d.uid, users, uid_owner),
            ("group", d.group(prefix), d.gid, groups, gid_owner),
        ):
            if name in by_name and by_name[name] != wanted:
                problems.append(
                    f"{d.name}: the target's {kind} {name} has ID {by_name[name]}, the database says {wanted}"
                )
            elif name not in by_name and wanted in by_id:
                problems.append(
                    f"{d.name}: ID {wanted} for {kind} {name} already belongs to the target's {kind} {by_id[wanted]}"
                )
    return problems


def read_accounts(ctx: Context) -> AccountFiles:
    data = {name: ctx.target.read_bytes(f"/etc/{name}") or b"" for name in FILE_NAMES}
    files = AccountFiles.from_bytes(**data, paths={name: f"/etc/{name}" for name in FILE_NAMES})
    for name in ("shadow", "gshadow"):
        for e in files.file(name):
            if len(e.fields[1].lstrip("!")) >= 8:
                ctx.secrets.add(e.fields[1], "password hash")
    return files


def _owner_ids(conf: IspcpConf, accounts: AccountFiles) -> Owners:
    """The accounts ispcp.conf names for the layout, as numbers from the target's passwd and group."""

    def number(kind: str, key: str, default: str) -> int:
        name = conf.get(key) or default
        entry = (accounts.passwd if kind == "user" else accounts.group).get(name)
        if entry is None:
            raise PreconditionFailed(
                key,
                f"names the {kind} {name!r}, which the target's /etc/{'passwd' if kind == 'user' else 'group'} lacks",
                "run the accounts step first, or correct the value in ispcp.conf",
                path=CONF_PATH,
            )
        return entry.id

    return Owners(
        number("user", "APACHE_USER", "www-data"),
        number("group", "APACHE_GROUP", "www-data"),
        number("user", "ROOT_USER", "root"),
        number("group", "ROOT_GROUP", "root"),
        number("user", "MTA_MAILBOX_UID_NAME", "vmail"),
        number("group", "MTA_MAILBOX_GID_NAME", "mail"),
    )


def _places(conf: IspcpConf) -> Places:
    defaults = Places()
    return Places(
        conf.get("APACHE_WWW_DIR") or defaults.www,
        conf.get("PHP_STARTER_DIR") or defaults.starters,
        conf.get("MTA_VIRTUAL_MAIL_DIR") or defaults.mail,
        conf.get("HTACCESS_USERS_FILE_NAME") or defaults.htpasswd,
        conf.get("HTACCESS_GROUPS_FILE_NAME") or defaults.htgroup,
    )


@action("register_accounts")
def run(ctx: Context, result: Result) -> None:
    mode = ctx.step_params(PARAMETERS).register_accounts_mode
    if mode == "never":
        result.noop_reason = "register_accounts_mode is 'never'"
        return
    conf = target_conf(ctx)
    prefix = conf.get("APACHE_SUEXEC_USER_PREF") or "vu"
    login = database_login(ctx)
    database = conf.database_name
    domains = read_domains(ctx, login, database)
    accounts = read_accounts(ctx)
    result.table(f"Domains in the {database} database", pd.DataFrame(_rows(domains, accounts, prefix)))
    result.data["login"] = login.source
    _refuse_conflicts(find_conflicts(domains, accounts, prefix))
    users, groups = set(accounts.passwd.names()), set(accounts.group.names())
    missing = [d for d in domains if d.user(prefix) not in users or d.group(prefix) not in groups]
    if mode == "auto" and not missing:
        result.summary = f"{len(domains)} domains, none with a missing user or group"
        result.noop_reason = (
            f"every domain's system user and group exists ({len(domains)} domains); "
            "register_accounts_mode = 'always' also re-sets the owners of their files"
        )
        return
    write_root_mycnf(ctx, result, login)
    _add_accounts(ctx, result, missing, prefix, _places(conf).www, users, groups)
    fixed = _set_layout(ctx, result, domains, prefix, _places(conf), _owner_ids(conf, accounts))
    result.summary = (
        f"{len(domains)} domains: {len(missing)} with a missing user or group, "
        f"{fixed} with owners or modes set as ispCP's engine sets them (mode {mode})"
    )
    if mode == "ispcp_rebuild":
        _rebuild(ctx, result, login, database, domains, conf)
    elif not result.changes:
        result.noop_reason = (
            f"all {len(domains)} domains have their user and group, and their web spaces, FastCGI and "
            "mail folders already belong to them as ispCP's engine sets it"
        )


def _rows(domains: list[Domain], accounts: AccountFiles, prefix: str) -> list[dict[str, object]]:
    return [
        {
            "domain": d.name,
            "user": d.user(prefix),
            "uid": d.uid,
            "group": d.group(prefix),
            "gid": d.gid,
            "status": d.status,
            "user exists": d.user(prefix) in accounts.passwd,
            "group exists": d.group(prefix) in accounts.group,
        }
        for d in domains
    ]


def _refuse_conflicts(problems: list[str]) -> None:
    if problems:
        raise PreconditionFailed(
            "domain IDs",
            f"{len(problems)} ID collision(s): " + "; ".join(problems[:20]),
            "give each domain its own IDs (domain_uid/domain_gid in ispCP's domain table), or move the target's "
            "account out of the way (usermod/groupmod), then run this step again",
        )


def _prefix_args(ctx: Context) -> list[str]:
    """useradd/groupadd --prefix only where the target's tree is not the command's root (the local sandbox)."""
    root = ctx.target.path("/")
    return [] if root == "/" else ["--prefix", root.rstrip("/")]


def _add_accounts(
    ctx: Context, result: Result, missing: list[Domain], prefix: str, www: str, users: set[str], groups: set[str]
) -> None:
    if not missing:
        return
    # groupadd/useradd rewrite these files: safety copies first, once for the whole step.
    for name in ACCOUNT_FILES:
        ctx.keep(f"/etc/{name}")
    groupadd = ctx.target.which("groupadd") or "groupadd"
    useradd = ctx.target.which("useradd") or "useradd"
    added: set[str] = set()
    for d in missing:
        group = d.group(prefix)
        if group not in groups and group not in added:
            what = f"add group {group} (GID {d.gid}) for {d.name}"
            ctx.runner.run([groupadd, *_prefix_args(ctx), "-g", str(d.gid), group], mutates=True, what=what)
            added.add(group)
    for d in missing:
        user = d.user(prefix)
        if user in users:
            continue
        home = f"{www.rstrip('/')}/{d.name}"
        argv = [useradd, *_prefix_args(ctx), "-u", str(d.uid), "-g", str(d.gid), "-d", home, "-s", SHELL, "-M"]
        what = f"add user {user} (UID {d.uid}, GID {d.gid}) for {d.name}"
        ctx.runner.run([*argv, "-c", GECOS, user], mutates=True, what=what)
    if ctx.apply:
        _check_added(read_accounts(ctx), missing, prefix)


def _check_added(after: AccountFiles, missing: list[Domain], prefix: str) -> None:
    wrong = []
    for d in missing:
        user, group = after.passwd.get(d.user(prefix)), after.group.get(d.group(prefix))
        if user is None or user.id != d.uid or group is None or group.id != d.gid:
            wrong.append(d.name)
    if wrong:
        raise PreconditionFailed(
            "useradd/groupadd",
            f"ran, but the accounts of {', '.join(wrong)} are not in the target's passwd/group with the database's IDs",
            "look at the commands' output above",
        )


def _set_layout(
    ctx: Context, result: Result, domains: list[Domain], prefix: str, places: Places, owners: Owners
) -> int:
    """Owners and modes as ispCP's engine sets them, per domain; returns how many domains needed a change."""
    touched = 0
    absent: list[str] = []
    for d in domains:
        layout = domain_layout(places, owners, d.name, d.uid, d.gid)
        changes = _fix_trees(ctx, layout, absent) + _fix_exact(ctx, layout)
        if changes:
            touched += 1
            result.change(f"{d.name} ({d.user(prefix)}:{d.group(prefix)}): " + "; ".join(changes))
    if absent:
        result.note(
            f"{len(absent)} folder(s) do not exist and were left alone (ispCP creates them when it rebuilds "
            f"a domain): {', '.join(absent[:10])}"
        )
    return touched


def _fix_trees(ctx: Context, layout: DomainLayout, absent: list[str]) -> list[str]:
    changes = []
    for tree in layout.trees:
        if not ctx.target.is_dir(tree.root):  # a symlink is never followed into
            absent.append(tree.root)
            continue
        fix = ownership.fix_tree(
            ctx.runner, ctx.target, tree.root, tree.uid, tree.gid, apply=ctx.apply, prune=tree.prune, below_only=True
        )
        if fix.count:
            changes.append(f"owner {tree.uid}:{tree.gid} on {fix.describe()} under {tree.root}")
    return changes


def _fix_exact(ctx: Context, layout: DomainLayout) -> list[str]:
    """Owner and mode of the folders and files the engine sets one by one (one listing for all of them)."""
    found = ownership.stat_many(ctx.target, [e.path for e in layout.exact])
    changes = []
    for entry in layout.exact:
        st = found.get(entry.path)
        if st is None or st.is_link:
            continue
        if (st.uid, st.gid) != (entry.uid, entry.gid):
            ctx.runner.run(["chown", "-h", f"{entry.uid}:{entry.gid}", "--", ctx.target.path(entry.path)], mutates=True)
            changes.append(f"{entry.path} owner {st.uid}:{st.gid} -> {entry.uid}:{entry.gid}")
        if entry.mode is not None and st.mode != entry.mode:
            ctx.runner.run(["chmod", f"{entry.mode:o}", "--", ctx.target.path(entry.path)], mutates=True)
            changes.append(f"{entry.path} mode {st.mode:04o} -> {entry.mode:04o}")
    return changes


# -- ispCP's own rebuild -------------------------------------------------------------------------------

REBUILT_FILE = "rebuilt.json"  # under the state dir's register_accounts/: the domain ids marked for a rebuild


def _rebuilt_path(ctx: Context) -> str:
    return f"{ctx.state_dir}/register_accounts/{REBUILT_FILE}"


def _rebuilt_record(ctx: Context) -> dict[str, dict]:
    try:
        data = json.loads(ctx.state.read_text(_rebuilt_path(ctx)) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def rebuilt_ids(ctx: Context, database: str) -> set[int]:
    """Domains an earlier apply marked for ispCP's rebuild (per database)."""
    return {int(i) for i in _rebuilt_record(ctx).get(database, {}).get("ids", [])}


def _record_rebuilt(ctx: Context, database: str, ids: list[int]) -> None:
    data = _rebuilt_record(ctx)
    done = sorted(rebuilt_ids(ctx, database) | set(ids))
    data[database] = {"ids": done, "run_id": ctx.run_id, "ts": dt.datetime.now().isoformat(timespec="seconds")}
    ctx.save_state(_rebuilt_path(ctx), json.dumps(data, indent=1) + "\n", what="record the domains marked for rebuild")


def _rebuild(ctx: Context, result: Result, login: Login, database: str, domains: list[Domain], conf: IspcpConf) -> None:
    done = rebuilt_ids(ctx, database)
    already = [d for d in domains if d.status == "ok" and d.id in done]
    ready = [d for d in domains if d.status == "ok" and d.id not in done]
    if already:
        result.note(
            f"{len(already)} domain(s) were marked for ispCP's rebuild by an earlier run and are 'ok' "
            f"again (recorded in {_rebuilt_path(ctx)}): not marked again"
        )
    waiting = [d for d in domains if d.status == "change"]
    others = [d for d in domains if d.status not in ("ok", "change")]
    if others:
        result.warn(
            "left alone because their status is not 'ok' (a disabled domain must stay disabled, a pending "
            "request must finish first): " + ", ".join(f"{d.name} ({d.status})" for d in others[:20])
        )
    engine = f"{(conf.get('ROOT_DIR') or '/var/www/ispcp').rstrip('/')}/engine"
    manager = f"{engine}/ispcp-rqst-mngr"
    if not ready:
        if not result.changes:
            result.noop_reason = _nothing_to_rebuild(bool(already), len(waiting), manager)
        return
    ids = [d.id for d in ready]
    what = f"set domain_status = 'change' for {len(ids)} domain(s) in {database}.domain"
    ctx.sql(what, [queries.mark_for_rebuild(ids)], connect=accounts.opener(ctx, login, database))
    _record_rebuilt(ctx, database, ids)
    if ctx.target.is_file(manager):
        argv = [ctx.target.path(manager)]
        what = f"run {manager} (ispCP rebuilds the marked domains)"
        ctx.runner.run(argv, mutates=True, cwd=ctx.target.path(engine), timeout=3600, env=engine_env(ctx), what=what)
    else:
        result.warn(
            f"{manager} does not exist: after the status change, run ispCP's request manager by hand "
            f"(cd {engine} && ./ispcp-rqst-mngr)"
        )
    result.summary += f"; {len(ids)} domain(s) marked for ispCP's rebuild"


def _nothing_to_rebuild(already: bool, waiting: int, manager: str) -> str:
    if already and not waiting:
        reason = "every domain was rebuilt by ispCP after an earlier run marked it"
    else:
        reason = "no domain in status 'ok' to mark for a rebuild"
    if waiting:
        reason += (
            f"; {waiting} still wait in status 'change' from an earlier run: the request manager has not "
            f"processed them (run {manager} and read its log)"
        )
    return reason
