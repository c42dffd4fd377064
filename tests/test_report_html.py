"""The HTML report opened in a real headless browser (Chromium from the system packages).

A demo-model sweep of a few photos (its gallery kept) → ``arb report`` → ``index.html``; Chromium
loads the page, a copy of it with a probe script reports whether every ``<img>`` loaded, and a
screenshot of the page itself must not be blank. Chromium is required: without it the test
fails with what to install (``.ci/run`` installs it with apt-get where it is missing).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arb_jax import cli
from arb_jax.io import images
from arb_jax.study import report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE = """<script>
window.addEventListener("load", () => {
  const all = [...document.images];
  const bad = all.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.getAttribute("src"));
  document.body.setAttribute("data-probe", JSON.stringify({n: all.length, bad: bad}));
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "no Chromium found (looked for " + ", ".join(BROWSERS) + "): this test opens the HTML report in "
        "a real headless browser; install it with 'apt-get install chromium' (Debian/Ubuntu; "
        ".ci/run does this where it is missing)"
    )


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("photos")
    sample = images.sample_images()
    for k, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"]):
        cls = data / f"class{k % 2}"
        cls.mkdir(exist_ok=True)
        Image.fromarray(sample[name]).resize((64, 64), Image.Resampling.BICUBIC).save(cls / f"{name}.png")
    return data


def test_html_report_in_a_headless_browser(sweep, tmp_path, capsys):
    browser = _browser()
    out = tmp_path / "results"
    argv = ["sweep", str(sweep), "--model", "demo", "--out", str(out), "--size", "64", "--batch", "4"]
    assert cli.main([*argv, "--gallery", "3", "--noise-size", "16"]) == 0
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    rows, _ = report.read_results(out)
    dropped = len({r["image_id"] for r in rows if not r["passed"]})
    # the sweep's last line says what the filter drops (arb report leaves those rows out)
    assert f"mean-z filter (|mean z in ROI| <= 1) drops {dropped} of the 4 images" in closing
    assert len(list((out / "gallery").glob("*.npz"))) == 3
    (out / "gallery" / ".cut.1234.tmp.npz").write_bytes(b"PK half a file")  # a killed write: ignored
    if dropped == 4:  # no row would pass: report them all (the page is what is tested here)
        assert cli.main(["report", str(out), "--all", "--quiet"]) == 0
    else:
        assert cli.main(["report", str(out), "--quiet"]) == 0
    page = out / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert {"fig3_before_after.png", "fig4_suppression.png", "fig5_sens_spec.png", "figS7_srmsd.png"} <= set(
        srcs
    )
    assert sum(s.startswith("gallery/") for s in srcs) == 3
    assert "<table>" in text and "Suppression factor D" in text

    probe = page.with_name(".probe.html")
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, f"the page did not load in {browser}: {dom.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result == {"n": len(srcs), "bad": []}, result  # every image on the page loaded

    shot = tmp_path / "page.png"
    taken = _chromium(browser, "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), taken.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape == (2000, 1400)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text and figures, not a blank page
