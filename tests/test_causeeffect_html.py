"""`crushcell cause-effect --format html` opened in a real headless browser (issue 13, "Provenance
for sign-off"): it prints on A3 landscape, and its header names the configuration's path and
sha256, the crushcell version and the date, so that a signed sheet says what it was made from.

The browser is Debian's `chromium` (.ci/run installs it). Skipped, with the reason, only when no
Chromium is installed or it cannot start at all on this machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller import __version__

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "cell.toml"
A3_LANDSCAPE_PT = (420 / 25.4 * 72, 297 / 25.4 * 72)   # 1190.55 x 841.89 pt
TOLERANCE_PT = 2.0   # Chromium rounds the page to whole CSS pixels (1191.12 x 841.92)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (Debian: apt-get install chromium; .ci/run installs it)")


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=90)
    except OSError as exc:
        pytest.skip(f"Chromium cannot run on this machine: {exc}")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The page as `crushcell cause-effect --format html` writes it."""
    run = subprocess.run([sys.executable, "-m", "controller.cli", "cause-effect", "--format", "html",
                          "--config", str(CONFIG)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    path = tmp_path_factory.mktemp("ce") / "cause-effect.html"
    path.write_text(run.stdout, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser(page) -> tuple[str, Path]:
    """One headless Chromium run on the page: the DOM it built, and the PDF it printed."""
    pdf = page.parent / "cause-effect.pdf"
    run = _browser(page.parent, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", "--dump-dom",
                   page.as_uri())
    if run.returncode != 0 or "<html" not in run.stdout or not pdf.exists():
        pytest.skip(f"Chromium cannot run on this machine (exit {run.returncode}): {run.stderr[-800:]}")
    return run.stdout, pdf


def test_the_page_is_self_contained(page):
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r"(src|href)\s*=|url\(", text), "the page must fetch nothing"
    assert "@page { size: A3 landscape" in text


def test_it_prints_on_a3_landscape_in_a_real_browser(browser):
    data = browser[1].read_bytes()
    assert data.startswith(b"%PDF")
    boxes = re.findall(rb"/MediaBox\s*\[\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert len(boxes) >= 2, "the matrix runs over several pages"   # so the header repeats
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        width, height = x1 - x0, y1 - y0
        assert abs(width - A3_LANDSCAPE_PT[0]) < TOLERANCE_PT, (width, height)
        assert abs(height - A3_LANDSCAPE_PT[1]) < TOLERANCE_PT, (width, height)


class _Cells(HTMLParser):
    """Text by element id, and the class of every output cell with its text."""

    def __init__(self):
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.title = ""
        self.out_cells: list[tuple[str, str]] = []
        self._open: list[tuple[str, str | None, str]] = []   # (tag, id, class)
        self._text: dict[int, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._open.append((tag, a.get("id"), a.get("class") or ""))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag):
        while self._open:
            depth = len(self._open)
            t, ident, cls = self._open.pop()
            text = "".join(self._text.pop(depth, []))
            if self._open:
                self._text.setdefault(len(self._open), []).append(text)
            if ident:
                self.by_id[ident] = text.strip()
            if t == "title":
                self.title = text.strip()
            if t == "td" and cls.split()[:1] == ["out"]:
                self.out_cells.append((cls, text))
            if t == tag:
                break

    def handle_data(self, data):
        if self._open:
            self._text.setdefault(len(self._open), []).append(data)


def test_the_header_says_what_the_sheet_was_made_from(browser):
    dom = _Cells()
    dom.feed(browser[0])   # the DOM the browser built, not our text
    assert dom.by_id["config-path"] == str(CONFIG)
    assert dom.by_id["config-sha256"] == hashlib.sha256(CONFIG.read_bytes()).hexdigest()
    assert dom.by_id["crushcell-version"] == __version__
    today = dt.date.today().isoformat()
    assert dom.by_id["generated"].startswith(today), dom.by_id["generated"]
    assert dom.by_id["cell-id"] == "cell1" and dom.title == "crushcell cause and effect: cell1"
    # Colour by relay state: the crusher on is energised, the vent open (its safe state) is not.
    classes = {(cls.split()[1], text) for cls, text in dom.out_cells}
    assert ("en", "on") in classes and ("de", "off") in classes
    assert ("de", "open") in classes and ("en", "closed") in classes   # n2 valves, vent: safe open
