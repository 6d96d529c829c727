"""graph.testing: the helpers task authors use in their own tests."""

from __future__ import annotations

import numpy as np
import pytest

import toy_tasks
from graph import Struct
from graph.testing import assert_valid_output, make_quantum, make_test_repo, run_test_quantum


@pytest.fixture
def butler(tmp_path):
    b = make_test_repo(tmp_path / "repo", {"visit": [1, 2], "detector": [0, 1]})
    b.register_dataset_type("toy_input", ["visit", "detector"], "NumpyArray")
    for v in (1, 2):
        for d in (0, 1):
            b.put(np.full(2, 10.0 * v + d), "toy_input", instrument="TestCam", visit=v, detector=d)
    yield b
    b.close()


def test_mocked_run_receives_the_inputs(butler):
    task = toy_tasks.AddOneTask()
    quantum = make_quantum(task, butler, {"instrument": "TestCam", "visit": 2, "detector": 1},
                           {"input": {}, "output": {}})
    run = run_test_quantum(task, butler, quantum)
    run.assert_called_once()
    assert run.call_args.kwargs["input"].tolist() == [21.0, 21.0]


def test_real_run_registers_outputs(butler):
    task = toy_tasks.SumDetectorsTask()
    task_in = toy_tasks.AddOneTask()  # SumDetectors reads toy_output: make them first
    for d in (0, 1):
        q = make_quantum(task_in, butler, {"instrument": "TestCam", "visit": 1, "detector": d}, {"input": {}, "output": {}})
        run_test_quantum(task_in, butler, q, mock_run=False)
    quantum = make_quantum(task, butler, {"instrument": "TestCam", "visit": 1},
                           {"images": [{"detector": 0}, {"detector": 1}], "sum": {}})
    (ref,) = run_test_quantum(task, butler, quantum, mock_run=False)
    assert butler.get(ref).tolist() == [(10 + 1) + (11 + 1)] * 2


def test_make_quantum_errors(butler):
    task = toy_tasks.AddOneTask()
    with pytest.raises(ValueError, match="no input or output connection 'inptu'"):
        make_quantum(task, butler, {"instrument": "TestCam", "visit": 1, "detector": 0}, {"inptu": {}})
    with pytest.raises(ValueError, match="no 'toy_input' dataset"):
        make_quantum(task, butler, {"instrument": "TestCam", "visit": 1, "detector": 0}, {"input": {"visit": 2, "detector": 5}})


def test_assert_valid_output():
    task = toy_tasks.SumDetectorsTask()
    assert_valid_output(task, Struct(sum=np.zeros(2)))
    with pytest.raises(AssertionError, match="missing output 'sum'"):
        assert_valid_output(task, Struct(total=np.zeros(2)))
