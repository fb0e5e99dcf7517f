"""The mail guard's block in ispCP's Postfix template: added once, and lifting gives the template back byte
for byte, also when its last line had no line break."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispcp_lib.core.action import action
from ispcp_lib.core.context import Context
from ispcp_lib.core.result import Result
from ispcp_lib.system import postfix_guard
from tests.unit.test_operations import make_ctx


@pytest.mark.parametrize("template", ["smtpd_banner = $myhostname\n", "smtpd_banner = $myhostname", ""])
def test_lifting_the_guard_restores_the_template_exactly(tmp_path: Path, template: str) -> None:
    ctx = make_ctx(tmp_path, apply=True)
    path = ctx.target_root / "etc/ispcp/postfix/main.cf"
    path.parent.mkdir(parents=True)
    path.write_text(template)

    @action("mail_guard")
    def add(ctx: Context, result: Result) -> None:
        result.data["changed"] = [postfix_guard.guard_template(ctx), postfix_guard.guard_template(ctx)]

    @action("cleanup")
    def lift(ctx: Context, result: Result) -> None:
        postfix_guard._lift_template(ctx)

    added = add(ctx)
    assert added.data["changed"] == [True, False]  # a second call finds the block
    guarded = path.read_text()
    assert guarded.startswith(template) and guarded.endswith("soft_bounce = yes\n")
    assert guarded.splitlines()[-1] == "soft_bounce = yes" and "smtpd_banner = $myhostname#" not in guarded
    lift(ctx)
    assert path.read_text() == template
