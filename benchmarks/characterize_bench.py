"""Single-frame processing speed: CharacterizeImageTask and CalibrateTask on the 10 SDSS frames (2048 x 1489).

The frames are read from ``../shared/data/sdss_stripe82_lsst_demo`` and ISR'd in memory first
(`SdssIsrTask`; not timed).  Prints one JSON line:

- ``characterize_s`` / ``characterize_cpu_s``: median wall / CPU seconds of ``CharacterizeImageTask.run`` per
  frame (CPU time is the fairer "one core" figure on a busy machine);
- ``calibrate_s`` / ``calibrate_cpu_s``: the same for ``CalibrateTask.run`` (on the characterization's outputs
  and the reference catalogue);
- ``characterize_subtasks_s``: median wall seconds per frame spent in each direct subtask of characterization
  (every call summed: background, detection, measurement and measurePsf run once per PSF iteration, repair and
  measurement once more at the end; detection's own background re-estimate is inside ``detection``), and
  ``dominant_subtask``;
- ``n_frames``, ``peak_rss_mb``: peak resident memory of the process.

Pin to one core for the "one core" figure: ``taskset -c 0 python benchmarks/characterize_bench.py`` (numpy's
BLAS threads are limited to 1 by this script).

Usage: ``python benchmarks/characterize_bench.py [--data DIR] [--frames N] [--profile]``; ``--profile`` also
prints the 25 most expensive functions of one characterization (cProfile, cumulative) to stderr.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

from astropy.table import Table  # noqa: E402

from tasks.calibrate import CalibrateTask  # noqa: E402
from tasks.characterize import CharacterizeImageTask, ExposureIdInfo  # noqa: E402
from tasks.instruments.sdss.formatters import read_fpc, read_fpm, read_psfield, read_tsfield  # noqa: E402
from tasks.instruments.sdss.isr import SdssIsrTask  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sdss_stripe82_lsst_demo"
FIELDS = {4192: 300, 6377: 399}


def frames(data: Path):
    """(name, postISRCCD exposure) of every frame, ISR'd in memory."""
    isr = SdssIsrTask()
    for run, field in FIELDS.items():
        d = data / "input" / str(run) / "40"
        psfield = read_psfield(d / f"objcs/4/psField-{run:06d}-4-{field:04d}.fit", kl_psf=False)
        tsfield = read_tsfield(d / f"calibChunks/4/tsField-{run:06d}-4-40-{field:04d}.fit")
        for band in "ugriz":
            raw = read_fpc(d / f"corr/4/fpC-{run:06d}-{band}4-{field:04d}.fit.gz")
            fpm = read_fpm(d / f"objcs/4/fpM-{run:06d}-{band}4-{field:04d}.fit")
            yield f"{run}-{band}", isr.run(raw, fpm, psfield, tsfield).exposure


class SubtaskTimer:
    """Accumulates the wall seconds of every call of the direct subtasks' ``run`` methods of a task."""

    def __init__(self, task: CharacterizeImageTask):
        self.seconds: dict[str, float] = defaultdict(float)
        for name in ("installSimplePsf", "repair", "background", "detection", "deblend", "measurement", "measurePsf"):
            subtask = getattr(task, name)
            subtask.run = self._wrap(name, subtask.run)

    def _wrap(self, name: str, run):  # noqa: ANN001, ANN202
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    refcat = Table.read(args.data / "ref_cat" / "stars.fits")
    exposures = list(frames(args.data))[: args.frames]
    char_times, char_cpu, cal_times, cal_cpu = [], [], [], []
    per_subtask: dict[str, list[float]] = defaultdict(list)
    failures = {}
    for k, (name, exposure) in enumerate(exposures):
        id_info = ExposureIdInfo(k, 8)
        task = CharacterizeImageTask()
        timer = SubtaskTimer(task)
        exposure = exposure.copy()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = task.run(exposure, exposureIdInfo=id_info)
        except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
            failures[name] = f"characterize: {type(err).__name__}: {err}"
            continue
        char_times.append(time.perf_counter() - t0)
        char_cpu.append(time.process_time() - c0)
        for sub, seconds in timer.seconds.items():
            per_subtask[sub].append(seconds)
        calibrate = CalibrateTask()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            calibrate.run(result.exposure, exposureIdInfo=id_info, background=result.background,
                          icSourceCat=result.sourceCat, refCat=refcat)
        except Exception as err:  # noqa: BLE001
            failures[name] = f"calibrate: {type(err).__name__}: {err}"
            continue
        cal_times.append(time.perf_counter() - t0)
        cal_cpu.append(time.process_time() - c0)

    if args.profile and exposures:
        profiler = cProfile.Profile()
        exposure = exposures[min(2, len(exposures) - 1)][1].copy()
        profiler.runcall(CharacterizeImageTask().run, exposure)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)

    subtasks = {k: round(statistics.median(v), 3) for k, v in sorted(per_subtask.items())}
    print(json.dumps({
        "n_frames": len(exposures),
        "characterize_s": _median(char_times),
        "characterize_cpu_s": _median(char_cpu),
        "calibrate_s": _median(cal_times),
        "calibrate_cpu_s": _median(cal_cpu),
        "characterize_subtasks_s": subtasks,
        "dominant_subtask": max(subtasks, key=subtasks.get) if subtasks else None,
        "failures": failures,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


if __name__ == "__main__":
    main()
