"""Re-creating a run from its provenance: the same pipeline, configs and input datasets, into a new run.

`build_rerun_graph` reads the run-level provenance of a RUN collection (`graph.provenance`: the pipeline
with full configs and the data query) and the recorded quanta (`Registry.query_quanta`), tags the exact
datasets those quanta read from outside the pipeline into a TAGGED collection ``{output_run}/inputs``,
and builds the graph of the recorded pipeline over that collection alone, so no dataset ingested or
certified since can enter it.  Quanta the run reused from an earlier run (``--reuse-from``) are followed
back to the run that executed them, so their inputs are found too.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from butler import CollectionType, DatasetRef
from butler.errors import ButlerError

from .builder import BuildReport, build_quantum_graph
from .errors import GraphBuildError
from .provenance import read_run_document

if TYPE_CHECKING:
    from butler import Butler

    from .pipeline_graph import PipelineGraph
    from .quantum_graph import QuantumGraph

__all__ = ["INPUTS_SUFFIX", "build_rerun_graph", "recorded_inputs"]

#: Suffix of the TAGGED collection holding the exact inputs of a rerun.
INPUTS_SUFFIX = "inputs"


def recorded_inputs(butler: Butler, run: str, pipeline_graph: PipelineGraph) -> list[DatasetRef]:
    """The datasets the quanta of a run read from outside the pipeline (one batch of queries per level).

    An input written by a task of the pipeline in another run is the output of a reused quantum: the
    inputs of the quantum that wrote it are followed instead.

    Parameters
    ----------
    butler : `Butler`
    run : `str`
        The RUN collection.
    pipeline_graph : `PipelineGraph`
        Its recorded pipeline (tells pipeline outputs from overall inputs).

    Returns
    -------
    refs : `list` [`DatasetRef`]
        Sorted by dataset type and data ID.

    Raises
    ------
    GraphBuildError
        If the run has no recorded quanta, or a recorded input no longer exists.
    """
    registry = butler.registry
    produced = {name for name, node in pipeline_graph.dataset_types.items() if node.producer is not None}
    produced |= set(pipeline_graph.provenance_dataset_types)
    quanta = registry.query_quanta(run)
    if not quanta:
        raise GraphBuildError(f"run {run!r} has no recorded quanta: there is nothing to re-run.")
    seen = {q.id for q in quanta}
    external: dict[uuid.UUID, DatasetRef] = {}
    while quanta:
        ids = list({dataset_id for q in quanta for dataset_id, _ in q.inputs})
        refs = registry.get_datasets(ids)
        missing = [i for i in ids if i not in refs]
        if missing:
            raise GraphBuildError(
                f"{len(missing)} dataset(s) read by the quanta of run {run!r} no longer exist (e.g. {missing[0]}); "
                "the run cannot be reproduced exactly."
            )
        reused = [ref.id for ref in refs.values() if ref.run != run and ref.dataset_type.name in produced]
        external.update((ref.id, ref) for ref in refs.values() if ref.dataset_type.name not in produced)
        quanta = [q for q in registry.get_quantum_provenances(reused).values() if q.id not in seen]
        seen.update(q.id for q in quanta)
    return sorted(external.values(), key=lambda r: (r.dataset_type.name, str(r.data_id)))


def _init_inputs(butler: Butler, pipeline_graph: PipelineGraph, collections: list[str]) -> list[DatasetRef]:
    """The overall init-inputs of a pipeline, found in the recorded input collections."""
    overall = pipeline_graph.overall_inputs()
    refs = []
    for label in pipeline_graph.tasks:
        for _, node in pipeline_graph.init_inputs_of(label).values():
            if node.name in overall:
                ref = butler.registry.find_dataset(node.name, None, collections=collections)
                if ref is None:
                    raise GraphBuildError(f"init-input {node.name!r} of task {label!r} is no longer in {collections}.")
                refs.append(ref)
    return refs


def build_rerun_graph(
    butler: Butler, from_run: str, output_run: str, *, progress: bool = False
) -> tuple[QuantumGraph, BuildReport, str]:
    """Build the graph that re-creates a run: recorded pipeline, configs and exact inputs, new output run.

    Parameters
    ----------
    butler : `Butler`
        A writeable repository (the TAGGED collection of inputs is written).
    from_run : `str`
        The RUN collection to re-create.
    output_run : `str`
        The new RUN collection.
    progress : `bool`, optional
        Show progress bars while building.

    Returns
    -------
    graph : `QuantumGraph`
    report : `BuildReport`
    inputs : `str`
        The TAGGED collection ``{output_run}/inputs`` holding the exact inputs (the graph's only input
        collection).

    Raises
    ------
    GraphBuildError
        If the run has no recorded pipeline or quanta, its pipeline cannot be rebuilt, an input no longer
        exists, or two inputs of one dataset type and data ID were read (calibrations of two validity
        ranges), which one TAGGED collection cannot hold.
    """
    document = read_run_document(butler, from_run)
    refs = recorded_inputs(butler, from_run, document.pipeline)
    refs += _init_inputs(butler, document.pipeline, document.input_collections)
    keys: dict[tuple[str, tuple], DatasetRef] = {}
    for ref in refs:
        other = keys.setdefault((ref.dataset_type.name, ref.data_id.required_values), ref)
        if other.id != ref.id:
            raise GraphBuildError(
                f"the quanta of run {from_run!r} read two {ref.dataset_type.name!r} datasets with data ID {ref.data_id} "
                f"({other.id}, {ref.id}); a rerun from one input collection cannot reproduce that."
            )
    inputs = f"{output_run}/{INPUTS_SUFFIX}"
    registry = butler.registry
    try:
        with registry.transaction():
            registry.register_collection(inputs, CollectionType.TAGGED, f"the inputs of run {from_run!r}, re-run as {output_run!r}")
            registry.associate(inputs, list(keys.values()))
    except ButlerError as err:
        raise GraphBuildError(f"cannot collect the inputs of run {from_run!r} into {inputs!r}: {err}") from None
    graph, report = build_quantum_graph(
        document.pipeline, butler, input_collections=[inputs], output_run=output_run,
        where=document.where, bind=document.bind, data_id=document.data_id, progress=progress,
    )
    return graph, report, inputs
