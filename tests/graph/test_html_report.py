"""``pipetask report --html``: the page of a toy run holds its pipeline graph, its quanta counts and wall times,
and says why the science sections are left out (graph/html_report.py)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from toy_repo import make_toy_repo, pipetask

from butler import Butler
from graph.html_report import (
    ReportContext,
    ReportSection,
    SectionOutput,
    read_report_data,
    render_html_report,
)

SLEEP = 0.1  # [s] every addOne quantum sleeps this long before running (or failing)
FLAKY_PIPELINE = f"""\
description: toy pipeline with failures and no-work quanta
tasks:
  addOne:
    class: toy_exec_tasks.FlakyAddOneTask
    config:
      sleep: {SLEEP}
      failDetectors: [3]
      noWorkDetectors: [2]
  stats: toy_tasks.StatsTask
  sum: toy_tasks.SumDetectorsTask
"""
SCIENCE = ("psf_fwhm", "background_matching", "dia_cutouts", "dia_sources", "noise_ratio")


@pytest.fixture(scope="module")
def flaky_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict, str]:
    """A run of 3 visits x 4 detectors where detector 2 has no work and detector 3 fails; its report."""
    tmp = tmp_path_factory.mktemp("html_report")
    root, _ = make_toy_repo(tmp)
    pipeline = tmp / "flaky.yaml"
    pipeline.write_text(FLAKY_PIPELINE)
    result = pipetask("run", "-b", root, "-i", "raw", "--output-run", "u/me/flaky", "-p", pipeline, "--register-dataset-types")
    assert result.exit_code == 1 and "failed" in result.output, result.output  # detector 3 fails
    out = tmp / "report.html"
    result = pipetask("report", "-b", root, "--output-run", "u/me/flaky", "--html", out)
    assert result.exit_code == 0, result.output
    return root, out.read_text(), read_report_data(out), result.output


def test_page_is_self_contained_with_png_figures(flaky_run):
    _, page, data, _ = flaky_run
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # the pipeline graph and the wall-time box plots
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<link" not in page
    assert data["runs"] == ["u/me/flaky"]


def test_pipeline_graph_lists_the_run_s_tasks_and_dataset_types(flaky_run):
    *_, data, _ = flaky_run
    section = data["sections"]["pipeline_graph"]
    assert section["status"] == "shown"
    graph = section["data"]["u/me/flaky"]
    assert graph["tasks"] == {"addOne": "toy_exec_tasks.FlakyAddOneTask", "stats": "toy_tasks.StatsTask",
                              "sum": "toy_tasks.SumDetectorsTask"}
    assert {"toy_input", "toy_output", "toy_stats", "toy_visit_sum"} <= set(graph["dataset_types"])


def test_quanta_are_counted_by_status(flaky_run):
    *_, data, _ = flaky_run
    tasks = data["sections"]["quanta"]["data"]["runs"]["u/me/flaky"]
    assert {k: tasks["addOne"][k] for k in ("quanta", "succeeded", "no_work", "failed")} == {
        "quanta": 12, "succeeded": 6, "no_work": 3, "failed": 3}
    assert tasks["stats"]["succeeded"] == 6 and tasks["stats"]["failed"] == 0
    failed = data["sections"]["quanta"]["data"]["failed"]
    assert len(failed) == 3 and all("detector=3" in f["data_id"] and "configured to fail" in f["error"] for f in failed)


def test_wall_times_come_from_the_quanta_start_and_end(flaky_run):
    """Every addOne quantum sleeps SLEEP seconds: its median and max are at least that, the total 12 times it;
    stats quanta do not sleep."""
    *_, data, _ = flaky_run
    tasks = data["sections"]["quanta"]["data"]["runs"]["u/me/flaky"]
    add_one = tasks["addOne"]
    assert SLEEP <= add_one["median"] <= add_one["max"] < SLEEP + 5
    assert 12 * SLEEP <= add_one["total"] <= 12 * add_one["max"]
    assert tasks["stats"]["median"] < add_one["median"]


def test_science_sections_without_their_datasets_are_left_out_with_a_reason(flaky_run):
    _, page, data, output = flaky_run
    sections = data["sections"]
    assert all(sections[key]["status"] == "skipped" for key in SCIENCE), sections
    assert "calexp" in sections["psf_fwhm"]["reason"] and "diaSrc" in sections["dia_sources"]["reason"]
    assert "MatchBackgroundsTask" in sections["background_matching"]["reason"]
    assert page.count("Left out:") == len(SCIENCE)
    assert "left out psf_fwhm" in output


def test_a_chain_reports_each_of_its_runs_with_quanta(tmp_path):
    root, pipeline = make_toy_repo(tmp_path)
    for visit in (0, 1):
        result = pipetask("run", "-b", root, "-i", "raw", "-o", "u/me/toy", "--output-run", f"u/me/toy/v{visit}",
                          "-p", pipeline, "-d", f"visit = {visit}", "--register-dataset-types")
        assert result.exit_code == 0, result.output
    with Butler(root, writeable=False) as butler:
        assert render_html_report(butler, "u/me/toy", sections=[]).data["runs"] == ["u/me/toy/v1", "u/me/toy/v0"]
        # a run named again (alone or through another chain) is reported once; "raw" has no quanta
        both = render_html_report(butler, ["u/me/toy/v0", "u/me/toy"], sections=[])
    assert both.data["runs"] == ["u/me/toy/v0", "u/me/toy/v1"]


def test_several_runs_need_html(flaky_run):
    root, *_ = flaky_run
    result = pipetask("report", "-b", root, "--output-run", "u/me/flaky,raw")
    assert result.exit_code == 2 and "--html" in result.output


class _Broken(ReportSection):
    key = "broken"
    title = "Broken"

    def render(self, context: ReportContext) -> SectionOutput:
        raise ZeroDivisionError("bad statistics")


def test_a_failing_section_is_reported_and_the_others_still_render(flaky_run):
    root, *_ = flaky_run
    from graph.html_report import QuantaSection

    with Butler(root, writeable=False) as butler:
        report = render_html_report(butler, "u/me/flaky", sections=[_Broken(), QuantaSection()])
    assert report.statuses("failed") == ["broken"] and report.statuses("shown") == ["quanta"]
    assert "This section failed: ZeroDivisionError: bad statistics" in report.html


def test_unknown_collection_is_a_user_error(flaky_run, tmp_path):
    root, *_ = flaky_run
    result = pipetask("report", "-b", root, "--output-run", "nope", "--html", tmp_path / "r.html")
    assert result.exit_code == 1 and "nope" in result.stderr and "Traceback" not in result.stderr
