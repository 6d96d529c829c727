"""Truth metrics of the AP pipeline on a SimCam simulation: difference-image noise, transient recovery and false
detections, measured from a run's ``difference`` and ``diaSrc`` datasets against the `SimulationTruth`.

tests/tasks/test_ap_simcam.py asserts the acceptance criteria of image differencing on these numbers, and
``make demo-sim`` prints them::

    python -m tasks.instruments.simcam.metrics REPO SIM_DIR --collection demo/ap

(``SIM_DIR`` the directory `simulate_raws` / ``butler simulate-raws`` wrote; the visits and detectors measured
are those with a ``diaSrc`` in the collection.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from scipy.spatial import cKDTree

from butler import Butler
from butler.cli_utils import ErrorHandlingCommand

from ...subtract import difference_noise_ratio
from .simulate import SimulationError, SimulationTruth

__all__ = [
    "NOT_SKY",
    "ApTruthMetrics",
    "FalseDetections",
    "TransientRecovery",
    "difference_noise_ratios",
    "false_detections",
    "measure_ap_truth_metrics",
    "transient_recovery",
]

# Mask planes of the difference that are not sky for the noise ratio (besides the truth's source-free mask).
NOT_SKY = ["NO_DATA", "BAD", "SAT", "SAT_TEMPLATE", "EDGE", "CR", "INTRP", "SUSPECT"]
# Flags that exclude a DIA source from the false-detection count.
FALSE_DETECTION_FLAGS = ("flag_edge", "flag_saturated", "flag_bad")


def _detectors(truth: SimulationTruth, detectors: Sequence[int] | None) -> list[int]:
    if detectors is not None:
        return [int(d) for d in detectors]
    return sorted({int(d) for d in truth.detectors["detector"]})


def _get(butler: Butler, dataset_type: str, visit: int, detector: int, collections: str | Sequence[str]) -> Any:
    return butler.get(dataset_type, instrument="SimCam", visit=visit, detector=detector, collections=collections)


def difference_noise_ratios(
    butler: Butler,
    truth: SimulationTruth,
    collections: str | Sequence[str],
    visits: Sequence[int],
    detectors: Sequence[int] | None = None,
) -> dict[tuple[int, int], float]:
    """The noise of each difference image relative to its variance plane, over the truth's source-free sky.

    Parameters
    ----------
    butler : `Butler`
        The repository holding the ``difference`` datasets (instrument SimCam).
    truth : `SimulationTruth`
        The simulation the run processed.
    collections : `str` or sequence of `str`
        Where to find the ``difference`` datasets.
    visits : sequence of `int`
        Science visits.
    detectors : sequence of `int`, optional
        Detector ids (default: every detector of the simulation).

    Returns
    -------
    ratios : `dict` [`tuple` [`int`, `int`], `float`]
        ``std(difference / sqrt(variance))`` (dimensionless; 1 for a variance plane that predicts the noise) per
        ``(visit, detector)``, over the pixels `SimulationTruth.source_free_mask` keeps that have a finite
        value, a positive variance and none of the `NOT_SKY` mask planes.
    """
    ratios = {}
    for visit in visits:
        for detector in _detectors(truth, detectors):
            diff = _get(butler, "difference", visit, detector, collections)
            ratio, _ = difference_noise_ratio(diff, planes=NOT_SKY, usable=truth.source_free_mask(visit, detector))
            ratios[(int(visit), int(detector))] = ratio
    return ratios


@dataclass
class TransientRecovery:
    """Transients matched to positive DIA sources (see `transient_recovery`).

    Attributes
    ----------
    min_snr, max_pull : `float`
        The thresholds `transient_recovery` applied.
    total : `int`
        Transients counted: those not detected, and those detected with S/N >= ``min_snr``.
    detected : `int`
        Of those, detected (a positive DIA source within the match radius).
    good : `int`
        Of those detected, with a PSF flux within ``max_pull`` sigma of the truth.
    misses : `list` [`tuple`]
        ``(visit, detector, transient id, reason)`` of every counted transient not detected or not good.
    """

    min_snr: float
    max_pull: float
    total: int = 0
    detected: int = 0
    good: int = 0
    misses: list[tuple[int, int, int, str]] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """``good / total`` (NaN when no transient was counted)."""
        return self.good / self.total if self.total else float("nan")


def transient_recovery(
    butler: Butler,
    truth: SimulationTruth,
    collections: str | Sequence[str],
    visits: Sequence[int],
    detectors: Sequence[int] | None = None,
    *,
    match_radius: float = 2.0,
    min_snr: float = 10.0,
    max_pull: float = 3.0,
) -> TransientRecovery:
    """Match the truth's transients to the positive DIA sources and compare their fluxes.

    A transient present in a visit is *detected* when a DIA source with ``psfFlux > 0`` lies within
    ``match_radius`` [pixels] of its true position; detected transients whose source has ``psfFlux /
    psfFluxErr < min_snr`` are not counted, and a counted detection is *good* when ``|psfFlux - flux| /
    psfFluxErr <= max_pull`` (``flux`` the true flux [e-]; the difference of a science image in electrons).

    Parameters
    ----------
    butler, truth, collections, visits, detectors
        As for `difference_noise_ratios` (``diaSrc`` datasets).
    match_radius : `float`, optional
        [pixels].
    min_snr : `float`, optional
        Measured S/N below which a detected transient is left out.
    max_pull : `float`, optional
        [sigma].

    Returns
    -------
    recovery : `TransientRecovery`
    """
    result = TransientRecovery(min_snr=min_snr, max_pull=max_pull)
    for visit in visits:
        for detector in _detectors(truth, detectors):
            rows = truth.sources_on(visit, detector)
            transients = rows[rows["kind"] == "transient"]
            if not len(transients):
                continue
            dia = _get(butler, "diaSrc", visit, detector, collections)
            positive = dia[np.asarray(dia["psfFlux"]) > 0]
            tree = cKDTree(np.column_stack([positive["centroid_x"], positive["centroid_y"]]))
            for tr in transients:
                distance, index = tree.query([tr["x"], tr["y"]])
                if not np.isfinite(distance) or distance > match_radius:
                    result.total += 1
                    result.misses.append((int(visit), int(detector), int(tr["id"]), "not detected"))
                    continue
                source = positive[index]
                if not source["psfFlux"] / source["psfFluxErr"] >= min_snr:
                    continue
                result.total += 1
                result.detected += 1
                pull = (source["psfFlux"] - tr["flux"]) / source["psfFluxErr"]
                if abs(pull) <= max_pull:
                    result.good += 1
                else:
                    result.misses.append((int(visit), int(detector), int(tr["id"]),
                                          f"flux {source['psfFlux']:.0f} vs {tr['flux']:.0f} +- "
                                          f"{source['psfFluxErr']:.0f} (pull {pull:.1f})"))
    return result


@dataclass
class FalseDetections:
    """Significant DIA sources that are neither a transient nor a variable star (see `false_detections`).

    Attributes
    ----------
    min_snr : `float`
        The |S/N| threshold `false_detections` applied.
    count : `int`
        Number of false detections.
    pixels : `int`
        Finite pixels of the difference images searched.
    sources : `list` [`tuple`]
        ``(visit, detector, x, y, snr, isDipole)`` of each false detection (pixel positions rounded).
    """

    min_snr: float
    count: int = 0
    pixels: int = 0
    sources: list[tuple[int, int, int, int, float, bool]] = field(default_factory=list)

    @property
    def per_megapixel(self) -> float:
        """False detections per million pixels searched."""
        return self.count / (self.pixels / 1e6) if self.pixels else float("nan")


def false_detections(
    butler: Butler,
    truth: SimulationTruth,
    collections: str | Sequence[str],
    visits: Sequence[int],
    detectors: Sequence[int] | None = None,
    *,
    min_snr: float = 5.0,
    match_radius: float = 3.0,
) -> FalseDetections:
    """Count the DIA sources with ``|snr| >= min_snr`` and none of `FALSE_DETECTION_FLAGS` farther than
    ``match_radius`` [pixels] from every transient and variable star of the truth on their detector.

    Parameters
    ----------
    butler, truth, collections, visits, detectors
        As for `difference_noise_ratios` (``diaSrc`` and ``difference`` datasets).
    min_snr : `float`, optional
        |S/N| from which a DIA source counts.
    match_radius : `float`, optional
        [pixels].

    Returns
    -------
    false : `FalseDetections`
    """
    result = FalseDetections(min_snr=min_snr)
    for visit in visits:
        for detector in _detectors(truth, detectors):
            rows = truth.sources_on(visit, detector)
            real = rows[np.isin(rows["kind"], ["transient", "variable"])]
            dia = _get(butler, "diaSrc", visit, detector, collections)
            significant = np.abs(np.asarray(dia["snr"])) >= min_snr
            flags = np.zeros(len(dia), bool)
            for name in FALSE_DETECTION_FLAGS:
                flags |= np.asarray(dia[name], bool)
            candidates = dia[significant & ~flags]
            if len(real):
                tree = cKDTree(np.column_stack([real["x"], real["y"]]))
                distance, _ = tree.query(np.column_stack([candidates["centroid_x"], candidates["centroid_y"]]))
                candidates = candidates[distance > match_radius]
            result.count += len(candidates)
            result.sources += [(int(visit), int(detector), round(float(s["centroid_x"])), round(float(s["centroid_y"])),
                                round(float(s["snr"]), 1), bool(s["isDipole"])) for s in candidates]
            diff = _get(butler, "difference", visit, detector, collections)
            result.pixels += int(np.isfinite(diff.image).sum())
    return result


@dataclass
class ApTruthMetrics:
    """The three truth metrics of one AP run (see `measure_ap_truth_metrics`)."""

    noise_ratios: dict[tuple[int, int], float]
    transients: TransientRecovery
    false: FalseDetections

    def summary(self) -> str:
        """The metrics as a few lines of text, with the acceptance criteria of tests/tasks/test_ap_simcam.py."""
        ratios = np.array(list(self.noise_ratios.values()))
        return "\n".join([
            f"difference noise / sqrt(variance) on source-free sky, {ratios.size} detector(s): median "
            f"{np.median(ratios):.3f}, range {ratios.min():.3f}-{ratios.max():.3f} (acceptance: all in 0.97-1.05)",
            f"transients: {self.transients.good} of {self.transients.total} detected with a PSF flux within "
            f"{self.transients.max_pull:g} sigma of the truth ({self.transients.detected} detected with S/N >= "
            f"{self.transients.min_snr:g}; acceptance >= 95%); missed: "
            + ("; ".join(f"visit {v} detector {d} transient {i}: {why}" for v, d, i, why in self.transients.misses)
               or "none"),
            f"false detections (|S/N| >= {self.false.min_snr:g}, not a transient or variable): {self.false.count} over "
            f"{self.false.pixels / 1e6:.1f} Mpix = {self.false.per_megapixel:.2f} per Mpix (acceptance <= 5)",
        ])  # fmt: skip


def measure_ap_truth_metrics(
    butler: Butler, truth: SimulationTruth, collections: str | Sequence[str], visits: Sequence[int],
    detectors: Sequence[int] | None = None,
) -> ApTruthMetrics:
    """`difference_noise_ratios`, `transient_recovery` and `false_detections` with their default thresholds."""
    return ApTruthMetrics(
        difference_noise_ratios(butler, truth, collections, visits, detectors),
        transient_recovery(butler, truth, collections, visits, detectors),
        false_detections(butler, truth, collections, visits, detectors),
    )


@click.command(cls=ErrorHandlingCommand)
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("sim_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--collection", "-c", required=True, help="Collection (or chain) of the AP run's outputs.")
def main(repo: str, sim_dir: str, collection: str) -> None:
    """Print the truth metrics of the AP outputs in COLLECTION of REPO for the SimCam simulation in SIM_DIR."""
    try:
        truth = SimulationTruth.load(Path(sim_dir))
    except SimulationError as err:
        raise click.ClickException(str(err)) from None
    with Butler(repo, writeable=False) as butler:
        refs = butler.query_datasets("diaSrc", collections=collection, where="instrument = 'SimCam'", explain=False)
        if not refs:
            raise click.ClickException(f"no SimCam diaSrc dataset in collection {collection!r} of {repo}; run AP.yaml.")
        visits = sorted({int(ref.data_id["visit"]) for ref in refs})
        detectors = sorted({int(ref.data_id["detector"]) for ref in refs})
        if len(refs) != len(visits) * len(detectors):
            raise click.ClickException(
                f"collection {collection!r} has diaSrc for {len(refs)} of the {len(visits) * len(detectors)} "
                f"(visit, detector) pairs of visits {visits} and detectors {detectors}; rerun AP.yaml on all of them."
            )
        click.echo(f"Truth metrics of visits {', '.join(map(str, visits))}, detectors "
                   f"{', '.join(map(str, detectors))} ({collection}):")
        click.echo(measure_ap_truth_metrics(butler, truth, collection, visits, detectors).summary())


if __name__ == "__main__":
    main()
