"""Quantum graph building (`graph/builder.py`) over the toy camera of ``tests/conftest.py``.

The repository has 10 visits x 4 detectors; ``toy_input`` exists for every visit+detector except the
holes below, so every expected quantum set is known exactly.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import toy_tasks
from conftest import N_DETECTORS, N_VISITS, detector_corners, patch_corners

from butler import Butler, DatasetIdGenEnum, DatasetRef
from graph import (
    Input,
    NoWorkFound,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    PrerequisiteInput,
)
from graph.builder import (
    BuildReport,
    _dataset_id_maker,
    _quantum_id_maker,
    build_quantum_graph,
)
from graph.errors import GraphBuildError
from graph.pipeline import Pipeline
from graph.quantum import Quantum
from graph.task_metadata import TaskMetadata

HOLES = {(3, 1), (5, 0), (5, 1), (5, 2), (5, 3)}  # (visit, detector) without toy_input; visit 5 has none
PRESENT = {(v, d) for v in range(N_VISITS) for d in range(N_DETECTORS)} - HOLES
VD = toy_tasks.VISIT_DETECTOR


# Test tasks -------------------------------------------------------------------------------------------


class DropDetectorTwoConnections(toy_tasks.AddOneConnections):
    """AddOne whose quanta of detector 2 have nothing to do (NoWorkFound from adjustQuantum)."""

    def adjustQuantum(self, inputs, outputs, label, data_id):  # noqa: N802
        if data_id["detector"] == 2:
            raise NoWorkFound(f"detector 2 is masked ({data_id})")
        return super().adjustQuantum(inputs, outputs, label, data_id)


class DropDetectorTwoConfig(PipelineTaskConfig, pipelineConnections=DropDetectorTwoConnections):
    pass


class DropDetectorTwoTask(toy_tasks.AddOneTask):
    ConfigClass = DropDetectorTwoConfig


LOOKUP_CALLS: list = []


def flat_of_detector_zero(dataset_type, butler, data_id, collections):
    """A lookupFunction: every quantum uses detector 0's flat."""
    LOOKUP_CALLS.append(data_id)
    ref = butler.registry.find_dataset(dataset_type.name, {"instrument": "Cam", "detector": 0}, collections=collections)
    return [ref] if ref is not None else []


class LookupFlattenConnections(toy_tasks.FlattenConnections):
    flat = PrerequisiteInput(
        name="toy_flat", storageClass="NumpyArray", dimensions=("instrument", "detector"), lookupFunction=flat_of_detector_zero
    )


class LookupFlattenConfig(PipelineTaskConfig, pipelineConnections=LookupFlattenConnections):
    pass


class LookupFlattenTask(toy_tasks.FlattenTask):
    ConfigClass = LookupFlattenConfig


class PatchConnections(PipelineTaskConnections, dimensions=("skymap", "tract", "patch")):
    images = Input(name="toy_input", storageClass="NumpyArray", dimensions=VD, multiple=True)
    coadd = Output(name="toy_coadd", storageClass="NumpyArray", dimensions=("skymap", "tract", "patch"))


class PatchConfig(PipelineTaskConfig, pipelineConnections=PatchConnections):
    pass


class PatchTask(PipelineTask):
    ConfigClass = PatchConfig
    _DefaultName = "patch"


class OneDetectorPerVisitConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    image = Input(name="toy_input", storageClass="NumpyArray", dimensions=VD)  # not multiple: a mistake
    out = Output(name="toy_visit_out", storageClass="NumpyArray", dimensions=("instrument", "visit"))


class OneDetectorPerVisitConfig(PipelineTaskConfig, pipelineConnections=OneDetectorPerVisitConnections):
    pass


class OneDetectorPerVisitTask(PipelineTask):
    ConfigClass = OneDetectorPerVisitConfig
    _DefaultName = "oneDetector"


class ReadMetadataConnections(PipelineTaskConnections, dimensions=VD):
    metadata = Input(name="isr_metadata", storageClass="TaskMetadata", dimensions=VD)
    out = Output(name="toy_md_out", storageClass="NumpyArray", dimensions=VD)


class ReadMetadataConfig(PipelineTaskConfig, pipelineConnections=ReadMetadataConnections):
    pass


class ReadMetadataTask(PipelineTask):
    ConfigClass = ReadMetadataConfig
    _DefaultName = "readMetadata"


# Fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture
def butler(populated: Butler) -> Butler:
    """The toy camera with ``toy_input`` in run ``inputs`` for every visit+detector but the holes."""
    populated.register_dataset_type("toy_input", VD, "NumpyArray")
    for visit, detector in sorted(PRESENT):
        populated.put(np.full(3, float(visit)), "toy_input", instrument="Cam", visit=visit, detector=detector, run="inputs")
    return populated


def toy_pipeline(isr_class: type = toy_tasks.AddOneTask) -> Pipeline:
    """isr -> calib (per visit+detector) -> sum (per visit, every detector of the visit)."""
    pipeline = Pipeline("builder tests")
    pipeline.add_task(isr_class, "isr", config={"connections": {"out": "toy_stage1"}})
    pipeline.add_task(toy_tasks.AddOneTask, "calib", config={"connections": {"input": "toy_stage1"}})
    pipeline.add_task(toy_tasks.SumDetectorsTask, "sum")
    return pipeline


def build(butler: Butler, pipeline: Pipeline | None = None, **kwargs):
    kwargs.setdefault("input_collections", ["inputs"])
    kwargs.setdefault("output_run", "out")
    return build_quantum_graph((pipeline or toy_pipeline()).to_graph(butler.dimensions), butler, **kwargs)


def vd(quanta) -> set[tuple[int, int]]:
    return {(q.data_id["visit"], q.data_id["detector"]) for q in quanta}


def detectors_of(refs) -> list[int]:
    return [r.data_id["detector"] for r in refs]


# Quanta -------------------------------------------------------------------------------------------------


def test_toy_pipeline_has_exactly_the_expected_quanta(butler):
    graph, report = build(butler)
    assert graph.summary() == {"isr": 35, "calib": 35, "sum": 9}
    assert vd(graph.quanta_for("isr")) == PRESENT
    assert vd(graph.quanta_for("calib")) == PRESENT
    sums = {q.data_id["visit"]: q for q in graph.quanta_for("sum")}
    assert set(sums) == set(range(N_VISITS)) - {5}
    for visit, quantum in sums.items():
        expected = sorted(d for v, d in PRESENT if v == visit)
        assert detectors_of(quantum.inputs["images"]) == expected  # [0, 2, 3] for visit 3
        assert {r.dataset_type.name for r in quantum.inputs["images"]} == {"toy_output"}
    assert report.tasks["sum"].pruned == {"no 'toy_output' input": 1}  # visit 5: no detector survived
    assert (report.built, report.skipped, report.pruned) == (79, 0, 1)


def test_quanta_have_full_data_ids_and_predicted_outputs_in_the_output_run(butler):
    graph, _ = build(butler)
    quantum = next(q for q in graph.quanta_for("calib") if (q.data_id["visit"], q.data_id["detector"]) == (3, 2))
    assert quantum.data_id.has_full() and quantum.data_id["band"] == "r" and quantum.data_id["physical_filter"] == "r1"
    (output,) = quantum.outputs["output"]
    assert (output.dataset_type.name, output.run, output.data_id) == ("toy_output", "out", quantum.data_id)
    assert output.data_id.has_full()
    assert quantum.metadata_ref.dataset_type.name == "calib_metadata" and quantum.metadata_ref.run == "out"
    assert quantum.log_ref.dataset_type.name == "calib_log"
    (sum_quantum,) = [q for q in graph.quanta_for("sum") if q.data_id["visit"] == 3]
    (visit_sum,) = sum_quantum.outputs["sum"]
    assert dict(visit_sum.data_id.items()) == {"instrument": "Cam", "visit": 3, "band": "r", "day_obs": 20200101, "physical_filter": "r1"}


def test_no_log_ref_when_the_task_does_not_save_logs(butler):
    pipeline = toy_pipeline()
    pipeline.add_config_override("calib", "saveLogOutput", False)
    graph, _ = build(butler, pipeline)
    assert all(q.log_ref is None for q in graph.quanta_for("calib"))
    assert all(q.log_ref is not None for q in graph.quanta_for("isr"))


def test_where_expression_restricts_quanta_and_inputs(butler):
    graph, report = build(butler, where="visit IN (1..3) AND detector != 2")
    expected = {(v, d) for v, d in PRESENT if 1 <= v <= 3 and d != 2}
    assert vd(graph.quanta_for("isr")) == expected
    assert vd(graph.quanta_for("calib")) == expected
    sums = {q.data_id["visit"]: detectors_of(q.inputs["images"]) for q in graph.quanta_for("sum")}
    assert sums == {1: [0, 1, 3], 2: [0, 1, 3], 3: [0, 3]}
    assert report.tasks["isr"].data_ids == len(expected)


def test_where_with_bind_and_data_id(butler):
    graph, _ = build(butler, where="visit = my_visit OR band = 'x'", bind={"my_visit": 7}, data_id={"instrument": "Cam"})
    assert vd(graph.quanta_for("isr")) == {(7, d) for d in range(N_DETECTORS)}
    assert [q.data_id["visit"] for q in graph.quanta_for("sum")] == [7]


def test_where_on_an_implied_dimension(butler):
    graph, _ = build(butler, where="band = 'r'")
    assert {q.data_id["visit"] for q in graph.quanta_for("sum")} == {1, 3, 7, 9}  # odd visits are r; 5 has no input
    assert vd(graph.quanta_for("isr")) == {(v, d) for v, d in PRESENT if v % 2}


# Pruning --------------------------------------------------------------------------------------------------


def test_no_work_found_prunes_and_cascades_downstream(butler):
    graph, report = build(butler, toy_pipeline(DropDetectorTwoTask))
    kept = {(v, d) for v, d in PRESENT if d != 2}
    n_dropped = len(PRESENT) - len(kept)
    assert vd(graph.quanta_for("isr")) == kept
    assert vd(graph.quanta_for("calib")) == kept
    assert report.tasks["isr"].pruned == {"NoWorkFound from adjustQuantum": n_dropped}
    assert "detector 2 is masked" in report.tasks["isr"].examples["NoWorkFound from adjustQuantum"]
    assert report.tasks["calib"].pruned == {"no 'toy_stage1' input": n_dropped}
    assert all(2 not in detectors_of(q.inputs["images"]) for q in graph.quanta_for("sum"))
    assert len(graph.quanta_for("sum")) == 9


def test_missing_prerequisite_prunes_with_a_counted_reason(butler):
    butler.register_dataset_type("toy_flat", ("instrument", "detector"), "NumpyArray")
    for detector in (0, 1, 2):  # no flat for detector 3
        butler.put(np.ones(3), "toy_flat", instrument="Cam", detector=detector, run="flats")
    pipeline = Pipeline("flatten")
    pipeline.add_task(toy_tasks.FlattenTask, "flatten")
    graph, report = build(butler, pipeline, input_collections=["inputs", "flats"])
    assert vd(graph.quanta_for("flatten")) == {(v, d) for v, d in PRESENT if d != 3}
    n_detector_three = sum(1 for _, d in PRESENT if d == 3)
    assert report.tasks["flatten"].pruned == {"missing prerequisite 'toy_flat'": n_detector_three}
    for quantum in graph.quanta_for("flatten"):
        assert detectors_of(quantum.inputs["flat"]) == [quantum.data_id["detector"]]
        assert quantum.inputs["flat"][0].run == "flats"
    assert "missing prerequisite 'toy_flat': 9" in str(report)


def test_prerequisite_lookup_function_is_used(butler):
    butler.register_dataset_type("toy_flat", ("instrument", "detector"), "NumpyArray")
    flat0 = butler.put(np.ones(3), "toy_flat", instrument="Cam", detector=0, run="flats")
    pipeline = Pipeline("flatten")
    pipeline.add_task(LookupFlattenTask, "flatten")
    LOOKUP_CALLS.clear()
    graph, _ = build(butler, pipeline, input_collections=["inputs", "flats"])
    assert len(graph) == len(PRESENT) == len(LOOKUP_CALLS)
    assert all([r.id for r in q.inputs["flat"]] == [flat0.id] for q in graph.quanta.values())
    assert flat0.id in graph.datastore_records


def test_non_multiple_input_matching_several_datasets_is_an_error(butler):
    pipeline = Pipeline("bad")
    pipeline.add_task(OneDetectorPerVisitTask, "one")
    with pytest.raises(GraphBuildError, match="not `multiple`.*multiple=True"):
        build(butler, pipeline)


def test_spatial_relation_gives_each_patch_its_overlapping_detectors(butler):
    pipeline = Pipeline("coadd")
    pipeline.add_task(PatchTask, "coadd")
    graph, report = build(butler, pipeline)

    def overlaps(v: int, d: int, p: int) -> bool:
        (lo, hi), (plo, phi) = (min(detector_corners(v, d)[0]), max(detector_corners(v, d)[0])), (
            min(patch_corners(p)[0]), max(patch_corners(p)[0]))
        return lo < phi and plo < hi

    expected = {p: sorted((v, d) for v, d in PRESENT if overlaps(v, d, p)) for p in range(10)}
    expected = {p: vds for p, vds in expected.items() if vds}
    got = {q.data_id["patch"]: sorted((r.data_id["visit"], r.data_id["detector"]) for r in q.inputs["images"]) for q in graph.quanta.values()}
    assert got == expected
    assert set(got) == {3, 4, 5, 6}
    assert report.tasks["coadd"].pruned == {"no 'toy_input' input": 6}


class ExposureToVisitConnections(PipelineTaskConnections, dimensions=VD):
    exposure = Input(name="toy_exposure_input", storageClass="NumpyArray", dimensions=("instrument", "exposure", "detector"))
    out = Output(name="toy_visit_image", storageClass="NumpyArray", dimensions=VD)


class ExposureToVisitConfig(PipelineTaskConfig, pipelineConnections=ExposureToVisitConnections):
    pass


class ExposureToVisitTask(PipelineTask):
    ConfigClass = ExposureToVisitConfig
    _DefaultName = "exposureToVisit"


def test_exposure_inputs_of_visit_quanta_follow_the_visit_definition(butler):
    # Exposures 100 + v share every implied value (filter, day_obs) within a day, so only
    # visit_definition tells which one belongs to a visit.
    reg = butler.registry
    reg.insert_dimension_data(
        "exposure",
        *[{"instrument": "Cam", "id": 100 + v, "physical_filter": "r1" if v % 2 else "g1",
           "day_obs": 20200101 if v < 5 else 20200102} for v in range(N_VISITS)],
    )
    reg.insert_dimension_data("visit_definition", *[{"instrument": "Cam", "exposure": 100 + v, "visit": v} for v in range(N_VISITS)])
    butler.register_dataset_type("toy_exposure_input", ("instrument", "exposure", "detector"), "NumpyArray")
    for v, d in sorted(PRESENT):
        butler.put(np.zeros(1), "toy_exposure_input", instrument="Cam", exposure=100 + v, detector=d, run="inputs")
    pipeline = Pipeline("exposure to visit")
    pipeline.add_task(ExposureToVisitTask, "toVisit")
    graph, _ = build(butler, pipeline)
    got = {(q.data_id["visit"], q.data_id["detector"]): [r.data_id["exposure"] for r in q.inputs["exposure"]]
           for q in graph.quanta.values()}
    assert got == {(v, d): [100 + v] for v, d in PRESENT}


PATCH_VISIT = ("skymap", "tract", "patch", "instrument", "visit")


class PatchVisitConnections(PipelineTaskConnections, dimensions=PATCH_VISIT):
    images = Input(name="toy_input", storageClass="NumpyArray", dimensions=VD, multiple=True)
    warp = Output(name="toy_warp", storageClass="NumpyArray", dimensions=PATCH_VISIT)


class PatchVisitConfig(PipelineTaskConfig, pipelineConnections=PatchVisitConnections):
    pass


class PatchVisitTask(PipelineTask):
    ConfigClass = PatchVisitConfig
    _DefaultName = "patchVisit"


class TractMatchConnections(PipelineTaskConnections, dimensions=("skymap", "tract")):
    warps = Input(name="toy_warp", storageClass="NumpyArray", dimensions=PATCH_VISIT, multiple=True)
    matched = Output(name="toy_matched_warp", storageClass="NumpyArray", dimensions=PATCH_VISIT, multiple=True)


class TractMatchConfig(PipelineTaskConfig, pipelineConnections=TractMatchConnections):
    pass


class TractMatchTask(PipelineTask):
    ConfigClass = TractMatchConfig
    _DefaultName = "tractMatch"


def _ra_overlap(v: int, d: int, p: int) -> bool:
    lo, hi = min(detector_corners(v, d)[0]), max(detector_corners(v, d)[0])
    plo, phi = min(patch_corners(p)[0]), max(patch_corners(p)[0])
    return lo < phi and plo < hi


def test_patch_visit_quanta_read_only_the_detectors_of_their_visit_on_their_patch(butler):
    pipeline = Pipeline("warps")
    pipeline.add_task(PatchVisitTask, "warp")
    graph, _ = build(butler, pipeline)
    expected: dict[tuple[int, int], list[int]] = {}
    for v, d in sorted(PRESENT):
        for p in range(10):
            if _ra_overlap(v, d, p):
                expected.setdefault((p, v), []).append(d)
    got = {(q.data_id["patch"], q.data_id["visit"]): sorted(r.data_id["detector"] for r in q.inputs["images"])
           for q in graph.quanta.values()}
    assert got == expected


def test_a_multiple_output_with_an_inputs_dimensions_gets_one_ref_per_input(butler):
    pipeline = Pipeline("match")
    pipeline.add_task(PatchVisitTask, "warp")
    pipeline.add_task(TractMatchTask, "match")
    graph, _ = build(butler, pipeline)
    (quantum,) = graph.quanta_for("match")
    inputs = sorted(r.data_id.required_values for r in quantum.inputs["warps"])
    outputs = sorted(r.data_id.required_values for r in quantum.outputs["matched"])
    assert outputs == inputs and len(inputs) == len(graph.quanta_for("warp"))
    assert all(r.dataset_type.name == "toy_matched_warp" for r in quantum.outputs["matched"])


# Existing outputs -----------------------------------------------------------------------------------------


def _register(butler: Butler, pipeline: Pipeline | None = None) -> None:
    (pipeline or toy_pipeline()).to_graph(butler.dimensions).register_dataset_types(butler)


def test_skip_existing_in_drops_completed_quanta_and_reuses_their_outputs(butler):
    _register(butler)
    done = [(0, d) for d in range(N_DETECTORS)] + [(1, 0)]
    existing = {}
    for visit, detector in done:
        data_id = {"instrument": "Cam", "visit": visit, "detector": detector}
        butler.put(TaskMetadata(), "isr_metadata", data_id, run="out")
        existing[(visit, detector)] = butler.put(np.zeros(3), "toy_stage1", data_id, run="out")
    graph, report = build(butler, skip_existing_in=["out"])
    assert vd(graph.quanta_for("isr")) == PRESENT - set(done)
    assert report.tasks["isr"].skipped == len(done)
    assert vd(graph.quanta_for("calib")) == PRESENT
    for quantum in graph.quanta_for("calib"):
        key = (quantum.data_id["visit"], quantum.data_id["detector"])
        (ref,) = quantum.inputs["input"]
        if key in existing:
            assert ref.id == existing[key].id and graph.producer_of(ref.id) is None
            assert ref.id in graph.datastore_records
            assert graph.graph.in_degree(quantum.id) == 0
        else:
            assert graph.producer_of(ref.id).task_label == "isr"


def test_skipped_provenance_outputs_become_inline_inputs(butler):
    pipeline = toy_pipeline()
    pipeline.add_task(ReadMetadataTask, "readMd")
    _register(butler, pipeline)
    metadata = TaskMetadata()
    metadata["answer"] = 42
    md_ref = butler.put(metadata, "isr_metadata", {"instrument": "Cam", "visit": 0, "detector": 0}, run="out")
    butler.put(np.zeros(3), "toy_stage1", {"instrument": "Cam", "visit": 0, "detector": 0}, run="out")
    graph, _ = build(butler, pipeline, skip_existing_in=["out"])
    (quantum,) = [q for q in graph.quanta_for("readMd") if (q.data_id["visit"], q.data_id["detector"]) == (0, 0)]
    assert [r.id for r in quantum.inputs["metadata"]] == [md_ref.id]
    record = graph.datastore_records[md_ref.id]
    assert record.is_inline and record.inline and b"42" in record.inline
    # the other readMd quanta read the metadata the new isr quanta will write
    assert len(graph.quanta_for("readMd")) == len(PRESENT)


def test_existing_outputs_without_skip_or_clobber_are_an_error(butler):
    _register(butler)
    for detector in (0, 1):
        butler.put(np.zeros(3), "toy_stage1", {"instrument": "Cam", "visit": 2, "detector": detector}, run="out")
    with pytest.raises(GraphBuildError, match=r"2 output dataset\(s\).*'out'.*--skip-existing-in.*--clobber-outputs"):
        build(butler)
    graph, _ = build(butler, clobber_outputs=True)
    assert len(graph) == 79
    graph, _ = build(butler, output_run="other")  # another run is fine
    assert len(graph) == 79


def test_all_quanta_complete_gives_an_empty_graph_error(butler):
    pipeline = Pipeline("isr only")
    pipeline.add_task(toy_tasks.AddOneTask, "isr")
    _register(butler, pipeline)
    for visit, detector in PRESENT:
        butler.put(TaskMetadata(), "isr_metadata", {"instrument": "Cam", "visit": visit, "detector": detector}, run="out")
    with pytest.raises(GraphBuildError, match="already completed") as info:
        build(butler, pipeline, skip_existing_in=["out"])
    assert info.value.report.tasks["isr"].skipped == len(PRESENT)


# IDs, edges, records ---------------------------------------------------------------------------------------


def test_rebuilding_gives_the_same_quantum_and_dataset_ids(butler):
    first, _ = build(butler)
    second, _ = build(butler)
    assert set(first.quanta) == set(second.quanta)
    for qid, quantum in first.quanta.items():
        other = second.quanta[qid]
        assert [r.id for r in quantum.output_refs()] == [r.id for r in other.output_refs()]
        assert {n: [r.id for r in refs] for n, refs in quantum.inputs.items()} == {
            n: [r.id for r in refs] for n, refs in other.inputs.items()
        }
    assert {k: r.id for k, r in first.init_refs["isr"].items()} == {k: r.id for k, r in second.init_refs["isr"].items()}
    assert first.packages_ref.id == second.packages_ref.id


def test_ids_are_those_of_the_public_id_functions(butler):
    graph, _ = build(butler)
    for quantum in list(graph.quanta.values())[::7]:
        assert quantum.id == Quantum.make_id("out", quantum.task_label, quantum.data_id)
        for ref in quantum.output_refs():
            assert ref.id == DatasetRef.make_id(ref.dataset_type, ref.data_id, "out", DatasetIdGenEnum.DATAID_TYPE_RUN)
    # the fast makers agree for string values, odd runs and empty data IDs too
    ref = graph.init_refs["isr"]["config"]
    assert _dataset_id_maker(ref.dataset_type, "u/a,b=c")(ref.data_id) == DatasetRef.make_id(
        ref.dataset_type, ref.data_id, "u/a,b=c", DatasetIdGenEnum.DATAID_TYPE_RUN
    )
    quantum = graph.quanta_for("sum")[0]
    assert _quantum_id_maker("r{x}", "sum", quantum.data_id.dimensions)(quantum.data_id) == Quantum.make_id("r{x}", "sum", quantum.data_id)
    assert isinstance(quantum.id, uuid.UUID) and quantum.id.version == 5


def test_each_per_visit_quantum_depends_on_exactly_its_detector_quanta(butler):
    graph, _ = build(butler)
    calib = {(q.data_id["visit"], q.data_id["detector"]): q.id for q in graph.quanta_for("calib")}
    isr = {(q.data_id["visit"], q.data_id["detector"]): q.id for q in graph.quanta_for("isr")}
    for quantum in graph.quanta_for("sum"):
        visit = quantum.data_id["visit"]
        assert set(graph.graph.predecessors(quantum.id)) == {qid for (v, _), qid in calib.items() if v == visit}
    for key, qid in calib.items():
        assert set(graph.graph.predecessors(qid)) == {isr[key]}
    assert all(graph.graph.in_degree(qid) == 0 for qid in isr.values())
    assert graph.graph.number_of_edges() == len(PRESENT) * 2  # isr -> calib, calib -> sum
    position = {q.id: i for i, q in enumerate(graph)}
    assert len(position) == len(graph)
    assert all(position[a] < position[b] for a, b in graph.graph.edges)


def test_datastore_records_of_every_overall_input(butler):
    graph, _ = build(butler)
    inputs = {r.id for q in graph.quanta_for("isr") for r in q.inputs["input"]}
    assert set(graph.datastore_records) == inputs and len(inputs) == len(PRESENT)
    record = graph.datastore_records[next(iter(inputs))]
    assert record.storage_class == "NumpyArray" and record.path.endswith(".npy") and record.file_size > 0


def test_init_refs_and_packages_ref(butler):
    pipeline = toy_pipeline()
    pipeline.add_task(toy_tasks.StatsTask, "stats")
    graph, _ = build(butler, pipeline)
    assert set(graph.init_refs) == {"isr", "calib", "sum", "stats"}
    assert set(graph.init_refs["stats"]) == {"config", "statsSchema"}
    assert graph.init_refs["stats"]["config"].dataset_type.name == "stats_config"
    assert graph.init_refs["stats"]["statsSchema"].dataset_type.name == "toy_stats_schema"
    assert all(r.run == "out" and not r.data_id.dimensions.names for refs in graph.init_refs.values() for r in refs.values())
    assert graph.packages_ref.dataset_type.name == "packages" and graph.packages_ref.run == "out"


# Errors and report ------------------------------------------------------------------------------------------


def test_unregistered_overall_input_is_named(populated):
    with pytest.raises(GraphBuildError, match="'toy_input' \\(read by isr\\).*not registered"):
        build(populated)


def test_unknown_input_collection_is_an_error(butler):
    with pytest.raises(GraphBuildError, match="nope"):
        build(butler, input_collections=["nope"])


def test_bad_where_is_an_error(butler):
    with pytest.raises(GraphBuildError, match="invalid"):
        build(butler, where="visit = = 3")


def test_empty_graph_explains_which_constraint_matched_nothing(butler):
    with pytest.raises(GraphBuildError, match="no data IDs matched.*visit > 100") as info:
        build(butler, where="visit > 100")
    assert isinstance(info.value.report, BuildReport)


def test_report_table(butler):
    _, report = build(butler, toy_pipeline(DropDetectorTwoTask), where="visit < 4")
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["task", "data", "IDs", "quanta", "skipped"]
    isr = next(line for line in lines if line.startswith("isr "))
    assert isr.split()[:5] == ["isr", "15", "11", "0", "4"] and "NoWorkFound from adjustQuantum: 4" in isr
    assert "no 'toy_stage1' input: 4" in next(line for line in lines if line.startswith("calib "))
    assert lines[-1].split()[:3] == ["TOTAL", "34", "26"]
    assert report.to_dict()["tasks"][0]["pruned"] == {"NoWorkFound from adjustQuantum": 4}


def test_progress_bars_go_to_stderr(butler, capsys):
    build(butler, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "quanta of isr" in captured.err
