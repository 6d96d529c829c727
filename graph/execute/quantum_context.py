"""`QuantumContext`: the ``butlerQC`` a task's ``runQuantum`` reads its inputs from and writes to.

A quantum context reads and writes through a `FileDatastore` only, with the datastore records it
is handed (those of the quantum's inputs); it never touches the registry.  The records of what it
wrote are collected in `QuantumContext.written` for the main process to register.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from butler import DataCoordinate, DatasetRef
from butler.datastore import FileDatastore, StoredFileInfo

from ..connections import InputQuantizedConnection, OutputQuantizedConnection, PipelineTaskConnections
from ..errors import QuantumExecutionError
from ..quantum import Quantum
from ..struct import Struct

__all__ = ["QuantumContext", "QuantumDeferredHandle"]


class QuantumDeferredHandle:
    """An input of a quantum read only when asked (the value of a ``deferLoad`` connection).

    Parameters
    ----------
    context : `QuantumContext`
        The context that reads it.
    ref : `DatasetRef`
        The input dataset.
    """

    def __init__(self, context: QuantumContext, ref: DatasetRef):
        self._context = context
        self.ref = ref

    @property
    def data_id(self) -> DataCoordinate:
        """The dataset's data ID."""
        return self.ref.data_id

    dataId = data_id  # noqa: N815 - the LSST stack's spelling

    def get(self, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read the dataset, or one component or subset of it.

        Parameters
        ----------
        component : `str`, optional
            Read only this component (``"wcs"``).
        parameters : `dict`, optional
            Formatter read parameters (``{"columns": [...]}``).
        """
        return self._context._read(self.ref, component=component, parameters=parameters)

    def __repr__(self) -> str:
        return f"QuantumDeferredHandle({self.ref.dataset_type.name!r}, {self.ref.data_id})"


class QuantumContext:
    """Butler access limited to one quantum's inputs and outputs, through the datastore alone.

    Parameters
    ----------
    datastore : `FileDatastore`
        The repository's datastore.
    quantum : `Quantum`
        The quantum being run.
    input_infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Datastore records of the quantum's inputs by dataset ID (inline records with their bytes).
    connections : `PipelineTaskConnections`, optional
        The task's connections; tells which inputs are ``deferLoad`` and which are ``multiple``.
    clobber : `bool`, optional
        Replace files already at the outputs' paths (orphans of an earlier, killed attempt).

    Attributes
    ----------
    quantum : `Quantum`
    written : `list` [`StoredFileInfo`]
        Records of the datasets written so far, in order.
    """

    def __init__(
        self,
        datastore: FileDatastore,
        quantum: Quantum,
        input_infos: Mapping[uuid.UUID, StoredFileInfo],
        *,
        connections: PipelineTaskConnections | None = None,
        clobber: bool = False,
    ):
        self.datastore = datastore
        self.quantum = quantum
        self.written: list[StoredFileInfo] = []
        self._input_infos = input_infos
        self._connections = connections
        self._clobber = clobber
        self._inputs = {ref.id: ref for ref in quantum.input_refs()}
        self._outputs = {ref.id: ref for ref in quantum.output_refs(provenance=False)}
        self._done: set[uuid.UUID] = set()

    @property
    def dataId(self) -> DataCoordinate:  # noqa: N802 - the LSST stack's name
        """The quantum's data ID."""
        return self.quantum.data_id

    data_id = dataId

    def _describe(self) -> str:
        return f"quantum {self.quantum.task_label} {self.quantum.data_id}"

    # Reading ----------------------------------------------------------------------------------------

    def get(self, refs: DatasetRef | Sequence[DatasetRef] | InputQuantizedConnection) -> Any:
        """Read inputs of the quantum.

        Parameters
        ----------
        refs : `DatasetRef`, sequence of `DatasetRef`, or `InputQuantizedConnection`
            One input, several, or every input of the quantum by connection name.

        Returns
        -------
        obj : `object`, `list` or `dict`
            The object; a list of objects; or connection name -> object (a list for a ``multiple``
            connection, a `QuantumDeferredHandle` per dataset for a ``deferLoad`` connection).

        Raises
        ------
        QuantumExecutionError
            If a ref is not an input of this quantum, or its datastore record is missing.
        """
        if isinstance(refs, DatasetRef):
            return self._read(refs)
        if isinstance(refs, InputQuantizedConnection):
            out: dict[str, Any] = {}
            for name, value in refs:
                connection = self._connections.allConnections.get(name) if self._connections is not None else None
                defer = bool(getattr(connection, "deferLoad", False))
                read = (lambda r: QuantumDeferredHandle(self, r)) if defer else self._read
                out[name] = [read(r) for r in value] if isinstance(value, list | tuple) else read(value)
            return out
        if isinstance(refs, Iterable) and not isinstance(refs, str | bytes):
            return [self._read(r) for r in refs]
        raise QuantumExecutionError(
            f"{self._describe()}: get() takes a DatasetRef, a list of them or an InputQuantizedConnection, "
            f"not {type(refs).__name__}."
        )

    def _read(
        self, ref: DatasetRef, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        if not isinstance(ref, DatasetRef):
            raise QuantumExecutionError(f"{self._describe()}: get() needs DatasetRefs, got {type(ref).__name__}.")
        if ref.id not in self._inputs:
            raise QuantumExecutionError(
                f"{self._describe()}: dataset {ref.dataset_type.name} {ref.data_id} ({ref.id}) is not one of its "
                "inputs; a task can only read the inputs its connections declare."
            )
        info = self._input_infos.get(ref.id)
        if info is None:
            raise QuantumExecutionError(
                f"{self._describe()}: input {ref.dataset_type.name} {ref.data_id} ({ref.id}) has no datastore "
                "record: it was not written, or the graph does not carry its record."
            )
        return self.datastore.get(info, component=component or ref.dataset_type.component, parameters=parameters)

    # Writing ----------------------------------------------------------------------------------------

    def put(self, values: Any, refs: DatasetRef | Sequence[DatasetRef] | OutputQuantizedConnection) -> None:
        """Write outputs of the quantum (files only; the main process registers them).

        Parameters
        ----------
        values : `object`, `list` or `Struct`
            One object for a ref; a list for a list of refs; a `Struct` with one attribute per
            connection of an `OutputQuantizedConnection` (a list for a ``multiple`` connection).
        refs : `DatasetRef`, sequence of `DatasetRef`, or `OutputQuantizedConnection`
            Outputs of this quantum.

        Raises
        ------
        QuantumExecutionError
            If a ref is not an output of this quantum or was already written, a `Struct` lacks an
            output connection, or a list's length differs from the refs'.
        """
        if isinstance(refs, OutputQuantizedConnection):
            if not isinstance(values, Struct):
                raise QuantumExecutionError(
                    f"{self._describe()}: put() with an OutputQuantizedConnection needs a Struct of outputs, not "
                    f"{type(values).__name__}."
                )
            present = values.getDict()
            for name, target in refs:
                if name not in present:
                    raise QuantumExecutionError(
                        f"{self._describe()}: the task's result has no {name!r} output; run() must return a Struct "
                        f"with one attribute per output connection (it has: {', '.join(present) or 'none'})."
                    )
                self._put_one_or_many(present[name], target, name)
            return
        self._put_one_or_many(values, refs, None)

    def _put_one_or_many(self, value: Any, target: Any, name: str | None) -> None:
        if isinstance(target, DatasetRef):
            self._write(value, target)
            return
        target = list(target)
        what = f"output {name!r}" if name else "put()"
        if not isinstance(value, list | tuple) or len(value) != len(target):
            got = f"{len(value)} objects" if isinstance(value, list | tuple) else f"a {type(value).__name__}"
            raise QuantumExecutionError(
                f"{self._describe()}: {what} needs a list of {len(target)} objects (one per dataset), got {got}."
            )
        for v, r in zip(value, target):
            self._write(v, r)

    def _write(self, obj: Any, ref: DatasetRef) -> None:
        if not isinstance(ref, DatasetRef) or ref.id not in self._outputs:
            shown = f"{ref.dataset_type.name} {ref.data_id} ({ref.id})" if isinstance(ref, DatasetRef) else repr(ref)
            raise QuantumExecutionError(
                f"{self._describe()}: dataset {shown} is not one of its outputs; a task can only write the outputs "
                "its connections declare."
            )
        if ref.id in self._done:
            raise QuantumExecutionError(
                f"{self._describe()}: output {ref.dataset_type.name} {ref.data_id} was already written."
            )
        info = self.datastore.put(obj, ref, clobber=self._clobber)
        self._done.add(ref.id)
        self.written.append(info)
