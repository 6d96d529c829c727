"""`Quantum`: one execution of one task on one data ID, with its input and output dataset refs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from butler import DataCoordinate, DatasetRef

__all__ = ["Quantum"]


@dataclass(slots=True)
class Quantum:
    """One unit of work: a task label, a data ID, and the datasets it reads and writes.

    Attributes
    ----------
    id : `uuid.UUID`
        Stable ID of the quantum (UUID5 of the output run, task label and data ID).
    task_label : `str`
    data_id : `DataCoordinate`
        The quantum's data ID over the task's dimensions (with implied values).
    inputs : `dict` [`str`, `list` [`DatasetRef`]]
        Connection name -> refs of its regular inputs and prerequisites.
    outputs : `dict` [`str`, `list` [`DatasetRef`]]
        Connection name -> predicted refs of its outputs, in the output run.
    metadata_ref : `DatasetRef`
        The ``{label}_metadata`` dataset the quantum writes when it succeeds (the success marker).
    log_ref : `DatasetRef` or `None`
        The ``{label}_log`` dataset (written for failures too), unless the task does not save logs.
    """

    id: uuid.UUID
    task_label: str
    data_id: DataCoordinate
    inputs: dict[str, list[DatasetRef]] = field(default_factory=dict)
    outputs: dict[str, list[DatasetRef]] = field(default_factory=dict)
    metadata_ref: DatasetRef | None = None
    log_ref: DatasetRef | None = None

    @staticmethod
    def make_id(output_run: str, task_label: str, data_id: DataCoordinate) -> uuid.UUID:
        """The stable ID of the quantum of a task on a data ID in an output run."""
        key = ",".join([output_run, task_label] + [f"{k}={v}" for k, v in sorted(data_id.required.items())])
        return uuid.uuid5(_QUANTUM_NAMESPACE, key)

    def input_refs(self) -> Iterator[DatasetRef]:
        """Every input ref."""
        for refs in self.inputs.values():
            yield from refs

    def output_refs(self, *, provenance: bool = True) -> Iterator[DatasetRef]:
        """Every output ref (with the metadata and log refs when ``provenance``)."""
        for refs in self.outputs.values():
            yield from refs
        if provenance:
            yield from (r for r in (self.metadata_ref, self.log_ref) if r is not None)

    def __repr__(self) -> str:
        return f"Quantum({self.task_label!r}, {self.data_id}, id={self.id})"


_QUANTUM_NAMESPACE = uuid.UUID("4a0a5e84-9a0f-5d62-8a1e-3b1f55c2e7a1")
