"""The directories of Parsl submissions, the manifests apps write there, and what a resumed execution
recovers from those of an interrupted one.

Each execution with the Parsl executor works in ``<repo>/.parsl/submissions/<UTC time>-<random>/``:
``submission.json`` names its output run, ``graph.qgraph`` is the graph its apps read, and each app
writes the JSON manifest of its quanta's results there (``<first quantum ID>.json``), which the
submitting process reads, registers and deletes.  If the submitting process is killed, manifests of
finished apps are left behind, and so are the files they list.  The next execution into the same run
(which holds the run's lock, so that submission is dead) registers the results of those that are
certainly right (`recover_results`) instead of running their quanta again, then deletes the directory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from collections import ChainMap
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from butler.datastore import FileDatastore, StoredFileInfo
from butler.errors import ButlerError

from ..errors import PipelineError
from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from .single_quantum import QuantumResult

__all__ = ["earlier_submissions", "new_submission", "read_manifest", "recover_results", "write_manifest"]

_LOG = logging.getLogger("graph.execute")

_SUBMISSION_FILE = "submission.json"
_SUBMISSION_FORMAT = "butler-pipelines-parsl-submission"
_MANIFEST_FORMAT = "butler-pipelines-quantum-results"
_MANIFEST_VERSION = 2

# Dataset ID (as a string) -> [checksum, size] of the file a quantum read it from, or None if it did not exist.
InputRecords = dict[str, list[Any] | None]


def new_submission(submissions: Path, output_run: str) -> Path:
    """Make the directory of a new submission into an output run (named by the UTC time, to sort)."""
    submissions.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    directory = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=submissions))
    record = {"format": _SUBMISSION_FORMAT, "version": 1, "output_run": output_run}
    (directory / _SUBMISSION_FILE).write_text(json.dumps(record))
    return directory


def earlier_submissions(submissions: Path, output_run: str) -> list[Path]:
    """The directories of earlier submissions into an output run, oldest first.

    Only call it holding the run's lock: those submissions are then over (killed, or they would have
    removed their directory).  Directories without a readable ``submission.json`` are not listed.
    """
    found = []
    for directory in sorted(submissions.iterdir()) if submissions.is_dir() else []:
        try:
            record = json.loads((directory / _SUBMISSION_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == _SUBMISSION_FORMAT and record.get("output_run") == output_run:
            found.append(directory)
    return found


def _input_records(quantum: Quantum, available: Mapping[uuid.UUID, StoredFileInfo]) -> InputRecords:
    """What a quantum reads: each input's checksum and size, or None for an input that does not exist."""
    return {
        str(ref.id): [info.checksum, info.file_size] if (info := available.get(ref.id)) is not None else None
        for ref in quantum.input_refs()
    }


def write_manifest(
    path: Path, qgraph: QuantumGraph, results: list[QuantumResult], input_infos: Mapping[uuid.UUID, StoredFileInfo]
) -> None:
    """Write (atomically) the manifest of an app: its quanta's results, and the inputs each read.

    Parameters
    ----------
    path : `pathlib.Path`
    qgraph : `QuantumGraph`
        The graph the app ran.
    results : `list` [`QuantumResult`]
        The results of the quanta that ran, in order (`WorkerState.execute_cluster`).
    input_infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Records of the datasets the app read from outside its cluster.
    """
    available = dict(input_infos)
    inputs = {}
    for result in results:
        inputs[str(result.quantum_id)] = _input_records(qgraph.quanta[result.quantum_id], available)
        if result.status != "failed":
            available.update((info.dataset_id, info) for info in result.written)
    manifest = {
        "format": _MANIFEST_FORMAT,
        "version": _MANIFEST_VERSION,
        "results": [result.to_simple() for result in results],
        "inputs": inputs,
    }
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, path)


def read_manifest(path: Path) -> tuple[list[QuantumResult], dict[str, InputRecords]]:
    """The results in a manifest written by `write_manifest`, and the inputs of each (by quantum ID).

    Raises
    ------
    PipelineError
        If the file is not such a manifest.
    OSError, ValueError
        If it cannot be read, or is not JSON.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT or data.get("version") != _MANIFEST_VERSION:
        raise PipelineError(f"{path} is not a version-{_MANIFEST_VERSION} manifest of quantum results.")
    try:
        return [QuantumResult.from_simple(simple) for simple in data["results"]], dict(data["inputs"])
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{path} is a damaged manifest of quantum results: {type(err).__name__}: {err}") from None


def recover_results(
    directories: Iterable[Path],
    qgraph: QuantumGraph,
    to_run: set[uuid.UUID],
    infos: Mapping[uuid.UUID, StoredFileInfo],
    datastore: FileDatastore,
) -> dict[uuid.UUID, QuantumResult]:
    """The results, in the manifests of earlier submissions, that need not be made again.

    A result is recovered only if nothing about it is in doubt: its quantum is one of ``to_run``, of
    the same task; it succeeded (or found no work); it lists only outputs of the quantum, the metadata
    among them, each with its file (or registry-stored bytes) present with the recorded size and
    checksum; and the quantum read what it would read now: the same input datasets, each with the
    record it has now (``infos``) or one made by a result recovered before it in the same manifest,
    and none that a quantum still to run would make.  Failures are never recovered (they are retried).

    Parameters
    ----------
    directories : iterable of `pathlib.Path`
        Submission directories (`earlier_submissions`).
    qgraph : `QuantumGraph`
        The graph of this execution.
    to_run : `set` [`uuid.UUID`]
        The quanta this execution is to run.
    infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Records of the datasets available before it (`ExecutionPlan.infos`).
    datastore : `FileDatastore`

    Returns
    -------
    recovered : `dict` [`uuid.UUID`, `QuantumResult`]
        Quantum ID -> its result.
    """
    recovered: dict[uuid.UUID, QuantumResult] = {}
    doubtful = 0
    for directory in directories:
        for path in sorted(directory.glob("*.json")):
            if path.name == _SUBMISSION_FILE:
                continue
            try:
                results, inputs = read_manifest(path)
            except (OSError, ValueError, PipelineError) as err:
                _LOG.debug("Manifest %s is not used: %s", path, err)
                continue
            made: dict[uuid.UUID, StoredFileInfo] = {}
            available = ChainMap(made, infos)
            # Quanta to run, less those recovered from this manifest so far (their outputs are in `made`).
            pending = set(to_run)
            for result in results:
                if result.quantum_id not in pending:
                    continue  # finished since (registered), or not in this graph
                problem = _doubt(result, inputs, qgraph, pending, available, datastore)
                if problem is not None:
                    _LOG.debug("The result of quantum %s in %s is not used: %s", result.quantum_id, path, problem)
                    doubtful += 1
                    continue
                recovered[result.quantum_id] = result
                made.update((info.dataset_id, info) for info in result.written)
                pending.discard(result.quantum_id)
    if recovered or doubtful:
        _LOG.info("An interrupted execution into this run left the results of %d of the quanta to run: %d are "
                  "recovered (registered as they are), %d (failed, or in doubt) are run again.",
                  len(recovered) + doubtful, len(recovered), doubtful)
    return recovered


def _doubt(
    result: QuantumResult,
    inputs: Mapping[str, Any],
    qgraph: QuantumGraph,
    pending: set[uuid.UUID],
    available: Mapping[uuid.UUID, StoredFileInfo],
    datastore: FileDatastore,
) -> str | None:
    """Why a result of an earlier submission cannot be recovered (`recover_results`), or `None`.

    ``pending`` are the quanta to run whose results are not recovered (yet), the result's among them;
    ``available`` the records of the datasets that exist, those that results recovered from the same
    manifest wrote included.
    """
    quantum = qgraph.quanta[result.quantum_id]
    if quantum.task_label != result.task_label:
        return f"it is a result of task {result.task_label}, not {quantum.task_label}"
    if result.status not in ("succeeded", "no_work"):
        return f"it {result.status}"
    written = {info.dataset_id for info in result.written}
    if not written <= {ref.id for ref in quantum.output_refs()}:
        return "it lists datasets that are not outputs of its quantum"
    if quantum.metadata_ref is not None and quantum.metadata_ref.id not in written:
        return "it lists no metadata"
    if inputs.get(str(result.quantum_id)) != _input_records(quantum, available):
        return "its quantum read other inputs than it would now"
    for ref in quantum.input_refs():
        producer = qgraph.producer_of(ref.id)
        if ref.id not in available and producer is not None and producer.id in pending:
            return f"its input {ref.id} is still to be made"
    try:
        for info in result.written:
            datastore.check(info, checksum=True)
    except (ButlerError, OSError) as err:
        return str(err)
    return None
