"""ispcp-recover's own logic that needs no sandbox."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from ispcp_lib.runbook.cli import _ensure_notebook, _parse_value
from ispcp_lib.runbook.report import html_report


def test_report_is_written_even_when_papermill_left_nothing(tmp_path: Path) -> None:
    executed = tmp_path / "run.ipynb"
    executed.write_text("")  # what run_runbook pre-creates before papermill starts
    _ensure_notebook(executed, "The run stopped before the runbook finished: DeadKernelError: gone")
    nb = nbformat.read(executed, as_version=4)
    assert "DeadKernelError" in nb.cells[0].source
    assert executed.stat().st_mode & 0o777 == 0o600
    html = html_report(executed, tmp_path / "run.html")
    assert "DeadKernelError" in Path(html).read_text()


def test_existing_notebook_is_kept(tmp_path: Path) -> None:
    executed = tmp_path / "run.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("partial run")]
    executed.write_text(nbformat.writes(nb))
    _ensure_notebook(executed, "should not replace")
    assert nbformat.read(executed, as_version=4).cells[0].source == "partial run"


def test_param_values_are_yaml() -> None:
    assert _parse_value("true") is True and _parse_value("3") == 3
    assert _parse_value("[a, b]") == ["a", "b"] and _parse_value("{user_data: false}") == {"user_data": False}


def test_bad_parameters_stop_the_run_before_a_kernel_starts(tmp_path: Path, capsys) -> None:
    from ispcp_lib.runbook.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("apply: maybe\n")
    reports = tmp_path / "reports"
    assert main(["run", "-f", str(params), "--report-dir", str(reports)]) == 2
    assert "parameter apply: is the string 'maybe', not true or false" in capsys.readouterr().err
    assert main(["run", "-p", "aply", "true", "--report-dir", str(reports)]) == 2
    assert "did you mean apply?" in capsys.readouterr().err
    assert not reports.exists()  # nothing started, nothing written


def test_the_package_finds_its_notebook() -> None:
    from ispcp_lib.runbook.notebook_build import NOTEBOOK, runbook_notebook

    with runbook_notebook() as path:
        nb = nbformat.read(path, as_version=4)
        assert path.read_bytes() == NOTEBOOK.read_bytes()
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_lab_rehearse_refuses_a_folder_without_the_old_config(tmp_path: Path) -> None:
    """Before any lab server starts: the backup folder must hold etc/ispcp/ispcp.conf."""
    from ispcp_lib.runbook.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["lab", "rehearse", "--backup", str(tmp_path)])
    assert "holds no etc/ispcp/ispcp.conf" in str(stop.value)
