"""The HTML report and the notebook's text form, on small hand-made notebooks (no kernel, no world)."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ispcp_lib import __version__
from ispcp_lib.core.result import Result
from ispcp_lib.core.secrets import REGISTRY
from ispcp_lib.runbook import notebook_build
from ispcp_lib.runbook.parameters import all_parameters
from ispcp_lib.runbook.report import (
    MASK,
    collapse_long_streams,
    html_report,
    mask_params,
    run_facts,
    strip_widget_outputs,
    summary_from_journal,
)
from ispcp_lib.steps import STEP_ORDER

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _widget_output(plain: str) -> dict:
    return new_output(
        "display_data",
        data={WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": plain},
    )


def _executed(tmp_path: Path, params: dict) -> Path:
    """A small notebook shaped like an executed runbook: papermill metadata, a step, widget leftovers."""
    nb = new_notebook()
    nb.metadata["papermill"] = {
        "parameters": params,
        "start_time": "2026-01-02T03:04:05.000000+00:00",
        "end_time": "2026-01-02T03:09:05.000000+00:00",
    }
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    result = Result(step="inventory", summary="what survived", status="done")
    result.note("the backup holds what the guide needs")
    nb.cells = [
        new_markdown_cell("# ispCP disaster recovery runbook"),
        new_code_cell("ctx = open_run(backup_root=backup_root)", outputs=[_widget_output("HTML(value='panel')")]),
        new_markdown_cell("## 1. Inventory of the backup (`inventory`)", metadata={"tags": ["inventory"]}),
        new_code_cell(
            "inventory.run(ctx)",
            metadata={"tags": ["inventory"]},
            outputs=[
                new_output("stream", name="stdout", text="".join(f"[00:00:{i:02d}] copied {i}\n" for i in range(30))),
                _widget_output("HBox(children=(IntProgress(value=3, max=3), Label(value='copying: 3/3')))"),
                new_output(
                    "execute_result",
                    data={"text/html": result._repr_html_(), "text/plain": repr(result)},
                    execution_count=3,
                ),
            ],
        ),
    ]
    for cell in nb.cells:
        cell.id = f"c{nb.cells.index(cell)}"
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    return path


def _summary(status: str = "ok", apply: bool = False) -> dict:
    steps = [
        {
            "name": n,
            "status": "skipped",
            "changed": 0,
            "duration_s": 0.0,
            "warnings": [],
            "reason": "not reached: an earlier cell stopped the run",
        }
        for n in STEP_ORDER
    ]
    steps[0] = {"name": "inventory", "status": "done", "changed": 0, "duration_s": 0.5, "warnings": ["w1"]}
    return {"status": status, "apply": apply, "run_id": "r1", "steps": steps}


def _roots(tmp_path: Path) -> dict:
    backup, target = tmp_path / "backup", tmp_path / "target"
    for root, version, host in ((backup, "1.0.5 OMEGA", "old.example"), (target, "1.0.7 OMEGA", "new.example")):
        (root / "etc/ispcp").mkdir(parents=True)
        (root / "etc/ispcp/ispcp.conf").write_text(f"# ispCP\nBuildDate = 20100101\nVersion = {version}\n")
        (root / "etc/hostname").write_text(host + "\n")
    return {
        "backup_root": str(backup),
        "target_root": str(target),
        "apply": False,
        "mysql": {"service": "sandbox", "root_password": "not-here"},
        "secrets_file": "/root/s.yaml",
        "apply_steps": {"keys": False},
    }


def test_report_has_summary_first_then_header_then_sections(tmp_path: Path) -> None:
    params = _roots(tmp_path)
    out = html_report(_executed(tmp_path, params), tmp_path / "r.html", summary=_summary())
    html = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    summary_at = html.index('id="ispcp-summary"')
    run_at = html.index("<h2>Run</h2>")
    first_cell = html.index('class="jp-Cell')
    assert summary_at < run_at < first_cell
    for name in STEP_ORDER:
        assert f"<code>{name}</code>" in html
    assert "DRY RUN: nothing was changed" in html and "dry run (nothing on the target was changed)" in html
    assert f"ispcp-recovery {__version__}" in html
    assert "old: 1.0.5 OMEGA · new: 1.0.7 OMEGA" in html
    assert "old: old.example · new: new.example" in html
    assert "2026-01-02" in html and "not reached: an earlier cell stopped the run" in html and "w1" in html
    assert "Inventory of the backup" in html and "what survived" in html


def test_report_is_self_contained(tmp_path: Path) -> None:
    html = html_report(_executed(tmp_path, _roots(tmp_path)), tmp_path / "r.html", summary=_summary()).read_text()
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", html, re.I)
    external = [t for t in tags if re.search(r"(?:src|href)=[\"']?(?:https?:)?//", t, re.I)]
    assert external == []
    assert "mathjax" not in html.lower() and "require.min.js" not in html and "cdnjs" not in html
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//|import\(\s*['\"]https?:", html, re.I)


def test_report_drops_widgets_and_collapses_long_output(tmp_path: Path) -> None:
    html = html_report(_executed(tmp_path, _roots(tmp_path)), tmp_path / "r.html", summary=_summary()).read_text()
    assert "HBox(" not in html and "HTML(value=" not in html and "Loading widgets" not in html
    assert WIDGET_VIEW not in html
    assert "printed output (stdout, 30 lines)" in html and "show all 30 lines" in html
    assert "copied 0" in html and "copied 29" in html  # first and last lines stay visible


def test_no_input_hides_code_cells(tmp_path: Path) -> None:
    executed = _executed(tmp_path, _roots(tmp_path))
    shown = html_report(executed, tmp_path / "with.html", summary=_summary()).read_text()
    hidden = html_report(executed, tmp_path / "without.html", no_input=True, summary=_summary()).read_text()
    assert "inventory.run" in re.sub(r"<[^>]+>", "", shown)
    assert "inventory.run" not in re.sub(r"<[^>]+>", "", hidden)
    assert "what survived" in hidden and "Inventory of the backup" in hidden
    assert "hidden (--no-input)" in hidden


def test_parameters_are_shown_with_secret_names_masked(tmp_path: Path) -> None:
    params = _roots(tmp_path)
    html = html_report(_executed(tmp_path, params), tmp_path / "r.html", summary=_summary()).read_text()
    assert "not-here" not in html and "/root/s.yaml" not in html
    assert html.count(MASK) == 2
    params_shown = re.search(r"<h2>Parameters</h2>.*?</pre>", html, re.S).group(0)
    assert '"keys": false' in unescape(params_shown)  # a bool named like a key reveals nothing, stays readable


def test_mask_params() -> None:
    masked = mask_params(
        {
            "db_password": "x",
            "nested": {"api_key": 3, "secret_note": None, "port": 1},
            "keys_source": "backup",
            "steps": ["keys"],
            "apply_steps": {"keys": True},
        }
    )
    assert masked == {
        "db_password": MASK,
        "nested": {"api_key": MASK, "secret_note": None, "port": 1},
        "keys_source": MASK,
        "steps": ["keys"],
        "apply_steps": {"keys": True},
    }


def test_registered_secret_is_redacted_in_the_report(tmp_path: Path) -> None:
    secret = "Zq8-report-test-secret-41"
    REGISTRY.add(secret, "test")
    params = {**_roots(tmp_path), "note": f"contains {secret}"}
    html = html_report(_executed(tmp_path, params), tmp_path / "r.html", summary=_summary()).read_text()
    assert secret not in html


def test_run_facts_fall_back_and_never_fail(tmp_path: Path) -> None:
    backup = tmp_path / "b"
    (backup / "etc/ispcp").mkdir(parents=True)
    (backup / "etc/ispcp/ispcp.conf").write_bytes(b"\xff\xfe junk\nSERVER_HOSTNAME = old.host\nVersion =\n")
    facts = run_facts({"backup_root": str(backup), "target_root": str(tmp_path / "missing")})
    assert facts == {
        "old_version": "unknown",
        "old_hostname": "old.host (SERVER_HOSTNAME in ispcp.conf)",
        "new_version": "unknown",
        "new_hostname": "unknown",
    }


def test_strip_widget_outputs_keeps_html_fallbacks() -> None:
    nb = new_notebook()
    keep = new_output("display_data", data={WIDGET_VIEW: {}, "text/html": "<b>kept</b>", "text/plain": "VBox()"})
    nb.cells = [new_code_cell("x", outputs=[_widget_output("VBox(children=())"), keep])]
    strip_widget_outputs(nb)
    assert nb.cells[0].outputs == [new_output("display_data", data={"text/html": "<b>kept</b>"})]


def test_short_streams_stay_and_neighbours_merge() -> None:
    nb = new_notebook()
    nb.cells = [
        new_code_cell(
            "x",
            outputs=[new_output("stream", name="stdout", text="a\n"), new_output("stream", name="stdout", text="b\n")],
        )
    ]
    collapse_long_streams(nb)
    assert nb.cells[0].outputs == [new_output("stream", name="stdout", text="a\nb\n")]


def test_summary_from_journal_says_why_a_step_has_no_record(tmp_path: Path) -> None:
    records = [
        {"run_id": "r1", "name": "inventory", "status": "done", "changed": 0, "duration_s": 0.1, "warnings": []},
        {
            "run_id": "r1",
            "name": "preflight",
            "status": "failed",
            "changed": 0,
            "duration_s": 0.1,
            "warnings": [],
            "errors": ["preflight: the target is not fresh"],
        },
        {"run_id": "r0", "name": "mail_guard", "status": "done", "changed": 1, "duration_s": 0.1, "warnings": []},
    ]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summary_from_journal(tmp_path, "r1", False, None)
    rows = {r["name"]: r for r in summary["steps"]}
    assert summary["status"] == "failed"
    assert rows["preflight"]["reason"] == "preflight: the target is not fresh"
    assert rows["mail_guard"]["status"] == "skipped"  # another run's record does not count
    assert rows["mail_guard"]["reason"] == "not reached: an earlier cell stopped the run"
    selected = summary_from_journal(tmp_path, "r1", False, ["inventory"])
    assert {r["name"]: r for r in selected["steps"]}["cleanup"]["reason"] == "not selected by the steps parameter"


# -- the notebook: parameters, kernel, tags, text form ----------------------------------------------------


def test_notebook_text_form_round_trips() -> None:
    nb = notebook_build.build()
    back = jupytext.reads(notebook_build.render_text(nb), fmt="md")
    assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in back.cells] == [
        (c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells
    ]
    assert back.metadata["kernelspec"]["name"] == "python3"


def test_notebook_check_flags_a_stale_text_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb_path, md_path, readme = tmp_path / "rb.ipynb", tmp_path / "rb.md", tmp_path / "README.md"
    readme.write_text(notebook_build.README.read_text())
    monkeypatch.setattr(notebook_build, "NOTEBOOK", nb_path)
    monkeypatch.setattr(notebook_build, "NOTEBOOK_TEXT", md_path)
    monkeypatch.setattr(notebook_build, "README", readme)
    monkeypatch.setattr(notebook_build, "PACKAGED", tmp_path / "package" / "rb.ipynb")
    (tmp_path / "package").mkdir()
    assert notebook_build.main([]) == 0 and notebook_build.main(["--check"]) == 0
    md_path.write_text(md_path.read_text().replace("inventory.run(ctx)", "inventory.run(ctx, hacked=True)"))
    assert notebook_build.main(["--check"]) == 1


def test_papermill_sees_every_parameter_and_interactive_defaults_to_auto(tmp_path: Path) -> None:
    path = tmp_path / "rb.ipynb"
    nb = notebook_build.build()
    nbformat.write(nb, path)
    inferred = papermill.inspect_notebook(str(path))
    assert set(inferred) == {p.name for p in all_parameters()}
    assert inferred["interactive"]["default"] == "None" and inferred["apply"]["default"] == "False"
    setup = next(c for c in nb.cells if "setup" in c.metadata.get("tags", []))
    assert 'start_interactive(ctx, ctx.param("interactive"))' in setup.source
    assert nb.metadata["kernelspec"]["name"] == "python3"
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids)) and "parameters" in ids
