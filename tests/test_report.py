"""The HTML report (autopar/report.py): one self-contained page that a real browser renders
without a console error; the pipeline timeline it draws follows the schedule's dependencies."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from autopar.cli.main import main
from autopar.report import pipeline_timeline

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"  # screenshots land here (git-ignored)
GPT_1B = {"family": "gpt", "layers": 24, "hidden": 2048, "heads": 16, "seq_len": 2048, "vocab": 50257}


@pytest.mark.parametrize("gpipe", [False, True], ids=["1f1b", "gpipe"])
def test_the_timeline_of_uniform_stages_takes_m_plus_p_minus_1_slots(gpipe):
    """Equal stages: GPipe and 1F1B both end after (m + p - 1)(f + b); no stage runs two
    operations at once, and every micro-batch's forward precedes its backward on each stage."""
    p, m, f, b = 4, 8, 1.0, 2.0
    lanes = pipeline_timeline(p, m, [f] * p, [b] * p, gpipe)
    assert max(op[3] for lane in lanes for op in lane) == pytest.approx((m + p - 1) * (f + b))
    for lane in lanes:
        assert len(lane) == 2 * m
        ends = sorted((a, z) for _, _, a, z in lane)
        assert all(z0 <= a1 + 1e-12 for (_, z0), (a1, _) in zip(ends, ends[1:]))
        start = {(k, i): a for k, i, a, _ in lane}
        assert all(start[("F", i)] < start[("B", i)] for i in range(m))


def _write_recipe(tmp_path) -> str:
    path = tmp_path / "gpt-1b.yaml"
    path.write_text(yaml.safe_dump({"model": GPT_1B, "data": {"samples": 10**6},
                                    "training": {"global_batch": 64, "optimizer": "adam", "precision": "bf16", "steps": 1000},
                                    "cluster": {"preset": "dgx-a100-80gb", "nodes": 2}}))
    return str(path)


def test_the_plan_report_renders_in_headless_chromium(tmp_path):
    """A pipeline plan (--fix pp=4): the page holds the plans, the explanations and four plots
    (SVG, no script, nothing fetched); Chromium renders it, logs no console error, and the
    screenshot is saved under out/."""
    report = tmp_path / "plan.html"
    assert main(["plan", _write_recipe(tmp_path), "--fix", "pp=4", "--report", str(report)]) == 0
    page = report.read_text()
    assert page.count("<svg") == 4 and "Pipeline timeline of plan 1" in page and "micro-batches in" in page
    assert "<script" not in page and not re.search(r"""(src|href)=["']?https?:""", page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    OUT.mkdir(exist_ok=True)
    shot = OUT / "report-plan.png"
    shot.unlink(missing_ok=True)
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    run = subprocess.run([chromium, *flags, "--window-size=1200,3600", f"--screenshot={shot}", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 50_000, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run([chromium, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr>") >= 6 and "Why not the others" in dom


def test_estimate_and_a_refused_report_path(tmp_path, capsys):
    recipe = _write_recipe(tmp_path)
    report = tmp_path / "estimate.html"
    assert main(["estimate", recipe, "--strategy", "dp=8,tp=2,zero=1", "--report", str(report)]) == 0
    assert report.read_text().count("<svg") == 2
    assert main(["estimate", recipe, "--strategy", "dp=8,tp=2", "--report", str(tmp_path / "no" / "such" / "dir.html")]) == 2
    assert "--report" in capsys.readouterr().err
