"""A repository opened with ``Butler(..., writeable=False)`` refuses every write with
`ReadOnlyRepositoryError`, and neither its database file nor any other file changes by a byte."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reliability_support import make_pipeline, make_repo

from butler import Butler, CollectionType, FileDataset, Timespan
from butler.errors import ReadOnlyRepositoryError
from graph.builder import build_quantum_graph
from graph.execute import execute_graph
from graph.quantum_graph import QuantumGraph

pytestmark = pytest.mark.reliability

DATA_ID = {"instrument": "Cam", "visit": 1, "detector": 1}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with datasets in runs, a TAGGED, a CHAINED and a CALIBRATION collection, an export
    directory and a saved quantum graph beside it; no process has it open."""
    base = tmp_path_factory.mktemp("read_only")
    with make_repo(base / "repo", n_visits=2) as butler:
        butler.register_dataset_type("flat", ["instrument", "detector"], "NumpyArray", is_calibration=True)
        butler.register_dataset_type("unused", ["instrument"], "NumpyArray")
        flat = butler.put(np.ones(2), "flat", instrument="Cam", detector=1, run="calibs")
        butler.registry.register_collection("calib", CollectionType.CALIBRATION)
        butler.registry.certify("calib", [flat], Timespan("2020-01-01T00:00:00", None))
        refs = butler.registry.query_datasets("toy_input", ["inputs"])
        butler.registry.register_collection("tagged", CollectionType.TAGGED)
        butler.registry.associate("tagged", refs[:2])
        butler.collection_chain("chain", ["inputs", "calibs"])
        butler.export(base / "export", collections="inputs")
        pipeline_graph = make_pipeline(stats=False).to_graph(butler.dimensions)
        pipeline_graph.register_dataset_types(butler)
        graph, _ = build_quantum_graph(pipeline_graph, butler, input_collections=["inputs"], output_run="out")
        graph.save(base / "g.qgraph")
    np.save(base / "source.npy", np.zeros(2))
    return base / "repo"


def _state(root: Path) -> dict[str, Any]:
    """SHA-256 of the database and of every file, and every path (directories included) under the root."""
    state: dict[str, Any] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.join(directory, name)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            state[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def _writes(base: Path) -> dict[str, Callable[[Butler], Any]]:
    refs = lambda b: b.registry.query_datasets("toy_input", ["inputs"])  # noqa: E731
    flat = lambda b: b.registry.query_datasets("flat", ["calibs"])  # noqa: E731
    return {
        "put": lambda b: b.put(np.zeros(2), "toy_input", DATA_ID | {"visit": 5}, run="inputs"),
        "put-new-run": lambda b: b.put(np.zeros(2), "toy_input", DATA_ID, run="new"),
        "ingest-copy": lambda b: b.ingest(FileDataset(base / "source.npy", "toy_input", DATA_ID | {"visit": 6}), run="x"),
        "ingest-direct": lambda b: b.ingest(FileDataset(base / "source.npy", "toy_input", DATA_ID), transfer="direct", run="x"),
        "register-dataset-type": lambda b: b.register_dataset_type("other", ["instrument"], "NumpyArray"),
        "remove-runs": lambda b: b.remove_runs(["inputs"]),
        "collection-chain": lambda b: b.collection_chain("chain", ["calibs"], mode="prepend"),
        "register-run": lambda b: b.registry.register_run("new"),
        "register-collection": lambda b: b.registry.register_collection("t2", CollectionType.TAGGED),
        "set-collection-chain": lambda b: b.registry.set_collection_chain("chain", ["inputs"]),
        "remove-collection": lambda b: b.registry.remove_collection("tagged"),
        "insert-dimension-data": lambda b: b.registry.insert_dimension_data("instrument", {"name": "New"}),
        "sync-dimension-data": lambda b: b.registry.sync_dimension_data("instrument", {"name": "New"}),
        "associate": lambda b: b.registry.associate("tagged", refs(b)),
        "disassociate": lambda b: b.registry.disassociate("tagged", refs(b)[:1]),
        "certify": lambda b: b.registry.certify("calib", flat(b), Timespan("2019-01-01T00:00:00", "2019-06-01T00:00:00")),
        "decertify": lambda b: b.registry.decertify("calib", "flat", Timespan("2021-01-01T00:00:00", None)),
        "remove-datasets": lambda b: b.registry.remove_datasets(refs(b)[:1]),
        "remove-dataset-type": lambda b: b.registry.remove_dataset_type("unused"),
        "import": lambda b: b.import_(base / "export"),
        "verify-fix": lambda b: b.verify(fix=True),
        "execute-graph": lambda b: execute_graph(QuantumGraph.load(base / "g.qgraph", universe=b.dimensions), b),
    }  # fmt: skip


WRITES = list(_writes(Path()))


@pytest.mark.parametrize("write", WRITES)
def test_read_only_repository_refuses_the_write_and_changes_no_byte(repo, write):
    before = _state(repo)  # with no connection open: no -wal or -shm file
    with Butler(repo, writeable=False, collections="inputs", run="inputs") as read_only:
        with pytest.raises(ReadOnlyRepositoryError, match="read-only .*nothing was") as info:
            _writes(repo.parent)[write](read_only)
    assert "writeable=True" in str(info.value)
    assert _state(repo) == before


def test_read_only_repository_still_reads(repo):
    before = _state(repo)
    with Butler(repo, writeable=False, collections="inputs") as read_only:
        assert len(read_only.query_datasets("toy_input")) == 8
        assert read_only.get("flat", instrument="Cam", detector=1, visit=1, collections="calib").tolist() == [1.0, 1.0]
        assert read_only.verify(checksums=True).ok
    assert _state(repo) == before
