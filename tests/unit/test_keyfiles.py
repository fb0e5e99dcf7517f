"""ispcp_lib.ispcp.keyfiles: read and write the three ispCP key file layouts, and convert between them."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

from ispcp_lib.core.errors import InputError  # noqa: E402
from ispcp_lib.ispcp.crypto import decrypt_db_password, generate_iv, generate_key  # noqa: E402
from ispcp_lib.ispcp.keyfiles import (  # noqa: E402
    LAYOUTS,
    KeySet,
    detect_layout,
    is_placeholder,
    layout_paths,
    parse_keyfile,
    render_keyfile,
)
from ispcp_lib.ispcp.keyfiles import _unquote_double as unquote_double  # noqa: E402  (checked against Perl)

ALL_LAYOUTS = ["php", "perl_engine", "perl_messenger", "keys_conf"]
KEY = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]"T"Vd'  # set 1 of tests/data/crypto-vectors.json
IV = "/d:CyLaW"
KEYS = KeySet(KEY, IV)
KEY_DQ = KEY.replace('"', '\\"')  # KEY inside a double-quoted PHP/Perl string

PHP_FILE = """<?php
/**
 * ispCP \u03c9 (OMEGA) a Virtual Hosting Control System
 *
 * @copyright   2006-2010 by ispCP | http://isp-control.net
 * @license     http://www.mozilla.org/MPL/ MPL 1.1
 */

// $ispcp_db_pass_key = 'an old commented-out key........';
# $ispcp_db_pass_iv = 'oldoldol';
/* $ispcp_db_pass_key = 'a block-commented key too.......'; */

$ispcp_db_pass_key = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]"T"Vd';

$ispcp_db_pass_iv = '/d:CyLaW';

?>
"""

PERL_FILE = """#!/usr/bin/perl

# ispCP \u03c9 (OMEGA) a Virtual Hosting Control System
#
# @license     http://www.mozilla.org/MPL/ MPL 1.1
# $main::db_pass_key = 'commented out, must be ignored..';

$main::db_pass_key = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]"T"Vd';

$main::db_pass_iv = '/d:CyLaW';  # trailing comment

1;
"""

CONF_FILE = """# ispCP keys (1.0.8+)
#DB_PASS_KEY=commented-out-value-must-be-ignored

DB_PASS_KEY=Avj8E|_)uWO=z<Dk2|`8.eLd[c]"T"Vd
DB_PASS_IV=/d:CyLaW
"""

REAL_FILES = {"php": PHP_FILE, "perl_engine": PERL_FILE, "perl_messenger": PERL_FILE, "keys_conf": CONF_FILE}

TEMPLATES = {
    "php": "<?php\n$ispcp_db_pass_key = '{KEY}';\n\n$ispcp_db_pass_iv = '{IV}';\n?>\n",
    "perl_engine": "#!/usr/bin/perl\n$main::db_pass_key = '{KEY}';\n\n$main::db_pass_iv = '{IV}';\n\n1;\n",
    "perl_messenger": "$main::db_pass_key = '{KEY}';\n$main::db_pass_iv = '{IV}';\n1;\n",
    "keys_conf": "DB_PASS_KEY={KEY}\nDB_PASS_IV={IV}\n",
}

# Keys an installer never writes but a hand-edited or later-version file may hold.
AWKWARD_KEYS = [
    KeySet("it's a key with \\ and ' inside!!", "ab'c\\d'e"),
    KeySet("\\" * 32, "'" * 8),
    KeySet("ends with a backslash..........\\", "\\'\\'\\'\\'"),
    KeySet("\\'" * 16, "$x@y#;//"),
    KeySet('"double" quotes; # not a comment', "=?>\\n*/x"),
]


def random_keysets(n: int) -> list[KeySet]:
    return [KeySet(generate_key(), generate_iv()) for _ in range(n)]


# --- parsing real-looking files ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_parse_real_looking_files(layout: str) -> None:
    assert parse_keyfile(layout, REAL_FILES[layout], "/backup/x") == KEYS


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_parsed_keys_decrypt_the_reference_vector(layout: str) -> None:
    keys = parse_keyfile(layout, REAL_FILES[layout])
    assert decrypt_db_password("k0yJqzA/esc=", keys.key, keys.iv) == "secret"


@pytest.mark.parametrize(
    "text",
    [
        "<?php $ispcp_db_pass_key='Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd';$ispcp_db_pass_iv='/d:CyLaW';?>",
        "<?php\r\n$ispcp_db_pass_key\t=\t'Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd' ;\r\n"
        "$ispcp_db_pass_iv =\r\n    '/d:CyLaW';\r\n?>\r\n",
        "<?php\n$ispcp_db_pass_key = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd'; // current key\n"
        "$ispcp_db_pass_iv = '/d:CyLaW' ?>",  # `?>` implies the semicolon
        # The last assignment wins, as at run time.
        "<?php $ispcp_db_pass_key = 'first...........................';\n"
        "$ispcp_db_pass_iv = 'firstiv.';\n"
        "$ispcp_db_pass_key = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd'; $ispcp_db_pass_iv = '/d:CyLaW';",
        # Double quotes with PHP's escapes.
        '<?php $ispcp_db_pass_key = "Avj8E|_)uWO=z<Dk2|`8.eLd[c]\\"T\\"Vd";\n'
        '$ispcp_db_pass_iv = "\\x2fd:\\103yLa\\u{57}";',
    ],
)
def test_parse_php_tolerates_whitespace_comments_and_quoting(text: str) -> None:
    assert parse_keyfile("php", text) == KEYS


@pytest.mark.parametrize(
    "text",
    [
        "$main::db_pass_key='Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd';$main::db_pass_iv='/d:CyLaW';1;",
        "$::db_pass_key = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd';\n$db_pass_iv = '/d:CyLaW';\n1;\n",
        "\n\n  $main::db_pass_key\n  = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]\"T\"Vd'\n;\r\n"
        "$main::db_pass_iv = '/d:CyLaW';\r\n1;",
        # Double quotes with Perl's escapes.
        f'$main::db_pass_key = "{KEY_DQ}";\n$main::db_pass_iv = "\\/d:C\\x{{79}}La\\127";',
    ],
)
def test_parse_perl_tolerates_whitespace_spellings_and_quoting(text: str) -> None:
    assert parse_keyfile("perl_engine", text) == KEYS
    assert parse_keyfile("perl_messenger", text) == KEYS


def test_parse_keys_conf_takes_values_literally() -> None:
    # `#`, `=`, quotes and `;` are in the installer's charset: in ispcp-keys.conf they are not syntax.
    key = '"#=;abcdefghijklmnopqrstuvwxyz0"'
    text = f"  # comment\n\nDB_PASS_KEY = {key}  \r\nOTHER=1\nDB_PASS_IV=#iv=='\"x\n"
    assert parse_keyfile("keys_conf", text) == KeySet(key, "#iv=='\"x")


@pytest.mark.parametrize("lang_layout", ["php", "perl_engine"])
def test_single_quote_escapes(lang_layout: str) -> None:
    var_key, var_iv = (
        ("$ispcp_db_pass_key", "$ispcp_db_pass_iv")
        if lang_layout == "php"
        else ("$main::db_pass_key", "$main::db_pass_iv")
    )
    # In single quotes only \' and \\ are escapes; any other backslash stays literal.
    text = f"{var_key} = 'it\\'s a \\\\ key with \\n literal....';\n{var_iv} = 'a\\'b\\\\c\\de';\n"
    assert parse_keyfile(lang_layout, text) == KeySet("it's a \\ key with \\n literal....", "a'b\\c\\de")


@pytest.mark.parametrize(
    ("layout", "text"),
    [
        (
            "php",
            '<?php $ispcp_db_pass_key = "$other_var_and_twenty_more_chars"; $ispcp_db_pass_iv = "12345678";',
        ),
        (
            "php",
            '<?php $ispcp_db_pass_key = "{$x}................................."; $ispcp_db_pass_iv = "1";',
        ),
        (
            "perl_engine",
            '$main::db_pass_key = "abc@list..........................."; $main::db_pass_iv = "1";',
        ),
        (
            "perl_engine",
            '$main::db_pass_key = "a$)..............................."; $main::db_pass_iv = "1";',
        ),
        (
            "perl_engine",
            '$main::db_pass_key = "\\Uupper..........................."; $main::db_pass_iv = "1";',
        ),
    ],
)
def test_double_quotes_that_interpolate_are_refused(layout: str, text: str) -> None:
    with pytest.raises(InputError, match="interpolates") as exc:
        parse_keyfile(layout, text, "/etc/x")
    assert exc.value.path == "/etc/x"


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_placeholder_template_is_refused(layout: str) -> None:
    path = LAYOUTS[layout]
    with pytest.raises(InputError) as exc:
        parse_keyfile(layout, TEMPLATES[layout], path)
    assert exc.value.problem == "holds the placeholder {KEY}: a never-initialised template"
    assert exc.value.path == path and path in str(exc.value)
    assert "backup" in exc.value.fix and "another key file layout" in exc.value.fix
    assert is_placeholder(layout, TEMPLATES[layout]) is True


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_placeholder_iv_alone_is_refused(layout: str) -> None:
    text = render_keyfile(layout, KEYS).replace(IV, "{IV}")
    with pytest.raises(InputError, match=r"holds the placeholder \{IV\}"):
        parse_keyfile(layout, text, "/p")
    assert is_placeholder(layout, text) is True


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_is_placeholder_is_false_and_quiet_otherwise(layout: str) -> None:
    assert is_placeholder(layout, REAL_FILES[layout]) is False
    assert is_placeholder(layout, "") is False
    assert is_placeholder(layout, "garbage ' \" $ = ;") is False
    assert is_placeholder("no-such-layout", TEMPLATES[layout]) is False


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_missing_assignment_names_variable_and_path(layout: str) -> None:
    full = render_keyfile(layout, KEYS)
    without_iv = "\n".join(line for line in full.splitlines() if IV not in line)
    without_key = "\n".join(line for line in full.splitlines() if KEY not in line)
    iv_name = {"php": "$ispcp_db_pass_iv", "keys_conf": "DB_PASS_IV"}.get(layout, "$main::db_pass_iv")
    key_name = {"php": "$ispcp_db_pass_key", "keys_conf": "DB_PASS_KEY"}.get(layout, "$main::db_pass_key")
    for text, name in ((without_iv, iv_name), (without_key, key_name), ("", key_name)):
        with pytest.raises(InputError, match="has no assignment") as exc:
            parse_keyfile(layout, text, "/srv/backup/keys")
        assert exc.value.item == name
        assert "/srv/backup/keys" in str(exc.value)


@pytest.mark.parametrize("layout", ["php", "perl_engine"])
def test_commented_out_assignment_counts_as_missing(layout: str) -> None:
    text = render_keyfile(layout, KEYS).replace("$", "# $", 1)  # comment out the key line
    with pytest.raises(InputError, match="has no assignment"):
        parse_keyfile(layout, text)


@pytest.mark.parametrize("layout", ["php", "perl_engine"])
def test_truncated_or_non_literal_value_is_refused(layout: str) -> None:
    full = render_keyfile(layout, KEYS)
    truncated = full[: full.index(IV) + 3]  # file cut in the middle of the IV string
    with pytest.raises(InputError, match="not assigned a plain quoted string"):
        parse_keyfile(layout, truncated, "/p")
    expr = full.replace(f"'{IV}';", f"'{IV}' . $suffix;")
    with pytest.raises(InputError, match="not assigned a plain quoted string"):
        parse_keyfile(layout, expr, "/p")


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
@pytest.mark.parametrize(
    ("keys", "item_suffix", "expected"),
    [
        (KeySet(KEY[:31], IV), "KEY", "32"),
        (KeySet(KEY + "x", IV), "KEY", "32"),
        (KeySet(KEY, IV[:7]), "IV", "8"),
        (KeySet(KEY, IV + "xx"), "IV", "8"),
    ],
)
def test_wrong_length_is_refused(layout: str, keys: KeySet, item_suffix: str, expected: str) -> None:
    good = render_keyfile(layout, KEYS)
    text = good.replace(KEY, keys.key).replace(IV, keys.iv)
    with pytest.raises(InputError, match="KEY or IV has invalid length") as exc:
        parse_keyfile(layout, text, "/p")
    assert exc.value.item.upper().endswith(item_suffix)
    assert f"expected {expected}" in exc.value.problem
    assert exc.value.path == "/p"
    with pytest.raises(InputError, match="KEY or IV has invalid length"):
        render_keyfile(layout, keys)


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(InputError, match="unknown layout"):
        parse_keyfile("ini", CONF_FILE)
    with pytest.raises(InputError, match="unknown layout"):
        render_keyfile("ini", KEYS)


NOT_FOR_KEYS_CONF = [KeySet(" " + KEY[1:], IV), KeySet(KEY, IV[:7] + " "), KeySet(KEY[:31] + "\n", IV)]


@pytest.mark.parametrize("bad", NOT_FOR_KEYS_CONF)
def test_keys_conf_refuses_values_it_cannot_hold(bad: KeySet) -> None:
    with pytest.raises(InputError, match=r"ispcp-keys\.conf cannot hold"):
        render_keyfile("keys_conf", bad)
    assert parse_keyfile("php", render_keyfile("php", bad)) == bad  # quoted layouts can


# --- rendering and round trips ----------------------------------------------------------------------


def test_render_php_format() -> None:
    text = render_keyfile("php", KEYS)
    assert text.startswith("<?php\n/**\n")
    assert text.endswith("\n?>\n")  # nothing after ?> but the newline PHP swallows
    assert f"$ispcp_db_pass_key = '{KEY}';\n" in text
    assert f"$ispcp_db_pass_iv = '{IV}';\n" in text


@pytest.mark.parametrize("layout", ["perl_engine", "perl_messenger"])
def test_render_perl_format(layout: str) -> None:
    text = render_keyfile(layout, KEYS)
    assert text.startswith("#!/usr/bin/perl\n")
    assert text.endswith("\n1;\n")
    assert f"$main::db_pass_key = '{KEY}';\n" in text
    assert f"$main::db_pass_iv = '{IV}';\n" in text


def test_render_keys_conf_format() -> None:
    lines = render_keyfile("keys_conf", KEYS).splitlines()
    assert f"DB_PASS_KEY={KEY}" in lines and f"DB_PASS_IV={IV}" in lines
    assert all(line.startswith(("#", "DB_PASS_KEY=", "DB_PASS_IV=")) for line in lines)


@pytest.mark.parametrize("layout", ["php", "perl_engine"])
def test_render_escapes_quote_and_backslash(layout: str) -> None:
    keys = KeySet("it's a key with \\ and ' inside!!", "ab'c\\d'e")
    text = render_keyfile(layout, keys)
    assert "'it\\'s a key with \\\\ and \\' inside!!'" in text
    assert "'ab\\'c\\\\d\\'e'" in text


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_round_trip_installer_keys(layout: str) -> None:
    for keys in random_keysets(300):
        assert parse_keyfile(layout, render_keyfile(layout, keys)) == keys


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
@pytest.mark.parametrize("keys", AWKWARD_KEYS, ids=range(len(AWKWARD_KEYS)))
def test_round_trip_keys_with_quote_and_backslash(layout: str, keys: KeySet) -> None:
    assert parse_keyfile(layout, render_keyfile(layout, keys)) == keys


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(ALL_LAYOUTS, ALL_LAYOUTS)))
def test_every_layout_builds_every_other(src: str, dst: str) -> None:
    for keys in [KEYS, *random_keysets(20), *AWKWARD_KEYS]:
        built = render_keyfile(dst, parse_keyfile(src, render_keyfile(src, keys), LAYOUTS[src]))
        assert parse_keyfile(dst, built, LAYOUTS[dst]) == keys
    # ...and from the hand-written, real-looking files too.
    assert parse_keyfile(dst, render_keyfile(dst, parse_keyfile(src, REAL_FILES[src]))) == KEYS


def test_a_placeholder_template_gives_no_keys_to_build_from() -> None:
    with pytest.raises(InputError, match="placeholder"):
        parse_keyfile("php", TEMPLATES["php"], LAYOUTS["php"])


# --- KeySet, paths, detection -----------------------------------------------------------------------


def test_keyset_never_shows_its_values() -> None:
    keys = KeySet(generate_key(), generate_iv())
    for shown in (repr(keys), str(keys), f"{keys}", repr([keys]), repr({"k": keys})):
        assert keys.key not in shown and keys.iv not in shown
    assert repr(keys) == "KeySet(key=<32 chars hidden>, iv=<8 chars hidden>)"


def test_keyset_is_frozen_and_compares_by_value() -> None:
    keys = KeySet(KEY, IV)
    assert keys == KEYS and hash(keys) == hash(KEYS)
    with pytest.raises(AttributeError):
        keys.key = "x"  # type: ignore[misc]


def test_layouts_default_paths() -> None:
    assert dict(LAYOUTS) == {
        "php": "/var/www/ispcp/gui/include/ispcp-db-keys.php",
        "perl_engine": "/var/www/ispcp/engine/ispcp-db-keys.pl",
        "perl_messenger": "/var/www/ispcp/engine/messenger/ispcp-db-keys.pl",
        "keys_conf": "/etc/ispcp/ispcp-keys.conf",
    }
    assert layout_paths() == dict(LAYOUTS)
    with pytest.raises(TypeError):
        LAYOUTS["php"] = "/tmp/x"  # type: ignore[index]


def test_layout_paths_follow_ispcp_conf() -> None:
    paths = layout_paths("/srv/ispcp/", "/srv/panel", "/usr/local/etc/ispcp/")
    assert paths == {
        "php": "/srv/panel/include/ispcp-db-keys.php",
        "perl_engine": "/srv/ispcp/engine/ispcp-db-keys.pl",
        "perl_messenger": "/srv/ispcp/engine/messenger/ispcp-db-keys.pl",
        "keys_conf": "/usr/local/etc/ispcp/ispcp-keys.conf",
    }
    assert layout_paths("/opt/ispcp")["php"] == "/opt/ispcp/gui/include/ispcp-db-keys.php"
    with pytest.raises(InputError, match="ROOT_DIR"):
        layout_paths("var/www/ispcp")


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_detect_layout_default_and_derived_paths(layout: str) -> None:
    assert detect_layout(LAYOUTS[layout]) == layout
    assert detect_layout(layout_paths("/srv/ispcp", "/srv/gui", "/srv/etc")[layout]) == layout


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/mnt/backup/var/www/ispcp/engine/messenger/ispcp-db-keys.pl", "perl_messenger"),
        ("/mnt/backup/var/www/ispcp/engine/ispcp-db-keys.pl", "perl_engine"),
        ("ispcp-db-keys.php", "php"),
        ("/etc/ispcp/ispcp.conf", None),
        ("/etc/ispcp/ispcp-keys.conf.bak", None),
        ("/var/www/ispcp/gui/include/ispcp-db-keys.php.orig", None),
        ("", None),
    ],
)
def test_detect_layout_by_name(path: str, expected: str | None) -> None:
    assert detect_layout(path) == expected


# --- Perl itself agrees with what we write and read ---------------------------------------------------


def _require_perl() -> str:
    perl = shutil.which("perl")
    if perl is None:
        if os.environ.get("ISPCP_ALLOW_NO_PERL") == "1":
            pytest.skip("perl not installed")
        pytest.fail("perl is required for the cross-check, or set ISPCP_ALLOW_NO_PERL=1")
    return perl


def test_perl_loads_the_rendered_perl_file(tmp_path: Path) -> None:
    perl = _require_perl()
    script = (
        "my $f = $ENV{KEYFILE}; my $r = do $f; die qq{do failed: $@ $!} unless $r; "
        "print unpack('H*', $main::db_pass_key), ' ', unpack('H*', $main::db_pass_iv), qq{\\n};"
    )
    for keys in [KEYS, *AWKWARD_KEYS, *random_keysets(5)]:
        path = tmp_path / "ispcp-db-keys.pl"
        path.write_text(render_keyfile("perl_engine", keys), encoding="utf-8")
        proc = subprocess.run(
            [perl, "-e", script], env={**os.environ, "KEYFILE": str(path)}, capture_output=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        key_hex, iv_hex = proc.stdout.decode().split()
        assert bytes.fromhex(key_hex).decode() == keys.key
        assert bytes.fromhex(iv_hex).decode() == keys.iv


PERL_DOUBLE_QUOTED = [
    "plain text",
    "\\x41\\x{42}\\103\\t\\n",
    '\\"quoted\\" \\\\ back',
    "\\$not_a_var \\@not_an_array",
    "mail@ dot",
    "\\e\\a\\f\\r\\b",
    "\\% \\# \\; \\'",
]


def test_perl_double_quoted_strings_match_perl(tmp_path: Path) -> None:
    perl = _require_perl()
    for body in PERL_DOUBLE_QUOTED:
        source = f'$main::db_pass_key = "{body}";\n$main::db_pass_iv = "x";\n1;\n'
        path = tmp_path / "dq.pl"
        path.write_text(source, encoding="utf-8")
        proc = subprocess.run(
            [perl, "-e", "do $ENV{F} or die $@; print unpack('H*', $main::db_pass_key);"],
            env={**os.environ, "F": str(path)},
            capture_output=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        perl_value = bytes.fromhex(proc.stdout.decode()).decode("latin-1")
        assert unquote_double(body, "perl") == perl_value, body
