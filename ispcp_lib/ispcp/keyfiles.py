"""The key files: ispCP's three layouts of DB_PASS_KEY/DB_PASS_IV, read any of them, write any of them.

1.0.0-1.0.7 keep the key/IV in gui/include/ispcp-db-keys.php and engine/ispcp-db-keys.pl (plus the
messenger's copy); 1.0.8+ in /etc/ispcp/ispcp-keys.conf. One layout holds everything the others need,
so a recovery can rebuild a lost file from whichever survived in the backup (render(parse(…))).
Text in, text out: reading them from a server is `facts.ispcp_login`; the Blowfish they feed is
`ispcp.crypto`; the step that puts them back is `steps.keys`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType

from ispcp_lib.core.errors import InputError
from ispcp_lib.ispcp.crypto import IV_LENGTH, KEY_LENGTH

PLACEHOLDERS = ("{KEY}", "{IV}")

# Variable names per layout: (key, iv). Perl also accepts the package-less spellings because
# `$db_pass_key` at file scope of a `do`/`require`d file is `$main::db_pass_key`.
_PHP_NAMES = ("ispcp_db_pass_key", "ispcp_db_pass_iv")
_PERL_NAMES = ("main::db_pass_key", "main::db_pass_iv")
_CONF_NAMES = ("DB_PASS_KEY", "DB_PASS_IV")


@dataclass(frozen=True, repr=False)
class KeySet:
    """DB_PASS_KEY and DB_PASS_IV. The repr hides both: they decrypt every password on the server."""

    key: str
    iv: str

    def __repr__(self) -> str:
        return f"KeySet(key=<{len(self.key)} chars hidden>, iv=<{len(self.iv)} chars hidden>)"

    __str__ = __repr__


def layout_paths(
    root_dir: str = "/var/www/ispcp", gui_root_dir: str | None = None, conf_dir: str = "/etc/ispcp"
) -> dict[str, str]:
    """Key file paths from ispcp.conf's ROOT_DIR, GUI_ROOT_DIR (default ROOT_DIR/gui) and CONF_DIR."""
    for name, value in (("ROOT_DIR", root_dir), ("GUI_ROOT_DIR", gui_root_dir), ("CONF_DIR", conf_dir)):
        if value is not None and not value.startswith("/"):
            raise InputError(name, f"is not an absolute path: {value!r}", "fix the value in ispcp.conf")
    root = PurePosixPath(root_dir)
    gui = PurePosixPath(gui_root_dir) if gui_root_dir is not None else root / "gui"
    return {
        "php": str(gui / "include" / "ispcp-db-keys.php"),
        "perl_engine": str(root / "engine" / "ispcp-db-keys.pl"),
        "perl_messenger": str(root / "engine" / "messenger" / "ispcp-db-keys.pl"),
        "keys_conf": str(PurePosixPath(conf_dir) / "ispcp-keys.conf"),
    }


LAYOUTS: Mapping[str, str] = MappingProxyType(layout_paths())


def detect_layout(path: str) -> str | None:
    """The layout a file has, judged by its name (and, for the Perl copies, its directory)."""
    p = PurePosixPath(path)
    if p.name == "ispcp-db-keys.php":
        return "php"
    if p.name == "ispcp-db-keys.pl":
        return "perl_messenger" if p.parent.name == "messenger" else "perl_engine"
    if p.name == "ispcp-keys.conf":
        return "keys_conf"
    return None


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise InputError("key file layout", f"unknown layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")


# --- PHP/Perl scanning -------------------------------------------------------------------------
# A real tokenizer (not a line regex) so that comments, commented-out assignments and `#` or `;`
# inside quoted keys are all handled correctly.

_VAR_RE = re.compile(r"\$((?:[A-Za-z_]\w*)?(?:::[A-Za-z_]\w*)+|[A-Za-z_]\w*)")
_WORD_RE = re.compile(r"\w+")

_PHP_DQ_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "v": "\v",
    "e": "\x1b",
    "f": "\f",
    "\\": "\\",
    "$": "$",
    '"': '"',
}
_PERL_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "b": "\b", "a": "\a", "e": "\x1b"}


_Literal = tuple[str, str]  # (quote character, raw body between the quotes)


class _Unresolvable(Exception):
    """A double-quoted string interpolates a variable: its value is not in the file."""


def _unquote_single(body: str) -> str:
    # Both PHP and Perl: only \' and \\ are escapes inside single quotes.
    return re.sub(r"\\([\\'])", r"\1", body)


def _unquote_double(body: str, lang: str) -> str:
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == "$" or (ch == "@" and lang == "perl"):
            nxt_ch = body[i + 1] if i + 1 < n else ""
            # PHP interpolates $name and ${...}; Perl any unescaped $ ($1, $), even a final $ is an
            # error) and @name.
            if (lang == "perl" and ch == "$") or (
                nxt_ch
                and (
                    (lang == "perl" and (nxt_ch.isalpha() or nxt_ch in "_{:$+-"))
                    or (lang == "php" and (nxt_ch.isalpha() or nxt_ch in "_{"))
                )
            ):
                raise _Unresolvable
            out.append(ch)
            i += 1
            continue
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x":
            m = re.match(r"\{([0-9A-Fa-f]+)\}", body[i + 2 :]) if lang == "perl" else None
            m = m or re.match(r"([0-9A-Fa-f]{1,2})", body[i + 2 :])
            if m:
                out.append(chr(int(m.group(1), 16)))
                i += 2 + m.end()
                continue
        elif nxt == "u" and lang == "php":
            m = re.match(r"\{([0-9A-Fa-f]+)\}", body[i + 2 :])
            if m:
                out.append(chr(int(m.group(1), 16)))
                i += 2 + m.end()
                continue
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert m is not None
            out.append(chr(int(m.group(0), 8) & (0xFF if lang == "php" else 0x1FF)))
            i += 1 + m.end()
            continue
        table = _PHP_DQ_ESCAPES if lang == "php" else _PERL_DQ_ESCAPES
        if nxt in table:
            out.append(table[nxt])
        elif lang == "perl" and not nxt.isalnum():
            out.append(nxt)  # Perl drops the backslash before punctuation: "\$" "\@" "\"" "\\"
        elif lang == "perl":
            raise _Unresolvable  # \L, \U, \c... change case or mean control chars: not worth guessing
        else:
            out.append("\\" + nxt)  # PHP keeps unknown escapes verbatim
        i += 2
    return "".join(out)


def _scan_assignments(text: str, lang: str) -> dict[str, _Literal | None]:
    """Map variable name -> (quote, raw body) of the last `$name = '...';`; None if not a literal."""
    found: dict[str, _Literal | None] = {}
    tokens: list[tuple[str, str, str]] = []  # (kind, value, quote)
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#" or (lang == "php" and text.startswith("//", i)):
            end = text.find("\n", i)
            if lang == "php":
                close = text.find("?>", i)  # a PHP line comment ends at ?> too
                if close != -1 and (end == -1 or close < end):
                    end = close
            i = n if end == -1 else end
        elif lang == "php" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
        elif ch in "'\"":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            # An unterminated string (truncated file) must not pass for a value.
            tokens.append(("str" if j < n else "badstr", text[i + 1 : j], ch))
            i = j + 1
        elif ch == "$" and (m := _VAR_RE.match(text, i)):
            tokens.append(("var", m.group(1), ""))
            i = m.end()
        elif ch == "=" and not text.startswith(("==", "=~", "=>"), i):
            tokens.append(("eq", ch, ""))
            i += 1
        elif ch == ";":
            tokens.append(("semi", ch, ""))
            i += 1
        elif m := _WORD_RE.match(text, i):
            tokens.append(("word", m.group(0), ""))
            i = m.end()
        else:
            tokens.append(("other", ch, ""))
            i += 1
    for k in range(len(tokens) - 1):
        kind, name, _ = tokens[k]
        if kind != "var" or tokens[k + 1][0] != "eq":
            continue
        value = tokens[k + 2] if k + 2 < len(tokens) else ("", "", "")
        after = tokens[k + 3][:2] if k + 3 < len(tokens) else ("", "")
        # `;`, end of file, or PHP's `?>` (which implies the semicolon) ends the statement.
        ended = after[0] in ("semi", "") or (lang == "php" and after == ("other", "?"))
        found[name] = (value[2], value[1]) if value[0] == "str" and ended else None
    return found


def _perl_lookup(found: Mapping[str, _Literal | None], name: str) -> tuple[bool, _Literal | None]:
    short = name.split("::", 1)[1]
    # The last spelling in the file wins at run time; we can't order across spellings, so prefer the
    # canonical one ispCP writes.
    for candidate in (name, "::" + short, short):
        if candidate in found:
            return True, found[candidate]
    return False, None


def _raw_values(layout: str, text: str, path: str) -> tuple[dict[str, str | None], tuple[str, str]]:
    """Unquoted key and IV values (None if absent) and the names they were looked up by."""
    _check_layout(layout)
    if layout == "keys_conf":
        values: dict[str, str | None] = {name: None for name in _CONF_NAMES}
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = re.match(r"([A-Za-z_]\w*)\s*=\s*(.*)$", stripped)
            # Values are unquoted and may themselves start with `"` or contain `#`: take them literally.
            if m and m.group(1) in values:
                values[m.group(1)] = m.group(2)
        return values, _CONF_NAMES
    lang = "php" if layout == "php" else "perl"
    names = _PHP_NAMES if lang == "php" else _PERL_NAMES
    found = _scan_assignments(text, lang)
    out: dict[str, str | None] = {}
    for name in names:
        present, literal = _perl_lookup(found, name) if lang == "perl" else (name in found, found.get(name))
        label = f"${name}"
        if not present:
            out[name] = None
            continue
        if literal is None:
            raise InputError(
                label,
                "is not assigned a plain quoted string, so its value cannot be read from the file",
                "restore the file from the backup, or build it from another key file layout",
                path or None,
            )
        quote, body = literal
        try:
            out[name] = _unquote_single(body) if quote == "'" else _unquote_double(body, lang)
        except _Unresolvable:
            raise InputError(
                label,
                "is a double-quoted string that interpolates a variable or uses a case/control escape",
                "write the key in single quotes (render_keyfile does) or build the file from another layout",
                path or None,
            ) from None
    return out, names


def parse_keyfile(layout: str, text: str, path: str = "") -> KeySet:
    """Read the key and IV from a key file's text; InputError (naming the path) if unusable."""
    values, names = _raw_values(layout, text, path)
    where = path or None
    labels = names if layout == "keys_conf" else tuple(f"${n}" for n in names)
    for name, label, expected in zip(names, labels, (KEY_LENGTH, IV_LENGTH), strict=True):
        value = values[name]
        if value is None:
            raise InputError(
                label,
                "has no assignment in the key file",
                "restore the file from the backup, or build it from another key file layout",
                where,
            )
        if value in PLACEHOLDERS:
            raise InputError(
                label,
                f"holds the placeholder {value}: a never-initialised template",
                "restore the backup's file, or build it from another key file layout "
                "(ispcp-keys.conf, ispcp-db-keys.php or ispcp-db-keys.pl)",
                where,
            )
        length = len(value.encode("utf-8", "surrogateescape"))
        if length != expected:
            raise InputError(
                label,
                f"KEY or IV has invalid length: {length} bytes, expected {expected}",
                f"the key is {KEY_LENGTH} and the IV {IV_LENGTH} characters; restore the file from the "
                "backup or build it from another key file layout",
                where,
            )
    key, iv = values[names[0]], values[names[1]]
    assert key is not None and iv is not None
    return KeySet(key=key, iv=iv)


def is_placeholder(layout: str, text: str) -> bool:
    """True if the key or IV is still `{KEY}`/`{IV}`. Never raises (for probes)."""
    try:
        values, _ = _raw_values(layout, text, "")
    except InputError:
        return False
    return any(v in PLACEHOLDERS for v in values.values())


def candidate_values(layout: str, text: str) -> list[str]:
    """The key/IV strings a file assigns, valid or not (to register them as secrets). Never raises."""
    try:
        values, _ = _raw_values(layout, text, "")
    except InputError:
        return []
    return [v for v in values.values() if v and v not in PLACEHOLDERS]


def _quote_single(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_keyfile(layout: str, keys: KeySet) -> str:
    """The key file in ispCP's own format for `layout`."""
    _check_layout(layout)
    for label, value, expected in (("DB_PASS_KEY", keys.key, KEY_LENGTH), ("DB_PASS_IV", keys.iv, IV_LENGTH)):
        length = len(value.encode("utf-8", "surrogateescape"))
        if length != expected:
            raise InputError(
                label,
                f"KEY or IV has invalid length: {length} bytes, expected {expected}",
                f"the key is {KEY_LENGTH} and the IV {IV_LENGTH} characters",
            )
    if layout == "php":
        # No trailing text after `?>` beyond one newline (PHP eats it): anything more would be sent
        # before the GUI's headers.
        return (
            "<?php\n"
            "/**\n"
            " * ispCP Omega a Virtual Hosting Control System\n"
            " *\n"
            " * Database password encryption key and IV (written by ispcp-recovery).\n"
            " * They decrypt every stored password: keep this file private to the panel.\n"
            " */\n"
            "\n"
            f"$ispcp_db_pass_key = {_quote_single(keys.key)};\n"
            "\n"
            f"$ispcp_db_pass_iv = {_quote_single(keys.iv)};\n"
            "\n"
            "?>\n"
        )
    if layout in ("perl_engine", "perl_messenger"):
        return (
            "#!/usr/bin/perl\n"
            "\n"
            "# ispCP Omega a Virtual Hosting Control System\n"
            "#\n"
            "# Database password encryption key and IV (written by ispcp-recovery).\n"
            "# They decrypt every stored password: keep this file private to the engine.\n"
            "\n"
            f"$main::db_pass_key = {_quote_single(keys.key)};\n"
            "\n"
            f"$main::db_pass_iv = {_quote_single(keys.iv)};\n"
            "\n"
            "1;\n"
        )
    # keys_conf: values are unquoted, so they must not carry what a line-based reader would lose.
    for label, value in (("DB_PASS_KEY", keys.key), ("DB_PASS_IV", keys.iv)):
        if value != value.strip() or "\n" in value or "\r" in value:
            raise InputError(
                label,
                "has leading/trailing whitespace or a line break, which ispcp-keys.conf cannot hold",
                "use the PHP or Perl key file layout for this key",
            )
    return (
        "# ispCP Omega database password encryption key and IV (written by ispcp-recovery).\n"
        "# They decrypt every stored password: keep this file private (root only).\n"
        f"DB_PASS_KEY={keys.key}\n"
        f"DB_PASS_IV={keys.iv}\n"
    )
