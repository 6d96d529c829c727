"""Read-only formatters of the SDSS photometric-pipeline files (fpC, fpM, psField, tsField).

These files are ingested, never written by the butler, so every ``write`` raises `FormatterError`.

=============  ==========================  ====================================================
dataset type   formatter                   object read
=============  ==========================  ====================================================
``raw``        `SdssRawFormatter`          `tasks.image.Exposure` of an fpC corrected frame
``fpM``        `SdssMaskFormatter`         `tasks.image.Mask` from the fpM span tables
``psField``    `SdssPsFieldFormatter`      `dict`: per-band gain, dark variance, sky, PSF fit
``tsField``    `SdssTsFieldFormatter`      `dict`: per-band photometric calibration
=============  ==========================  ====================================================

File formats: the SDSS data model, https://data.sdss.org/datamodel/files/PHOTO_REDUX/RERUN/RUN/
(``objcs/CAMCOL/fpM.html``, ``psField.html``, ``fpC.html``) and ``PHOTO_SWEEP``/``calibChunks``
(``tsField.html``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from astropy.io import fits
from astropy.time import TimeDelta
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from butler.errors import FormatterError
from butler.formatters import Formatter

from ...errors import IngestError
from ._instrument import APO, FILTER_ORDER, SdssFrame, exposure_time, frame_time

__all__ = [
    "FPM_PLANE_MAP",
    "SdssMaskFormatter",
    "SdssPsFieldFormatter",
    "SdssRawFormatter",
    "SdssTsFieldFormatter",
    "kl_psf_image",
    "read_fpc",
    "read_fpm",
    "read_psfield",
    "read_tsfield",
    "wcs_from_fpc_header",
]

# SDSS mask planes (fpM HDU names S_MASK_<NAME>) -> LSST mask planes; the others keep their SDSS name.
FPM_PLANE_MAP = {"INTERP": "INTRP", "SATUR": "SAT", "CR": "CR"}


class _ReadOnlyFormatter(Formatter):
    extension: ClassVar[str] = ".fit"

    def write(self, obj: Any, path: Path) -> None:
        raise FormatterError(
            f"{type(self).__name__} only reads SDSS pipeline files; ingest them with `butler ingest-raws` "
            "instead of putting them."
        )


# --------------------------------------------------------------------------------------------------
# fpC: corrected frames


def wcs_from_fpc_header(header: fits.Header) -> WCS:
    """The celestial TAN WCS of an fpC header, for 0-based parent pixel coordinates.

    Only the WCS keywords are used (fpC headers also carry the deprecated ``RADECSYS``).
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = [str(header["CTYPE1"]).strip(), str(header["CTYPE2"]).strip()]
    wcs.wcs.crpix = [float(header["CRPIX1"]), float(header["CRPIX2"])]
    wcs.wcs.crval = [float(header["CRVAL1"]), float(header["CRVAL2"])]
    wcs.wcs.cd = [
        [float(header["CD1_1"]), float(header["CD1_2"])],
        [float(header["CD2_1"]), float(header["CD2_2"])],
    ]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = str(header.get("RADESYS", header.get("RADECSYS", "ICRS"))).strip() or "ICRS"
    if wcs.wcs.radesys != "ICRS":
        wcs.wcs.equinox = float(header.get("EQUINOX", 2000.0))
    wcs.pixel_shape = (int(header.get("NAXIS1", 0)) or None, int(header.get("NAXIS2", 0)) or None)
    wcs.wcs.set()
    return wcs


def _visit_info(header: fits.Header, frame: SdssFrame) -> Any:
    from ...image import VisitInfo

    begin = frame_time(header)
    exptime = exposure_time(header)
    alt = header.get("ALT")
    airmass = None
    if alt is not None and float(alt) > 0:
        airmass = 1.0 / np.sin(np.radians(float(alt)))  # plane-parallel secant of the zenith angle
    ra, dec = header.get("RA"), header.get("DEC")
    return VisitInfo(
        date=begin + TimeDelta(exptime / 2.0, format="sec"),
        exposure_time=exptime,
        airmass=None if airmass is None else float(airmass),
        boresight_ra_dec=None if ra is None or dec is None else (float(ra), float(dec)),
        boresight_rot_angle=None if header.get("SPA") is None else float(header["SPA"]),
        id=frame.exposure,
        instrument="SDSS",
        observatory=APO,
    )


def _check_bbox(bbox: Any, parent: Any) -> Any:
    from ...image import Box2I

    if not isinstance(bbox, Box2I):
        raise FormatterError(f"read parameter 'bbox' must be a tasks.image.Box2I, got {type(bbox).__name__}.")
    if not parent.contains(bbox):
        raise FormatterError(f"read parameter bbox {bbox} is not inside the frame {parent}.")
    return bbox


def read_fpc(path: str | Path, *, component: str | None = None, bbox: Any = None) -> Any:
    """Read an SDSS fpC corrected frame as an `Exposure`, or one of its components.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
        ``fpC-<run>-<filter><camcol>-<field>.fit[.gz]``.
    component : `str`, optional
        ``image`` (float32 array), or one of ``wcs``, ``bbox``, ``visitInfo``, ``detector``, ``filter``,
        ``metadata``, which read the header only.
    bbox : `tasks.image.Box2I`, optional
        Read only this part of the frame (parent pixel coordinates).

    Returns
    -------
    exposure : `tasks.image.Exposure`
        Image in DN **including the 1000 DN soft bias** (header ``SOFTBIAS``), float32, shape (1489,
        2048) ``[y=row, x=column]``; mask all zero (the fpM holds the mask); variance all zero (it needs
        the gain from the psField: see `tasks.instruments.sdss.isr.SdssIsrTask`).
    """
    from ...image import Box2I, Exposure, FilterLabel, MaskedImage
    from . import Sdss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        if component in (None, "image"):
            with fits.open(path, memmap=False) as hdul:
                header = hdul[0].header.copy()
                data = hdul[0].data
        else:
            header = fits.getheader(path, 0)
            data = None
    frame = SdssFrame.from_header(header, path)
    parent = Box2I(0, 0, int(header["NAXIS1"]), int(header["NAXIS2"]))
    if bbox is not None:
        bbox = _check_bbox(bbox, parent)
    if component == "bbox":
        return parent if bbox is None else bbox
    if component == "metadata":
        return header
    if component == "wcs":
        return wcs_from_fpc_header(header)
    if component == "visitInfo":
        return _visit_info(header, frame)
    if component == "detector":
        return Sdss().camera[frame.detector]
    if component == "filter":
        return FilterLabel(band=frame.filter, physical_filter=frame.filter)
    if data is None or data.shape != parent.shape:
        raise IngestError(f"{path}: the fpC image has shape {None if data is None else data.shape}, header says {parent.shape}.")
    image = np.asarray(data, dtype=np.float32)
    xy0 = (0, 0)
    if bbox is not None:
        image = image[bbox.slices(parent)].copy()
        xy0 = bbox.xy0
    if component == "image":
        return image
    return Exposure(
        MaskedImage(image, xy0=xy0),
        wcs=wcs_from_fpc_header(header),
        visit_info=_visit_info(header, frame),
        detector=Sdss().camera[frame.detector],
        filter=FilterLabel(band=frame.filter, physical_filter=frame.filter),
        metadata=header,
    )


class SdssRawFormatter(_ReadOnlyFormatter):
    """Reads an SDSS fpC frame as a raw `tasks.image.Exposure` (see `read_fpc`).

    Components ``wcs``, ``bbox``, ``visitInfo``, ``detector``, ``filter`` and ``metadata`` read only the
    header; ``image`` reads the pixels.  Parameter ``bbox`` (`tasks.image.Box2I`) reads a sub-image.
    """

    extension: ClassVar[str] = ".fit.gz"
    supported_components: ClassVar[frozenset[str]] = frozenset(
        {"image", "wcs", "bbox", "visitInfo", "detector", "filter", "metadata"}
    )
    supported_parameters: ClassVar[frozenset[str]] = frozenset({"bbox"})

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        self.check_read_arguments(component, parameters)
        return read_fpc(path, component=component, bbox=(parameters or {}).get("bbox"))


# --------------------------------------------------------------------------------------------------
# fpM: masks


def _plane_names(hdul: fits.HDUList) -> list[str]:
    """SDSS plane names in HDU order, from the last HDU's (defName, attributeName, Value) table."""
    table = hdul[-1].data
    if table is None or "attributeName" not in table.names:
        raise IngestError(f"{hdul.filename()}: the last HDU has no attributeName column; not an SDSS fpM file.")
    names = {int(v): str(n).strip() for n, v in zip(table["attributeName"], table["Value"])}
    n_plane = int(hdul[0].header.get("NPLANE", len(hdul) - 2))
    return [names.get(i, f"S_MASK_{i}").removeprefix("S_MASK_") for i in range(n_plane)]


def fpm_spans(table: fits.FITS_rec | None) -> np.ndarray:
    """All spans of one fpM plane as an (n, 3) int array of (y, x_first, x_last), inclusive.

    Each table row is an SDSS OBJMASK whose spans are stored in the variable-length byte column ``s``
    as big-endian int16 triples (row, col0, col1), offset by the row's ``row0``, ``col0``.
    """
    if table is None or len(table) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    parts = []
    for row0, col0, spans in zip(table["row0"], table["col0"], table["s"]):
        triples = np.asarray(spans, dtype=np.uint8).view(">i2").reshape(-1, 3).astype(np.int64)
        triples[:, 0] += int(row0)
        triples[:, 1:] += int(col0)
        parts.append(triples)
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)


def spans_to_bool(spans: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels covered by spans (y, x_first, x_last inclusive), clipped to ``shape``; overlaps are fine."""
    ny, nx = shape
    if not len(spans):
        return np.zeros(shape, dtype=bool)
    y, x0, x1 = spans[:, 0], np.clip(spans[:, 1], 0, nx), np.clip(spans[:, 2] + 1, 0, nx)
    keep = (y >= 0) & (y < ny) & (x1 > x0)
    y, x0, x1 = y[keep], x0[keep], x1[keep]
    # +1 where a span starts, -1 after it ends; a running sum along x counts the spans covering a pixel.
    size = ny * (nx + 1)
    diff = np.bincount(y * (nx + 1) + x0, minlength=size) - np.bincount(y * (nx + 1) + x1, minlength=size)
    return np.cumsum(diff.reshape(ny, nx + 1), axis=1)[:, :nx] > 0


def read_fpm(path: str | Path, *, bbox: Any = None) -> Any:
    """Read an SDSS fpM mask file as a `tasks.image.Mask`.

    SDSS planes INTERP, SATUR and CR become the LSST planes INTRP, SAT and CR; the others
    (NOTCHECKED, OBJECT, BRIGHTOBJECT, BINOBJECT, CATOBJECT, SUBTRACTED, GHOST) are added as planes
    of the same name.  Pixels are those of the spans (not just the bounding boxes of the objects).

    Returns
    -------
    mask : `tasks.image.Mask`, shape (MASKROWS, MASKCOLS) = (1489, 2048), [y, x]
    """
    from ...image import Box2I, Mask

    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        shape = (int(header["MASKROWS"]), int(header["MASKCOLS"]))
        mask = Mask(shape)
        for i, sdss_name in enumerate(_plane_names(hdul)):
            hdu_index = i + 1
            if hdu_index >= len(hdul) - 1:
                break
            name = FPM_PLANE_MAP.get(sdss_name, sdss_name)
            mask.add_plane(name)
            where = spans_to_bool(fpm_spans(hdul[hdu_index].data), shape)
            if where.any():
                mask.set_plane(name, where)
    if bbox is not None:
        bbox = _check_bbox(bbox, Box2I(0, 0, shape[1], shape[0]))
        mask = mask[bbox].copy()
    return mask


class SdssMaskFormatter(_ReadOnlyFormatter):
    """Reads an SDSS fpM file as a `tasks.image.Mask` (see `read_fpm`); parameter ``bbox``."""

    supported_parameters: ClassVar[frozenset[str]] = frozenset({"bbox"})

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        self.check_read_arguments(component, parameters)
        return read_fpm(path, bbox=(parameters or {}).get("bbox"))


# --------------------------------------------------------------------------------------------------
# psField and tsField: per-band tables


def _band_table(row: fits.FITS_record, columns: list[str], filters: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {f: {} for f in filters}
    for column in columns:
        values = np.asarray(row[column]).ravel()
        if values.size != len(filters):
            continue
        for f, v in zip(filters, values):
            out[f][column] = v.item()
    return out


def _filters(header: fits.Header) -> list[str]:
    return str(header.get("FILTERS", " ".join(FILTER_ORDER))).split()


PSFIELD_COLUMNS = [
    "status", "sky", "skysig", "skyerr", "skyslope", "lbias", "rbias", "psf_nstar", "psf_ap_correctionErr",
    "psf_sigma1", "psf_sigma2", "psf_b", "psf_p0", "psf_beta", "psf_sigmap", "psf_width", "psf_sigma1_2G",
    "psf_sigma2_2G", "psf_b_2G", "psfCounts", "gain", "dark_variance",
]  # fmt: skip


def read_psfield(path: str | Path, *, kl_psf: bool = True) -> dict[str, Any]:
    """Read an SDSS psField file.

    Returns
    -------
    psfield : `dict`
        ``run``, ``camcol``, ``field``, ``filters`` (``["u", "g", "r", "i", "z"]``) and ``bands``:
        band -> ``{gain [e-/DN], dark_variance [DN^2 per pixel: read noise + dark current], sky
        [DN/pixel, without soft bias], skysig [DN], skyerr, psf_width [arcsec, FWHM-equivalent],
        psf_sigma1, psf_sigma2 [pixels; double-Gaussian sigmas], psf_b [ratio of the Gaussians' peak
        amplitudes], psf_beta, psf_p0, psf_sigmap (power-law wing), psf_*_2G, psfCounts, flux20
        [DN of a 20th-magnitude star, HDU 7], flux20Err, ap_corr_run [mag, HDU 8]}``, from HDU 6; with
        ``kl_psf`` also ``kl_psf``: band -> ``{"basis": (n, 51, 51) float32, "coefficients": (n, nrow_b,
        ncol_b) float32}`` (HDUs 1-5), see `kl_psf_image`.
    """
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        filters = _filters(header)
        table = hdul[6].data
        bands = _band_table(table[0], [c for c in PSFIELD_COLUMNS if c in table.names], filters)
        out: dict[str, Any] = {
            "run": int(header.get("RUN", -1)),
            "camcol": int(header.get("CAMCOL", -1)),
            "field": int(header.get("FIELD", table[0]["field"] if "field" in table.names else -1)),
            "filters": filters,
            "bands": bands,
        }
        for hdu_index, columns in ((7, ("flux20", "flux20Err")), (8, ("ap_corr_run", "ap_corr_runErr"))):
            if len(hdul) > hdu_index and hdul[hdu_index].data is not None and "filter" in hdul[hdu_index].data.names:
                data = hdul[hdu_index].data
                for f, row in zip(data["filter"], data):
                    key = str(f).strip()
                    if key in bands:
                        bands[key].update({c: float(row[c]) for c in columns if c in data.names})
        if kl_psf:
            out["kl_psf"] = {}
            for i, f in enumerate(filters):
                data = hdul[i + 1].data
                nrow_b, ncol_b = int(data["nrow_b"][0]), int(data["ncol_b"][0])
                basis = np.stack(
                    [np.asarray(r, dtype=np.float32).reshape(int(nr), int(nc))
                     for r, nr, nc in zip(data["RROWS"], data["RNROW"], data["RNCOL"])]
                )  # fmt: skip
                coefficients = np.asarray(data["c"], dtype=np.float32)[:, :nrow_b, :ncol_b]
                out["kl_psf"][f] = {"basis": basis, "coefficients": coefficients}
    return out


def kl_psf_image(psfield: Mapping[str, Any], band: str, x: float, y: float) -> np.ndarray:
    """The SDSS KL-basis PSF of one band at frame position (x=column, y=row), normalised to sum 1.

    ``psf = sum_k [sum_ij c_k[i, j] (0.001 y)^i (0.001 x)^j] basis_k`` (the SDSS ``sdss_psf_recon``
    algorithm), shape (51, 51) [y, x], centred on the central pixel.
    """
    kl = psfield["kl_psf"][band]
    coefficients = np.asarray(kl["coefficients"], dtype=np.float64)
    nrow_b, ncol_b = coefficients.shape[1:]
    powers = np.outer((0.001 * y) ** np.arange(nrow_b), (0.001 * x) ** np.arange(ncol_b))
    weights = (coefficients * powers).sum(axis=(1, 2))
    image = np.tensordot(weights, np.asarray(kl["basis"], dtype=np.float64), axes=1)
    return image / image.sum()


TSFIELD_COLUMNS = [
    "aa", "aaErr", "kk", "kkErr", "bb", "bbErr", "airmass", "mjd", "gain", "dark_variance", "saturation_level",
    "sky", "skySig", "psf_width", "neff_psf",
]  # fmt: skip


def read_tsfield(path: str | Path) -> dict[str, Any]:
    """Read an SDSS tsField file.

    Returns
    -------
    tsfield : `dict`
        ``run``, ``camcol``, ``field``, ``rerun``, ``filters`` and ``bands``: band -> ``{aa [mag]
        (photometric zero point), kk [mag/airmass] (extinction), airmass, mjd (TAI of the frame's first
        row), aaErr, kkErr, gain, dark_variance, saturation_level [DN], sky [maggies/arcsec^2], skySig,
        psf_width [arcsec], neff_psf}``.

    Notes
    -----
    A source of ``counts`` DN (soft bias removed) in exposure time ``t`` has flux
    ``f / f0 = counts / t * 10**(0.4 * (aa + kk * airmass))`` with ``f0 = 3631 Jy`` (SDSS EDR paper,
    Stoughton et al. 2002, AJ 123, 485, sec. 4.5; SDSS magnitudes are close to AB).
    """
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        filters = _filters(header)
        table = hdul[1].data
        bands = _band_table(table[0], [c for c in TSFIELD_COLUMNS if c in table.names], filters)
        return {
            "run": int(header.get("RUN", -1)),
            "camcol": int(header.get("CAMCOL", -1)),
            "rerun": int(header.get("RERUN", -1)),
            "field": int(table[0]["field"]) if "field" in table.names else int(header.get("FIELD0", -1)),
            "filters": filters,
            "bands": bands,
        }


class SdssPsFieldFormatter(_ReadOnlyFormatter):
    """Reads an SDSS psField file as a `dict` (see `read_psfield`); parameter ``kl_psf`` (bool, default True)."""

    supported_parameters: ClassVar[frozenset[str]] = frozenset({"kl_psf"})

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        self.check_read_arguments(component, parameters)
        return read_psfield(path, kl_psf=bool((parameters or {}).get("kl_psf", True)))


class SdssTsFieldFormatter(_ReadOnlyFormatter):
    """Reads an SDSS tsField file as a `dict` (see `read_tsfield`)."""

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        self.check_read_arguments(component, parameters)
        return read_tsfield(path)
