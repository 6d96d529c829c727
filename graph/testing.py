"""Tools for testing PipelineTasks: a small repository, one quantum, and running it.

Typical use in a task's own tests::

    butler = make_test_repo(tmp_path / "repo", {"visit": [1, 2], "detector": [0, 1]}, run="test")
    butler.put(image, "postISRCCD", instrument="TestCam", visit=1, detector=0)
    task = CharacterizeImageTask()
    quantum = make_quantum(task, butler, {"instrument": "TestCam", "visit": 1, "detector": 0},
                           {"exposure": {"visit": 1, "detector": 0}, "characterized": {"visit": 1, "detector": 0}})
    run_mock = run_test_quantum(task, butler, quantum)               # run() is mocked: check its arguments
    run_mock.assert_called_once()
    outputs = run_test_quantum(task, butler, quantum, mock_run=False)  # really run; outputs are registered
    assert_valid_output(task, task.run(**run_mock.call_args.kwargs))
"""

from __future__ import annotations

import unittest.mock
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from butler import Butler, DataCoordinate, DatasetIdGenEnum, DatasetRef, DatasetType

from .connections import InputQuantizedConnection, OutputQuantizedConnection
from .execute.quantum_context import QuantumContext
from .execute.registration import register_datasets
from .execute.single_quantum import quantized_refs
from .quantum import Quantum
from .struct import Struct
from .task import PipelineTask

__all__ = ["assert_valid_output", "make_quantum", "make_test_repo", "run_test_quantum"]

_DEFAULTS = {"instrument": "TestCam", "band": "r", "day_obs": 20240101, "skymap": "test"}


def make_test_repo(root: str | Path, values: Mapping[str, Sequence[Any]], *, run: str = "test") -> Butler:
    """Create a repository whose dimension records hold the given values (and defaults for the rest).

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        Directory of the new repository.
    values : `dict` [`str`, sequence]
        Dimension name -> values, e.g. ``{"visit": [1, 2], "detector": [0, 1, 2]}``.  The first value
        of ``instrument`` (default ``TestCam``), ``physical_filter`` (default ``<band>1``), ``band``
        (``r``), ``day_obs`` (``20240101``) and ``skymap`` (``test``) are used for the records that need them.
    run : `str`, optional
        The RUN collection the returned Butler writes to and reads from.

    Returns
    -------
    butler : `Butler`
        A writeable butler with ``run`` as its run and collection.
    """
    butler = Butler.create(root, run=run)
    reg = butler.registry
    first = {k: (list(values.get(k, [])) or [v])[0] for k, v in _DEFAULTS.items()}
    first["physical_filter"] = (list(values.get("physical_filter", [])) or [f"{first['band']}1"])[0]
    instrument = first["instrument"]
    reg.insert_dimension_data("instrument", *[{"name": i} for i in values.get("instrument", [instrument])])
    reg.insert_dimension_data("band", *[{"name": b} for b in values.get("band", [first["band"]])])
    reg.insert_dimension_data(
        "physical_filter",
        *[{"instrument": instrument, "name": f, "band": first["band"]} for f in values.get("physical_filter", [first["physical_filter"]])],
    )
    reg.insert_dimension_data("day_obs", *[{"instrument": instrument, "id": d} for d in values.get("day_obs", [first["day_obs"]])])
    reg.insert_dimension_data("detector", *[{"instrument": instrument, "id": d, "full_name": f"D{d}"} for d in values.get("detector", [])])
    for element in ("visit", "exposure"):
        reg.insert_dimension_data(
            element,
            *[{"instrument": instrument, "id": v, "physical_filter": first["physical_filter"], "day_obs": first["day_obs"]}
              for v in values.get(element, [])],
        )
    if any(k in values for k in ("skymap", "tract", "patch")):
        reg.insert_dimension_data("skymap", {"name": first["skymap"]})
        reg.insert_dimension_data("tract", *[{"skymap": first["skymap"], "id": t} for t in values.get("tract", [0])])
        tract = (list(values.get("tract", [])) or [0])[0]
        reg.insert_dimension_data("patch", *[{"skymap": first["skymap"], "tract": tract, "id": p} for p in values.get("patch", [])])
    return butler


def make_quantum(
    task: PipelineTask,
    butler: Butler,
    data_id: Mapping[str, Any],
    io_data_ids: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
) -> Quantum:
    """Make the quantum of a task for one data ID, with the given data IDs for its connections.

    Parameters
    ----------
    task : `PipelineTask`
    butler : `Butler`
        Inputs are found in its collections; outputs are predicted in its run (their dataset types
        are registered if needed).
    data_id : mapping
        The quantum's data ID.
    io_data_ids : mapping
        Connection name -> data ID (a list of data IDs for a ``multiple`` connection).  Values of
        ``data_id`` fill in what these leave out.

    Raises
    ------
    ValueError
        If a connection name is not one of the task's, or an input dataset is not in the butler.
    """
    connections = type(task.config).ConnectionsClass(config=task.config)
    universe = butler.dimensions
    quantum_id = DataCoordinate.standardize(data_id, universe=universe, dimensions=connections.dimensions)
    quantum = Quantum(Quantum.make_id(butler.run or "", task.getName(), quantum_id), task.getName(),
                      butler.registry.expand_data_ids([quantum_id], full_only=True)[0])
    inputs = connections.connections_of("inputs", "prerequisiteInputs")
    outputs = connections.connections_of("outputs")
    for name, given in io_data_ids.items():
        if name not in inputs and name not in outputs:
            raise ValueError(f"{type(task).__name__} has no input or output connection {name!r}; "
                             f"connections: {', '.join(sorted(inputs) + sorted(outputs))}.")
        connection = inputs.get(name) or outputs[name]
        group = universe.conform(connection.dimensions)
        ids = [given] if isinstance(given, Mapping) else list(given)
        data_ids = [DataCoordinate.standardize({**dict(quantum_id.items()), **d}, universe=universe, dimensions=group) for d in ids]
        if name in inputs:
            refs = []
            for d in data_ids:
                ref = butler.find_dataset(connection.name, d)
                if ref is None:
                    raise ValueError(f"input {name!r}: no {connection.name!r} dataset {dict(d.items())} in {butler.collections}.")
                refs.append(ref)
            quantum.inputs[name] = refs
        else:
            dt = DatasetType(connection.name, group, connection.storageClass)
            butler.register_dataset_type(dt)
            full = butler.registry.expand_data_ids(data_ids, full_only=True)
            quantum.outputs[name] = [
                DatasetRef(dt, d, butler.run or "", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN) for d in full
            ]
    return quantum


def run_test_quantum(task: PipelineTask, butler: Butler, quantum: Quantum, *, mock_run: bool = True) -> Any:
    """Run a task's ``runQuantum`` on a quantum.

    Parameters
    ----------
    mock_run : `bool`, optional
        Replace the task's ``run`` (and the writing of outputs) with a mock and return it, to check
        that ``runQuantum`` read the right inputs.  With `False`, really run and register the
        outputs in the butler's run; return their refs.
    """
    connections = type(task.config).ConnectionsClass(config=task.config)
    input_ids = [r.id for r in quantum.input_refs()]
    infos = {i: butler._with_content(butler._stored_info(r)) for i, r in zip(input_ids, quantum.input_refs())}
    context = QuantumContext(butler.datastore, quantum, infos, connections=connections)
    input_refs = InputQuantizedConnection(quantized_refs(quantum.inputs, connections, quantum, "input"))
    output_refs = OutputQuantizedConnection(quantized_refs(quantum.outputs, connections, quantum, "output"))
    if mock_run:
        with unittest.mock.patch.object(task, "run") as run_mock, unittest.mock.patch.object(QuantumContext, "put"):
            task.runQuantum(context, input_refs, output_refs)
        return run_mock
    task.runQuantum(context, input_refs, output_refs)
    written = {info.dataset_id: info for info in context.written}
    refs = [r for r in quantum.output_refs(provenance=False) if r.id in written]
    register_datasets(butler, refs, [written[r.id] for r in refs])
    return refs


def assert_valid_output(task: PipelineTask, result: Struct) -> None:
    """Check that a ``run`` result has one attribute per output connection, lists for ``multiple`` ones.

    Raises
    ------
    AssertionError
        Naming the missing or mis-shaped outputs.
    """
    connections = type(task.config).ConnectionsClass(config=task.config)
    problems = []
    for name, connection in connections.connections_of("outputs").items():
        if not hasattr(result, name):
            problems.append(f"missing output {name!r}")
        elif connection.multiple and not isinstance(getattr(result, name), list | tuple):
            problems.append(f"output {name!r} is `multiple` but not a list")
    if problems:
        raise AssertionError(f"{type(task).__name__}.run result: {'; '.join(problems)}.")
