"""ispcp_lib.facts.ispcp_login and `ispcp-recover decrypt-password`, on file trees (no MySQL needed)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.secrets import SecretRegistry
from ispcp_lib.facts import ispcp_login
from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp import keyfiles
from ispcp_lib.ispcp.crypto import encrypt_db_password, generate_iv, generate_key
from ispcp_lib.ispcp.keyfiles import KeySet
from ispcp_lib.runbook.decrypt_password import decrypt_password
from ispcp_lib.sandbox.ispcp_files import ispcp_conf

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Tr0ub4dor-and-3"
KEYS = KeySet(generate_key(), generate_iv())
OTHER = KeySet(generate_key(), generate_iv())
PHP_PLACEHOLDER = "<?php\n$ispcp_db_pass_key = '{KEY}';\n$ispcp_db_pass_iv = '{IV}';\n?>\n"


def write_tree(
    root: Path,
    keys: KeySet | None = KEYS,
    password: str = PASSWORD,
    layouts: tuple[str, ...] = ("php", "perl_engine", "perl_messenger"),
    conf_keys: KeySet = KEYS,
    root_dir: str = "/var/www/ispcp",
) -> Path:
    """A system tree with ispcp.conf (DATABASE_PASSWORD under conf_keys) and key files under keys."""
    text = ispcp_conf("1.0.5 OMEGA", "old.example.test", "192.0.2.10", password, conf_keys.key, conf_keys.iv)
    conf = IspcpConf.parse(text)
    if root_dir != "/var/www/ispcp":
        conf.set("ROOT_DIR", root_dir)
        conf.set("GUI_ROOT_DIR", root_dir + "/gui")
    (root / "etc/ispcp").mkdir(parents=True, exist_ok=True)
    (root / "etc/ispcp/ispcp.conf").write_text(conf.text())
    paths = ispcp_login.key_paths(conf)
    for layout in layouts:
        path = root / paths[layout].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(keyfiles.render_keyfile(layout, keys) if keys else "")
    return root


def make_ctx(tmp_path: Path) -> Context:
    for d in ("target", "backup", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
    return Context(
        target_root=tmp_path / "target",
        backup_root=tmp_path / "backup",
        state_dir=tmp_path / "state",
        run_id="t",
        secrets=SecretRegistry(),
    )


def key_path(root: Path, layout: str) -> Path:
    return root / keyfiles.LAYOUTS[layout].lstrip("/")


def test_keysets_reads_every_layout_and_registers_keys(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.target_root, layouts=tuple(keyfiles.LAYOUTS))
    found = ispcp_login.keysets(ctx, "target")
    assert set(found) == set(keyfiles.LAYOUTS)
    assert all(ks == KEYS for ks in found.values())
    assert KEYS.key in ctx.secrets and KEYS.iv in ctx.secrets
    assert ispcp_login.keysets(ctx, "backup") == {}  # nothing there


def test_keysets_leaves_out_placeholders_and_invalid_files(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.backup_root)
    key_path(ctx.backup_root, "php").write_text(PHP_PLACEHOLDER)
    key_path(ctx.backup_root, "perl_messenger").write_text(
        f"$main::db_pass_key = '{KEYS.key[:-1]}';\n$main::db_pass_iv = '{KEYS.iv}';\n1;\n"
    )  # 31 characters
    states = ispcp_login.keyfile_states(ctx, "backup")
    assert states["php"].state == "placeholder"
    assert states["perl_messenger"].state == "invalid" and "invalid length" in states["perl_messenger"].detail
    assert states["keys_conf"].state == "missing"
    assert KEYS.key[:-1] not in states["perl_messenger"].detail  # the detail never quotes the key
    assert KEYS.key[:-1] in ctx.secrets  # a damaged key is still most of a real one
    assert set(ispcp_login.keysets(ctx, "backup")) == {"perl_engine"}


def test_key_paths_follow_root_dir_of_that_sides_conf(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.backup_root, root_dir="/srv/ispcp")
    found = ispcp_login.keysets(ctx, "backup")
    assert set(found) == {"php", "perl_engine", "perl_messenger"}
    assert ispcp_login.keyfile_states(ctx, "backup")["php"].logical == "/srv/ispcp/gui/include/ispcp-db-keys.php"


def test_decrypt_conf_password_registers_and_refuses_bad_input(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.target_root)
    conf = ispcp_login.load_conf(ctx, "target")
    registry = SecretRegistry()
    assert ispcp_login.decrypt_conf_password(conf, KEYS, registry) == PASSWORD
    assert PASSWORD in registry and conf.get("DATABASE_PASSWORD") in registry

    with pytest.raises(ispcp_login.WrongKeys, match="non-printable") as garbage:
        ispcp_login.decrypt_conf_password(conf, OTHER, registry)
    assert garbage.value.path == conf.path

    conf.set("DATABASE_PASSWORD", "")  # ispCP's "[none]": no password, stored as is
    assert ispcp_login.decrypt_conf_password(conf, OTHER, registry) == ""

    absent = IspcpConf.parse("\n".join(line for line in conf.lines if not line.startswith("DATABASE_PASSWORD")))
    with pytest.raises(InputError, match="DATABASE_PASSWORD.*missing") as missing:
        ispcp_login.decrypt_conf_password(absent, KEYS, registry)
    assert not isinstance(missing.value, ispcp_login.WrongKeys) and "keys_lost_reset" in missing.value.fix

    conf.set("DATABASE_PASSWORD", "not base64 at all!")
    with pytest.raises(InputError, match="base64") as malformed:
        ispcp_login.decrypt_conf_password(conf, KEYS, registry)
    assert not isinstance(malformed.value, ispcp_login.WrongKeys)


def test_ispcp_login_uses_the_key_file_that_decrypts(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.backup_root, keys=KEYS)
    # The engine's file (trusted first) holds other keys: the GUI's must be used.
    key_path(ctx.backup_root, "perl_engine").write_text(keyfiles.render_keyfile("perl_engine", OTHER))
    login = ispcp_login.ispcp_login(ctx, "backup")
    assert login is not None and login.user == "root" and login.password == PASSWORD
    assert "php" in login.source and PASSWORD not in repr(login)
    assert ispcp_login.ispcp_login(ctx, "target") is None  # no ispcp.conf there


def test_ispcp_login_none_when_nothing_decrypts(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.target_root, keys=OTHER)
    assert ispcp_login.ispcp_login(ctx, "target") is None


def test_an_empty_database_password_is_a_login_without_password(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.target_root, keys=OTHER)  # the keys cannot matter: nothing is encrypted
    path = ctx.target_root / "etc/ispcp/ispcp.conf"
    conf = IspcpConf.load(path)
    conf.set("DATABASE_PASSWORD", "")
    path.write_text(conf.text())
    login = ispcp_login.ispcp_login(ctx, "target")
    assert login is not None and login.user == "root" and login.password == ""
    assert ispcp_login.load_conf(ctx, "target").missing() == []  # present though empty: ispcp_conf accepts it


def test_a_backup_key_file_symlinked_out_of_the_backup_is_invalid(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_tree(ctx.backup_root)
    outside = tmp_path / "elsewhere.php"
    outside.write_text(keyfiles.render_keyfile("php", OTHER))
    key_path(ctx.backup_root, "php").unlink()
    key_path(ctx.backup_root, "php").symlink_to(outside)
    states = ispcp_login.keyfile_states(ctx, "backup")
    assert states["php"].state == "invalid" and "outside the backup root" in states["php"].detail
    assert states["php"].keys is None and set(ispcp_login.keysets(ctx, "backup")) == {"perl_engine", "perl_messenger"}


def test_check_ispcp_login_names_the_failing_part(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ok, message = ispcp_login.check_ispcp_login(ctx)
    assert not ok and message.startswith("conf:")

    write_tree(ctx.target_root)
    ok, message = ispcp_login.check_ispcp_login(ctx)  # keys fine, no MySQL service in this context
    assert not ok and message.startswith("login:") and "not running" in message

    key_path(ctx.target_root, "php").write_text(keyfiles.render_keyfile("php", OTHER))
    ok, message = ispcp_login.check_ispcp_login(ctx)
    assert not ok and message.startswith("keys:") and "php does not decrypt" in message
    assert "perl_engine" in message.split("but")[0]  # says which ones do

    write_tree(ctx.target_root, keys=OTHER)
    ok, message = ispcp_login.check_ispcp_login(ctx)
    assert not ok and message.startswith("keys: no key file")
    for secret in (PASSWORD, KEYS.key, OTHER.key):
        assert secret not in message


# --- ispcp-recover decrypt-password ------------------------------------------------------------------


def run_cli(*args: str, root: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = list(args)
    conf = argv.pop(argv.index("--conf") + 1) if "--conf" in argv else None
    keys = [argv[i + 1] for i, a in enumerate(argv) if a == "--keys"]
    rc = decrypt_password(conf, keys, str(root) if root else "/", show="--show" in argv, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_decrypt_password_says_it_works_without_showing_it(tmp_path: Path) -> None:
    write_tree(tmp_path)
    rc, out, err = run_cli(root=tmp_path)
    assert rc == 0
    assert out == f"decryption works ({len(PASSWORD)} characters)\n"
    assert PASSWORD not in out + err and KEYS.key not in out + err
    assert "ispcp-db-keys.php (php): decrypts" in err


def test_decrypt_password_show_prints_only_the_password(tmp_path: Path) -> None:
    write_tree(tmp_path)
    rc, out, err = run_cli("--show", root=tmp_path)
    assert rc == 0 and out == PASSWORD + "\n" and "decryption works" in err


def test_decrypt_password_explicit_files_and_disagreement(tmp_path: Path) -> None:
    write_tree(tmp_path, layouts=())
    good = tmp_path / "copy-of-keys.pl"  # a name that says nothing about the layout
    good.write_text(keyfiles.render_keyfile("perl_engine", KEYS))
    bad = tmp_path / "ispcp-keys.conf"
    bad.write_text(keyfiles.render_keyfile("keys_conf", OTHER))
    rc, out, err = run_cli("--conf", str(tmp_path / "etc/ispcp/ispcp.conf"), "--keys", str(bad), "--keys", str(good))
    assert rc == 0 and out.startswith("decryption works")
    assert f"{bad} (keys_conf): does not decrypt" in err
    assert f"{good} (perl_engine): decrypts" in err and "different keys" in err


def test_decrypt_password_failures(tmp_path: Path) -> None:
    write_tree(tmp_path, keys=OTHER)
    rc, out, err = run_cli(root=tmp_path)
    assert rc == 1 and out == "" and "no key file decrypts" in err

    placeholder = tmp_path / "ispcp-db-keys.php"
    placeholder.write_text(PHP_PLACEHOLDER)
    rc, out, err = run_cli("--keys", str(placeholder), root=tmp_path)
    assert rc == 1 and "placeholder" in err

    conf = tmp_path / "etc/ispcp/ispcp.conf"
    parsed = IspcpConf.load(conf)
    parsed.set("DATABASE_PASSWORD", "")
    conf.write_text(parsed.text())
    rc, out, err = run_cli(root=tmp_path)
    assert rc == 0 and out == "no password\n" and "empty" in err  # ispCP's "[none]"

    conf.write_text("\n".join(line for line in parsed.lines if not line.startswith("DATABASE_PASSWORD")) + "\n")
    rc, out, err = run_cli(root=tmp_path)
    assert rc == 2 and "DATABASE_PASSWORD" in err and "missing" in err

    rc, out, err = run_cli(root=tmp_path / "nowhere")
    assert rc == 2 and "not found" in err


def test_decrypt_password_through_the_command_line(tmp_path: Path) -> None:
    write_tree(tmp_path)
    # The command's own entry point, run from this checkout (the installed script may be another's).
    cli = [sys.executable, "-m", "ispcp_lib.runbook.cli", "decrypt-password", "--root", str(tmp_path)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"decryption works ({len(PASSWORD)} characters)\n"
    assert PASSWORD not in proc.stdout + proc.stderr
    shown = subprocess.run([*cli, "--show"], capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert shown.returncode == 0 and shown.stdout == PASSWORD + "\n"


def test_encrypt_helper_matches_tree() -> None:
    # The tree helper really stores DATABASE_PASSWORD under conf_keys (guards the tests above).
    conf = IspcpConf.parse(ispcp_conf("1.0.5 OMEGA", "h.test", "192.0.2.1", PASSWORD, KEYS.key, KEYS.iv))
    assert conf.get("DATABASE_PASSWORD") == encrypt_db_password(PASSWORD, KEYS.key, KEYS.iv)
