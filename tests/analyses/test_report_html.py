"""report.html renders in headless Chromium with every figure (skipped where Chromium is absent)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tiny_runs import make_report_runs

# Marks every <img> with whether it decoded (naturalWidth > 0) once the page has loaded; the
# DOM Chromium dumps then says which images are broken.
_CHECK = """<script>
window.addEventListener('load', function () {
  for (const img of document.images) {
    img.setAttribute('data-rendered', (img.complete && img.naturalWidth > 0) ? 'yes' : 'no');
  }
  document.body.setAttribute('data-checked', String(document.images.length));
});
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp / 'chromium'}",
           *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("headless Chromium did not finish within 120 s on this machine")


def check_report_renders(report: Path, tmp: Path) -> int:
    """Screenshot ``report`` and assert every <img> rendered; returns the image count."""
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium')")
    text = report.read_text()
    assert "http://" not in text and "https://" not in text, "report must not need the network"
    imgs = re.findall(r"<img [^>]*src='([^']*)'", text)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    probe = tmp / "probe.html"
    probe.write_text(text.replace("</body>", _CHECK + "</body>"))
    shot = tmp / "shot.png"
    proc = _run(browser, tmp, f"--screenshot={shot}", "--window-size=1200,3000",
                probe.as_uri())
    if not shot.is_file():
        pytest.skip(f"Chromium could not take a screenshot here: {proc.stderr[-300:]}")
    assert shot.stat().st_size > 10_000  # a page with figures, not a blank one
    proc = _run(browser, tmp, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    dom = proc.stdout
    assert f'data-checked="{len(imgs)}"' in dom, dom[-2000:]
    rendered = re.findall(r'data-rendered="(yes|no)"', dom)
    assert rendered.count("yes") == len(imgs) and "no" not in rendered, rendered
    return len(imgs)


def test_report_renders_in_chromium(tmp_path):
    runs = make_report_runs(tmp_path / "runs")
    from analyses.report import build_report
    result = build_report(runs, tmp_path / "out", only=["sparsity", "optimizer", "permutation"])
    n = check_report_renders(result.html, tmp_path)
    assert n == 3
