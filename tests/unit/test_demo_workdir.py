"""The demo deletes its --workdir before building: only an empty directory or an earlier demo's world."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispcp_lib.core.errors import InputError
from ispcp_lib.sandbox.demo import clear_workdir, run_demo
from ispcp_lib.sandbox.world import MANIFEST, World


def test_a_directory_that_is_not_a_world_is_refused_and_kept(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    (precious / "docs").mkdir(parents=True)
    (precious / "docs" / "thesis.txt").write_text("years of work\n")
    with pytest.raises(InputError) as exc:
        clear_workdir(precious)
    assert str(precious) in str(exc.value) and "not empty" in str(exc.value)
    assert "new or empty directory" in str(exc.value)
    assert (precious / "docs" / "thesis.txt").read_text() == "years of work\n"


def test_run_demo_refuses_without_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert run_demo(tmp_path, "small", tmp_path / "reports") == 2
    assert "not ours to delete" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        clear_workdir(target)
    assert target.exists()


def test_an_empty_directory_and_a_missing_one_are_fine(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert clear_workdir(empty) == empty.resolve()
    assert not empty.exists()
    assert clear_workdir(tmp_path / "missing") == (tmp_path / "missing").resolve()


def test_an_earlier_world_is_stopped_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "demo"
    (old / "target").mkdir(parents=True)
    (old / MANIFEST).write_text("{}")
    stopped: list[Path] = []

    class FakeWorld:  # World.load needs a full manifest; what matters here is that it is stopped first
        def __init__(self, workdir: Path) -> None:
            self.workdir = workdir

        def stop(self) -> None:
            stopped.append(self.workdir)

    monkeypatch.setattr(World, "load", classmethod(lambda cls, workdir: FakeWorld(workdir)))
    clear_workdir(old)
    assert stopped == [old.resolve()]
    assert not old.exists()
