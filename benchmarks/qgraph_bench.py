"""Quantum graph speed: building the graph of a 3-task toy pipeline, and saving/loading it.

The pipeline (toy tasks of ``tests/graph/toy_tasks.py``) is ``isr`` (AddOneTask, per visit+detector)
-> ``calib`` (AddOneTask, per visit+detector) -> ``sum`` (SumDetectorsTask, per visit, reading every
detector of its visit).  The repository has ``100 * scale`` visits x 100 detectors and one
``toy_input`` dataset per visit+detector, inserted directly into the registry with fake datastore
records (no files: a build never reads them), so the graph has ``201 * 100 * scale`` quanta.

Prints one JSON line per scale:
- ``quanta``: number of quanta;
- ``build_s``: seconds of `build_quantum_graph` (registry queries included);
- ``save_s`` / ``load_s``: seconds of `QuantumGraph.save` / `QuantumGraph.load`;
- ``file_mb``: size of the saved (gzip-compressed JSON) graph in MB;
- ``setup_s``: seconds to make the repository (not part of the measurement).

and one JSON line for execution (``--exec``, default on), on a repository with real input files:
- ``exec_quanta``: quanta of the executed graph (the same 3-task pipeline over ``--exec-visits``
  visits x 100 detectors: running all 20,100 quanta with 50 ms each would take 17 minutes);
- ``overhead_ms_serial`` / ``overhead_ms_j2``: total run time / quanta with the toy tasks (no real
  work: each quantum reads one small array and writes one, plus metadata and log), serial and ``-j 2``;
- ``burn_quanta``, ``burn_serial_s``, ``burn_j2_s``, ``burn_ratio``: wall time of a graph whose
  per-detector quanta each burn 50 ms of CPU (``--burn-visits`` visits), serial and ``-j 2``.

Usage: ``python benchmarks/qgraph_bench.py [--scale 1,10] [--profile] [--no-exec]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests" / "graph"))
sys.path.append(str(ROOT / "benchmarks"))

import toy_tasks  # noqa: E402
from registry_bench import populate_dimensions  # noqa: E402

from butler import Butler  # noqa: E402
from graph.builder import build_quantum_graph  # noqa: E402
from graph.pipeline import Pipeline  # noqa: E402
from graph.quantum_graph import QuantumGraph  # noqa: E402
from graph.execute import execute_graph  # noqa: E402

N_DETECTORS = 100
INPUT_RUN = "bench/inputs"


def make_repo(root: Path, n_visits: int, n_detectors: int = N_DETECTORS) -> Butler:
    """A repository with ``n_visits`` x ``n_detectors`` ``toy_input`` datasets (fake file records)."""
    butler = Butler.create(root)
    reg = butler.registry
    populate_dimensions(butler, n_visits, n_detectors)
    butler.register_dataset_type("toy_input", ["instrument", "visit", "detector"], "NumpyArray")
    reg.register_run(INPUT_RUN)
    refs = reg.insert_datasets(
        "toy_input",
        ({"instrument": "Bench", "visit": v, "detector": d} for v in range(n_visits) for d in range(n_detectors)),
        INPUT_RUN,
    )
    reg.insert_datastore_records(
        [
            {
                "dataset_id": ref.id,
                "path": f"{INPUT_RUN}/toy_input/{ref.data_id['visit']}/toy_input_{ref.data_id['visit']}_{ref.data_id['detector']}.npy",
                "formatter": "butler.formatters.numpy.NumpyFormatter",
                "storage_class": "NumpyArray",
                "checksum": "sha256:" + "0" * 64,
                "file_size": 1024,
            }
            for ref in refs
        ]
    )
    return butler


def make_pipeline() -> Pipeline:
    """The 3-task toy pipeline: isr -> calib (per visit+detector) -> sum (per visit)."""
    pipeline = Pipeline("quantum graph benchmark")
    pipeline.add_task(toy_tasks.AddOneTask, "isr", config={"connections": {"out": "toy_stage1"}})
    pipeline.add_task(toy_tasks.AddOneTask, "calib", config={"connections": {"input": "toy_stage1"}})
    pipeline.add_task(toy_tasks.SumDetectorsTask, "sum")
    return pipeline


def run(scale: int, tmp: Path, profile: bool) -> dict[str, float | int]:
    t0 = time.perf_counter()
    butler = make_repo(tmp / f"repo{scale}", 100 * scale)
    setup_s = time.perf_counter() - t0
    pipeline_graph = make_pipeline().to_graph(butler.dimensions)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    t0 = time.perf_counter()
    graph, report = build_quantum_graph(pipeline_graph, butler, input_collections=[INPUT_RUN], output_run="bench/out")
    build_s = time.perf_counter() - t0
    path = tmp / f"graph{scale}.qgraph"
    t0 = time.perf_counter()
    graph.save(path)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = QuantumGraph.load(path, universe=butler.dimensions)
    load_s = time.perf_counter() - t0
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        print(report, file=sys.stderr)
        print(report.timings, file=sys.stderr)
    assert len(loaded) == len(graph)
    butler.close()
    return {
        "scale": scale,
        "quanta": len(graph),
        "build_s": round(build_s, 3),
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
        "file_mb": round(path.stat().st_size / 1e6, 2),
        "setup_s": round(setup_s, 1),
    }


def make_exec_repo(root: Path, n_visits: int) -> Butler:
    """A repository with real ``toy_input`` files for ``n_visits`` x 100 detectors."""
    import numpy as np

    butler = make_repo(root, 0)  # dimensions and dataset type only
    reg = butler.registry
    reg.insert_dimension_data(
        "visit", *[{"instrument": "Bench", "id": v, "physical_filter": "r1", "day_obs": 20250101} for v in range(n_visits)]
    )
    array = np.arange(16, dtype=np.float64)
    for v in range(n_visits):
        for d in range(N_DETECTORS):
            butler.put(array, "toy_input", instrument="Bench", visit=v, detector=d, run="bench/real")
    return butler


def burn_pipeline(millis: float) -> Pipeline:
    """isr -> calib (each burning ``millis`` ms of CPU per quantum) -> sum."""
    import toy_exec_tasks

    pipeline = Pipeline("burn benchmark")
    pipeline.add_task(toy_exec_tasks.BurnTask, "isr", config={"millis": millis, "connections": {"output": "burn1"}})
    pipeline.add_task(toy_exec_tasks.BurnTask, "calib", config={"millis": millis, "connections": {"input": "burn1", "output": "burn2"}})
    pipeline.add_task(toy_tasks.SumDetectorsTask, "sum", config={"connections": {"images": "burn2"}})
    return pipeline


def timed_run(butler: Butler, pipeline: Pipeline, output_run: str, jobs: int, where: str) -> tuple[int, float]:
    """Build and execute a graph; return its number of quanta and the execution wall time."""
    graph, _ = build_quantum_graph(
        pipeline.to_graph(butler.dimensions), butler, input_collections=["bench/real"], output_run=output_run,
        where=where,
    )
    graph.pipeline_graph.register_dataset_types(butler)
    t0 = time.perf_counter()
    report = execute_graph(graph, butler, jobs=jobs)
    elapsed = time.perf_counter() - t0
    assert report.ok, str(report)
    return len(graph), elapsed


def run_exec(tmp: Path, exec_visits: int, burn_visits: int) -> dict[str, float | int]:
    butler = make_exec_repo(tmp / "exec", max(exec_visits, burn_visits))
    out: dict[str, float | int] = {}
    for jobs, key in ((1, "overhead_ms_serial"), (2, "overhead_ms_j2")):
        n, elapsed = timed_run(butler, make_pipeline(), f"bench/exec{jobs}", jobs, f"visit < {exec_visits}")
        out["exec_quanta"], out[key] = n, round(1e3 * elapsed / n, 3)
    burn = {jobs: timed_run(butler, burn_pipeline(50.0), f"bench/burn{jobs}", jobs, f"visit < {burn_visits}") for jobs in (1, 2)}
    out["burn_quanta"] = burn[1][0]
    out["burn_serial_s"] = round(burn[1][1], 2)
    out["burn_j2_s"] = round(burn[2][1], 2)
    out["burn_ratio"] = round(burn[2][1] / burn[1][1], 3)
    butler.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1", help="comma-separated scales: 1 = 100 visits x 100 detectors")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of build+save+load on stderr")
    parser.add_argument("--no-exec", dest="execute", action="store_false", help="skip the execution measurements")
    parser.add_argument("--exec-visits", type=int, default=10, help="visits (x100 detectors) of the executed graph")
    parser.add_argument("--burn-visits", type=int, default=2, help="visits of the 50 ms-per-quantum graph")
    args = parser.parse_args()
    scales = [int(s) for s in args.scale.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for scale in scales:
            print(json.dumps({"benchmark": "qgraph", **run(scale, Path(tmp), args.profile)}), flush=True)
        if args.execute:
            print(json.dumps({"benchmark": "qgraph_exec", **run_exec(Path(tmp), args.exec_visits, args.burn_visits)}), flush=True)


if __name__ == "__main__":
    main()
