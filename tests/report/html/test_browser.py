"""report.html in a real browser: the tiny ToyWorld pipeline's report opened from disk in headless
Chromium (the distribution's package; `.ci/run` installs it), with no console error and no network
request; a concept link followed, a hovered value read, screenshots saved in the workdir."""

import re

import pytest

from mrepe_jax.report.html.browser import BrowserError, Chromium, check_report, find_chromium, main, show_pages

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it when run as root)")


@pytest.fixture(scope="module")
def tiny_workdir(tiny_toyworld):
    """The workdir of the tiny ToyWorld pipeline (the session's shared run), as `make demo` writes the default's."""
    assert tiny_toyworld.returncode == 0, tiny_toyworld.stderr[-3000:]
    return tiny_toyworld.workdir


def test_the_tiny_pipelines_report_opens_offline_and_reads_as_a_dashboard(tiny_workdir):
    report = tiny_workdir / "report.html"
    assert report.stat().st_size < 20 * 2**20  # the bound
    page = report.read_text()
    # The plots wrote their numbers: the dose-response and the patching heatmap are charts.
    assert '<svg class="chart lines"' in page and '<svg class="chart heatmap"' in page
    feature = re.search(r'<section class="page" id="(feature-[^"]+)"', page)[1]
    seen = check_report(report, pages=[feature])
    assert seen["problems"] == [], seen["problems"]
    assert seen["requests"] == [], seen["requests"]
    assert seen["title"] == "mrepe_jax — ToyWorld report"
    assert seen["sorted"] == ["ascending", "descending"]
    assert seen["toggled_off"] == ["false", 1, True]  # the tiny run has one tower: one panel
    concept = seen["concept"]
    assert concept["hash"] == concept["href"] == "#concept-colour"
    assert concept["page_shown"] and concept["report_hidden"] and concept["heading"] == "Concept: colour"
    hover = seen["hover"]
    # The tiny run patches vision/colour: the hovered value is a heatmap cell's.
    assert hover["visible"] and hover["tooltip"] == hover["expected"]
    assert hover["tooltip"].startswith("layer 0, position 0: ")
    float(hover["tooltip"].rsplit(": ", 1)[1])
    assert seen["pages"] == {feature: str(tiny_workdir / f"report_{feature}.png")}
    shots = [tiny_workdir / n for n in ("report_first_screen.png", "report_concept_page.png", f"report_{feature}.png")]
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000, shot
    assert shots[2].read_bytes() != shots[1].read_bytes()  # the feature page, not the concept page again


def test_the_checker_sees_console_errors_and_requests_and_names_a_missing_page(tmp_path):
    """The two failures the report test looks for are seen when a page has them; a page asked for
    by id is screenshotted, or named with its near matches when the report lacks it."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><title>bad</title><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("broken")</script><section class="page" id="feature-topk-12">a</section>'
                    '<section class="page" id="concept-colour">b</section>')
    with Chromium(timeout=30) as browser:
        browser.navigate(page.as_uri())
        assert any("console.error: broken" in p for p in browser.problems()), browser.problems()
        assert "http://127.0.0.1:9/x.png" in browser.requests()
        shots = show_pages(browser, ["#concept-colour"], tmp_path)
        assert shots == {"concept-colour": str(tmp_path / "report_concept-colour.png")}
        with pytest.raises(BrowserError, match="no page #feature-topk-1; did you mean #feature-topk-12"):
            show_pages(browser, ["feature-topk-1"], tmp_path)


def test_the_command_line_names_a_missing_report(tmp_path, capsys):
    assert main(["browser", str(tmp_path / "none.html")]) == 2
    assert f"no report at '{tmp_path / 'none.html'}'" in capsys.readouterr().err
    assert main(["browser", "--help"]) == 0 and "PAGE_ID" in capsys.readouterr().out
