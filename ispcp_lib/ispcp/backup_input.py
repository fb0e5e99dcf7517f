"""What the old server says about where things live is untrusted input: checked before anything changes.

The old `ispcp.conf` names the folders later steps (and ispcp-update) copy into, re-own and write:
`APACHE_WWW_DIR = /` would have the web restore copy the whole backup over the target's root. Domain
names from the old database become folder names under those trees: `../../etc` would leave them. The
inventory refuses such a backup before the first change of the run, naming the setting, its value
and the fix.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts.ispcp_conf import IspcpConf

# Trees the recovery copies from the backup and re-owns (user_data, register_accounts), with ispCP's defaults.
TREE_SETTINGS = {
    "APACHE_WWW_DIR": "/var/www/virtual",
    "MTA_VIRTUAL_MAIL_DIR": "/var/mail/virtual",
    "PHP_STARTER_DIR": "/var/www/fcgi",
}
# The target's own ispCP folders: no customer tree may hold them.
INSTALL_SETTINGS = {"ROOT_DIR": "/var/www/ispcp", "GUI_ROOT_DIR": "/var/www/ispcp/gui", "CONF_DIR": "/etc/ispcp"}
# Folders no path setting may be, nor contain: the system, the databases, the users' homes.
FORBIDDEN_ROOTS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
    "/var/lib",
    "/var/lib/mysql",
    "/var/run",
)
# System trees a customer tree may not lie inside (config, programs, libraries, kernel, databases).
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run")
SYSTEM_TREES += ("/sbin", "/sys", "/usr", "/var/lib/mysql", "/var/run")
# DATABASE_DIR names the old datadir inside the backup, which is read, never written.
NOT_WRITTEN = ("DATABASE_DIR",)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_FIX_SETTING = (
    "correct the line in the backup's etc/ispcp/ispcp.conf to the old server's real folder (ispCP's default "
    "is {default}); keep the original file aside"
)


def path_settings(conf: IspcpConf) -> dict[str, str]:
    """Every *_DIR setting and FTPD_CONF_FILE with a value, except those only read from the backup."""
    return {
        key: value
        for key, value in conf.values.items()
        if (key.endswith("_DIR") or key == "FTPD_CONF_FILE") and value and key not in NOT_WRITTEN
    }


def _inside(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


def _shape(value: str) -> str | None:
    """Why the value is no plain absolute path, None when it is one."""
    if not value.startswith("/"):
        return "is not an absolute path"
    if any(ch in value for ch in "\0\n\r\t"):
        return "holds a control character"
    if ".." in value.split("/") or posixpath.normpath(value) != (value.rstrip("/") or "/"):
        return "is not a plain path (it holds '..', '.' or '//')"
    return None


def run_paths(ctx: Context) -> list[str]:
    """This run's own folders on the target: the MySQL datadir and the state directory."""
    own = [ctx.logical_path(ctx.state_dir)]
    if ctx.mysql is not None:
        own.append(ctx.logical_path(ctx.mysql.datadir))
    return [p.rstrip("/") or "/" for p in own]


def setting_problem(ctx: Context, key: str, value: str) -> str | None:
    """Why a path setting of the old ispcp.conf may not be used, None when it may."""
    shape = _shape(value)
    if shape is not None:
        return shape
    path = value.rstrip("/") or "/"
    own = run_paths(ctx)
    held = [p for p in [*FORBIDDEN_ROOTS, *own] if _inside(p, path)]
    if path in held:
        return f"is {path}, a folder of the system the recovery never writes into"
    if held:
        return f"is a folder holding {', '.join(held[:3])}"
    if key not in TREE_SETTINGS:
        return None
    system = next((top for top in [*SYSTEM_TREES, *own] if _inside(path, top)), None)
    if system is not None:
        return f"lies inside {system}: the restore would copy customer data there and give it to the customers"
    real = ctx.target.realpath(path) if ctx.target.exists(path) else path
    if real != path and setting_problem(ctx, key, real) is not None:
        return f"is a symlink on the target to {real}, which a customer tree may not be"
    return None


def check_old_conf(ctx: Context, old: IspcpConf, target: IspcpConf | None) -> list[str]:
    """Refuse (InputError) a path setting of the old ispcp.conf that would make a later step write where it
    must not; returns warnings for settings that differ from the target's own ispcp.conf."""
    settings = path_settings(old)
    for key, value in settings.items():
        problem = setting_problem(ctx, key, value)
        if problem is not None:
            raise _refuse(key, value, problem, old)
    trees = {key: (settings.get(key) or default).rstrip("/") for key, default in TREE_SETTINGS.items()}
    installs = {f"the old {key}": (old.get(key) or d).rstrip("/") for key, d in INSTALL_SETTINGS.items()}
    if target is not None:
        installs |= {f"the target's {key}": (target.get(key) or d).rstrip("/") for key, d in INSTALL_SETTINGS.items()}
    for key, tree in trees.items():
        others = {k: v for k, v in trees.items() if k != key}
        for name, path in [*others.items(), *installs.items()]:
            if _inside(path, tree) or (name in others and _inside(tree, path)):
                raise _refuse(
                    key,
                    tree,
                    f"overlaps {name} ({path}): one tree would be copied over, or re-owned as, the other",
                    old,
                )
    if target is None:
        return []
    return [
        f"{key} is {value} in the old ispcp.conf but {target.get(key)} on the target: ispcp-update keeps the "
        "old value, so the restored data goes to the old path"
        for key, value in settings.items()
        if key in TREE_SETTINGS and target.get(key) and target.get(key, "").rstrip("/") != value.rstrip("/")
    ]


# Settings the later steps cannot do without, with the grammar their value must follow. A truncated
# ispcp.conf lacks some of them: refused here rather than run on defaults.
REQUIRED = {
    "APACHE_WWW_DIR": (r"/.*", "an absolute folder"),
    "MTA_VIRTUAL_MAIL_DIR": (r"/.*", "an absolute folder"),
    "APACHE_SUEXEC_USER_PREF": (r"[a-z_][a-z0-9_-]{0,15}", "a user name prefix (ispCP's default: vu)"),
    "MTA_MAILBOX_UID_NAME": (r"[a-z_][a-z0-9_-]{0,31}", "a user name (ispCP's default: vmail)"),
    "MTA_MAILBOX_UID": (r"[0-9]{1,9}", "a numeric user ID"),
    "MTA_MAILBOX_GID_NAME": (r"[a-z_][a-z0-9_-]{0,31}", "a group name (ispCP's default: mail)"),
    "MTA_MAILBOX_GID": (r"[0-9]{1,9}", "a numeric group ID"),
    "DATABASE_NAME": (r"[A-Za-z0-9_]{1,64}", "a database name of letters, digits and '_'"),
    "DATABASE_USER": (r"[A-Za-z0-9_.@-]{1,80}", "a MySQL user name"),
    "BASE_SERVER_IP": (r"[0-9.]{7,15}|[0-9A-Fa-f:]{2,39}", "an IP address"),
}


def check_required(conf: IspcpConf) -> None:
    """Refuse an old ispcp.conf that lacks a setting the recovery needs, or holds one that is malformed."""
    for key, (pattern, shape) in REQUIRED.items():
        value = (conf.get(key) or "").strip()
        if not value:
            raise InputError(
                key,
                "is missing or empty in the backup's ispcp.conf (a truncated or edited file?)",
                f"put the old server's line '{key} = ...' back into the backup's etc/ispcp/ispcp.conf",
                path=conf.path,
            )
        if not re.fullmatch(pattern, value) or (shape == "an IP address" and not _is_ip(value)):
            raise InputError(
                f"{key} = {value}",
                f"is not {shape}",
                f"correct the line in the backup's etc/ispcp/ispcp.conf to the old server's value ({shape})",
                path=conf.path,
            )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _refuse(key: str, value: str, problem: str, conf: IspcpConf) -> InputError:
    default = TREE_SETTINGS.get(key) or INSTALL_SETTINGS.get(key) or "in its ispcp.conf template"
    return InputError(
        f"{key} = {value}",
        f"{problem}; the recovery refuses to write there",
        _FIX_SETTING.format(default=default),
        path=conf.path,
    )


def domain_problem(name: str) -> str | None:
    """Why a domain name (or a subdomain label) from the old database is unusable, None when it is fine.

    The DNS grammar: labels of letters, digits and hyphens (IDNs as `xn--` labels), 1-63 characters,
    at most 253 in all. It never holds '/', '..' or anything a path could leave its folder with.
    """
    if not name or len(name) > 253:
        return "is empty or longer than 253 characters"
    if "/" in name or ".." in name:
        return "holds '/' or '..', which lead out of its folder"
    labels = name.lower().rstrip(".").split(".")
    bad = next((label for label in labels if not _LABEL.match(label)), None)
    if bad is not None:
        return f"has the label {bad!r}, not letters, digits and hyphens (IDNs are written as xn--…)"
    return None


def check_domain_names(names: dict[str, list[str]]) -> None:
    """names: column -> values read from the old database. Refuses the first that breaks the grammar."""
    for column, values in names.items():
        for value in values:
            problem = domain_problem(value)
            if problem is not None:
                raise InputError(
                    f"{column} {value!r} in the backup's database",
                    f"{problem}; it would become a folder name under the web and mail trees",
                    "correct the row in the old database (or restore a sound copy of it), then run the inventory again",
                )
