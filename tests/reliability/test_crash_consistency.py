"""Crash consistency: SIGKILL ``pipetask run`` (serial and ``-j 2``) and ``butler ingest-files`` at random points.

After each kill, ``butler verify`` finds no registered dataset without its file; after ``butler verify
--fix`` it finds nothing at all; and the same command, resumed (``--extend-run --skip-existing`` for a
run, ``--skip-existing`` for an ingest), completes with every output registered exactly once and every
file of the run registered.  The kill times are uniform over the duration of an uninterrupted command
(seeded), so kills land before the first quantum, between quanta, inside them and after the last.
Each test prints its figures (``pytest -m reliability -s``) for docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from reliability_support import (
    butler_cli,
    count_outputs,
    fork_command,
    kill_after,
    make_pipeline,
    make_repo,
    opened,
    pipetask_cli,
    run_files,
    wait_dead,
    wait_exit,
)

from butler.errors import ButlerError

pytestmark = pytest.mark.reliability

N_TRIALS = 20
N_VISITS = 3  # x 4 detectors: 12 addOne quanta and 3 sum quanta
SLEEP = 0.02  # seconds each addOne quantum sleeps, so an execution lasts long enough to be hit anywhere
PIPELINE_OUTPUTS = (
    "toy_output", "toy_visit_sum", "addOne_metadata", "addOne_log", "sum_metadata", "sum_log",
    "addOne_config", "sum_config", "packages",
)  # fmt: skip
N_FILES = 20  # files of one ingest


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy repository (inputs of 3 visits x 4 detectors) with the toy pipeline file beside it.

    The pipeline's dataset types are registered already, so that the first (reference) execution
    lasts as long as the others.
    """
    base = tmp_path_factory.mktemp("crash")
    pipeline = make_pipeline({"sleep": SLEEP}, stats=False)
    with make_repo(base / "repo", n_visits=N_VISITS) as butler:
        pipeline.to_graph(butler.dimensions).register_dataset_types(butler)
    (base / "pipeline.yaml").write_text(pipeline.to_yaml())
    return base / "repo"


def _verify(root: Path, *options: str) -> tuple[int, list[dict]]:
    """``butler verify ROOT --format json [options]``: exit code and problem rows."""
    result = CliRunner().invoke(butler_cli, ["verify", str(root), "--format", "json", *options])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def _check_and_fix(root: Path, tally: Counter) -> None:
    """What a killed command may leave (orphan and temporary files) and what it may not (datasets
    without files); then ``verify --fix`` and a clean ``verify``."""
    _, problems = _verify(root)
    kinds = Counter(row["problem"] for row in problems)
    assert not kinds["missing file"] and not kinds["no file record"] and not kinds["corrupt file"], problems
    tally["orphan files"] += kinds["orphan file"]
    tally["temporary files"] += kinds["temporary file"]
    assert _verify(root, "--fix")[0] == 0
    assert _verify(root) == (0, [])


def _finished_quanta(root: Path, run: str) -> int:
    with opened(root) as butler:
        try:
            return sum(len(butler.registry.query_datasets(n, [run], explain=False)) for n in ("addOne_metadata", "sum_metadata"))
        except ButlerError:  # the run (or a dataset type) was never registered
            return 0


def _kill_and_resume_runs(root: Path, jobs: int, log: Path) -> Counter:
    """Run the toy pipeline once uninterrupted, then N_TRIALS times killed and resumed; return the tally."""
    pipeline = root.parent / "pipeline.yaml"
    command = ["run", "-b", str(root), "-p", str(pipeline), "-i", "inputs", "--register-dataset-types", "-j", str(jobs)]
    start = time.monotonic()
    assert wait_exit(fork_command(pipetask_cli, [*command, "--output-run", f"j{jobs}/reference"], log)) == 0
    duration = time.monotonic() - start
    with opened(root) as butler:
        expected = count_outputs(butler, f"j{jobs}/reference", PIPELINE_OUTPUTS)
    n_quanta = len(expected["addOne_metadata"]) + len(expected["sum_metadata"])
    rng = random.Random(1000 + jobs)
    tally: Counter = Counter()
    for trial in range(N_TRIALS):
        run = f"j{jobs}/killed{trial}"
        code, workers = kill_after(fork_command(pipetask_cli, [*command, "--output-run", run], log), rng.uniform(0, duration))
        alive = wait_dead(workers, timeout=10)
        assert not alive, f"trial {trial}: workers {alive} outlived their killed executor"
        finished = _finished_quanta(root, run)
        tally["finished before the kill" if code == 0 else "before the first quantum" if finished == 0
              else "after the last quantum" if finished == n_quanta else "between or inside quanta"] += 1
        _check_and_fix(root, tally)
        resumed = wait_exit(fork_command(pipetask_cli, [*command, "--output-run", run, "--extend-run", "--skip-existing"], log))
        assert resumed == 0, f"trial {trial}: the resumed run failed, see {log}"
        with opened(root) as butler:
            counts = count_outputs(butler, run, PIPELINE_OUTPUTS)
            on_disk, recorded = run_files(butler, run)
        tally["lost"] += sum(len(expected[n].keys() - counts[n].keys()) for n in PIPELINE_OUTPUTS)
        tally["duplicated"] += sum(c - 1 for n in PIPELINE_OUTPUTS for c in counts[n].values())
        assert counts == expected, f"trial {trial}: outputs differ from the uninterrupted run's"
        assert on_disk == recorded, f"trial {trial}: files {on_disk ^ recorded} are not exactly the registered ones"
        tally["resumed"] += 1
    with opened(root) as butler:
        assert butler.verify(checksums=True).ok
    return tally


def _print(title: str, tally: Counter) -> None:
    phases = ", ".join(f"{n} {k}" for k, n in tally.items() if k not in ("resumed", "lost", "duplicated", "orphan files", "temporary files"))
    print(
        f"\n{title}: {tally['resumed']}/{N_TRIALS} resumed, {tally['lost']} lost, {tally['duplicated']} duplicated; "
        f"kills: {phases}; verify --fix moved {tally['orphan files']} orphan and deleted {tally['temporary files']} "
        "temporary files"
    )


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkill_during_run_then_resume_loses_and_duplicates_nothing(repo, tmp_path, jobs):
    tally = _kill_and_resume_runs(repo, jobs, tmp_path / "commands.log")
    _print(f"SIGKILL during pipetask run -j {jobs}", tally)
    assert tally["resumed"] == N_TRIALS and tally["lost"] == tally["duplicated"] == 0


def _ingest_table(directory: Path) -> Path:
    """N_FILES small .npy files, one per (visit, detector) of the toy camera, each filled with its
    index, and the ECSV table that lists them."""
    directory.mkdir()
    rows = []
    for i in range(N_FILES):
        visit, detector = divmod(i, 4)
        path = directory / f"raw_{visit}_{detector}.npy"
        np.save(path, np.full((8, 8), i, dtype=np.float32))
        rows.append((path.name, "Cam", visit, detector))
    table = directory / "files.ecsv"
    Table(rows=rows, names=("path", "instrument", "visit", "detector")).write(table, format="ascii.ecsv")
    return table


def test_sigkill_during_ingest_then_resume_ingests_every_file_once(repo, tmp_path):
    table = _ingest_table(tmp_path / "files")
    log = tmp_path / "commands.log"
    with opened(repo, writeable=True) as butler:
        butler.register_dataset_type("toy_raw", ["instrument", "visit", "detector"], "NumpyArray")
    command = ["ingest-files", str(repo), "toy_raw", "--transfer", "copy"]
    start = time.monotonic()
    assert wait_exit(fork_command(butler_cli, [*command[:3], "ingest/reference", str(table), *command[3:]], log)) == 0
    duration = time.monotonic() - start
    rng = random.Random(2000)
    tally: Counter = Counter()
    for trial in range(N_TRIALS):
        run = f"ingest/killed{trial}"
        args = [*command[:3], run, str(table), *command[3:]]
        code, _ = kill_after(fork_command(butler_cli, args, log), rng.uniform(0, duration))
        tally["finished before the kill" if code == 0 else "killed while ingesting"] += 1
        _check_and_fix(repo, tally)
        assert wait_exit(fork_command(butler_cli, [*args, "--skip-existing"], log)) == 0, f"trial {trial}: see {log}"
        with opened(repo) as butler:
            counts = count_outputs(butler, run, ["toy_raw"])["toy_raw"]
            on_disk, recorded = run_files(butler, run)
            refs = butler.registry.query_datasets("toy_raw", [run], explain=False)
            values = {r.data_id["visit"] * 4 + r.data_id["detector"]: butler.get(r)[0, 0] for r in refs}
        tally["lost"] += N_FILES - len(counts)
        tally["duplicated"] += sum(c - 1 for c in counts.values())
        assert len(counts) == N_FILES and set(counts.values()) == {1}, f"trial {trial}"
        assert values == {i: float(i) for i in range(N_FILES)} and on_disk == recorded
        tally["resumed"] += 1
    _print("SIGKILL during butler ingest-files", tally)
    assert tally["resumed"] == N_TRIALS and tally["lost"] == tally["duplicated"] == 0
