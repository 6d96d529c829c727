"""Reproducible and incremental reprocessing of SimCam ProcessCcd (isr -> characterizeImage -> calibrate) on one
visit and two detectors: byte-identical repeated executions, rerun from provenance, ``--reuse-from`` after a
config change and after a raw change, the provenance chain back to the raws, and provenance through
export/import.  Each execution takes a few seconds, so the tests are slow-marked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from butler import Butler
from butler.cli import cli as butler_cli
from butler.run_diff import diff_runs
from graph.builder import build_quantum_graph
from graph.cli import cli
from graph.execute import execute_graph
from graph.provenance import read_run_document

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = str(ROOT / "repo_template/pipelines/SimCam/ProcessCcd.yaml#processCcd")
DETECTORS = (3, 4)
VISIT = 2000
BASE = "u/ccd/base"
SCIENCE = ("postISRCCD", "icExp", "icExpBackground", "icSrc", "calexp", "calexpBackground", "src")

pytestmark = pytest.mark.slow


def pipetask(*args: object) -> object:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    print(result.output)
    return result


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimCam repository (1 visit x 2 detectors) with ProcessCcd run once into ``u/ccd/base``."""
    from tasks.instruments.simcam import ingest_simulation, simulate_raws

    tmp = tmp_path_factory.mktemp("reprocessing")
    truth = simulate_raws(tmp / "sim", n_visits=1, seed=23, sky_frames=False, detectors=DETECTORS)
    root = tmp / "repo"
    with Butler.create(root) as butler:
        ingest_simulation(butler, truth, transfer="copy")
    result = pipetask("run", "-b", root, "-p", PIPELINE, "-i", "SimCam/raw/all,refcats", "-o", "u/ccd",
                      "--output-run", BASE, "--register-dataset-types")
    assert result.exit_code == 0
    return root


def _file_bytes(butler: Butler, run: str) -> dict[tuple[str, int], bytes]:
    """The stored bytes of every science dataset of a run, by dataset type and detector."""
    return {
        (name, ref.data_id["detector"]): _path(butler, ref).read_bytes()
        for name in SCIENCE
        for ref in butler.registry.query_datasets(name, [run])
    }


def _path(butler: Butler, ref) -> Path:
    """The file of a dataset."""
    from butler.datastore import StoredFileInfo

    (row,) = butler.registry.get_datastore_records([ref.id]).values()
    return butler.datastore.abspath(StoredFileInfo(**row))


def test_two_executions_give_byte_identical_calexps_and_catalogs(base):
    with Butler(base) as butler:
        graph, _ = build_quantum_graph(read_run_document(butler, BASE).pipeline, butler,
                                       input_collections=["SimCam/raw/all", "refcats"], output_run="u/ccd/twice")
        assert execute_graph(graph, butler, jobs=2).ok  # in worker processes, in another order
        first, second = _file_bytes(butler, BASE), _file_bytes(butler, "u/ccd/twice")
        assert len(first) == len(SCIENCE) * len(DETECTORS)
        assert first.keys() == second.keys()
        assert [key for key in first if first[key] != second[key]] == []
        assert diff_runs(butler.registry, BASE, "u/ccd/twice") == []  # configs and packages too


def test_rerun_from_provenance_reproduces_the_run_exactly(base):
    result = pipetask("rerun", "-b", base, "--from-run", BASE, "-o", "u/again", "--output-run", "u/again/1")
    assert result.exit_code == 0
    result = pipetask("diff-runs", "-b", base, BASE, "u/again/1")
    assert result.exit_code == 0 and "identical" in result.output


def _counts(output: str) -> dict[str, tuple[int, int]]:
    """task label -> (reused, to run), from the --explain lines."""
    counts = {}
    for line in output.splitlines():
        label, _, rest = line.partition(": ")
        if rest.endswith(" to run") and " reused, " in rest:
            reused, _, rerun = rest.removesuffix(" to run").partition(" reused, ")
            counts[label] = (int(reused), int(rerun))
    return counts


def test_a_changed_config_field_reruns_exactly_that_task_and_its_descendants(base):
    result = pipetask("run", "-b", base, "-p", PIPELINE, "-i", "SimCam/raw/all,refcats", "-o", "u/cfg",
                      "-c", "characterizeImage:psfIterations=1", "--reuse-from", BASE, "--explain")
    assert result.exit_code == 0
    assert _counts(result.output) == {"isr": (2, 0), "characterizeImage": (0, 2), "calibrate": (0, 2)}
    assert result.output.count("config changed: psfIterations (2 -> 1)") == 2
    assert result.output.count("produced anew by characterizeImage") == 2
    with Butler(base, writeable=False) as butler:
        run = butler.registry.get_collection_chain("u/cfg")[0]
        executed = butler.registry.query_quanta(run)
        assert sorted(q.task_label for q in executed) == ["calibrate"] * 2 + ["characterizeImage"] * 2
        post_isr = butler.registry.find_dataset("postISRCCD", instrument="SimCam", exposure=VISIT, detector=3,
                                                collections="u/cfg")
        assert post_isr.run == BASE  # reused by association, not copied


def test_a_changed_raw_reruns_only_its_downstream_quanta(base, tmp_path):
    from tasks.instruments import ingest_raws

    with Butler(base) as butler:
        ref = butler.registry.find_dataset("raw", instrument="SimCam", exposure=VISIT, detector=4, collections="SimCam/raw/all")
        modified = tmp_path / "SimCam_r_002000_S11.fits"
        shutil.copyfile(_path(butler, ref), modified)
        with fits.open(modified, mode="update") as hdus:
            hdus[0].data[500:520, 100:900] = np.clip(hdus[0].data[500:520, 100:900].astype(np.int64) + 40, 0, 60000)
        report = ingest_raws(butler, [modified], run="SimCam/raw/modified", transfer="copy")
        assert report.ok
        butler.collection_chain("u/raws", ["SimCam/raw/modified", "SimCam/raw/all"])
    result = pipetask("run", "-b", base, "-p", PIPELINE, "-i", "u/raws,refcats", "-o", "u/raw", "--reuse-from", BASE,
                      "--explain")
    assert result.exit_code == 0
    assert _counts(result.output) == {"isr": (1, 1), "characterizeImage": (1, 1), "calibrate": (1, 1)}
    assert "input changed: raw {instrument: 'SimCam', detector: 4, exposure: 2000} (ccdExposure) differs" in result.output



def test_the_provenance_chain_of_a_calexp_reaches_the_raws(base):
    with Butler(base, writeable=False) as butler:
        calexp = butler.registry.find_dataset("calexp", instrument="SimCam", visit=VISIT, detector=3, collections=BASE)
    result = CliRunner().invoke(butler_cli, ["query-provenance", str(base), str(calexp.id), "--format", "json"])
    assert result.exit_code == 0, result.output
    labels, leaves = [], []

    def walk(node: dict) -> None:
        if node.get("repeated"):
            return
        if node["quantum"] is None:
            leaves.append((node["dataset_type"], node["run"]))
        else:
            labels.append(node["quantum"]["task_label"])
            assert node["quantum"]["config_hash"] and node["quantum"]["code_hash"] and node["quantum"]["host"]
        for child in node["inputs"]:
            walk(child)

    walk(json.loads(result.output))
    assert set(labels) == {"calibrate", "characterizeImage", "isr"}
    assert set(leaves) == {("raw", "SimCam/raw/all"), ("refcat", "refcats/sim")}
    text = CliRunner().invoke(butler_cli, ["query-provenance", str(base), str(calexp.id)]).output
    assert "written by isr (tasks.isr.IsrTask)" in text and "raw {instrument: 'SimCam', detector: 3, exposure: 2000}" in text


def test_provenance_survives_export_and_import(base, tmp_path):
    with Butler(base, writeable=False) as butler:
        butler.export(tmp_path / "export", collections=[BASE], dataset_types=["calexp", "src", "*_metadata", "*_log"])
        quanta = butler.registry.query_quanta(BASE)
        document = butler.registry.get_run_provenance(BASE)
    with Butler.create(tmp_path / "target") as target:
        target.import_(tmp_path / "export")
        imported = target.registry.query_quanta(BASE)
        assert [(q.id, q.config_hash, q.code_hash, q.inputs) for q in imported] == [(q.id, q.config_hash, q.code_hash, q.inputs) for q in quanta]
        assert target.registry.get_run_provenance(BASE) == document
        calexp = target.registry.find_dataset("calexp", instrument="SimCam", visit=VISIT, detector=4, collections=BASE)
        assert target.registry.get_quantum_provenance(calexp.id).task_label == "calibrate"
