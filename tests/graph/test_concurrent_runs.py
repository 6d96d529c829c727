"""Several ``pipetask run`` processes at once into different output runs of one repository lose nothing
(PostgreSQL, and SQLite with its busy timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import N_DETECTORS, N_VISITS
from test_execute import VALUE, data_ids, get, input_value, make_pipeline

from butler import Butler

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
N_RUNS = 3


def _pipetask(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), str(TESTS / "graph")])}
    command = [sys.executable, "-c", "from graph.cli import main; main()", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_concurrent_runs_register_every_dataset_once_with_its_file(populated: Butler, tmp_path: Path):
    butler = populated
    butler.register_dataset_type("toy_input", ["instrument", "visit", "detector"], "NumpyArray")
    for v in range(N_VISITS):
        for d in range(N_DETECTORS):
            butler.put(input_value(v, d), "toy_input", {"instrument": "Cam", "visit": v, "detector": d}, run="inputs")
    toy = make_pipeline({"sleep": 0.05}, stats=False)  # 40 addOne + 10 sum quanta, >= 2 s
    # Not registered beforehand: every process registers the pipeline's new dataset types at once
    # (--register-dataset-types), which must not fail (tests/butler/test_concurrent_registration.py).
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(toy.to_yaml())
    root = str(butler.config.root)
    processes = [
        _pipetask("run", "-b", root, "-p", str(pipeline), "-i", "inputs", "--output-run", f"run{i}",
                  "--register-dataset-types")
        for i in range(N_RUNS)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"{out}\n{err}"
    expected = {"toy_output": N_VISITS * N_DETECTORS, "toy_visit_sum": N_VISITS, "addOne_metadata": N_VISITS * N_DETECTORS,
                "addOne_log": N_VISITS * N_DETECTORS, "sum_metadata": N_VISITS, "addOne_config": 1, "packages": 1}
    for i in range(N_RUNS):
        for name, n in expected.items():
            found = data_ids(butler, name, run=f"run{i}")  # duplicates kept
            assert len(found) == len(set(found)) == n, (i, name)
        np.testing.assert_array_equal(get(butler, "toy_output", f"run{i}", visit=7, detector=2), input_value(7, 2) + VALUE)
    windows = []  # when each run executed its quanta: the runs must have overlapped
    for i in range(N_RUNS):
        metadata = [butler.get(ref) for ref in butler.registry.query_datasets("addOne_metadata", [f"run{i}"])]
        windows.append((min(m["quantum.startUtc"] for m in metadata), max(m["quantum.endUtc"] for m in metadata)))
    assert max(start for start, _ in windows) < min(end for _, end in windows), windows
    report = butler.verify(checksums=True)
    assert report.ok, report
