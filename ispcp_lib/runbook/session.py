"""What the runbook's setup and summary cells call: open a run, show where it stands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ispcp_lib.core.context import DEFAULT_STATE_DIR, Context, new_run_id
from ispcp_lib.core.errors import InputError
from ispcp_lib.core.runner import Runner
from ispcp_lib.core.secrets import REGISTRY
from ispcp_lib.mysql import service as mysql_service
from ispcp_lib.steps import STEP_ORDER


def open_run(
    *,
    backup_root: str | None,
    target_root: str = "/",
    apply: bool = False,
    steps: list[str] | None = None,
    state_dir: str | None = None,
    secrets_file: str | None = None,
    mysql: dict[str, Any] | None = None,
    run_id: str | None = None,
    resume: bool = True,
    force_steps: list[str] | None = None,
    apply_steps: dict[str, bool] | None = None,
    options: dict[str, Any] | None = None,
) -> Context:
    """Validate the parameters and build the Context; nothing on the target changes here."""
    for name in [*(steps or []), *(force_steps or []), *(apply_steps or {})]:
        if name not in STEP_ORDER:
            raise InputError("parameter", f"names an unknown step {name!r}", f"use one of {', '.join(STEP_ORDER)}")
    target = Path(target_root)
    if not target.is_dir():
        raise InputError(
            "target_root", "is not a directory", "point target_root at the new system's root", path=str(target)
        )
    backup = Path(backup_root) if backup_root else None
    runner = Runner(apply=apply)
    ctx = Context(
        target_root=target,
        backup_root=backup,
        state_dir=Path(state_dir) if state_dir else target / DEFAULT_STATE_DIR.lstrip("/"),
        run_id=run_id or new_run_id(),
        default_apply=bool(apply),
        params=dict(options or {}),
        secrets=REGISTRY,
        runner=runner,
        resume=resume,
        steps=list(steps) if steps else None,
        force_steps=set(force_steps or ()),
        apply_steps=dict(apply_steps or {}),
    )
    if secrets_file:
        load_secrets_file(ctx, Path(secrets_file))
    ctx.mysql = mysql_service.from_params(mysql or {}, ctx.target, runner)
    ctx.log(f"run {ctx.run_id}: {'APPLY' if apply else 'dry run (nothing changes)'}; backup {backup}, target {target}")
    return ctx


def load_secrets_file(ctx: Context, path: Path) -> None:
    """A YAML mapping of secrets that cannot be found on either system; every value is registered."""
    if not path.is_file():
        raise InputError(
            "secrets_file", "does not exist", "create it (mode 0600) or unset the parameter", path=str(path)
        )
    if path.stat().st_mode & 0o077:
        raise InputError("secrets_file", "is readable by group or others", f"chmod 600 {path}", path=str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        # PyYAML quotes the offending line, which holds a secret: report only where it is.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(
            "secrets_file",
            f"is not valid YAML{where}",
            "write one name: value per line, quoting values with special characters",
            path=str(path),
        ) from None
    bad = [str(k) for k, v in data.items() if not isinstance(v, (str, int, float))] if isinstance(data, dict) else None
    if bad is None or bad:
        raise InputError(
            "secrets_file",
            "is not a flat YAML mapping of name: value" + (f" ({', '.join(bad)} is not a plain value)" if bad else ""),
            "write one name: value per line",
            path=str(path),
        )
    for key, value in data.items():
        ctx.secrets.add(str(value), label=str(key))
    ctx.params.setdefault("secrets", {}).update({str(k): str(v) for k, v in data.items()})


def summary(ctx: Context, summary_path: str | None = None) -> Any:
    """The summary table of this run; with summary_path, also the summary JSON (mode 0600)."""
    import pandas as pd

    data = summary_dict(ctx)
    if summary_path:
        write_private(Path(summary_path), json.dumps(data, indent=2))
    frame = pd.DataFrame(
        [
            {
                "step": s["name"],
                "status": s["status"],
                "changes": s["changed"],
                "duration (s)": s["duration_s"],
                "warnings": len(s["warnings"]),
            }
            for s in data["steps"]
        ]
    )
    return frame


def summary_dict(ctx: Context) -> dict[str, Any]:
    """The Summary JSON contract of DESIGN.md, from the results of this kernel's run."""
    rows = []
    for name in STEP_ORDER:
        r = ctx.results.get(name)
        if r is None:
            rows.append({"name": name, "status": "skipped", "changed": 0, "duration_s": 0.0, "warnings": []})
        else:
            rows.append(
                {
                    "name": name,
                    "status": r.status,
                    "changed": r.changed,
                    "duration_s": round(r.duration_s, 3),
                    "warnings": list(r.warnings),
                }
            )
    status = "failed" if any(r["status"] == "failed" for r in rows) else "ok"
    # Stepping through in JupyterLab, an Apply button applies one step while the parameter stays False.
    applied = ctx.default_apply or any(r.apply and r.status == "done" for r in ctx.results.values())
    return ctx.secrets.redact_obj({"status": status, "apply": applied, "run_id": ctx.run_id, "steps": rows})


def write_private(path: Path, text: str) -> None:
    """Reports and summaries are mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
