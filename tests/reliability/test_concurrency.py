"""Concurrency on one SQLite repository: four ``pipetask run`` processes into different output runs at once
lose nothing; two into the same run are refused for the second (`RunLockedError`), and nothing is corrupted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from reliability_support import (
    butler_cli,
    count_outputs,
    fork_command,
    make_pipeline,
    make_repo,
    opened,
    pipetask_cli,
    run_files,
    wait_exit,
)

from butler.locks import run_lock

pytestmark = pytest.mark.reliability

N_PROCESSES = 4
N_VISITS = 5
OUTPUTS = ("toy_output", "toy_visit_sum", "addOne_metadata", "addOne_log", "sum_metadata", "sum_log")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A toy repository (5 visits x 4 detectors of inputs) and the toy pipeline (addOne sleeps 30 ms)."""
    pipeline = make_pipeline({"sleep": 0.03}, stats=False)
    with make_repo(tmp_path / "repo", n_visits=N_VISITS) as butler:
        pipeline.to_graph(butler.dimensions).register_dataset_types(butler)
    (tmp_path / "pipeline.yaml").write_text(pipeline.to_yaml())
    return tmp_path / "repo"


def _run(repo: Path, *args: str) -> list[str]:
    return ["run", "-b", str(repo), "-p", str(repo.parent / "pipeline.yaml"), "-i", "inputs", *args]


def test_four_processes_into_different_runs_all_succeed_and_lose_nothing(repo, tmp_path):
    logs = [tmp_path / f"run{i}.log" for i in range(N_PROCESSES)]
    start = time.monotonic()
    pids = [fork_command(pipetask_cli, _run(repo, "--output-run", f"run{i}"), log) for i, log in enumerate(logs)]
    codes = [wait_exit(pid) for pid in pids]
    wall = time.monotonic() - start
    assert codes == [0] * N_PROCESSES, [log.read_text()[-2000:] for log in logs]
    with opened(repo) as butler:
        with butler.registry.db.transaction() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        windows, lost, duplicated = [], 0, 0
        for i in range(N_PROCESSES):
            counts = count_outputs(butler, f"run{i}", OUTPUTS)
            lost += sum(max(0, n - len(counts[name])) for name, n in zip(OUTPUTS, (20, 5, 20, 20, 5, 5), strict=True))
            duplicated += sum(c - 1 for name in OUTPUTS for c in counts[name].values())
            on_disk, recorded = run_files(butler, f"run{i}")
            assert on_disk == recorded
            metadata = [butler.get(ref) for ref in butler.registry.query_datasets("addOne_metadata", [f"run{i}"])]
            windows.append((min(m["quantum.startUtc"] for m in metadata), max(m["quantum.endUtc"] for m in metadata)))
        assert butler.verify(checksums=True).ok
    print(f"\n{N_PROCESSES} concurrent pipetask runs (SQLite, different runs): {codes.count(0)}/{N_PROCESSES} succeeded, "
          f"{lost} lost, {duplicated} duplicated, wall {wall:.1f} s")
    assert lost == duplicated == 0
    assert max(start for start, _ in windows) < min(end for _, end in windows), "the runs did not overlap"


def test_a_second_process_writing_the_same_run_is_refused_and_corrupts_nothing(repo, tmp_path):
    graph = tmp_path / "same.qgraph"
    slow = ("-c", "addOne:sleep=0.2")  # 20 quanta: 2 s in 2 workers, while the second process starts
    result = CliRunner().invoke(pipetask_cli, ["qgraph", *_run(repo, "--output-run", "same", "-q", str(graph), *slow)[1:]])
    assert result.exit_code == 0, result.output
    first = fork_command(pipetask_cli, ["run", "-b", str(repo), "-g", str(graph), "-j", "2"], tmp_path / "first.log")
    deadline = time.monotonic() + 30
    while "same" not in _runs(repo):  # the first process is executing (it registered the run)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = fork_command(pipetask_cli, ["run", "-b", str(repo), "-g", str(graph)], tmp_path / "second.log")
    assert wait_exit(second) == 1
    message = (tmp_path / "second.log").read_text()
    assert "run 'same' is being written by process" in message and "write to another output run" in message
    assert wait_exit(first) == 0, (tmp_path / "first.log").read_text()[-2000:]
    with opened(repo) as butler:
        counts = count_outputs(butler, "same", OUTPUTS)
        assert [len(counts[name]) for name in OUTPUTS] == [20, 5, 20, 20, 5, 5]
        assert all(c == 1 for name in OUTPUTS for c in counts[name].values())
        assert butler.verify(checksums=True).ok
    print(f"\n2 processes writing run 'same': the second refused at once ({message.strip().splitlines()[-1][:90]}...), "
          "the first complete, verify clean")


def _runs(repo: Path) -> list[str]:
    with opened(repo) as butler:
        return [record.name for record in butler.registry.query_collections()]


def test_repairs_and_removals_wait_for_the_writer_of_a_run(repo):
    root = repo.resolve()
    with opened(repo, writeable=True) as butler:
        butler.registry.register_run("busy")
        stray = root / "busy" / "stray.npy"
        stray.parent.mkdir()
        stray.write_bytes(b"written by a process in progress")
        with run_lock(root, "busy"):  # as a pipetask run executing into "busy" holds it
            result = CliRunner().invoke(butler_cli, ["verify", str(repo), "--fix"])
            assert result.exit_code == 1 and "while runs are being written ('busy' by process" in result.output
            assert stray.exists()
            result = CliRunner().invoke(butler_cli, ["remove-runs", str(repo), "busy", "--no-confirm"])
            assert result.exit_code == 1 and "run 'busy' is being written" in result.output
        assert [record.name for record in butler.registry.query_collections("busy")] == ["busy"]
        assert butler.verify(fix=True).orphan_files == ["busy/stray.npy"]
        assert butler.remove_runs(["busy"]) == 0
