"""Saving and loading quantum graphs (`QuantumGraph.save` / `QuantumGraph.load` in `graph/quantum_graph.py`)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import toy_tasks

from butler import Butler, DimensionUniverse
from graph import Config, ConfigurableField, Field, PipelineTaskConfig, Task
from graph.builder import build_quantum_graph
from graph.errors import GraphFileError
from graph.pipeline import Pipeline
from graph.pipeline_graph import PipelineGraph, TaskNode
from graph.quantum_graph import QuantumGraph
from graph.task_metadata import TaskMetadata

VD = toy_tasks.VISIT_DETECTOR
HOLES = {(3, 1), (5, 0), (5, 1), (5, 2), (5, 3)}


# A task with a retargeted subtask and setDefaults, to check configs are rebuilt exactly --------------------


class ScaleConfig(Config):
    factor: float = Field(1.0, description="Multiplier.")


class ScaleTask(Task):
    ConfigClass = ScaleConfig
    _DefaultName = "scale"


class FancyScaleConfig(ScaleConfig):
    offset: int = Field(0, description="Added after scaling.")


class FancyScaleTask(ScaleTask):
    ConfigClass = FancyScaleConfig


class SubtaskAddOneConfig(PipelineTaskConfig, pipelineConnections=toy_tasks.AddOneConnections):
    scaler: ScaleConfig = ConfigurableField(target=ScaleTask, doc="Scaling subtask.")
    threshold: float = Field(1.0, description="A threshold.")
    names: tuple[str, ...] = Field(("a",), description="Some names.")

    def setDefaults(self) -> None:
        super().setDefaults()
        self.threshold = 3.0
        self.scaler.factor = 5.0


class SubtaskAddOneTask(toy_tasks.AddOneTask):
    ConfigClass = SubtaskAddOneConfig


# Helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture
def butler(populated: Butler) -> Butler:
    populated.register_dataset_type("toy_input", VD, "NumpyArray")
    for visit in range(10):
        for detector in range(4):
            if (visit, detector) not in HOLES:
                populated.put(np.zeros(2), "toy_input", instrument="Cam", visit=visit, detector=detector, run="inputs")
    return populated


def fancy_pipeline_graph(universe: DimensionUniverse) -> PipelineGraph:
    """isr (subtask retargeted, overrides over setDefaults) -> calib -> sum, plus stats (an InitOutput)."""
    config = SubtaskAddOneConfig()
    config.scaler.retarget(FancyScaleTask)
    config.scaler.offset = 4
    config.scaler.factor = 0.5
    config.threshold = 7.5
    config.names = ("x", "y")
    config.connections.out = "toy_stage1"
    pipeline = Pipeline("io tests")
    pipeline.add_task(toy_tasks.AddOneTask, "calib", config={"connections": {"input": "toy_stage1"}, "value": 2.5})
    pipeline.add_task(toy_tasks.SumDetectorsTask, "sum")
    pipeline.add_task(toy_tasks.StatsTask, "stats", config={"doWriteMask": False})
    others = pipeline.to_graph(universe)
    nodes = [TaskNode.from_config("isr", SubtaskAddOneTask, config, universe)] + list(others.tasks.values())
    return PipelineGraph(nodes, universe, description="io tests")


@pytest.fixture
def graph(butler: Butler) -> QuantumGraph:
    fancy = fancy_pipeline_graph(butler.dimensions)
    fancy.register_dataset_types(butler)
    # one completed isr quantum, so the graph also holds an inline (metadata) record... of a skipped quantum's
    # output read downstream: toy_stage1 of (0, 0)
    data_id = {"instrument": "Cam", "visit": 0, "detector": 0}
    butler.put(TaskMetadata(), "isr_metadata", data_id, run="out")
    butler.put(np.zeros(2), "toy_stage1", data_id, run="out")
    built, _ = build_quantum_graph(
        fancy, butler, input_collections=["inputs"], output_run="out", where="visit < 8", skip_existing_in=["out"]
    )
    return built


def ref_key(ref):
    if ref is None:
        return None
    return (ref.id, ref.dataset_type, ref.run, tuple(ref.data_id.items()))


def quantum_key(q):
    return (
        q.id,
        q.task_label,
        tuple(q.data_id.items()),
        {name: [ref_key(r) for r in refs] for name, refs in q.inputs.items()},
        {name: [ref_key(r) for r in refs] for name, refs in q.outputs.items()},
        ref_key(q.metadata_ref),
        ref_key(q.log_ref),
    )


def rewrite(path: Path, change) -> None:
    """Decompress a saved graph, apply ``change`` to its bytes, recompress."""
    data = gzip.decompress(path.read_bytes())
    new = change(data)
    assert new != data
    path.write_bytes(gzip.compress(new))


# Round trip ---------------------------------------------------------------------------------------------------


def test_loaded_graph_equals_the_saved_one(graph, butler, tmp_path):
    path = tmp_path / "g.qgraph"
    graph.save(path)
    loaded = QuantumGraph.load(path, universe=butler.dimensions)
    # visits 0-7 have 27 toy_input (holes (3, 1) and visit 5); isr (0, 0) completed; sum has 7 visits
    assert loaded.summary() == graph.summary() == {"isr": 26, "calib": 27, "sum": 7, "stats": 27}
    assert {qid: quantum_key(q) for qid, q in loaded.quanta.items()} == {qid: quantum_key(q) for qid, q in graph.quanta.items()}
    assert set(loaded.graph.edges) == set(graph.graph.edges) and loaded.graph.number_of_edges() > 0
    assert [q.id for q in loaded] == [q.id for q in graph]
    assert (loaded.output_run, loaded.input_collections, loaded.metadata) == (graph.output_run, graph.input_collections, graph.metadata)
    assert {k: {n: ref_key(r) for n, r in v.items()} for k, v in loaded.init_refs.items()} == {
        k: {n: ref_key(r) for n, r in v.items()} for k, v in graph.init_refs.items()
    }
    assert ref_key(loaded.packages_ref) == ref_key(graph.packages_ref)
    assert {k: v.to_simple() for k, v in loaded.datastore_records.items()} == {
        k: v.to_simple() for k, v in graph.datastore_records.items()
    }
    assert len(loaded.datastore_records) == 27  # toy_input of the 26 isr quanta + the existing toy_stage1
    assert loaded.quanta[next(iter(loaded.quanta))].data_id.has_full()


def test_loaded_pipeline_has_the_same_tasks_and_configs(graph, butler, tmp_path):
    graph.save(tmp_path / "g.qgraph")
    loaded = QuantumGraph.load(tmp_path / "g.qgraph", universe=butler.dimensions).pipeline_graph
    original = graph.pipeline_graph
    assert list(loaded.tasks) == list(original.tasks)
    for label, task in original.tasks.items():
        other = loaded.tasks[label]
        assert other.task_class is task.task_class
        assert other.config.to_dict() == task.config.to_dict()
        assert other.config.frozen
        assert other.dimensions == task.dimensions
        assert set(other.connections.allConnections) == set(task.connections.allConnections)
    isr = loaded.tasks["isr"].config
    assert type(isr.scaler) is FancyScaleConfig and isr.scaler.target is FancyScaleTask
    assert (isr.scaler.factor, isr.scaler.offset, isr.threshold, isr.names) == (0.5, 4, 7.5, ("x", "y"))
    assert "mask" not in loaded.tasks["stats"].connections.allConnections
    assert loaded.tasks["calib"].config.value == 2.5


def test_each_ref_is_stored_once(graph, tmp_path):
    graph.save(tmp_path / "g.qgraph")
    document = json.loads(gzip.decompress((tmp_path / "g.qgraph").read_bytes()))
    ids = {r.id for q in graph.quanta.values() for r in [*q.input_refs(), *q.output_refs()]}
    ids |= {r.id for refs in graph.init_refs.values() for r in refs.values()} | {graph.packages_ref.id}
    table = document["payload"]["datasets"]
    assert len(table) == len(ids) == len({row[0] for row in table})


def test_file_is_gzip_json_with_a_checksum_of_the_canonical_payload(graph, tmp_path):
    (tmp_path / "graphs").mkdir()
    path = tmp_path / "graphs" / "g.qgraph"
    graph.save(path)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    document = json.loads(gzip.decompress(path.read_bytes()))
    assert (document["format"], document["version"]) == ("butler-pipelines-qgraph", 1)
    canonical = json.dumps(document["payload"], sort_keys=True, separators=(",", ":")).encode()
    assert document["checksum"] == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert document["payload"]["universe"] == {"namespace": "butler", "version": DimensionUniverse.default().version}
    assert [p.name for p in path.parent.iterdir()] == ["g.qgraph"]  # no temporary file left


def test_reformatted_but_unchanged_file_still_loads(graph, butler, tmp_path):
    path = tmp_path / "g.qgraph"
    graph.save(path)
    rewrite(path, lambda data: json.dumps(json.loads(data), indent=1).encode())
    assert len(QuantumGraph.load(path, universe=butler.dimensions)) == len(graph)


def test_saving_twice_gives_identical_files(graph, tmp_path):
    graph.save(tmp_path / "a.qgraph")
    graph.save(tmp_path / "b.qgraph")
    assert (tmp_path / "a.qgraph").read_bytes() == (tmp_path / "b.qgraph").read_bytes()


# Damaged and foreign files ------------------------------------------------------------------------------------


def _flip_after(marker: bytes):
    """A change of the one hex character following ``marker`` ('0' <-> '1', else -> '0')."""

    def change(data: bytes) -> bytes:
        i = data.index(marker) + len(marker)
        return data[:i] + (b"1" if data[i : i + 1] == b"0" else b"0") + data[i + 1 :]

    return change


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.replace(b'"output_run":"out"', b'"output_run":"oat"', 1),
        _flip_after(b'"checksum":"sha256:'),
        _flip_after(b'"quanta":[["'),  # the first quantum's ID
        _flip_after(b'"datasets":[["'),  # the first dataset's ID
        lambda d: d.replace(b'"saveLogOutput":true', b'"saveLogOutput":fals', 1),  # no longer JSON
    ],
    ids=["output-run", "checksum", "quantum-id", "dataset-id", "broken-json"],
)
def test_tampered_file_is_refused(graph, butler, tmp_path, change):
    path = tmp_path / "g.qgraph"
    graph.save(path)
    rewrite(path, change)
    with pytest.raises(GraphFileError, match="damaged or modified|not valid JSON"):
        QuantumGraph.load(path, universe=butler.dimensions)


def test_payload_byte_change_is_reported_as_modified(graph, butler, tmp_path):
    path = tmp_path / "g.qgraph"
    graph.save(path)
    rewrite(path, lambda d: d.replace(b'"output_run":"out"', b'"output_run":"oat"', 1))
    with pytest.raises(GraphFileError, match="damaged or modified"):
        QuantumGraph.load(path, universe=butler.dimensions)


def test_newer_version_is_refused(graph, butler, tmp_path):
    path = tmp_path / "g.qgraph"
    graph.save(path)
    rewrite(path, lambda d: d.replace(b'"version":1,', b'"version":2,', 1))
    with pytest.raises(GraphFileError, match="written by a newer version.*version 2"):
        QuantumGraph.load(path, universe=butler.dimensions)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a gzip file", "not gzip-compressed"),
        (gzip.compress(b"\x00\xff{garbage"), "not valid JSON"),
        (gzip.compress(b'{"format": "something-else", "version": 1}'), "not a saved quantum graph"),
        (gzip.compress(b"[1, 2, 3]"), "not a saved quantum graph"),
        (gzip.compress(b'{"format": "butler-pipelines-qgraph", "version": "1"}'), "invalid format version"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "g.qgraph"
    path.write_bytes(content)
    with pytest.raises(GraphFileError, match=message):
        QuantumGraph.load(path)


def test_missing_file_is_a_graph_file_error(tmp_path):
    with pytest.raises(GraphFileError, match="cannot read"):
        QuantumGraph.load(tmp_path / "absent.qgraph")


def test_other_dimension_universe_is_refused(graph, butler, tmp_path):
    graph.save(tmp_path / "g.qgraph")
    other = DimensionUniverse({**butler.dimensions.config, "version": 99})
    with pytest.raises(GraphFileError, match=f"dimension universe butler v{butler.dimensions.version}.*v99"):
        QuantumGraph.load(tmp_path / "g.qgraph", universe=other)


def test_unimportable_task_class_is_a_graph_file_error(graph, butler, tmp_path):
    path = tmp_path / "g.qgraph"
    graph.save(path)
    document = json.loads(gzip.decompress(path.read_bytes()))
    document["payload"]["pipeline"]["tasks"][0]["class"] = "no_such_module.Task"
    body = json.dumps(document["payload"], sort_keys=True, separators=(",", ":")).encode()
    document["checksum"] = "sha256:" + hashlib.sha256(body).hexdigest()
    path.write_bytes(gzip.compress(json.dumps(document).encode()))
    with pytest.raises(GraphFileError, match="cannot rebuild task 'isr'.*no_such_module"):
        QuantumGraph.load(path, universe=butler.dimensions)
