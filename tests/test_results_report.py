"""``evalfleet results plot`` (a PNG from matplotlib) and ``results report`` (one HTML file),
rendered by a real headless Chromium (Debian's, driven by Playwright): the rows are there,
filtering to the wrong answers works, and a screenshot is taken."""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from evalfleet.reporting.plot import plot_data
from evalfleet.reporting.runs import load_run

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _results(capsys, *args: str) -> tuple[int, str]:
    from evalfleet.client.cli import build_parser
    from evalfleet.client.results_command import run_results

    code = run_results(build_parser().parse_args(["results", *args]))
    return code, capsys.readouterr().out


def test_plot_writes_a_png_of_both_runs_with_stderr_bars(two_model_runs, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "chart.png"
    code, stdout = _results(capsys, "plot", str(two_model_runs["tiny"]),
                            str(two_model_runs["real"]), "--out", str(out))
    assert code == 0 and f"wrote {out}" in stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out).shape
    assert width >= 600 and height >= 700  # two panels (acc, acc_norm)
    runs = [load_run(two_model_runs[k], with_samples=False) for k in ("tiny", "real")]
    data = plot_data(runs)
    assert set(data) == {"acc", "acc_norm"}
    for run, (value, stderr) in zip(runs, data["acc"]["arc_easy"], strict=True):
        entry = run.results["results"]["arc_easy"]
        assert (value, stderr) == (entry["acc,none"], entry["acc_stderr,none"])
        assert stderr > 0


def test_plot_metric_filter(two_model_runs, tmp_path, capsys):
    code, _ = _results(capsys, "plot", str(two_model_runs["real"]), "--metrics", "acc_norm",
                       "--out", str(tmp_path / "one.svg"))
    assert code == 0 and (tmp_path / "one.svg").read_text().lstrip().startswith("<?xml")


@pytest.fixture(scope="module")
def chromium_page():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Debian's chromium is missing: run `make install`")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="evalfleet-chromium-"), executable_path=executable,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_report_renders_in_chromium_and_filters_to_wrong_answers(two_model_runs, tmp_path,
                                                                  capsys, chromium_page):
    out = tmp_path / "report.html"
    code, stdout = _results(capsys, "report", str(two_model_runs["real"].parent), "--out",
                            str(out))
    assert code == 0 and "(1 task, 40 documents)" in stdout
    html = out.read_text()
    assert "<script src" not in html and "<link" not in html  # self-contained
    samples = load_run(two_model_runs["real"]).samples["arc_easy"]
    wrong = [s for s in samples if s["acc"] == 0.0]
    right = [s for s in samples if s["acc"] == 1.0]
    assert wrong and right

    page = chromium_page
    page.goto(out.as_uri())
    assert page.title() == "evalfleet report: smollm2-135m"
    table = page.locator("#results-table tbody tr")
    assert table.count() == 2
    assert table.nth(0).locator("td").all_inner_texts()[:5] == ["arc_easy", "1.0", "none", "0",
                                                                "acc"]
    rows = page.locator("tr.doc")
    assert rows.count() == 40 and page.locator("tr.doc:visible").count() == 40
    first = rows.nth(0)
    assert samples[0]["arguments"]["gen_args_0"]["arg_0"].split("\n")[0] in first.inner_text()
    assert first.locator("ol.choices li").count() == len(samples[0]["arguments"])
    assert first.locator(".gold").count() == 1 and first.locator(".pred").count() == 1

    page.select_option("#show", "wrong")
    visible = page.locator("tr.doc:visible")
    assert visible.count() == len(wrong)
    assert [int(v) for v in visible.evaluate_all(
        "rows => rows.map(r => r.querySelector('td.docid').firstChild.textContent)")] \
        == [s["doc_id"] for s in wrong]
    assert page.locator("#count").inner_text() == f"{len(wrong)} of 40 documents shown"
    shot = tmp_path / "report-wrong.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    page.select_option("#show", "right")
    assert page.locator("tr.doc:visible").count() == len(right)
    page.select_option("#show", "all")
    question = samples[5]["doc"]["question"]
    page.fill("#search", question)
    assert page.locator("tr.doc:visible").count() >= 1
    assert all(question in t for t in page.locator("tr.doc:visible").all_inner_texts())
    print(json.dumps({"screenshot": str(shot), "wrong": len(wrong), "right": len(right)}))
