"""A recovery stepped through by hand in JupyterLab, driven in headless Chromium as an operator would.

JupyterLab serves the runbook (parameters for the sandbox world injected as papermill would); Chromium,
driven over its DevTools protocol, runs the cells one by one, presses every "Apply this step" button,
runs one applied cell again, and saves with JupyterLab's defaults: without widget state, and with no
summary file anywhere. `ispcp-recover report` must still list every applied step with its changes
(from the journal), and its summary must match a headless apply run of a copy of the same world.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import websocket
from papermill.parameterize import parameterize_notebook

from ispcp_lib.runbook import cli
from ispcp_lib.runbook.cli import run_runbook
from ispcp_lib.runbook.notebook_build import NOTEBOOK
from ispcp_lib.runbook.report import CHROMIUM, CHROMIUM_FLAGS
from ispcp_lib.sandbox.demo import world_services
from ispcp_lib.sandbox.world import World
from tests.helpers import running_clone

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ispcp-by-hand-test"
STEP_TIMEOUT = 600  # the slowest step (the update) on a busy machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A JupyterLab serving tmp_path/lab, its app exposed to the page, notebooks saved 0600 by the hook."""
    folder = tmp_path / "lab"
    folder.mkdir()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the kernel imports this checkout's ispcp_lib
    env.pop("ISPCP_HEADLESS", None)
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter-lab"),  # the kernel's parent must look like a server
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--ServerApp.root_dir={folder}",
            f"--IdentityProvider.token={TOKEN}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.extension_manager=readonly",  # no package index asked
            "--allow-root",
            "--FileContentsManager.post_save_hook=ispcp_lib.runbook.interactive.private_after_save",
        ],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "jupyterlab.log").open("w"),
    )
    try:
        url = f"http://127.0.0.1:{port}/api/status?token={TOKEN}"
        _wait("JupyterLab", lambda: server.poll() is not None or _answers(url), 120)
        assert server.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
        yield port, folder
    finally:
        server.terminate()
        server.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


class Page:
    """One Chromium tab, driven through the DevTools protocol."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws, self.n = ws, 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        got = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in got:
            raise AssertionError(f"in the page: {got['exceptionDetails']}")
        return got["result"].get("value")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test's bootstrap installs it)")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            *[f for f in CHROMIUM_FLAGS if not f.startswith("--host-resolver-rules")],
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # only the local JupyterLab
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            "--window-size=1280,2000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        _wait("Chromium's DevTools port", port_file.exists, 60)
        port = int(_wait("the port number", lambda: port_file.read_text().split("\n")[0].strip(), 10))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tab = next(t for t in json.load(r) if t["type"] == "page")
        ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=STEP_TIMEOUT, suppress_origin=True)
        try:
            yield Page(ws)
        finally:
            ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# In the page: the notebook panel JupyterLab shows, and one of its cells.
NB = "[...window.jupyterapp.shell.widgets('main')].find(w => w.sessionContext)"
KERNEL_IDLE = f"{NB}?.sessionContext.session?.kernel?.status === 'idle'"


def _run_cell(page: Page, index: int) -> None:
    """Select a cell and run it as Shift+Enter would, then wait for the kernel."""
    page.js(
        f"(async () => {{ const p = {NB}; window.jupyterapp.shell.activateById(p.id);"
        f" p.content.activeCellIndex = {index};"
        " await window.jupyterapp.commands.execute('notebook:run-cell'); return true; })()"
    )
    _wait(f"cell {index}", lambda: page.js(KERNEL_IDLE), STEP_TIMEOUT)


def _cell_text(page: Page, index: int) -> str:
    return page.js(f"{NB}.content.widgets[{index}].node.innerText") or ""


def _buttons(page: Page, index: int) -> list[str]:
    return page.js(
        f"[...{NB}.content.widgets[{index}].node.querySelectorAll('button')]"
        ".filter(b => b.offsetParent !== null).map(b => b.textContent.trim())"
    )


def _press_apply(page: Page, index: int) -> None:
    page.js(
        f"[...{NB}.content.widgets[{index}].node.querySelectorAll('button')]"
        ".find(b => b.textContent.trim() === 'Apply this step').click()"
    )
    done = _wait(
        f"the Apply of cell {index}",
        lambda: [b for b in _buttons(page, index) if b in ("Applied", "Retry: apply this step")],
        STEP_TIMEOUT,
    )
    assert done == ["Applied"], _cell_text(page, index)[-3000:]


def _gate_note(page: Page, index: int) -> str:
    text = _cell_text(page, index)
    return next((m for m in ("press the button", "No Apply button") if m in text), "")


def _step_by_hand(page: Page, notebook: Path) -> dict[str, int]:
    """Every cell in order; every Apply button pressed. Returns the cell index of each step's code cell."""
    cells = nbformat.read(notebook, as_version=4).cells
    step_cells: dict[str, int] = {}
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        _run_cell(page, index)
        tags = [t for t in cell.metadata.get("tags", []) if t not in ("parameters", "injected-parameters", "setup")]
        text = _cell_text(page, index)
        assert "Traceback" not in text and "StepFailed" not in text, text[-3000:]
        if not tags or tags[0] == "summary":
            continue
        step_cells[tags[0]] = index
        if f"PLANNED {tags[0]}" in text:  # a changing step's plan: its gate renders as a widget
            gate = _wait(f"the gate of {tags[0]}", lambda i=index: _gate_note(page, i), 60)
            assert gate == "press the button", _cell_text(page, index)[-3000:]
            _press_apply(page, index)
    return step_cells


def test_by_hand_session_saved_without_widget_state_reports_every_applied_step(
    world: World, world_template: World, sandbox_dir: Path, jupyterlab: tuple[int, Path], chromium: Page, capsys
) -> None:
    port, folder = jupyterlab
    notebook = folder / "by-hand.ipynb"
    with world_services(world) as services:
        params = {**world.runbook_params(), **services, "run_id": "by-hand"}
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nb.metadata["papermill"] = {}
        nb = parameterize_notebook(nb, params)  # the operator's values, in a cell after the parameters cell
        nb.metadata.pop("papermill")  # a notebook run by hand has no papermill record
        nbformat.write(nb, notebook)
        page = chromium
        page.call("Page.navigate", url=f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={TOKEN}")
        _wait(
            "the notebook and its kernel",
            lambda: page.js(f"!!(window.jupyterapp && {NB} && {KERNEL_IDLE})"),
            180,
        )
        step_cells = _step_by_hand(page, notebook)
        keys = step_cells["keys"]
        _run_cell(page, keys)  # the operator runs an applied step's cell again (Shift+Enter after Apply)
        again = _cell_text(page, keys)
        assert "Applied earlier in this run" in again and "DONE" in again and "SKIPPED" not in again, again[-2000:]
        page.js(f"(async () => {{ await {NB}.context.save(); return true; }})()")

    saved = nbformat.read(notebook, as_version=4)
    assert not (saved.metadata.get("widgets") or {}), "JupyterLab saved widget state: the test proves nothing"
    assert notebook.stat().st_mode & 0o777 == 0o600, "the post-save hook did not tighten the notebook"
    assert not list(folder.glob("*.json"))

    capsys.readouterr()
    assert cli.main(["report", str(notebook)]) == 0
    assert "saved without its widget state" in capsys.readouterr().err
    by_hand = _summary_rows(notebook.with_suffix(".html").read_text())
    page_text = notebook.with_suffix(".html").read_text()
    applied = {name for name, (status, changed) in by_hand.items() if status == "done" and changed}
    assert {"mysql_restore", "accounts", "user_data", "keys", "ispcp_update"} <= applied, by_hand
    for name in applied:  # the applied result of every step, each filled in from the journal
        assert re.search(rf"data-applied-step=[\"']{name}[\"']", page_text), f"no applied result of {name}"

    # A headless apply run of a copy of the same world lists the same steps, statuses and change counts.
    with running_clone(world_template, sandbox_dir / "headless") as twin, world_services(twin) as services:
        rc, html_path = run_runbook(
            {**twin.runbook_params(), **services, "apply": True}, sandbox_dir / "reports", log_output=False
        )
    assert rc == 0
    assert _summary_rows(html_path.read_text()) == by_hand


def _summary_rows(page: str) -> dict[str, tuple[str, int]]:
    """step -> (status, changes) from a report's summary table."""
    table = re.search(r"<table class=.ir-summary.*?</table>", page, re.S)
    assert table is not None, "no summary table"
    rows = re.findall(r"<code>(\w+)</code></a></td><td[^>]*>(\w[\w-]*)</td><td class=.num.>(\d+)</td>", table[0])
    return {name: (status, int(changed)) for name, status, changed in rows}
