"""The HTML reports opened in a real browser (headless Chromium, `apt-get install chromium`): every image loads and
every table renders with its rows, and a screenshot is not blank. Skips where no Chromium is installed;
`tox -e browser` runs it. Pages are checked as rendered from a FABRICATED fixture and as committed in reports/.

Chromium is driven from Python: a copy of each page gets a small script that, once the page has loaded, writes
what it sees (images decoded, tables laid out) into the DOM, and `--dump-dom` hands that back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import PROFILE, write_fixture

from intraq.report import figures as figs
from intraq.report import render_report
from intraq.report.index import render_index

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
BROWSER = os.environ.get("INTRAQ_BROWSER") or next((b for b in BROWSERS if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--virtual-time-budget=15000")

PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const tables = Array.from(document.querySelectorAll("table"));
  const report = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0))
                  .map(i => (i.alt || i.src).slice(0, 80)),
    tables: tables.length,
    unrendered: tables.filter(t => t.getBoundingClientRect().height <= 0 || t.tBodies.length === 0 ||
                                   t.tBodies[0].rows.length === 0 ||
                                   Array.from(t.rows).some(r => r.getBoundingClientRect().height <= 0 ||
                                                                r.cells.length !== t.rows[0].cells.length))
                      .map(t => (t.rows[0] ? t.rows[0].innerText : "").slice(0, 80)),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.getAttribute("href")),
    ids: Array.from(document.querySelectorAll("[id]")).map(e => e.id),
  };
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def run_browser(*args: str) -> str:
    proc = subprocess.run([BROWSER, *FLAGS, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def check_page(page: Path, tmp: Path) -> dict:
    """Open a probed copy of `page` (in `tmp`; the page is self-contained) and return what it saw."""
    probed = tmp / f"probe-{page.parent.name}-{page.name}"
    source = page.read_text()
    probed.write_text(source.replace("</body>", PROBE + "</body>"))
    try:
        dom = run_browser("--dump-dom", probed.as_uri())
    finally:
        probed.unlink(missing_ok=True)
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading: {page}"
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))
    assert seen["images"] == source.count("<img "), page
    assert seen["tables"] == source.count("<table>") > 0, page
    assert seen["broken"] == [], f"images that did not load in {page}: {seen['broken']}"
    assert seen["unrendered"] == [], f"tables that did not render in {page}: {seen['unrendered']}"
    return seen


def screenshot_is_not_blank(page: Path, out: Path) -> None:
    run_browser("--window-size=1400,2200", f"--screenshot={out}", page.as_uri())
    from matplotlib.image import imread

    pixels = imread(out)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1300
    gray = np.asarray(pixels[..., :3]).mean(-1)
    assert (gray < 0.5).mean() > 0.005, "the screenshot is (almost) blank"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figs, "embed_2d", lambda f, seed=0: (f[:, :2].astype(float), "PCA (test)"))
        write_fixture(out / "results")
        render_report(PROFILE, out / "results", out / "reports")
    render_index(out / "results", out / "reports")
    return out / "reports"


def test_fixture_report_renders_in_chromium(rendered: Path, tmp_path: Path) -> None:
    seen = check_page(rendered / PROFILE / "report.html", tmp_path)
    assert seen["images"] == 4 and seen["tables"] == 19  # glance, 5 tables, 11 accuracy claims, diversity + claim
    assert "claim-mdc-beats-adi" in seen["ids"]
    screenshot_is_not_blank(rendered / PROFILE / "report.html", tmp_path / "report.png")


def test_fixture_index_renders_and_links_resolve(rendered: Path, tmp_path: Path) -> None:
    seen = check_page(rendered / "index.html", tmp_path)
    assert seen["tables"] == 1 and seen["images"] == 0
    targets = [link for link in seen["links"] if link.startswith(f"{PROFILE}/report.html")]
    assert len(targets) == 1 + 12  # the profile's report, and one section link per claim
    ids = set(check_page(rendered / PROFILE / "report.html", tmp_path)["ids"])
    for link in targets:
        if "#" in link:
            assert link.split("#")[1] in ids, link


@pytest.mark.parametrize("page", sorted(str(p.relative_to(REPO)) for p in (REPO / "reports").rglob("*.html")))
def test_committed_reports_render_in_chromium(page: str, tmp_path: Path) -> None:
    check_page(REPO / page, tmp_path)


def test_the_probe_catches_a_broken_image_and_an_empty_table(tmp_path: Path) -> None:
    """The check itself can fail: a PNG that does not decode, and a table without rows."""
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><img alt="bad" src="data:image/png;base64,AAAA">'
                      "<table><thead><tr><th>x</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>"
                      "</body></html>")
    with pytest.raises(AssertionError, match="images that did not load"):
        check_page(broken, tmp_path)
    empty = tmp_path / "empty.html"
    empty.write_text("<!DOCTYPE html><html><body><table><thead><tr><th>x</th></tr></thead><tbody></tbody>"
                     "</table></body></html>")
    with pytest.raises(AssertionError, match="tables that did not render"):
        check_page(empty, tmp_path)
