"""Blowfish-CBC password crypto, byte-compatible with ispCP Omega.

ispCP's engine (Perl Crypt::CBC: -literal_key, -padding => 'space', -header => 'none') and its GUI
(PHP mcrypt blowfish/cbc + trim) both use the 32-character key and 8-character IV as raw bytes,
pad the plaintext with 1..8 spaces and base64 the result. The same key/IV protect DATABASE_PASSWORD,
mail_users.mail_pass and sql_user.sqlu_pass, so this module is how the recovery proves the keys.
(The files holding the key and IV are `ispcp.keyfiles`; the step that restores them is `steps.keys`.)
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
import unicodedata
import warnings

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ispcp_lib.core.errors import InputError

with warnings.catch_warnings():
    # Blowfish lives in "decrepit" on purpose; ispCP leaves us no choice, so don't let a
    # CryptographyDeprecationWarning (present in some versions) turn into noise or, under -W error, a crash.
    warnings.simplefilter("ignore")
    from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish

KEY_LENGTH = 32
IV_LENGTH = 8
BLOCK_SIZE = 8

# The installer's alphabet: ASCII 33..125 without backslash and single quote (they would need
# escaping in the PHP/Perl key files, which old versions did not do).
KEY_CHARSET = "".join(chr(c) for c in range(33, 126) if chr(c) not in "\\'")
# Letters and digits only: safe unquoted in SQL, shell, ProFTPd's SQLConnectInfo and ispcp.conf.
PASSWORD_CHARSET = string.ascii_letters + string.digits

_LENGTH_FIX = (
    f"use the {KEY_LENGTH}-character DB_PASS_KEY and {IV_LENGTH}-character DB_PASS_IV of this installation "
    "(from /etc/ispcp/ispcp-keys.conf, gui/include/ispcp-db-keys.php or engine/ispcp-db-keys.pl "
    "in the backup)"
)


def key_iv_bytes(key: str, iv: str, path: str | None = None) -> tuple[bytes, bytes]:
    """Return key and IV as the raw bytes Blowfish gets, or raise InputError on a wrong length.

    Lengths are counted in UTF-8 bytes because that is what the Perl engine's length() sees.
    """
    key_b = key.encode("utf-8", "surrogateescape")
    iv_b = iv.encode("utf-8", "surrogateescape")
    if len(key_b) != KEY_LENGTH:
        raise InputError(
            "DB_PASS_KEY",
            f"KEY or IV has invalid length: the key is {len(key_b)} bytes, expected {KEY_LENGTH}",
            _LENGTH_FIX,
            path,
        )
    if len(iv_b) != IV_LENGTH:
        raise InputError(
            "DB_PASS_IV",
            f"KEY or IV has invalid length: the IV is {len(iv_b)} bytes, expected {IV_LENGTH}",
            _LENGTH_FIX,
            path,
        )
    return key_b, iv_b


def _cipher(key: str, iv: str) -> Cipher[modes.CBC]:
    key_b, iv_b = key_iv_bytes(key, iv)
    return Cipher(Blowfish(key_b), modes.CBC(iv_b))


def looks_printable(s: str) -> bool:
    """True if every character is printable text (any script, spaces allowed, no control characters).

    Used to tell a right key from a wrong one: wrong keys decrypt to random bytes, which are
    almost never valid UTF-8 made only of printable characters.
    """
    return all(ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in s)


def encrypt_db_password(plaintext: str, key: str, iv: str, *, item: str = "DATABASE_PASSWORD") -> str:
    """Encrypt like ispCP: UTF-8, pad with 1..8 spaces, Blowfish-CBC, base64 (one line, no header)."""
    # Refuse what would not come back unchanged: decryption strips trailing spaces (engine) or
    # trim()s both ends (GUI), and strict decryption rejects control characters.
    if plaintext == "":
        raise InputError(item, "is empty: ispCP cannot store it encrypted", "choose a password")
    if "\0" in plaintext:
        raise InputError(item, "contains a NUL byte: it cannot round-trip", "choose a password without NUL")
    if plaintext != plaintext.strip():
        raise InputError(
            item,
            "starts or ends with whitespace: ispCP strips it when decrypting, so it would not round-trip",
            "choose a password without leading or trailing whitespace",
        )
    if not looks_printable(plaintext):
        raise InputError(
            item,
            "contains control or non-printable characters: it cannot round-trip",
            "choose a password of printable characters only",
        )
    data = plaintext.encode("utf-8")
    data += b" " * (BLOCK_SIZE - len(data) % BLOCK_SIZE)  # always 1..8: a full block when aligned
    enc = _cipher(key, iv).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")


def decrypt_db_password(
    ciphertext_b64: str, key: str, iv: str, strict: bool = True, *, item: str = "DATABASE_PASSWORD"
) -> str:
    """Decrypt an ispCP password and strip the trailing space padding.

    strict=True raises InputError unless the result is printable UTF-8 text (a wrong key/IV).
    strict=False returns whatever came out; undecodable bytes are kept as surrogate escapes.
    """
    # The engine's encode_base64 breaks lines every 76 characters: ignore all whitespace.
    compact = "".join(ciphertext_b64.split())
    if not compact:
        raise InputError(item, "is empty: there is nothing to decrypt", "check the value in the backup")
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            item, "is not valid base64", "copy the exact value from ispcp.conf or the database dump"
        ) from None
    if len(raw) == 0 or len(raw) % BLOCK_SIZE:
        raise InputError(
            item,
            f"is {len(raw)} bytes after base64 decoding, not a multiple of {BLOCK_SIZE}: "
            "truncated or not made by ispCP",
            "copy the exact value from ispcp.conf or the database dump",
        )
    dec = _cipher(key, iv).decryptor()
    data = (dec.update(raw) + dec.finalize()).rstrip(b" ")  # Crypt::CBC: s/ *\z//
    if not strict:
        return data.decode("utf-8", "surrogateescape")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or not looks_printable(text):
        raise InputError(
            item,
            "decrypts to non-printable bytes: wrong key or IV",
            "use DB_PASS_KEY/DB_PASS_IV from the same installation (and backup) as this value",
        )
    return text


def generate_key() -> str:
    """A fresh 32-character key from the installer's alphabet."""
    return "".join(secrets.choice(KEY_CHARSET) for _ in range(KEY_LENGTH))


def generate_iv() -> str:
    """A fresh 8-character IV from the installer's alphabet."""
    return "".join(secrets.choice(KEY_CHARSET) for _ in range(IV_LENGTH))


def random_password(length: int = 16) -> str:
    """A random password of letters and digits: never whitespace, never needs quoting."""
    if length < 1:
        raise InputError("password length", f"is {length}", "ask for at least 1 character (default 16)")
    return "".join(secrets.choice(PASSWORD_CHARSET) for _ in range(length))
