"""`SingleQuantumExecutor`: run one quantum from its input records and return a manifest of its writes.

The executor runs in a worker process as well as in the main one: it reads inputs and writes files
through the datastore only, and returns a `QuantumResult` (picklable, and JSON-able with
`QuantumResult.to_simple`) that the main process registers (`register_quantum_result`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from butler import DatasetRef
from butler.datastore import FileDatastore, StoredFileInfo

from ..connections import InputQuantizedConnection, OutputQuantizedConnection, PipelineTaskConnections
from ..errors import AlgorithmError, NoWorkFound, QuantumExecutionError
from ..fingerprint import TaskFingerprint, task_fingerprint
from ..logs import LogCapture
from ..quantum import Quantum
from ..task_metadata import TaskMetadata
from ._timeout import time_limit
from .quantum_context import QuantumContext

if TYPE_CHECKING:
    from ..pipeline_graph import TaskNode
    from ..task import PipelineTask

__all__ = ["QuantumResult", "QuantumStatus", "SingleQuantumExecutor", "quantized_refs"]

_LOG = logging.getLogger("graph.execute")

QuantumStatus = Literal["succeeded", "no_work", "failed"]
_HOST = socket.gethostname()


@dataclass
class QuantumResult:
    """The manifest of one executed quantum: what happened and what it wrote.

    Attributes
    ----------
    quantum_id : `uuid.UUID`
    task_label : `str`
    status : `str`
        ``"succeeded"``, ``"no_work"`` (the task raised `NoWorkFound`; metadata written, outputs
        absent) or ``"failed"`` (no metadata; only the log is written).
    error : `str` or `None`
        ``"ExceptionType: message"`` of a failure (or the `NoWorkFound` message).
    traceback : `str` or `None`
        The formatted traceback of a failure.
    written : `list` [`StoredFileInfo`]
        Records of every dataset written: outputs, then metadata and log (inline bytes included).
    timing : `float`
        Wall-clock seconds the quantum took.
    host : `str` or `None`
        Host name of the process that ran it.
    start_time, end_time : `str` or `None`
        ISO-8601 UTC times of its start and end.
    fingerprint : `TaskFingerprint` or `None`
        Task class, config, code and package hashes it ran with (for the provenance in the registry).
    """

    quantum_id: uuid.UUID
    task_label: str
    status: QuantumStatus
    error: str | None = None
    traceback: str | None = None
    written: list[StoredFileInfo] = field(default_factory=list)
    timing: float = 0.0
    host: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    fingerprint: TaskFingerprint | None = None

    @property
    def error_line(self) -> str:
        """The first line of `error` (empty when there is none)."""
        return (self.error or "").strip().partition("\n")[0]

    def to_simple(self) -> dict[str, Any]:
        """Return a JSON-safe dictionary (the inverse of `from_simple`)."""
        return {
            "quantum_id": str(self.quantum_id),
            "task_label": self.task_label,
            "status": self.status,
            "error": self.error,
            "traceback": self.traceback,
            "written": [info.to_simple() for info in self.written],
            "timing": self.timing,
            "host": self.host,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "fingerprint": dataclasses.asdict(self.fingerprint) if self.fingerprint is not None else None,
        }

    @classmethod
    def from_simple(cls, simple: Mapping[str, Any]) -> QuantumResult:
        """Make a result from the output of `to_simple`."""
        return cls(
            quantum_id=uuid.UUID(str(simple["quantum_id"])),
            task_label=str(simple["task_label"]),
            status=simple["status"],
            error=simple.get("error"),
            traceback=simple.get("traceback"),
            written=[StoredFileInfo.from_simple(s) for s in simple.get("written", [])],
            timing=float(simple.get("timing", 0.0)),
            host=simple.get("host"),
            start_time=simple.get("start_time"),
            end_time=simple.get("end_time"),
            fingerprint=TaskFingerprint(**simple["fingerprint"]) if simple.get("fingerprint") else None,
        )


class SingleQuantumExecutor:
    """Runs quanta one at a time: builds the task and its `QuantumContext`, calls ``runQuantum``,
    writes the metadata and log, and reports what was written.

    The executor caches, per task label, the connections and init-inputs of the task, so one
    instance should be reused for many quanta (one per worker process).

    Parameters
    ----------
    init_input_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]], optional
        Task label -> init-input connection name -> datastore record (`init_input_infos`); each is
        read once, when the first quantum of its task runs.
    timeout : `float`, optional
        Seconds ``runQuantum`` may take; then it is interrupted (`time_limit`: main thread only) and
        the quantum fails with `QuantumTimeoutError`.
    """

    def __init__(
        self, init_input_infos: Mapping[str, Mapping[str, StoredFileInfo]] | None = None, *, timeout: float | None = None
    ) -> None:
        self.timeout = timeout
        self._connections: dict[str, PipelineTaskConnections | None] = {}
        self._init_input_infos = init_input_infos or {}
        self._init_inputs: dict[str, dict[str, Any]] = {}
        self._fingerprints: dict[str, TaskFingerprint | None] = {}
        self._packages: dict[str, str] | None = None

    def _fingerprint_of(self, task_node: TaskNode) -> TaskFingerprint | None:
        """The task's class, config, code and package hashes (computed once per task label)."""
        label = task_node.label
        if label not in self._fingerprints:
            if self._packages is None:
                from .registration import package_versions

                self._packages = package_versions()
            try:
                self._fingerprints[label] = task_fingerprint(task_node, packages=self._packages)
            except Exception as err:  # noqa: BLE001 - e.g. a module without readable source: the quantum still runs
                _LOG.warning("cannot fingerprint the code and config of task %r: %s", label, err)
                self._fingerprints[label] = None
        return self._fingerprints[label]

    def _init_inputs_of(self, label: str, datastore: FileDatastore) -> dict[str, Any]:
        if label not in self._init_inputs:
            infos = self._init_input_infos.get(label, {})
            self._init_inputs[label] = {name: datastore.get(info) for name, info in infos.items()}
        return self._init_inputs[label]

    def _connections_of(self, task_node: TaskNode) -> PipelineTaskConnections | None:
        label = task_node.label
        if label not in self._connections:
            connections = getattr(task_node, "connections", None)
            if isinstance(connections, type):
                connections = connections(config=task_node.config)
            self._connections[label] = connections
        return self._connections[label]

    def execute(
        self,
        task_node: TaskNode,
        quantum: Quantum,
        datastore: FileDatastore,
        input_infos: Mapping[uuid.UUID, StoredFileInfo],
        *,
        clobber: bool = False,
    ) -> QuantumResult:
        """Run one quantum.

        Parameters
        ----------
        task_node : `TaskNode`
            The quantum's task (class and frozen config).
        quantum : `Quantum`
            The quantum.
        datastore : `FileDatastore`
            Where inputs are read and outputs written.
        input_infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
            Datastore records of (at least) every input of the quantum, inline ones with their bytes.
        clobber : `bool`, optional
            Replace files already at the outputs' paths; pass it only when no registered dataset owns
            them (orphans of an attempt killed before its outputs were registered).

        Returns
        -------
        result : `QuantumResult`
            Never raises for a failure of the task: a failed quantum has status ``"failed"``, the
            error and traceback, and its log (with the traceback) in ``written``.  Outputs it wrote
            before failing are deleted.
        """
        start_wall = time.perf_counter()
        start_cpu = time.process_time()
        start_utc = datetime.now(timezone.utc)
        with LogCapture(logging.INFO) as capture:
            status, error, tb, task, written = self._run(task_node, quantum, datastore, input_infos, clobber, capture)
        provenance: list[tuple[Any, DatasetRef]] = []
        if status != "failed" and quantum.metadata_ref is not None:
            metadata = task.getFullMetadata() if task is not None else TaskMetadata()
            metadata["quantum"] = {
                "startUtc": start_utc.isoformat(),
                "endUtc": datetime.now(timezone.utc).isoformat(),
                "wallTime": time.perf_counter() - start_wall,
                "cpuTime": time.process_time() - start_cpu,
                "maxRss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "host": _HOST,
                "pid": os.getpid(),
            }
            provenance.append((metadata, quantum.metadata_ref))
        if status == "failed" and written:
            datastore.remove(written)  # partial outputs of a failed quantum are never registered
            written = []
        if quantum.log_ref is not None:
            provenance.append((capture.records, quantum.log_ref))
        try:
            for obj, ref in provenance:
                written.append(datastore.put(obj, ref, clobber=clobber))
        except Exception as err:  # provenance cannot be written: the quantum counts as failed
            datastore.remove(written)
            status, error, tb = "failed", f"{type(err).__name__}: {err}", traceback.format_exc()
            written = []
        return QuantumResult(
            quantum_id=quantum.id,
            task_label=quantum.task_label,
            status=status,
            error=error,
            traceback=tb,
            written=written,
            timing=time.perf_counter() - start_wall,
            host=_HOST,
            start_time=start_utc.isoformat(),
            end_time=datetime.now(timezone.utc).isoformat(),
            fingerprint=self._fingerprint_of(task_node),
        )

    def _run(
        self,
        task_node: TaskNode,
        quantum: Quantum,
        datastore: FileDatastore,
        input_infos: Mapping[uuid.UUID, StoredFileInfo],
        clobber: bool,
        capture: LogCapture,
    ) -> tuple[QuantumStatus, str | None, str | None, PipelineTask | None, list[StoredFileInfo]]:
        """Make the task and call ``runQuantum``; return status, error, traceback, task and outputs written."""
        task = context = None
        try:
            missing = [r for r in quantum.input_refs() if r.id not in input_infos]
            if missing:
                shown = ", ".join(f"{r.dataset_type.name} {r.data_id}" for r in missing[:5])
                raise QuantumExecutionError(
                    f"{len(missing)} input(s) of quantum {quantum.task_label} {quantum.data_id} have no datastore "
                    f"record ({shown}{', ...' if len(missing) > 5 else ''}): they were not produced or not "
                    "ingested. Check the input collections or the upstream quanta."
                )
            connections = self._connections_of(task_node)
            init_inputs = self._init_inputs_of(task_node.label, datastore)
            task = task_node.make_task(initInputs=init_inputs) if init_inputs else task_node.make_task()
            input_refs = InputQuantizedConnection(quantized_refs(quantum.inputs, connections, quantum, "input"))
            output_refs = OutputQuantizedConnection(quantized_refs(quantum.outputs, connections, quantum, "output"))
            context = QuantumContext(datastore, quantum, input_infos, connections=connections, clobber=clobber)
            with time_limit(self.timeout, f"quantum {quantum.task_label} {quantum.data_id}"):
                task.runQuantum(context, input_refs, output_refs)
        except NoWorkFound as err:
            _LOG.info("Quantum %s %s has no work to do: %s", quantum.task_label, quantum.data_id, err)
            return "no_work", f"NoWorkFound: {err}", None, task, list(context.written) if context else []
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            _LOG.error("Quantum %s %s failed: %s", quantum.task_label, quantum.data_id, error)
            # The traceback goes to the quantum's log dataset, and to consoles only at DEBUG level.
            capture.handle(_LOG.makeRecord(
                _LOG.name, logging.ERROR, __file__, 0, "Traceback of the failure of quantum %s %s:",
                (quantum.task_label, quantum.data_id), sys.exc_info(),
            ))
            _LOG.debug("Traceback of the failure:", exc_info=True)
            if isinstance(err, AlgorithmError) and err.metadata:
                _LOG.error("Diagnostics of the failure: %s", err.metadata)
            return "failed", error, traceback.format_exc(), task, list(context.written) if context else []
        return "succeeded", None, None, task, list(context.written)


def quantized_refs(
    refs_by_name: Mapping[str, list[DatasetRef]],
    connections: PipelineTaskConnections | None,
    quantum: Quantum,
    kind: str,
) -> dict[str, Any]:
    """Connection name -> one ref, or a list for a ``multiple`` connection."""
    out: dict[str, Any] = {}
    all_connections = connections.allConnections if connections is not None else {}
    for name, refs in refs_by_name.items():
        connection = all_connections.get(name)
        multiple = bool(getattr(connection, "multiple", False)) if connection is not None else len(refs) != 1
        if multiple:
            out[name] = list(refs)
        elif len(refs) == 1:
            out[name] = refs[0]
        else:
            raise QuantumExecutionError(
                f"quantum {quantum.task_label} {quantum.data_id} has {len(refs)} datasets for {kind} connection "
                f"{name!r}, which takes exactly one (it is not `multiple`); the quantum graph is inconsistent."
            )
    return out
