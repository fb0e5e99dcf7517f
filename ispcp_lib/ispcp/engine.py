"""Running ispCP's own engine scripts (ispcp-rqst-mngr, ispcp-update) on the target."""

from __future__ import annotations

from ispcp_lib.core.context import Context


def engine_env(ctx: Context) -> dict[str, str]:
    """Variables an engine script gets on top of the target's own environment.

    TERM for the scripts' dialogs; in the built-in sandbox, where its stand-in engine finds the
    target's tree and MySQL socket (a real engine ignores these). A command on the local connection
    inherits this machine's environment as well; a remote one gets only these (env(1)).
    """
    env = {"TERM": "xterm"}
    if ctx.sandbox:
        env["ISPCP_SANDBOX_ROOT"] = ctx.target.path("/").rstrip("/") or "/"
        if ctx.mysql is not None:
            env["ISPCP_SANDBOX_SOCKET"] = str(ctx.mysql.socket)
    return env
