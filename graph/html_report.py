"""A self-contained HTML report of pipeline runs: ``pipetask report --html OUT.html``.

The report covers RUN collections, and every RUN of CHAINED collections that holds executed quanta.  It is a
list of sections; this module holds the framework and the generic sections, which read only the
provenance the executors record in the registry:

- `PipelineGraphSection`: the pipeline graph of each run (tasks and dataset types, from the run's recorded
  pipeline), laid out by networkx and drawn with matplotlib;
- `QuantaSection`: per run and task, the quanta by status and their wall times (median, max, total).

Other packages add sections through the ``pipetask.report_sections`` entry-point group (graph/ imports no
task package); each entry point names a callable returning `ReportSection` instances, e.g.::

    [project.entry-points."pipetask.report_sections"]
    science = "tasks.report_sections:sections"

A section declares the dataset types it needs (``requires``) and renders a `SectionOutput`: an HTML fragment,
matplotlib figures (embedded as base64 PNG data URIs: the page has no external assets) and the numbers it
shows, which the page embeds as JSON in ``<script type="application/json" id="report-data">``
(`read_report_data` reads them back).  A section whose datasets the runs lack is left out with one line
saying why (`ReportSection.skip_reason`, or `SectionSkipped` raised while rendering).
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import io
import json
import logging
import math
import re
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from butler import CollectionType, QuantumRecord
from butler.registry import QUANTUM_STATUSES

from .errors import GraphBuildError, PipelineError
from .execute.report import format_data_id
from .provenance import read_run_document

if TYPE_CHECKING:
    from butler import Butler, DatasetRef

    from .pipeline_graph import PipelineGraph

__all__ = [
    "REPORT_DATA_ID",
    "REPORT_SECTIONS_GROUP",
    "HtmlReport",
    "PipelineGraphSection",
    "QuantaSection",
    "ReportContext",
    "ReportError",
    "ReportSection",
    "SectionOutput",
    "SectionSkipped",
    "figure_html",
    "html_table",
    "load_report_sections",
    "new_figure",
    "pipeline_figure",
    "read_report_data",
    "render_html_report",
    "report_runs",
]

#: Entry-point group of the packages that add report sections.
REPORT_SECTIONS_GROUP = "pipetask.report_sections"
#: The ``id`` of the page's ``<script type="application/json">`` holding the numbers of every section.
REPORT_DATA_ID = "report-data"
#: Version of the embedded JSON document.
REPORT_DATA_VERSION = 1
_DPI = 90
_MAX_FAILED_SHOWN = 20
_log = logging.getLogger("graph.html_report")


class ReportError(PipelineError):
    """A run report cannot be made (no run with quanta in a chain, no report data in a file, a broken section plugin)."""


class SectionSkipped(Exception):  # noqa: N818 - a signal, not an error
    """Raised by `ReportSection.render` when the runs lack what the section shows; the message says why."""


@dataclass
class SectionOutput:
    """What a section renders.

    Attributes
    ----------
    html : `str`
        HTML fragment (paragraphs, tables: see `html_table`), shown under the section's title.
    figures : `list` [`tuple` [`str`, `matplotlib.figure.Figure`]]
        (caption, figure) pairs shown after ``html`` as embedded PNGs (see `new_figure`).
    data : `dict` [`str`, object]
        The numbers the section shows, JSON-safe after conversion (numpy scalars and arrays are converted,
        non-finite floats become ``null``); embedded in the page under ``sections.<key>.data``.
    """

    html: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class ReportSection(ABC):
    """One section of a run report.

    Subclasses set ``key`` (the HTML anchor and JSON key: unique, letters and underscores), ``title`` and ``requires``
    (dataset types the section needs in the reported runs), and implement `render`.
    """

    key: ClassVar[str]
    title: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def skip_reason(self, context: ReportContext) -> str | None:
        """Why the section is left out, or `None` to render it (default: a ``requires`` type has no datasets)."""
        missing = [name for name in self.requires if not context.refs(name)]
        if missing:
            return f"the run(s) hold no {', '.join(missing)} datasets."
        return None

    @abstractmethod
    def render(self, context: ReportContext) -> SectionOutput:
        """Compute the section from the runs' datasets.

        Raises
        ------
        SectionSkipped
            If the runs lack what the section shows (the message says what).
        """


class ReportContext:
    """What sections read: the butler, the reported runs, their quanta, and cached dataset lookups.

    Parameters
    ----------
    butler : `Butler`
    runs : sequence of `str`
        The RUN collections reported, in report order.
    quanta : mapping [`str`, `list` [`QuantumRecord`]]
        The recorded quanta of each run.
    """

    def __init__(self, butler: Butler, runs: Sequence[str], quanta: Mapping[str, list[QuantumRecord]]):
        self.butler = butler
        self.runs = list(runs)
        self.quanta = {run: list(quanta.get(run, [])) for run in self.runs}
        self._registered = {dt.name for dt in butler.registry.query_dataset_types()}
        self._refs: dict[str, list[DatasetRef]] = {}
        self._pipelines: dict[str, PipelineGraph | GraphBuildError] = {}

    def refs(self, dataset_type: str) -> list[DatasetRef]:
        """The datasets of a type in the runs, ordered by run (report order) then data ID (none if unregistered)."""
        if dataset_type not in self._refs:
            found: list[DatasetRef] = []
            if dataset_type in self._registered:
                found = self.butler.registry.query_datasets(dataset_type, self.runs, find_first=False, explain=False)
            rank = {run: i for i, run in enumerate(self.runs)}
            self._refs[dataset_type] = sorted(found, key=lambda ref: (rank[ref.run], tuple(ref.data_id.required.values())))
        return self._refs[dataset_type]

    def get(self, ref: DatasetRef, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read a dataset, one component of it (``"psf"``), or the part selected by formatter parameters."""
        return self.butler.get_deferred(ref).get(component=component, parameters=parameters)

    def pipeline(self, run: str) -> PipelineGraph:
        """The pipeline recorded for a run (cached).

        Raises
        ------
        GraphBuildError
            If the run has no recorded pipeline, or it cannot be rebuilt with the installed task classes.
        """
        if run not in self._pipelines:
            try:
                self._pipelines[run] = read_run_document(self.butler, run).pipeline
            except GraphBuildError as err:
                self._pipelines[run] = err
        pipeline = self._pipelines[run]
        if isinstance(pipeline, GraphBuildError):
            raise pipeline
        return pipeline

    def task_labels(self, run: str) -> list[str]:
        """The task labels of a run's quanta: in pipeline order when its pipeline is known, else by first start."""
        labels = {q.task_label for q in self.quanta[run]}
        try:
            ordered = [label for label in self.pipeline(run).tasks if label in labels]
        except GraphBuildError:
            ordered = []
        starts = sorted((q.start_time or "", q.task_label) for q in self.quanta[run])
        return ordered + list(dict.fromkeys(label for _, label in starts if label not in ordered))

    def quanta_of_class(self, task_class: str) -> list[QuantumRecord]:
        """The recorded quanta (every run) of a task class, given by dotted path."""
        return [q for run in self.runs for q in self.quanta[run] if q.task_class == task_class]


@dataclass
class HtmlReport:
    """A rendered report.

    Attributes
    ----------
    html : `str`
        The self-contained page.
    data : `dict`
        The JSON document embedded in it (see `read_report_data`).
    """

    html: str
    data: dict[str, Any]

    def statuses(self, status: str) -> list[str]:
        """Keys of the sections with a status: ``"shown"``, ``"skipped"`` or ``"failed"``."""
        return [key for key, section in self.data["sections"].items() if section["status"] == status]

    def write(self, path: str | Path) -> None:
        """Write the page to a file (UTF-8)."""
        Path(path).write_text(self.html, encoding="utf-8")


# Running the report ------------------------------------------------------------------------------------------


def report_runs(butler: Butler, collections: str | Sequence[str]) -> dict[str, list[QuantumRecord]]:
    """The runs a report covers, with their recorded quanta.

    Parameters
    ----------
    butler : `Butler`
    collections : `str` or sequence of `str`
        RUN collections (reported even without recorded quanta) and CHAINED collections (their RUN collections,
        nested chains expanded, that hold recorded quanta, in search order); a run named twice is reported once.

    Returns
    -------
    quanta : `dict` [`str`, `list` [`QuantumRecord`]]
        Run name -> its quanta, in report order.

    Raises
    ------
    MissingCollectionError
        If a collection does not exist.
    ReportError
        If a collection is neither a RUN nor a CHAINED collection, or a chain holds no run with recorded quanta.
    """
    registry = butler.registry
    by_run: dict[str, list[QuantumRecord]] = {}
    for name in [collections] if isinstance(collections, str) else collections:
        kind = registry.get_collection_type(name)
        if kind is CollectionType.RUN:
            members = [name]
        elif kind is CollectionType.CHAINED:
            members = [r.name for r in registry.resolve_collections(name) if r.type is CollectionType.RUN]
        else:
            raise ReportError(f"{name!r} is a {kind.name} collection; report RUN or CHAINED collections of runs.")
        found: dict[str, list[QuantumRecord]] = {run: [] for run in members if run not in by_run}
        for record in registry.query_quanta(list(found)) if found else []:
            found[record.run].append(record)
        if kind is CollectionType.CHAINED:
            found = {run: records for run, records in found.items() if records}
            if not found and not any(by_run.get(run) for run in members):
                raise ReportError(
                    f"no RUN collection of the chain {name!r} holds recorded quanta (runs: {', '.join(members) or 'none'}); "
                    "report a run written by `pipetask run` with --output-run RUN."
                )
        by_run.update(found)
    return by_run


def load_report_sections() -> list[ReportSection]:
    """The sections other packages publish in the ``pipetask.report_sections`` entry-point group (by name).

    Raises
    ------
    ReportError
        If an entry point cannot be loaded or does not give `ReportSection` instances.
    """
    sections: list[ReportSection] = []
    for entry in sorted(importlib.metadata.entry_points(group=REPORT_SECTIONS_GROUP), key=lambda e: e.name):
        try:
            factory = entry.load()
            published = list(factory())
        except Exception as err:
            raise ReportError(
                f"cannot load the report sections of entry point {entry.name!r} ({entry.value}): {type(err).__name__}: "
                f"{err}; fix or uninstall the package that publishes it."
            ) from err
        wrong = [type(s).__name__ for s in published if not isinstance(s, ReportSection)]
        if wrong:
            raise ReportError(f"entry point {entry.name!r} ({entry.value}) gives objects that are not ReportSections: {wrong}.")
        sections += published
    return sections


def render_html_report(
    butler: Butler, collections: str | Sequence[str], *, sections: Sequence[ReportSection] | None = None
) -> HtmlReport:
    """Render the HTML report of runs: RUN collections, and the runs with quanta of CHAINED collections.

    Parameters
    ----------
    butler : `Butler`
    collections : `str` or sequence of `str`
        RUN or CHAINED collections (see `report_runs`).
    sections : sequence of `ReportSection`, optional
        Default: `PipelineGraphSection`, `QuantaSection`, then those of `load_report_sections`.

    Returns
    -------
    report : `HtmlReport`
        Each section is ``shown``, ``skipped`` (the runs lack its datasets) or ``failed`` (it raised: the page
        and ``data`` give the error, the DEBUG log its traceback).

    Raises
    ------
    MissingCollectionError, ReportError
        See `report_runs` and `load_report_sections`.
    """
    start = time.perf_counter()
    quanta = report_runs(butler, collections)
    context = ReportContext(butler, list(quanta), quanta)
    if sections is None:
        sections = [PipelineGraphSection(), QuantaSection(), *load_report_sections()]
    keys = [s.key for s in sections]
    if len(set(keys)) != len(keys):
        raise ReportError(f"report sections must have distinct keys; got {keys}.")
    parts: list[str] = []
    data: dict[str, Any] = {
        "version": REPORT_DATA_VERSION,
        "collections": [collections] if isinstance(collections, str) else list(collections),
        "runs": context.runs,
        "repository": str(butler.config.root),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sections": {},
    }
    for section in sections:
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"title": section.title}
        try:
            reason = section.skip_reason(context)
            if reason is not None:
                raise SectionSkipped(reason)
            out = section.render(context)
            body = out.html + "".join(figure_html(fig, caption) for caption, fig in out.figures)
            entry.update(status="shown", data=_json_safe(out.data))
        except SectionSkipped as skip:
            body = f'<p class="note">Left out: {html.escape(str(skip))}</p>'
            entry.update(status="skipped", reason=str(skip))
        except Exception as err:  # one broken section must not hide the others
            message = f"{type(err).__name__}: {err}"
            _log.warning("report section %r failed: %s", section.key, message)
            _log.debug("traceback of the failure of report section %r", section.key, exc_info=True)
            body = f'<p class="error">This section failed: {html.escape(message)}</p>'
            entry.update(status="failed", error=message)
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        data["sections"][section.key] = entry
        parts.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>\n{body}\n</section>')
        _log.info("report section %s: %s in %.2f s", section.key, entry["status"], entry["seconds"])
    data["seconds"] = round(time.perf_counter() - start, 3)
    return HtmlReport(_page(data, parts), data)


def read_report_data(path: str | Path) -> dict[str, Any]:
    """The JSON document embedded in a report page (``sections.<key>.data`` holds each section's numbers).

    Raises
    ------
    ReportError
        If the file holds no report data.
    """
    text = Path(path).read_text(encoding="utf-8")
    found = re.search(rf'<script type="application/json" id="{REPORT_DATA_ID}">(.*?)</script>', text, re.DOTALL)
    if found is None:
        raise ReportError(f"{path} holds no report data (no script with id {REPORT_DATA_ID!r}); is it a pipetask report?")
    return json.loads(found.group(1))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f2f4f7; } td.text, th.text { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: .9em; color: #555; }
.note { color: #666; font-style: italic; } .error { color: #a00; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def _page(data: dict[str, Any], parts: Sequence[str]) -> str:
    """The full page: header, table of contents, sections, embedded JSON."""
    runs = "".join(f"<li><code>{html.escape(run)}</code></li>" for run in data["runs"])
    toc = "".join(
        f'<li><a href="#{key}">{html.escape(s["title"])}</a>{"" if s["status"] == "shown" else " (" + s["status"] + ")"}</li>'
        for key, s in data["sections"].items()
    )
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    title = f"Run report: {', '.join(data['collections'])}"
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>Repository <code>{html.escape(data['repository'])}</code>, made {html.escape(data['created'])} in "
        f"{data['seconds']:.1f} s. Runs:</p>\n<ul>{runs}</ul>\n<nav><ol>{toc}</ol></nav>\n"
        + "\n".join(parts)
        + f'\n<script type="application/json" id="{REPORT_DATA_ID}">{payload}</script>\n</body>\n</html>\n'
    )


def _json_safe(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars and arrays as Python values, non-finite floats as `None`.

    Raises
    ------
    TypeError
        If a value is not a number, string, bool, None, mapping, sequence or numpy array.
    """
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    raise TypeError(f"report data must be numbers, strings, lists and dicts; got a {type(value).__name__}: {value!r}.")


# Helpers for sections -------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure drawn by the Agg backend (no pyplot, no display), with constrained layout.

    Parameters
    ----------
    width, height : `float`
        Size [inches]; the page shows it at 90 dpi.
    """
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_html(figure: Figure, caption: str) -> str:
    """A figure as an HTML ``<figure>`` holding its PNG as a base64 data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    text = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def html_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """An HTML table.

    Parameters
    ----------
    rows : iterable of mapping
        One mapping per row.
    columns : sequence of (key, header, format)
        The row key, the column header and a format spec for numbers (``".2f"``; ``""`` for `str`); text
        columns are left-aligned, None and NaN shown as an em dash.
    """
    text_columns = set()
    body = []
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("<td>&mdash;</td>")
            elif isinstance(value, str) or not spec:
                text_columns.add(key)
                cells.append(f'<td class="text">{html.escape(str(value))}</td>')
            else:
                cells.append(f"<td>{format(value, spec)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(
        ('<th class="text">' if key in text_columns else "<th>") + f"{html.escape(header)}</th>" for key, header, _ in columns
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# The pipeline graph ------------------------------------------------------------------------------------------

_EDGE_STYLES = {"prerequisite": "dashed", "init_input": "dotted", "init_output": "dotted", "provenance": "dotted"}


def pipeline_figure(pipeline_graph: PipelineGraph) -> Figure:
    """Draw a pipeline graph top to bottom: tasks as blue boxes, dataset types as grey ones.

    Nodes are placed in rows by topological generation (`networkx.multipartite_layout`), an overall input just
    above its first reader; each row is ordered by the mean position of the nodes' predecessors so that edges
    cross less.  Prerequisite edges are dashed, init-input/output and provenance edges dotted.
    """
    graph = pipeline_graph.graph
    layer = {node: depth for depth, generation in enumerate(nx.topological_generations(graph)) for node in generation}
    for node in graph:
        if graph.in_degree(node) == 0 and graph.out_degree(node):
            layer[node] = min(layer[s] for s in graph.successors(node)) - 1
    ordered = nx.DiGraph()
    column: dict[Any, int] = {}
    for depth in sorted(set(layer.values())):
        def barycentre(node: Any) -> float:
            previous = [column[p] for p in graph.predecessors(node) if p in column]
            return statistics.fmean(previous) if previous else math.inf

        for index, node in enumerate(sorted((n for n in layer if layer[n] == depth), key=lambda n: (barycentre(n), n[1]))):
            column[node] = index
            ordered.add_node(node, layer=depth)
    rows = len(set(layer.values()))
    widest = 1 + max(column.values(), default=0)
    positions = {node: (x, -y) for node, (x, y) in nx.multipartite_layout(ordered, subset_key="layer", align="horizontal").items()}
    figure = new_figure(max(6.0, 2.0 * widest), max(2.5, 0.5 * rows))
    ax = figure.add_subplot()
    ax.set_axis_off()
    xs, ys = (np.array(values) for values in zip(*positions.values()))
    dx = np.ptp(xs) / (widest - 1) if widest > 1 else 1.0
    dy = np.ptp(ys) / (rows - 1) if rows > 1 else 1.0
    ax.set_xlim(xs.min() - 0.5 * dx, xs.max() + 0.5 * dx)
    ax.set_ylim(ys.min() - 0.5 * dy, ys.max() + 0.5 * dy)
    boxes = {}
    for node, (x, y) in positions.items():
        kind, name = node
        style = (
            {"fontsize": 8, "fontweight": "bold", "bbox": {"boxstyle": "round,pad=0.3", "fc": "#dbe9f6", "ec": "#4a78a8"}}
            if kind == "task"
            else {"fontsize": 7, "bbox": {"boxstyle": "round,pad=0.2", "fc": "#f3f3f3", "ec": "#aaaaaa"}}
        )
        boxes[node] = ax.text(x, y, name, ha="center", va="center", zorder=3, **style)
    for source, target, kind in graph.edges(data="kind"):
        ax.annotate(
            "", xy=positions[target], xytext=positions[source], zorder=2,
            arrowprops={
                "arrowstyle": "-|>", "color": "#777777", "lw": 0.7, "linestyle": _EDGE_STYLES.get(kind, "solid"),
                "patchA": boxes[source].get_bbox_patch(), "patchB": boxes[target].get_bbox_patch(),
                "shrinkA": 1, "shrinkB": 1,
            },
        )  # fmt: skip
    return figure


class PipelineGraphSection(ReportSection):
    """The pipeline graph of each run, from the pipeline recorded with the run (`graph.provenance`)."""

    key = "pipeline_graph"
    title = "Pipeline graph"

    def render(self, context: ReportContext) -> SectionOutput:
        figures, notes, data = [], [], {}
        for run in context.runs:
            try:
                pipeline = context.pipeline(run)
            except GraphBuildError as err:
                notes.append(f"<li><code>{html.escape(run)}</code>: no graph: {html.escape(str(err))}</li>")
                data[run] = {"error": str(err)}
                continue
            figures.append((f"Pipeline of run {run}: {len(pipeline.tasks)} tasks (blue), {len(pipeline.dataset_types)} "
                            "dataset types (grey).", pipeline_figure(pipeline)))  # fmt: skip
            data[run] = {
                "tasks": {label: node.task_class_name for label, node in pipeline.tasks.items()},
                "dataset_types": sorted(pipeline.dataset_types),
                "edges": pipeline.graph.number_of_edges(),
            }
        return SectionOutput(f"<ul>{''.join(notes)}</ul>" if notes else "", figures, data)


# Quanta and timing ---------------------------------------------------------------------------------------------


def _wall_time(record: QuantumRecord) -> float | None:
    """Seconds from a quantum's recorded start to its end, or `None` if a time is missing."""
    if not record.start_time or not record.end_time:
        return None
    start = datetime.datetime.fromisoformat(record.start_time)
    end = datetime.datetime.fromisoformat(record.end_time)
    return (end - start).total_seconds()


class QuantaSection(ReportSection):
    """Quanta per run and task by status, and their wall times (start to end, from quantum provenance)."""

    key = "quanta"
    title = "Quanta and timing"

    def render(self, context: ReportContext) -> SectionOutput:
        rows: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        data: dict[str, Any] = {"runs": {}}
        times: dict[str, dict[str, list[float]]] = {}
        for run in context.runs:
            by_label: dict[str, list[QuantumRecord]] = {}
            for record in context.quanta[run]:
                by_label.setdefault(record.task_label, []).append(record)
            run_data: dict[str, Any] = {}
            times[run] = {}
            for label in context.task_labels(run):
                records = by_label[label]
                walls = [w for w in map(_wall_time, records) if w is not None]
                row: dict[str, Any] = {"run": run, "task": label, "quanta": len(records)}
                row.update({status: sum(r.status == status for r in records) for status in QUANTUM_STATUSES})
                row.update(
                    median=statistics.median(walls) if walls else None, max=max(walls, default=None),
                    total=sum(walls) if walls else None,
                )  # fmt: skip
                rows.append(row)
                run_data[label] = {k: v for k, v in row.items() if k not in ("run", "task")}
                times[run][label] = walls
                failed += [
                    {"run": run, "task": label, "data_id": format_data_id(r.data_id), "error": r.error or ""}
                    for r in records if r.status == "failed"
                ]  # fmt: skip
            data["runs"][run] = run_data
        data["failed"] = failed
        columns = [("run", "run", ""), ("task", "task", ""), ("quanta", "quanta", "d")]
        columns += [(s, s.replace("_", " "), "d") for s in QUANTUM_STATUSES]
        columns += [("median", "median [s]", ".2f"), ("max", "max [s]", ".2f"), ("total", "total [s]", ".1f")]
        parts = [
            "<p>Quanta by status as recorded in the registry's provenance; wall time of a quantum = its recorded "
            "end minus start.</p>",
            html_table(rows, columns),
        ]
        if failed:
            parts.append(f"<p>{len(failed)} failed quanta{' (first ' + str(_MAX_FAILED_SHOWN) + ')' if len(failed) > _MAX_FAILED_SHOWN else ''}:</p>")
            parts.append(html_table(failed[:_MAX_FAILED_SHOWN], [("run", "run", ""), ("task", "task", ""),
                                                                  ("data_id", "data ID", ""), ("error", "error", "")]))
        figures = []
        if any(walls for per_run in times.values() for walls in per_run.values()):
            figures.append(("Wall time per quantum, by task (box: quartiles; whiskers: 1.5 IQR; points: outliers).",
                            _timing_figure(times)))
        return SectionOutput("\n".join(parts), figures, data)


def _timing_figure(times: Mapping[str, Mapping[str, list[float]]]) -> Figure:
    """Box plots of the wall times [s] of each task (log scale), one panel per run."""
    panels = [(run, {label: walls for label, walls in per_run.items() if walls}) for run, per_run in times.items()]
    panels = [(run, per_run) for run, per_run in panels if per_run]
    figure = new_figure(max(5.0, 0.55 * max(len(per_run) for _, per_run in panels) + 1.5), 3.2 * len(panels))
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (run, per_run) in zip(axes, panels):
        ax.boxplot(list(per_run.values()), widths=0.6)
        ax.set_xticks(range(1, len(per_run) + 1), list(per_run), rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("wall time [s]")
        ax.set_title(run, fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    return figure
