"""root's ~/.my.cnf on the target: written for the guide's groups.sh, removed (or root's own put back) by cleanup.

Our file starts with MARKER. Root's own file, if any, waits under the state directory until cleanup
puts it back (a fixed place: cleanup may run in a later run). Neither our file nor a copy of it ever
goes through a safety copy: it holds a database password.
"""

from __future__ import annotations

import configparser

from ispcp_lib.core.context import Context
from ispcp_lib.core.result import Result
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import dialect

MY_CNF = "/root/.my.cnf"
MARKER = "# written by ispcp-recovery (register_accounts); the cleanup step removes it"


def _quote(value: str) -> str:
    """A MySQL option-file value in double quotes (backslash escapes, as the client reads them)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mycnf_text(ctx: Context, login: Login) -> str:
    lines = [MARKER, "[client]", f"user = {_quote(login.user)}", f"password = {_quote(login.password)}"]
    if ctx.mysql is not None:
        lines.append(f"socket = {_quote(str(ctx.mysql.socket))}")
    return "\n".join(lines) + "\n"


def previous_copy(ctx: Context) -> str:
    """Where root's own ~/.my.cnf waits until cleanup, on the machine that holds the state directory."""
    return f"{ctx.state_dir}/register_accounts/root.my.cnf.previous"


def write_root_mycnf(ctx: Context, result: Result, login: Login) -> None:
    text = mycnf_text(ctx, login)
    what = f"write {MY_CNF} (mode 0600) with the {login.user} login; cleanup removes it"
    st = ctx.target.stat(MY_CNF)
    current = ctx.target.read_text(MY_CNF) if st is not None and st.is_file else None
    if current is not None:
        register_mycnf_password(ctx, current)
        if current.startswith(MARKER):
            # Ours from an earlier run: replaced in place, never through write_file, whose safety copy would
            # leave a password in the backups folder (root's own file was kept already, when ours first came).
            assert st is not None
            if current == text and (st.mode, st.uid, st.gid) == (0o600, 0, 0):
                return
            if ctx.write_file(MY_CNF, text, 0o600, 0, 0, what=what, show_diff=False, keep=False) and ctx.apply:
                prove_mycnf(ctx)
            return
        ctx.keep(MY_CNF, dest=previous_copy(ctx))  # root's own file, put back by cleanup
    if ctx.write_file(MY_CNF, text, mode=0o600, uid=0, gid=0, show_diff=False, what=what) and ctx.apply:
        prove_mycnf(ctx)


def prove_mycnf(ctx: Context) -> None:
    """The written file lets the client in (what groups.sh relies on)."""
    client = ctx.target.which("mariadb") or ctx.target.which("mysql")
    if client is None:
        return
    argv = [
        client,
        f"--defaults-file={ctx.target.path(MY_CNF)}",
        "--batch",
        "--skip-column-names",
        "-e",
        dialect.PING[0],
    ]
    ctx.runner.run(argv, timeout=60)


def register_mycnf_password(ctx: Context, text: str) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return
    for section in parser.sections():
        value = parser.get(section, "password", fallback=None)
        if value:
            ctx.secrets.add(value.strip().strip('"').strip("'"), "~/.my.cnf password")
            ctx.secrets.add(value, "~/.my.cnf password")


def remove_root_mycnf(ctx: Context, result: Result) -> None:
    """Called by cleanup: remove the ~/.my.cnf written by register_accounts, or put root's previous one back."""
    st = ctx.target.stat(MY_CNF)
    if st is None or not st.is_file:
        return
    text = ctx.target.read_text(MY_CNF) or ""
    register_mycnf_password(ctx, text)
    previous = previous_copy(ctx)
    kept = ctx.state.stat(previous)
    if not text.startswith(MARKER):
        if kept is not None:
            result.warn(
                f"{MY_CNF} was changed after register_accounts wrote it; left as it is "
                f"(root's earlier file is kept at {previous})"
            )
        return
    if kept is not None:
        register_mycnf_password(ctx, ctx.state.read_text(previous) or "")
        data = ctx.state.read_bytes(previous) or b""
        what = f"put root's own {MY_CNF} back (register_accounts had replaced it)"
        ctx.write_file(MY_CNF, data, kept.mode, kept.uid, kept.gid, what=what, show_diff=False, keep=False)
        ctx.remove(previous, what=f"remove the copy of root's own {MY_CNF}", state=True)
        return
    # No safety copy: it is our own file, and a copy would keep the password on disk.
    ctx.remove(MY_CNF, what=f"remove {MY_CNF} (written by register_accounts, holds a database password)")
