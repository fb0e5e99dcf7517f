"""The archived report: executed notebook -> self-contained HTML, plus the summary JSON.

The HTML reads offline and sends no request: nbconvert's lab template is used with every block that
would load a script from a CDN (require.js, MathJax, mermaid, the widget manager) emptied, and any
leftover external <script>/<link> stripped. It opens with the summary table, then a header (tool
version, ispCP versions, hostnames, times, apply or dry run, the parameters with anything named like a
secret masked), then the notebook: one section per step. Widget outputs cannot render in an archived
file and are dropped, so no "HBox(...)" text or empty "Loading widgets" box is left.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path
from typing import Any

import nbformat
from jinja2 import DictLoader
from nbconvert import HTMLExporter

from ispcp_lib import __version__
from ispcp_lib.core.action import parse_journal
from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.result import NEUTRAL_COLOUR, STATUS_COLOURS, applied_marker, collapsible, render_html
from ispcp_lib.core.secrets import REGISTRY
from ispcp_lib.runbook.record import RUN_RECORD_MIME, outcomes, result_from_record, summary_from_records
from ispcp_lib.runbook.session import read_run_facts, write_private
from ispcp_lib.steps import STEP_ORDER

# Script and link tags that would fetch from the network; the report must read offline.
_EXTERNAL = re.compile(r"<(script|link)\b[^>]*\b(?:src|href)=\"https?://[^\"]*\"[^>]*>(?:\s*</script>)?", re.I)
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# The plain-text repr of an ipywidget, e.g. "HBox(children=(IntProgress(value=3, max=10), ...))".
_WIDGET_REPR = re.compile(
    r"^\s*(?:[A-Z][A-Za-z]*)?(?:Box|Button|Progress|Output|HTML|Label|Tab|Accordion|"
    r"Text|Checkbox|Dropdown|Slider|Widget)\("
)
# Parameters whose name says they could hold a secret are masked even though none should.
_SECRET_NAME = re.compile(r"password|passwd|secret|key|token", re.I)
MASK = "•••••• (masked)"
STREAM_PREVIEW_LINES = 8
_PANEL_REPLACEMENT = (
    "<p class='ir-panel-final'>The live status panel stood here; the final status of every step is the "
    "<a href='#ispcp-summary'>summary at the top of this report</a>.</p>"
)

_TEMPLATE_NAME = "ispcp_report.html.j2"
_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">"""
    + """
.ir-report-head { max-width: 1100px; margin: 16px auto 24px auto; padding: 0 20px;
  font-family: var(--jp-ui-font-family, sans-serif); font-size: 14px; }
.ir-report-head h1 { font-size: 24px; margin: 8px 0 12px 0; }
.ir-report-head h2 { font-size: 18px; margin: 18px 0 8px 0; }
.ir-report-head table { border-collapse: collapse; }
.ir-report-head th, .ir-report-head td { border: 1px solid #d0d7de; padding: 3px 10px; text-align: left;
  vertical-align: top; }
.ir-report-head th { background: #f6f8fa; }
.ir-report-head td.num { text-align: right; }
.ir-verdict { font-weight: bold; padding: 6px 10px; border-radius: 4px; display: inline-block; }
.ir-verdict-ok { background: #dafbe1; color: #1a7f37; }
.ir-verdict-failed { background: #ffebe9; color: #cf222e; }
.ir-params pre { margin: 0; white-space: pre-wrap; }
details > summary { cursor: pointer; color: #0969da; }
.ir-sub { font-weight: bold; margin-top: 8px; }
/* After JupyterLab's own rules, so these need the extra class to win. */
.jp-RenderedHTMLCommon .ir-out pre { background: #f6f8fa; padding: 4px 8px; margin: 2px 0; border-radius: 4px;
  font-family: var(--jp-code-font-family, monospace); font-size: 12px; }
.jp-RenderedHTMLCommon .ir-result table td, .jp-RenderedHTMLCommon .ir-result table th { text-align: left; }
"""
    + """</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}{{ resources.ispcp_head }}{%- endblock body_header -%}
"""
)


def strip_widget_outputs(nb: nbformat.NotebookNode) -> None:
    """Widgets cannot render in an archived file. Where JupyterLab saved their state (a run stepped
    through by hand), their final content becomes static output: the status panel's table, the
    result shown under an Apply button, a progress label. Otherwise only a plain fallback is kept."""
    state = (nb.metadata.get("widgets", {}).get(_WIDGET_STATE) or {}).get("state", {})
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = _static_outputs(cell.outputs, state, set())


def _static_outputs(outputs: list[Any], state: dict[str, Any], seen: set[str]) -> list[Any]:
    kept: list[Any] = []
    for out in outputs:
        data = out.get("data")
        if data is not None and _WIDGET_VIEW in data:
            view = data.pop(_WIDGET_VIEW)
            static = _widget_as_outputs(state, str(view.get("model_id", "")), seen)
            if static:
                kept.extend(static)
                continue
        if data is not None:
            if _WIDGET_REPR.match(data.get("text/plain", "")):
                data.pop("text/plain")
            if not data:
                continue  # nothing left but a widget: drop the whole output
        kept.append(out)
    return kept


def _widget_as_outputs(state: dict[str, Any], model_id: str, seen: set[str]) -> list[Any]:
    """The static outputs a saved widget model stands for (containers are walked, controls dropped)."""
    model = state.get(model_id)
    if model is None or model_id in seen:
        return []
    seen.add(model_id)
    name, values = model.get("model_name", ""), model.get("state", {})
    if name == "OutputModel":
        return _static_outputs([nbformat.from_dict(o) for o in values.get("outputs", [])], state, seen)
    if name == "HTMLModel" and values.get("value"):
        if "ir-status-panel" in values["value"]:  # the live panel: its hints are stale in an archive
            return [nbformat.v4.new_output("display_data", data={"text/html": _PANEL_REPLACEMENT})]
        return [nbformat.v4.new_output("display_data", data={"text/html": values["value"]})]
    if name == "LabelModel" and values.get("value"):
        return [nbformat.v4.new_output("stream", name="stdout", text=values["value"] + "\n")]
    outputs: list[Any] = []
    for child in values.get("children", []):
        outputs += _widget_as_outputs(state, str(child).removeprefix("IPY_MODEL_"), seen)
    return outputs


def widget_state_missing(nb: nbformat.NotebookNode) -> bool:
    """Whether the notebook shows widgets whose state was not saved with it (JupyterLab's default):
    the status panel, the Apply buttons' results and the progress bars are then lost from the file."""
    state = (nb.metadata.get("widgets", {}).get(_WIDGET_STATE) or {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = (out.get("data") or {}).get(_WIDGET_VIEW)
            if view is not None and str(view.get("model_id", "")) not in state:
                return True
    return False


def notebook_run_record(nb: nbformat.NotebookNode) -> dict[str, Any] | None:
    """What the setup cell recorded of its run: run id, state dir, connection (None: not recorded)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            record = (out.get("data") or {}).get(RUN_RECORD_MIME)
            if isinstance(record, dict):
                return dict(record)
    return None


def fill_from_journal(nb: nbformat.NotebookNode, journal: list[dict[str, Any]], run_id: str) -> list[str]:
    """Append, from the journal, the applied result of every step whose cells do not show it; returns
    those steps. Run after strip_widget_outputs, so a result kept in saved widget state counts."""
    filled = []
    for name, got in outcomes(journal, run_id).items():
        rec = got.record
        if not rec.get("apply") or rec.get("status") in ("skipped", "planned"):
            continue
        cells = [c for c in nb.cells if c.cell_type == "code" and name in c.metadata.get("tags", [])]
        if not cells or _shows(cells, applied_marker(name)):
            continue
        note = (
            f"<p class='ir-from-journal'><b>Applied</b> (from the journal: run {_e(run_id)}, recorded at "
            f"{_e(rec.get('ts', '?'))}). The notebook does not hold this output; the journal keeps no diffs "
            "or tables, only the changes, commands with their last output, and safety copies.</p>"
        )
        html_text = note + render_html(result_from_record(rec))
        cells[-1].outputs.append(nbformat.v4.new_output("display_data", data={"text/html": html_text}))
        filled.append(name)
    return filled


def _shows(cells: list[Any], marker: str) -> bool:
    return any(marker in str((o.get("data") or {}).get("text/html", "")) for c in cells for o in c.get("outputs", []))


def collapse_long_streams(nb: nbformat.NotebookNode, preview: int = STREAM_PREVIEW_LINES) -> None:
    """Long printed output (progress lines, transcripts) becomes a <details> block with its first and
    last lines visible, like long command output in a Result."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list[Any] = []
        for out in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if (
                out.get("output_type") == "stream"
                and last is not None
                and last.get("output_type") == "stream"
                and last.get("name") == out.get("name")
            ):
                last["text"] = last["text"] + out["text"]
            else:
                merged.append(out)
        for i, out in enumerate(merged):
            if out.get("output_type") != "stream":
                continue
            lines = out["text"].rstrip("\n").splitlines()
            if len(lines) > 2 * preview + 2:
                title = f"printed output ({out['name']}, {len(lines)} lines)"
                merged[i] = nbformat.v4.new_output(
                    "display_data",
                    data={"text/html": collapsible(title, out["text"], preview=preview), "text/plain": out["text"]},
                )
        cell.outputs = merged


def html_report(
    executed: Path,
    html_path: Path,
    no_input: bool = False,
    summary: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    only_tags: set[str] | None = None,
    journal: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the HTML report (mode 0600) of an executed notebook; summary and params feed its head.

    With the run's journal, every step it shows applied whose applied result the notebook lacks (saved
    without widget state, or its cell re-run) gets that result from the journal.

    only_tags keeps just the cells with one of those tags and leaves the head out (for excerpts such
    as the screenshots in docs/).
    """
    nb = nbformat.read(executed, as_version=4)
    strip_widget_outputs(nb)
    if summary is not None and journal is not None:
        fill_from_journal(nb, journal, str(summary.get("run_id")))
    collapse_long_streams(nb)
    papermill_meta = nb.metadata.get("papermill", {})
    if params is None:
        params = dict(papermill_meta.get("parameters") or notebook_parameters(nb))
    start = papermill_meta.get("start_time") or (summary or {}).get("started")
    end = papermill_meta.get("end_time") or (summary or {}).get("finished")
    head = report_head(summary, params, start, end, no_input)
    if only_tags is not None:
        nb.cells = [c for c in nb.cells if only_tags & set(c.metadata.get("tags", []))]
        head = ""
    exporter = HTMLExporter(
        template_name="lab",
        embed_images=True,
        exclude_input=no_input,
        extra_loaders=[DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
    )
    exporter.template_file = _TEMPLATE_NAME
    exporter.exclude_input_prompt = no_input
    exporter.exclude_output_prompt = no_input
    body, _ = exporter.from_notebook_node(nb, resources={"ispcp_head": head})
    body = _EXTERNAL.sub("", body)
    # Redaction happens in the kernel, where the secrets are registered. This pass only helps when the
    # report is built in that same process (tests, an in-kernel call); `ispcp-recover run` has none here.
    write_private(html_path, REGISTRY.redact(body))
    return html_path


def notebook_parameters(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """The literal assignments of the parameters cell (and papermill's injected one), for a notebook
    run by hand, where papermill recorded nothing."""
    import ast

    params: dict[str, Any] = {}
    for cell in nb.cells:
        if not {"parameters", "injected-parameters"} & set(cell.metadata.get("tags", [])):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    params[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return params


# -- the head of the report ---------------------------------------------------------------------


def report_head(
    summary: dict[str, Any] | None, params: dict[str, Any], start: str | None, end: str | None, no_input: bool = False
) -> str:
    """The summary table first, then what an auditor needs to place the run."""
    parts = ["<div class='ir-report-head' id='ispcp-report-head'>", "<h1>ispCP recovery report</h1>"]
    if summary is not None:
        parts.append(summary_table_html(summary))
    parts.append(run_facts_html(summary, params, start, end, no_input))
    parts.append("</div>")
    return "".join(parts)


def summary_table_html(summary: dict[str, Any]) -> str:
    status = summary.get("status", "?")
    applied = summary.get("apply")
    verdict = (
        f"<div class='ir-verdict ir-verdict-{'ok' if status == 'ok' else 'failed'}'>"
        f"{'no step failed' if status == 'ok' else 'a step FAILED'} · "
        f"{'APPLY: changes were made' if applied else 'DRY RUN: nothing was changed'}</div>"
    )
    rows = []
    for s in summary.get("steps", []):
        colour = STATUS_COLOURS.get(s.get("status", ""), NEUTRAL_COLOUR)
        warnings = s.get("warnings") or []
        # At a glance: the reason or the first warning, shortened; the step's section has them all.
        note = _short(s.get("reason") or (warnings[0] if warnings else ""))
        if len(warnings) > (0 if s.get("reason") else 1):
            note += f" (warnings: {len(warnings)}, see the step)"
        name = _e(s.get("name", "?"))
        link = f"<a href='#cell-id={name}-md'><code>{name}</code></a>"
        rows.append(
            f"<tr><td>{link}</td><td style='color:{colour};font-weight:bold'>{_e(s.get('status'))}</td>"
            f"<td class='num'>{_e(s.get('changed', 0))}</td>"
            f"<td class='num'>{float(s.get('duration_s') or 0):.2f} s</td>"
            f"<td class='num'>{len(warnings)}</td><td>{_e(note)}</td></tr>"
        )
    return (
        "<h2>Summary</h2>"
        + verdict
        + "<table class='ir-summary' id='ispcp-summary'><thead><tr><th>step</th><th>status</th><th>changes</th>"
        "<th>duration</th><th>warnings</th><th>note</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def run_facts(params: dict[str, Any], summary: dict[str, Any] | None = None) -> dict[str, str]:
    """ispCP versions and hostnames of the old server (the backup) and the new one (the target).

    A headless run's summary carries them, read through the run's connection (session.read_run_facts).
    Otherwise they are read here only from what this machine holds: a local target under
    target_root, a backup on this machine. A server behind ssh or chroot, or a backup on it, stays
    "unknown" rather than describing this machine.
    """
    recorded = (summary or {}).get("facts")
    if recorded:
        return {k: str(v) for k, v in recorded.items()}
    target = params.get("target") or {}
    local = target.get("connection", "local") == "local"
    new = LocalConnection(params.get("target_root") or "/") if local else None
    backup_here = params.get("backup_root") and (local or params.get("backup_location") == "controller")
    old = LocalConnection(params["backup_root"]) if backup_here else None
    return read_run_facts(new, old)


def mask_params(value: Any, name: str = "") -> Any:
    """Parameters never hold secrets; mask any whose name says it could, at any depth, anyway."""
    if name and _SECRET_NAME.search(name) and not isinstance(value, bool) and value not in (None, "", [], {}):
        return MASK  # a bool cannot leak anything (apply_steps: {keys: false} stays readable)
    if isinstance(value, dict):
        return {k: mask_params(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_params(v) for v in value]
    return value


def run_facts_html(
    summary: dict[str, Any] | None, params: dict[str, Any], start: str | None, end: str | None, no_input: bool = False
) -> str:
    facts = run_facts(params, summary)
    applied = summary.get("apply") if summary is not None else params.get("apply")
    rows = [
        ("tool", f"ispcp-recovery {__version__}"),
        ("run id", (summary or {}).get("run_id") or params.get("run_id") or "unknown"),
        ("mode", "APPLY (changes were made)" if applied else "dry run (nothing on the target was changed)"),
        ("ispCP version", f"old: {facts['old_version']} · new: {facts['new_version']}"),
        ("hostname", f"old: {facts['old_hostname']} · new: {facts['new_hostname']}"),
        ("started", _time(start)),
        ("finished", _time(end)),
        ("backup root", params.get("backup_root") or "unknown"),
        ("target root", params.get("target_root") or "/"),
        ("code cells", "hidden (--no-input)" if no_input else "shown: every call is part of the record"),
    ]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    shown = json.dumps(mask_params(params), indent=1, sort_keys=True, default=str, ensure_ascii=False)
    return (
        "<h2>Run</h2><table class='ir-run'>" + table + "</table>"
        "<h2>Parameters</h2><p>As given to this run (every other parameter kept the default shown in "
        "the parameters cell below); any whose name suggests a secret is masked.</p>"
        "<div class='ir-params'><pre>" + _e(shown) + "</pre></div>"
    )


def _time(stamp: str | None) -> str:
    if not stamp:
        return "unknown"
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _e(text: Any) -> str:
    return html.escape(REGISTRY.redact(str(text)), quote=True)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# -- the summary JSON ---------------------------------------------------------------------------


def summary_from_journal(state_dir: Path, run_id: str, apply: bool, steps: list[str] | None) -> dict[str, Any]:
    """The Summary JSON from a journal file on this machine (a local target, a copied journal)."""
    journal = state_dir / "journal.jsonl"
    text = journal.read_text() if journal.exists() else None
    return summary_from_records(parse_journal(text), run_id, apply, steps)


# -- screenshots for the documentation -------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def screenshot(html_path: Path, png: Path, width: int = 1280, height: int = 1600, timeout: float = 120) -> Path:
    """A PNG of the top of an HTML file, taken by headless Chromium (offline: no name resolves)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ispcp-chromium-") as profile:
        subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={width},{height}",
                Path(html_path).resolve().as_uri(),
            ],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
    return png


def docs_screenshots(executed: Path, out_dir: Path, diff_step: str | None = None) -> list[Path]:
    """The README's pictures from a real report: its top, a step with a diff, the update transcript.

    Without diff_step, the step whose first diff sits nearest the top of its section is shown.
    """
    import tempfile

    nb = nbformat.read(executed, as_version=4)
    summary_path = Path(executed).with_suffix(".json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    diff_step = diff_step or _step_with_visible_diff(nb)
    wanted: list[tuple[str, set[str] | None]] = [("report-top.png", None)]
    if diff_step:
        wanted.append(("report-step-diff.png", {diff_step}))
    if any("ispcp_update" in c.metadata.get("tags", []) and c.get("outputs") for c in nb.cells):
        wanted.append(("report-update-transcript.png", {"ispcp_update"}))
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with tempfile.TemporaryDirectory(prefix="ispcp-shots-") as tmp:
        for name, tags in wanted:
            page = html_report(executed, Path(tmp) / f"{name}.html", summary=summary, only_tags=tags)
            shots.append(screenshot(page, out_dir / name))
    return shots


def _step_with_visible_diff(nb: nbformat.NotebookNode) -> str | None:
    """The step whose first diff has the least text before it (explanation plus earlier output)."""
    offsets: dict[str, int] = {}
    before: dict[str, int] = {}
    for cell in nb.cells:
        step = next((t for t in cell.metadata.get("tags", []) if t in STEP_ORDER), None)
        if step is None or step in offsets:
            continue
        text = cell.source + "".join(
            str(o.get("text", "")) + str(o.get("data", {}).get("text/html", "")) for o in cell.get("outputs", [])
        )
        at = text.find(">diff ")
        if at >= 0:
            offsets[step] = before.get(step, 0) + at
        else:
            before[step] = before.get(step, 0) + len(text)
    return min(offsets, key=offsets.__getitem__) if offsets else None
