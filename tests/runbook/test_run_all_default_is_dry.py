"""Opening the runbook fresh and running every cell with the default parameters changes nothing.

Two ways: headless (plain papermill with `-p interactive False`, what the README tells papermill users)
and as in JupyterLab (a real ZMQ kernel without ISPCP_HEADLESS, so the status panel and the apply
gates are live widgets, and no button is ever pressed). The only parameters set point the runbook at
the sandbox world; `apply` keeps its default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from ispcp_lib.runbook.interactive import HEADLESS_ENV
from ispcp_lib.runbook.notebook_build import NOTEBOOK
from ispcp_lib.sandbox.demo import world_services
from ispcp_lib.sandbox.world import World, stable_fingerprint

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def served_world(world: World) -> Iterator[tuple[World, dict[str, Any]]]:
    """The world with the sandbox services the demo starts too (Postfix, DNS), and its parameters."""
    with world_services(world) as services:
        yield world, {**world.runbook_params(), **services}


def _run_all(params: dict[str, Any], out: Path) -> str | None:
    """Execute every cell like "Run All"; returns the error of a failing cell (the run stops there)."""
    assert "apply" not in params, "the point is the default"
    try:
        papermill.execute_notebook(
            str(NOTEBOOK),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            cwd=str(out.parent),
        )
    except PapermillExecutionError as exc:
        return f"{exc.ename}: {exc.evalue}"
    return None


def _journal(world: World) -> list[dict[str, Any]]:
    path = world.state_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _widget_cells(out: Path) -> list[str]:
    nb = nbformat.read(out, as_version=4)
    return [c.id for c in nb.cells for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]


def _assert_dry(world: World, before: dict, error: str | None) -> None:
    assert stable_fingerprint(world) == before, "Run All with the default parameters changed the target"
    records = _journal(world)
    assert records, "no step ran: the test would prove nothing"
    assert not [r["name"] for r in records if r["apply"]], "a step ran with apply=True"
    planned = [r["name"] for r in records if r["status"] == "planned"]
    assert planned, "no step planned a change, so nothing shows that the change was held back"
    assert error is None, f"a cell failed, so later steps were not exercised: {error}"


def test_run_all_headless_with_default_parameters_is_a_dry_run(
    served_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world, params = served_world
    monkeypatch.delenv(HEADLESS_ENV, raising=False)  # plain papermill: only the parameter says headless
    before = stable_fingerprint(world)
    out = tmp_path / "headless.ipynb"
    error = _run_all({**params, "interactive": False}, out)
    assert _widget_cells(out) == [], "a headless run showed widgets"
    _assert_dry(world, before, error)
    # Every step's output starts with where the recovery stands (from the journal), headless too.
    nb = nbformat.read(out, as_version=4)
    firsts = [str(c.outputs[0].get("data", {}).get("text/plain", "")) for c in nb.cells if c.get("outputs")]
    lines = [text for text in firsts if text.startswith("▸ ")]
    for name in {r["name"] for r in _journal(world)}:
        assert any(f"now: {name} ·" in line for line in lines), f"{name}'s output has no status line on top"


def test_run_all_in_a_live_kernel_waits_for_the_apply_buttons(
    served_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world, params = served_world
    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    # What JupyterLab gets by auto-detection (tests/unit/test_interactive.py covers the detection itself).
    before = stable_fingerprint(world)
    out = tmp_path / "lab.ipynb"
    error = _run_all({**params, "interactive": True}, out)
    widget_cells = _widget_cells(out)
    assert "setup" in widget_cells, "the status panel is missing under the setup cell"
    planned = {r["name"] for r in _journal(world) if r["status"] == "planned"}
    gated = {c.rsplit("-", 1)[0] for c in widget_cells if c != "setup"}
    assert planned and planned <= gated, f"planned steps without an Apply button: {planned - gated}"
    _assert_dry(world, before, error)
    assert os.environ.get(HEADLESS_ENV) is None
