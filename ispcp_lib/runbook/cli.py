"""`ispcp-recover`: run the runbook headless, or the whole demo against the sandbox world."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ispcp_lib.core.context import new_run_id
from ispcp_lib.core.errors import InputError
from ispcp_lib.lab.cli import add_lab_parser
from ispcp_lib.runbook import decrypt_password
from ispcp_lib.runbook.notebook_build import runbook_notebook
from ispcp_lib.runbook.parameters import validate_run
from ispcp_lib.runbook.session import journal_text, on_target, read_run_facts, write_private

_CHECKOUT = Path(__file__).resolve().parents[2]
# Where reports/, build/ and docs/ go by default: the checkout when run from one, else the current directory.
REPO = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()


IOPUB_TIMEOUT_S = 120


def _parse_value(text: str) -> Any:
    """-p values are YAML scalars or flow collections: 'true', '3', '[a, b]', '{x: 1}'."""
    return yaml.safe_load(text)


def run_runbook(
    params: dict[str, Any], report_dir: Path, no_input: bool = False, log_output: bool = True
) -> tuple[int, Path]:
    """Execute the notebook with papermill, then write .ipynb, .json and .html (all mode 0600).

    Headless by construction: ISPCP_HEADLESS=1 is in the kernel's environment and interactive=False
    is passed, so no widget or apply button appears and the `apply` parameter alone decides.
    The parameters are validated first (InputError): a bad one stops the run before a kernel starts.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ispcp_lib.runbook.interactive import HEADLESS_ENV
    from ispcp_lib.runbook.report import html_report

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = Path(report_dir).resolve()
    base = report_dir / f"{stamp}-ispcp-recovery"
    executed, html_path, json_path = (base.with_suffix(s) for s in (".ipynb", ".html", ".json"))
    params = dict(params)
    params.setdefault("run_id", new_run_id())
    params["summary_path"] = str(json_path)
    params["interactive"] = False
    values = validate_run(params)
    report_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new reports/ is private; an existing one stays
    write_private(executed, "")
    failed = False
    # The kernel papermill starts inherits this environment.
    with _environ(HEADLESS_ENV, "1"), runbook_notebook() as notebook:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=params,
                log_output=log_output,
                progress_bar=False,
                kernel_name="python3",
                cwd=os.getcwd(),
                # A step that logs a lot (the update's transcript) may still be sending its output when it
                # returns; nbclient's 4 s for that output failed a finished step on a busy machine.
                iopub_timeout=IOPUB_TIMEOUT_S,
            )
        except PapermillExecutionError as exc:
            failed = True
            print(f"step failed: {exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}", file=sys.stderr)
        except Exception as exc:  # a dead kernel, a broken notebook: the report is still written
            failed = True
            print(f"the run stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
            _ensure_notebook(executed, f"The run stopped before the runbook finished: {type(exc).__name__}: {exc}")
    executed.chmod(0o600)
    summary = run_summary(values)
    if failed:
        summary["status"] = "failed"
    write_private(json_path, json.dumps(summary, indent=2))
    html_report(executed, html_path, no_input=no_input, summary=summary, params=params)
    print(f"summary: {json_path}")
    print(html_path)
    return (1 if summary["status"] == "failed" else 0), html_path


def run_summary(values: Mapping[str, Any]) -> dict[str, Any]:
    """The summary JSON from the run's journal, which lives in the state dir on the target."""
    from ispcp_lib.core.action import parse_journal
    from ispcp_lib.runbook.record import summary_from_records

    try:
        journal = journal_text(values)
        # The report's run facts (hostnames, ispCP versions) describe the target, not this machine.
        facts = on_target(values, read_run_facts)
    except InputError as exc:  # the target went away during the run: the report says so
        print(f"the journal could not be read: {exc}", file=sys.stderr)
        journal, facts = None, None
    summary = summary_from_records(parse_journal(journal), values["run_id"], values["apply"], values["steps"])
    if facts is not None:
        summary["facts"] = facts
    return summary


def _ensure_notebook(path: Path, message: str) -> None:
    """Keep what papermill wrote; if it wrote nothing readable, a one-cell notebook that says why."""
    import nbformat

    try:
        nbformat.read(path, as_version=4)
    except Exception:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"**{message}**")]
        write_private(path, nbformat.writes(nb))


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """Set one environment variable for the duration, then restore what was there."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def cmd_run(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.file:
        loaded = yaml.safe_load(Path(args.file).read_text()) or {}
        if not isinstance(loaded, dict):
            print(f"{args.file}: not a YAML mapping of parameters", file=sys.stderr)
            return 2
        params.update(loaded)
    for name, value in args.param or []:
        params[name] = _parse_value(value)
    if args.steps:
        params["steps"] = args.steps  # a comma-separated list, as the parameter itself accepts
    try:
        rc, _ = run_runbook(params, Path(args.report_dir), no_input=args.no_input)
    except InputError as exc:
        print(f"ispcp-recover run: {exc}", file=sys.stderr)
        return 2
    return rc


def cmd_demo(args: argparse.Namespace) -> int:
    from ispcp_lib.sandbox.demo import run_demo

    return run_demo(Path(args.workdir), args.scale, Path(args.report_dir), no_input=args.no_input)


def cmd_build_notebook(args: argparse.Namespace) -> int:
    from ispcp_lib.runbook import notebook_build

    return notebook_build.main(["--check"] if args.check else [])


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of a notebook run by hand in JupyterLab (or re-rendering a headless run's)."""
    import nbformat

    from ispcp_lib.runbook.report import html_report

    executed = Path(args.notebook)
    executed.chmod(0o600)  # JupyterLab saves 0644; the notebook holds the same record as the report
    nb = nbformat.read(executed, as_version=4)
    summary, journal = report_record(nb, executed, Path(args.summary) if args.summary else None)
    html_path = Path(args.output) if args.output else executed.with_suffix(".html")
    print(html_report(executed, html_path, no_input=args.no_input, summary=summary, journal=journal))
    return 0


def report_record(
    nb: Any, executed: Path, summary_path: Path | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The summary and the journal records for a notebook's report; warnings go to stderr.

    The journal is the record: the notebook's setup cell says which run it was and where its journal
    is. A summary JSON (--summary, or one next to the notebook) is used only when the journal cannot be
    read, or when it is named explicitly.
    """
    from ispcp_lib.core.action import parse_journal
    from ispcp_lib.runbook.record import RUN_RECORD_KEYS, summary_from_records
    from ispcp_lib.runbook.report import notebook_run_record, widget_state_missing

    def warn(text: str) -> None:
        print(f"ispcp-recover report: warning: {text}", file=sys.stderr)

    record = notebook_run_record(nb)
    journal = None
    if record is None:
        warn("the notebook does not record its run (its setup cell did not run, or it predates this version)")
    else:
        try:
            values = validate_run({k: v for k, v in record.items() if v is not None and k in RUN_RECORD_KEYS})
            text = journal_text(values)
        except InputError as exc:
            warn(f"the journal of run {record.get('run_id')} could not be read: {exc}")
            text = None
        if text is None:
            warn(f"no journal at {record.get('state_dir')}/journal.jsonl")
        else:
            journal = parse_journal(text)
    if widget_state_missing(nb):
        warn(
            "the notebook was saved without its widget state: the status panel, the progress bars and the "
            "results under the Apply buttons are not in it"
            + ("; the applied results are filled in from the journal" if journal is not None else "")
        )
    side = summary_path or executed.with_suffix(".json")
    if journal is not None and record is not None and summary_path is None:
        summary = summary_from_records(journal, record["run_id"], bool(record.get("apply")), record.get("steps"))
        if _has_error_output(nb):
            summary["status"] = "failed"
    elif side.exists():
        summary = json.loads(side.read_text())
    else:
        warn("no summary: the report has no summary table and cannot say whether anything changed")
        summary = None
    if summary is not None and record is not None and record.get("facts") and not summary.get("facts"):
        summary["facts"] = record["facts"]  # read in the kernel, through the run's connection
    return summary, journal


def _has_error_output(nb: Any) -> bool:
    return any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def cmd_screenshots(args: argparse.Namespace) -> int:
    from ispcp_lib.runbook.report import docs_screenshots

    for path in docs_screenshots(Path(args.report), Path(args.out), diff_step=args.diff_step):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ispcp-recover", description="ispCP disaster-recovery runbook")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the runbook headless and write the report")
    run.add_argument("-f", "--file", help="params.yaml")
    run.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="override one parameter (VALUE is YAML)",
    )
    run.add_argument("--steps", help="comma-separated step names (default: all)")
    run.add_argument("--report-dir", default=str(REPO / "reports"))
    run.add_argument(
        "--no-input",
        action="store_true",
        help="hide code cells in the HTML report (default: shown, the calls are part of the record)",
    )
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="build the sandbox world and run the whole runbook against it")
    demo.add_argument("--workdir", default=str(REPO / "build" / "demo"))
    demo.add_argument("--scale", choices=("small", "mid", "large"), default="small")
    demo.add_argument("--report-dir", default=str(REPO / "reports"))
    demo.add_argument("--no-input", action="store_true", help="hide code cells in the HTML report")
    demo.set_defaults(func=cmd_demo)
    rep = sub.add_parser(
        "report",
        help="write the HTML report of an executed notebook, e.g. one stepped "
        "through in JupyterLab; the run's journal (found through the notebook) is the record",
    )
    rep.add_argument("notebook")
    rep.add_argument(
        "--summary",
        help="a summary JSON to use instead of the journal (default: the journal, else the JSON next to it)",
    )
    rep.add_argument("-o", "--output", help="the HTML file (default: the notebook's name with .html)")
    rep.add_argument("--no-input", action="store_true", help="hide code cells")
    rep.set_defaults(func=cmd_report)
    shots = sub.add_parser(
        "screenshots",
        help="PNGs of a report for the README (top, a step with a diff, the "
        "update transcript), taken by headless Chromium",
    )
    shots.add_argument("report", help="the executed notebook of a run: reports/<stamp>-ispcp-recovery.ipynb")
    shots.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    shots.add_argument("--diff-step", help="the step to show with its diff (default: the one whose diff shows first)")
    shots.set_defaults(func=cmd_screenshots)
    nb = sub.add_parser("build-notebook", help="regenerate runbooks/ispcp_recovery.ipynb from the steps")
    nb.add_argument("--check", action="store_true")
    nb.set_defaults(func=cmd_build_notebook)
    dp = sub.add_parser(
        "decrypt-password",
        help="check that ispcp.conf's DATABASE_PASSWORD decrypts with the key "
        "files (prints the password only with --show)",
    )
    decrypt_password.add_arguments(dp)
    dp.set_defaults(func=decrypt_password.cmd_decrypt_password)
    add_lab_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
