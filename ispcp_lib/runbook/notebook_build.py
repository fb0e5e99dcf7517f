"""Builds runbooks/ispcp_recovery.ipynb from the step modules, so that the notebook holds no logic
and its text lives next to the code it explains. It also writes runbooks/ispcp_recovery.md, the same
notebook as jupytext markdown, so that a change to the runbook can be reviewed as a plain text diff,
and the README's parameter tables, from the same parameter spec as the notebook's parameters cell.
`python -m ispcp_lib.runbook.notebook_build --check` fails when any of them is out of date.

The package ships the notebook as `ispcp_lib/runbook/ispcp_recovery.ipynb`, a link to the one in
runbooks/ (the copy in the wheel is a plain file): `runbook_notebook()` finds it in a checkout and in
an installed package alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ispcp_lib.core.params import Param
from ispcp_lib.runbook.parameters import RUN_PARAMETERS, SECRETS, all_parameters
from ispcp_lib.steps import STEP_ORDER, load
from ispcp_lib.steps import parameters as step_parameters

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "runbooks" / "ispcp_recovery.ipynb"
NOTEBOOK_TEXT = NOTEBOOK.with_suffix(".md")  # jupytext markdown of the same cells, for review
PACKAGED_NAME = "ispcp_recovery.ipynb"
PACKAGED = Path(__file__).parent / PACKAGED_NAME  # a symlink to NOTEBOOK in the checkout
README = ROOT / "README.md"


@contextlib.contextmanager
def runbook_notebook() -> Iterator[Path]:
    """The notebook to execute, as a file path, wherever the package is installed."""
    with importlib.resources.as_file(importlib.resources.files(__package__) / PACKAGED_NAME) as path:
        yield path


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
  it, and pressing it applies that step only. "Run All" therefore only plans. Every step's output
  starts with one line that says where the recovery stands and what comes next. For the record, save
  the notebook and run `ispcp-recover report <notebook>.ipynb`: the setup cell recorded the run and
  where its journal is, and the report is built from that journal (no widget state or summary file
  needed). The journal is the record: a step's cell run again after its Apply shows the applied result.
* **Headless:** `ispcp-recover run -f params.yaml`. No widgets; the `apply` parameter (and the
  per-step `apply_steps` override) decides, and long work prints plain progress lines. The HTML report
  of the run is the record of what was done. Running the notebook with plain `papermill` instead?
  Pass `-p interactive False`."""

SETUP = """from ispcp_lib.runbook.interactive import start_interactive
from ispcp_lib.runbook.session import open_run, summary
from ispcp_lib.steps import {modules}

# Every parameter is checked here (type, allowed values, the target's settings) and the target is
# reached once: bad input stops the run before anything changes.
ctx = open_run(
{args}
)
# In JupyterLab: the status panel, and an "Apply this step" button under every changing step.
# Headless (ispcp-recover run, papermill -p interactive False): nothing interactive; `apply` decides.
session = start_interactive(ctx, ctx.param("interactive"))"""


def _comment(p: Param) -> str:
    text = p.description
    if p.choices and p.type is str:
        text = f"{' | '.join(p.choices)}: {text}"
    if p.fields:
        text = f"{text}; keys: {', '.join(f.name for f in p.fields)}"
    # papermill skips any parameter line with a second "=", even in its comment.
    return text.replace(" = ", ": ").replace("=", ":")


def parameter_cell_source() -> str:
    lines = ["# Parameters (papermill overrides these). Never put a password here: use secrets_file."]
    lines += [f"{p.name} = {p.default!r}  # {_comment(p)}" for p in all_parameters()]
    return "\n".join(lines)


def setup_cell_source() -> str:
    args = [f"    {p.name}={p.name}," for p in RUN_PARAMETERS]
    options = "".join(f"        {p.name}={p.name},\n" for _, p in step_parameters())
    args.append("    options=dict(\n" + options + "    ),")
    return SETUP.format(args="\n".join(args), modules=", ".join(STEP_ORDER))


# -- the README's tables --------------------------------------------------------------------------------


def _default(p: Param) -> str:
    return "see below" if p.fields else f"`{p.default!r}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def run_table() -> list[str]:
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for p in RUN_PARAMETERS:
        rows.append(f"| `{p.name}` | {_cell(p.type_text())} | {_default(p)} | {_cell(p.description)} |")
        for f in p.fields:
            name = f"{p.name}.{f.name}"
            rows.append(f"| `{name}` | {_cell(f.type_text())} | {_default(f)} | {_cell(f.description)} |")
    return rows


def step_table() -> list[str]:
    rows = ["| parameter | type | default | step | meaning |", "|---|---|---|---|---|"]
    for step, p in step_parameters():
        rows.append(f"| `{p.name}` | {_cell(p.type_text())} | {_default(p)} | {step} | {_cell(p.description)} |")
    return rows


def secrets_table() -> list[str]:
    rows = ["| entry | meaning |", "|---|---|"]
    rows += [f"| `{p.name}` | {_cell(p.description)} |" for p in SECRETS]
    return rows


README_TABLES: dict[str, Callable[[], list[str]]] = {
    "run-parameters": run_table,
    "step-parameters": step_table,
    "secrets": secrets_table,
}


def readme_text(current: str) -> str:
    """README.md with its tables regenerated from the parameter spec."""
    for marker, table in README_TABLES.items():
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        head, rest = current.split(start, 1)
        _, tail = rest.split(end, 1)
        current = head + start + "\n" + "\n".join(table()) + "\n" + end + tail
    return current


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ispcp-recovery)", "language": "python"},
        "language_info": {"name": "python"},
    }
    cells = [
        _md("intro", INTRO, []),
        _code("parameters", parameter_cell_source(), ["parameters"]),
        _code("setup", setup_cell_source(), ["setup"]),
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
    cells.append(_code("summary", 'summary(ctx, ctx.param("summary_path"))', ["summary"]))
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


def _packaged_link_ok() -> bool:
    return PACKAGED.is_symlink() and PACKAGED.resolve() == NOTEBOOK.resolve()


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
        if not _packaged_link_ok():
            print(f"{PACKAGED} must be a link to {NOTEBOOK}: run python -m ispcp_lib.runbook.notebook_build")
        if not stale and _packaged_link_ok():
            print(f"{NOTEBOOK.name}, {NOTEBOOK_TEXT.name} and the README's tables are in sync with the code")
        return 1 if stale or not _packaged_link_ok() else 0
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
    if not _packaged_link_ok():
        PACKAGED.unlink(missing_ok=True)
        PACKAGED.symlink_to(os.path.relpath(NOTEBOOK, PACKAGED.parent))
    print(f"wrote {NOTEBOOK}, {NOTEBOOK_TEXT} and the README's tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
