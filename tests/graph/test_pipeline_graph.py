"""PipelineGraph: validation errors, order, queries, provenance types, registry checks and exports."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import toy_tasks

from butler import Butler, DatasetType
from graph import Input, Output, PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from graph.errors import PipelineDefinitionError
from graph.pipeline import Pipeline
from graph.pipeline_graph import PipelineGraph

VD = ("instrument", "visit", "detector")


def build(*tasks: tuple[str, type, Mapping[str, Any] | None]) -> PipelineGraph:
    """A graph from (label, task class, config overrides) triples, in that definition order."""
    pipeline = Pipeline("test pipeline", instrument="SimCam")
    for label, task_class, config in tasks:
        pipeline.add_task(task_class, label, config)
    return pipeline.to_graph()


ADD = ("addOne", toy_tasks.AddOneTask, None)
SUM = ("sum", toy_tasks.SumDetectorsTask, None)
STATS = ("stats", toy_tasks.StatsTask, None)
FLATTEN = ("flatten", toy_tasks.FlattenTask, None)


# Order and queries ------------------------------------------------------------------------------------------


def test_tasks_are_in_topological_order_with_ties_in_definition_order():
    graph = build(SUM, STATS, FLATTEN, ADD)  # sum and stats read addOne's output
    assert list(graph.tasks) == ["flatten", "addOne", "sum", "stats"]
    graph = build(STATS, ADD, FLATTEN, SUM)  # once addOne ran, stats is the earliest-defined runnable task
    assert list(graph.tasks) == ["addOne", "stats", "flatten", "sum"]


def test_overall_inputs_producers_and_downstream():
    graph = build(ADD, SUM, STATS, FLATTEN)
    assert set(graph.overall_inputs()) == {"toy_input", "toy_flat"}
    assert graph.overall_inputs()["toy_flat"].is_prerequisite
    assert not graph.overall_inputs()["toy_input"].is_prerequisite
    assert graph.producer_of("toy_output") == "addOne" and graph.producer_of("toy_input") is None
    assert graph.producer_of("stats_metadata") == "stats" and graph.producer_of("packages") is None
    assert graph.dataset_types["toy_output"].consumers == ["sum", "stats"]
    assert graph.downstream_labels("addOne") == ["sum", "stats"]
    assert graph.downstream_labels("flatten") == []
    with pytest.raises(PipelineDefinitionError, match="Did you mean 'toy_output'"):
        graph.producer_of("toy_outptu")


def test_inputs_and_outputs_follow_the_config():
    graph = build(ADD, STATS, ("stats2", toy_tasks.StatsTask, {"doWriteMask": False, "connections.stats": "toy_stats2", "connections.statsSchema": "toy_schema2"}))
    assert set(graph.outputs_of("stats")) == {"stats", "mask"}
    assert set(graph.outputs_of("stats2")) == {"stats"}
    assert "toy_mask" in graph.dataset_types and graph.dataset_types["toy_mask"].producer == "stats"
    connection, node = graph.inputs_of("addOne")["input"]
    assert connection.name == node.name == "toy_input" and node.storage_class == "NumpyArray"
    assert node.dimensions == graph.universe.conform(VD)
    schema = graph.init_outputs_of("stats")["statsSchema"][1]
    assert schema.is_init and len(schema.dimensions) == 0 and schema.producer == "stats"


def test_graph_edges_carry_connection_and_kind():
    graph = build(ADD, FLATTEN)
    edge = graph.graph.edges[("dataset", "toy_input"), ("task", "addOne")]
    assert (edge["connection"], edge["connections"], edge["kind"]) == ("input", ["input"], "input")
    assert graph.graph.edges[("dataset", "toy_flat"), ("task", "flatten")]["kind"] == "prerequisite"
    assert graph.graph.edges[("task", "addOne"), ("dataset", "toy_output")]["kind"] == "output"
    assert graph.graph.nodes[("task", "addOne")]["node"] is graph.tasks["addOne"]


def test_task_node_makes_a_working_task():
    graph = build(("addOne", toy_tasks.AddOneTask, {"value": 2, "scale": 3}), SUM)
    task = graph.tasks["addOne"].make_task()
    np.testing.assert_allclose(task.run(input=np.array([1.0, 2.0])).output, [5.0, 8.0])
    summed = graph.tasks["sum"].make_task().run(images=[np.ones(3), 2 * np.ones(3)]).sum
    np.testing.assert_allclose(summed, [3.0, 3.0, 3.0])


def test_provenance_dataset_types():
    graph = build(ADD, ("stats", toy_tasks.StatsTask, {"saveLogOutput": False}))
    prov = graph.provenance_dataset_types
    assert set(prov) == {"addOne_metadata", "addOne_log", "addOne_config", "stats_metadata", "stats_config", "packages"}
    assert prov["addOne_metadata"].storage_class == "TaskMetadata"
    assert prov["addOne_metadata"].dimensions == graph.tasks["addOne"].dimensions
    assert prov["addOne_log"].storage_class == "ButlerLogRecords"
    config = prov["stats_config"]
    assert (config.storage_class, len(config.dimensions), config.producer, config.is_init) == ("Config", 0, "stats", True)
    packages = prov["packages"]
    assert (packages.storage_class, packages.producer, packages.is_init) == ("Packages", None, True)
    assert not any(name in graph.dataset_types for name in prov)  # no connection edges for them
    node = graph.tasks["addOne"]
    assert (node.metadata_dataset_type, node.log_dataset_type, node.config_dataset_type) == (
        "addOne_metadata", "addOne_log", "addOne_config"
    )


class ReadMetadataConnections(PipelineTaskConnections, dimensions=VD):
    metadata = Input(name="addOne_metadata", storageClass="TaskMetadata", dimensions=VD)
    summary = Output(name="toy_summary", storageClass="StructuredDataDict", dimensions=VD)


class ReadMetadataConfig(PipelineTaskConfig, pipelineConnections=ReadMetadataConnections):
    pass


class ReadMetadataTask(PipelineTask):
    ConfigClass = ReadMetadataConfig
    _DefaultName = "readMetadata"

    def run(self, metadata: Any) -> Struct:
        return Struct(summary=dict(metadata))


def test_reading_another_tasks_metadata_makes_it_a_dependency():
    graph = build(("readMetadata", ReadMetadataTask, None), ADD)
    assert list(graph.tasks) == ["addOne", "readMetadata"]
    assert graph.producer_of("addOne_metadata") == "addOne"
    assert "addOne_metadata" not in graph.overall_inputs()


# Validation errors ------------------------------------------------------------------------------------------


def test_cycle_names_its_tasks_and_dataset_types():
    with pytest.raises(PipelineDefinitionError, match="cycle") as info:
        build(
            ("a", toy_tasks.AddOneTask, {"connections.out": "toy_middle"}),
            ("b", toy_tasks.AddOneTask, {"connections.input": "toy_middle", "connections.out": "toy_input"}),
        )
    message = str(info.value)
    for culprit in ("task 'a'", "task 'b'", "dataset type 'toy_middle'", "dataset type 'toy_input'"):
        assert culprit in message


def test_task_reading_its_own_output_is_a_cycle():
    with pytest.raises(PipelineDefinitionError, match=r"cycle: .*task 'a'.*dataset type 'toy_input'"):
        build(("a", toy_tasks.AddOneTask, {"connections.out": "toy_input"}))


def test_two_producers_are_both_named():
    with pytest.raises(PipelineDefinitionError, match=r"'toy_output' is written by more than one task: first\.output and second\.output"):
        build(("first", toy_tasks.AddOneTask, None), ("second", toy_tasks.AddOneTask, None))


def test_storage_class_conflict_names_both_connections():
    with pytest.raises(PipelineDefinitionError) as info:
        build(STATS, ADD, ("sum", toy_tasks.SumDetectorsTask, {"connections.images": "toy_stats"}))
    assert re.search(r"'toy_stats' has storage class 'StructuredDataDict' in connection stats\.stats but "
                     r"'NumpyArray' in connection sum\.images", str(info.value))


def test_dimension_conflict_names_both_connections():
    with pytest.raises(PipelineDefinitionError) as info:
        build(ADD, SUM, ("late", toy_tasks.AddOneTask, {"connections.input": "toy_visit_sum", "connections.out": "x"}))
    assert re.search(
        r"'toy_visit_sum' has dimensions \{instrument, visit\} in connection sum\.sum but "
        r"\{instrument, detector, visit\} in connection late\.input", str(info.value)
    )


def test_produced_prerequisite_is_rejected():
    with pytest.raises(PipelineDefinitionError, match=r"'toy_flat' is written by task combine\.flat but read as a "
                                                      r"PrerequisiteInput by flatten\.flat"):
        build(("combine", toy_tasks.CombineFlatTask, None), FLATTEN)


class UnknownDimensionConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    out = Output(name="toy_bad", storageClass="NumpyArray", dimensions=("instrument", "vist"))


class UnknownDimensionConfig(PipelineTaskConfig, pipelineConnections=UnknownDimensionConnections):
    pass


class UnknownDimensionTask(PipelineTask):
    ConfigClass = UnknownDimensionConfig
    _DefaultName = "bad"


class UnknownQuantumDimensionConnections(PipelineTaskConnections, dimensions=("instrument", "detectr")):
    pass


class UnknownQuantumDimensionConfig(PipelineTaskConfig, pipelineConnections=UnknownQuantumDimensionConnections):
    pass


class UnknownQuantumDimensionTask(PipelineTask):
    ConfigClass = UnknownQuantumDimensionConfig
    _DefaultName = "bad"


def test_unknown_dimensions_name_the_connection_or_task():
    with pytest.raises(PipelineDefinitionError, match=r"connection bad\.out .*'vist'.*Did you mean 'visit'"):
        build(("bad", UnknownDimensionTask, None))
    with pytest.raises(PipelineDefinitionError, match=r"task 'bad' .*'detectr'.*Did you mean 'detector'"):
        build(("bad", UnknownQuantumDimensionTask, None))


def test_malformed_dataset_type_name_names_the_connection():
    with pytest.raises(PipelineDefinitionError, match=r"connection addOne\.output: dataset type name 'bad-name' is invalid"):
        build(("addOne", toy_tasks.AddOneTask, {"connections.out": "bad-name"}))


class WriteMetadataConnections(PipelineTaskConnections, dimensions=VD):
    out = Output(name="addOne_metadata", storageClass="TaskMetadata", dimensions=VD)


class WriteMetadataConfig(PipelineTaskConfig, pipelineConnections=WriteMetadataConnections):
    pass


class WriteMetadataTask(PipelineTask):
    ConfigClass = WriteMetadataConfig
    _DefaultName = "writeMetadata"


def test_connection_writing_a_provenance_dataset_type_is_rejected():
    with pytest.raises(PipelineDefinitionError, match=r"writeMetadata\.out writes 'addOne_metadata'.*task 'addOne'"):
        build(ADD, ("writeMetadata", WriteMetadataTask, None))


# Exports ------------------------------------------------------------------------------------------------------


def balanced(text: str) -> bool:
    depth = {"{": 0, "[": 0, "(": 0}
    closing = {"}": "{", "]": "[", ")": "("}
    inside_quotes = False
    for i, char in enumerate(text):
        if char == '"' and text[i - 1] != "\\":
            inside_quotes = not inside_quotes
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not inside_quotes and all(v == 0 for v in depth.values())


def test_dot_and_mermaid_show_every_task_and_dataset_type():
    graph = build(ADD, SUM, STATS, FLATTEN)
    dot, mermaid = graph.to_dot(), graph.to_mermaid()
    assert dot.startswith("digraph") and balanced(dot)
    assert mermaid.startswith("flowchart TD") and balanced(mermaid)
    for label in graph.tasks:
        assert f'"task:{label}" [shape=box' in dot
        assert f"<b>{label}</b>" in mermaid
    for name in graph.dataset_types:
        assert f'"dataset:{name}" [shape=ellipse' in dot
        assert f'(["{name}<br/>' in mermaid
    edges = [line for line in dot.splitlines() if " -> " in line]
    assert len(edges) == graph.graph.number_of_edges()
    assert sum(("-->" in line or "-.->" in line) for line in mermaid.splitlines()) == graph.graph.number_of_edges()
    assert '"dataset:toy_flat" -> "task:flatten" [style=dashed];' in dot


def test_show_lists_each_task_with_class_dimensions_inputs_and_outputs():
    text = build(ADD, FLATTEN).show()
    assert "Pipeline: test pipeline" in text and "Instrument: SimCam" in text
    assert "addOne: toy_tasks.AddOneTask" in text
    assert "flat: toy_flat {instrument, detector} NumpyArray (overall input)" in text
    assert "output: toy_output {instrument, detector, visit} NumpyArray" in text


# Registry ------------------------------------------------------------------------------------------------------


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    butler = Butler.create(tmp_path / "repo")
    yield butler
    butler.close()


def test_check_registry_reports_conflicting_definitions(butler: Butler):
    butler.register_dataset_type("toy_output", ["instrument", "visit"], "NumpyArray")
    butler.register_dataset_type("toy_input", list(VD), "NumpyArray")
    graph = build(ADD)
    with pytest.raises(PipelineDefinitionError) as info:
        graph.check_registry(butler)
    assert re.search(
        r"'toy_output' is registered as \{instrument, visit\} NumpyArray but the pipeline defines it as "
        r"\{instrument, detector, visit\} NumpyArray", str(info.value)
    )


def test_check_registry_requires_registered_inputs(butler: Butler):
    graph = build(ADD, FLATTEN)
    with pytest.raises(PipelineDefinitionError, match=r"toy_flat, toy_input are not registered.*ingest or register them first"):
        graph.check_registry(butler)
    butler.register_dataset_type("toy_input", list(VD), "NumpyArray")
    butler.register_dataset_type("toy_flat", ["instrument", "detector"], "NumpyArray")
    graph.check_registry(butler)  # outputs need not be registered yet


def test_register_dataset_types_registers_exactly_the_outputs(butler: Butler):
    graph = build(ADD, SUM, STATS)
    registered = graph.register_dataset_types(butler, include_provenance=False)
    expected = {"toy_output", "toy_visit_sum", "toy_stats", "toy_mask", "toy_stats_schema"}
    assert set(registered) == expected and len(registered) == len(expected)
    assert {dt.name for dt in butler.registry.query_dataset_types()} == expected
    assert butler.get_dataset_type("toy_visit_sum") == graph.dataset_types["toy_visit_sum"].to_dataset_type()
    assert graph.register_dataset_types(butler, include_provenance=False) == []


def test_register_dataset_types_refuses_conflicts_atomically(butler: Butler):
    butler.register_dataset_type("toy_visit_sum", list(VD), "NumpyArray")
    graph = build(ADD, SUM)
    with pytest.raises(PipelineDefinitionError, match="'toy_visit_sum' is registered as"):
        graph.register_dataset_types(butler, include_provenance=False)
    assert {dt.name for dt in butler.registry.query_dataset_types()} == {"toy_visit_sum"}


def test_dataset_type_node_converts_to_butler_dataset_type():
    graph = build(SUM)
    assert graph.dataset_types["toy_visit_sum"].to_dataset_type() == DatasetType(
        "toy_visit_sum", ["instrument", "visit"], "NumpyArray", universe=graph.universe
    )


def test_register_dataset_types_includes_provenance_by_default(butler: Butler):
    graph = build(ADD)
    registered = graph.register_dataset_types(butler)
    assert registered == ["toy_output", "addOne_metadata", "addOne_log", "addOne_config", "packages"]
    assert butler.get_dataset_type("addOne_metadata").dimensions == graph.tasks["addOne"].dimensions


def test_tests_directory_does_not_shadow_the_graph_package():
    import graph

    assert Path(graph.__file__).resolve().parent == Path(__file__).resolve().parents[2] / "graph"
