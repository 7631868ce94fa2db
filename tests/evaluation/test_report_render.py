"""The HTML report as a browser shows it: headless Chromium renders it (chart included) to a screenshot that is not
blank. Skipped where no Chromium is installed (Debian: `apt-get install chromium-headless-shell`)."""

import os
import shutil
import subprocess

import pytest
from PIL import Image

from vigos.evaluation.report import write_report

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)

SCORES = {
    "student_prompt": "release",
    "benchmarks": {
        "mmmu": {"n_examples": 30, "k": 5, "pass_at_k": 0.0, "avg_at_k": 0.0, "avg_at_k_se": 0.0, "grader": "rules"},
        "cv-bench": {"n_examples": 20, "k": 5, "pass_at_k": 70.0, "avg_at_k": 33.0, "avg_at_k_se": 6.0,
                     "grader": "rules", "official": {"pass_at_k": 62.5, "avg_at_k": 50.0, "missing_sources": []}},
    },
    "mean": {"pass_at_k": 35.0, "avg_at_k": 16.5},
    "vilp": {"vilp-f": {"score": 50.0, "prior": 80.0, "n_examples": 30, "k": 1, "grader": "rules"}},
}


@pytest.mark.skipif(BROWSER is None, reason="no Chromium on PATH (Debian: apt-get install chromium-headless-shell, "
                                            "about 86 MB to download, 290 MB installed)")
def test_the_html_report_renders_in_a_browser(tmp_path):
    paths = write_report(SCORES, tmp_path / "report", SCORES, model="m", base_model="b",
                         settings={"temperature": 1.0, "max_examples": None})
    assert paths.html.name == "eval_report.html"  # the name a browser (and MLflow's viewer) opens as HTML
    shot = tmp_path / "shot.png"
    cmd = [BROWSER, "--headless", "--disable-gpu", "--hide-scrollbars", "--window-size=1024,3000",
           f"--screenshot={shot}", paths.html.resolve().as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to sandbox as root (containers, CI)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size[0] == 1024
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        # not blank: text, table borders and the chart's colours, not one flat colour
        assert len(colours) > 50
        non_white = sum(count for count, c in colours if c != (255, 255, 255))
        assert non_white > 0.02 * rgb.size[0] * rgb.size[1]
        # the embedded chart was decoded and drawn: this model's blue bars and the card's orange ones are there
        blue = sum(count for count, (r, g, b) in colours if b > 150 and r < 100 and g < 160)
        orange = sum(count for count, (r, g, b) in colours if r > 230 and 100 < g < 170 and b < 80)
        assert blue > 2000 and orange > 2000, (blue, orange)
