"""engine_speedup: comment out the `sleep(1);` that ends each item in ispCP 1.0.5/1.0.6 engine managers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.facts.ispcp_conf import IspcpConf

TITLE = "Speed up the engine for the update"
GUIDE = "the paragraph on patching the management scripts before the update"
EXPLANATION = """
The update rebuilds every domain, subdomain, alias and mailbox through ispCP's engine managers. In
ispCP 1.0.5 and 1.0.6, seven of them pause for one second after each item (a single `sleep(1);`
statement at the end of their main loop), which the ispCP bug tracker confirmed is not needed. For a
mid-size server (25 domains, 100 subdomains, 500 mailboxes) that pause alone turns a one- or
two-minute update into a quarter of an hour, and the update usually has to be run more than once.

This step comments out exactly that statement (`#sleep(1);`, indentation kept) in
`ispcp-als-mngr`, `ispcp-alssub-mngr`, `ispcp-dmn-mngr`, `ispcp-htgroups-mngr`,
`ispcp-htusers-mngr`, `ispcp-mbox-mngr` and `ispcp-sub-mngr`. A `sleep(1)` in a comment, a string or
embedded documentation is left alone. The guide's `ispcp-*-mgr` pattern is a typo for `-mngr`.
ispCP 1.0.7 and later no longer have the line; then nothing changes. The `cleanup` step can put the
lines back (`cleanup_restore_sleep`).
"""
PARAMETERS: tuple[Param, ...] = ()

MANAGERS = (
    "ispcp-als-mngr",
    "ispcp-alssub-mngr",
    "ispcp-dmn-mngr",
    "ispcp-htgroups-mngr",
    "ispcp-htusers-mngr",
    "ispcp-mbox-mngr",
    "ispcp-sub-mngr",
)
ACTIVE = re.compile(r"^(?P<indent>[ \t]*)sleep\(1\);[ \t]*$")
COMMENTED = re.compile(r"^(?P<indent>[ \t]*)#sleep\(1\);[ \t]*$")
_HEREDOC = re.compile(r"<<~?\s*(?:\"([A-Za-z_]\w*)\"|'([A-Za-z_]\w*)'|([A-Za-z_]\w*))")
STATE_FILE = "engine_speedup.json"  # which lines this recovery commented out, for cleanup


@dataclass(frozen=True)
class SleepLine:
    manager: str
    line_no: int  # 1-based
    active: bool  # True: `sleep(1);` runs; False: already `#sleep(1);`


def code_lines(text: str) -> list[tuple[int, str]]:
    """(0-based index, line) of Perl lines that are code: POD, here-doc bodies and __END__ are skipped."""
    out: list[tuple[int, str]] = []
    in_pod = False
    heredocs: list[str] = []
    for no, line in enumerate(text.split("\n")):
        if heredocs:
            if line.strip() == heredocs[0]:
                heredocs.pop(0)
            continue
        if in_pod:
            if line.startswith("=cut"):
                in_pod = False
            continue
        if re.match(r"^=[a-zA-Z]", line):
            in_pod = True
            continue
        if line.strip() in ("__END__", "__DATA__"):
            break
        out.append((no, line))
        code = line.split("#", 1)[0] if "<<" in line else ""
        for m in _HEREDOC.finditer(code):
            heredocs.append(next(g for g in m.groups() if g))
    return out


def find_sleep_lines(manager: str, text: str) -> list[SleepLine]:
    found = []
    for no, line in code_lines(text):
        if ACTIVE.match(line):
            found.append(SleepLine(manager, no + 1, True))
        elif COMMENTED.match(line):
            found.append(SleepLine(manager, no + 1, False))
    return found


def comment_out(text: str, line_nos: list[int]) -> str:
    lines = text.split("\n")
    for no in line_nos:
        m = ACTIVE.match(lines[no - 1])
        if m is None:
            raise ValueError(f"line {no} is not a sleep(1); statement")
        lines[no - 1] = f"{m['indent']}#sleep(1);"
    return "\n".join(lines)


def uncomment(text: str, line_nos: list[int]) -> str:
    lines = text.split("\n")
    for no in line_nos:
        m = COMMENTED.match(lines[no - 1])
        if m is not None:
            lines[no - 1] = f"{m['indent']}sleep(1);"
    return "\n".join(lines)


def engine_dir(ctx: Context) -> tuple[Path, str]:
    """(real path, path as on the server) of the target's engine directory."""
    conf_path = ctx.t("/etc/ispcp/ispcp.conf")
    root_dir = "/var/www/ispcp"
    if conf_path.is_file():
        root_dir = IspcpConf.load(conf_path).get("ROOT_DIR") or root_dir
    logical = f"{root_dir.rstrip('/')}/engine"
    return ctx.t(logical), logical


def scan(ctx: Context) -> tuple[dict[str, list[SleepLine]], list[str]]:
    """{manager: its sleep lines} for the managers present, and the names of the missing ones."""
    engine, _ = engine_dir(ctx)
    found: dict[str, list[SleepLine]] = {}
    missing = []
    for name in MANAGERS:
        path = engine / name
        if not path.is_file():
            missing.append(name)
            continue
        found[name] = find_sleep_lines(name, path.read_text(errors="surrogateescape"))
    return found, missing


def _state_path(ctx: Context) -> Path:
    return ctx.state_dir / STATE_FILE


@action("engine_speedup")
def run(ctx: Context, result: Result) -> None:
    engine, logical = engine_dir(ctx)
    if not engine.is_dir():
        raise PreconditionFailed(
            "ispCP engine",
            "directory not found",
            "install the dummy ispCP first (see ispcp_install_check)",
            path=logical,
        )
    found, missing = scan(ctx)
    if not found:
        raise PreconditionFailed(
            "ispCP engine managers",
            f"none of {', '.join(MANAGERS)} exists",
            "check ROOT_DIR in ispcp.conf and the dummy install",
            path=logical,
        )
    if missing:
        result.warn(f"managers not found in {logical}: {', '.join(missing)}")
    rows = []
    commented: dict[str, list[int]] = {}
    for name, lines in found.items():
        path = engine / name
        active = [s.line_no for s in lines if s.active]
        for s in lines:
            state = ("commented out now" if ctx.apply else "to comment out") if s.active else "already commented out"
            rows.append({"manager": name, "line": s.line_no, "state": state})
        if not lines:
            rows.append({"manager": name, "line": None, "state": "no sleep(1) line"})
        if active:
            text = path.read_text(errors="surrogateescape")
            new = comment_out(text, active)
            ctx.write_file(
                path,
                new.encode("utf-8", "surrogateescape"),
                what=f"comment out sleep(1); in {logical}/{name}, line(s) {', '.join(map(str, active))}",
            )
            commented[name] = active
    result.table("sleep(1) lines in the engine managers", pd.DataFrame(rows))
    result.data["commented"] = commented
    if commented and ctx.apply:
        _record_state(ctx, logical, commented)
    total_active = sum(len(v) for v in commented.values())
    already = sum(1 for lines in found.values() for s in lines if not s.active)
    if total_active:
        result.summary = f"{total_active} sleep(1) line(s) in {len(commented)} manager(s)"
    elif already:
        result.noop_reason = f"the sleep(1) lines are already commented out ({already} line(s))"
    else:
        result.noop_reason = "ispCP 1.0.7+ has no sleep(1) lines: nothing to speed up"


def _record_state(ctx: Context, logical: str, commented: dict[str, list[int]]) -> None:
    """Remember which lines this recovery changed, so cleanup restores exactly those."""
    path = _state_path(ctx)
    state = json.loads(path.read_text()) if path.is_file() else {}
    for name, nos in commented.items():
        key = f"{logical}/{name}"
        state[key] = sorted(set(state.get(key, [])) | set(nos))
    ctx.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def restore_sleep_lines(ctx: Context, result: Result) -> list[str]:
    """Put back the `sleep(1);` lines this recovery commented out (cleanup, cleanup_restore_sleep).

    Uses the record engine_speedup left in the state dir; without it, every `#sleep(1);` line in
    the seven managers is restored (with a warning, since an operator may have made some of them).
    Returns the changes planned or made.
    """
    engine, logical = engine_dir(ctx)
    state_path = _state_path(ctx)
    targets: dict[str, list[int]] = {}
    if state_path.is_file():
        for key, nos in json.loads(state_path.read_text()).items():
            targets[key.rsplit("/", 1)[1]] = list(nos)
    else:
        found, _missing = scan(ctx)
        targets = {n: [s.line_no for s in lines if not s.active] for n, lines in found.items()}
        if any(targets.values()):
            result.warn(
                "no record of engine_speedup's changes in the state dir: restoring every "
                "'#sleep(1);' line in the managers"
            )
    changes = []
    for name, nos in targets.items():
        path = engine / name
        if not path.is_file():
            continue
        text = path.read_text(errors="surrogateescape")
        lines = text.split("\n")
        todo = [n for n in nos if 0 < n <= len(lines) and COMMENTED.match(lines[n - 1])]
        if not todo:
            continue
        what = f"restore sleep(1); in {logical}/{name}, line(s) {', '.join(map(str, todo))}"
        ctx.write_file(path, uncomment(text, todo).encode("utf-8", "surrogateescape"), what=what)
        changes.append(what)
    if ctx.apply and state_path.is_file():
        state_path.unlink()
    return changes
