"""ispcp_lib.ispcp.crypto: byte compatibility with ispCP's Blowfish (reference vectors + live Perl Crypt::CBC)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

# ispCP's own Blowfish output for two key sets (made with the engine's Crypt::CBC call), kept in the repo.
VECTORS_FILE = Path(__file__).resolve().parents[1] / "data" / "crypto-vectors.json"

from ispcp_lib.core.errors import InputError  # noqa: E402
from ispcp_lib.ispcp.crypto import (  # noqa: E402
    KEY_CHARSET,
    PASSWORD_CHARSET,
    decrypt_db_password,
    encrypt_db_password,
    generate_iv,
    generate_key,
    looks_printable,
    random_password,
)

VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
KEY1 = 'Avj8E|_)uWO=z<Dk2|`8.eLd[c]"T"Vd'  # set 1 of the vectors
IV1 = "/d:CyLaW"
KEY2 = "x$790w2e!>OfLQR)xeCGZ<G3?`/KQBPp"  # set 2
IV2 = "?#k1t=4h"


def test_vector_file_is_complete() -> None:
    assert len(VECTORS) == 32
    assert {(v["key"], v["iv"]) for v in VECTORS} == {(KEY1, IV1), (KEY2, IV2)}


@pytest.mark.parametrize("vec", VECTORS, ids=[f"set{v['set']}-{i}" for i, v in enumerate(VECTORS)])
def test_vector_decrypts_and_reencrypts_byte_for_byte(vec: dict[str, Any]) -> None:
    expected = bytes.fromhex(vec["plaintext_utf8_hex"])  # authoritative, unlike the "plaintext" field
    got = decrypt_db_password(vec["ciphertext_base64"], vec["key"], vec["iv"])
    assert got.encode("utf-8") == expected
    assert encrypt_db_password(expected.decode("utf-8"), vec["key"], vec["iv"]) == vec["ciphertext_base64"]


@pytest.mark.parametrize("vec", VECTORS, ids=[f"set{v['set']}-{i}" for i, v in enumerate(VECTORS)])
def test_vector_with_the_other_sets_keys_is_refused(vec: dict[str, Any]) -> None:
    other_key, other_iv = (KEY2, IV2) if vec["key"] == KEY1 else (KEY1, IV1)
    with pytest.raises(InputError, match="decrypts to non-printable bytes: wrong key or IV") as exc:
        decrypt_db_password(vec["ciphertext_base64"], other_key, other_iv)
    assert exc.value.item == "DATABASE_PASSWORD"
    # Non-strict mode hands back the garbage instead of raising.
    loose = decrypt_db_password(vec["ciphertext_base64"], other_key, other_iv, strict=False)
    assert loose.encode("utf-8", "surrogateescape") != bytes.fromhex(vec["plaintext_utf8_hex"])


def test_wrong_iv_alone_garbles_the_first_block() -> None:
    ct = encrypt_db_password("abcdefghijklmnop", KEY1, IV1)
    with pytest.raises(InputError, match="wrong key or IV"):
        decrypt_db_password(ct, KEY1, IV2)
    assert decrypt_db_password(ct, KEY1, IV2, strict=False).endswith("ijklmnop")  # CBC: only block 1


@pytest.mark.parametrize("n", range(1, 26))
def test_padding_is_always_one_to_eight_spaces(n: int) -> None:
    raw = base64.b64decode(encrypt_db_password("x" * n, KEY1, IV1))
    assert len(raw) == (n // 8 + 1) * 8  # an aligned password gets a whole extra block
    assert decrypt_db_password(base64.b64encode(raw).decode(), KEY1, IV1) == "x" * n


def test_space_padding_is_really_spaces() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    from ispcp_lib.ispcp.crypto import Blowfish

    dec = Cipher(Blowfish(KEY1.encode()), modes.CBC(IV1.encode())).decryptor()
    raw = base64.b64decode(encrypt_db_password("12345678", KEY1, IV1))
    assert dec.update(raw) + dec.finalize() == b"12345678" + b" " * 8


@pytest.mark.parametrize(
    "password",
    [
        "",
        " ",
        "\x00",
        " Xy7lead",
        "Xy7trail ",
        "\tXy7lead",
        "Xy7trail\t",
        "Xy7trail\n",
        "\r\nXy7",
        "Xy7\x0b",
        "Xy7nul\x00inside",
        "Xy7ctrl\x01inside",
        "Xy7new\nline",
        "Xy7bad\udc80surrogate",
        "Xy7nbsp-end\u00a0",
        "\u3000Xy7ideographic-lead",
    ],
)
def test_encrypt_refuses_passwords_that_cannot_round_trip(password: str) -> None:
    with pytest.raises(InputError) as exc:
        encrypt_db_password(password, KEY1, IV1)
    assert exc.value.item == "DATABASE_PASSWORD"
    assert "Xy7" not in str(exc.value)  # never echo the password


def test_error_item_can_name_the_column() -> None:
    with pytest.raises(InputError) as exc:
        encrypt_db_password(" x", KEY1, IV1, item="mail_users.mail_pass")
    assert exc.value.item == "mail_users.mail_pass"
    with pytest.raises(InputError) as exc:
        decrypt_db_password("!!", KEY1, IV1, item="sql_user.sqlu_pass")
    assert exc.value.item == "sql_user.sqlu_pass"


@pytest.mark.parametrize(
    ("key", "iv", "item", "expected"),
    [
        (KEY1[:31], IV1, "DB_PASS_KEY", "32"),
        (KEY1 + "x", IV1, "DB_PASS_KEY", "32"),
        ("", IV1, "DB_PASS_KEY", "32"),
        (KEY1, IV1[:7], "DB_PASS_IV", "8"),
        (KEY1, IV1 + "x", "DB_PASS_IV", "8"),
        ("ä" * 31 + "xx", IV1, "DB_PASS_KEY", "32"),  # 33 chars but 64 bytes: the engine counts bytes
    ],
)
def test_wrong_key_or_iv_length(key: str, iv: str, item: str, expected: str) -> None:
    calls = (
        lambda: encrypt_db_password("secret", key, iv),
        lambda: decrypt_db_password("k0yJqzA/esc=", key, iv),
    )
    for call in calls:
        with pytest.raises(InputError, match="KEY or IV has invalid length") as exc:
            call()
        assert exc.value.item == item
        assert f"expected {expected}" in exc.value.problem
        assert "32-character" in exc.value.fix and "8-character" in exc.value.fix
        assert key not in str(exc.value) or key == ""  # the key itself is never printed


@pytest.mark.parametrize(
    ("ciphertext", "problem"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("k0yJqzA/esc", "not valid base64"),  # missing padding
        ("k0yJ*zA/esc=", "not valid base64"),
        ("YWJj", "not a multiple of 8"),  # 3 bytes
        ("k0yJqzA/escA", "not a multiple of 8"),  # 9 bytes
    ],
)
def test_malformed_ciphertext(ciphertext: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        decrypt_db_password(ciphertext, KEY1, IV1)


def test_ciphertext_whitespace_and_line_breaks_are_ignored() -> None:
    # Perl's encode_base64 wraps at 76 characters and ispcp.conf values may carry a trailing newline.
    password = "a-rather-long-password-" * 3
    ct = encrypt_db_password(password, KEY1, IV1)
    assert len(ct) > 76 and "\n" not in ct
    wrapped = f" {ct[:76]}\n{ct[76:]}\n"
    assert decrypt_db_password(wrapped, KEY1, IV1) == password


PRINTABLE = ["abc", "p@ss w0rd", "pässwörd€", "ÄÖÜß", "日本語パス", "emoji😀", "", "a\u00a0b"]


@pytest.mark.parametrize("text", PRINTABLE)
def test_looks_printable_accepts_text(text: str) -> None:
    assert looks_printable(text) is True


@pytest.mark.parametrize(
    "text",
    ["a\x00", "a\nb", "\t", "\x7f", "\x1b[0m", "\x85", "zero\u200bwidth", "\udc80", "\ue000", "\u0378"],
)
def test_looks_printable_rejects_control_format_private_and_unassigned(text: str) -> None:
    assert looks_printable(text) is False


def test_generated_keys_use_the_installer_charset() -> None:
    assert KEY_CHARSET == "".join(chr(c) for c in range(33, 126) if c not in (39, 92))
    assert len(KEY_CHARSET) == 91
    keys = [generate_key() for _ in range(300)]
    ivs = [generate_iv() for _ in range(300)]
    assert all(len(k) == 32 for k in keys) and all(len(i) == 8 for i in ivs)
    used = set("".join(keys + ivs))
    assert used <= set(KEY_CHARSET)
    assert "'" not in used and "\\" not in used and " " not in used
    assert len(used) > 80  # 12,000 draws from 91 characters: all but a fluke cover nearly all of them
    assert len(set(keys)) == 300 and len(set(ivs)) == 300


def test_random_password() -> None:
    assert len(random_password()) == 16
    pws = [random_password(n) for n in (1, 8, 12, 40, 64)]
    assert [len(p) for p in pws] == [1, 8, 12, 40, 64]
    many = [random_password() for _ in range(200)]
    assert len(set(many)) == 200
    assert set("".join(many)) <= set(PASSWORD_CHARSET)
    assert PASSWORD_CHARSET.isalnum() and PASSWORD_CHARSET.isascii()
    with pytest.raises(InputError):
        random_password(0)


def test_generated_material_round_trips() -> None:
    for _ in range(50):
        key, iv, pw = generate_key(), generate_iv(), random_password()
        assert decrypt_db_password(encrypt_db_password(pw, key, iv), key, iv) == pw


# --- Live cross-check against the Perl library ispCP's engine uses --------------------------------

# Crypt::CBC 3.x refuses a 32-byte -literal_key for Blowfish unless -keysize says 32 (it assumes the
# cipher's maximum, 56). Key, IV and plaintext travel as hex on stdin so no byte is reinterpreted.
PERL_CROSSCHECK = r"""
use strict; use warnings;
use Crypt::CBC; use MIME::Base64;
sub cbc { Crypt::CBC->new(-key => $_[0], -iv => $_[1], -cipher => 'Blowfish', -literal_key => 1,
                          -padding => 'space', -header => 'none', -keysize => 32) }
binmode STDIN; binmode STDOUT;
while (my $line = <STDIN>) {
    chomp $line;
    my ($kh, $ivh, $pth, $py_ct) = split / /, $line;
    my ($k, $iv) = (pack('H*', $kh), pack('H*', $ivh));
    my $ct = encode_base64(cbc($k, $iv)->encrypt(pack('H*', $pth)), '');
    my $pt = cbc($k, $iv)->decrypt(decode_base64($py_ct));
    print $ct, ' ', unpack('H*', $pt), "\n";
}
"""

# Every odd length 1..39 plus the block edges (8, 16, ...) and a few more: 30 cases.
CROSSCHECK_LENGTHS = [*range(1, 41, 2), 8, 16, 24, 32, 40, 2, 6, 12, 30, 38]
NON_ASCII = "äöüßÄÖÜéèçñø€£¥ЖЯжя中文日本語한국😀🔑"


def _perl_with_crypt_cbc() -> str | None:
    perl = shutil.which("perl")
    if perl is None:
        return None
    probe = subprocess.run([perl, "-MCrypt::CBC", "-MCrypt::Blowfish", "-e", "1"], capture_output=True)
    return perl if probe.returncode == 0 else None


def _crosscheck_password(i: int, length: int) -> str:
    if i % 3 != 1:  # two thirds plain, one third mixed with multi-byte UTF-8
        return random_password(length)
    alphabet = PASSWORD_CHARSET + "!#$%&()*+,-./:;<=>?@[]^_{|}~'\"\\ " + NON_ASCII
    chars = [secrets.choice(alphabet) for _ in range(length)]
    chars[0] = chars[-1] = secrets.choice(NON_ASCII)  # no edge whitespace, and surely non-ASCII
    return "".join(chars)


def test_python_and_perl_crypt_cbc_agree() -> None:
    perl = _perl_with_crypt_cbc()
    if perl is None:
        if os.environ.get("ISPCP_ALLOW_NO_PERL") == "1":
            pytest.skip("perl with Crypt::CBC/Crypt::Blowfish not installed")
        pytest.fail(
            "perl with Crypt::CBC and Crypt::Blowfish is required (apt install libcrypt-cbc-perl "
            "libcrypt-blowfish-perl), or set ISPCP_ALLOW_NO_PERL=1"
        )
    cases = []
    for i, length in enumerate(CROSSCHECK_LENGTHS):
        key, iv, pw = generate_key(), generate_iv(), _crosscheck_password(i, length)
        cases.append((key, iv, pw, encrypt_db_password(pw, key, iv)))
    assert len(cases) == 30 and any(not c[2].isascii() for c in cases)
    assert {1, 8, 16, 40} <= {len(c[2].encode()) for c in cases}
    hexed = [(k.encode().hex(), iv.encode().hex(), pw.encode().hex(), ct) for k, iv, pw, ct in cases]
    stdin = "".join(" ".join(fields) + "\n" for fields in hexed)
    proc = subprocess.run(
        [perl, "-e", PERL_CROSSCHECK], input=stdin.encode(), capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(cases)
    for (key, iv, pw, py_ct), line in zip(cases, lines, strict=True):
        perl_ct, perl_pt_hex = line.split(" ")
        context = f"key={key!r} iv={iv!r} password={pw!r}"  # throwaway test keys: fine to show
        assert perl_ct == py_ct, context
        assert bytes.fromhex(perl_pt_hex) == pw.encode(), context  # Perl decrypts Python's
        assert decrypt_db_password(perl_ct, key, iv) == pw, context  # Python decrypts Perl's
