"""Put a SimCam simulation into a repository: raws, visits and the reference catalogue."""

from __future__ import annotations

from butler import Butler, FileDataset

from ...errors import IngestError
from ..ingest import ingest_raws
from ..visits import define_visits
from .simulate import SimulationTruth

__all__ = ["REFCAT_COLLECTION", "ingest_simulation"]

REFCAT_COLLECTION = "refcats"  # CHAINED collection searched for the reference catalogue ("refcats/sim")


def ingest_simulation(butler: Butler, truth: SimulationTruth, *, transfer: str = "symlink") -> None:
    """Ingest a simulation's raws, define its visits and ingest its reference catalogue.

    After this the repository has the raws in ``SimCam/raw/all``, one visit per exposure, and the truth's
    ``refcat.fits`` as the ``refcat`` dataset (no dimensions) in RUN ``refcats/sim``, chained into
    ``refcats``: the inputs ``SimCam/ProcessCcd.yaml`` needs (``-i SimCam/raw/all,refcats``).

    Parameters
    ----------
    butler : `Butler`
        A writeable repository.
    truth : `SimulationTruth`
        What `simulate_raws` returned (or `SimulationTruth.load` of its directory).
    transfer : `str`, optional
        Ingest transfer mode of the raws and the catalogue.

    Raises
    ------
    IngestError
        If any raw file could not be ingested (the report's failures are in the message).
    """
    report = ingest_raws(butler, [truth.root / "raw"], transfer=transfer)
    if not report.ok:
        raise IngestError(f"SimCam raws of {truth.root} could not all be ingested:\n{report}")
    define_visits(butler, "SimCam")
    butler.register_dataset_type("refcat", [], "AstropyFitsTable")
    run = f"{REFCAT_COLLECTION}/sim"
    butler.ingest(FileDataset(truth.root / "truth" / "refcat.fits", "refcat", {}), transfer=transfer, run=run)
    butler.collection_chain(REFCAT_COLLECTION, [run])
