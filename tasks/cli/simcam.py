"""``butler simulate-raws``: write simulated SimCam raws of one field, with their truth tables.

::

    butler simulate-raws sim --visits 4 --seed 42 --band r --transients-from 2   # visits 0, 1: no transient
    butler register-instrument repo SimCam
    butler ingest-raws repo sim/raw
    butler register-dataset-type repo refcat AstropyFitsTable   # sim/truth/refcat.fits: the reference catalogue
    butler define-visits repo SimCam

The raws go to ``OUTDIR/raw/`` (one FITS file per visit and detector), the truth (catalogue, per-visit
PSF and sky parameters, per-detector source fluxes, transients, cosmic rays) to ``OUTDIR/truth/``.
"""

from __future__ import annotations

import click

from butler.cli_utils import ErrorHandlingCommand, output, say, split_commas

__all__ = ["commands", "simulate_raws_command"]


@click.command("simulate-raws", cls=ErrorHandlingCommand)
@click.argument("outdir", type=click.Path(file_okay=False, path_type=str))
@click.option("--visits", "n_visits", type=click.IntRange(min=1), default=2, show_default=True, help="Number of visits.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed (same seed, same files).")
@click.option("--band", type=click.Choice(["g", "r", "i"]), default="r", show_default=True, help="Band (filter SimCam-<band>).")
@click.option(
    "--detectors",
    multiple=True,
    callback=split_commas,
    help="Detector ids to simulate (repeatable or comma-separated; default all nine: 0..8).",
)
@click.option("--first-visit", type=click.IntRange(min=0), default=None,
              help="Id of the first visit (default 1000 for g, 2000 for r, 3000 for i).")
@click.option("--sky-frames/--no-sky-frames", default=True, show_default=True,
              help="Add the camera's scaled sky-frame pattern to each visit's sky (offset + gradient only without).")
@click.option("--transients-from", type=click.IntRange(min=0), default=None,
              help="Index (0-based) of the first visit in which transients may appear; earlier visits are "
              "transient-free, e.g. for a template (default 1, or 0 with a single visit).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Print the visits as an astropy table, or as JSON for scripts.")
def simulate_raws_command(
    outdir: str, n_visits: int, seed: int, band: str, detectors: tuple[str, ...], first_visit: int | None,
    sky_frames: bool, transients_from: int | None, fmt: str,
) -> None:
    """Simulate SimCam raws of the field at RA 150, Dec 2 into OUTDIR (raws in OUTDIR/raw, truth in OUTDIR/truth)."""
    from tasks.instruments.simcam import SimulationError, simulate_raws

    try:
        detector_ids = [int(d) for d in detectors] or None
    except ValueError:
        raise click.BadParameter(
            f"detector ids are integers 0..8, got {', '.join(detectors)}.", param_hint="--detectors"
        ) from None
    try:
        truth = simulate_raws(
            outdir, n_visits=n_visits, seed=seed, band=band, detectors=detector_ids, first_visit=first_visit,
            sky_frames=sky_frames, transients_from=transients_from, progress=fmt == "table",
        )
    except SimulationError as err:
        raise click.BadParameter(str(err)) from None
    rows = [
        {
            "visit": int(v["visit"]),
            "physical_filter": str(v["physical_filter"]),
            "datetime_begin": str(v["datetime_begin"]),
            "ra": round(float(v["ra"]), 5),
            "dec": round(float(v["dec"]), 5),
            "fwhm_arcsec": round(float(v["fwhm0"]), 3),
            "sky_e": round(float(v["sky0"]), 1),
            "zero_point": round(float(v["zero_point"]), 3),
        }
        for v in truth.visits
    ]
    output(fmt, rows)
    raw_dir, truth_dir = truth.root / "raw", truth.root / "truth"
    say(fmt, f"Wrote {len(truth.raw_paths)} raw file(s) to {raw_dir} and the truth to {truth_dir}.")


commands = [simulate_raws_command]
