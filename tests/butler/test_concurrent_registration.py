"""Several processes registering the same new dataset types at once (as concurrent first ``pipetask run``s with
``--register-dataset-types`` do): every process succeeds and every type is registered once (SQLite and
PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from butler import Butler

N_PROCESSES = 4
# Two dimension groups: the types of one group share its tags table, which the first of them creates.
TYPES = [(f"race_{name}", dims) for name, dims in (
    ("a", "instrument visit detector"), ("b", "instrument visit detector"), ("c", "instrument visit"),
    ("d", "instrument visit"), ("e", "instrument visit detector"),
)]

SCRIPT = """
import sys, time
from butler import Butler
root, start = sys.argv[1], float(sys.argv[2])
types = [(name, dims.split()) for name, dims in (item.split(":") for item in sys.argv[3:])]
with Butler(root) as butler:
    time.sleep(max(0.0, start - time.time()))  # every process registers at the same moment
    new = [butler.register_dataset_type(name, dims, "NumpyArray") for name, dims in types]
print(sum(new))
"""


def test_concurrent_registrations_of_the_same_types_all_succeed(repo: Butler):
    root = str(repo.config.root)
    start = time.time() + 3.0  # after every interpreter has started and opened the repository
    args = [f"{name}:{dims}" for name, dims in TYPES]
    processes = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, root, str(start), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
        for _ in range(N_PROCESSES)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
    # Each type was new to exactly one process.
    assert sum(int(out) for out, _ in results) == len(TYPES), results
    with Butler(root, writeable=False) as butler:
        registered = {dt.name: dt for dt in butler.registry.query_dataset_types("race_*")}
    assert sorted(registered) == [name for name, _ in TYPES]
    for name, dims in TYPES:
        assert set(dims.split()) <= set(registered[name].dimensions.names), (name, registered[name].dimensions)

