"""AlardLuptonSubtractTask on real DECam i-band stamps (2016 and 2018 epochs of one field, on one pixel grid):
both convolution directions, the constant kernel the few stars call for, the decorrelated noise and the
residuals at the stars."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tasks.detection import SourceDetectionTask
from tasks.image import Exposure, GaussianPsf, Mask, MaskedImage
from tasks.measurement import SingleFrameMeasurementTask
from tasks.subtract import AlardLuptonSubtractTask

DATASET = "sfft_decam_i_2016_2018/input_data"
EPOCH_2016 = "DEC-OBS18a"  # FWHM 3.85 px
EPOCH_2018 = "DEC-OBS04a"  # FWHM 5.23 px
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _detect_and_measure(exposure: Exposure, sigma: float):
    detection = SourceDetectionTask()
    detection.config.reEstimateBackground = False
    found = detection.run(exposure, sigma=sigma)
    return SingleFrameMeasurementTask().run(exposure, found.sources, found.footprints)


def _robust_sigma(values: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _load(shared_data, name: str) -> tuple[Exposure, object]:
    """A stamp as an Exposure (variance: the sky noise measured from the pixels plus the sources' Poisson
    noise through the header gain) with a Gaussian PSF of the FWHM measured from its bright stars, and its
    source catalogue."""
    with fits.open(shared_data / DATASET / f"{name}.mini.fits") as hdul:
        header = hdul[0].header
        image = np.asarray(hdul[0].data, dtype=np.float32)
    gain = float(header["GAIN"])

    def with_variance(sky_sigma: float) -> Exposure:
        variance = (sky_sigma**2 + np.clip(image, 0, None) / gain).astype(np.float32)
        return Exposure(MaskedImage(image, Mask(image.shape), variance), wcs=WCS(header))

    exposure = with_variance(_robust_sigma(image))
    first = _detect_and_measure(exposure, sigma=2.0)
    # The sky noise again, from the pixels no source touches (the sources inflate the first estimate).
    exposure = with_variance(_robust_sigma(image[~exposure.mask.get_plane("DETECTED")]))
    # The PSF width from the adaptive moments of the brightest unflagged sources (stars dominate them).
    usable = ~np.asarray(first["shape_flag"], bool) & ~np.asarray(first["flag_edge"], bool)
    brightest = np.argsort(-np.asarray(first["peak_value"])[usable])[:5]
    xx, yy, xy = (np.asarray(first[c])[usable][brightest] for c in ("shape_xx", "shape_yy", "shape_xy"))
    sigma = float(np.median((xx * yy - xy**2) ** 0.25))
    exposure.psf = GaussianPsf(41, 41, sigma)
    sources = _detect_and_measure(exposure, sigma=sigma)
    return exposure, sources


@pytest.fixture(scope="module")
def stamps(shared_data):
    return {name: _load(shared_data, name) for name in (EPOCH_2016, EPOCH_2018)}


def _source_free(*exposures: Exposure) -> np.ndarray:
    detected = np.zeros(exposures[0].shape, dtype=bool)
    for exposure in exposures:
        detected |= exposure.mask.get_plane(["DETECTED", "DETECTED_NEGATIVE"], missing_ok=True)
    return ~detected


def _noise_ratio(difference: Exposure, free: np.ndarray) -> float:
    good = free & np.isfinite(difference.image) & ~difference.mask.get_plane("NO_DATA", missing_ok=True)
    return _robust_sigma(difference.image[good] / np.sqrt(difference.variance[good]))


@pytest.mark.parametrize(
    ("science_name", "template_name", "mode"),
    [(EPOCH_2018, EPOCH_2016, "convolveTemplate"), (EPOCH_2016, EPOCH_2018, "convolveScience")],
)
def test_decam_subtraction_in_both_directions(stamps, science_name, template_name, mode):
    """Acceptance: 2018 - 2016 convolves the (sharper) 2016 template, 2016 - 2018 the science image; with 5-8
    stars the task fits a spatially constant kernel by itself; the decorrelated difference's noise matches its
    variance plane within [0.97, 1.05]; the residual at the stars is <= 0.1 of their flux."""
    science, sources = stamps[science_name]
    template, _ = stamps[template_name]
    task = AlardLuptonSubtractTask()
    result = task.run(template, science, sources)
    metadata = task.getFullMetadata()
    print(metadata.to_dict())
    assert metadata["subtractImages.mode"] == mode
    assert metadata["subtractImages:makeKernel.spatialKernelOrder"] == 0
    ratio = _noise_ratio(result.difference, _source_free(science, template))
    print(f"{science_name} - {template_name}: noise ratio {ratio:.3f}, "
          f"footprint ratio {metadata['subtractImages.differenceFootprintRatioMean']:.3f}")
    assert 0.97 <= ratio <= 1.05
    assert metadata["subtractImages.differenceFootprintRatioMean"] <= 0.1
    source_psf = science.psf if mode == "convolveTemplate" else template.psf
    assert result.difference.psf.fwhm() < source_psf.fwhm()  # the decorrelation sharpens point sources too
