"""The science sections of the run report (``pipetask report --html``): PSF FWHM, background matching, DIA cut-outs,
the DIA source table and the difference-image noise ratio.

`graph.html_report` finds them through the ``pipetask.report_sections`` entry point (`sections`); each reads
the datasets of the reported runs and gives the numbers it shows in its ``data`` (embedded in the page as
JSON):

- `PsfFwhmSection` (``psf_fwhm``): per calexp, the FWHM of its PSF model at the detector centre (2.3548 x the
  determinant radius of its adaptive moments, `tasks.image.Psf.fwhm`) in pixels and, with the WCS pixel
  scale there (`tasks.characterize.pixel_scale_arcsec`), in arcsec;
- `BackgroundMatchingSection` (``background_matching``): per tract, band and visit, what
  `MatchBackgroundsTask` recorded in its metadata: the reference visit, the mean offset of the fitted
  difference background and the RMS and reduced chi^2 of its bins about the fit [nJy];
- `DiaCutoutSection` (``dia_cutouts``): science (calexp), template (matchedTemplate, else template) and
  difference stamps around the DIA sources of highest |S/N|, with the DIA sources marked;
- `DiaSourceSection` (``dia_sources``): the number of DIA sources per visit and detector and the table of
  those of highest |S/N|;
- `NoiseRatioSection` (``noise_ratio``): per difference image, std(difference / sqrt(variance)) over the
  pixels with none of the `NOT_SKY` mask planes (sources detected on the difference, missing, bad, saturated,
  edge, cosmic-ray, interpolated, suspect pixels): 1 when the variance plane predicts the noise.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from astropy.table import Table, vstack
from astropy.visualization import ZScaleInterval
from matplotlib.figure import Figure

from graph.html_report import (
    ReportContext,
    ReportSection,
    SectionOutput,
    SectionSkipped,
    html_table,
    new_figure,
)

from .characterize import pixel_scale_arcsec
from .image import Box2I
from .match_backgrounds import MatchBackgroundsTask
from .subtract import difference_noise_ratio

__all__ = [
    "NOT_SKY",
    "BackgroundMatchingSection",
    "DiaCutoutSection",
    "DiaSourceSection",
    "NoiseRatioSection",
    "PsfFwhmSection",
    "sections",
]

#: Mask planes of the pixels left out of the difference-image noise ratio (missing planes are ignored).
NOT_SKY = (
    "DETECTED", "DETECTED_NEGATIVE", "NO_DATA", "BAD", "SAT", "SAT_TEMPLATE", "EDGE", "CR", "INTRP", "SUSPECT",
)  # fmt: skip
_VISIT_KEY = re.compile(r"^visit_(\d+)_(\w+)$")
_DIA_COLUMNS = [
    ("run", "run", ""), ("visit", "visit", "d"), ("detector", "detector", "d"), ("id", "id", "d"),
    ("centroid_x", "x [px]", ".1f"), ("centroid_y", "y [px]", ".1f"), ("coord_ra", "RA [deg]", ".5f"),
    ("coord_dec", "Dec [deg]", ".5f"), ("psfFlux", "PSF flux [counts]", ".1f"), ("psfFluxErr", "error", ".1f"),
    ("snr", "S/N", ".1f"), ("isDipole", "dipole", ""), ("is_negative", "negative", ""),
]  # fmt: skip


def sections() -> list[ReportSection]:
    """The science sections, in report order (the ``pipetask.report_sections`` entry point)."""
    return [PsfFwhmSection(), BackgroundMatchingSection(), DiaCutoutSection(), DiaSourceSection(), NoiseRatioSection()]


def _visit_detector(ref: Any) -> dict[str, Any]:
    """``run``, ``visit`` and ``detector`` of a dataset of (instrument, visit, detector)."""
    return {"run": ref.run, "visit": int(ref.data_id["visit"]), "detector": int(ref.data_id["detector"])}


def _per_detector_figure(rows: list[dict[str, Any]], key: str, label: str, reference: float | None = None) -> Figure:
    """A value of each (visit, detector) against the detector, one marker series per run and visit."""
    figure = new_figure(7.5, 3.2)
    ax = figure.add_subplot()
    series: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault((row["run"], row["visit"]), []).append(row)
    multiple_runs = len({run for run, _ in series}) > 1
    for (run, visit), points in series.items():
        ax.plot([p["detector"] for p in points], [p[key] for p in points], "o-", ms=4, lw=0.8,
                label=f"visit {visit}" + (f" ({run})" if multiple_runs else ""))  # fmt: skip
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls="--")
    ax.set_xlabel("detector")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if len(series) <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure


class PsfFwhmSection(ReportSection):
    """FWHM of each calexp's PSF model at the detector centre, in pixels and arcsec."""

    key = "psf_fwhm"
    title = "PSF FWHM per visit and detector"
    requires = ("calexp",)

    def render(self, context: ReportContext) -> SectionOutput:
        rows = []
        for ref in context.refs("calexp"):
            calexp = context.get(ref)
            row = _visit_detector(ref)
            if calexp.psf is None:
                row.update(fwhm_pixels=None, pixel_scale=None, fwhm_arcsec=None)
            else:
                fwhm = float(calexp.psf.fwhm(*calexp.bbox.center))
                scale = pixel_scale_arcsec(calexp)
                row.update(fwhm_pixels=fwhm, pixel_scale=scale, fwhm_arcsec=fwhm * scale if scale else None)
            rows.append(row)
        arcsec = [r["fwhm_arcsec"] for r in rows if r["fwhm_arcsec"] is not None]
        summary = (
            f"<p>{len(rows)} calexps; FWHM median {np.median(arcsec):.3f} arcsec, range {min(arcsec):.3f} to "
            f"{max(arcsec):.3f} arcsec (2.3548 x the PSF model's determinant radius at the detector centre).</p>"
            if arcsec else f"<p>{len(rows)} calexps; none has a PSF and a celestial WCS.</p>"
        )  # fmt: skip
        table = html_table(rows, [
            ("run", "run", ""), ("visit", "visit", "d"), ("detector", "detector", "d"),
            ("fwhm_pixels", "FWHM [px]", ".3f"), ("pixel_scale", "scale [arcsec/px]", ".4f"),
            ("fwhm_arcsec", "FWHM [arcsec]", ".3f"),
        ])  # fmt: skip
        figures = []
        plotted = [r for r in rows if r["fwhm_arcsec"] is not None]
        if plotted:
            figures.append(("PSF FWHM of each calexp at its detector centre.",
                            _per_detector_figure(plotted, "fwhm_arcsec", "PSF FWHM [arcsec]")))  # fmt: skip
        data = {"rows": rows, "median_arcsec": float(np.median(arcsec)) if arcsec else None}
        return SectionOutput(summary + table, figures, data)


class BackgroundMatchingSection(ReportSection):
    """What `MatchBackgroundsTask` recorded per visit: reference, mean offset, residual RMS and chi^2."""

    key = "background_matching"
    title = "Background matching"
    task_class = f"{MatchBackgroundsTask.__module__}.{MatchBackgroundsTask.__qualname__}"

    def skip_reason(self, context: ReportContext) -> str | None:
        if not any(q.status == "succeeded" for q in context.quanta_of_class(self.task_class)):
            return f"the run(s) hold no succeeded quantum of {self.task_class}."
        return None

    def render(self, context: ReportContext) -> SectionOutput:
        rows = []
        for label in dict.fromkeys(q.task_label for q in context.quanta_of_class(self.task_class)):
            for ref in context.refs(f"{label}_metadata"):
                metadata = context.get(ref).get(label)
                if metadata is None:
                    continue
                per_visit: dict[int, dict[str, Any]] = {}
                for name, value in metadata.scalars.items():
                    found = _VISIT_KEY.match(name)
                    if found:
                        per_visit.setdefault(int(found.group(1)), {})[found.group(2)] = value
                reference = metadata.get("refVisitId")
                for visit, stats in sorted(per_visit.items()):
                    rows.append({
                        "run": ref.run, "task": label, "tract": int(ref.data_id["tract"]), "band": str(ref.data_id["band"]),
                        "visit": visit, "reference": visit == reference, "meanOffset": stats.get("meanOffset"),
                        "rms": stats.get("rms"), "chi2": stats.get("chi2"), "nGoodBins": stats.get("nGoodBins"),
                    })  # fmt: skip
        if not rows:
            raise SectionSkipped("the background-matching metadata records no visit.")
        matched = [r for r in rows if not r["reference"]]
        table = html_table(rows, [
            ("run", "run", ""), ("tract", "tract", "d"), ("band", "band", ""), ("visit", "visit", "d"),
            ("reference", "reference", ""), ("meanOffset", "mean offset [nJy]", ".3f"),
            ("rms", "residual RMS [nJy]", ".3f"), ("chi2", "reduced chi2", ".2f"), ("nGoodBins", "bins", "d"),
        ])  # fmt: skip
        text = (
            "<p>Each visit's sky is matched to the reference visit's by a smooth difference background fitted to "
            "binned (reference - visit) differences; the residual RMS is that of the kept bins about the fit.</p>"
        )
        figures = [("Background matching per visit: mean offset of the fitted difference background and residual "
                    "RMS of its bins about the fit (reference visits have neither).", self._figure(matched or rows))]  # fmt: skip
        return SectionOutput(text + table, figures, {"rows": rows})

    @staticmethod
    def _figure(rows: list[dict[str, Any]]) -> Figure:
        figure = new_figure(7.5, 4.0)
        offset_ax, rms_ax = figure.subplots(2, 1, sharex=True)
        names = [f"{r['visit']}\n{r['band']} t{r['tract']}" for r in rows]
        x = np.arange(len(rows))
        offset_ax.bar(x, [r["meanOffset"] if r["meanOffset"] is not None else np.nan for r in rows], color="#4a78a8")
        offset_ax.axhline(0.0, color="k", lw=0.6)
        offset_ax.set_ylabel("mean offset [nJy]")
        rms_ax.bar(x, [r["rms"] if r["rms"] is not None else np.nan for r in rows], color="#c0504d")
        rms_ax.set_ylabel("residual RMS [nJy]")
        rms_ax.set_xticks(x, names, fontsize=7)
        for ax in (offset_ax, rms_ax):
            ax.grid(axis="y", alpha=0.3)
        return figure


def _dia_sources(context: ReportContext) -> tuple[Table, list[dict[str, Any]]]:
    """Every DIA source of the runs, with ``run``, ``visit`` and ``detector`` columns, by decreasing |S/N|; and the
    number of sources of each diaSrc catalogue (``run``, ``visit``, ``detector``, ``count``)."""
    tables, counts = [], []
    for ref in context.refs("diaSrc"):
        table = context.get(ref)
        where = _visit_detector(ref)
        for key, value in where.items():
            table[key] = [value] * len(table)
        tables.append(table)
        counts.append({**where, "count": len(table)})
    merged = vstack(tables, metadata_conflicts="silent") if tables else Table()
    if len(merged):
        merged = merged[np.argsort(-np.abs(np.asarray(merged["snr"], dtype=float)), kind="stable")]
    return merged, counts


def _rows(table: Table, columns: Iterable[str]) -> list[dict[str, Any]]:
    names = [c for c in columns if c in table.colnames]
    return [{name: row[name].item() if hasattr(row[name], "item") else row[name] for name in names} for row in table]


class DiaSourceSection(ReportSection):
    """The number of DIA sources per visit and detector, and those of highest |S/N|.

    Parameters
    ----------
    top : `int`, optional
        Number of sources listed.
    """

    key = "dia_sources"
    title = "DIA sources"
    requires = ("diaSrc",)

    def __init__(self, top: int = 25):
        self.top = top

    def render(self, context: ReportContext) -> SectionOutput:
        sources, counts = _dia_sources(context)
        top = _rows(sources[: self.top], [c for c, _, _ in _DIA_COLUMNS])
        positive = int(np.sum(np.asarray(sources["snr"]) > 0)) if len(sources) else 0
        text = (
            f"<p>{len(sources)} DIA sources ({positive} positive, {len(sources) - positive} negative) on "
            f"{len(counts)} difference images.</p>"
            + html_table(counts, [("run", "run", ""), ("visit", "visit", "d"), ("detector", "detector", "d"),
                                  ("count", "DIA sources", "d")])
            + f"<p>The {len(top)} of highest |S/N|:</p>" + html_table(top, _DIA_COLUMNS)
        )  # fmt: skip
        return SectionOutput(text, [], {"count": len(sources), "positive": positive, "per_detector": counts, "top": top})


class DiaCutoutSection(ReportSection):
    """Science, template and difference stamps around the DIA sources of highest |S/N|.

    Parameters
    ----------
    count : `int`, optional
        Number of sources shown.
    size : `int`, optional
        Side of a stamp [pixels].
    """

    key = "dia_cutouts"
    title = "Cut-outs around the brightest DIA sources"
    requires = ("diaSrc", "calexp", "difference")

    def __init__(self, count: int = 6, size: int = 41):
        self.count = count
        self.size = size

    def render(self, context: ReportContext) -> SectionOutput:
        template_type = next((name for name in ("matchedTemplate", "template") if context.refs(name)), None)
        if template_type is None:
            raise SectionSkipped("the run(s) hold neither matchedTemplate nor template datasets.")
        sources, _ = _dia_sources(context)
        if not len(sources):
            raise SectionSkipped("the diaSrc catalogues hold no source.")
        refs = {name: {(r.run, int(r.data_id["visit"]), int(r.data_id["detector"])): r for r in context.refs(name)}
                for name in (template_type, "difference")}  # fmt: skip
        # The calexp may come from another of the reported runs (ProcessCcd run before the AP pipeline): the one of
        # the DIA source's run if there is one, else the first reported run's.
        calexps: dict[tuple, Any] = {}
        for r in reversed(context.refs("calexp")):
            visit_detector = (int(r.data_id["visit"]), int(r.data_id["detector"]))
            calexps[(r.run, *visit_detector)] = calexps[visit_detector] = r
        refs["calexp"] = {key: calexps.get(key, calexps.get(key[1:])) for key in refs["difference"]}
        refs["calexp"] = {key: ref for key, ref in refs["calexp"].items() if ref is not None}
        chosen = [s for s in sources if all((s["run"], int(s["visit"]), int(s["detector"])) in r for r in refs.values())]
        chosen = chosen[: self.count]
        if not chosen:
            raise SectionSkipped(f"no DIA source has its {template_type} and difference in one run and a calexp.")
        figure = new_figure(7.2, 2.4 * len(chosen))
        axes = figure.subplots(len(chosen), 3, squeeze=False)
        shown = []
        for row_axes, source in zip(axes, chosen):
            key = (source["run"], int(source["visit"]), int(source["detector"]))
            x, y = float(source["centroid_x"]), float(source["centroid_y"])
            stamps = [self._stamp(context, refs[name][key], x, y) for name in ("calexp", template_type, "difference")]
            near = sources[(sources["run"] == key[0]) & (sources["visit"] == key[1]) & (sources["detector"] == key[2])]
            for ax, name, stamp in zip(row_axes, ("calexp", template_type, "difference"), stamps):
                self._draw(ax, stamp, near, difference=name == "difference")
                ax.set_title(f"{name}" if name != "difference" else f"difference, S/N {float(source['snr']):.1f}",
                             fontsize=8)  # fmt: skip
            row_axes[0].set_ylabel(f"visit {key[1]} det {key[2]}\n({x:.0f}, {y:.0f})", fontsize=8)
            shown.append({"run": key[0], "visit": key[1], "detector": key[2], "id": int(source["id"]),
                          "centroid_x": x, "centroid_y": y, "snr": float(source["snr"])})  # fmt: skip
        text = (f"<p>{self.size} x {self.size} pixel stamps of the calexp, the {template_type} and the difference "
                f"around the {len(shown)} DIA sources of highest |S/N|; circles mark DIA sources.</p>")  # fmt: skip
        return SectionOutput(text, [("Science / template / difference around the brightest DIA sources.", figure)],
                             {"template": template_type, "sources": shown})  # fmt: skip

    def _stamp(self, context: ReportContext, ref: Any, x: float, y: float) -> Any:
        """The part of an exposure within the stamp around (x, y), clipped to the exposure's box."""
        half = self.size // 2
        box = Box2I(round(x) - half, round(y) - half, self.size, self.size)
        return context.get(ref, parameters={"bbox": box.intersection(context.get(ref, component="bbox"))})

    @staticmethod
    def _draw(ax: Any, stamp: Any, sources: Table, *, difference: bool) -> None:
        image = np.asarray(stamp.image, dtype=float)
        x0, y0 = stamp.xy0
        extent = (x0 - 0.5, x0 + image.shape[1] - 0.5, y0 - 0.5, y0 + image.shape[0] - 0.5)
        finite = image[np.isfinite(image)]
        if difference:
            sigma = float(np.sqrt(np.nanmedian(stamp.variance))) if finite.size else 1.0
            vmin, vmax = -5.0 * sigma, 5.0 * sigma
            cmap = "RdBu_r"
        else:
            vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0.0, 1.0)
            cmap = "gray"
        ax.imshow(image, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        inside = ((sources["centroid_x"] >= extent[0]) & (sources["centroid_x"] <= extent[1])
                  & (sources["centroid_y"] >= extent[2]) & (sources["centroid_y"] <= extent[3]))  # fmt: skip
        ax.scatter(sources["centroid_x"][inside], sources["centroid_y"][inside], s=120, facecolors="none",
                   edgecolors="#2ca02c", linewidths=0.8)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])


class NoiseRatioSection(ReportSection):
    """std(difference / sqrt(variance)) over the sky pixels of each difference image."""

    key = "noise_ratio"
    title = "Difference-image noise ratio"
    requires = ("difference",)

    def render(self, context: ReportContext) -> SectionOutput:
        # subtractedMeasuredExposure is the difference with the DIA detection's DETECTED planes set.
        dataset_type = "subtractedMeasuredExposure" if context.refs("subtractedMeasuredExposure") else "difference"
        rows = []
        for ref in context.refs(dataset_type):
            ratio, pixels = difference_noise_ratio(context.get(ref), planes=NOT_SKY)
            rows.append({**_visit_detector(ref), "ratio": ratio, "pixels": pixels})
        ratios = [r["ratio"] for r in rows if np.isfinite(r["ratio"])]
        text = (
            f"<p>std(difference / sqrt(variance)) over the pixels of <code>{dataset_type}</code> with none of the "
            f"mask planes {', '.join(NOT_SKY)}: 1 when the variance plane predicts the noise. Median "
            f"{np.median(ratios):.3f} over {len(ratios)} difference images.</p>"
            if ratios else f"<p>No sky pixels in the {len(rows)} <code>{html.escape(dataset_type)}</code> images.</p>"
        )  # fmt: skip
        table = html_table(rows, [("run", "run", ""), ("visit", "visit", "d"), ("detector", "detector", "d"),
                                  ("ratio", "noise ratio", ".3f"), ("pixels", "sky pixels", "d")])  # fmt: skip
        figures = []
        if ratios:
            plotted = [r for r in rows if np.isfinite(r["ratio"])]
            figures.append(("Noise ratio of each difference image (dashed: 1).",
                            _per_detector_figure(plotted, "ratio", "std(diff / sqrt(var))", reference=1.0)))  # fmt: skip
        return SectionOutput(text + table, figures, {"dataset_type": dataset_type, "rows": rows,
                                                     "median": float(np.median(ratios)) if ratios else None})  # fmt: skip
