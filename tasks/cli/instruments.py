"""``butler register-instrument``, ``ingest-raws`` and ``define-visits``: bring raw data into a repository.

::

    butler register-instrument repo Sdss
    butler ingest-raws repo ../shared/data/sdss_stripe82_lsst_demo/input -t symlink
    butler define-visits repo Sdss
    butler define-visits repo SDSS -d "exposure.day_obs = 20031019"

``ingest-raws`` goes on when a file cannot be read: it ingests the others, prints a summary table of
what it ingested on standard output and lists the failed files with the reason on standard error,
then exits with code 1 if any file failed (0 when everything was ingested or already present), so
scripts notice partial ingests.
"""

from __future__ import annotations

import click

from butler import Butler
from butler.cli_utils import ErrorHandlingCommand, output, say

__all__ = ["commands", "define_visits_command", "ingest_raws_command", "register_instrument_command"]

_repo = click.argument("repo", type=click.Path(file_okay=False, path_type=str))


@click.command("register-instrument", cls=ErrorHandlingCommand)
@_repo
@click.argument("names", nargs=-1, required=True)
@click.option("--update", is_flag=True, help="Overwrite existing records that differ (after a camera fix).")
def register_instrument_command(repo: str, names: tuple[str, ...], update: bool) -> None:
    """Register instruments in REPO: their instrument, band, physical_filter and detector records.

    NAMES are short names (Sdss, SimCam) or dotted paths of Instrument classes.  Registering again
    changes nothing.
    """
    from tasks.instruments import get_instrument

    instruments = [get_instrument(n) for n in names]
    with Butler(repo) as butler:
        for inst in instruments:
            changed = inst.register(butler.registry, update=update)
            inst.register_dataset_types(butler)
            what = f"{inst.name} ({inst.class_name()}): {len(inst.camera)} detectors, {len(inst.filters)} filters"
            click.echo(f"Registered {what}." if changed else f"{what}: already registered; nothing changed.")


@click.command("ingest-raws", cls=ErrorHandlingCommand)
@_repo
@click.argument("locations", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option(
    "--transfer",
    "-t",
    type=click.Choice(["auto", "copy", "symlink", "hardlink", "direct", "move"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="How files enter the repository (auto: copy files from outside it).",
)
@click.option("--run", default=None, help="RUN collection (default <INSTRUMENT>/raw/all).")
@click.option("--instrument", default=None, help="Instrument of all files (default: recognised from each header).")
@click.option("--processes", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that read headers in parallel.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def ingest_raws_command(
    repo: str, locations: tuple[str, ...], transfer: str, run: str | None, instrument: str | None, processes: int,
    fmt: str,
) -> None:
    """Ingest raw files into REPO, with the dimension records they need.

    LOCATIONS are files, or directories searched recursively for raw files (fpC-*.fit.gz for SDSS).
    Files already ingested are skipped.  Unreadable files are reported and the rest ingested; the exit
    code is 1 if any file failed.
    """
    from tasks.instruments import ingest_raws

    with Butler(repo) as butler:
        report = ingest_raws(
            butler, locations, instrument=instrument, run=run, transfer=transfer.lower(), processes=processes,
            progress=True,
        )
        rows = []
        for ref in report.refs:
            rec = butler.registry.get_dimension_record(
                "exposure", {"instrument": ref.data_id["instrument"], "exposure": ref.data_id["exposure"]}
            )
            rows.append(
                {
                    "instrument": ref.data_id["instrument"],
                    "exposure": ref.data_id["exposure"],
                    "detector": ref.data_id["detector"],
                    "obs_id": rec.get("obs_id") if rec else None,
                    "physical_filter": rec.get("physical_filter") if rec else None,
                    "day_obs": rec.get("day_obs") if rec else None,
                    "run": ref.run,
                }
            )
    rows.sort(key=lambda r: (r["instrument"], r["exposure"], r["detector"]))
    output(fmt, rows)
    say(fmt, f"Ingested {report.summary()}" + (f" into {', '.join(report.runs)}." if report.runs else "."))
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if report.failures:
        click.echo(f"Failed to ingest {len(report.failures)} file(s):", err=True)
        for failure in report.failures:
            click.echo(f"  {failure}", err=True)
        click.get_current_context().exit(1)


@click.command("define-visits", cls=ErrorHandlingCommand)
@_repo
@click.argument("instrument")
@click.option("--where", "-d", default="", help="Restrict the raws, e.g. \"exposure.day_obs = 20031019\".")
@click.option("--collections", "-c", multiple=True, help="Collections holding the raws (default <INSTRUMENT>/raw/all).")
@click.option("--update", is_flag=True, help="Replace visit records whose metadata or region changed.")
def define_visits_command(repo: str, instrument: str, where: str, collections: tuple[str, ...], update: bool) -> None:
    """Define one visit per exposure (same ID) of INSTRUMENT, with sky regions from the raws' WCS."""
    from tasks.instruments import define_visits

    with Butler(repo) as butler:
        report = define_visits(butler, instrument, where=where, collections=list(collections) or None, update=update)
    click.echo(f"{report.summary()[0].upper()}{report.summary()[1:]} for {instrument}.")


commands = [register_instrument_command, ingest_raws_command, define_visits_command]
