"""FITS formatters of exposures, backgrounds and convolution kernels.

`ExposureFitsFormatter` writes an `Exposure` as the multi-extension FITS file the LSST stack writes
(readable by ds9, astropy and afw-era tools):

==========  ============  ===========================================================================
HDU         EXTNAME       content
==========  ============  ===========================================================================
0           PRIMARY       no data; the exposure's ``metadata`` cards, ``FILTER`` (physical filter),
                          ``BAND``, and ``BPFORMAT``/``BPFMTVER``/``BPHDUS`` describing the layout
1           IMAGE         float32 pixels; the celestial WCS in LOCAL (file) pixel coordinates,
                          ``LTV1 = -x0``, ``LTV2 = -y0`` and the ``A`` alternate (physical) WCS
                          ``CTYPE1A = 'LINEAR'``, ``CRPIX1A = 1``, ``CRVAL1A = x0`` ... so that ds9
                          shows parent pixel coordinates
2           MASK          int32 bits; ``MP_<NAME> = bit`` for every plane (same WCS keys)
3           VARIANCE      float32 (same WCS keys)
4...        PSF           binary table of ``Psf.to_table()`` (only when the exposure has a PSF)
            PHOTOCALIB    one-row table: ``PhotoCalib.to_dict()`` as columns and a ``json`` column
            VISITINFO     one-row table: ``VisitInfo.to_dict()`` as columns and a ``json`` column
            DETECTOR      one-row table: ``Detector.to_dict()`` scalars as columns and a ``json`` column
            COADDINPUTS   binary table of ``coadd_inputs`` (one row per input visit of a coadd; only when
                          the exposure has one)
==========  ============  ===========================================================================

Writing is deterministic: no dates, checksums or other stamps, so equal exposures give equal bytes.

The reader also understands the LSST stack's own afw ``ExposureF`` files (image, mask and variance in
HDUs 1-3, found by ``EXTNAME``/``EXTTYPE`` or position; ``MP_*`` mask planes mapped by name; the
header WCS shifted by ``LTV1/LTV2``; ``FLUXMAG0`` as the photometric calibration; ``FILTER``; the
visit-info header keys).  afw archive tables (PSF, transmission curves...) cannot be interpreted and
are skipped with a debug log message.

Component reads (``calexp.wcs``, ``calexp.psf`` ...) read only the headers and tables they need,
never the pixel data of the other planes; the ``bbox`` read parameter reads only the rows of the box.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS, WCSHDO_P17, FITSFixedWarning, WCSHDO_all
from astropy.wcs.wcs import WCSHDO_SIP

from butler.errors import FormatterError
from butler.formatters import Formatter

from ..errors import FitsFormatError
from .camera import Detector
from .exposure import Exposure, FilterLabel
from .geom import Box2I
from .mask import Mask
from .masked_image import MaskedImage
from .photo_calib import AB_ZERO_POINT_NJY, PhotoCalib
from .visit_info import VisitInfo

__all__ = ["BackgroundFitsFormatter", "ExposureFitsFormatter", "KernelFitsFormatter"]

log = logging.getLogger("tasks.image.fits")

# Primary-header keywords of files written here.
FORMAT_KEY = "BPFORMAT"  # what the file holds: "ExposureF", "BackgroundList" or "Kernel"
VERSION_KEY = "BPFMTVER"  # layout version
HDUS_KEY = "BPHDUS"  # comma-separated EXTNAMEs of the HDUs after the primary, in order
COUNT_KEY = "BPNTABLE"  # number of background tables
META_KEY = "BPMETA"  # exact JSON of a table's ``meta`` (the header keys are for human readers)
FORMAT_VERSION = 1

_IMAGE, _MASK, _VARIANCE = "IMAGE", "MASK", "VARIANCE"
_PSF, _PHOTOCALIB, _VISITINFO, _DETECTOR = "PSF", "PHOTOCALIB", "VISITINFO", "DETECTOR"
_COADDINPUTS = "COADDINPUTS"
_JSON_COLUMN = "json"

# Primary keywords that are the layout's own, never part of an exposure's metadata.
_RESERVED_PRIMARY = frozenset(
    {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "EXTNAME", FORMAT_KEY, VERSION_KEY, HDUS_KEY, "FILTER", "BAND"}
)
# Keywords describing an HDU's structure rather than its content.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|EXTNAME|EXTVER|EXTTYPE|EXTLEVEL|INHERIT|BZERO|BSCALE"
    r"|BLANK|CHECKSUM|DATASUM|ZIMAGE|ZBITPIX|ZNAXIS\d*|ZTILE\d*|ZCMPTYPE|ZNAME\d*|ZVAL\d*|ZQUANTIZ|ZDITHER0)$"
)
# Keywords of the primary FITS WCS (including SIP); with one more letter they are an alternate WCS's.
_WCS_STEMS = (
    r"WCSAXES|WCSNAME|CRPIX\d|CRVAL\d|CDELT\d|CTYPE\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|CNAME\d"
    r"|CRDER\d|CSYER\d|LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|MJDREF|DATEREF|[AB]P?_ORDER|[AB]P?_\d+_\d+|[AB]_DMAX"
)
_ALTERNATE_WCS_KEY = re.compile(rf"^({_WCS_STEMS})[A-Z]$")
# Any WCS keyword, and the IRAF physical-coordinate keywords (LTV, LTM).
_WCS_KEY = re.compile(rf"^({_WCS_STEMS})[A-Z]?$|^(LTV\d|LTM\d_\d)$")
_MASK_PLANE_KEY = "MP_"
# afw visit-info header keys interpreted by the reader (and therefore not copied into metadata).
_AFW_VISIT_KEYS = frozenset(
    {
        "EXPTIME",
        "DATE-AVG",
        "TIMESYS",
        "TIME-MID",
        "BORE-RA",
        "BORE-DEC",
        "BORE-AIRMASS",
        "BORE-ROTANG",
        "IDNUM",
        "INSTRUMENT",
        "OBS-LONG",
        "OBS-LAT",
        "OBS-ELEV",
    }
)
_AFW_CALIB_KEYS = frozenset({"FLUXMAG0", "FLUXMAG0ERR"})
# afw's pointers into its archive tables.
_AFW_ARCHIVE_KEYS = re.compile(
    r"^(AR_HDU|EXPINFO_V|(PSF|SKYWCS|PHOTOCALIB|DETECTOR|VALIDPOLYGON|FILTER|FILTERLABEL|TRANSMISSIONCURVE"
    r"|APCORRMAP|COADDINPUTS|SUMMARYSTATS|VISITINFO|WCS|CALIB)_ID)$"
)
# Band names: an afw FILTER value that is one of these is both the band and the physical filter.
_BANDS = frozenset("ugrizyUBVRIJHK") | {"N921", "N816", "N540", "N387", "N419"}
# The afw "unset" DateTime: nanosecond 0 of the TAI epoch, written in UTC as 1969-12-31T23:59:52.
_AFW_NULL_TIME = Time("1970-01-01T00:00:00", scale="tai")


# -------------------------------------------------------------------------------------------------
# Small helpers shared by the three formatters
# -------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Make numpy scalars and arrays JSON-serialisable (for table ``meta``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any, what: str) -> str:
    """JSON text (ASCII only, so it fits a FITS header or string column) of a dict or table meta."""
    try:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError) as err:
        raise FormatterError(f"cannot write {what} to FITS: {err}; it must hold plain JSON values.") from None


def _fits_safe_scalar(value: Any) -> bool:
    """True when a value can be a FITS header card value without loss (numbers, bools, ASCII strings)."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return True
    if isinstance(value, (float, np.floating)):
        return math.isfinite(float(value))
    return isinstance(value, str) and value.isascii() and value.isprintable() and len(value) <= 68


def _table_to_hdu(table: Table, extname: str, what: str, *, extver: int | None = None) -> fits.BinTableHDU:
    """A binary-table HDU of an astropy Table whose ``meta`` comes back exactly (see `_hdu_to_table`).

    Scalar ``meta`` entries are also written as header keys for people and other FITS tools; the
    exact ``meta`` is the JSON in ``BPMETA``.

    Raises
    ------
    FormatterError
        If a column cannot be a FITS column or ``meta`` is not plain JSON.
    """
    meta = dict(table.meta)
    text = _dumps(meta, f"the {what} table's meta")
    plain = table.copy(copy_data=False)
    plain.meta.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=fits.verify.VerifyWarning)
        warnings.simplefilter("error", category=AstropyWarning)
        warnings.simplefilter("ignore", category=u.UnitsWarning)
        try:
            hdu = fits.table_to_hdu(plain, character_as_bytes=False)
        except (TypeError, ValueError, AstropyWarning) as err:
            raise FormatterError(f"cannot write the {what} as a FITS binary table: {err}.") from None
    for i, col in enumerate(plain.columns.values(), start=1):
        if col.info.description:
            hdu.header[f"TCOMM{i}"] = col.info.description
    hdu.header["EXTNAME"] = extname
    if extver is not None:
        hdu.header["EXTVER"] = extver
    for key, value in meta.items():
        name = str(key).upper()
        if (
            re.fullmatch(r"[A-Z0-9_-]{1,8}", name)
            and not _STRUCTURAL.match(name)
            and not re.match(r"^(T[A-Z]+\d+|TFIELDS|THEAP|BPMETA)$", name)
            and _fits_safe_scalar(value)
        ):
            hdu.header[name] = value.item() if isinstance(value, np.generic) else value
    hdu.header[META_KEY] = (text, "exact JSON of the table meta")
    return hdu


def _hdu_to_table(hdu: fits.BinTableHDU) -> Table:
    """Inverse of `_table_to_hdu`: native-byte-order columns, ``str`` strings and the exact ``meta``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=AstropyWarning)
        table = Table.read(hdu, character_as_bytes=False)
    descriptions = {i: table.meta.get(f"TCOMM{i}") for i in range(1, len(table.columns) + 1)}
    text = hdu.header.get(META_KEY)
    if text is not None:  # else keep astropy's reading of the header keys
        table.meta.clear()
        table.meta.update(json.loads(text))
    for i, name in enumerate(table.colnames, start=1):
        col = table[name]
        if col.dtype.byteorder not in ("=", "|"):
            table[name] = col.astype(col.dtype.newbyteorder("="))
        if descriptions.get(i):
            table[name].info.description = descriptions[i]
    return table


def _dict_to_hdu(data: Mapping[str, Any], extname: str) -> fits.BinTableHDU:
    """A one-row table HDU of a JSON-safe dict: its scalar and numeric-list entries as columns (for
    people and table viewers) and the exact dict as the JSON text of column ``json``."""
    text = _dumps(dict(data), f"the {extname} record")
    columns = []
    for key, value in data.items():
        if not isinstance(key, str) or key.lower() == _JSON_COLUMN or len(key) > 68:
            continue
        if isinstance(value, bool):
            columns.append(fits.Column(name=key, format="L", array=np.array([value])))
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            columns.append(fits.Column(name=key, format="K", array=np.array([value], dtype=np.int64)))
        elif isinstance(value, float):
            columns.append(fits.Column(name=key, format="D", array=np.array([value])))
        elif isinstance(value, str) and value.isascii() and value:
            columns.append(fits.Column(name=key, format=f"{len(value)}A", array=np.array([value])))
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            columns.append(fits.Column(name=key, format=f"{len(value)}D", array=np.array([value], dtype=float)))
    columns.append(fits.Column(name=_JSON_COLUMN, format=f"{len(text)}A", array=np.array([text])))
    hdu = fits.BinTableHDU.from_columns(columns, name=extname)
    return hdu


def _hdu_to_dict(hdu: fits.BinTableHDU, path: Path) -> dict[str, Any]:
    """Inverse of `_dict_to_hdu`: the exact dict from the ``json`` column."""
    try:
        text = hdu.data[_JSON_COLUMN][0]
        return json.loads(text)
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise FitsFormatError(
            f"{path}: HDU {hdu.name!r} has no readable '{_JSON_COLUMN}' column ({type(err).__name__}: {err}); "
            "the file is damaged or was not written by ExposureFitsFormatter."
        ) from None


def _data_size(header: fits.Header) -> int:
    """Bytes of an HDU's data from its header (FITS standard 4.4.1), without the padding."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for i in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{i}", 0))
    bitpix = abs(int(header.get("BITPIX", 8)))
    return bitpix // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)


def _native(array: np.ndarray, dtype: type) -> np.ndarray:
    """A native-byte-order array of ``dtype`` (a copy only when the type or byte order differs)."""
    array = np.asarray(array)
    target = np.dtype(dtype)
    if array.dtype == target:
        return array
    if array.dtype.newbyteorder("=") == target and array.flags.writeable and array.flags.owndata:
        return array.byteswap(inplace=True).view(target)
    return array.astype(target)


@contextmanager
def _open(path: Path, what: str) -> Iterator[_FitsFile]:
    """Open a FITS file lazily (headers are read only when an HDU is first touched)."""
    fits_file = _FitsFile(Path(path), what)
    try:
        yield fits_file
    finally:
        fits_file.close()


class _FitsFile:
    """A lazily-read FITS file with damage checks that turn astropy's quiet fallbacks into errors.

    astropy reads a truncated file without complaint (missing HDUs are "not found", missing data is
    zero-filled with a warning); every read here checks that the bytes an HDU needs are in the file.
    """

    def __init__(self, path: Path, what: str):
        self.path = path
        self.what = what
        try:
            with path.open("rb") as stream:
                magic = stream.read(3)
            self.size: int | None = None if magic[:2] == b"\x1f\x8b" or magic == b"BZh" else path.stat().st_size
        except OSError as err:
            raise FitsFormatError(f"cannot read {path}: {err}.") from None
        with self._guard("opening the file"):
            self.hdul = fits.open(path, lazy_load_hdus=True, memmap=False, mode="readonly")
            self.primary = self.hdul[0].header

    def close(self) -> None:
        hdul = getattr(self, "hdul", None)
        if hdul is not None:
            hdul.close()

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn astropy errors and truncation warnings into `FitsFormatError` naming the file."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category=AstropyWarning)
            warnings.simplefilter("ignore", category=FITSFixedWarning)
            try:
                yield
            except (FitsFormatError, FormatterError):
                raise
            except (OSError, ValueError, EOFError, TypeError, IndexError, KeyError, fits.VerifyError) as err:
                raise FitsFormatError(
                    f"cannot read {self.what} from {self.path} while {doing}: {type(err).__name__}: {err}. "
                    "The file is truncated, damaged or not a FITS file."
                ) from err
        for warning in caught:
            text = str(warning.message)
            if "truncated" in text or "corrupted" in text or "Header size is not multiple" in text:
                raise FitsFormatError(
                    f"cannot read {self.what} from {self.path} while {doing}: {text.strip()} "
                    "The file is truncated or damaged; write it again."
                )
            log.debug("%s: astropy warning while %s: %s", self.path, doing, text)

    def hdu(self, key: str | int) -> Any:
        """The HDU of an EXTNAME or index (headers only; data is read on first use of ``.data``)."""
        with self._guard(f"reading the header of HDU {key!r}"):
            return self.hdul[key]

    def find(self, extname: str) -> Any | None:
        """The HDU with this EXTNAME, or None when the file has none (reads every header)."""
        with self._guard(f"looking for HDU {extname!r}"):
            try:
                return self.hdul[extname]
            except KeyError:
                return None

    def check_data(self, hdu: Any) -> None:
        """Raise unless the file holds all the data bytes the HDU's header announces."""
        if self.size is None:
            return
        with self._guard(f"locating the data of HDU {hdu.name!r}"):
            start = hdu.fileinfo()["datLoc"]
        end = start + _data_size(hdu.header)
        if end > self.size:
            raise FitsFormatError(
                f"{self.path} is truncated: HDU {hdu.name!r} needs data up to byte {end} but the file has only "
                f"{self.size} bytes. Write or copy the file again."
            )

    def data(self, hdu: Any, section: tuple[slice, slice] | None = None) -> np.ndarray:
        """The data of an HDU, or a ``(slice_y, slice_x)`` section of an image HDU.

        A section reads only its rows, as one contiguous block (astropy would otherwise read a
        column range row by row), then selects the columns in memory.
        """
        self.check_data(hdu)
        with self._guard(f"reading the data of HDU {hdu.name!r}"):
            if section is None:
                return hdu.data
            rows, columns = section
            return hdu.section[rows, :][:, columns]


# -------------------------------------------------------------------------------------------------
# WCS and xy0
# -------------------------------------------------------------------------------------------------


def _wcs_header_cards(wcs: WCS | None, xy0: tuple[int, int]) -> fits.Header:
    """WCS cards of an image HDU: the WCS in local (file) pixels, LTV and the physical 'A' WCS.

    Raises
    ------
    FormatterError
        If the WCS does not have two pixel axes or uses distortion lookup tables (FITS headers
        cannot hold those).
    """
    x0, y0 = xy0
    header = fits.Header()
    if wcs is not None:
        if not isinstance(wcs, WCS):
            raise FormatterError(f"an exposure's wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}.")
        if wcs.pixel_n_dim != 2:
            raise FormatterError(f"an exposure's WCS must have 2 pixel axes, this one has {wcs.pixel_n_dim}.")
        if any(getattr(wcs, name, None) is not None for name in ("cpdis1", "cpdis2", "det2im1", "det2im2")):
            raise FormatterError(
                "the exposure's WCS has distortion lookup tables, which a FITS image header cannot hold; "
                "fit a SIP approximation (astropy.wcs.utils.fit_wcs_from_points) before writing."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=AstropyWarning)
            header.extend(wcs.to_header(relax=WCSHDO_all | WCSHDO_P17 | WCSHDO_SIP))
        header["CRPIX1"] = header.get("CRPIX1", 0.0) - x0
        header["CRPIX2"] = header.get("CRPIX2", 0.0) - y0
    header["LTV1"] = (-x0, "-x0: physical x = image x - LTV1")
    header["LTV2"] = (-y0, "-y0: physical y = image y - LTV2")
    header["CRPIX1A"] = (1, "physical WCS: reference file pixel")
    header["CRPIX2A"] = (1, "physical WCS: reference file pixel")
    header["CRVAL1A"] = (x0, "parent x of file pixel 1 (x0)")
    header["CRVAL2A"] = (y0, "parent y of file pixel 1 (y0)")
    header["CTYPE1A"] = ("LINEAR", "physical (parent) pixel coordinate")
    header["CTYPE2A"] = ("LINEAR", "physical (parent) pixel coordinate")
    header["CUNIT1A"] = ("pixel", "physical (parent) pixel coordinate")
    header["CUNIT2A"] = ("pixel", "physical (parent) pixel coordinate")
    return header


def _has_celestial_wcs(header: fits.Header) -> bool:
    return "CTYPE1" in header and "CTYPE2" in header


def _parent_wcs(header: fits.Header, xy0: tuple[int, int]) -> WCS | None:
    """The WCS of parent pixel coordinates from a header whose WCS is in local (file) pixels.

    Structural keywords (so no ``pixel_shape``), mask-plane keywords, alternate WCSs and LTV/LTM are
    left out; every other card is given to wcslib, as astropy's own ``WCS(header)`` would.
    """
    if not _has_celestial_wcs(header):
        return None
    cards = fits.Header()
    for card in header.cards:
        key = card.keyword
        if (
            key in ("COMMENT", "HISTORY", "")
            or len(key) > 8  # HIERARCH cards are never WCS keywords
            or _STRUCTURAL.match(key)
            or key.startswith(_MASK_PLANE_KEY)
            or _ALTERNATE_WCS_KEY.match(key)
            or re.match(r"^(LTV\d|LTM\d_\d)$", key)
        ):
            continue
        cards[key] = card.value
    cards["CRPIX1"] = float(cards.get("CRPIX1", 0.0)) + xy0[0]
    cards["CRPIX2"] = float(cards.get("CRPIX2", 0.0)) + xy0[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=AstropyWarning)
        return WCS(cards, relax=True)


# -------------------------------------------------------------------------------------------------
# Exposures
# -------------------------------------------------------------------------------------------------


class ExposureFitsFormatter(Formatter):
    """An `Exposure` as a multi-extension FITS file in the LSST layout (see the module docstring).

    Components: ``image`` (float32 array), ``mask`` (`Mask`), ``variance`` (float32 array), ``wcs``,
    ``psf``, ``photoCalib``, ``visitInfo``, ``bbox`` (`Box2I`), ``detector``, ``filter``
    (`FilterLabel`), ``metadata`` (`astropy.io.fits.Header`) and ``coaddInputs``
    (`astropy.table.Table`); each reads only the headers and tables it needs.  A component the
    exposure lacks reads as None.

    Read parameters: ``bbox`` (`Box2I`, parent coordinates, inside the exposure): read only these
    pixels; the result keeps parent coordinates (its ``xy0`` is the box's) and the full WCS.  With
    the ``image``, ``mask``, ``variance`` and ``bbox`` components it selects the same sub-region.

    Notes
    -----
    ``metadata`` cards named like the layout's own primary keywords (``FILTER``, ``BAND``,
    ``BPFORMAT``...) or structural keywords (``SIMPLE``, ``NAXISn``, ``XTENSION``, ``BZERO``...) are not
    written; an empty `FilterLabel` reads back as None.
    """

    extension = ".fits"
    supported_components = frozenset(
        {
            "image",
            "mask",
            "variance",
            "wcs",
            "psf",
            "photoCalib",
            "visitInfo",
            "bbox",
            "detector",
            "filter",
            "metadata",
            "coaddInputs",
        }
    )
    supported_parameters = frozenset({"bbox"})

    # ------------------------------------------------------------------ writing
    def write(self, obj: Any, path: Path) -> None:
        """Write an exposure to ``path``.

        Raises
        ------
        FormatterError
            If ``obj`` is not an `Exposure`, or a component cannot be written (a WCS with lookup-table
            distortions, a PSF whose table is not FITS compatible...).
        """
        if not isinstance(obj, Exposure):
            raise FormatterError(
                f"ExposureFitsFormatter writes tasks.image.Exposure objects, got {type(obj).__name__}."
            )
        fits.HDUList(self.to_hdus(obj)).writeto(path, output_verify="exception")

    @staticmethod
    def to_hdus(exposure: Exposure) -> list[Any]:
        """The HDUs of an exposure's file, in order (primary first)."""
        x0, y0 = exposure.xy0
        wcs_cards = _wcs_header_cards(exposure.wcs, (x0, y0))

        def image_hdu(data: np.ndarray, extname: str, dtype: type, extra: fits.Header | None = None) -> fits.ImageHDU:
            header = fits.Header()
            header["EXTNAME"] = extname
            header["EXTTYPE"] = (extname, "LSST exposure plane")
            header.extend(wcs_cards)
            if extra is not None:
                header.extend(extra)
            # A read-only view: astropy would otherwise byteswap the exposure's own array in place
            # while writing (visible to other threads, and left swapped if the process dies).
            view = np.ascontiguousarray(data, dtype=dtype).view()
            view.flags.writeable = False
            return fits.ImageHDU(view, header=header)

        planes = fits.Header()
        for name, bit in sorted(exposure.mask.planes.items(), key=lambda item: item[1]):
            key = _MASK_PLANE_KEY + name
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
                raise FormatterError(
                    f"mask plane name {name!r} cannot be a FITS keyword; use letters, digits, '_' and '-' only."
                )
            if len(key) <= 8 and key.upper() == key:
                planes.append(fits.Card(key, bit, "mask plane bit"))
            else:
                planes.append(fits.Card(f"HIERARCH {key}", bit))
        hdus: list[Any] = [
            image_hdu(exposure.image, _IMAGE, np.float32),
            image_hdu(exposure.mask.array, _MASK, np.int32, planes),
            image_hdu(exposure.variance, _VARIANCE, np.float32),
        ]
        if exposure.psf is not None:
            hdus.append(_table_to_hdu(exposure.psf.to_table(), _PSF, "PSF"))
        if exposure.photo_calib is not None:
            hdus.append(_dict_to_hdu(exposure.photo_calib.to_dict(), _PHOTOCALIB))
        if exposure.visit_info is not None:
            hdus.append(_dict_to_hdu(exposure.visit_info.to_dict(), _VISITINFO))
        if exposure.detector is not None:
            hdus.append(_dict_to_hdu(exposure.detector.to_dict(), _DETECTOR))
        coadd_inputs = getattr(exposure, "coadd_inputs", None)
        if coadd_inputs is not None:
            if not isinstance(coadd_inputs, Table):
                raise FormatterError(
                    f"an exposure's coadd_inputs must be an astropy Table, got {type(coadd_inputs).__name__}."
                )
            hdus.append(_table_to_hdu(coadd_inputs, _COADDINPUTS, "coadd inputs"))

        primary = fits.PrimaryHDU()
        header = primary.header
        header["EXTNAME"] = "PRIMARY"
        header[FORMAT_KEY] = ("ExposureF", "layout of tasks.image.fits")
        header[VERSION_KEY] = (FORMAT_VERSION, "version of the BPFORMAT layout")
        header[HDUS_KEY] = ",".join(h.name for h in hdus)
        label = exposure.filter
        if label is not None:
            if label.physical_filter is not None:
                header["FILTER"] = (label.physical_filter, "physical filter")
            if label.band is not None:
                header["BAND"] = (label.band, "abstract band")
        metadata = exposure.metadata if exposure.metadata is not None else fits.Header()
        metadata = metadata.copy() if isinstance(metadata, fits.Header) else fits.Header(list(dict(metadata).items()))
        for key in {key for key in metadata.keys() if key in _RESERVED_PRIMARY or _STRUCTURAL.match(key)}:
            log.debug("not writing metadata card %s: the FITS layout owns that keyword", key)
            metadata.remove(key, remove_all=True)
        header.extend(metadata, strip=False, end=True)
        return [primary, *hdus]

    # ------------------------------------------------------------------ reading
    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read the exposure, one component, or the sub-exposure of ``parameters={"bbox": box}``.

        Raises
        ------
        FormatterError
            If the component or parameter is unsupported, or ``bbox`` is not a `Box2I` inside the
            exposure.
        FitsFormatError
            If the file is truncated, damaged, or not an exposure in a known layout.
        """
        self.check_read_arguments(component, parameters)
        bbox = (parameters or {}).get("bbox")
        if bbox is not None and not isinstance(bbox, Box2I):
            raise FormatterError(f"the 'bbox' read parameter must be a tasks.image.Box2I, got {type(bbox).__name__}.")
        with _open(Path(path), "an exposure") as file:
            reader = _ExposureReader(file)
            if component is None:
                return reader.exposure(bbox)
            return reader.component(component, bbox)


class _ExposureReader:
    """Reads an exposure, or parts of it, from a file in this package's or afw's layout."""

    def __init__(self, file: _FitsFile):
        self.file = file
        self.path = file.path
        primary = file.primary
        kind = primary.get(FORMAT_KEY)
        if kind is not None and kind != "ExposureF":
            raise FitsFormatError(
                f"{self.path} holds a {kind}, not an exposure; read it with the formatter of its storage class."
            )
        self.ours = kind == "ExposureF"
        if self.ours:
            version = int(primary.get(VERSION_KEY, 0))
            if version > FORMAT_VERSION:
                raise FitsFormatError(
                    f"{self.path} uses exposure layout version {version}; this code reads versions <= "
                    f"{FORMAT_VERSION}. Update the software."
                )
            self.hdu_names = [n for n in str(primary.get(HDUS_KEY, "")).split(",") if n]
        self._hdus: dict[str, Any] = {}
        self._bbox: Box2I | None = None

    # -- locating HDUs
    def _plane(self, name: str, *, required: bool = True) -> Any | None:
        """The IMAGE, MASK or VARIANCE HDU."""
        if name in self._hdus:
            return self._hdus[name]
        hdu = self._named(name) if self.ours else self._afw_plane(name)
        if hdu is None and required:
            raise FitsFormatError(
                f"{self.path} has no {name} HDU; it is not an exposure file (expected IMAGE, MASK and VARIANCE "
                "image HDUs, as this package and the LSST stack write)."
            )
        self._hdus[name] = hdu
        return hdu

    def _named(self, name: str) -> Any | None:
        """An HDU of our layout by EXTNAME; None when the file's HDU list says it was not written."""
        if name not in self.hdu_names:
            return None
        index = self.hdu_names.index(name) + 1
        hdu = self.file.hdu(index) if self._count_at_least(index) else None
        if hdu is None or hdu.name != name:
            raise FitsFormatError(
                f"{self.path} is truncated or damaged: its primary header lists HDU {name!r} as extension "
                f"{index} but {'the file ends before it' if hdu is None else 'that HDU is ' + repr(hdu.name)}. "
                "Write the file again."
            )
        return hdu

    def _count_at_least(self, index: int) -> bool:
        with self.file._guard(f"reading the header of HDU {index}"):
            try:
                self.file.hdul[index]
            except IndexError:
                return False
        return True

    def _afw_plane(self, name: str) -> Any | None:
        """An afw plane: by EXTNAME or EXTTYPE, else HDU 1/2/3 when unnamed image HDUs are there."""
        position = {_IMAGE: 1, _MASK: 2, _VARIANCE: 3}[name]
        for index in range(1, 4):
            if not self._count_at_least(index):
                break
            hdu = self.file.hdu(index)
            label = str(hdu.header.get("EXTNAME", hdu.header.get("EXTTYPE", ""))).strip().upper()
            is_image = hdu.is_image and hdu.header.get("NAXIS", 0) == 2
            if label == name and is_image:
                return hdu
            if not label and index == position and is_image:
                return hdu
        return None

    # -- headers
    def _image_header(self) -> fits.Header:
        return self._plane(_IMAGE).header

    def _afw_key(self, key: str, default: Any = None) -> Any:
        """A keyword of an afw file: the primary header first, then the IMAGE header."""
        if key in self.file.primary:
            return self.file.primary[key]
        return self._image_header().get(key, default)

    def bbox(self) -> Box2I:
        """The exposure's parent-coordinate box (from the IMAGE header: NAXISn and LTV)."""
        if self._bbox is None:
            header = self._image_header()
            if header.get("NAXIS", 0) != 2:
                raise FitsFormatError(f"{self.path}: the IMAGE HDU is not a 2-D image (NAXIS = {header.get('NAXIS')}).")
            ltv1, ltv2 = header.get("LTV1"), header.get("LTV2")
            if ltv1 is None and str(header.get("CTYPE1A", "")).strip() == "LINEAR":
                x0, y0 = header.get("CRVAL1A", 0), header.get("CRVAL2A", 0)  # old afw physical WCS
            else:
                x0, y0 = -(ltv1 or 0), -(ltv2 or 0)
            if float(x0) != int(x0) or float(y0) != int(y0):
                raise FitsFormatError(f"{self.path}: LTV1/LTV2 ({ltv1}, {ltv2}) are not whole pixels.")
            self._bbox = Box2I(int(x0), int(y0), int(header["NAXIS1"]), int(header["NAXIS2"]))
        return self._bbox

    def _check_sub_box(self, bbox: Box2I | None) -> Box2I:
        full = self.bbox()
        if bbox is None:
            return full
        if bbox.is_empty or not full.contains(bbox):
            raise FormatterError(
                f"the 'bbox' read parameter {bbox} is {'empty' if bbox.is_empty else 'not inside'} the exposure "
                f"{full} in {self.path}; intersect it with the exposure's bbox first (butler.get(...'.bbox'))."
            )
        return bbox

    # -- pixels
    def _pixels(self, name: str, bbox: Box2I | None, dtype: type) -> np.ndarray:
        full = self.bbox()
        box = self._check_sub_box(bbox)
        hdu = self._plane(name)
        if hdu.header.get("NAXIS1") != full.width or hdu.header.get("NAXIS2") != full.height:
            raise FitsFormatError(
                f"{self.path}: the {name} HDU has shape ({hdu.header.get('NAXIS2')}, {hdu.header.get('NAXIS1')}), "
                f"the IMAGE HDU {full.shape}; the planes of an exposure must have one shape."
            )
        data = self.file.data(hdu, None if box == full else box.slices(full))
        return _native(data, dtype)

    def image(self, bbox: Box2I | None = None) -> np.ndarray:
        return self._pixels(_IMAGE, bbox, np.float32)

    def variance(self, bbox: Box2I | None = None) -> np.ndarray:
        if self._plane(_VARIANCE, required=self.ours) is None:
            log.debug("%s has no VARIANCE HDU; the variance is zero", self.path)
            return np.zeros(self._check_sub_box(bbox).shape, dtype=np.float32)
        return self._pixels(_VARIANCE, bbox, np.float32)

    def _file_planes(self, header: fits.Header) -> dict[str, int]:
        planes: dict[str, int] = {}
        for card in header.cards:
            if card.keyword.startswith(_MASK_PLANE_KEY) and isinstance(card.value, (int, np.integer)):
                planes[card.keyword[len(_MASK_PLANE_KEY) :]] = int(card.value)
        return planes

    def mask(self, bbox: Box2I | None = None) -> Mask:
        box = self._check_sub_box(bbox)
        hdu = self._plane(_MASK, required=self.ours)
        if hdu is None:
            log.debug("%s has no MASK HDU; the mask is empty", self.path)
            return Mask(box.shape, xy0=box.xy0)
        raw = self._pixels(_MASK, bbox, np.int64 if not self.ours else np.int32)
        planes = self._file_planes(hdu.header) or (self._file_planes(self.file.primary) if not self.ours else {})
        if self.ours:
            try:
                return Mask(raw, planes, xy0=box.xy0)
            except ValueError as err:
                raise FitsFormatError(f"{self.path}: the MASK HDU's MP_* keywords are inconsistent: {err}") from None
        # afw layout: map the file's planes onto ours by name; unknown planes become new planes.
        mask = Mask(box.shape, xy0=box.xy0)
        mapping = {}
        for name, bit in sorted(planes.items(), key=lambda item: item[1]):
            mapping[bit] = mask.add_plane(name)
        if all(src == dst for src, dst in mapping.items()):
            mask.array[...] = raw.astype(np.int32)
        else:
            out = np.zeros(raw.shape, dtype=np.int64)
            for src, dst in mapping.items():
                out |= ((raw >> src) & 1) << dst
            mask.array[...] = out.astype(np.int32)
        return mask

    # -- other components
    def wcs(self) -> WCS | None:
        header = self._image_header()
        if not self.ours and not _has_celestial_wcs(header):
            header = self.file.primary
        with self.file._guard("interpreting the WCS"):
            return _parent_wcs(header, self.bbox().xy0)

    def _table_hdu(self, name: str) -> Any | None:
        if not self.ours:
            return None
        hdu = self._named(name)
        if hdu is not None:
            self.file.check_data(hdu)
        return hdu

    def psf(self) -> Any:
        if not self.ours:
            self._note_afw_archive("PSF")
            return None
        hdu = self._table_hdu(_PSF)
        if hdu is None:
            return None
        from .psf import Psf

        with self.file._guard("reading the PSF table"):
            table = _hdu_to_table(hdu)
        try:
            return Psf.from_table(table)
        except (ValueError, KeyError) as err:
            raise FitsFormatError(f"{self.path}: cannot rebuild the PSF from its table: {err}") from None

    def photo_calib(self) -> PhotoCalib | None:
        if self.ours:
            hdu = self._table_hdu(_PHOTOCALIB)
            return None if hdu is None else PhotoCalib.from_dict(self._dict(hdu))
        fluxmag0 = self._afw_key("FLUXMAG0")
        if fluxmag0 is None:
            self._note_afw_archive("photometric calibration")
            return None
        fluxmag0 = float(fluxmag0)
        if not (math.isfinite(fluxmag0) and fluxmag0 > 0):
            log.debug("%s: FLUXMAG0 = %s is not a calibration; photoCalib is None", self.path, fluxmag0)
            return None
        mean = 10.0 ** (AB_ZERO_POINT_NJY / 2.5) / fluxmag0
        err = float(self._afw_key("FLUXMAG0ERR", 0.0) or 0.0)
        return PhotoCalib(mean, mean * err / fluxmag0 if math.isfinite(err) and err > 0 else 0.0)

    def visit_info(self) -> VisitInfo | None:
        if self.ours:
            hdu = self._table_hdu(_VISITINFO)
            return None if hdu is None else VisitInfo.from_dict(self._dict(hdu))
        return self._afw_visit_info()

    def detector(self) -> Detector | None:
        if self.ours:
            hdu = self._table_hdu(_DETECTOR)
            return None if hdu is None else Detector.from_dict(self._dict(hdu))
        self._note_afw_archive("detector")
        return None

    def coadd_inputs(self) -> Table | None:
        if not self.ours:
            self._note_afw_archive("coadd inputs")
            return None
        hdu = self._table_hdu(_COADDINPUTS)
        if hdu is None:
            return None
        with self.file._guard("reading the COADDINPUTS table"):
            return _hdu_to_table(hdu)

    def filter(self) -> FilterLabel | None:
        primary = self.file.primary
        if self.ours:
            physical, band = primary.get("FILTER"), primary.get("BAND")
            if physical is None and band is None:
                return None
            return FilterLabel(band=band, physical_filter=physical)
        value = self._afw_key("FILTER")
        band = self._afw_key("BAND")
        if value is None and band is None:
            return None
        value = None if value is None else str(value).strip()
        if band is None and value in _BANDS:
            band = value
        return FilterLabel(band=None if band is None else str(band).strip(), physical_filter=value)

    def metadata(self) -> fits.Header:
        header = self.file.primary.copy()
        if self.ours:
            drop = {key for key in header.keys() if key in _RESERVED_PRIMARY or _STRUCTURAL.match(key)}
        else:
            drop = {
                key
                for key in header.keys()
                if _STRUCTURAL.match(key)
                or _WCS_KEY.match(key)
                or key.startswith(_MASK_PLANE_KEY)
                or key in ("FILTER", "BAND")
                or key in _AFW_VISIT_KEYS
                or key in _AFW_CALIB_KEYS
                or _AFW_ARCHIVE_KEYS.match(key)
            }
        for key in drop:
            header.remove(key, remove_all=True)
        return header

    def _dict(self, hdu: Any) -> dict[str, Any]:
        with self.file._guard(f"reading the {hdu.name} table"):
            data = _hdu_to_dict(hdu, self.path)
        return data

    def _note_afw_archive(self, what: str) -> None:
        log.debug(
            "%s: the %s of an LSST afw exposure lives in its archive tables, which cannot be interpreted; "
            "it reads as None",
            self.path,
            what,
        )

    def _afw_visit_info(self) -> VisitInfo | None:
        def number(key: str) -> float | None:
            value = self._afw_key(key)
            if value is None or isinstance(value, str):
                return None
            value = float(value)
            return value if math.isfinite(value) else None

        date = None
        text = self._afw_key("DATE-AVG")
        if isinstance(text, str) and text.strip():
            scale = str(self._afw_key("TIMESYS", "TAI")).strip().lower()
            try:
                date = Time(text.strip(), scale=scale if scale in Time.SCALES else "tai")
            except ValueError:
                log.debug("%s: cannot parse DATE-AVG = %r", self.path, text)
        null_date = False
        text = self._afw_key("TIME-MID")
        if date is None and isinstance(text, str) and text.strip():
            try:
                mid = Time(text.strip().rstrip("Z"), scale="utc")
                if abs((mid.tai - _AFW_NULL_TIME).sec) < 1e-3:
                    null_date = True  # the afw "unset" date
                else:
                    date = mid
            except ValueError:
                log.debug("%s: cannot parse TIME-MID = %r", self.path, text)
        exposure_time = number("EXPTIME")
        ra, dec = number("BORE-RA"), number("BORE-DEC")
        lon, lat, elev = number("OBS-LONG"), number("OBS-LAT"), number("OBS-ELEV")
        ident = self._afw_key("IDNUM")
        instrument = self._afw_key("INSTRUMENT")
        values = dict(
            date=date,
            exposure_time=exposure_time,
            airmass=number("BORE-AIRMASS"),
            boresight_ra_dec=None if ra is None or dec is None else (ra, dec),
            boresight_rot_angle=number("BORE-ROTANG"),
            id=int(ident) if isinstance(ident, (int, np.integer)) else None,
            instrument=str(instrument).strip() if isinstance(instrument, str) else None,
            observatory=None if lon is None or lat is None or elev is None else (lon, lat, elev),
        )
        if null_date and exposure_time == 0.0:
            values["exposure_time"] = None  # old afw Calib defaults: nothing was recorded
        if all(v is None for v in values.values()):
            return None
        return VisitInfo(**values)

    # -- assembly
    def component(self, name: str, bbox: Box2I | None) -> Any:
        if name == "bbox":
            return self._check_sub_box(bbox)
        if name == "image":
            return self.image(bbox)
        if name == "mask":
            return self.mask(bbox)
        if name == "variance":
            return self.variance(bbox)
        reader = {
            "wcs": self.wcs,
            "psf": self.psf,
            "photoCalib": self.photo_calib,
            "visitInfo": self.visit_info,
            "detector": self.detector,
            "filter": self.filter,
            "metadata": self.metadata,
            "coaddInputs": self.coadd_inputs,
        }[name]
        return reader()

    def exposure(self, bbox: Box2I | None) -> Exposure:
        box = self._check_sub_box(bbox)
        masked = MaskedImage(self.image(box), self.mask(box), self.variance(box), xy0=box.xy0)
        if not self.ours:
            self._log_unread_afw_hdus()
        return Exposure(
            masked,
            wcs=self.wcs(),
            psf=self.psf(),
            photo_calib=self.photo_calib(),
            visit_info=self.visit_info(),
            detector=self.detector(),
            filter=self.filter(),
            metadata=self.metadata(),
            coadd_inputs=self.coadd_inputs(),
        )

    def _log_unread_afw_hdus(self) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        used = {id(h) for h in self._hdus.values() if h is not None}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=AstropyWarning)
                self.file.hdul.readall()
        except (OSError, ValueError, EOFError) as err:
            log.debug("%s: cannot list the HDUs after the variance: %s", self.path, err)
        for index, hdu in enumerate(self.file.hdul):
            if index and id(hdu) not in used:
                log.debug(
                    "%s: skipping HDU %d (%s): afw archive tables are not interpreted",
                    self.path,
                    index,
                    hdu.header.get("EXTNAME", hdu.header.get("EXTTYPE", "unnamed")),
                )


# -------------------------------------------------------------------------------------------------
# Backgrounds and kernels
# -------------------------------------------------------------------------------------------------


def _primary(kind: str, **keys: Any) -> fits.PrimaryHDU:
    primary = fits.PrimaryHDU()
    primary.header["EXTNAME"] = "PRIMARY"
    primary.header[FORMAT_KEY] = (kind, "written by tasks.image.fits")
    primary.header[VERSION_KEY] = (FORMAT_VERSION, "version of the BPFORMAT layout")
    for key, value in keys.items():
        primary.header[key] = value
    return primary


def _check_kind(file: _FitsFile, kind: str) -> None:
    found = file.primary.get(FORMAT_KEY)
    if found != kind:
        raise FitsFormatError(
            f"{file.path} does not hold a {kind} written by tasks.image.fits (its {FORMAT_KEY} keyword is "
            f"{found!r}); read it with the formatter of its own storage class."
        )
    version = int(file.primary.get(VERSION_KEY, 0))
    if version > FORMAT_VERSION:
        raise FitsFormatError(
            f"{file.path} uses {kind} layout version {version}; this code reads versions <= {FORMAT_VERSION}. "
            "Update the software."
        )


class _TablesFitsFormatter(Formatter):
    """Base of the formatters that write an object as an empty primary HDU (``BPFORMAT`` = ``kind``)
    followed by binary tables of its ``to_table()``; `read` checks the kind and hands the file to `_read`."""

    extension = ".fits"
    kind: ClassVar[str]
    what: ClassVar[str]  # "a kernel": names the object in error messages

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read the object.

        Raises
        ------
        FitsFormatError
            If the file is truncated, damaged, or holds something else.
        """
        self.check_read_arguments(component, parameters)
        with _open(Path(path), self.what) as file:
            _check_kind(file, self.kind)
            return self._read(file)

    @abstractmethod
    def _read(self, file: _FitsFile) -> Any:
        """Rebuild the object from the file's tables (`_read_table` checks and reads one)."""

    @staticmethod
    def _read_table(file: _FitsFile, hdu: Any, doing: str) -> Table:
        file.check_data(hdu)
        with file._guard(doing):
            return _hdu_to_table(hdu)


class BackgroundFitsFormatter(_TablesFitsFormatter):
    """A `BackgroundList` as FITS: an empty primary HDU (``BPNTABLE`` = number of backgrounds) and one
    binary table per `Background` (``Background.to_table()``, EXTNAME ``BACKGROUND``, EXTVER 1, 2, ...)."""

    kind = "BackgroundList"
    what = "a background list"

    def write(self, obj: Any, path: Path) -> None:
        """Write a background list.

        Raises
        ------
        FormatterError
            If ``obj`` is not a `BackgroundList` (wrap a single `Background` in one).
        """
        from .background import Background, BackgroundList

        if not isinstance(obj, BackgroundList):
            hint = " Wrap it: BackgroundList([background])." if isinstance(obj, Background) else ""
            raise FormatterError(
                f"BackgroundFitsFormatter writes BackgroundList objects, got {type(obj).__name__}.{hint}"
            )
        hdus: list[Any] = [_primary(self.kind, **{COUNT_KEY: (len(obj), "number of background tables")})]
        for i, background in enumerate(obj, start=1):
            hdus.append(_table_to_hdu(background.to_table(), "BACKGROUND", "background", extver=i))
        fits.HDUList(hdus).writeto(path, output_verify="exception")

    def _read(self, file: _FitsFile) -> Any:
        from .background import Background, BackgroundList

        count = int(file.primary.get(COUNT_KEY, 0))
        backgrounds = []
        for index in range(1, count + 1):
            hdu = file.hdu(index)
            if hdu.name != "BACKGROUND":
                raise FitsFormatError(f"{file.path}: HDU {index} is {hdu.name!r}, expected a BACKGROUND table.")
            table = self._read_table(file, hdu, f"reading background table {index}")
            backgrounds.append(Background.from_table(table))
        return BackgroundList(backgrounds)


class KernelFitsFormatter(_TablesFitsFormatter):
    """A convolution `Kernel` as FITS: an empty primary HDU and a ``KERNEL`` binary table
    (``Kernel.to_table()``)."""

    kind = "Kernel"
    what = "a kernel"

    def write(self, obj: Any, path: Path) -> None:
        """Write a kernel.

        Raises
        ------
        FormatterError
            If ``obj`` is not a `Kernel`.
        """
        from .kernel import Kernel

        if not isinstance(obj, Kernel):
            raise FormatterError(f"KernelFitsFormatter writes tasks.image.Kernel objects, got {type(obj).__name__}.")
        hdus = [_primary(self.kind), _table_to_hdu(obj.to_table(), "KERNEL", "kernel")]
        fits.HDUList(hdus).writeto(path, output_verify="exception")

    def _read(self, file: _FitsFile) -> Any:
        from .kernel import Kernel

        hdu = file.find("KERNEL")
        if hdu is None:
            raise FitsFormatError(f"{file.path} has no KERNEL table; the file is truncated or damaged.")
        return Kernel.from_table(self._read_table(file, hdu, "reading the kernel table"))
