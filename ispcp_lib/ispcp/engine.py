"""Running ispCP's own engine scripts (ispcp-rqst-mngr, ispcp-update) on the target."""

from __future__ import annotations

from ispcp_lib.core.context import Context


def engine_env(ctx: Context) -> dict[str, str]:
    """Variables an engine script gets on top of the target's own environment: a terminal type for its
    dialogs, and the current directory in Perl's module path.

    A command on the local connection inherits this machine's environment as well; a remote one gets
    only these (env(1)). The sandbox's stand-ins find their tree from their own path.
    """
    # ispcp-setup and ispcp-update load PerlVendor::Capture::Tiny from engine/setup through "." in @INC,
    # which Perl 5.26 removed; PERL_USE_UNSAFE_INC=1 puts it back, and older Perl ignores it.
    return {"TERM": "xterm", "PERL_USE_UNSAFE_INC": "1"}
