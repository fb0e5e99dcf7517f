"""Merge ispCP accounts from the old server's passwd/shadow/group/gshadow into the new server's.

Pure parsing and planning, no I/O. A step reads the four files of both servers, calls
select_entries() and plan_merge(), shows plan.rows, and writes plan.new.render() on the target under
shadow-utils' locks (system/account_install.py). Entries keep their original line text, so password
hashes and untouched files come out byte-for-byte. Nothing here puts a password field into a message, a row or a repr.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ispcp_lib.core.errors import InputError

FILE_NAMES = ("passwd", "shadow", "group", "gshadow")
RESOLUTIONS = ("skip", "take_old", "keep_target")

_FIELD_COUNT = {"passwd": 7, "shadow": 9, "group": 4, "gshadow": 4}
_ID_FIELDS = {"passwd": ((2, "UID"), (3, "GID")), "group": ((2, "GID"),), "shadow": (), "gshadow": ()}
# (uid_t)-1 means "leave unchanged" to chown(2) and setresuid(2): it can never own anything.
_MAX_ID = 2**32 - 2
# A control character makes getpwent() and the tools disagree about the line; \t is left alone.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True, repr=False)
class Entry:
    """One line of an account file. `line` is the original text without the newline."""

    line: str
    fields: tuple[str, ...]
    lineno: int = 0  # 0: written by the merge, not read from a file

    @classmethod
    def from_fields(cls, fields: tuple[str, ...] | list[str]) -> Entry:
        return cls(":".join(fields), tuple(fields))

    @property
    def name(self) -> str:
        return self.fields[0]

    @property
    def id(self) -> int:
        """UID of a passwd entry, GID of a group entry (both are field 3)."""
        return int(self.fields[2])

    def members(self) -> list[str]:
        """Member list of a group or gshadow entry (field 4)."""
        return [m for m in self.fields[3].split(",") if m]

    def __repr__(self) -> str:
        # Never the line: it may hold a password hash.
        return f"Entry({self.name!r}, line {self.lineno})"


@dataclass(repr=False)
class DbFile:
    """One parsed file: entries in file order, a name index, and the input bytes while unchanged."""

    kind: str
    path: str
    entries: list[Entry]
    raw: bytes | None = None  # input bytes; None once an entry was added or replaced
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self._index:
            self._index = {e.name: i for i, e in enumerate(self.entries)}

    def __repr__(self) -> str:
        return f"DbFile({self.kind!r}, {self.path!r}, {len(self.entries)} entries)"

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> Entry | None:
        i = self._index.get(name)
        return None if i is None else self.entries[i]

    @property
    def changed(self) -> bool:
        return self.raw is None

    def append(self, entry: Entry) -> None:
        self._index[entry.name] = len(self.entries)
        self.entries.append(entry)
        self.raw = None

    def replace(self, entry: Entry) -> None:
        """Put entry where the entry of the same name is, so the file order stays."""
        self.entries[self._index[entry.name]] = entry
        self.raw = None

    def copy(self) -> DbFile:
        return DbFile(self.kind, self.path, list(self.entries), self.raw, dict(self._index))

    def render(self) -> bytes:
        """Unchanged: the input bytes. Changed: one line per entry, trailing blank lines dropped."""
        if self.raw is not None:
            return self.raw
        return "".join(e.line + "\n" for e in self.entries).encode("utf-8")


def parse(kind: str, data: bytes, path: str | None = None) -> DbFile:
    """Parse passwd, shadow, group or gshadow strictly; raise InputError naming path, line and fix."""
    if kind not in _FIELD_COUNT:
        raise ValueError(f"unknown account file kind {kind!r}")
    path = path or kind
    text = _decode(kind, data, path)
    bad = _CONTROL.search(text)  # one scan of the whole text is far cheaper than one per line
    if bad:
        n = text.count("\n", 0, bad.start()) + 1
        raise _bad(kind, n, path, "contains a control character (CRLF line endings?)", "remove it (dos2unix)")
    lines = text.split("\n")
    end = len(lines)
    while end and not lines[end - 1].strip():  # blank lines at the end are harmless
        end -= 1
    entries: list[Entry] = []
    index: dict[str, int] = {}
    for n, line in enumerate(lines[:end], 1):
        entry = _parse_line(kind, line, n, path)
        if entry.name in index:
            first = entries[index[entry.name]].lineno
            raise _bad(
                kind,
                n,
                path,
                f"name {entry.name!r} already appears on line {first}",
                f"remove the duplicate ({_checker(kind)} reports it too)",
            )
        index[entry.name] = len(entries)
        entries.append(entry)
    return DbFile(kind, path, entries, bytes(data), index)


def _decode(kind: str, data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        n = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _bad(
            kind,
            n,
            path,
            f"byte {column} of the line (offset {exc.start} in the file) is not UTF-8",
            "convert the file to UTF-8 (e.g. a Latin-1 GECOS field: iconv -f latin1 -t utf-8)",
        ) from exc


def _parse_line(kind: str, line: str, n: int, path: str) -> Entry:
    # Messages never quote the line: in shadow files it carries the hash.
    if not line.strip():
        raise _bad(kind, n, path, "is blank; blank lines are only tolerated at the end", "delete the line")
    if line.startswith("#"):
        raise _bad(kind, n, path, f"is a comment; shadow-utils does not allow comments in {kind}", "delete the line")
    fields = tuple(line.split(":"))
    want = _FIELD_COUNT[kind]
    if len(fields) != want:
        raise _bad(
            kind,
            n,
            path,
            f"has {len(fields)} colon-separated fields, expected {want}",
            f"repair or delete the line ({_checker(kind)} -r shows it)",
        )
    if not fields[0]:
        raise _bad(kind, n, path, "has an empty name", "repair or delete the line")
    for i, label in _ID_FIELDS[kind]:
        _check_id(fields[i], label, kind, n, path, fields[0])
    return Entry(line, fields, n)


def _check_id(value: str, label: str, kind: str, n: int, path: str, name: str) -> None:
    if value.startswith("-") and value[1:].isascii() and value[1:].isdigit():
        problem = "is negative"
    elif not (value.isascii() and value.isdigit()):  # int() would accept " 7", "1_0" and "٣"
        problem = "is not a decimal number"
    elif int(value) > _MAX_ID:
        problem = f"is above {_MAX_ID}"
    else:
        return
    raise _bad(kind, n, path, f"{label} of {name!r} {problem}", f"give {name!r} a valid {label} or delete the line")


def _bad(kind: str, n: int, path: str, problem: str, fix: str) -> InputError:
    return InputError(f"{kind} line {n}", problem, fix, path)


def _checker(kind: str) -> str:
    return "pwck" if kind in ("passwd", "shadow") else "grpck"


@dataclass(repr=False)
class AccountFiles:
    """passwd, shadow, group and gshadow of one system, checked against each other."""

    passwd: DbFile
    shadow: DbFile
    group: DbFile
    gshadow: DbFile

    @classmethod
    def from_bytes(
        cls,
        passwd: bytes,
        shadow: bytes,
        group: bytes,
        gshadow: bytes,
        paths: Mapping[str, str] | None = None,
    ) -> AccountFiles:
        """Parse the four files; paths maps file name ("passwd", ...) to the path shown in errors."""
        paths = paths or {}
        data = {"passwd": passwd, "shadow": shadow, "group": group, "gshadow": gshadow}
        files = cls(**{k: parse(k, v, paths.get(k, k)) for k, v in data.items()})
        files.validate()
        return files

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}={len(self.file(n))}" for n in FILE_NAMES)
        return f"AccountFiles({sizes})"

    def file(self, name: str) -> DbFile:
        return {"passwd": self.passwd, "shadow": self.shadow, "group": self.group, "gshadow": self.gshadow}[name]

    def validate(self) -> None:
        """A shadow entry needs a passwd entry, a gshadow entry a group entry (the reverse is legal)."""
        for shadow, main in ((self.shadow, self.passwd), (self.gshadow, self.group)):
            for e in shadow:
                if e.name not in main:
                    raise _bad(
                        shadow.kind,
                        e.lineno,
                        shadow.path,
                        f"entry {e.name!r} has no {main.kind} entry",
                        f"add it to {main.kind} or delete the line ({_checker(main.kind)} reports it too)",
                    )

    def copy(self) -> AccountFiles:
        return AccountFiles(self.passwd.copy(), self.shadow.copy(), self.group.copy(), self.gshadow.copy())

    def render(self) -> dict[str, bytes]:
        """File name -> content; a file nothing was changed in comes back byte-identical."""
        return {n: self.file(n).render() for n in FILE_NAMES}

    def changed(self) -> list[str]:
        return [n for n in FILE_NAMES if self.file(n).changed]


# ------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True, slots=True, repr=False)
class Pick:
    """One account selected from the old files."""

    kind: str  # "user" or "group"
    name: str
    id: int
    entry: Entry | None  # old passwd/group entry; None: the old files lack the mailbox account
    shadow: Entry | None  # old shadow/gshadow entry, if any
    issue: str = ""  # how the old files disagree with ispcp.conf

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def __repr__(self) -> str:
        return f"Pick({self.key!r}, {self.id})"


@dataclass(frozen=True)
class Selection:
    picks: tuple[Pick, ...]

    @property
    def users(self) -> list[Pick]:
        return [p for p in self.picks if p.kind == "user"]

    @property
    def groups(self) -> list[Pick]:
        return [p for p in self.picks if p.kind == "group"]


def select_entries(
    old: AccountFiles,
    prefix: str,
    mailbox_user: str,
    mailbox_uid: int,
    mailbox_group: str,
    mailbox_gid: int,
) -> Selection:
    """Users and groups named <prefix>..., plus the mailbox user and group from ispcp.conf."""
    if not prefix or ":" in prefix:
        raise InputError(
            "prefix",
            f"{prefix!r} is not a usable name prefix",
            "use APACHE_SUEXEC_USER_PREF from ispcp.conf (usually 'vu')",
        )
    for label, name, value in (
        ("MTA_MAILBOX_UID", mailbox_user, mailbox_uid),
        ("MTA_MAILBOX_GID", mailbox_group, mailbox_gid),
    ):
        if not name or ":" in name or not 0 <= value <= _MAX_ID:
            raise InputError(
                label,
                f"{name!r}={value!r} is not a valid account name and ID",
                f"fix {label} and {label}_NAME in ispcp.conf",
            )
    users = _pick(old.passwd, old.shadow, "user", prefix, mailbox_user, mailbox_uid)
    groups = _pick(old.group, old.gshadow, "group", prefix, mailbox_group, mailbox_gid)
    return Selection(tuple(users + groups))


def _pick(db: DbFile, shadow: DbFile, kind: str, prefix: str, mbox: str, mbox_id: int) -> list[Pick]:
    picks = []
    for e in db:
        # ispCP names are prefix + digits (vu2001): a system account like "vuurmuur" is not ours.
        if e.name == mbox or (e.name.startswith(prefix) and e.name[len(prefix) :].isdigit()):
            issue = (
                ""
                if e.name != mbox or e.id == mbox_id
                else (f"old {db.kind} says {mbox}={e.id} but ispcp.conf says {mbox_id}")
            )
            picks.append(Pick(kind, e.name, e.id, e, shadow.get(e.name), issue))
    if mbox not in db:
        picks.append(
            Pick(
                kind,
                mbox,
                mbox_id,
                None,
                None,
                f"old {db.kind} has no {kind} {mbox}; ispcp.conf says {mbox}={mbox_id}",
            )
        )
    return picks


# -------------------------------------------------------------------------------------------- planning

_OUTCOME = {
    "add": "added",
    "replace": "replaced",
    "merge": "updated",
    "complete": "completed",
    "none": "identical",
    "keep": "kept",
}
_LABEL = {"user": "UID", "group": "GID"}


@dataclass(slots=True)
class _Item:
    """Working state of one pick while planning."""

    pick: Pick
    resolution: str | None
    intent: str = "none"  # what take_old (or no conflict) would do: add|replace|merge|complete|none|keep
    action: str = "none"  # what will be done, once settled
    outcome: str = ""
    found: list[tuple[str, str]] = field(default_factory=list)  # (conflict type, text)
    details: list[str] = field(default_factory=list)
    new_members: list[str] = field(default_factory=list)

    def block(self, kind: str, text: str) -> None:
        self.found.append((kind, text))
        self.details.append(f"{kind}: {text}")
        self.action, self.outcome = "none", "conflict"

    def row(self) -> dict[str, object]:
        p = self.pick
        return {
            "kind": p.kind,
            "name": p.name,
            "id": p.id,
            "outcome": self.outcome,
            "detail": "; ".join(self.details),
            "conflict": ",".join(dict.fromkeys(k for k, _ in self.found)),
        }


@dataclass(repr=False)
class MergePlan:
    """rows: one dict per selected account; new: the merged files, only when no conflict is open."""

    rows: list[dict[str, object]]
    new: AccountFiles | None
    secrets: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return self.new is not None

    @property
    def conflicts(self) -> list[dict[str, object]]:
        return [r for r in self.rows if r["outcome"] == "conflict"]

    def __repr__(self) -> str:
        return f"MergePlan(ok={self.ok}, rows={len(self.rows)}, conflicts={len(self.conflicts)})"


def plan_merge(
    target: AccountFiles,
    selection: Selection,
    resolutions: Mapping[str, str] | None = None,
    *,
    today: int | None = None,
) -> MergePlan:
    """Plan merging the selection into target.

    resolutions maps "user:<name>"/"group:<name>" to skip | take_old | keep_target. Outcomes:
    added, identical, updated (members merged), replaced (take_old), skipped, kept (keep_target),
    conflict. today (days since 1970) dates synthesized shadow entries.
    """
    res = _check_resolutions(selection, resolutions or {})
    items = [_Item(p, res.get(p.key)) for p in selection.picks]
    owners = {"user": _owners(target.passwd), "group": _owners(target.group)}
    for it in items:
        _classify(target, owners[it.pick.kind], it)
        _settle(it)
    _check_ids(target, items)
    _check_refs(target, items)
    warnings: list[str] = []
    new = None
    if not any(it.outcome == "conflict" for it in items):
        day = int(time.time() // 86400) if today is None else today
        new = _apply(target, items, day, warnings)
    return MergePlan([it.row() for it in items], new, _secrets(target, selection), warnings)


def _check_resolutions(selection: Selection, resolutions: Mapping[str, str]) -> dict[str, str]:
    keys = {p.key for p in selection.picks}
    for key, value in resolutions.items():
        if key not in keys:
            raise InputError(
                "resolutions",
                f"{key!r} names no selected user or group",
                "use kind:name from the plan's rows, e.g. 'user:vu2001' or 'group:mail'",
            )
        if value not in RESOLUTIONS:
            raise InputError(
                "resolutions",
                f"{key!r} has unknown resolution {value!r}",
                f"use one of {', '.join(RESOLUTIONS)}",
            )
    return dict(resolutions)


def _owners(db: DbFile) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = defaultdict(list)
    for e in db:
        owners[e.id].append(e.name)
    return owners


def _classify(target: AccountFiles, owners: dict[int, list[str]], it: _Item) -> None:
    """Record conflicts with the target and the intent that taking the old entry would have."""
    p = it.pick
    label = _LABEL[p.kind]
    current = (target.passwd if p.kind == "user" else target.group).get(p.name)
    if p.entry is None:
        _classify_absent(it, current)
        return
    if p.issue:
        it.found.append(("conf_mismatch", p.issue))
    if current is None:
        if owners.get(p.id):
            it.found.append(("id_taken", f"{label} {p.id} already used by target {p.kind} {', '.join(owners[p.id])}"))
        it.intent = "add"
    elif current.id != p.id:
        it.found.append(("name_id_mismatch", f"target has {p.name} with {label} {current.id}, old has {p.id}"))
        it.intent = "replace"
    else:
        _classify_same(target, it, current)


def _classify_absent(it: _Item, current: Entry | None) -> None:
    """The mailbox account from ispcp.conf is not in the old files: fine if the target has it right."""
    p = it.pick
    it.intent = "keep"
    if current is not None and current.id == p.id:
        it.details.append(f"{p.issue}; the target already has it with that {_LABEL[p.kind]}")
        return
    have = "lacks it too" if current is None else f"has {p.name}={current.id}"
    it.found.append(("conf_mismatch", f"{p.issue}; the target {have}"))


def _classify_same(target: AccountFiles, it: _Item, current: Entry) -> None:
    p = it.pick
    diffs = _differences(target, p, current)
    if it.resolution == "take_old" and diffs:
        it.intent = "replace"
    elif p.kind == "group" and p.entry is not None:
        have = set(current.members())
        shadowed = target.gshadow.get(p.name)
        if shadowed is not None:  # an interrupted merge may have written group's members, not gshadow's
            have &= set(shadowed.members())
        it.new_members = [m for m in p.entry.members() if m not in have]
        if it.new_members:  # merging says more than "members differ"
            it.intent = "merge"
            diffs = [d for d in diffs if d != "members differ"] + [f"members +{','.join(it.new_members)}"]
    missing = f"target has no {'shadow' if p.kind == 'user' else 'gshadow'} entry"
    if it.intent == "none" and missing in diffs:
        # Half of a merge an interrupted run left (passwd renamed, shadow not): the old entry completes it.
        it.intent = "complete"
    it.details.extend(diffs)


def _differences(target: AccountFiles, p: Pick, current: Entry) -> list[str]:
    """Names of the fields that differ; values stay out (field 2 is a hash)."""
    assert p.entry is not None
    old, new = p.entry.fields, current.fields
    shadow_db = target.shadow if p.kind == "user" else target.gshadow
    t_shadow = shadow_db.get(p.name)
    diffs = []
    hash_differs = old[1] != new[1] or bool(p.shadow and t_shadow and p.shadow.fields[1] != t_shadow.fields[1])
    if hash_differs:
        diffs.append("hash differs")
    if p.kind == "user":
        names = {3: "primary GID", 4: "GECOS", 5: "home", 6: "shell"}
        diffs += [f"{label} differs" for i, label in names.items() if old[i] != new[i]]
        if p.shadow and t_shadow and p.shadow.fields[2:] != t_shadow.fields[2:]:
            diffs.append("password aging differs")
    elif set(p.entry.members()) != set(current.members()):
        diffs.append("members differ")
    if p.shadow and t_shadow is None:
        diffs.append(f"target has no {shadow_db.kind} entry")
    return diffs


def _settle(it: _Item) -> None:
    """Apply the operator's resolution to what _classify found."""
    r = it.resolution
    texts = [f"{kind}: {text}" for kind, text in it.found]
    if r in ("skip", "keep_target"):
        it.action, it.outcome = "none", "skipped" if r == "skip" else "kept"
        it.details = [f"resolution {r}", *texts, *it.details]
    elif it.found and (r != "take_old" or it.intent == "keep"):
        it.action, it.outcome = "none", "conflict"
        refused = ["take_old refused: the old files have no such entry"] if r == "take_old" else []
        it.details = [*texts, *refused, *it.details]
    else:
        it.action, it.outcome = it.intent, _OUTCOME[it.intent]
        resolved = [f"{t} (resolved take_old)" for t in texts]
        it.details = [*(["resolution take_old"] if r == "take_old" else []), *resolved, *it.details]


def _check_ids(target: AccountFiles, items: list[_Item]) -> None:
    """After all adds and replacements, no added or replaced account may share its ID with another name."""
    for kind, db in (("user", target.passwd), ("group", target.group)):
        mine = [it for it in items if it.pick.kind == kind and it.action in ("add", "replace")]
        moved = {it.pick.name for it in mine}
        final: dict[int, list[str]] = defaultdict(list)
        for e in db:
            if e.name not in moved:
                final[e.id].append(e.name)
        for it in mine:
            final[it.pick.id].append(it.pick.name)
        for it in mine:
            others = [n for n in final[it.pick.id] if n != it.pick.name]
            if others:
                _id_conflict(it, others)


def _id_conflict(it: _Item, others: list[str]) -> None:
    p = it.pick
    text = f"{_LABEL[p.kind]} {p.id} would still be shared with {p.kind} {', '.join(others)}"
    if it.resolution == "take_old":
        text += f"; take_old refused unless {', '.join(others)} is replaced too (take_old on its own row)"
    it.block("id_taken", text)


def _check_refs(target: AccountFiles, items: list[_Item]) -> None:
    """Group members must exist in the merged passwd, primary GIDs in the merged group file."""
    active = [it for it in items if it.action in ("add", "replace", "merge")]
    users = set(target.passwd.names()) | {it.pick.name for it in active if it.pick.kind == "user"}
    replaced = {it.pick.name for it in active if it.pick.kind == "group" and it.action == "replace"}
    gids = {e.id for e in target.group if e.name not in replaced}
    gids |= {it.pick.id for it in active if it.pick.kind == "group"}
    for it in active:
        assert it.pick.entry is not None
        if it.pick.kind == "group":
            members = it.new_members if it.action == "merge" else it.pick.entry.members()
            unknown = [m for m in members if m not in users]
            if unknown:
                _ref_conflict(it, "unknown_member", f"member(s) {', '.join(unknown)} not in the merged passwd")
        else:
            gid = int(it.pick.entry.fields[3])
            if gid not in gids:
                _ref_conflict(it, "missing_primary_group", f"primary GID {gid} not in the merged group file")


def _ref_conflict(it: _Item, kind: str, text: str) -> None:
    if it.resolution == "take_old":
        it.found.append((kind, text))
        it.details.append(f"{kind}: {text} (accepted by take_old)")
    else:
        it.block(kind, text)


# ------------------------------------------------------------------------------------------- applying


def _apply(target: AccountFiles, items: list[_Item], today: int, warnings: list[str]) -> AccountFiles:
    new = target.copy()
    for it in items:
        main, shadow = (new.passwd, new.shadow) if it.pick.kind == "user" else (new.group, new.gshadow)
        if it.action == "add":
            _add(main, shadow, it, today, warnings)
        elif it.action == "replace":
            _replace(main, shadow, it, warnings)
        elif it.action == "merge":
            _merge_members(main, shadow, it)
        elif it.action == "complete":
            _complete(shadow, it, today, warnings)
    return new


def _add(main: DbFile, shadow: DbFile, it: _Item, today: int, warnings: list[str]) -> None:
    assert it.pick.entry is not None
    main.append(it.pick.entry)
    _complete(shadow, it, today, warnings)


def _complete(shadow: DbFile, it: _Item, today: int, warnings: list[str]) -> None:
    """The shadow/gshadow entry of an account: the old one, else a locked one."""
    p = it.pick
    assert p.entry is not None
    if p.shadow is not None:
        shadow.append(p.shadow)
        return
    if p.kind == "user":  # locked, like useradd without -p
        made = Entry.from_fields((p.name, "!", str(today), "", "", "", "", "", ""))
    else:
        made = Entry.from_fields((p.name, "!", "", p.entry.fields[3]))
    shadow.append(made)
    text = f"no {shadow.kind} entry in the old files: added a locked one"
    it.details.append(text)
    warnings.append(f"{p.key}: {text}")


def _replace(main: DbFile, shadow: DbFile, it: _Item, warnings: list[str]) -> None:
    p = it.pick
    assert p.entry is not None
    main.replace(p.entry)
    if p.shadow is None:
        text = f"no {shadow.kind} entry in the old files: kept the target's"
        it.details.append(text)
        warnings.append(f"{p.key}: {text}")
    elif p.name in shadow:
        shadow.replace(p.shadow)
    else:
        shadow.append(p.shadow)


def _merge_members(main: DbFile, shadow: DbFile, it: _Item) -> None:
    for db in (main, shadow):
        current = db.get(it.pick.name)
        if current is None:  # a group without gshadow entry is legal: leave it so
            continue
        have = current.members()
        add = [m for m in it.new_members if m not in have]
        if add:
            fields = (*current.fields[:3], ",".join(have + add))
            db.replace(Entry(":".join(fields), fields, current.lineno))


def _secrets(target: AccountFiles, selection: Selection) -> list[str]:
    """Password fields of the selected old entries and of the whole target (diffs show its lines)."""
    values: dict[str, None] = {}
    entries = [e for p in selection.picks for e in (p.entry, p.shadow) if e is not None]
    entries += [e for n in FILE_NAMES for e in target.file(n)]
    for e in entries:
        value = e.fields[1]
        bare = value.lstrip("!")
        # "x", "*", "!", "!!", "*LK*" are markers, not secrets; registering them would mask every "x".
        if len(bare) >= 8:
            values[value] = None
            values[bare] = None
    return list(values)
