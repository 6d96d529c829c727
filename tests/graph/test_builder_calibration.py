"""Calibration prerequisites in quantum-graph building (`graph/builder.py`): a per-visit task (like
SkyCorrectionTask) finds, for every detector, the ``skyFrame`` of its visit's physical_filter that is
certified as valid at the visit's time.

The toy camera (``tests/conftest.py``): visit ``v`` starts at 2020-01-01T0v:00 (v < 5) or
2020-01-02T0(v-5):00 (v >= 5) TAI and lasts 30 + v s; odd visits are in r1, even ones in g1.  Sky frames:
r1 "early" valid [01-01T00:00, 01-01T02:30) -> visit 1; r1 "late" valid [01-01T02:30, 01-02T02:00) ->
visits 3 and 5 (visit 7 starts exactly at the end: outside); g1 valid at any time -> even visits.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import N_DETECTORS, N_VISITS

from butler import Butler, CollectionType, Timespan
from graph import (
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    PrerequisiteInput,
    Struct,
)
from graph.builder import build_quantum_graph
from graph.errors import GraphBuildError
from graph.execute import execute_graph
from graph.pipeline import Pipeline

VD = ("instrument", "visit", "detector")
SKY_DIMS = ("instrument", "physical_filter", "detector")
EARLY = Timespan("2020-01-01T00:00:00", "2020-01-01T02:30:00")
LATE = Timespan("2020-01-01T02:30:00", "2020-01-02T02:00:00")
SKY_VALUE = {"sky/r_early": 100.0, "sky/r_late": 200.0, "sky/g": 300.0, "sky/override": 900.0}


class VisitSkyConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    images = Input(name="toy_input", storageClass="NumpyArray", dimensions=VD, multiple=True)
    skyFrames = PrerequisiteInput(  # noqa: N815 - SkyCorrectionTask's connection name
        name="skyFrame", storageClass="NumpyArray", dimensions=SKY_DIMS, multiple=True, isCalibration=True
    )
    corrected = Output(name="toy_sky_level", storageClass="NumpyArray", dimensions=("instrument", "visit"))


class VisitSkyConfig(PipelineTaskConfig, pipelineConnections=VisitSkyConnections):
    pass


class VisitSkyTask(PipelineTask):
    """The sky-frame value each detector of a visit received (in input order)."""

    ConfigClass = VisitSkyConfig
    _DefaultName = "visitSky"

    def run(self, images: list[np.ndarray], skyFrames: list[np.ndarray]) -> Struct:  # noqa: N803
        return Struct(corrected=np.array([float(s[0]) for s in skyFrames]))


class DetectorSkyConnections(PipelineTaskConnections, dimensions=("instrument", "detector")):
    skyFrame = PrerequisiteInput(  # noqa: N815
        name="skyFrame", storageClass="NumpyArray", dimensions=SKY_DIMS, multiple=True, isCalibration=True
    )
    out = Output(name="toy_detector_sky", storageClass="NumpyArray", dimensions=("instrument", "detector"))


class DetectorSkyConfig(PipelineTaskConfig, pipelineConnections=DetectorSkyConnections):
    pass


class DetectorSkyTask(PipelineTask):
    ConfigClass = DetectorSkyConfig
    _DefaultName = "detectorSky"


def put_sky_frames(butler: Butler, run: str, physical_filter: str) -> list:
    value = SKY_VALUE[run]
    return [
        butler.put(np.full(2, value + d), "skyFrame", instrument="Cam", physical_filter=physical_filter, detector=d, run=run)
        for d in range(N_DETECTORS)
    ]


@pytest.fixture
def butler(populated: Butler) -> Butler:
    """toy_input for every visit and detector; sky frames certified in CALIBRATION collection sky/calib."""
    populated.register_dataset_type("toy_input", VD, "NumpyArray")
    for v in range(N_VISITS):
        for d in range(N_DETECTORS):
            populated.put(np.full(3, float(v)), "toy_input", instrument="Cam", visit=v, detector=d, run="inputs")
    populated.register_dataset_type("skyFrame", SKY_DIMS, "NumpyArray", is_calibration=True)
    reg = populated.registry
    reg.register_collection("sky/calib", CollectionType.CALIBRATION)
    reg.certify("sky/calib", put_sky_frames(populated, "sky/r_early", "r1"), EARLY)
    reg.certify("sky/calib", put_sky_frames(populated, "sky/r_late", "r1"), LATE)
    reg.certify("sky/calib", put_sky_frames(populated, "sky/g", "g1"), Timespan(None, None))
    return populated


def build(butler: Butler, task: type = VisitSkyTask, inputs: tuple[str, ...] = ("inputs", "sky/calib")):
    pipeline = Pipeline("calibration prerequisites")
    pipeline.add_task(task, "sky")
    return build_quantum_graph(pipeline.to_graph(butler.dimensions), butler, input_collections=list(inputs), output_run="out")


def expected_run(visit: int) -> str | None:
    """The run of the sky frames valid for a visit (None: no sky frame is valid at its time)."""
    if visit % 2 == 0:
        return "sky/g"
    return {1: "sky/r_early", 3: "sky/r_late", 5: "sky/r_late"}.get(visit)


def test_each_visit_gets_every_detectors_sky_frame_valid_at_its_time(butler):
    graph, report = build(butler)
    quanta = {q.data_id["visit"]: q for q in graph.quanta_for("sky")}
    assert set(quanta) == {v for v in range(N_VISITS) if expected_run(v)} == set(range(N_VISITS)) - {7, 9}
    for visit, quantum in quanta.items():
        refs = quantum.inputs["skyFrames"]
        assert [r.data_id["detector"] for r in refs] == list(range(N_DETECTORS))
        assert {r.run for r in refs} == {expected_run(visit)}, visit
        assert {r.data_id["physical_filter"] for r in refs} == {quantum.data_id["physical_filter"]}
        assert all(r.id in graph.datastore_records for r in refs)
    assert report.tasks["sky"].pruned == {"missing prerequisite 'skyFrame'": 2}
    assert "visit: 7" in report.tasks["sky"].examples["missing prerequisite 'skyFrame'"]


def test_all_quanta_are_served_by_one_calibration_query(butler, monkeypatch):
    registry = butler.registry
    calls = {"associations": [], "datasets": []}
    original_associations, original_datasets = registry.query_dataset_associations, registry.query_datasets

    def associations(dataset_type, *args, **kwargs):
        calls["associations"].append(dataset_type)
        return original_associations(dataset_type, *args, **kwargs)

    def datasets(dataset_type, *args, **kwargs):
        calls["datasets"].append(dataset_type)
        return original_datasets(dataset_type, *args, **kwargs)

    monkeypatch.setattr(registry, "query_dataset_associations", associations)
    monkeypatch.setattr(registry, "query_datasets", datasets)
    graph, _ = build(butler)
    assert len(graph) == 8
    assert calls["associations"] == ["skyFrame"]
    assert "skyFrame" not in calls["datasets"] and calls["datasets"].count("toy_input") == 1


def test_execution_reads_the_sky_frames_the_builder_selected(butler):
    graph, _ = build(butler)
    assert execute_graph(graph, butler).ok
    for visit in set(range(N_VISITS)) - {7, 9}:
        got = butler.get("toy_sky_level", instrument="Cam", visit=visit, collections="out")
        np.testing.assert_array_equal(got, SKY_VALUE[expected_run(visit)] + np.arange(N_DETECTORS))


def test_a_run_earlier_in_the_search_path_wins_at_any_time(butler):
    put_sky_frames(butler, "sky/override", "g1")
    graph, _ = build(butler, inputs=("inputs", "sky/override", "sky/calib"))
    runs = {q.data_id["visit"]: {r.run for r in q.inputs["skyFrames"]} for q in graph.quanta_for("sky")}
    assert runs == {v: {"sky/override" if v % 2 == 0 else expected_run(v)} for v in range(N_VISITS) if v not in (7, 9)}


def test_ranges_meeting_during_a_visit_are_an_error_naming_both(butler):
    """Visit 1 lasts 01:00:00-01:00:31; r1 frames valid until 01:00:10 and from then on overlap it both."""
    reg = butler.registry
    reg.decertify("sky/calib", "skyFrame", Timespan(None, None), data_ids=[{"instrument": "Cam", "physical_filter": "r1", "detector": 0}])
    first, second = (butler.find_dataset("skyFrame", instrument="Cam", physical_filter="r1", detector=0, collections=run)
                     for run in ("sky/r_early", "sky/r_late"))
    reg.certify("sky/calib", [first], Timespan("2020-01-01T00:00:00", "2020-01-01T01:00:10"))
    reg.certify("sky/calib", [second], Timespan("2020-01-01T01:00:10", None))
    with pytest.raises(GraphBuildError, match="2 'skyFrame' datasets .* valid during .*'sky/calib'") as err:
        build(butler)
    assert str(first.id) in str(err.value) and str(second.id) in str(err.value)


def test_quanta_without_exposure_or_visit_cannot_use_calibration_collections(butler):
    with pytest.raises(GraphBuildError, match="'skyFrame'.*CALIBRATION collection.*no exposure or visit"):
        build(butler, DetectorSkyTask)
