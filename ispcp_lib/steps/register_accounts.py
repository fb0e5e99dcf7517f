"""register_accounts: re-create every domain's system user and group from the ispCP database (groups.sh)."""

from __future__ import annotations

import configparser
import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ispcp_lib.core import fileops
from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError, PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts import mysql_creds
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.facts.ispcp_login import ispcp_login
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.steps.ispcp_update import script_env
from ispcp_lib.system import ownership
from ispcp_lib.system.accounts_files import AccountFiles

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
shell. Before anything changes it looks for IDs that two domains share, or that another account on
the new server already uses, and stops with the list, because handing one ID to two owners would
mix up their files. It writes `~/.my.cnf` with mode 0600 (any existing one is kept and comes back
in the `cleanup` step, which removes ours).

`register_accounts_mode` chooses when it runs: `auto` (only when an account is missing), `always`,
`never`, or `ispcp_rebuild`: ispCP's own way, which marks every domain for a rebuild
(`domain_status = 'change'`) and runs the engine's request manager, which re-creates users and
permissions itself. The marked domains are recorded in the state directory, so a second run does not
mark them again. Before the first `groupadd`/`useradd`, `passwd`, `group`, `shadow` and `gshadow` are
kept as safety copies.
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

MY_CNF = "/root/.my.cnf"
MARKER = "# written by ispcp-recovery (register_accounts); the cleanup step removes it"
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
    path = ctx.t("/etc/ispcp/ispcp.conf")
    if not path.is_file():
        raise PreconditionFailed(
            "ispcp.conf",
            "the target has none, so ispCP is not installed there",
            "install the dummy ispCP and run the earlier steps first",
            path=str(path),
        )
    return IspcpConf.load(path, display=ctx.display_path(path))


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
        if ctx.mysql.can_login(login.user, login.password) is None:
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
    with ctx.mysql.connect(login.user, login.password, database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT domain_id, domain_name, domain_uid, domain_gid, domain_status FROM domain ORDER BY domain_id"
        )
        rows = cur.fetchall()
    domains = []
    for did, name, uid, gid, status in rows:
        if not isinstance(name, str) or not _DOMAIN.match(name):
            raise InputError(
                f"domain {did}",
                f"has the name {name!r}, which is no plain domain name",
                "correct domain_name in ispCP's domain table (IDNs are stored in punycode)",
            )
        if not uid or not gid:
            raise InputError(
                f"domain {name}",
                f"has domain_uid {uid} / domain_gid {gid}; 0 would hand the web space to root",
                "set the domain's real IDs in ispCP's domain table",
            )
        domains.append(Domain(int(did), name, int(uid), int(gid), str(status or "")))
    return domains


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


def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def _prefix_args(ctx: Context) -> list[str]:
    return [] if ctx.target_root == Path("/") else ["--prefix", str(ctx.target_root)]


def _read_accounts(ctx: Context) -> AccountFiles:
    data = {
        n: (ctx.t(f"/etc/{n}").read_bytes() if ctx.t(f"/etc/{n}").is_file() else b"")
        for n in ("passwd", "shadow", "group", "gshadow")
    }
    files = AccountFiles.from_bytes(**data, paths={n: ctx.display_path(ctx.t(f"/etc/{n}")) for n in data})
    for n in ("shadow", "gshadow"):
        for e in files.file(n):
            if len(e.fields[1].lstrip("!")) >= 8:
                ctx.secrets.add(e.fields[1], "password hash")
    return files


@action("register_accounts")
def run(ctx: Context, result: Result) -> None:
    mode = ctx.step_params(PARAMETERS).register_accounts_mode
    if mode == "never":
        result.noop_reason = "register_accounts_mode is 'never'"
        return
    conf = target_conf(ctx)
    prefix = conf.get("APACHE_SUEXEC_USER_PREF") or "vu"
    www = conf.get("APACHE_WWW_DIR") or "/var/www/virtual"
    starters = conf.get("PHP_STARTER_DIR") or "/var/www/fcgi"
    login = database_login(ctx)
    database = conf.get("DATABASE_NAME") or "ispcp"
    domains = read_domains(ctx, login, database)
    accounts = _read_accounts(ctx)
    problems = find_conflicts(domains, accounts, prefix)
    users = {e.name for e in accounts.passwd}
    groups = {e.name for e in accounts.group}
    rows = [
        {
            "domain": d.name,
            "user": d.user(prefix),
            "uid": d.uid,
            "group": d.group(prefix),
            "gid": d.gid,
            "status": d.status,
            "user exists": d.user(prefix) in users,
            "group exists": d.group(prefix) in groups,
        }
        for d in domains
    ]
    result.table(f"Domains in the {database} database", pd.DataFrame(rows))
    result.data["login"] = login.source
    if problems:
        raise PreconditionFailed(
            "domain IDs",
            f"{len(problems)} ID collision(s): " + "; ".join(problems[:20]),
            "give each domain its own IDs (domain_uid/domain_gid in ispCP's domain table), or move the target's "
            "account out of the way (usermod/groupmod), then run this step again",
        )
    missing = [d for d in domains if d.user(prefix) not in users or d.group(prefix) not in groups]
    result.summary = f"{len(domains)} domains, {len(missing)} with a missing user or group (mode {mode})"
    if mode == "ispcp_rebuild":
        _rebuild(ctx, result, login, database, domains, conf)
        return
    if mode == "auto" and not missing:
        result.noop_reason = (
            f"every domain's system user and group exists ({len(domains)} domains); "
            "register_accounts_mode = 'always' also re-sets the owners of their files"
        )
        return
    write_root_mycnf(ctx, result, login)
    _add_accounts(ctx, result, missing, prefix, www, users, groups)
    fixed = _fix_owners(ctx, result, domains, prefix, www, starters)
    result.summary = (
        f"{len(domains)} domains: {len(missing)} with a missing user or group"
        f", {fixed} web space(s) or FastCGI director(ies) re-owned"
    )
    if not result.changes:
        result.noop_reason = (
            f"all {len(domains)} domains have their user and group, and their web spaces and "
            "FastCGI directories already belong to them"
        )


ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


def _add_accounts(
    ctx: Context, result: Result, missing: list[Domain], prefix: str, www: str, users: set[str], groups: set[str]
) -> None:
    if ctx.apply and any(d.group(prefix) not in groups or d.user(prefix) not in users for d in missing):
        # groupadd/useradd rewrite these files: safety copies first, once for the whole step.
        for name in ACCOUNT_FILES:
            ctx.keep(ctx.t(f"/etc/{name}"))
    added_groups: set[str] = set()
    for d in missing:
        group = d.group(prefix)
        if group not in groups and group not in added_groups:
            ctx.runner.run([_tool("groupadd"), *_prefix_args(ctx), "-g", str(d.gid), group], mutates=True)
            result.change(f"add group {group} (GID {d.gid}) for {d.name}")
            added_groups.add(group)
    for d in missing:
        user = d.user(prefix)
        if user in users:
            continue
        ctx.runner.run(
            [
                _tool("useradd"),
                *_prefix_args(ctx),
                "-u",
                str(d.uid),
                "-g",
                str(d.gid),
                "-d",
                f"{www.rstrip('/')}/{d.name}",
                "-s",
                "/bin/false",
                "-M",
                "-c",
                "vu-master",
                user,
            ],
            mutates=True,
        )
        result.change(f"add user {user} (UID {d.uid}, GID {d.gid}) for {d.name}")
    if ctx.apply and missing:
        after = _read_accounts(ctx)
        wrong = [
            d.name
            for d in missing
            if (e := after.passwd.get(d.user(prefix))) is None
            or e.id != d.uid
            or (g := after.group.get(d.group(prefix))) is None
            or g.id != d.gid
        ]
        if wrong:
            raise PreconditionFailed(
                "useradd/groupadd",
                f"ran, but the accounts of {', '.join(wrong)} are not in "
                "the target's passwd/group with the database's IDs",
                "look at the commands' output above",
            )


def _fix_owners(ctx: Context, result: Result, domains: list[Domain], prefix: str, www: str, starters: str) -> int:
    """Each domain's web space and FastCGI starter directory belong to vu<uid>:vu<gid> (groups.sh's chown -R).

    Returns how many directories needed a fix."""
    total = 0
    absent = []
    for d in domains:
        for what, base in (("web space", www), ("FastCGI directory", starters)):
            path = ctx.t(f"{base.rstrip('/')}/{d.name}")
            if not path.is_dir() or path.is_symlink():
                absent.append(ctx.display_path(path))
                continue
            fix = ownership.fix_tree(ctx.runner, path, d.uid, d.gid, apply=ctx.apply)
            if fix.count:
                total += 1
                result.change(
                    f"set owner {d.user(prefix)}:{d.group(prefix)} ({d.uid}:{d.gid}) in the {what} "
                    f"{ctx.display_path(path)}: {fix.describe()}"
                )
    if absent:
        result.note(
            f"{len(absent)} director(ies) do not exist and were left alone (ispCP creates FastCGI "
            f"directories when it rebuilds a domain): {', '.join(absent[:10])}"
        )
    return total


# -- ispCP's own rebuild -------------------------------------------------------------------------------

REBUILT_FILE = "rebuilt.json"  # under the state dir's register_accounts/: the domain ids marked for a rebuild


def _rebuilt_path(ctx: Context) -> Path:
    return ctx.state_dir / "register_accounts" / REBUILT_FILE


def rebuilt_ids(ctx: Context, database: str) -> set[int]:
    """Domains an earlier apply marked for ispCP's rebuild (per database)."""
    try:
        data = json.loads(_rebuilt_path(ctx).read_text())
    except (OSError, ValueError):
        return set()
    return {int(i) for i in data.get(database, {}).get("ids", [])}


def _record_rebuilt(ctx: Context, database: str, ids: list[int]) -> None:
    path = _rebuilt_path(ctx)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    done = sorted(rebuilt_ids(ctx, database) | set(ids))
    data[database] = {"ids": done, "run_id": ctx.run_id, "ts": dt.datetime.now().isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fileops.atomic_write(path, json.dumps(data, indent=1) + "\n", 0o600)


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
    engine = ctx.t(f"{(conf.get('ROOT_DIR') or '/var/www/ispcp').rstrip('/')}/engine")
    manager = engine / "ispcp-rqst-mngr"
    if not ready:
        result.noop_reason = (
            "every domain was rebuilt by ispCP after an earlier run marked it"
            if already and not waiting
            else "no domain in status 'ok' to mark for a rebuild"
        ) + (
            f"; {len(waiting)} still wait in status 'change' from an earlier run: the request "
            f"manager has not processed them (run {ctx.display_path(manager)} and read its log)"
            if waiting
            else ""
        )
        return
    ids = [d.id for d in ready]
    result.change(f"set domain_status = 'change' for {len(ids)} domain(s) in {database}.domain")
    if ctx.apply:
        with ctx.mysql.connect(login.user, login.password, database) as conn, conn.cursor() as cur:
            marks = ",".join(["%s"] * len(ids))
            cur.execute(
                f"UPDATE domain SET domain_status = 'change' WHERE domain_status = 'ok' AND domain_id IN ({marks})", ids
            )
        _record_rebuilt(ctx, database, ids)
    if manager.is_file():
        ctx.runner.run([str(manager)], mutates=True, cwd=str(engine), timeout=3600, env=script_env(ctx))
        result.change(f"run {ctx.display_path(manager)} (ispCP rebuilds the marked domains)")
    else:
        result.warn(
            f"{ctx.display_path(manager)} does not exist: after the status change, run ispCP's request "
            f"manager by hand (cd {ctx.display_path(engine)} && ./ispcp-rqst-mngr)"
        )
    result.summary = f"{len(ids)} domain(s) marked for ispCP's rebuild"


# -- root's ~/.my.cnf ------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    """A MySQL option-file value in double quotes (backslash escapes, as the client reads them)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mycnf_text(ctx: Context, login: Login) -> str:
    lines = [MARKER, "[client]", f"user = {_quote(login.user)}", f"password = {_quote(login.password)}"]
    if ctx.mysql is not None:
        lines.append(f"socket = {_quote(str(ctx.mysql.socket))}")
    return "\n".join(lines) + "\n"


def _previous_copy(ctx: Context) -> Path:
    """Where root's own ~/.my.cnf waits until cleanup (a fixed place: cleanup may run in a later run)."""
    return ctx.state_dir / "register_accounts" / "root.my.cnf.previous"


def write_root_mycnf(ctx: Context, result: Result, login: Login) -> None:
    path = ctx.t(MY_CNF)
    text = mycnf_text(ctx, login)
    what = f"write {ctx.display_path(path)} (mode 0600) with the {login.user} login; cleanup removes it"
    if path.is_file() and not path.is_symlink():
        current = path.read_text(errors="replace")
        _register_mycnf_password(ctx, current)
        if current.startswith(MARKER):
            # Ours from an earlier run: replaced in place, never through write_file, whose safety copy would
            # leave a password in the backups folder (root's own file was kept already, when ours first came).
            st = path.stat()
            if current == text and (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 0, 0):
                return
            result.change(what)
            if ctx.apply:
                fileops.atomic_write(path, text, 0o600, 0, 0)
                _prove_mycnf(ctx, path)
            return
        if ctx.apply:
            keep = _previous_copy(ctx)
            if not keep.exists():
                keep.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fileops.safety_copy(path, keep.parent, keep.name)
    if ctx.write_file(path, text, mode=0o600, uid=0, gid=0, show_diff=False, what=what):
        if ctx.apply:
            _prove_mycnf(ctx, path)


def _prove_mycnf(ctx: Context, path: Path) -> None:
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        return
    ctx.runner.run([client, f"--defaults-file={path}", "--batch", "--skip-column-names", "-e", "SELECT 1"], timeout=60)


def _register_mycnf_password(ctx: Context, text: str) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return
    for section in parser.sections():
        value = parser.get(section, "password", fallback=None)
        if value:
            ctx.secrets.add(value.strip().strip('"').strip("'"), "~/.my.cnf password")
            ctx.secrets.add(value, "~/.my.cnf password")


def remove_root_mycnf(ctx: Context, result: Result) -> None:
    """Called by cleanup: remove the ~/.my.cnf written here, or put root's previous one back."""
    path = ctx.t(MY_CNF)
    previous = _previous_copy(ctx)
    if not path.is_file():
        return
    text = path.read_text(errors="replace")
    _register_mycnf_password(ctx, text)
    if not text.startswith(MARKER):
        if previous.exists():
            result.warn(
                f"{ctx.display_path(path)} was changed after register_accounts wrote it; left as it is "
                f"(root's earlier file is kept at {previous})"
            )
        return
    if previous.exists():
        _register_mycnf_password(ctx, previous.read_text(errors="replace"))
        result.change(f"put root's own {ctx.display_path(path)} back (register_accounts had replaced it)")
        if ctx.apply:
            st = previous.stat()
            fileops.atomic_write(path, previous.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
            previous.unlink()
        return
    result.change(f"remove {ctx.display_path(path)} (written by register_accounts, holds a database password)")
    if ctx.apply:  # no safety copy: it is our own file, and a copy would keep the password on disk
        path.unlink()
