"""Difference-imaging speed: one SDSS r subtraction (2048 x 1489) with `AlardLuptonSubtractTask`.

Science: run 6377, field 399, r (camcol 4); template: the run-4192 (field 300) r frame warped onto it.
Targets (issue): <= 2.5 s for the whole subtraction on one core and <= 1 GB of memory; for reference HOTPANTS
does the same job in 1.7 s / 0.2 GB, SFFT (CPU) in 15 s / 8 GB.

Preparation (not timed), in this process: both frames are ISR'd in memory with the psField KL PSF as a
`PcaPsf` (``drp_bench.sdss_calexps``); each gets its background subtracted (`SubtractBackgroundTask`); sources
are detected, deblended and measured on the science frame with the subtasks `CalibrateTask` uses
(``detection`` with its threshold of 5 sigma and background re-estimate, ``deblend``, ``measurement``) to make
the ``src`` table (psfFlux, psfFluxErr, flags, centroids); the background-subtracted 4192 frame is warped onto the
6377 frame's bbox and WCS with `warp_exposure` (Lanczos3), which gives the template its PSF.  The template stays
in its own counts (not nJy), so the kernel sum carries the ratio of the two photometric calibrations.

The inputs are written to a temporary directory with the pipeline's formatters (`ExposureFitsFormatter` for
the exposures, `ParquetFormatter` for ``src``) and the subtraction runs in a fresh child process (the same
interpreter and CPU affinity; BLAS threads limited to 1), which reads them back as ``runQuantum`` would and
then times ``AlardLuptonSubtractTask.run`` (a new task per repetition; best of ``--repeat`` by wall time, all
figures from that repetition).  So the memory figures are those of a process that does nothing but the
subtraction, free of the preparation's allocations.  Prints ONE JSON line:

- ``subtraction_s`` / ``subtraction_cpu_s``: wall / CPU seconds of the whole ``AlardLuptonSubtractTask.run``
  (source selection, kernel solve, convolution, subtraction, decorrelation, mask merging and the metrics);
  ``subtraction_first_s``: wall seconds of the first run in the fresh process (includes one-off warm-up);
- ``kernel_solve_s``: ``makeKernel.run`` (stamps, per-star fits, clipping, spatial fit);
- ``convolution_s``: the task's ``convolve`` timer (`convolve_masked_image` of the image that is convolved);
- ``decorrelation_s``: the task's ``decorrelate`` timer (in ``finalize``);
- ``other_s``: the rest of ``run`` (source selection, subtraction arithmetic, ``updateMasks``, metrics);
- ``peak_rss_mb``: peak resident memory [MB] of the child process during the first subtraction (interpreter,
  libraries and the loaded inputs included, like a HOTPANTS process's figure): the kernel's high-water mark
  (``VmHWM``) after resetting it (``/proc/self/clear_refs``) once the inputs are loaded, so reading the files
  does not count; ``rss_before_mb``: the resident memory just before the run; ``rss_increase_mb``: the
  difference, what the subtraction itself needs on top of its inputs.  ``rss_method`` says how it was measured
  (``ru_maxrss`` of the child, reading included, when the high-water mark cannot be reset);
- sanity checks: ``mode`` (convolveTemplate / convolveScience, chosen by the task), ``kernel_sum`` (at the
  centre) and ``expected_kernel_sum`` (the ratio of the two PhotoCalibs in the direction of the mode),
  ``n_kernel_sources`` (stars in the final kernel fit) and ``n_kernel_sources_selected`` (by the source
  selector), ``spatial_kernel_order``, ``noise_ratio`` (``differenceNoiseRatio``: robust sigma of the difference
  / sqrt(variance), ~1), ``footprint_ratio`` (``differenceFootprintRatioMean``: residual flux at the kernel stars,
  0 for a perfect subtraction), ``science_fwhm`` / ``template_fwhm`` [pixels], ``template_coverage``, ``n_src``;
- ``prepare_s``: wall seconds of the (untimed) preparation, ``failures``.

Usage: ``python benchmarks/diffim_bench.py [--data DIR] [--repeat N] [--profile]``; ``--profile`` prints the 25
functions with the most own time (cProfile, ``tottime``) of one more subtraction, then the 25 with the most
cumulative time, to stderr.  Pin to one core for the "one core" figure:
``taskset -c 0 python benchmarks/diffim_bench.py``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / ".." / "shared" / "data" / "sdss_stripe82_lsst_demo"
SCIENCE, TEMPLATE = "6377-r", "4192-r"
_FILES = {"science": "science.fits", "template": "template.fits", "src": "src.parq"}


def _formatters():  # noqa: ANN202
    from butler.datasets import StorageClass
    from butler.formatters.tables import ParquetFormatter
    from tasks.image.fits import ExposureFitsFormatter

    return (ExposureFitsFormatter(StorageClass("ExposureF", "tasks.image.Exposure")),
            ParquetFormatter(StorageClass("ArrowAstropy", "astropy.table.Table")))


# Preparation (parent process, not timed) --------------------------------------------------------------------------


def prepare(data: Path, out: Path) -> dict:
    """ISR, background-subtract, make ``src`` and the warped template; write them to ``out``."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from drp_bench import sdss_calexps  # the same in-memory ISR + PcaPsf as the DRP benchmark

    from tasks.background import SubtractBackgroundTask
    from tasks.calibrate import CalibrateTask
    from tasks.image import warp_exposure
    from tasks.subtract import template_coverage

    exposures = dict(sdss_calexps(data, bands="r"))
    science, raw_template = exposures[SCIENCE], exposures[TEMPLATE]
    for exposure in (science, raw_template):
        SubtractBackgroundTask().run(exposure)
    calibrate = CalibrateTask()  # its detection / deblend / measurement subtasks and their configuration
    detections = calibrate.detection.run(science, doSmooth=True)
    sources, footprints = detections.sources, detections.footprints
    if calibrate.config.doDeblend:
        deblended = calibrate.deblend.run(science, sources, footprints)
        sources = getattr(deblended, "sources", deblended)
        footprints = getattr(deblended, "footprints", footprints)
    src = calibrate.measurement.run(science, sources, footprints)
    template = warp_exposure(raw_template, science.wcs, science.bbox)
    exposure_formatter, table_formatter = _formatters()
    exposure_formatter.write(science, out / _FILES["science"])
    exposure_formatter.write(template, out / _FILES["template"])
    table_formatter.write(src, out / _FILES["src"])
    return {
        "n_src": len(src),
        "template_coverage": round(template_coverage(template), 4),
        # nJy per count of each image: K (x) T ~ S has kernel sum c_T / c_S, K (x) S ~ T has c_S / c_T.
        "_calib": [science.photo_calib.calibration_mean, raw_template.photo_calib.calibration_mean],
    }


# The measurement (fresh child process) ----------------------------------------------------------------------------


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process [kB]."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the resident-set high-water mark (Linux >= 4.0)
        return True
    except OSError:
        return False


def _elapsed(metadata, name: str) -> float:  # noqa: ANN001
    return float(metadata[f"{name}EndWallTime"] - metadata[f"{name}StartWallTime"])


def _subtract_once(template, science, src) -> dict:  # noqa: ANN001
    from tasks.subtract import AlardLuptonSubtractTask

    task = AlardLuptonSubtractTask()
    t0, c0 = time.perf_counter(), time.process_time()
    result = task.run(template, science, src)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    md, kmd = task.metadata, task.makeKernel.metadata
    kernel_s, conv_s, decor_s = _elapsed(kmd, "run"), _elapsed(md, "convolve"), _elapsed(md, "decorrelate")
    return {
        "subtraction_s": wall,
        "subtraction_cpu_s": cpu,
        "kernel_solve_s": kernel_s,
        "convolution_s": conv_s,
        "decorrelation_s": decor_s,
        "other_s": wall - kernel_s - conv_s - decor_s,
        "mode": md["mode"],
        "kernel_sum": float(md["kernelSum"]),
        "n_kernel_sources": len(result.kernelSources),
        "n_kernel_sources_selected": int(md["nKernelSourcesSelected"]),
        "spatial_kernel_order": int(kmd["spatialKernelOrder"]),
        "kernel_size": int(kmd["ALKernelSize"]),
        "noise_ratio": float(md["differenceNoiseRatio"]),
        "footprint_ratio": float(md["differenceFootprintRatioMean"]),
        "science_fwhm": float(md["sciencePsfSize"]),
        "template_fwhm": float(md["templatePsfSize"]),
    }


def child(directory: Path, repeat: int, profile: bool) -> None:
    """Read the prepared inputs, time the subtraction, print one JSON line."""
    from tasks.subtract import AlardLuptonSubtractTask

    exposure_formatter, table_formatter = _formatters()
    science = exposure_formatter.read(directory / _FILES["science"])
    template = exposure_formatter.read(directory / _FILES["template"])
    src = table_formatter.read(directory / _FILES["src"])
    AlardLuptonSubtractTask()  # construct once so that config machinery is imported before the baseline
    gc.collect()
    reset = _reset_peak_rss()
    before = _proc_status()["VmRSS"]
    runs = [_subtract_once(template, science, src)]
    if reset:
        peak, method = _proc_status()["VmHWM"], "VmHWM reset after loading the inputs"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss of the child (reading included)"
    for _ in range(repeat - 1):
        runs.append(_subtract_once(template, science, src))
    best = dict(min(runs, key=lambda r: r["subtraction_s"]))
    best["subtraction_first_s"] = runs[0]["subtraction_s"]
    best.update(
        peak_rss_mb=round(peak / 1024, 1),
        rss_before_mb=round(before / 1024, 1),
        rss_increase_mb=round((peak - before) / 1024, 1),
        rss_method=method,
        n_repeat=len(runs),
    )
    if profile:
        task = AlardLuptonSubtractTask()
        profiler = cProfile.Profile()
        profiler.runcall(task.run, template, science, src)
        for order in ("tottime", "cumulative"):
            print(f"--- cProfile of one subtraction, top 25 by {order} ---", file=sys.stderr)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats(order).print_stats(25)
    print(json.dumps(best))


# Driver -------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: the measuring process
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    if args.child is not None:
        child(args.child, repeat, args.profile)
        return

    result: dict = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="diffim_bench_") as tmp:
        t0 = time.perf_counter()
        try:
            prep = prepare(args.data, Path(tmp))
        except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
            failures["prepare"] = f"{type(err).__name__}: {err}"
            prep = None
        result["prepare_s"] = round(time.perf_counter() - t0, 3)
        if prep is not None:
            calib_science, calib_template = prep.pop("_calib")
            result.update(prep)
            command = [sys.executable, str(Path(__file__).resolve()), "--child", tmp, "--repeat", str(repeat)]
            if args.profile:
                command.append("--profile")
            proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # stderr passes through
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                failures["subtraction"] = f"child exited with {proc.returncode}; stdout: {proc.stdout[-500:]!r}"
            else:
                measured = json.loads(lines[-1])
                ratio = calib_template / calib_science
                measured["expected_kernel_sum"] = ratio if measured["mode"] == "convolveTemplate" else 1.0 / ratio
                result.update(measured)
    for key, value in result.items():
        if isinstance(value, float) and math.isfinite(value):
            result[key] = round(value, 4 if key.endswith(("ratio", "sum", "coverage")) else 3)
    result["failures"] = failures
    print(json.dumps(result))


if __name__ == "__main__":
    main()
