"""The archived report in a real browser: headless Chromium renders it, offline, as an auditor would.

The runbook runs on the sandbox world (dry run, to keep it quick) through `ispcp-recover run`'s own
function; Chromium then takes a screenshot and dumps the rendered DOM in separate invocations, each
with a network log. The DOM must hold the summary table first, every built step's heading and no
widget leftovers; the network log must show that the page asked for nothing beyond its own file.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ispcp_lib import __version__
from ispcp_lib.runbook.cli import run_runbook
from ispcp_lib.runbook.report import CHROMIUM_FLAGS
from ispcp_lib.sandbox.demo import world_services
from ispcp_lib.sandbox.world import World
from ispcp_lib.steps import STEP_ORDER, load

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT = 120
# Chromium's own background traffic (update checks, account probes) is not the page's; page requests
# carry the page's origin (file://) in their network isolation key. No name resolves, so nothing leaves.
FLAGS = list(CHROMIUM_FLAGS)


def _chromium(tmp: Path, name: str, url: str, *extra: str) -> tuple[str, list[str]]:
    """Run Chromium once; returns its stdout and the http(s)/ws URLs the page itself requested."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test's bootstrap installs it)")
    netlog = tmp / f"{name}.netlog.json"
    argv = [
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={tmp / (name + '-profile')}",
        f"--log-net-log={netlog}",
        *extra,
        url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout, _page_requests(netlog)


def _page_requests(netlog: Path) -> list[str]:
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "file://" in str(params.get("network_isolation_key", "")):
            if not str(params.get("url", "")).startswith(("file:", "data:", "blob:", "about:")):
                urls.append(params["url"])
    return urls


class _Dom(HTMLParser):
    """The parts of the rendered DOM the assertions need: text, headings, URLs, element order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.headings: list[str] = []
        self.order: list[str] = []  # ids of interest, in document order
        self._h2: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href", "data", "poster", "srcset"):
            if a.get(name):
                self.urls.append((tag, name, a[name] or ""))
        if "url(" in (a.get("style") or ""):
            self.urls.append((tag, "style", a["style"] or ""))
        if a.get("id") in ("ispcp-summary", "ispcp-report-head") or (a.get("id") or "").startswith("cell-id="):
            self.order.append(a["id"] or "")
        if tag == "h2":
            self._h2 = []
        if tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._h2 is not None:
            self.headings.append(" ".join("".join(self._h2).split()))
            self._h2 = None
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)
        if self._h2 is not None:
            self._h2.append(data)


@pytest.fixture
def dry_report(world: World, tmp_path: Path) -> Iterator[tuple[World, Path]]:
    """A dry-run report of the world, with the sandbox services the demo starts (Postfix, DNS)."""
    with world_services(world) as services:
        _, html_path = run_runbook({**world.runbook_params(), **services}, tmp_path / "reports", log_output=False)
        yield world, html_path


def test_report_renders_offline_in_chromium(dry_report: tuple[World, Path], tmp_path: Path) -> None:
    world, html_path = dry_report
    url = html_path.resolve().as_uri()

    png = tmp_path / "report-top.png"
    _, shot_requests = _chromium(tmp_path, "shot", url, f"--screenshot={png}", "--window-size=1280,2000")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, "no real screenshot"

    dom_html, dom_requests = _chromium(tmp_path, "dom", url, "--dump-dom")
    dom = _Dom()
    dom.feed(dom_html)
    text = " ".join(" ".join(dom.text).split())

    # the summary table, first: before the run header and before any notebook cell
    assert dom.order[:2] == ["ispcp-report-head", "ispcp-summary"], dom.order[:4]
    summary_rows = re.search(r"<table class=\"ir-summary\".*?</table>", dom_html, re.S)
    assert summary_rows is not None
    for name in STEP_ORDER:
        assert f"<code>{name}</code>" in summary_rows.group(0), f"summary table lacks {name}"
    assert "DRY RUN: nothing was changed" in text

    # the header an auditor needs
    assert f"ispcp-recovery {__version__}" in text
    old, new = world.manifest["old"], world.manifest["new"]
    assert f"old: {old['ispcp_version']} · new: {new['ispcp_version']}" in text
    assert f"old: {old['hostname']} · new: {new['hostname']}" in text
    assert "started" in text and "finished" in text and "unknown" not in _row(dom_html, "started")

    # one section per step, with its heading
    for name in STEP_ORDER:
        title = load(name).TITLE
        assert any(title in h and f"({name})" in h for h in dom.headings), f"no heading for {name}: {title}"

    # no widget leftovers
    assert "HBox(" not in dom_html and "Loading widgets" not in dom_html
    assert "application/vnd.jupyter.widget" not in dom_html

    # nothing external: no URL in the DOM, and no request in either run's network log
    external = [u for u in dom.urls if re.search(r"(?:https?|wss?|ftp):|^//", u[2], re.I)]
    assert external == [], external
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", dom_html, re.I)
    assert shot_requests == [] and dom_requests == [], shot_requests + dom_requests

    # and no secret of the sandbox
    leaked = [s for s in world.secrets if s and s in dom_html]
    assert not leaked, f"{len(leaked)} secret(s) in the rendered report"


def _row(dom_html: str, header: str) -> str:
    m = re.search(rf"<th>{header}</th><td>(.*?)</td>", dom_html)
    return m.group(1) if m else "unknown"


def test_network_check_sees_a_page_request(tmp_path: Path) -> None:
    """The network-log check above can fail: a page with one external image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text("<html><body><img src='http://192.0.2.1/pixel.png'><p>hello</p></body></html>")
    _, requests = _chromium(tmp_path, "leaky", page.as_uri(), "--dump-dom")
    assert requests == ["http://192.0.2.1/pixel.png"]
