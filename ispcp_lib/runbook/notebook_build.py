"""Builds runbooks/ispcp_recovery.ipynb from the step modules, so that the notebook holds no logic
and its text lives next to the code it explains. It also writes runbooks/ispcp_recovery.md, the same
notebook as jupytext markdown, so that a change to the runbook can be reviewed as a plain text diff.
`python -m ispcp_lib.runbook.notebook_build --check` fails when either file (or the README's parameter
table) is out of date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ispcp_lib.steps import STEP_ORDER, load

NOTEBOOK = Path(__file__).resolve().parents[2] / "runbooks" / "ispcp_recovery.ipynb"
NOTEBOOK_TEXT = NOTEBOOK.with_suffix(".md")  # jupytext markdown of the same cells, for review
README = Path(__file__).resolve().parents[2] / "README.md"
_README_START, _README_END = "<!-- step-parameters:start -->", "<!-- step-parameters:end -->"

# name -> (default, description): the run-wide parameters of DESIGN.md's contract.
CORE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "backup_root": (None, "the old server's files at their original absolute paths"),
    "target_root": ("/", "the new system's root (/ on a real server)"),
    "apply": (False, "False = dry run: plan and show, change nothing"),
    "steps": (None, "None = every step in guide order, or a list of step names"),
    "state_dir": (None, "journal and safety copies; None = /var/lib/ispcp-recovery under target_root"),
    "secrets_file": (None, "YAML name: value file (mode 0600) for secrets found on neither system"),
    "mysql": (
        {"service": "systemd", "datadir": "/var/lib/mysql", "socket": "/run/mysqld/mysqld.sock", "port": 3306},
        "how to reach and control MySQL: service systemd|sysv|sandbox, datadir, socket, port, optional pid_file",
    ),
    "run_id": (None, "None = a timestamp; names safety copies and journal records"),
    "resume": (True, "skip changing steps that the journal shows applied already"),
    "force_steps": ([], "steps to run again even though the journal shows them applied"),
    "apply_steps": ({}, "per-step override of apply, e.g. {'user_data': False}"),
    "summary_path": (None, "where the summary JSON goes (the CLI sets it)"),
    "interactive": (
        None,
        "None = status panel and Apply buttons only in a live JupyterLab (not when "
        "ISPCP_HEADLESS is set); plain papermill runs pass -p interactive False",
    ),
}
# Parameters the setup cell uses itself instead of passing them to open_run.
_NOT_FOR_OPEN_RUN = ("summary_path", "interactive")

INTRO = """# ispCP disaster recovery runbook

This runbook brings an ispCP Omega server back from partial backups. It follows the recovery guide
"Katastrophen-Recovery mit ispCP" (BenBE, 2010) section by section; each section says which part of
the guide it follows, explains why the step exists and what can go wrong, then makes **one call into
`ispcp_lib`** and shows its result.

* **Dry run is the default.** With `apply = False` every step only plans and shows what it would do:
  commands, diffs and tables. Nothing on the target changes.
* **Nothing is lost.** Whatever a step replaces is first copied under the state directory; each result
  lists where.
* **Re-running is safe.** A step that finds nothing to do says why. A step the journal shows applied
  is skipped unless named in `force_steps`.
* **Secrets stay out.** Passwords, keys and hashes are found on the two systems, never passed as
  parameters, and every output is redacted.

**Two ways to run it.**

* **Step by step in JupyterLab.** Run the cells one by one. A status panel under the setup cell shows
  where the recovery stands. Every step that would change the target first runs as a dry run and shows
  its plan (commands, diffs, tables) with an **Apply this step** button; nothing changes until you press
  it, and pressing it applies that step only. "Run All" therefore only plans. For the record, set
  `summary_path`, save the notebook with its widget state (Settings → Save Widget State
  Automatically) and run `ispcp-recover report <notebook>.ipynb`.
* **Headless:** `ispcp-recover run -f params.yaml`. No widgets; the `apply` parameter (and the
  per-step `apply_steps` override) decides, and long work prints plain progress lines. The HTML report
  of the run is the record of what was done. Running the notebook with plain `papermill` instead?
  Pass `-p interactive False`."""

SETUP = """from ispcp_lib.runbook.interactive import start_interactive
from ispcp_lib.runbook.session import open_run, summary
from ispcp_lib.steps import {modules}

ctx = open_run(
{args}
)
# In JupyterLab: the status panel, and an "Apply this step" button under every changing step.
# Headless (ispcp-recover run, papermill -p interactive False): nothing interactive; `apply` decides.
session = start_interactive(ctx, interactive)"""


def _literal(value: Any) -> str:
    return repr(value)


def parameter_cell_source(step_params: dict[str, tuple[Any, str]]) -> str:
    lines = ["# Parameters (papermill overrides these). Never put a password here: use secrets_file."]
    for name, (default, doc) in {**CORE_PARAMETERS, **step_params}.items():
        # papermill skips any parameter line with a second "=", even in its comment.
        lines.append(f"{name} = {_literal(default)}  # {doc.replace(' = ', ': ').replace('=', ':')}")
    return "\n".join(lines)


def collect_step_parameters(with_step: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in STEP_ORDER:
        module = load(name)
        for pname, spec in getattr(module, "PARAMETERS", {}).items():
            if pname in out or pname in CORE_PARAMETERS:
                raise ValueError(f"parameter {pname} declared twice (step {name})")
            out[pname] = (*spec, name) if with_step else spec
    return out


def readme_text(current: str) -> str:
    """README.md with its step-parameter table regenerated from the step modules."""
    rows = ["| parameter | default | step | meaning |", "|---|---|---|---|"]
    for pname, (default, doc, step) in collect_step_parameters(with_step=True).items():
        rows.append(f"| `{pname}` | `{default!r}` | {step} | {doc} |")
    head, rest = current.split(_README_START, 1)
    _, tail = rest.split(_README_END, 1)
    return head + _README_START + "\n" + "\n".join(rows) + "\n" + _README_END + tail


def build() -> nbformat.NotebookNode:
    step_params = collect_step_parameters()
    core_args = [n for n in CORE_PARAMETERS if n not in _NOT_FOR_OPEN_RUN]
    args = [f"    {n}={n}," for n in core_args]
    args.append("    options=dict(\n" + "".join(f"        {n}={n},\n" for n in step_params) + "    ),")
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ispcp-recovery)", "language": "python"},
        "language_info": {"name": "python"},
    }
    cells = [
        _md("intro", INTRO, []),
        _code("parameters", parameter_cell_source(step_params), ["parameters"]),
        _code("setup", SETUP.format(args="\n".join(args), modules=", ".join(STEP_ORDER)), ["setup"]),
    ]
    for number, name in enumerate(STEP_ORDER, start=1):
        module = load(name)
        text = f"## {number}. {module.TITLE} (`{name}`)\n\n*Guide: {module.GUIDE}*\n\n{module.EXPLANATION.strip()}"
        cells.append(_md(f"{name}-md", text, [name]))
        for i, source in enumerate(getattr(module, "CELLS", None) or [f"{name}.run(ctx)"]):
            cells.append(_code(f"{name}-{i}", source, [name]))
    cells.append(
        _md(
            "summary-md",
            "## Summary\n\nEvery step of this run, its outcome, the number of changes "
            "(planned in a dry run) and its duration.",
            ["summary"],
        )
    )
    cells.append(_code("summary", "summary(ctx, summary_path)", ["summary"]))
    nb.cells = cells
    return nb


def _md(cell_id: str, text: str, tags: list[str]) -> nbformat.NotebookNode:
    cell = new_markdown_cell(text)
    cell.id = cell_id
    cell.metadata = {"tags": tags}
    return cell


def _code(cell_id: str, source: str, tags: list[str]) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    cell.id = cell_id
    cell.metadata = {"tags": tags}
    return cell


def render() -> str:
    return nbformat.writes(build()) + "\n"


def render_text(nb: nbformat.NotebookNode | None = None) -> str:
    """The notebook as jupytext markdown: cells, tags and kernel, without volatile jupytext versions."""
    import copy

    import jupytext

    nb = copy.deepcopy(nb if nb is not None else build())
    for cell in nb.cells:
        if not cell.metadata.get("tags"):
            cell.metadata.pop("tags", None)
    nb.metadata["jupytext"] = {
        "cell_metadata_filter": "tags,-all",
        "notebook_metadata_filter": "kernelspec,language_info,-jupytext.text_representation.jupytext_version",
    }
    return jupytext.writes(nb, fmt="md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed notebook is stale")
    args = parser.parse_args(argv)
    nb = build()
    wanted = {
        NOTEBOOK: nbformat.writes(nb) + "\n",
        NOTEBOOK_TEXT: render_text(nb),
        README: readme_text(README.read_text()),
    }
    if args.check:
        stale = [p for p, want in wanted.items() if not p.exists() or p.read_text() != want]
        for p in stale:
            print(f"{p} is out of date: run python -m ispcp_lib.runbook.notebook_build", file=sys.stderr)
        if not stale:
            print(
                f"{NOTEBOOK.name}, {NOTEBOOK_TEXT.name} and the README's parameter table are in sync "
                "with ispcp_lib/steps"
            )
        return 1 if stale else 0
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
    print(f"wrote {NOTEBOOK}, {NOTEBOOK_TEXT} and the README's parameter table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
