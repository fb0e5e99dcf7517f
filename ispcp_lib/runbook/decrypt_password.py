"""`ispcp-recover decrypt-password`: does ispcp.conf's DATABASE_PASSWORD decrypt with these key files?

For the sysadmin who only needs the password. It never prints the password unless asked with --show.
It reads files on this machine (a mounted backup, copies), never through a connection.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from ispcp_lib.core.errors import InputError
from ispcp_lib.core.secrets import REGISTRY
from ispcp_lib.facts import ispcp_login
from ispcp_lib.facts.ispcp_conf import CONF_PATH, IspcpConf
from ispcp_lib.ispcp import keyfiles

EXIT_OK, EXIT_NO_DECRYPT, EXIT_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", help="ispcp.conf holding DATABASE_PASSWORD (default: ROOT/etc/ispcp/ispcp.conf)")
    parser.add_argument(
        "--keys",
        action="append",
        default=[],
        metavar="PATH",
        help="a key file (ispcp-db-keys.php, ispcp-db-keys.pl or ispcp-keys.conf); repeatable "
        "(default: every key file ispcp.conf's ROOT_DIR/GUI_ROOT_DIR/CONF_DIR point to)",
    )
    parser.add_argument(
        "--root", default="/", help="root of the system tree the default paths are under (e.g. a mounted backup)"
    )
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the password on stdout (the only line there); otherwise it is never shown",
    )


def _read_local(layout: str, path: Path, logical: str) -> ispcp_login.KeyFile:
    raw = path.read_bytes() if path.is_file() else None
    return ispcp_login.read_keyfile(layout, raw, logical, str(path), REGISTRY)


def _read_any(path: Path) -> ispcp_login.KeyFile:
    """A key file named on the command line: its layout from its name, else whichever parser accepts it."""
    layout = keyfiles.detect_layout(str(path))
    if layout is not None:
        return _read_local(layout, path, str(path))
    first = None
    for candidate in keyfiles.LAYOUTS:
        kf = _read_local(candidate, path, str(path))
        if kf.keys is not None or kf.state in ("missing", "placeholder"):
            return kf
        first = first or kf
    assert first is not None
    first.detail += " (the file name does not say which layout it is; no layout's parser accepts it)"
    return first


def decrypt_password(
    conf: str | None,
    keys: list[str],
    root: str = "/",
    show: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Exit 0 when a key file decrypts the password, 1 when none does, 2 for unusable input."""
    base = Path(root)
    conf_path = Path(conf) if conf else base / CONF_PATH.lstrip("/")
    if not conf_path.is_file():
        print(f"ispcp.conf not found: {conf_path} (give --conf PATH or --root DIR)", file=err)
        return EXIT_INPUT
    try:
        parsed = IspcpConf.load(conf_path)
    except InputError as exc:
        print(exc.message, file=err)
        return EXIT_INPUT
    REGISTRY.add(parsed.get("DATABASE_PASSWORD"), "DATABASE_PASSWORD (encrypted)")
    if parsed.get("DATABASE_PASSWORD") == "":
        print("DATABASE_PASSWORD is empty (ispCP's '[none]'): the login has no password, nothing to decrypt", file=err)
        print("" if show else "no password", file=out)
        return EXIT_OK
    if keys:
        files = [_read_any(Path(k)) for k in keys]
    else:
        files = [
            _read_local(layout, base / logical.lstrip("/"), logical)
            for layout, logical in ispcp_login.key_paths(parsed).items()
        ]
        files = [f for f in files if f.state != "missing"]
        if not files:
            looked = ", ".join(str(base / p.lstrip("/")) for p in ispcp_login.key_paths(parsed).values())
            print(f"no key file found (looked at {looked}); give --keys PATH", file=err)
            return EXIT_INPUT
    passwords: list[str] = []
    decrypting: list[str] = []
    for kf in files:
        where = f"{kf.where} ({kf.layout})"
        if kf.keys is None:
            print(f"{where}: {kf.state}{': ' + kf.detail if kf.detail else ''}", file=err)
            continue
        try:
            password = ispcp_login.decrypt_conf_password(parsed, kf.keys)
        except ispcp_login.WrongKeys:
            print(f"{where}: does not decrypt DATABASE_PASSWORD (non-printable result: other keys)", file=err)
            continue
        except InputError as exc:  # missing or malformed DATABASE_PASSWORD: no key file can help
            print(REGISTRY.redact(exc.message), file=err)
            return EXIT_INPUT
        print(f"{where}: decrypts DATABASE_PASSWORD", file=err)
        passwords.append(password)
        decrypting.append(where)
    if not passwords:
        print("decryption fails: no key file decrypts DATABASE_PASSWORD of " + str(conf_path), file=err)
        return EXIT_NO_DECRYPT
    if len({kf.keys for kf in files if kf.keys is not None}) > 1:
        print("warning: the key files hold different keys; use the one that decrypts", file=err)
    status = f"decryption works ({len(passwords[0])} characters)"
    if show:
        print(status, file=err)
        print(passwords[0], file=out)
    else:
        print(status, file=out)
    return EXIT_OK


def cmd_decrypt_password(args: argparse.Namespace) -> int:
    return decrypt_password(args.conf, args.keys, args.root, args.show)
