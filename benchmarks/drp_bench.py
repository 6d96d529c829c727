"""DRP speed: warping SDSS frames onto the stripe82_demo tract (direct and PSF-matched warps).

Each r-band (and g-band) SDSS frame (2048 x 1489, ``../shared/data/sdss_stripe82_lsst_demo``) is ISR'd in
memory (`SdssIsrTask`, not timed), given the psField KL PSF realised as a `PcaPsf` (not timed), and then

- ``warp_direct_s``: `warp_exposure` (Lanczos3) onto the whole tract frame of
  ``repo_template/skymaps/stripe82_demo.yaml`` -- the figure of the <= 1.5 s target;
- ``warp_psf_matched_s``: PSF matching to the 2" Gaussian model (`match_to_model_psf`, as `MakeWarpTask`
  configures it) followed by the same warp;
- ``warp_direct_cpu_s`` / ``warp_psf_matched_cpu_s``: CPU seconds of the same;
- ``make_warp_patch_s``: `MakeWarpTask.run` (direct + PSF-matched) of one frame onto its central patch.

Prints ONE JSON line.  Further sections are added by functions ``bench_<name>() -> dict`` listed in
``SECTIONS`` (e.g. ``bench_coadd`` for the SimCam patch coadds); each returns a dict merged into the line.

Usage: ``python benchmarks/drp_bench.py [--data DIR] [--frames N] [--repeat N] [--profile]``.
BLAS threads are limited to 1 by this script; pin to one core with ``taskset -c 0`` for the "one core" figure.
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
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tasks.image import Exposure, PcaPsf, SkyMap, warp_exposure  # noqa: E402
from tasks.instruments.sdss.formatters import kl_psf_image, read_fpc, read_fpm, read_psfield, read_tsfield  # noqa: E402
from tasks.instruments.sdss.isr import SdssIsrTask  # noqa: E402
from tasks.warp import MakeWarpConfig, MakeWarpTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "sdss_stripe82_lsst_demo"
SKYMAP = ROOT / "repo_template" / "skymaps" / "stripe82_demo.yaml"
FIELDS = {4192: 300, 6377: 399}


def sdss_calexps(data: Path, bands: str = "rg"):
    """(name, exposure) of SDSS frames ISR'd in memory, with the psField KL PSF as a `PcaPsf`."""
    isr = SdssIsrTask()
    for band in bands:
        for run, field in FIELDS.items():
            d = data / "input" / str(run) / "40"
            psfield = read_psfield(d / f"objcs/4/psField-{run:06d}-4-{field:04d}.fit")
            tsfield = read_tsfield(d / f"calibChunks/4/tsField-{run:06d}-4-40-{field:04d}.fit")
            raw = read_fpc(d / f"corr/4/fpC-{run:06d}-{band}4-{field:04d}.fit.gz")
            fpm = read_fpm(d / f"objcs/4/fpM-{run:06d}-{band}4-{field:04d}.fit")
            exposure = isr.run(raw, fpm, psfield, tsfield).exposure
            exposure.psf = _kl_pca_psf(psfield, band, exposure)
            yield f"{run}-{band}", exposure


def _kl_pca_psf(psfield, band: str, exposure: Exposure) -> PcaPsf:  # noqa: ANN001
    """The psField KL PSF realised on a 4 x 4 grid and fitted as a `PcaPsf`."""
    bbox = exposure.bbox
    xs = (np.arange(4) + 0.5) * bbox.width / 4
    ys = (np.arange(4) + 0.5) * bbox.height / 4
    gx, gy = (g.ravel() for g in np.meshgrid(xs, ys))
    stamps = [np.asarray(kl_psf_image(psfield, band, float(x), float(y)), dtype=float) for x, y in zip(gx, gy)]
    half = min(min(s.shape) // 2 for s in stamps + [np.zeros((31, 31))])
    stamps = np.stack([s[s.shape[0] // 2 - half : s.shape[0] // 2 + half + 1,
                         s.shape[1] // 2 - half : s.shape[1] // 2 + half + 1] for s in stamps])
    return PcaPsf.fit(stamps, gx, gy, bbox)


def _timed(func: Callable[[], object]) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    result = func()
    return time.perf_counter() - t0, time.process_time() - c0, result


def bench_warp(data: Path, n_frames: int, repeat: int, profile: bool) -> dict:
    """Seconds per SDSS-frame warp onto the stripe82_demo tract (direct and PSF-matched)."""
    sky_map = SkyMap.from_yaml(SKYMAP)
    tract = sky_map[0]
    task = MakeWarpTask(config=MakeWarpConfig())
    frames = list(sdss_calexps(data))[:n_frames]
    direct, direct_cpu, matched, matched_cpu, patch_s = [], [], [], [], []
    for _, exposure in frames:
        calibrated = task._calibrate(exposure, None)
        for _ in range(repeat):
            wall, cpu, _ = _timed(lambda: warp_exposure(calibrated, tract.wcs, tract.bbox))
            direct.append(wall)
            direct_cpu.append(cpu)

            def psf_matched() -> Exposure:
                result = task._psf_match(calibrated, tract.wcs, _model_sigma(task, tract))
                return warp_exposure(result.exposure, tract.wcs, tract.bbox)

            wall, cpu, _ = _timed(psf_matched)
            matched.append(wall)
            matched_cpu.append(cpu)
        patch = tract.patch_info((1, 1))
        wall, _, _ = _timed(lambda: MakeWarpTask().run([exposure], patch, visitId=1))
        patch_s.append(wall)
    if profile and frames:
        calibrated = task._calibrate(frames[0][1], None)
        profiler = cProfile.Profile()
        profiler.runcall(warp_exposure, calibrated, tract.wcs, tract.bbox)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return {
        "n_warp_frames": len(frames),
        "warp_direct_s": _median(direct),
        "warp_direct_cpu_s": _median(direct_cpu),
        "warp_psf_matched_s": _median(matched),
        "warp_psf_matched_cpu_s": _median(matched_cpu),
        "make_warp_patch_s": _median(patch_s),
    }


def _model_sigma(task: MakeWarpTask, tract) -> float:  # noqa: ANN001
    from tasks.image.psf import FWHM_PER_SIGMA
    from tasks.warp import _pixel_scale

    return task.config.modelPsfFwhm / _pixel_scale(tract.wcs, tract.bbox) / FWHM_PER_SIGMA


def bench_coadd(n_warps: int = 6, repeat: int = 2) -> dict:
    """Seconds per SimCam patch coadd: `AssembleCoaddTask.run` of ``n_warps`` synthetic warps of the outer box
    (2200 x 2200) of patch (1, 1) of ``repo_template/skymaps/simcam.yaml``: stars, white noise, a chip-gap
    strip of NO_DATA per warp, a satellite trail in one, PcaPsf PSFs of different widths.

    ``coadd_patch_s``: warps read through deferred handles from FITS files one subregion at a time (the
    ``runQuantum`` path; files in the page cache); ``coadd_patch_memory_s``: in-memory warps.
    """
    import tempfile

    from tasks.coadd import AssembleCoaddConfig, AssembleCoaddTask
    from tasks.image import FilterLabel, MaskedImage, PhotoCalib, VisitInfo
    from tasks.image.fits import ExposureFitsFormatter
    from butler.datasets import StorageClass

    patch = SkyMap.from_yaml(ROOT / "repo_template" / "skymaps" / "simcam.yaml")[0].patch_info((1, 1))
    bbox = patch.outer_bbox
    rng = np.random.default_rng(6)
    n_stars = 400
    sx = rng.uniform(bbox.x0 + 20, bbox.x1 - 20, n_stars)
    sy = rng.uniform(bbox.y0 + 20, bbox.y1 - 20, n_stars)
    flux = 10 ** rng.uniform(3, 6, n_stars)
    grid = np.arange(-12, 13)
    warps = []
    for i in range(n_warps):
        sigma = 1.6 + 0.1 * i
        noise = 20.0 + 3.0 * i
        image = rng.normal(0.0, noise, bbox.shape).astype(np.float32)
        stamp = np.exp(-0.5 * (grid[None, :] ** 2 + grid[:, None] ** 2) / sigma**2)
        stamp /= stamp.sum()
        for x, y, f in zip(sx, sy, flux):
            ix, iy = int(round(x)) - bbox.x0, int(round(y)) - bbox.y0
            y0, x0 = max(iy - 12, 0), max(ix - 12, 0)
            y1, x1 = min(iy + 13, bbox.height), min(ix + 13, bbox.width)
            image[y0:y1, x0:x1] += f * stamp[y0 - iy + 12 : y1 - iy + 12, x0 - ix + 12 : x1 - ix + 12]
        variance = np.full(bbox.shape, noise**2, dtype=np.float32)
        masked = MaskedImage(image, None, variance, xy0=bbox.xy0)
        gap = np.zeros(bbox.shape, bool)
        gap[:, 300 * i + 100 : 300 * i + 130] = True  # a chip gap at a different place in each visit
        masked.image[gap] = np.nan
        masked.variance[gap] = np.nan
        masked.mask.set_plane("NO_DATA", gap)
        if i == 2:
            masked.image[1000:1004, :] += 10 * noise  # satellite trail
        stamps = np.stack([stamp * (1 + 0.01 * k) for k in range(4)])
        px = np.array([bbox.x0 + 100.0, bbox.x1 - 100.0, bbox.x0 + 100.0, bbox.x1 - 100.0])
        py = np.array([bbox.y0 + 100.0, bbox.y0 + 100.0, bbox.y1 - 100.0, bbox.y1 - 100.0])
        psf = PcaPsf.fit(stamps, px, py, bbox, n_components=2, degree=1)
        warps.append(
            Exposure(masked, wcs=patch.wcs, psf=psf, photo_calib=PhotoCalib(1.0), visit_info=VisitInfo(id=100 + i),
                     filter=FilterLabel(band="r"))
        )
    task = AssembleCoaddTask(config=AssembleCoaddConfig())
    memory, handles, cpu = [], [], []
    formatter = ExposureFitsFormatter(StorageClass("ExposureF", "tasks.image.Exposure"))

    class FileHandle:
        """A deferred handle on a FITS file (what runQuantum passes)."""

        def __init__(self, path: Path, visit: int):
            self.path, self.data_id = path, {"visit": visit}

        def get(self, *, component: str | None = None, parameters: dict | None = None) -> object:
            return formatter.read(self.path, component=component, parameters=parameters)

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, warp in enumerate(warps):
            path = Path(tmp) / f"warp{i}.fits"
            formatter.write(warp, path)
            files.append(FileHandle(path, 100 + i))
        for _ in range(repeat):
            wall, _, _ = _timed(lambda: task.run(warps, patch))
            memory.append(wall)
            wall, c, result = _timed(lambda: task.run(files, patch))
            handles.append(wall)
            cpu.append(c)
    coadd = result.coaddExposure
    return {
        "coadd_patch_s": _median(handles),
        "coadd_patch_cpu_s": _median(cpu),
        "coadd_patch_memory_s": _median(memory),
        "coadd_n_warps": n_warps,
        "coadd_patch_shape": list(bbox.shape),
        "coadd_clipped_fraction": round(float(task.metadata["clippedFraction"]), 4),
        "coadd_covered_fraction": round(float(np.isfinite(coadd.image).mean()), 4),
    }


#: Extra sections: name -> function returning a dict merged into the JSON line (helper C adds "coadd").
SECTIONS: dict[str, Callable[[], dict]] = {"coadd": bench_coadd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    result: dict = {}
    failures: dict[str, str] = {}
    try:
        result.update(bench_warp(args.data, args.frames, args.repeat, args.profile))
    except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
        failures["warp"] = f"{type(err).__name__}: {err}"
    for name, func in SECTIONS.items():
        try:
            result.update(func())
        except Exception as err:  # noqa: BLE001
            failures[name] = f"{type(err).__name__}: {err}"
    result["failures"] = failures
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


if __name__ == "__main__":
    main()
