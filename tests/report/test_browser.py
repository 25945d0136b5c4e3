"""Open the report in headless Chromium: sections render, figures decode, no page errors.

The page's own inline script records script errors, console.error calls and images that fail
to decode, and marks ``<html data-status="ok">`` after the load event; ``--dump-dom`` shows the
DOM after load (``--virtual-time-budget`` lets the load handlers finish). A screenshot is saved
too (copied to $VITALSTATS_ARTIFACTS when that is set, for a person to look at).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.report.synthetic import HOSTILE_NAME, make_store
from tests.report.test_report import SECTION_IDS
from vitalstats.report import write_report

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)",
)
WINDOW = (1280, 2400)


def _chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
        *arguments,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    directory = tmp_path_factory.mktemp("browser")
    store = make_store(directory / "runs.sqlite", runs=2, steps=20)
    report = write_report(store, directory / "report.html")
    dom = _chromium(directory / "profile", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    screenshot = directory / "report.png"
    shot = _chromium(directory / "profile", f"--screenshot={screenshot}",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars", report.as_uri())  # fmt: skip
    assert shot.returncode == 0, shot.stderr[-2000:]
    if os.environ.get("VITALSTATS_ARTIFACTS"):
        target = Path(os.environ["VITALSTATS_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / "report.png")
    return report.read_text(), dom.stdout, screenshot


def _html_attribute(dom: str, name: str) -> str:
    match = re.search(rf'<html[^>]*\s{name}="([^"]*)"', dom)
    assert match, f"<html> has no {name} attribute; the page's load handler did not run"
    return match.group(1)


def test_page_loads_without_errors(rendered):
    _, dom, _ = rendered
    errors = re.search(r'<pre id="vs-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1) == "", errors and errors.group(1)
    assert _html_attribute(dom, "data-status") == "ok"


def test_every_section_renders(rendered):
    _, dom, _ = rendered
    assert _html_attribute(dom, "data-sections") == str(len(SECTION_IDS))
    for anchor in SECTION_IDS:
        assert f'<section id="{anchor}">' in dom


def test_every_figure_decodes(rendered):
    html, dom, _ = rendered
    images = html.count("<img ")
    assert images >= 10
    assert _html_attribute(dom, "data-images-drawn") == str(images)


def test_hostile_layer_name_is_text_in_the_browser_dom(rendered):
    _, dom, _ = rendered
    assert HOSTILE_NAME not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert len(re.findall(r"<script[\s>]", dom)) == 1


def test_screenshot_is_a_png_of_the_window_size(rendered):
    _, _, screenshot = rendered
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == WINDOW


def test_the_error_detector_catches_a_broken_page(rendered, tmp_path):
    """The checks above can fail: a script error and an undecodable figure are reported."""
    html, _, _ = rendered
    broken = html.replace(
        "</main>",
        '<img src="data:image/svg+xml;base64,PHN2Zz4=" alt="broken figure">'
        "<script>undefined_function_of_the_test()</script></main>",
    )
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    dom = _chromium(tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    assert _html_attribute(dom, "data-status") == "errors"
    errors = re.search(r'<pre id="vs-errors"[^>]*>(.*?)</pre>', dom, re.S).group(1)
    assert "undefined_function_of_the_test" in errors
    assert "broken figure" in errors
