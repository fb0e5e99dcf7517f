"""The `sleep(1);` that ends each item in the ispCP 1.0.5/1.0.6 engine managers: find it, comment it out,
put it back. Shared by the engine_speedup step (which comments them out), cleanup (which can restore
them) and the sandbox's update stand-in (which pauses where the line is active).

Files are read and written on the target through the connection; the record of what was changed
lives in the state dir.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ispcp_lib.core.context import Context
from ispcp_lib.core.result import Result
from ispcp_lib.ispcp.update_env import root_dir, target_conf

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


def engine_dir(ctx: Context) -> str:
    """The target's engine directory (ROOT_DIR of its ispcp.conf)."""
    return f"{root_dir(target_conf(ctx))}/engine"


def read_text(ctx: Context, path: str) -> str | None:
    """A manager's text, every byte kept (surrogateescape) so that a rewrite changes only the line."""
    data = ctx.target.read_bytes(path)
    return None if data is None else data.decode("utf-8", "surrogateescape")


def read_managers(ctx: Context, engine: str) -> dict[str, str | None]:
    """{manager: its text (as read_text keeps it), None when absent}, all read in one command."""
    found = ctx.target.read_many([f"{engine}/{name}" for name in MANAGERS])
    texts = {name: found[f"{engine}/{name}"] for name in MANAGERS}
    return {name: None if data is None else data.decode("utf-8", "surrogateescape") for name, data in texts.items()}


def scan(ctx: Context, texts: dict[str, str | None] | None = None) -> tuple[dict[str, list[SleepLine]], list[str]]:
    """{manager: its sleep lines} for the managers present, and the names of the missing ones.

    texts: the managers as read_managers read them (read here when not given).
    """
    if texts is None:
        texts = read_managers(ctx, engine_dir(ctx))
    found: dict[str, list[SleepLine]] = {}
    missing = []
    for name in MANAGERS:
        text = texts.get(name)
        if text is None:
            missing.append(name)
            continue
        found[name] = find_sleep_lines(name, text)
    return found, missing


def state_path(ctx: Context) -> str:
    return f"{ctx.state_dir}/{STATE_FILE}"


def record_state(ctx: Context, engine: str, commented: dict[str, list[int]]) -> None:
    """Remember which lines this recovery changed, so cleanup restores exactly those."""
    state = json.loads(ctx.state.read_text(state_path(ctx)) or "{}")
    for name, nos in commented.items():
        key = f"{engine}/{name}"
        state[key] = sorted(set(state.get(key, [])) | set(nos))
    ctx.ensure_state_dir()
    ctx.state.write_atomic(state_path(ctx), json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o600)


def restore_sleep_lines(ctx: Context, result: Result) -> list[str]:
    """Put back the `sleep(1);` lines this recovery commented out (cleanup, cleanup_restore_sleep).

    Uses the record engine_speedup left in the state dir; without it, every `#sleep(1);` line in
    the seven managers is restored (with a warning, since an operator may have made some of them).
    Returns the changes planned or made.
    """
    engine = engine_dir(ctx)
    record = ctx.state.read_text(state_path(ctx))
    texts = read_managers(ctx, engine)
    targets: dict[str, list[int]] = {}
    if record is not None:
        for key, nos in json.loads(record).items():
            targets[key.rsplit("/", 1)[1]] = list(nos)
    else:
        found, _missing = scan(ctx, texts)
        targets = {n: [s.line_no for s in lines if not s.active] for n, lines in found.items()}
        if any(targets.values()):
            result.warn(
                "no record of engine_speedup's changes in the state dir: restoring every "
                "'#sleep(1);' line in the managers"
            )
    changes = []
    for name, nos in targets.items():
        path = f"{engine}/{name}"
        text = texts[name] if name in texts else read_text(ctx, path)
        if text is None:
            continue
        lines = text.split("\n")
        todo = [n for n in nos if 0 < n <= len(lines) and COMMENTED.match(lines[n - 1])]
        if not todo:
            continue
        what = f"restore sleep(1); in {path}, line(s) {', '.join(map(str, todo))}"
        ctx.write_file(path, uncomment(text, todo).encode("utf-8", "surrogateescape"), what=what)
        changes.append(what)
    if ctx.apply and record is not None:
        ctx.state.remove(state_path(ctx))
    return changes
