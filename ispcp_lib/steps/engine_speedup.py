"""engine_speedup: comment out the `sleep(1);` that ends each item in ispCP 1.0.5/1.0.6 engine managers."""

from __future__ import annotations

import pandas as pd

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.core.params import Param
from ispcp_lib.core.result import Result
from ispcp_lib.ispcp.engine_sleep import MANAGERS, comment_out, engine_dir, read_managers, record_state, scan

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


@action("engine_speedup")
def run(ctx: Context, result: Result) -> None:
    engine = engine_dir(ctx)
    if not ctx.target.is_dir(engine):
        raise PreconditionFailed(
            "ispCP engine",
            "directory not found",
            "install the dummy ispCP first (see ispcp_install_check)",
            path=engine,
        )
    texts = read_managers(ctx, engine)  # all seven in one command
    found, missing = scan(ctx, texts)
    if not found:
        raise PreconditionFailed(
            "ispCP engine managers",
            f"none of {', '.join(MANAGERS)} exists",
            "check ROOT_DIR in ispcp.conf and the dummy install",
            path=engine,
        )
    if missing:
        result.warn(f"managers not found in {engine}: {', '.join(missing)}")
    rows = []
    commented: dict[str, list[int]] = {}
    for name, lines in found.items():
        path = f"{engine}/{name}"
        active = [s.line_no for s in lines if s.active]
        for s in lines:
            state = ("commented out now" if ctx.apply else "to comment out") if s.active else "already commented out"
            rows.append({"manager": name, "line": s.line_no, "state": state})
        if not lines:
            rows.append({"manager": name, "line": None, "state": "no sleep(1) line"})
        if active:
            new = comment_out(texts[name] or "", active)
            ctx.write_file(
                path,
                new.encode("utf-8", "surrogateescape"),
                what=f"comment out sleep(1); in {path}, line(s) {', '.join(map(str, active))}",
            )
            commented[name] = active
    result.table("sleep(1) lines in the engine managers", pd.DataFrame(rows))
    result.data["commented"] = commented
    if commented and ctx.apply:
        record_state(ctx, engine, commented)
    total_active = sum(len(v) for v in commented.values())
    already = sum(1 for lines in found.values() for s in lines if not s.active)
    if total_active:
        result.summary = f"{total_active} sleep(1) line(s) in {len(commented)} manager(s)"
    elif already:
        result.noop_reason = f"the sleep(1) lines are already commented out ({already} line(s))"
    else:
        result.noop_reason = "ispCP 1.0.7+ has no sleep(1) lines: nothing to speed up"
