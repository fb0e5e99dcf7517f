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
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.result import Result
from ispcp_lib.core.secrets import REGISTRY
from ispcp_lib.runbook import cli, notebook_build
from ispcp_lib.runbook.parameters import all_parameters
from ispcp_lib.runbook.record import RUN_RECORD_MIME, summary_from_records
from ispcp_lib.runbook.report import (
    MASK,
    collapse_long_streams,
    html_report,
    mask_params,
    run_facts,
    strip_widget_outputs,
)
from ispcp_lib.runbook.session import read_run_facts
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


def test_run_facts_never_describe_this_machine_for_a_remote_target(tmp_path: Path) -> None:
    """Over ssh the target's / is not this machine's: unknown unless the run read it through its connection."""
    params = {**_roots(tmp_path), "target_root": "/", "target": {"connection": "ssh", "host": "srv.example"}}
    facts = run_facts(params)
    assert facts["new_hostname"] == "unknown"
    assert facts["new_version"] == "unknown"
    assert facts["old_hostname"] == "unknown"  # the backup is on the target by default
    on_controller = run_facts({**params, "backup_location": "controller"})
    assert on_controller["old_hostname"] == "old.example"
    recorded = {"old_version": "1.0.5 OMEGA", "old_hostname": "a", "new_version": "1.0.7 OMEGA", "new_hostname": "b"}
    assert run_facts(params, {"facts": recorded}) == recorded


def test_run_facts_are_read_through_the_connection(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    facts = read_run_facts(LocalConnection(roots["target_root"]), LocalConnection(roots["backup_root"]))
    assert facts == {
        "old_version": "1.0.5 OMEGA",
        "old_hostname": "old.example",
        "new_version": "1.0.7 OMEGA",
        "new_hostname": "new.example",
    }
    html = html_report(
        _executed(tmp_path, roots),
        tmp_path / "r.html",
        summary={**_summary(), "facts": {**facts, "new_hostname": "srv9"}},
    ).read_text()
    assert "srv9" in html
    assert "new.example" not in html


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


def test_summary_from_records_says_why_a_step_has_no_record() -> None:
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
    summary = summary_from_records(records, "r1", False, None)
    rows = {r["name"]: r for r in summary["steps"]}
    assert summary["status"] == "failed"
    assert rows["preflight"]["reason"] == "preflight: the target is not fresh"
    assert rows["mail_guard"]["status"] == "skipped"  # another run's record does not count
    assert rows["mail_guard"]["reason"] == "not reached: an earlier cell stopped the run"
    selected = summary_from_records(records, "r1", False, ["inventory"])
    assert {r["name"]: r for r in selected["steps"]}["cleanup"]["reason"] == "not selected by the steps parameter"


def _rec(name: str, status: str, apply: bool, changed: int = 0, ts: str = "2026-01-02T03:05:00", **kw) -> dict:
    changes = [f"change {n} of {name}" for n in range(changed)]
    return {
        "ts": ts,
        "run_id": "r1",
        "name": name,
        "status": status,
        "apply": apply,
        "changed": changed,
        "changes": changes,
        "duration_s": 2.0,
        "warnings": [],
        **kw,
    }


# Stepping through by hand: keys planned, applied by its button, its cell run again (a resume skip);
# user_data only planned; an operation record between them.
BY_HAND = [
    _rec("inventory", "done", False, ts="2026-01-02T03:04:10"),
    _rec("keys", "planned", False, 3),
    {"type": "operation", "phase": "intent", "ts": "2026-01-02T03:05:30", "run_id": "r1", "step": "keys", "seq": 1},
    _rec("keys", "done", True, 3, ts="2026-01-02T03:06:00", backups=["/var/lib/ispcp-recovery/backups/r1/keys/x"]),
    _rec("keys", "skipped", False, noop_reason="the journal shows this step applied in run r1"),
    _rec("user_data", "planned", False, 5, ts="2026-01-02T03:07:00"),
]


def test_applied_step_stays_applied_when_its_cell_runs_again() -> None:
    summary = summary_from_records(BY_HAND, "r1", False, None)
    rows = {r["name"]: r for r in summary["steps"]}
    assert rows["keys"]["status"] == "done" and rows["keys"]["changed"] == 3
    assert rows["keys"]["reason"] == "applied earlier in this run at 2026-01-02T03:06:00"
    assert rows["user_data"]["status"] == "planned" and rows["user_data"]["changed"] == 5
    assert summary["apply"] is True  # a button applied something although the parameter stayed False
    assert (summary["started"], summary["finished"]) == ("2026-01-02T03:04:08", "2026-01-02T03:07:00")


def _by_hand_notebook(tmp_path: Path, record: dict) -> Path:
    """A notebook stepped through in JupyterLab and saved without widget state: the setup cell's run record,
    the keys cell's plan and a widget view whose model is gone."""
    plan = Result(step="keys", status="planned", changes=["change 0 of keys"])
    nb = new_notebook()
    nb.cells = [
        new_code_cell("apply = False", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "session = start_interactive(ctx)",
            outputs=[new_output("display_data", data={RUN_RECORD_MIME: record, "text/plain": "run r1"})],
        ),
        new_markdown_cell("## 11. Keys (`keys`)", metadata={"tags": ["keys"]}),
        new_code_cell(
            "keys.run(ctx)",
            metadata={"tags": ["keys"]},
            outputs=[new_output("display_data", data={"text/html": plan._repr_html_()}), _widget_output("VBox()")],
        ),
    ]
    path = tmp_path / "by-hand.ipynb"
    nbformat.write(nb, path)
    path.chmod(0o644)  # as JupyterLab saves it
    return path


def test_report_of_a_by_hand_notebook_comes_from_the_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, state = tmp_path / "target", tmp_path / "target/var/lib/ispcp-recovery"
    state.mkdir(parents=True)
    (state / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BY_HAND))
    facts = {"old_version": "1.0.5", "old_hostname": "srv-old", "new_version": "1.0.7", "new_hostname": "srv-new"}
    record = {
        "run_id": "r1",
        "state_dir": str(state),
        "target": {"connection": "local"},
        "target_root": str(target),
        "facts": facts,  # the kernel read them through its connection (the target may be behind ssh)
    }
    executed = _by_hand_notebook(tmp_path, record)

    assert cli.main(["report", str(executed)]) == 0

    err = capsys.readouterr().err
    assert "saved without its widget state" in err and "filled in from the journal" in err
    assert executed.stat().st_mode & 0o777 == 0o600  # tightened like the report itself
    assert not executed.with_suffix(".json").exists()
    page = unescape((tmp_path / "by-hand.html").read_text())
    assert "APPLY: changes were made" in page and "run id</th><td>r1" in page
    assert "old: srv-old · new: srv-new" in page and "old: 1.0.5 · new: 1.0.7" in page
    summary = re.search(r"<table class=.ir-summary.*?</table>", page, re.S).group(0)
    keys_row = re.search(r"<code>keys</code>.*?</tr>", summary, re.S).group(0)
    assert ">done<" in keys_row and ">3<" in keys_row and "applied earlier in this run" in keys_row
    assert "2026-01-02 03:04:08" in page  # started, from the journal (no papermill metadata)
    assert "from the journal: run r1" in page  # the applied result the notebook lost, filled in
    assert "change 2 of keys" in page and "/var/lib/ispcp-recovery/backups/r1/keys/x" in page


def test_report_without_a_run_record_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    executed = _executed(tmp_path, {"apply": False})
    assert cli.main(["report", str(executed)]) == 0
    err = capsys.readouterr().err
    assert "does not record its run" in err and "no summary" in err


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


# -- plans as people read them ----------------------------------------------------------------------


def test_tables_show_whole_numbers_and_empty_cells() -> None:
    import pandas as pd

    r = Result(step="mail_guard", status="planned")
    r.table("SMTP probe", pd.DataFrame([{"when": "before", "code": 554, "x": None}, {"when": "after", "code": None}]))
    page = r._repr_html_()
    assert "<td>554</td>" in page and "554.0" not in page and "NaN" not in page and "None" not in page


def test_a_redacted_secret_in_a_diff_says_whether_it_changed() -> None:
    from ispcp_lib.core.result import Diff
    from ispcp_lib.core.secrets import SecretRegistry

    secrets = SecretRegistry()
    for value in ("old-pass-1", "new-pass-2"):
        secrets.add(value)
    r = Result(step="keys", status="planned", secrets=secrets)
    r.diffs.append(Diff("/etc/x.conf", "-a = old-pass-1\n+a = new-pass-2\n b = old-pass-1\n"))
    page = unescape(r._repr_html_())
    marks = re.findall(r"«redacted #([0-9a-f]{8})»", page)
    assert len(marks) == 3 and marks[0] != marks[1] and marks[0] == marks[2]  # changed, then unchanged
    assert "old-pass-1" not in page and "new-pass-2" not in page
    other = SecretRegistry()
    other.add("old-pass-1")
    assert other.redact_keyed("old-pass-1") != f"«redacted #{marks[0]}»"  # keyed per process: no matching guesses
