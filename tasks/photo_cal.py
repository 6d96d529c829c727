"""Photometric calibration: the zero point of an exposure from matched reference stars.

Each usable match gives a calibration ``r_i = refFlux_i [nJy] / instFlux_i [counts]``; `fit_zero_point`
returns their weighted mean (weights from the reference and measurement errors plus a fractional error
floor), iteratively clipped about the current mean, and its uncertainty (inflated by the reduced chi^2
when the scatter exceeds the errors).  `PhotoCalTask` selects the matches (unflagged, unblended, S/N and
magnitude limits) and turns the fit into a `PhotoCalib`.

A PSF flux misses the light in the PSF model's wings beyond its kernel, so by default the instrumental
fluxes are first multiplied by an aperture correction: the same weighted, clipped mean of
``apFlux_12_0 / psfFlux`` over the selected stars (one number per exposure; LSST measures it per
position in ``MeasureApCorrTask``).  The `PhotoCalib` then converts *total* counts to nJy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from graph import AlgorithmError, Config, Field, Struct, Task, timeMethod

from .image import PhotoCalib

__all__ = ["PhotoCalConfig", "PhotoCalTask", "ZeroPointFit", "fit_zero_point"]

_MAG_PER_LN = 2.5 / math.log(10.0)


@dataclass
class ZeroPointFit:
    """The result of `fit_zero_point`.

    Attributes
    ----------
    calibration_mean : `float`
        Weighted mean of ``refFlux / instFlux`` over the kept stars [nJy per count].
    calibration_err : `float`
        Its 1-sigma uncertainty [nJy per count].
    used : `numpy.ndarray` of bool
        Stars kept by the clipping.
    rms : `float`
        RMS of ``-2.5 log10(r_i / calibration_mean)`` over the kept stars [mag].
    """

    calibration_mean: float
    calibration_err: float
    used: np.ndarray
    rms: float


def fit_zero_point(
    ref_flux: np.ndarray,
    ref_flux_err: np.ndarray,
    inst_flux: np.ndarray,
    inst_flux_err: np.ndarray,
    *,
    n_sigma: float = 3.0,
    n_iter: int = 5,
    error_floor: float = 0.01,
    min_stars: int = 3,
) -> ZeroPointFit:
    """Sigma-clipped weighted mean of ``ref_flux / inst_flux``.

    Parameters
    ----------
    ref_flux, ref_flux_err : `numpy.ndarray`, shape (n,)
        Reference fluxes and errors [nJy].
    inst_flux, inst_flux_err : `numpy.ndarray`, shape (n,)
        Measured fluxes and errors [counts]; rows with non-positive or non-finite values are ignored.
    n_sigma : `float`, optional
        A star is rejected when its ratio differs from the mean by more than ``n_sigma`` times the
        larger of its own error and the robust scatter of the kept ratios (1.4826 MAD).
    n_iter : `int`, optional
        Largest number of clipping rounds.
    error_floor : `float`, optional
        Fractional error added in quadrature to every ratio (unmodelled scatter, e.g. colour terms).
    min_stars : `int`, optional
        Fewest usable stars.

    Returns
    -------
    fit : `ZeroPointFit`

    Raises
    ------
    AlgorithmError
        If fewer than ``min_stars`` stars are usable.
    """
    ref_flux = np.asarray(ref_flux, dtype=np.float64)
    inst_flux = np.asarray(inst_flux, dtype=np.float64)
    ref_flux_err = np.nan_to_num(np.asarray(ref_flux_err, dtype=np.float64), nan=0.0)
    inst_flux_err = np.nan_to_num(np.asarray(inst_flux_err, dtype=np.float64), nan=0.0)
    ok = np.isfinite(ref_flux) & np.isfinite(inst_flux) & (ref_flux > 0) & (inst_flux > 0)
    if ok.sum() < min_stars:
        raise AlgorithmError(f"the zero-point fit needs at least {min_stars} usable stars, got {int(ok.sum())}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok, ref_flux / inst_flux, np.nan)
        frac_err = np.sqrt((ref_flux_err / ref_flux) ** 2 + (inst_flux_err / inst_flux) ** 2 + error_floor**2)
    sigma = ratio * frac_err
    used = ok.copy()
    mean = float(np.median(ratio[used]))
    for _ in range(max(1, n_iter)):
        weights = 1.0 / sigma[used] ** 2
        mean = float(np.sum(weights * ratio[used]) / np.sum(weights))
        scatter = 1.4826 * float(np.median(np.abs(ratio[used] - np.median(ratio[used]))))
        new = ok & (np.abs(ratio - mean) <= n_sigma * np.maximum(sigma, scatter))
        if new.sum() < min_stars or np.array_equal(new, used):
            break
        used = new
    weights = 1.0 / sigma[used] ** 2
    mean = float(np.sum(weights * ratio[used]) / np.sum(weights))
    err = float(1.0 / math.sqrt(np.sum(weights)))
    n = int(used.sum())
    if n > 1:
        chi2 = float(np.sum(weights * (ratio[used] - mean) ** 2)) / (n - 1)
        err *= math.sqrt(max(chi2, 1.0))
    rms = float(np.sqrt(np.mean((_MAG_PER_LN * np.log(ratio[used] / mean)) ** 2)))
    return ZeroPointFit(calibration_mean=mean, calibration_err=err, used=used, rms=rms)


class PhotoCalConfig(Config):
    """Configuration of `PhotoCalTask`."""

    fluxField: str = Field("psfFlux", description="Instrumental flux column [counts] (its error: <fluxField>Err).")
    apCorrField: str | None = Field(
        "apFlux_12_0",
        description="Aperture flux column [counts] that fluxField is scaled to (the mean ratio over the selected "
        "stars); None or a column the sources lack: no aperture correction.",
    )
    apCorrMinSnr: float = Field(
        50.0, ge=0, description="Fewest fluxField S/N of the stars measuring the aperture correction."
    )
    magMin: float = Field(14.0, description="Brightest reference magnitude used [AB mag].")
    magMax: float = Field(21.0, description="Faintest reference magnitude used [AB mag].")
    minSnr: float = Field(10.0, ge=0, description="Fewest instFlux / instFluxErr of a star used.")
    badFlags: list[str] = Field(
        default_factory=lambda: ["flag_saturated", "flag_edge", "flag_interpolated", "flag_cr", "flag_bad",
                                 "psfFlux_flag", "centroid_flag"],
        description="Matches whose source has any of these (boolean) columns true are not used.",
    )
    requireUnblended: bool = Field(
        True, description="Reject deblended children (parent != 0) and parents (deblend_nChild > 0)."
    )
    isolationRadius: float = Field(
        4.0, ge=0,
        description="Reject stars with another reference star or detected source this close [arcsec]; 0: off.",
    )
    nSigmaClip: float = Field(3.0, gt=0, description="Clipping threshold of the ratios [sigma].")
    nIter: int = Field(5, ge=1, description="Largest number of clipping rounds.")
    errorFloor: float = Field(
        0.01, ge=0, description="Fractional error added in quadrature to each star's calibration."
    )
    minMatches: int = Field(5, ge=1, description="Fewest usable matches; fewer raise AlgorithmError.")


def _bool_column(table: Table, name: str) -> np.ndarray:
    if name not in table.colnames:
        return np.zeros(len(table), dtype=bool)
    column = table[name]
    return np.asarray(column.filled(True) if hasattr(column, "filled") else column, dtype=bool)


def _float_column(table: Table, name: str) -> np.ndarray:
    column = table[name]
    return np.asarray(column.filled(np.nan) if hasattr(column, "filled") else column, dtype=np.float64)


class PhotoCalTask(Task):
    """Fit the zero point of an exposure from source-reference matches (see the module docstring).

    Metadata: ``numMatches`` (matches given), ``numUsed`` (stars in the final mean), ``apCorr`` (the
    factor applied to ``fluxField``, 1 without), ``apCorrErr``, ``zeroPoint`` (AB magnitude of 1 count),
    ``zeroPointErr``, ``photoRms`` [mag].
    """

    ConfigClass = PhotoCalConfig
    _DefaultName = "photoCal"

    def select(self, sources: Table, matches: Table, *, isolated: np.ndarray | None = None) -> np.ndarray:
        """Which matches are usable for the zero point.

        Parameters
        ----------
        sources : `astropy.table.Table`
            The source catalogue (flag and flux columns).
        matches : `astropy.table.Table`
            One row per match with ``src_index`` (row in ``sources``), ``ref_mag`` [AB mag].
        isolated : `numpy.ndarray` of bool, optional
            Per match: no neighbour within ``isolationRadius`` (computed by the caller).

        Returns
        -------
        usable : `numpy.ndarray` of bool, shape (len(matches),)
        """
        config = self.config
        rows = np.asarray(matches["src_index"], dtype=np.int64)
        flux = _float_column(sources, config.fluxField)[rows]
        err = _float_column(sources, config.fluxField + "Err")[rows]
        mag = np.asarray(matches["ref_mag"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = np.isfinite(flux) & (flux > 0) & (np.nan_to_num(flux / err, nan=np.inf) >= config.minSnr)
        ok &= (mag >= config.magMin) & (mag <= config.magMax)
        for name in config.badFlags:
            ok &= ~_bool_column(sources, name)[rows]
        if config.requireUnblended:
            if "parent" in sources.colnames:
                ok &= np.asarray(sources["parent"])[rows] == 0
            if "deblend_nChild" in sources.colnames:
                ok &= np.asarray(sources["deblend_nChild"])[rows] == 0
        if isolated is not None:
            ok &= isolated
        return ok

    @timeMethod
    def run(self, sources: Table, matches: Table, *, isolated: np.ndarray | None = None) -> Struct:
        """Fit the zero point.

        Parameters
        ----------
        sources : `astropy.table.Table`
            Source catalogue with ``<fluxField>``, ``<fluxField>Err`` [counts] and flag columns.
        matches : `astropy.table.Table`
            ``src_index``, ``ref_mag`` [AB mag], ``ref_flux``, ``ref_fluxErr`` [nJy], one row per match.
        isolated : `numpy.ndarray` of bool, optional
            Per match: whether the star is isolated (see ``isolationRadius``).

        Returns
        -------
        result : `Struct`
            ``photoCalib`` (`PhotoCalib` [nJy per count]), ``zeroPoint``, ``zeroPointErr``, ``photoRms``
            [mag], ``used`` (bool per match: in the final mean), ``selected`` (bool per match: passed the
            selection).

        Raises
        ------
        AlgorithmError
            If fewer than ``minMatches`` matches are usable.
        """
        config = self.config
        selected = self.select(sources, matches, isolated=isolated)
        self.metadata["numMatches"] = len(matches)
        n_selected = int(selected.sum())
        if n_selected < config.minMatches:
            raise AlgorithmError(
                f"only {n_selected} of {len(matches)} reference matches are usable for the photometric zero point "
                f"(need {config.minMatches}: unflagged, S/N >= {config.minSnr}, {config.magMin} <= mag <= "
                f"{config.magMax}, isolated); check the reference catalogue's band and the match radius."
            )
        rows = np.asarray(matches["src_index"], dtype=np.int64)[selected]
        inst_flux = _float_column(sources, config.fluxField)[rows]
        inst_flux_err = _float_column(sources, config.fluxField + "Err")[rows]
        ap_corr, ap_corr_err = self.aperture_correction(sources, rows)
        fit = fit_zero_point(
            np.asarray(matches["ref_flux"], dtype=np.float64)[selected],
            np.asarray(matches["ref_fluxErr"], dtype=np.float64)[selected],
            inst_flux * ap_corr,
            inst_flux_err * ap_corr,
            n_sigma=config.nSigmaClip, n_iter=config.nIter, error_floor=config.errorFloor,
            min_stars=config.minMatches,
        )
        # The aperture correction's error is common to every star: add it to the mean's.
        rel_err = math.hypot(fit.calibration_err / fit.calibration_mean, ap_corr_err / ap_corr)
        photo_calib = PhotoCalib(fit.calibration_mean, fit.calibration_mean * rel_err)
        zero_point = photo_calib.instrumental_zero_point
        zero_point_err = _MAG_PER_LN * rel_err
        used = np.zeros(len(matches), dtype=bool)
        used[np.flatnonzero(selected)[fit.used]] = True
        self.metadata["numUsed"] = int(used.sum())
        self.metadata["apCorr"] = ap_corr
        self.metadata["apCorrErr"] = ap_corr_err
        self.metadata["zeroPoint"] = zero_point
        self.metadata["zeroPointErr"] = zero_point_err
        self.metadata["photoRms"] = fit.rms
        self.log.info(
            "photometric zero point %.4f +- %.4f mag (1 count) from %d of %d matches; RMS %.3f mag",
            zero_point, zero_point_err, int(used.sum()), len(matches), fit.rms,
        )
        return Struct(photoCalib=photo_calib, zeroPoint=zero_point, zeroPointErr=zero_point_err, photoRms=fit.rms,
                      used=used, selected=selected, apCorr=ap_corr, apCorrErr=ap_corr_err)

    def aperture_correction(self, sources: Table, rows: np.ndarray) -> tuple[float, float]:
        """The factor taking ``fluxField`` to ``apCorrField`` and its error, from the given source rows.

        Uses the rows with ``fluxField`` S/N >= ``apCorrMinSnr`` (at least 3; else all the rows); returns
        (1, 0) when ``apCorrField`` is None or not a column of ``sources``.
        """
        config = self.config
        if not config.apCorrField or config.apCorrField not in sources.colnames:
            if config.apCorrField:
                self.log.warning("no aperture correction: the sources have no %r column", config.apCorrField)
            return 1.0, 0.0
        flux = _float_column(sources, config.fluxField)[rows]
        err = _float_column(sources, config.fluxField + "Err")[rows]
        ap = _float_column(sources, config.apCorrField)[rows]
        ap_err_name = config.apCorrField + "Err"
        ap_err = _float_column(sources, ap_err_name)[rows] if ap_err_name in sources.colnames else np.zeros(len(rows))
        with np.errstate(divide="ignore", invalid="ignore"):
            bright = np.nan_to_num(flux / err, nan=np.inf) >= config.apCorrMinSnr
        if bright.sum() < 3:
            bright = np.ones(len(rows), dtype=bool)
        try:
            fit = fit_zero_point(ap[bright], ap_err[bright], flux[bright], err[bright], n_sigma=config.nSigmaClip,
                                 n_iter=config.nIter, error_floor=0.0, min_stars=3)
        except AlgorithmError as err_:
            self.log.warning("no aperture correction: %s", err_)
            return 1.0, 0.0
        return fit.calibration_mean, fit.calibration_err
