"""pyproject.toml and environment.yml must name the same packages."""

import re
import tomllib
from pathlib import Path

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
