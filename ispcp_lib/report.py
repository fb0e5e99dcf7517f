"""The archived report: executed notebook -> self-contained HTML, plus the summary JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import HTMLExporter

from ispcp_lib.runbook import write_private
from ispcp_lib.steps import STEP_ORDER

# Script and link tags that would fetch from the network; the report must read offline.
_EXTERNAL = re.compile(r"<(script|link)\b[^>]*\b(?:src|href)=\"https?://[^\"]*\"[^>]*>(?:\s*</script>)?", re.I)
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widget_outputs(nb: nbformat.NotebookNode) -> None:
    """Widgets cannot render in an archived file: keep their plain text or HTML fallback only."""
    nb.metadata.get("widgets", {}).pop(_WIDGET_STATE, None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and _WIDGET_VIEW in data:
                data.pop(_WIDGET_VIEW)
                plain = data.get("text/plain", "")
                if plain.startswith(("HBox(", "VBox(", "Button(", "IntProgress(", "Output(")):
                    data.pop("text/plain")


def html_report(executed: Path, html_path: Path, no_input: bool = False) -> Path:
    nb = nbformat.read(executed, as_version=4)
    strip_widget_outputs(nb)
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input=no_input)
    exporter.exclude_input_prompt = no_input
    body, _ = exporter.from_notebook_node(nb)
    body = _EXTERNAL.sub("", body)
    write_private(html_path, body)
    return html_path


def summary_from_journal(state_dir: Path, run_id: str, apply: bool, steps: list[str] | None) -> dict[str, Any]:
    """The Summary JSON, built from the journal so that it exists even when the run stopped early."""
    journal = state_dir / "journal.jsonl"
    records: dict[str, dict[str, Any]] = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("run_id") == run_id:
                    records[rec["name"]] = rec
    rows = []
    for name in STEP_ORDER:
        rec = records.get(name)
        if rec is None:
            rows.append({"name": name, "status": "skipped", "changed": 0, "duration_s": 0.0, "warnings": [],
                         "reason": "not selected" if steps and name not in steps else "not reached or not built"})
            continue
        rows.append({"name": name, "status": rec["status"], "changed": rec["changed"],
                     "duration_s": rec["duration_s"], "warnings": rec.get("warnings", [])})
    status = "failed" if any(r["status"] == "failed" for r in rows) else "ok"
    return {"status": status, "apply": apply, "run_id": run_id, "steps": rows}
