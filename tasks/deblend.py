"""Deblending of blended footprints: `SourceDeblendTask` (off by default in characterization and calibration, on in
`tasks.detect_dia.DetectAndMeasureTask`).

Each positive footprint (and, with ``doNegative``, each negative footprint of a difference image, on the
negated image) is split at the significant peaks of the PSF-smoothed image: every pixel joins the
local maximum its steepest-ascent path ends at (a watershed, computed for all pixels at once by pointer
jumping); a basin whose peak is below ``minPeakSignificance`` noise sigmas, rises less than ``minProminence``
sigmas above its highest saddle with a neighbouring basin, or holds less than ``contrast`` of the footprint's
flux, is merged into that neighbour.  (`photutils.segmentation.deblend_sources` would need scikit-image,
which the project does not depend on.)  A footprint split into several segments becomes a *parent*: its row
gets ``deblend_nChild`` = the number of children, and one child row per segment is appended with
``parent`` = the parent's id.  The `FootprintSet` is updated in place: the parent's pixels are relabelled
with the children's ids, so that `SingleFrameMeasurementTask` measures each child on its own segment (its
siblings replaced by the background) and the parent on the union of its children.
"""

from __future__ import annotations


import numpy as np
from astropy.table import Table, vstack
from scipy import ndimage

from graph import Config, Field, Struct, Task, timeMethod

from .detection import FootprintSet, gaussian_kernel_1d, psf_sigma, smooth_gaussian
from .image import Exposure

__all__ = ["SourceDeblendConfig", "SourceDeblendTask"]


class SourceDeblendConfig(Config):
    """Configuration of `SourceDeblendTask`."""

    minPeakSignificance: float = Field(
        5.0, gt=0, description="Peaks are at least this many noise sigmas of the smoothed image high."
    )
    minProminence: float = Field(
        3.0, ge=0, description="A child's peak rises this many sigmas above its saddle with a neighbour."
    )
    contrast: float = Field(
        0.005, ge=0, le=1, description="Fraction of the footprint's (smoothed) flux a child needs."
    )
    minPixels: int = Field(5, ge=1, description="Minimum number of pixels of a child segment.")
    maxFootprintArea: int = Field(
        100_000, ge=0, description="Footprints with more pixels are not deblended (0: no limit)."
    )
    maxNumberOfPeaks: int = Field(
        50, ge=0, description="Keep only the brightest this many children of a parent (0: no limit)."
    )
    doNegative: bool = Field(
        False,
        description="Also deblend negative footprints (is_negative, e.g. of a difference image) at the peaks of "
        "the negated image; their children are negative too.",
    )


class SourceDeblendTask(Task):
    """Split blended footprints into children (see the module docstring).

    Metadata: ``numParents`` (footprints split), ``numChildren``.
    """

    ConfigClass = SourceDeblendConfig
    _DefaultName = "sourceDeblend"

    @timeMethod
    def run(self, exposure: Exposure, sources: Table, footprints: FootprintSet) -> Struct:
        """Deblend the footprints of ``sources``.

        Parameters
        ----------
        exposure : `Exposure`
            Background-subtracted exposure [counts] (its PSF gives the smoothing; not modified).
        sources : `astropy.table.Table`
            Detections as `SourceDetectionTask` returns them (``id`` equal to the footprint ids).
        footprints : `FootprintSet`
            Their footprints; updated in place (children relabel their parent's pixels).

        Returns
        -------
        result : `Struct`
            ``sources``: the input rows (with ``deblend_nChild``) followed by the children (``parent`` = the
            parent's id, ``centroid_x``/``centroid_y`` = the child's peak pixel, ``footprint_npix`` = its
            segment's pixel count, ``peak_value`` [counts, smoothed image, signed], ``is_negative`` =
            the parent's, ``deblend_nChild`` = 0);
            ``footprints``: the same, updated `FootprintSet`.
        """
        config = self.config
        sources = sources.copy()
        n_child = np.zeros(len(sources), dtype=np.int32)
        sources["deblend_nChild"] = n_child
        if len(sources) == 0 or len(footprints) == 0:
            self.metadata["numParents"] = 0
            self.metadata["numChildren"] = 0
            return Struct(sources=sources, footprints=footprints)

        labels = footprints.labels
        npix = footprints.npix
        candidates = footprints.ids[
            (~footprints.is_negative | config.doNegative)
            & (npix >= 2 * config.minPixels)
            & ((npix <= config.maxFootprintArea) | (config.maxFootprintArea == 0))
        ]
        ids_in_table = np.asarray(sources["id"], dtype=np.int64)
        candidates = candidates[np.isin(candidates, ids_in_table)]
        if candidates.size == 0:
            self.metadata["numParents"] = 0
            self.metadata["numChildren"] = 0
            return Struct(sources=sources, footprints=footprints)

        sigma = psf_sigma(exposure, default=2.0)
        kernel = gaussian_kernel_1d(sigma)
        box = footprints.bbox.intersection(exposure.bbox)
        data = np.zeros(labels.shape, dtype=np.float32)
        image = np.nan_to_num(exposure.image[box.slices(exposure.bbox)], nan=0.0)
        data[box.slices(footprints.bbox)] = smooth_gaussian(image, kernel)
        variance = exposure.variance[box.slices(exposure.bbox)]
        positive = variance[np.isfinite(variance) & (variance > 0)]
        if positive.size:  # noise of the smoothed image, as in detection
            noise = float(np.sqrt(np.median(positive))) * float(np.sum(kernel**2))
        else:
            noise = float(np.std(data[labels == 0]))

        next_id = int(max(ids_in_table.max(), footprints.ids.max())) + 1
        out_labels = labels.copy()
        row_of = {int(i): k for k, i in enumerate(ids_in_table)}
        child_rows = []
        parents = []
        for parent in candidates:
            index = footprints.index(int(parent))
            negative = bool(footprints.is_negative[index])
            fp_box = footprints.bboxes[index]
            sl = fp_box.slices(footprints.bbox)
            inside = labels[sl] == parent
            cutout = -data[sl] if negative else data[sl]
            segments, peaks = _split(cutout, inside, noise, config)
            if len(peaks) < 2:
                continue
            if config.maxNumberOfPeaks and len(peaks) > config.maxNumberOfPeaks:
                keep = np.argsort([-v for _, _, v in peaks])[: config.maxNumberOfPeaks]
                segments, peaks = _keep_peaks(cutout, inside, segments, peaks, keep)
            parents.append(int(parent))
            child_ids = np.arange(next_id, next_id + len(peaks), dtype=np.int64)
            next_id += len(peaks)
            lookup = np.concatenate([[0], child_ids])
            cut = out_labels[sl]
            cut[inside] = lookup[segments[inside]]
            sizes = np.bincount(segments[inside], minlength=len(peaks) + 1)[1:]
            n_child[row_of[int(parent)]] = len(peaks)
            for k, (py, px, value) in enumerate(peaks):
                child_rows.append(
                    {
                        "id": int(child_ids[k]),
                        "parent": int(parent),
                        "centroid_x": float(px + fp_box.x0),
                        "centroid_y": float(py + fp_box.y0),
                        "footprint_npix": int(sizes[k]),
                        "peak_value": -float(value) if negative else float(value),
                        "is_negative": negative,
                        "deblend_nChild": 0,
                    }
                )

        sources["deblend_nChild"] = n_child
        if child_rows:
            children = Table(rows=child_rows, names=list(child_rows[0]))
            for name in children.colnames:
                children[name] = children[name].astype(sources[name].dtype)
            sources = vstack([sources, children[[c for c in sources.colnames if c in children.colnames]]],
                             metadata_conflicts="silent")
            # Re-derive the footprint set from the new labels (parents' labels are gone; children's appear).
            all_ids = np.asarray(sources["id"], dtype=np.int64)
            present = np.unique(out_labels[out_labels > 0])
            rows = np.searchsorted(all_ids, present, sorter=np.argsort(all_ids))
            rows = np.argsort(all_ids)[rows]
            peaks_table = Table(
                {
                    "x": np.asarray(sources["centroid_x"])[rows].astype(np.int64),
                    "y": np.asarray(sources["centroid_y"])[rows].astype(np.int64),
                    "value": np.abs(np.asarray(sources["peak_value"], dtype=float)[rows]),
                }
            )
            negative = np.asarray(sources["is_negative"], dtype=bool)[rows]
            updated = FootprintSet.from_labels(out_labels, footprints.bbox, peaks_table, negative)
            footprints.labels = updated.labels
            footprints.ids = updated.ids
            footprints.bboxes = updated.bboxes
            footprints.peaks = updated.peaks
            footprints.is_negative = updated.is_negative
            footprints._npix = None  # recomputed from the new labels on demand

        self.metadata["numParents"] = int(len(parents))
        self.metadata["numChildren"] = int(len(child_rows))
        self.log.info("Deblended %d footprints into %d children", len(parents), len(child_rows))
        return Struct(sources=sources, footprints=footprints)


_EIGHT = np.ones((3, 3), dtype=bool)


def _split(
    data: np.ndarray, inside: np.ndarray, noise: float, config: SourceDeblendConfig
) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Segments of one footprint and their peaks ``(y, x, value)`` (cutout coordinates).

    Every pixel first joins the local maximum reached by steepest ascent (a watershed of the smoothed image);
    basins whose peak is not significant, not prominent above its saddle, too faint or too small are then
    merged, faintest first, into the neighbour they share their highest saddle with.

    Returns segments labelled 1..n on ``inside`` pixels (0 elsewhere) and the n peaks, brightest first.
    """
    segments, py, px = _ascent_basins(data, inside)
    n = len(py)
    if n < 2:
        return segments, [(int(py[0]), int(px[0]), float(data[py[0], px[0]]))] if n else []
    alive = np.ones(n, dtype=bool)
    total = float(np.clip(data[inside], 0, None).sum())
    changed = True
    while changed and alive.sum() > 1:
        changed = False
        for k in np.flatnonzero(alive)[::-1]:  # faintest peak first
            if k == np.flatnonzero(alive)[0]:
                continue
            saddle, neighbour = _highest_saddle(data, segments, k + 1)
            basin = segments == k + 1
            peak = data[py[k], px[k]]
            keep = (
                peak > config.minPeakSignificance * noise
                and (neighbour == 0 or peak - saddle >= config.minProminence * noise)
                and float(np.clip(data[basin], 0, None).sum()) >= config.contrast * total
                and int(basin.sum()) >= config.minPixels
            )
            if keep:
                continue
            segments[basin] = neighbour if neighbour else int(np.flatnonzero(alive)[0]) + 1
            alive[k] = False
            changed = True
    survivors = np.flatnonzero(alive)
    lookup = np.zeros(n + 1, dtype=np.int64)
    lookup[survivors + 1] = np.arange(1, len(survivors) + 1)
    peaks = [(int(py[k]), int(px[k]), float(data[py[k], px[k]])) for k in survivors]
    return lookup[segments], peaks


def _ascent_basins(data: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label each ``inside`` pixel with the local maximum its steepest-ascent path (8-connected) ends at.

    Returns the basins labelled 1..n by decreasing peak value, and the peaks' (y, x).
    """
    h, w = data.shape
    values = np.where(inside, data, -np.inf)
    padded = np.pad(values, 1, constant_values=-np.inf)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    stack = np.stack([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in shifts])
    best = np.argmax(stack, axis=0)  # ties: the first shift; (0, 0) is index 4
    at_self = stack[4] >= stack.max(axis=0)
    best = np.where(at_self, 4, best)
    dy = np.array([s[0] for s in shifts])[best]
    dx = np.array([s[1] for s in shifts])[best]
    yy, xx = np.mgrid[0:h, 0:w]
    target = ((yy + dy) * w + (xx + dx)).ravel()
    target[~inside.ravel()] = np.flatnonzero(~inside.ravel())  # outside pixels point to themselves
    for _ in range(64):  # pointer jumping: each pass doubles the path length followed
        nxt = target[target]
        if np.array_equal(nxt, target):
            break
        target = nxt
    roots = np.unique(target[inside.ravel()])
    order = np.argsort(-data.ravel()[roots])
    roots = roots[order]
    lookup = np.zeros(h * w, dtype=np.int64)
    lookup[roots] = np.arange(1, len(roots) + 1)
    segments = np.where(inside.ravel(), lookup[target], 0).reshape(h, w)
    py, px = np.divmod(roots, w)
    return segments, py, px


def _highest_saddle(data: np.ndarray, segments: np.ndarray, label: int) -> tuple[float, int]:
    """Highest ``min(data)`` over 8-adjacent pixel pairs between basin ``label`` and another basin."""
    mine = segments == label
    ring = ndimage.binary_dilation(mine, structure=_EIGHT) & ~mine & (segments > 0)
    if not ring.any():
        return -np.inf, 0
    # For each ring pixel, the highest adjacent pixel of the basin bounds the pass through it.
    best_mine = ndimage.maximum_filter(np.where(mine, data, -np.inf), size=3, mode="constant", cval=-np.inf)
    pass_height = np.minimum(data, best_mine)
    pass_height[~ring] = -np.inf
    k = int(np.argmax(pass_height))
    return float(pass_height.ravel()[k]), int(segments.ravel()[k])


def _keep_peaks(data, inside, segments, peaks, keep):
    """Keep only the peaks ``keep``: merge each other segment into the kept one it shares its highest saddle with."""
    keep = set(int(k) for k in keep)
    segments = segments.copy()
    for k in sorted(set(range(len(peaks))) - keep, key=lambda k: peaks[k][2]):
        _, neighbour = _highest_saddle(data, segments, k + 1)
        segments[segments == k + 1] = neighbour if neighbour else min(keep) + 1
    kept = sorted(keep)
    lookup = np.zeros(len(peaks) + 1, dtype=np.int64)
    lookup[[k + 1 for k in kept]] = np.arange(1, len(kept) + 1)
    return lookup[segments], [peaks[k] for k in kept]
