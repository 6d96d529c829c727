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

Usage: ``python benchmarks/qgraph_bench.py [--scale 1,10] [--profile]``.
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

import toy_tasks  # noqa: E402

from butler import Butler  # noqa: E402
from graph.builder import build_quantum_graph  # noqa: E402
from graph.pipeline import Pipeline  # noqa: E402
from graph.quantum_graph import QuantumGraph  # noqa: E402

N_DETECTORS = 100
INPUT_RUN = "bench/inputs"


def make_repo(root: Path, n_visits: int, n_detectors: int = N_DETECTORS) -> Butler:
    """A repository with ``n_visits`` x ``n_detectors`` ``toy_input`` datasets (fake file records)."""
    butler = Butler.create(root)
    reg = butler.registry
    reg.insert_dimension_data("instrument", {"name": "Bench", "visit_max": 10**6, "detector_max": n_detectors})
    reg.insert_dimension_data("band", {"name": "r"})
    reg.insert_dimension_data("physical_filter", {"instrument": "Bench", "name": "r1", "band": "r"})
    reg.insert_dimension_data("day_obs", {"instrument": "Bench", "id": 20250101})
    reg.insert_dimension_data("detector", *[{"instrument": "Bench", "id": d} for d in range(n_detectors)])
    reg.insert_dimension_data(
        "visit",
        *[{"instrument": "Bench", "id": v, "physical_filter": "r1", "day_obs": 20250101} for v in range(n_visits)],
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1", help="comma-separated scales: 1 = 100 visits x 100 detectors")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of build+save+load on stderr")
    args = parser.parse_args()
    scales = [int(s) for s in args.scale.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for scale in scales:
            print(json.dumps({"benchmark": "qgraph", **run(scale, Path(tmp), args.profile)}), flush=True)


if __name__ == "__main__":
    main()
