"""`ispcp-recover`: run the runbook headless, or the whole demo against the sandbox world."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ispcp_lib.context import DEFAULT_STATE_DIR
from ispcp_lib.notebook_build import NOTEBOOK
from ispcp_lib.runbook import write_private

REPO = Path(__file__).resolve().parents[1]


def _parse_value(text: str) -> Any:
    """-p values are YAML scalars or flow collections: 'true', '3', '[a, b]', '{x: 1}'."""
    return yaml.safe_load(text)


def run_runbook(params: dict[str, Any], report_dir: Path, no_input: bool = False,
                log_output: bool = True) -> tuple[int, Path]:
    """Execute the notebook with papermill, then write .ipynb, .html and .json (all mode 0600)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ispcp_lib.report import html_report, summary_from_journal

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = report_dir / f"{stamp}-ispcp-recovery"
    executed, html_path, json_path = (base.with_suffix(s) for s in (".ipynb", ".html", ".json"))
    params = dict(params)
    params.setdefault("run_id", stamp)
    params["summary_path"] = str(json_path)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_private(executed, "")
    failed = False
    try:
        papermill.execute_notebook(str(NOTEBOOK), str(executed), parameters=params, log_output=log_output,
                                   progress_bar=False, kernel_name="python3", cwd=str(report_dir))
    except PapermillExecutionError as exc:
        failed = True
        print(f"step failed: {exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}", file=sys.stderr)
    executed.chmod(0o600)
    html_report(executed, html_path, no_input=no_input)
    target = Path(params.get("target_root") or "/")
    state_dir = Path(params["state_dir"]) if params.get("state_dir") else target / DEFAULT_STATE_DIR.lstrip("/")
    summary = summary_from_journal(state_dir, params["run_id"], bool(params.get("apply")), params.get("steps"))
    if failed:
        summary["status"] = "failed"
    write_private(json_path, json.dumps(summary, indent=2))
    print(f"summary: {json_path}")
    print(html_path)
    return (1 if summary["status"] == "failed" else 0), html_path


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
        params["steps"] = [s.strip() for s in args.steps.split(",") if s.strip()]
    rc, _ = run_runbook(params, Path(args.report_dir), no_input=args.no_input)
    return rc


def cmd_demo(args: argparse.Namespace) -> int:
    from ispcp_lib.sandbox.demo import run_demo

    return run_demo(Path(args.workdir), args.scale, Path(args.report_dir), no_input=args.no_input)


def cmd_build_notebook(args: argparse.Namespace) -> int:
    from ispcp_lib import notebook_build

    return notebook_build.main(["--check"] if args.check else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ispcp-recover", description="ispCP disaster-recovery runbook")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the runbook headless and write the report")
    run.add_argument("-f", "--file", help="params.yaml")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override one parameter (VALUE is YAML)")
    run.add_argument("--steps", help="comma-separated step names (default: all)")
    run.add_argument("--report-dir", default=str(REPO / "reports"))
    run.add_argument("--no-input", action="store_true", help="hide code cells in the HTML report")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="build the sandbox world and run the whole runbook against it")
    demo.add_argument("--workdir", default=str(REPO / "build" / "demo"))
    demo.add_argument("--scale", choices=("small", "mid", "large"), default="small")
    demo.add_argument("--report-dir", default=str(REPO / "reports"))
    demo.add_argument("--no-input", action="store_true")
    demo.set_defaults(func=cmd_demo)
    nb = sub.add_parser("build-notebook", help="regenerate runbooks/ispcp_recovery.ipynb from the steps")
    nb.add_argument("--check", action="store_true")
    nb.set_defaults(func=cmd_build_notebook)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
