"""The report's index in a real browser: headless Chromium at 1,280 px lays the page out, and a
script in a copy of the page measures it — nothing wider than the window, no number in a table
broken over two lines, every figure shown at a readable width; and a screenshot is taken.

Skipped, with the reason, where Chromium is not installed (Debian: ``apt-get install -y chromium``,
about 20 s on this machine)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import vaebench
from vaebench.report import build_report

from test_report import write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")
WIDTH = 1280
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--window-size={WIDTH},2000"]

MEASURE = """<script>
window.addEventListener('load', () => {
  const lines = el => { const r = document.createRange(); r.selectNodeContents(el);
    return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; };
  const result = {
    scrollWidth: document.documentElement.scrollWidth,
    wrapped: [...document.querySelectorAll('td.num')].filter(td => lines(td) > 1).map(td => td.textContent),
    numbers: document.querySelectorAll('td.num').length,
    narrowFigures: [...document.querySelectorAll('figure')].filter(f => f.clientWidth < 520)
                     .map(f => f.querySelector('img').getAttribute('src')),
    figures: document.querySelectorAll('figure').length,
    widestTable: Math.max(...[...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right)),
    headers: [...document.querySelectorAll('th')].map(th => th.textContent),
    toc: [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  };
  const out = document.createElement('pre'); out.id = 'measured'; out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A study whose table has a long variant name, evaluated numbers (with k) and two seeds."""
    tmp = tmp_path_factory.mktemp("browser")
    study = write(tmp, "browser_study", variants={"baseline": {}, "a_very_long_variant_name_with_many_words":
                                                  {"objective.k": 2}}, seeds=2)
    vaebench.run_study(study, out=tmp / "results", jobs=1, progress=False)
    return build_report(tmp / "results", out=tmp / "report").index


@pytest.mark.slow
def test_the_index_fits_1280_px_with_numbers_on_one_line(report, tmp_path):
    page = report.with_name("measured.html")
    page.write_text(report.read_text().replace("</body>", MEASURE + "</body>"))
    r = chromium("--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', r.stdout, re.S)
    assert found, r.stderr[-2000:]
    m = json.loads(html.unescape(found.group(1)))  # the DOM dump escapes the text (&quot;, &nbsp;, ...)
    assert m["scrollWidth"] <= WIDTH and m["widestTable"] <= WIDTH, m
    assert m["numbers"] > 10 and m["wrapped"] == [], m["wrapped"]
    assert m["figures"] >= 7 and m["narrowFigures"] == [], m["narrowFigures"]
    assert "seeds done" in m["headers"] and "objective.k" not in m["headers"]  # labels, not raw keys
    assert any(h.startswith("test IW log p(x) (k\u00a0=\u00a04)") for h in m["headers"]), m["headers"]
    targets = [href[1:] for href in m["toc"]]
    assert len(targets) >= 4 and set(targets) <= set(m["ids"])  # every contents link lands

    shot = tmp_path / "index-1280.png"
    r = chromium(f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
