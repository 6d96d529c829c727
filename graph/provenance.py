"""Run-level provenance: the pipeline, inputs and data query a RUN collection was built from.

`write_run_document` stores, when a graph starts executing, one JSON document per output run in the
registry (``Registry.set_run_provenance``)::

    {"version": 1,
     "pipeline": {"description": ..., "instrument": ..., "tasks": [{"label", "class", "config", "retargets"}]},
     "input_collections": [...], "where": "...", "bind": {...}, "data_id": {...},
     "reuse_from": [...] or null}

The pipeline has the layout of the ``pipeline`` section of a saved quantum graph (full configs and subtask
retargets), so `read_run_document` rebuilds exactly the configured tasks; nothing is pickled.  A run
extended with more tasks (``--extend-run``) keeps the tasks recorded before and adds the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import GraphBuildError, PipelineError
from .quantum_graph import encode_pipeline, rebuild_pipeline

if TYPE_CHECKING:
    from butler import Butler

    from .pipeline_graph import PipelineGraph
    from .quantum_graph import QuantumGraph

__all__ = ["RUN_DOCUMENT_VERSION", "RunDocument", "encode_pipeline", "read_run_document", "write_run_document"]

#: Version of the run-level provenance document.
RUN_DOCUMENT_VERSION = 1


@dataclass
class RunDocument:
    """What a run was built from, read back from the registry.

    Attributes
    ----------
    run : `str`
    pipeline : `PipelineGraph`
        The configured tasks, rebuilt from the recorded configs.
    input_collections : `list` [`str`]
    where : `str`
    bind : `dict`
    data_id : `dict`
    reuse_from : `list` [`str`] or `None`
        The collections quanta were reused from, if any.
    """

    run: str
    pipeline: PipelineGraph
    input_collections: list[str] = field(default_factory=list)
    where: str = ""
    bind: dict[str, Any] = field(default_factory=dict)
    data_id: dict[str, Any] = field(default_factory=dict)
    reuse_from: list[str] | None = None


def write_run_document(butler: Butler, qgraph: QuantumGraph) -> None:
    """Record (or extend) the run-level provenance of a graph's output run.

    Parameters
    ----------
    butler : `Butler`
        A writeable butler; the output run must exist.
    qgraph : `QuantumGraph`
        The graph about to be executed (its ``metadata`` holds the query it was built from).
    """
    registry = butler.registry
    metadata = qgraph.metadata
    pipeline = encode_pipeline(qgraph.pipeline_graph)
    previous = registry.get_run_provenance(qgraph.output_run)
    if previous is not None:
        labels = {task["label"] for task in pipeline["tasks"]}
        pipeline["tasks"] = [t for t in previous["pipeline"]["tasks"] if t["label"] not in labels] + pipeline["tasks"]
    reuse = metadata.get("reuse") or {}
    registry.set_run_provenance(
        qgraph.output_run,
        {
            "version": RUN_DOCUMENT_VERSION,
            "pipeline": pipeline,
            "input_collections": list(qgraph.input_collections),
            "where": metadata.get("where", ""),
            "bind": metadata.get("bind") or {},
            "data_id": metadata.get("data_id") or {},
            "reuse_from": reuse.get("from"),
        },
    )


def read_run_document(butler: Butler, run: str) -> RunDocument:
    """Read the run-level provenance of a RUN collection and rebuild its pipeline.

    Raises
    ------
    GraphBuildError
        If the run has no run-level provenance (it was not written by ``pipetask run``, or before
        provenance was recorded), or its pipeline cannot be rebuilt with the installed task classes.
    """
    document = butler.registry.get_run_provenance(run)
    if document is None:
        raise GraphBuildError(
            f"run {run!r} has no recorded pipeline: it was not written by `pipetask run`, or by a version that did "
            "not record provenance. Run the pipeline again with `pipetask run -p ...` instead."
        )
    if document.get("version") != RUN_DOCUMENT_VERSION:
        raise GraphBuildError(
            f"the provenance of run {run!r} has version {document.get('version')!r}; this version reads "
            f"{RUN_DOCUMENT_VERSION}."
        )
    try:
        pipeline = rebuild_pipeline(document["pipeline"], butler.dimensions, f"the pipeline recorded for run {run!r}")  # type: ignore[arg-type]
    except PipelineError as err:  # GraphFileError: a class cannot be imported or a config rebuilt
        raise GraphBuildError(str(err)) from None
    return RunDocument(
        run=run,
        pipeline=pipeline,
        input_collections=list(document.get("input_collections") or []),
        where=document.get("where") or "",
        bind=dict(document.get("bind") or {}),
        data_id=dict(document.get("data_id") or {}),
        reuse_from=document.get("reuse_from"),
    )
