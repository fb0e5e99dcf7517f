"""The runbook end to end under papermill on the small sandbox world."""

from __future__ import annotations

import json
from pathlib import Path

from ispcp_lib.runbook.cli import run_runbook


def _secret_forms(secret: str) -> set[str]:
    """A secret as it would appear raw, JSON-escaped (ipynb, journal) or HTML-escaped (report)."""
    import html

    return {secret, json.dumps(secret)[1:-1], html.escape(secret, quote=True), html.escape(secret, quote=False)}


def _assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    leaked = [s for s in secrets if s and any(form in text for form in _secret_forms(s))]
    assert not leaked, f"{len(leaked)} sandbox secret(s) appear in {where}"


def test_apply_run_writes_report_without_secrets(world, served_params, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    rc, html_path = run_runbook({**served_params, "apply": True}, reports, log_output=False)
    summary_path = html_path.with_suffix(".json")
    summary = json.loads(summary_path.read_text())
    failed = [s for s in summary["steps"] if s["status"] == "failed"]
    assert rc == 0 and summary["status"] == "ok", f"failed steps: {failed}"
    assert summary["apply"] is True
    assert {"inventory", "preflight"} <= {s["name"] for s in summary["steps"] if s["status"] == "done"}
    for path in (html_path, summary_path, html_path.with_suffix(".ipynb")):
        assert path.stat().st_mode & 0o777 == 0o600, path
    executed = json.loads(html_path.with_suffix(".ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    html = html_path.read_text()
    assert "What the backup holds" in html and "Preflight" in html
    secrets = world.secrets
    assert secrets, "the sandbox registered no secrets: the leak check would prove nothing"
    _assert_no_secret(html, secrets, "the HTML report")
    _assert_no_secret(html_path.with_suffix(".ipynb").read_text(), secrets, "the executed notebook")
    _assert_no_secret((world.state_dir / "journal.jsonl").read_text(encoding="utf-8"), secrets, "the journal")


def test_failing_step_gives_nonzero_exit_and_marked_report(served_params, tmp_path: Path) -> None:
    params = {**served_params, "backup_root": str(tmp_path / "no-such-backup")}
    rc, html_path = run_runbook(params, tmp_path / "reports", log_output=False)
    assert rc != 0
    summary = json.loads(html_path.with_suffix(".json").read_text())
    assert summary["status"] == "failed"
    assert summary["steps"][0] == {**summary["steps"][0], "name": "inventory", "status": "failed"}
    executed = json.loads(html_path.with_suffix(".ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and "backup_root" in errors[0]["evalue"]
    assert "does not exist" in html_path.read_text()
