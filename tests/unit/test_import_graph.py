"""The layers of docs/architecture.md: no step imports another step, and outside the steps only the
runbook front-ends that list the steps import one."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from ispcp_lib.steps import STEP_ORDER

PACKAGE = Path(__file__).resolve().parents[2] / "ispcp_lib"
STEP_MODULES = {f"ispcp_lib.steps.{name}" for name in STEP_ORDER}
# Front-ends that list or run the steps, and the package that lists them.
MAY_IMPORT_STEPS = {
    "ispcp_lib/steps/__init__.py",
    "ispcp_lib/runbook/notebook_build.py",
    "ispcp_lib/runbook/session.py",
    "ispcp_lib/runbook/interactive.py",
    "ispcp_lib/runbook/report.py",
}


def imports(path: Path) -> set[str]:
    """The modules a source file imports (absolute or relative, `import` or `from … import`)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def step_imports(path: Path) -> set[str]:
    return imports(path) & STEP_MODULES


def test_the_checker_sees_every_form_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ispcp_lib" / "steps" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "import ispcp_lib.steps.keys\n"
        "from ispcp_lib.steps import mail_guard, STEP_ORDER\n"
        "from .ftp import run\n"
        "from . import accounts\n"
        "from ispcp_lib.steps.cleanup import lift_guard\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "ispcp_lib")
    expected = {"keys", "mail_guard", "ftp", "accounts", "cleanup"}
    assert step_imports(fake) == {f"ispcp_lib.steps.{n}" for n in expected}


def test_no_step_imports_another_step() -> None:
    offenders = {}
    for name in STEP_ORDER:
        path = PACKAGE / "steps" / f"{name}.py"
        others = step_imports(path) - {f"ispcp_lib.steps.{name}"}
        if others:
            offenders[name] = sorted(others)
    assert offenders == {}


def test_no_library_module_imports_a_step() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        if rel.startswith("ispcp_lib/steps/") or rel in MAY_IMPORT_STEPS:
            continue
        found = step_imports(path)
        if found:
            offenders[rel] = sorted(found)
    assert offenders == {}


# The recovery's layers (steps and the libraries under them) never reach up into a front-end: the
# notebook layer, the sandbox world or the lab.
LOWER_LAYERS = ("core", "mysql", "ispcp", "system", "facts", "steps")
FRONT_ENDS = ("ispcp_lib.runbook", "ispcp_lib.sandbox", "ispcp_lib.lab")


def test_the_lower_layers_never_import_a_front_end() -> None:
    offenders = {}
    for layer in LOWER_LAYERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            found = sorted(m for m in imports(path) if m.startswith(FRONT_ENDS))
            if found:
                offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert offenders == {}
