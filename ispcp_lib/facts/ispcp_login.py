"""ispCP's own database login: ispcp.conf's DATABASE_USER plus DATABASE_PASSWORD, decrypted with the key files.

Read-only, on either side: the target (`ctx.target`) or the backup (`ctx.backup`, whose paths are
refused when a symlink leads out of it). Every key, IV, ciphertext and decrypted password is
registered as a secret when it is read. The Blowfish itself is `ispcp.crypto`, the key file formats
`ispcp.keyfiles`; the step that puts key files back is `steps.keys`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.secrets import REGISTRY, SecretRegistry
from ispcp_lib.facts import backup_layout, mysql_creds
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.ispcp import crypto, keyfiles
from ispcp_lib.ispcp.keyfiles import KeySet

# Which key file to trust first: the engine's (ispcp-update reads it), then the GUI's, then 1.0.8+'s.
PREFERENCE = ("perl_engine", "php", "keys_conf", "perl_messenger")
SIDES = ("target", "backup")


class WrongKeys(InputError):
    """The keys decrypt DATABASE_PASSWORD to non-printable bytes: they belong to another installation."""


@dataclass(repr=False)
class KeyFile:
    """One key file layout on one side: where it is and what state it is in."""

    layout: str
    logical: str  # the path as the server knows it
    where: str | None  # where it is read, for messages (None: the backup path escapes the backup root)
    state: str  # found | missing | placeholder | invalid
    detail: str = ""  # why it is placeholder/invalid (never holds the key)
    keys: KeySet | None = None
    raw: bytes | None = None  # the file's bytes, to restore them verbatim
    mode: int | None = None  # its permission bits

    def __repr__(self) -> str:
        return f"KeyFile({self.layout!r}, {self.logical!r}, state={self.state!r})"


def side_view(ctx: Context, side: str) -> Connection:
    """The target's connection or the backup's view."""
    if side == "target":
        return ctx.target
    if side == "backup":
        return backup_layout.backup(ctx)
    raise ValueError(f"side must be one of {SIDES}, not {side!r}")


def _where(ctx: Context, side: str, logical: str) -> str:
    """The path to read on that side; a backup path must stay inside the backup."""
    if side == "backup":
        backup_layout.checked(ctx, logical)
        return backup_layout.shown(ctx, logical)
    return logical


def load_conf(ctx: Context, side: str = "target", logical: str = CONF_PATH) -> IspcpConf | None:
    """That side's ispcp.conf, None when absent; its DATABASE_PASSWORD ciphertext is registered as a secret."""
    conf = IspcpConf.read(side_view(ctx, side), logical, display=_where(ctx, side, logical))
    if conf is not None:
        ctx.secrets.add(conf.get("DATABASE_PASSWORD"), "DATABASE_PASSWORD (encrypted)")
    return conf


def key_paths(conf: IspcpConf | None) -> dict[str, str]:
    """layout -> path of the key file, from ispcp.conf's ROOT_DIR/GUI_ROOT_DIR/CONF_DIR (defaults without it)."""
    if conf is None:
        return keyfiles.layout_paths()
    return keyfiles.layout_paths(
        conf.get("ROOT_DIR") or "/var/www/ispcp", conf.get("GUI_ROOT_DIR") or None, conf.get("CONF_DIR") or "/etc/ispcp"
    )


def read_keyfile(
    layout: str,
    raw: bytes | None,
    logical: str,
    where: str,
    secrets: SecretRegistry = REGISTRY,
    mode: int | None = None,
) -> KeyFile:
    """Classify one key file's bytes (None: absent); the key and IV are registered before anything else happens."""
    if raw is None:
        return KeyFile(layout, logical, where, "missing")
    text = raw.decode("utf-8", "surrogateescape")
    for value in keyfiles.candidate_values(layout, text):  # a damaged key is still (most of) a real key
        secrets.add(value, "DB_PASS_KEY/IV (unverified)")
    if keyfiles.is_placeholder(layout, text):
        return KeyFile(
            layout,
            logical,
            where,
            "placeholder",
            "holds the placeholders {KEY}/{IV} of a never-initialised template",
            raw=raw,
            mode=mode,
        )
    try:
        ks = keyfiles.parse_keyfile(layout, text, where)
    except InputError as exc:
        return KeyFile(layout, logical, where, "invalid", f"{exc.item}: {exc.problem}", raw=raw, mode=mode)
    secrets.add(ks.key, "DB_PASS_KEY")
    secrets.add(ks.iv, "DB_PASS_IV")
    return KeyFile(layout, logical, where, "found", "key and IV readable", ks, raw, mode)


def keyfile_states(ctx: Context, side: str = "target", conf: IspcpConf | None = None) -> dict[str, KeyFile]:
    """Every key layout of that side (paths from its ispcp.conf), found or not."""
    if conf is None:
        try:
            conf = load_conf(ctx, side)
        except InputError:
            conf = None  # a broken ispcp.conf: fall back to the default paths
    view = side_view(ctx, side)
    out: dict[str, KeyFile] = {}
    for layout, logical in key_paths(conf).items():
        try:
            where = _where(ctx, side, logical)
        except InputError as exc:  # a backup symlink escaping the backup root
            out[layout] = KeyFile(layout, logical, None, "invalid", exc.problem)
            continue
        st = view.stat(logical)
        raw = view.read_bytes(logical) if st is not None and st.is_file else None
        out[layout] = read_keyfile(layout, raw, logical, where, ctx.secrets, st.mode if st is not None else None)
    return out


def keysets(ctx: Context, side: str = "target") -> dict[str, KeySet]:
    """The parsed key layouts present on that side; placeholders and invalid files are left out."""
    return {layout: kf.keys for layout, kf in keyfile_states(ctx, side).items() if kf.keys is not None}


def ordered(layouts: dict[str, KeySet] | dict[str, KeyFile]) -> list[str]:
    """Layout names in the order they are trusted."""
    return [name for name in PREFERENCE if name in layouts] + sorted(set(layouts) - set(PREFERENCE))


def decrypt_conf_password(conf: IspcpConf, keys: KeySet, secrets: SecretRegistry = REGISTRY) -> str:
    """DATABASE_PASSWORD of conf in plain text (registered as a secret).

    An empty value is ispCP's "[none]": the login has no password, and ispCP stores it unencrypted.
    InputError when it is missing, or when the keys decrypt it to non-printable bytes (wrong keys).
    """
    cipher = conf.get("DATABASE_PASSWORD")
    if cipher == "":
        return ""
    if cipher is None:
        raise InputError(
            "DATABASE_PASSWORD",
            "is missing in ispcp.conf, so there is no database password to decrypt",
            "take the DATABASE_PASSWORD line from another copy of the old ispcp.conf (an ispCP config tar, "
            "ispcp.old.conf); with no copy left, remove the key files from the backup copy and use the "
            "lost-keys reset (keys_lost_reset = True)",
            path=conf.path,
        )
    secrets.add(cipher, "DATABASE_PASSWORD (encrypted)")
    try:  # a malformed value (base64, length) is the config's fault, whatever the keys
        crypto.decrypt_db_password(cipher, keys.key, keys.iv, strict=False)
    except InputError as exc:
        raise InputError(exc.item, exc.problem, exc.fix, path=conf.path) from None
    try:
        password = crypto.decrypt_db_password(cipher, keys.key, keys.iv, strict=True)
    except InputError as exc:
        raise WrongKeys(exc.item, exc.problem, exc.fix, path=conf.path) from None
    secrets.add(password, "DATABASE_PASSWORD")
    return password


def try_decrypt(conf: IspcpConf, found: dict[str, KeySet], secrets: SecretRegistry = REGISTRY) -> dict[str, str | None]:
    """layout -> decrypted password, or None where that layout's keys give garbage."""
    out: dict[str, str | None] = {}
    for layout in ordered(found):
        try:
            out[layout] = decrypt_conf_password(conf, found[layout], secrets)
        except WrongKeys:
            out[layout] = None
    return out


def ispcp_login(ctx: Context, side: str = "target") -> Login | None:
    """DATABASE_USER and the decrypted DATABASE_PASSWORD of that side; None if it cannot be decrypted."""
    try:
        conf = load_conf(ctx, side)
    except InputError:
        return None
    user = conf.get("DATABASE_USER") if conf is not None else None
    if conf is None or not user or "DATABASE_PASSWORD" not in conf:
        return None
    if conf.get("DATABASE_PASSWORD") == "":
        return Login(user, "", f"{side} ispcp.conf (no password)")
    found = keysets(ctx, side)
    for layout, password in try_decrypt(conf, found, ctx.secrets).items():
        if password is not None:
            return Login(user, password, f"{side} ispcp.conf with the {layout} key file")
    return None


def database_logins(ctx: Context) -> Iterator[Login]:
    """The logins that may read ispCP's database, best first: ispCP's own (the target's ispcp.conf and
    keys), then a working admin login, looked for only when the caller asks for the next one."""
    own = ispcp_login(ctx)
    if own is not None:
        yield own
    admin = mysql_creds.working_admin(ctx)
    if admin is not None:
        yield admin


def check_conf_login(ctx: Context, conf: IspcpConf, files: dict[str, KeyFile]) -> tuple[bool, str]:
    """Do these key files all decrypt conf's DATABASE_PASSWORD, and does it open DATABASE_NAME?

    The message names the failing part (conf, keys or login), never a secret.
    """
    user = conf.get("DATABASE_USER")
    database = conf.database_name
    if not user:
        return False, f"conf: {conf.path} has no DATABASE_USER"
    if "DATABASE_PASSWORD" not in conf:
        return False, f"conf: {conf.path} has no DATABASE_PASSWORD"
    present = {layout: kf for layout, kf in files.items() if kf.state != "missing"}
    broken = [f"{layout} ({kf.state}: {kf.detail})" for layout, kf in present.items() if kf.keys is None]
    found = {layout: kf.keys for layout, kf in present.items() if kf.keys is not None}
    if not found:
        return False, "keys: no readable key file" + (f"; {'; '.join(broken)}" if broken else " at all")
    results = try_decrypt(conf, found, ctx.secrets)
    good = [layout for layout, pw in results.items() if pw is not None]
    bad = [layout for layout, pw in results.items() if pw is None]
    if not good:
        return False, (
            f"keys: no key file ({', '.join(bad)}) decrypts DATABASE_PASSWORD of {conf.path}: "
            "they belong to another installation"
        )
    if bad or broken:
        why = [f"{layout} does not decrypt it" for layout in bad] + broken
        return False, f"keys: {', '.join(good)} decrypt DATABASE_PASSWORD, but {'; '.join(why)}"
    if ctx.mysql is None or not ctx.mysql.status():
        return False, "login: the MySQL server is not running, so the login cannot be tried"
    reason = ctx.mysql.login_error(user, results[good[0]], database)
    if reason is not None:
        return False, ctx.secrets.redact(
            f"login: the keys decrypt DATABASE_PASSWORD, but MySQL refuses {user} on database {database}: {reason}"
        )
    return True, (
        f"verified: the key files ({', '.join(good)}) decrypt DATABASE_PASSWORD and {user} "
        f"logs into database {database}"
    )


def check_ispcp_login(ctx: Context) -> tuple[bool, str]:
    """Does the TARGET's ispcp.conf with the TARGET's keys log into the running MySQL and open DATABASE_NAME?"""
    try:
        conf = load_conf(ctx, "target")
    except InputError as exc:
        return False, f"conf: {exc.message}"
    if conf is None:
        return False, f"conf: the target has no {CONF_PATH}"
    return check_conf_login(ctx, conf, keyfile_states(ctx, "target", conf))
