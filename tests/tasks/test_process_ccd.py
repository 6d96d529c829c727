"""ProcessCcd pipelines: the quantum graph of characterization, and the SDSS pipeline run with `pipetask run`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from butler import Butler, FileDataset
from graph import Pipeline
from graph.builder import build_quantum_graph
from graph.cli import cli
from graph.execute import report_from_registry
from tasks.instruments import define_visits, ingest_raws
from tasks.measure_psf import psf_effective_fwhm

PIPELINE = "repo_template/pipelines/Sdss/ProcessCcd.yaml"
GENERIC_PIPELINE = "repo_template/pipelines/ProcessCcd.yaml"
SDSS_PIXEL_SCALE = 0.396  # arcsec / pixel
R4 = 15  # detector id of CCD r4
R_EXPOSURES = (419220300, 637720399)  # runs 4192 and 6377, r band; SDSS visit ids equal exposure ids
LABELS = ("isr", "characterizeImage", "calibrate")


def _report_counts(output: str) -> dict[str, dict[str, int]]:
    """The per-label status counts of the table `pipetask run` prints."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["task", "succeeded"])
    columns = lines[header].split()[1:]
    counts = {}
    for line in lines[header + 1 :]:
        fields = line.split()
        if len(fields) == len(columns) + 1 and all(re.fullmatch(r"\d+", f) for f in fields[1:]):
            counts[fields[0]] = dict(zip(columns, map(int, fields[1:]), strict=True))
    return counts


@pytest.fixture(scope="module")
def sdss_repo(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A repository with the 10 SDSS frames (symlinked), their visits, and the reference catalogue, as
    scripts/demo.sh builds it."""
    demo = shared_data / "sdss_stripe82_lsst_demo"
    root = tmp_path_factory.mktemp("process_ccd") / "repo"
    with Butler.create(root) as butler:
        butler.register_dataset_type("refcat", [], "AstropyFitsTable")
        butler.ingest(
            FileDataset(demo / "ref_cat" / "stars.fits", "refcat", {}), transfer="symlink", run="refcats/stripe82"
        )
        butler.collection_chain("refcats", ["refcats/stripe82"])
        report = ingest_raws(butler, [demo / "input"], transfer="symlink")
        assert report.ok, report.failures
        define_visits(butler, "Sdss")
    return root


@pytest.fixture(scope="module")
def processed(sdss_repo: Path) -> tuple[Path, str]:
    """`pipetask run` of Sdss/ProcessCcd.yaml on all 10 frames; returns the repo and the CLI output."""
    result = CliRunner().invoke(
        cli,
        ["run", "-b", str(sdss_repo), "-p", PIPELINE, "-i", "SDSS/raw/all,refcats", "-o", "out",
         "--register-dataset-types"],
    )
    print(result.output)
    assert result.exit_code == 0, result.output
    return sdss_repo, result.output


def test_characterization_has_one_quantum_per_visit_and_detector_reading_its_exposure(sdss_repo):
    """postISRCCD has exposure dimensions and characterization visit dimensions: visit_definition relates them."""
    pipeline_graph = Pipeline.from_file(PIPELINE).to_graph()
    with Butler(sdss_repo, writeable=False) as butler:
        graph, _ = build_quantum_graph(
            pipeline_graph, butler, input_collections=["SDSS/raw/all", "refcats"], output_run="u/test/qgraph"
        )
    assert graph.summary() == {"isr": 10, "characterizeImage": 10, "calibrate": 10}
    keys = set()
    for quantum in graph.quanta_for("characterizeImage"):
        (ref,) = quantum.inputs["exposure"]
        assert ref.dataset_type.name == "postISRCCD"
        assert ref.data_id["exposure"] == quantum.data_id["visit"]
        assert ref.data_id["detector"] == quantum.data_id["detector"]
        assert graph.producer_of(ref.id).task_label == "isr"
        keys.add((quantum.data_id["visit"], quantum.data_id["detector"]))
    assert len(keys) == 10


@pytest.mark.slow
def test_every_quantum_of_the_sdss_pipeline_succeeds(processed):
    root, output = processed
    counts = _report_counts(output)
    for label in LABELS:
        assert counts[label]["succeeded"] == 10, (label, counts[label])
        assert counts[label]["failed"] == 0
    with Butler(root, writeable=False) as butler:
        run = butler.registry.get_collection_chain("out")[0]
        rows = {row["task"]: row for row in report_from_registry(butler, output_run=run)}
        assert all(rows[label]["succeeded"] == 10 for label in LABELS)
        for exposure in R_EXPOSURES:
            data_id = {"instrument": "SDSS", "visit": exposure, "detector": R4}
            icsrc = butler.get("icSrc", data_id, collections="out")
            assert icsrc["calib_psf_used"].sum() >= 10


@pytest.mark.slow
@pytest.mark.parametrize("exposure", R_EXPOSURES)
def test_sdss_r_psf_width_matches_the_psfield(processed, exposure):
    """Acceptance: the effective FWHM of the calexp PSF at the frame centre agrees with the SDSS photo
    pipeline's psf_width (1.18" and 1.09" in r) within 5%."""
    root, _ = processed
    with Butler(root, writeable=False) as butler:
        calexp = butler.get("calexp", instrument="SDSS", visit=exposure, detector=R4, collections="out")
        psfield = butler.get("psField", instrument="SDSS", exposure=exposure, detector=R4, collections="SDSS/raw/all")
    expected = psfield["bands"]["r"]["psf_width"]
    cx, cy = calexp.bbox.center
    measured = psf_effective_fwhm(calexp.psf, cx, cy) * SDSS_PIXEL_SCALE
    print(f"exposure {exposure}: PSF FWHM_eff {measured:.3f} arcsec, psField psf_width {expected:.3f} arcsec")
    assert measured == pytest.approx(expected, rel=0.05)


@pytest.mark.slow
def test_an_all_nan_frame_has_no_work_while_the_others_succeed(processed):
    """A frame whose postISRCCD is all NaN: its characterization has no work (its calibration is not run), the
    other frame of the band is characterized and calibrated."""
    root, _ = processed
    bad = {"instrument": "SDSS", "exposure": R_EXPOSURES[1], "detector": R4}
    with Butler(root) as butler:
        exposure = butler.get("postISRCCD", bad, collections="out")
        exposure.image[...] = np.nan
        butler.put(exposure, "postISRCCD", bad, run="u/test/corrupt")
    result = CliRunner().invoke(
        cli,
        ["run", "-b", str(root), "-p", GENERIC_PIPELINE, "-i", "u/test/corrupt,out", "-o", "u/test/nan",
         "-d", f"band = 'r' AND detector = {R4}"],
    )
    print(result.output)
    counts = _report_counts(result.output)
    assert counts["characterizeImage"]["succeeded"] == 1
    assert counts["characterizeImage"]["no_work"] + counts["characterizeImage"]["failed"] == 1
    assert counts["calibrate"]["succeeded"] == 1
    assert counts["calibrate"]["failed"] == 0
    with Butler(root, writeable=False) as butler:
        good = {"instrument": "SDSS", "visit": R_EXPOSURES[0], "detector": R4}
        assert butler.exists("calexp", good, collections="u/test/nan")
