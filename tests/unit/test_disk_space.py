"""Disk space: df -P parsing, the pre-check against a faked low number, the advice for a full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.context import Context
from ispcp_lib.core.errors import CommandFailed, PreconditionFailed
from ispcp_lib.core.result import Result
from ispcp_lib.system import disk_space as ds

# df -P -k on Debian Lenny (coreutils 6.10) and on Bookworm: the same POSIX columns.
LENNY = "/dev/sda1              9611492   1234567   7888360      14% /"
NAMED = "server:/export/web data 1048576 524288 524288 50% /var/www/virtual data"
NO_CAPACITY = "proc 0 0 0 - /proc"


def test_parse_df_lines() -> None:
    fs = ds.parse_df_line(LENNY)
    assert fs == ds.Filesystem("/dev/sda1", 9611492 * 1024, 7888360 * 1024, "/")
    spaced = ds.parse_df_line(NAMED)
    assert (spaced.device, spaced.mount, spaced.available) == (
        "server:/export/web data",
        "/var/www/virtual data",
        512 << 20,
    )
    assert ds.parse_df_line(NO_CAPACITY).available == 0
    with pytest.raises(ValueError):
        ds.parse_df_line("Filesystem 1024-blocks Used Available Capacity Mounted on")


def test_filesystems_reads_df_for_missing_paths_and_takes_the_fake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn = LocalConnection("/")
    real = ds.filesystems(conn, [str(tmp_path), str(tmp_path / "not/yet/there")])
    assert (real[0].device, real[0].mount) == (real[1].device, real[1].mount)  # the nearest existing folder
    assert real[0].available > 0
    monkeypatch.setenv(ds.FAKE_ENV, f"/elsewhere=5,{real[0].mount}=7")
    (faked,) = ds.filesystems(conn, [str(tmp_path)])
    assert faked.available == 7 * 1024 and faked.mount == real[0].mount


def _ctx(tmp_path: Path, **params: object) -> Context:
    return Context(target_root=tmp_path, backup_root=None, state_dir=tmp_path / "state", run_id="t", params=params)


def test_check_refuses_a_filesystem_without_room(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, disk_reserve_mb=1)
    (fs,) = ds.filesystems(ctx.target, ["/"])
    monkeypatch.setenv(ds.FAKE_ENV, f"{fs.mount}={3 * 1024}")  # 3 MiB free
    needs = [ds.Need("/var/lib/mysql.x/staging", 1 << 20, "staged copies"), ds.Need("/var/lib/mysql", 1 << 20, "dumps")]
    result = Result(step="mysql_restore", apply=True)
    ds.check(ctx, result, needs, step_fix="run mysql_restore again")  # 2 MiB + 1 MiB reserve fit in 3 MiB
    assert f"{ctx.logical_path(fs.mount)} ({fs.device}): 2.0 MiB needed, 3.0 MiB free" in result.notes[-1]
    needs.append(ds.Need("/var/lib/mysql", 1, "one byte more"))
    with pytest.raises(PreconditionFailed) as info:
        ds.check(ctx, Result(step="mysql_restore", apply=True), needs, step_fix="run mysql_restore again")
    text = str(info.value)
    assert f"{fs.device} mounted on {ctx.logical_path(fs.mount)} has 3.0 MiB free" in text
    assert "staged copies; dumps; one byte more" in text and "free at least 1 B" in text
    assert "run mysql_restore again" in text


def test_enospc_advice_names_the_full_filesystem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (fs,) = ds.filesystems(ctx.target, ["/"])
    monkeypatch.setenv(ds.FAKE_ENV, f"{fs.mount}=0")
    ctx.current = Result(step="user_data", apply=True)
    failed = CommandFailed(
        ["cp", "-a", "--", "/src", str(tmp_path / "dst")], 1, "cp: error writing: No space left on device"
    )
    advice = ds.enospc_advice(ctx, failed)
    assert advice is not None and f"free space on {ctx.logical_path(fs.mount)} ({fs.device}, 0 B free now)" in advice
    assert "run user_data again" in advice and str(ctx.state_dir) in advice
    oserror = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert "0 B free now" in (ds.enospc_advice(ctx, oserror) or "")
    assert ds.enospc_advice(ctx, CommandFailed(["cp"], 1, "Permission denied")) is None
