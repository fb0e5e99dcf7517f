"""engine_speedup on the sandbox's engine managers: with the line, without it, and with decoys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ispcp_lib.core.action import StepFailed
from ispcp_lib.ispcp import engine_sleep
from ispcp_lib.sandbox import ispcp_files
from ispcp_lib.sandbox.world import stable_fingerprint
from ispcp_lib.steps import engine_speedup
from tests.integration.recovered_world import open_ctx

ENGINE = "var/www/ispcp/engine"

DECOYS = """#!/usr/bin/perl
# a manager with sleep(1) everywhere but as a statement: only line 14 may change
use strict;
my $msg = "sleep(1);";
print <<"EOT";
sleep(1);
EOT

=pod

sleep(1);

=cut
foreach my $r (@rows) {
    sleep(1);
    # sleep(1);
    sleep(1); # with a trailing comment this is not the guide's line
}
__END__
sleep(1);
"""


def managers(world) -> dict[str, str]:
    return {n: (world.target_root / ENGINE / n).read_text() for n in engine_sleep.MANAGERS}


def test_dry_run_apply_and_apply_again(stopped_world) -> None:
    world = stopped_world
    before_text = managers(world)
    before = stable_fingerprint(world)

    dry = engine_speedup.run(open_ctx(world))
    assert dry.status == "planned" and dry.changed == 7
    assert stable_fingerprint(world) == before
    table = dry.tables[0].frame
    assert set(table["manager"]) == set(engine_sleep.MANAGERS)
    assert set(table["state"]) == {"to comment out"}

    done = engine_speedup.run(open_ctx(world, apply=True))
    assert done.status == "done" and done.changed == 7
    after_text = managers(world)
    for name, old in before_text.items():
        old_lines, new_lines = old.split("\n"), after_text[name].split("\n")
        changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
        assert len(old_lines) == len(new_lines) and len(changed) == 1, name
        assert old_lines[changed[0]] == "\tsleep(1);" and new_lines[changed[0]] == "\t#sleep(1);"
        assert done.data["commented"][name] == [changed[0] + 1]
    # the decoy comment in ispcp-dmn-mngr is untouched
    assert ispcp_files.DECOY_COMMENT in after_text[ispcp_files.DECOY_MANAGER]
    # safety copies hold the original bytes; the record for cleanup names every line
    for copy in done.backups:
        name = Path(copy).name
        assert Path(copy).read_text() == before_text[name]
    record = json.loads((world.state_dir / engine_sleep.STATE_FILE).read_text())
    assert {k.rsplit("/", 1)[1] for k in record} == set(engine_sleep.MANAGERS)

    again = engine_speedup.run(open_ctx(world, apply=True))
    assert again.status == "noop" and again.changed == 0
    assert "already commented out (7 line(s))" in again.noop_reason
    assert managers(world) == after_text


def test_ispcp_107_has_no_sleep_lines(stopped_world) -> None:
    world = stopped_world
    for name in engine_sleep.MANAGERS:
        (world.target_root / ENGINE / name).write_text(ispcp_files.engine_manager(name, "1.0.7 OMEGA"))
    before = stable_fingerprint(world)
    res = engine_speedup.run(open_ctx(world, apply=True))
    assert res.status == "noop" and "1.0.7+ has no sleep(1) lines" in res.noop_reason
    assert stable_fingerprint(world) == before


def test_only_the_exact_statement_is_commented(stopped_world) -> None:
    world = stopped_world
    path = world.target_root / ENGINE / "ispcp-sub-mngr"
    path.write_text(DECOYS)
    res = engine_speedup.run(open_ctx(world, apply=True))
    assert res.data["commented"]["ispcp-sub-mngr"] == [15]
    new = path.read_text().split("\n")
    old = DECOYS.split("\n")
    assert new[14] == "    #sleep(1);"
    assert [i for i, (a, b) in enumerate(zip(old, new)) if a != b] == [14]


def test_missing_managers_warn_and_a_missing_engine_fails(stopped_world) -> None:
    world = stopped_world
    (world.target_root / ENGINE / "ispcp-htusers-mngr").unlink()
    res = engine_speedup.run(open_ctx(world))
    assert any("ispcp-htusers-mngr" in w for w in res.warnings)
    assert res.changed == 6

    for name in engine_sleep.MANAGERS:
        (world.target_root / ENGINE / name).unlink(missing_ok=True)
    with pytest.raises(StepFailed) as info:
        engine_speedup.run(open_ctx(world, apply=True))
    assert "none of ispcp-als-mngr" in info.value.result.errors[0]


def test_restore_puts_back_exactly_what_was_commented(stopped_world) -> None:
    world = stopped_world
    path = world.target_root / ENGINE / "ispcp-als-mngr"
    # An operator's own commented line elsewhere must survive the restore.
    path.write_text(path.read_text().replace("use warnings;", "use warnings;\n#sleep(1);"))
    original = managers(world)
    engine_speedup.run(open_ctx(world, apply=True))
    ctx = open_ctx(world, apply=True)
    from ispcp_lib.core.result import Result

    result = Result(step="cleanup", apply=True)
    ctx.current = result
    changes = engine_sleep.restore_sleep_lines(ctx, result)
    ctx.current = None
    assert len(changes) == 7
    assert managers(world) == original
    assert not (world.state_dir / engine_sleep.STATE_FILE).exists()
