"""Registry and butler speed: bulk dataset insert, a where-query over them, and small put/get.

Prints one JSON line:
- ``insert_s``: seconds to insert N_VISITS x N_DETECTORS datasets of one type (with their data IDs)
  in one ``Registry.insert_datasets`` call;
- ``query_s``: median seconds of ``query_datasets`` with ``visit IN (100..199) AND detector < 50``
  (5,000 results), and ``query_results``;
- ``put_ms`` / ``get_ms`` / ``get_by_ref_ms``: median milliseconds of one ``Butler.put`` and one
  ``Butler.get`` (by data ID + collection, and by ref) of a 10-row astropy Table (ArrowAstropy);
- ``peak_rss_mb``: peak resident memory of the process.

Usage: ``python benchmarks/registry_bench.py [--visits 1000] [--detectors 1000] [--puts 300]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from butler import Butler, DatasetType


def populate_dimensions(butler: Butler, n_visits: int, n_detectors: int) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=1000)
    parser.add_argument("--detectors", type=int, default=1000)
    parser.add_argument("--puts", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        butler = Butler.create(Path(tmp) / "repo")
        populate_dimensions(butler, args.visits, args.detectors)
        reg = butler.registry
        reg.register_dataset_type(DatasetType("calexp", ["visit", "detector"], "ArrowAstropy", universe=butler.dimensions))
        reg.register_run("bench/run")

        data_ids = ({"instrument": "Bench", "visit": v, "detector": d} for v in range(args.visits) for d in range(args.detectors))
        t0 = time.perf_counter()
        refs = reg.insert_datasets("calexp", data_ids, "bench/run")
        insert_s = time.perf_counter() - t0
        n_inserted = len(refs)
        del refs

        where = "visit IN (100..199) AND detector < 50"
        query_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            found = butler.query_datasets("calexp", "bench/run", where=where, explain=False)
            query_times.append(time.perf_counter() - t0)

        table = Table({"id": np.arange(10), "flux": np.linspace(1.0, 2.0, 10), "name": [f"s{i}" for i in range(10)]})
        put_times, get_times, get_ref_times = [], [], []
        butler.run = "bench/puts"
        reg.register_run("bench/puts")
        for i in range(args.puts):
            data_id = {"instrument": "Bench", "visit": i % args.visits, "detector": i // args.visits}
            t0 = time.perf_counter()
            ref = butler.put(table, "calexp", data_id, run="bench/puts")
            t1 = time.perf_counter()
            butler.get("calexp", data_id, collections="bench/puts")
            t2 = time.perf_counter()
            butler.get(ref)
            t3 = time.perf_counter()
            put_times.append(t1 - t0)
            get_times.append(t2 - t1)
            get_ref_times.append(t3 - t2)
        butler.close()

    print(
        json.dumps(
            {
                "benchmark": "registry",
                "datasets": n_inserted,
                "insert_s": round(insert_s, 2),
                "query_s": round(statistics.median(query_times), 4),
                "query_results": len(found),
                "put_ms": round(1e3 * statistics.median(put_times), 3),
                "get_ms": round(1e3 * statistics.median(get_times), 3),
                "get_by_ref_ms": round(1e3 * statistics.median(get_ref_times), 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
