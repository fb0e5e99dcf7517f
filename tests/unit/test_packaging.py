"""Packaging: pyproject.toml and environment.yml name the same packages, and `pip install .` works."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    interactive = project["optional-dependencies"]["interactive"]
    wanted = {_name(r) for r in project["dependencies"]} | {_name(r) for r in interactive}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    assert conda == wanted, f"only in environment.yml: {conda - wanted}; only in pyproject: {wanted - conda}"


def test_core_dependencies_present() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    assert {"papermill", "nbconvert", "nbclient", "ipykernel", "pymysql", "pandas", "pyyaml"} <= names
    assert {"jupyterlab", "ipywidgets"} <= {_name(r) for r in project["optional-dependencies"]["interactive"]}


def _copy_of_the_project(dest: Path) -> Path:
    """The project's files as a fresh clone has them (no virtualenv, build output or reports)."""
    junk = shutil.ignore_patterns(".git", ".venv", "build", "reports", "__pycache__", "*.egg-info", ".*_cache")
    shutil.copytree(ROOT, dest, symlinks=True, ignore=junk)
    return dest


@pytest.mark.slow
def test_pip_install_gives_a_working_ispcp_recover(tmp_path: Path) -> None:
    """`pip install .` into a fresh venv: the installed command finds its notebook and runs it.

    The dependencies come from the project's own environment (a .pth file); pip fetches only the
    build backend (setuptools) for the isolated build. The project is built from a copy, as a fresh
    clone would be, and the copy is removed before the installed command runs.
    """
    src = _copy_of_the_project(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = Path(
        subprocess.run(
            [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (purelib / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(src)]
    subprocess.run(pip, check=True, cwd=tmp_path)
    shutil.rmtree(src)  # the installed package must stand on its own

    # nbconvert's templates are data files of the environment the dependencies come from.
    env = {**os.environ, "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}

    def installed(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    where = installed(str(venv / "bin/python"), "-c", "import ispcp_lib; print(ispcp_lib.__file__)")
    assert where.stdout.startswith(str(purelib)), where.stdout + where.stderr
    assert installed(str(venv / "bin/ispcp-recover"), "demo", "--help").returncode == 0
    (tmp_path / "target").mkdir()
    (tmp_path / "backup").mkdir()
    reports = tmp_path / "reports"
    run = installed(
        str(venv / "bin/ispcp-recover"),
        "run",
        "-p", "target_root", str(tmp_path / "target"),
        "-p", "backup_root", str(tmp_path / "backup"),
        "-p", "steps", "inventory",
        "--report-dir", str(reports),
    )  # fmt: skip
    summary = json.loads(next(reports.glob("*.json")).read_text())
    inventory = next(s for s in summary["steps"] if s["name"] == "inventory")
    assert inventory["status"] == "failed", run.stdout + run.stderr  # an empty backup: refused, and reported
    assert run.returncode == 1 and list(reports.glob("*.html")), run.stderr[-3000:]
    executed = nbformat.read(next(reports.glob("*.ipynb")), as_version=4)
    setup = next(c for c in executed.cells if "setup" in c.metadata.get("tags", []))
    assert "dry run (nothing changes)" in json.dumps(setup.outputs)
