"""The demo (scripts/demo.sh, `make demo`) reduced to the r band, as CI runs it: every step succeeds and leaves the
outputs the README promises (calexps, deep and template coadds, difference images and DIA sources, sky corrections,
the `demo` chain and the run report), within the demo's time budget."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from butler import Butler
from graph.execute import report_from_registry

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VISIT_A, VISIT_B = 419220300, 637720399  # runs 4192 (the template) and 6377, r band
R4 = 15  # detector id of CCD r4
N_PATCHES = 9
CHAIN = ("demo/skyCorr", "demo/ap", "demo/drp", "demo/processCcd")
# Quanta per task of each run of the chain: two r frames (one per run), nine patches.
QUANTA = {
    "demo/processCcd": {"isr": 2, "characterizeImage": 2, "calibrate": 2},
    "demo/drp": {"consolidateVisitSummary": 2, "makeWarp": 2 * N_PATCHES, "matchBackgrounds": 1,
                 "assembleCoadd": N_PATCHES, "assembleTemplateCoadd": N_PATCHES},
    "demo/ap": {"getTemplate": 1, "subtractImages": 1, "detectAndMeasure": 1},
    "demo/skyCorr": {"skyCorr": 2},
}
# `make demo` (all five bands) must finish within 15 minutes on 2 cores; one band takes about a quarter of that.
TIME_BUDGET = 15 * 60  # s


def _demo(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_unknown_band_is_refused_before_anything_is_written(tmp_path: Path):
    repo = tmp_path / "demo_repo"
    result = _demo({"DEMO_REPO": str(repo), "BANDS": "r,y", "DATA": str(tmp_path)}, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'y' is not an SDSS band; use some of u g r i z" in result.stderr
    assert not repo.exists()


@dataclass
class DemoRun:
    repo: Path
    output: str
    seconds: float


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> DemoRun:
    """scripts/demo.sh with BANDS=r into a temporary directory, with this interpreter's `butler` and `pipetask`."""
    repo = tmp_path_factory.mktemp("demo") / "demo_repo"
    env = {"DEMO_REPO": str(repo), "DATA": str(shared_data / "sdss_stripe82_lsst_demo"), "BANDS": "r",
           "BUTLER": str(BIN / "butler"), "PIPETASK": str(BIN / "pipetask"), "PYTHON": sys.executable}  # fmt: skip
    start = time.perf_counter()
    result = _demo(env, timeout=2 * TIME_BUDGET)
    seconds = time.perf_counter() - start
    print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return DemoRun(repo, result.stdout, seconds)


@pytest.mark.slow
def test_every_step_succeeds_within_the_time_budget(demo):
    """Every echoed step finishes; the four `pipetask run`s run ProcessCcd, DRP, AP and SkyCorrection in that order
    and every quantum of their runs (as many as the r-band frames and patches give) succeeds; the report comes
    last."""
    started = re.findall(r"^\[(\d+)\] \$ (.*)$", demo.output, re.MULTILINE)
    done = re.findall(r"^\[(\d+)\] done in [\d.]+ s$", demo.output, re.MULTILINE)
    assert [n for n, _ in started] == done == [str(i) for i in range(1, len(done) + 1)]
    pipelines = re.findall(r"pipetask run .* -p \S+/(\w+\.yaml)", demo.output)
    assert pipelines == ["ProcessCcd.yaml", "DRP.yaml", "AP.yaml", "SkyCorrection.yaml"]
    assert demo.output.count("all quanta succeeded") == 4
    assert re.search(r"pipetask report .* --html ", started[-1][1])
    with Butler(demo.repo, writeable=False) as butler:
        for chain, expected in QUANTA.items():
            run = butler.registry.get_collection_chain(chain)[0]
            rows = report_from_registry(butler, output_run=run)
            assert {row["task"]: (row["succeeded"], row["failed"]) for row in rows} == {
                task: (n, 0) for task, n in expected.items()
            }, (chain, rows)
    print(f"demo (r band) wall time {demo.seconds:.0f} s")
    assert demo.seconds < TIME_BUDGET


@pytest.mark.slow
def test_outputs_exist(demo):
    """The r-band calexps of both runs, deep coadds of both and template coadds of run 4192 alone over the nine
    patches, the run-6377 difference image with its DIA sources, both visits' sky corrections, and the `demo`
    chain of the four runs."""
    with Butler(demo.repo, writeable=False) as butler:
        def visits(dataset_type: str, collection: str) -> list[int]:
            return sorted(int(ref.data_id["visit"]) for ref in butler.query_datasets(dataset_type, collections=collection))

        assert visits("calexp", "demo/processCcd") == [VISIT_A, VISIT_B]
        for patch in range(N_PATCHES):
            ids = dict(skymap="stripe82_demo", tract=0, patch=patch, band="r", collections="demo/drp")
            assert sorted(butler.get("templateCoadd.coaddInputs", **ids)["visit"]) == [VISIT_A]
            assert sorted(butler.get("deepCoadd.coaddInputs", **ids)["visit"]) == [VISIT_A, VISIT_B]
        assert visits("difference", "demo/ap") == visits("diaSrc", "demo/ap") == [VISIT_B]
        assert len(butler.get("diaSrc", instrument="SDSS", visit=VISIT_B, detector=R4, collections="demo/ap")) > 0
        assert visits("skyCorr", "demo/skyCorr") == [VISIT_A, VISIT_B]
        assert butler.registry.get_collection_chain("demo") == CHAIN


@pytest.mark.slow
def test_report_covers_the_demo_runs(demo):
    """demo_repo/report.html reports the four runs of the `demo` chain, and the DIA-source count it shows is the
    number of rows of the run's diaSrc catalogue."""
    from graph.html_report import read_report_data

    data = read_report_data(demo.repo / "report.html")
    with Butler(demo.repo, writeable=False) as butler:
        runs = {butler.registry.get_collection_chain(chain)[0] for chain in CHAIN}
        dia = butler.get("diaSrc", instrument="SDSS", visit=VISIT_B, detector=R4, collections="demo/ap")
    assert set(data["runs"]) == runs
    sections = data["sections"]
    assert {key: s["status"] for key, s in sections.items() if s["status"] != "shown"} == {}
    assert sections["dia_sources"]["data"]["count"] == len(dia)
    # The cut-outs find the calexp in the ProcessCcd run, the template and difference in the AP run.
    assert len(sections["dia_cutouts"]["data"]["sources"]) == min(6, len(dia))
