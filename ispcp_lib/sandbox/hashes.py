"""Real crypt(3) hashes for shadow, ftp_users and admin rows, made by the system's own libc.

Python 3.13 dropped the crypt module, and hand-written SHA-512-crypt is slow; one Perl process
calling libc crypt() for the whole batch is fast and gives exactly what useradd/ProFTPd would see.
Plaintexts go through stdin, never argv (argv is visible in ps).
"""

from __future__ import annotations

from collections.abc import Sequence

from ispcp_lib.core.errors import InputError
from ispcp_lib.core.runner import Runner

_PERL = 'while (<STDIN>) { chomp; my ($p, $s) = split /\\t/, $_, 2; print crypt($p, $s), "\\n"; }'


def crypt_many(pairs: Sequence[tuple[str, str]], runner: Runner | None = None) -> list[str]:
    """Hash each (plaintext, salt spec) pair; a salt spec is e.g. '$6$abcdefgh$' or '$1$abcdefgh$'."""
    if not pairs:
        return []
    for plain, salt in pairs:
        if "\t" in plain or "\n" in plain or "\n" in salt:
            raise InputError("sandbox password", "contains a tab or newline", "use letters and digits")
    data = "".join(f"{p}\t{s}\n" for p, s in pairs)
    out = (runner or Runner()).run(["perl", "-e", _PERL], input=data, timeout=600).stdout.splitlines()
    if len(out) != len(pairs) or any(not h.startswith(s[:3]) for h, (_, s) in zip(out, pairs)):
        raise InputError("crypt()", "did not return one hash per password", "check perl and libcrypt")
    return out


def sha512_salt(salt: str) -> str:
    return f"$6${salt}$"


def md5_salt(salt: str) -> str:
    return f"$1${salt}$"
