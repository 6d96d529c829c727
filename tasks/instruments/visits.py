"""Visit definition: group ingested exposures into visits and give visits and detectors sky regions.

This implements LSST's *one-to-one* visit system: every exposure is its own visit, with the same ID.
For each exposure with raws in the searched collections, `define_visits` writes

* a ``visit`` record (metadata copied from the exposure; region = convex hull of its detectors' regions),
* a ``visit_definition`` record (exposure -> visit),
* a ``visit_detector_region`` record per raw, whose region is the sky polygon of the detector's pixel
  box mapped through the raw's WCS (read from the header alone, via the ``raw.wcs`` component).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from butler import Butler, DimensionRecord
from butler.errors import ButlerError
from butler.regions import polygon_from_radec
from butler.registry import Registry

from ..errors import InstrumentError
from ._instrument import Instrument, get_instrument
from .ingest import default_raw_run

__all__ = ["DefineVisitsReport", "define_visits", "detector_region_vertices"]

_LOG = logging.getLogger("tasks.instruments.visits")


@dataclasses.dataclass
class DefineVisitsReport:
    """What `define_visits` did.

    Attributes
    ----------
    visits : `list` [`int`]
        IDs of all visits defined (new or already present).
    new_visits : `int`
        Visit records inserted (or replaced with ``update``) now.
    new_regions : `int`
        ``visit_detector_region`` records inserted now.
    updated : `int`
        Visits whose records were replaced (``update=True``).
    stale : `list` [`int`]
        Visits whose stored records differ from the recomputed ones and were left alone
        (``update=False``).
    """

    visits: list[int] = dataclasses.field(default_factory=list)
    new_visits: int = 0
    new_regions: int = 0
    updated: int = 0
    stale: list[int] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{len(self.visits)} visit{'s' if len(self.visits) != 1 else ''} defined "
            f"({self.new_visits} new, {self.new_regions} new detector regions"
        )
        if self.updated:
            text += f", {self.updated} updated"
        if self.stale:
            text += f", {len(self.stale)} differing from the stored records (use --update)"
        return text + ")"


def detector_region_vertices(wcs: Any, bbox: Any, *, points_per_side: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sky (RA, Dec) in degrees of the pixel-edge outline of a detector's box.

    Parameters
    ----------
    wcs : `astropy.wcs.WCS`
        Maps 0-based parent pixel coordinates to the sky.
    bbox : `tasks.image.Box2I`
        The detector's pixel box.
    points_per_side : `int`, optional
        Vertices per side (1: the 4 corners).  More follow a distorted WCS better; the region is their
        convex hull.

    Returns
    -------
    ra, dec : `numpy.ndarray`, shape (4 * points_per_side,)
    """
    corners = bbox.corners()  # (4, 2) pixel-edge corners, counter-clockwise
    xs, ys = [], []
    for i in range(4):
        start, end = corners[i], corners[(i + 1) % 4]
        t = np.arange(points_per_side) / points_per_side
        xs.append(start[0] + t * (end[0] - start[0]))
        ys.append(start[1] + t * (end[1] - start[1]))
    sky = wcs.pixel_to_world(np.concatenate(xs), np.concatenate(ys))
    return np.asarray(sky.icrs.ra.deg, dtype=float), np.asarray(sky.icrs.dec.deg, dtype=float)


def define_visits(
    butler: Butler,
    instrument: str | Instrument,
    *,
    where: str = "",
    bind: dict[str, Any] | None = None,
    collections: str | list[str] | None = None,
    update: bool = False,
) -> DefineVisitsReport:
    """Define one visit per exposure that has raws, with regions from the raws' WCS.

    Idempotent: records already present are kept.  Visits whose recomputed record differs from the
    stored one (e.g. more detectors were ingested since) are reported in ``report.stale`` and left alone,
    unless ``update`` is given.

    Parameters
    ----------
    butler : `butler.Butler`
        A writeable butler.
    instrument : `str` or `Instrument`
        Short name (``"Sdss"``), registry name (``"SDSS"``), dotted path, or instance.
    where : `str`, optional
        Query expression restricting the raws (``"exposure.day_obs = 20031019"``).
    bind : `dict`, optional
        Values of identifiers in ``where``.
    collections : `str` or `list` [`str`], optional
        Where to find raws (default ``<INSTRUMENT>/raw/all``).
    update : `bool`, optional
        Replace visit and region records that differ from the recomputed ones.

    Returns
    -------
    report : `DefineVisitsReport`

    Raises
    ------
    InstrumentError
        If the instrument is not registered or no raw matches.
    """
    inst = instrument if isinstance(instrument, Instrument) else _resolve(butler.registry, instrument)
    name = inst.name
    if butler.registry.get_dimension_record("instrument", {"instrument": name}) is None:
        raise InstrumentError(
            f"instrument {name!r} is not registered in {butler.config.root}; ingest raws first "
            f"(`butler ingest-raws {butler.config.root} <files>`)."
        )
    collections = collections or default_raw_run(name)
    refs = butler.query_datasets("raw", collections, where=where, bind=bind, instrument=name)
    report = DefineVisitsReport()
    if not refs:
        raise InstrumentError(
            f"no {name} raws found in {collections!r}{' matching ' + repr(where) if where else ''}; nothing to define. "
            "Check the collection (`butler query-datasets REPO raw`) and the --where expression."
        )
    by_exposure: dict[int, list[Any]] = {}
    for ref in refs:
        by_exposure.setdefault(int(ref.data_id["exposure"]), []).append(ref)

    registry = butler.registry
    visits, definitions, regions = [], [], []
    for exposure, exp_refs in sorted(by_exposure.items()):
        record = registry.get_dimension_record("exposure", {"instrument": name, "exposure": exposure})
        if record is None:  # cannot happen for ingested raws, but make the failure readable
            raise InstrumentError(f"exposure {exposure} of {name} has raws but no exposure record.")
        all_ra, all_dec = [], []
        for ref in sorted(exp_refs, key=lambda r: r.data_id["detector"]):
            wcs = butler.get(ref.dataset_type.name + ".wcs", ref.data_id, collections=[ref.run])
            bbox = inst.camera[int(ref.data_id["detector"])].bbox  # the assembled pixels (raws may add overscans)
            ra, dec = detector_region_vertices(wcs, bbox)
            all_ra.append(ra)
            all_dec.append(dec)
            regions.append(
                {
                    "instrument": name,
                    "visit": exposure,
                    "detector": int(ref.data_id["detector"]),
                    "region": polygon_from_radec(ra, dec),
                }
            )
        visits.append(
            {
                "instrument": name,
                "id": exposure,
                "physical_filter": record.physical_filter,
                "day_obs": record.day_obs,
                "name": record.get("obs_id"),
                "exposure_time": record.get("exposure_time"),
                "datetime_begin": record.get("datetime_begin"),
                "datetime_end": record.get("datetime_end"),
                "target_name": record.get("target_name"),
                "zenith_angle": record.get("zenith_angle"),
                "region": polygon_from_radec(np.concatenate(all_ra), np.concatenate(all_dec)),
            }
        )
        definitions.append({"instrument": name, "exposure": exposure, "visit": exposure})
        report.visits.append(exposure)

    with registry.transaction():
        new_visits, changed_visits = _split(registry, "visit", visits, ("id",))
        new_regions, changed_regions = _split(registry, "visit_detector_region", regions, ("visit", "detector"))
        report.new_visits = registry.insert_dimension_data("visit", *new_visits)
        report.new_regions = registry.insert_dimension_data("visit_detector_region", *new_regions)
        if "visit_definition" in butler.dimensions:
            registry.insert_dimension_data("visit_definition", *definitions, skip_existing=True)
        report.stale = sorted({r["id"] for r in changed_visits} | {r["visit"] for r in changed_regions})
        if update and report.stale:
            try:
                if changed_visits:
                    registry.insert_dimension_data("visit", *changed_visits, replace=True)
                if changed_regions:
                    registry.insert_dimension_data("visit_detector_region", *changed_regions, replace=True)
            except ButlerError:
                raise
            except Exception as err:  # the database refuses to replace a record others refer to
                raise InstrumentError(
                    f"cannot update visits {report.stale} of {name}: {type(err).__name__}: "
                    f"{str(err).splitlines()[0]}. Records that datasets or regions refer to cannot be replaced "
                    "in place; define the visits in a new repository or remove the datasets that use them."
                ) from None
            report.updated = len(report.stale)
            report.stale = []
    if report.stale:
        _LOG.warning(
            "%d visit(s) of %s differ from their stored records (more detectors ingested since, or a changed "
            "WCS): %s; rerun with update=True (--update) to replace them.", len(report.stale), name, report.stale,
        )
    _LOG.info("%s", report.summary())
    return report


def _resolve(registry: Registry, instrument: str) -> Instrument:
    """An instrument from a short name or dotted path, else from the registry's class_name."""
    try:
        return get_instrument(instrument)
    except InstrumentError:
        return Instrument.from_registry(registry, instrument)


def _split(
    registry: Registry, element: str, records: list[dict[str, Any]], keys: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into (not stored yet, stored with different values); identical ones are dropped."""
    el = registry.universe[element]
    new, changed = [], []
    for rec in records:
        key = {"instrument": rec["instrument"]}
        key.update({("visit" if k == "id" else k): rec[k] for k in keys})
        existing = registry.get_dimension_record(element, key)
        if existing is None:
            new.append(rec)
        elif existing.to_simple() != DimensionRecord(el, rec).to_simple():
            changed.append(rec)
    return new, changed
