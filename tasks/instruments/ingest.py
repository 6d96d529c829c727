"""Raw ingest: register raw files (and their auxiliary files) with the dimension records they need.

`ingest_raws` reads each file's header, finds its instrument, writes the instrument's records and the
exposure records, and ingests the raws, in one transaction per batch.  Files that cannot be read or
translated are reported (path and reason) and the others are still ingested; files already ingested
in the run are skipped, so running it twice is harmless.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from butler import Butler, DataCoordinate, DatasetRef, FileDataset
from butler.datasets import DatasetIdGenEnum
from butler.errors import ButlerError, ConflictingDefinitionError

from ..errors import IngestError
from ._instrument import KNOWN_INSTRUMENTS, Instrument, RawFileInfo, _import_class, get_instrument

__all__ = ["IngestFailure", "IngestReport", "default_raw_run", "ingest_raws"]

_LOG = logging.getLogger("tasks.instruments.ingest")

TRANSFER_CHOICES = ("auto", "copy", "symlink", "hardlink", "direct", "move")


def default_raw_run(instrument: str) -> str:
    """The default RUN collection of an instrument's raws, ``<instrument>/raw/all`` (as in LSST)."""
    return f"{instrument}/raw/all"


@dataclasses.dataclass(frozen=True)
class IngestFailure:
    """A file that could not be ingested, and why."""

    path: Path
    reason: str
    unrecognised: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if str(self.path) not in self.reason else self.reason


@dataclasses.dataclass
class IngestReport:
    """What `ingest_raws` did.

    Attributes
    ----------
    refs : `list` [`DatasetRef`]
        The raw datasets ingested now.
    auxiliary_refs : `list` [`DatasetRef`]
        Other datasets ingested with them (SDSS fpM, psField, tsField).
    skipped : `list` [`pathlib.Path`]
        Raw files already ingested in the run (left alone).
    failures : `list` [`IngestFailure`]
        Files not ingested, with the reason.
    warnings : `list` [`str`]
        Problems that did not stop a raw's ingest (e.g. a missing auxiliary file).
    ignored : `list` [`pathlib.Path`]
        Files found by searching directories that no known instrument recognises (not raws).
    exposures : `int`
        Number of exposure records inserted now.
    runs : `list` [`str`]
        The RUN collections written to.
    """

    refs: list[DatasetRef] = dataclasses.field(default_factory=list)
    auxiliary_refs: list[DatasetRef] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failures: list[IngestFailure] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    ignored: list[Path] = dataclasses.field(default_factory=list)
    exposures: int = 0
    runs: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if no file failed."""
        return not self.failures

    def summary(self) -> str:
        """One line: ``"10 new raws (+30 auxiliary), 10 new exposures, 0 skipped, 0 failed"``."""
        return (
            f"{len(self.refs)} new raw{'s' if len(self.refs) != 1 else ''} (+{len(self.auxiliary_refs)} auxiliary), "
            f"{self.exposures} new exposure{'s' if self.exposures != 1 else ''}, "
            f"{len(self.skipped)} already ingested, {len(self.failures)} failed"
        ) + (f", {len(self.ignored)} non-raw files ignored" if self.ignored else "")

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  failed: {f}" for f in self.failures]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Reading headers (possibly in worker processes)


def _candidates(instrument: Instrument | None) -> list[type[Instrument]]:
    if instrument is not None:
        return [type(instrument)]
    classes = []
    for dotted in KNOWN_INSTRUMENTS.values():
        try:
            classes.append(_import_class(dotted))
        except ButlerError as err:  # an instrument package that does not import is simply not a candidate
            _LOG.debug("skipping instrument %s: %s", dotted, err)
    return classes


def _inspect(path: Path, instrument_class: str | None) -> RawFileInfo | IngestFailure:
    """Read, identify and translate one file; never raises (runs in worker processes)."""
    try:
        instrument = get_instrument(instrument_class) if instrument_class else None
        candidates = _candidates(instrument)
        reader = instrument or (candidates[0]() if candidates else None)
        if reader is None:
            raise IngestError("no instrument class could be imported")
        header = reader.read_header(path)
        if instrument is None:
            matches = [cls for cls in candidates if cls.can_read(header, path)]
            if not matches:
                return IngestFailure(
                    path,
                    f"{path}: no known instrument recognises this file's header "
                    f"(tried {', '.join(c.__name__ for c in candidates) or 'none'}); pass --instrument.",
                    unrecognised=True,
                )
            instrument = matches[0]()
        elif not type(instrument).can_read(header, path):
            _LOG.debug("%s: %s does not recognise the header; translating anyway", path, instrument.name)
        return instrument.translate_header(header, path)
    except IngestError as err:
        return IngestFailure(path, str(err))
    except Exception as err:  # a translator bug or an unexpected header must not stop the others
        return IngestFailure(path, f"cannot translate the header: {type(err).__name__}: {err}")


def _inspect_all(files: Sequence[Path], instrument: Instrument | None, processes: int) -> list[RawFileInfo | IngestFailure]:
    dotted = instrument.class_name() if instrument is not None else None
    if processes <= 1 or len(files) < 2:
        return [_inspect(p, dotted) for p in files]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(_inspect, files, [dotted] * len(files), chunksize=4))


def _check(path: Path, instrument_class: str) -> str | None:
    """Read a raw's data once; return why it cannot be read, or None (runs in worker processes)."""
    try:
        get_instrument(instrument_class).check_raw_file(path)
    except IngestError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - reported per file
        return f"{path}: cannot read the data: {type(err).__name__}: {err}"
    return None


def _check_all(infos: Sequence[RawFileInfo], instrument: Instrument, processes: int) -> list[str | None]:
    dotted = instrument.class_name()
    paths = [i.path for i in infos]
    if processes <= 1 or len(paths) < 2:
        return [_check(p, dotted) for p in paths]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(_check, paths, [dotted] * len(paths), chunksize=4))


# --------------------------------------------------------------------------------------------------
# Writing


def _sync_exposures(butler: Butler, infos: Sequence[RawFileInfo]) -> tuple[int, dict[int, str]]:
    """Sync day_obs and exposure records; return (inserted, {exposure id: conflict message})."""
    registry = butler.registry
    inserted = 0
    conflicts: dict[int, str] = {}
    by_exposure: dict[tuple[str, int], dict[str, Any]] = {}
    for info in infos:
        by_exposure.setdefault((info.instrument, info.exposure_id), info.exposure)
    for (instrument, exposure), record in by_exposure.items():
        try:
            with registry.transaction():
                registry.sync_dimension_data("day_obs", {"instrument": instrument, "id": int(record["day_obs"])})
                inserted += registry.sync_dimension_data("exposure", record)
        except ConflictingDefinitionError as err:
            conflicts[exposure] = (
                f"exposure {exposure} of {instrument} is already registered with other metadata: {err} "
                "(two files claim the same exposure, or the translator changed)"
            )
    return inserted, conflicts


def _ingest_batch(
    butler: Butler, infos: Sequence[RawFileInfo], run: str, transfer: str, report: IngestReport
) -> None:
    """Ingest raws + auxiliary files of a batch in one transaction; on failure retry file by file."""
    datasets: list[FileDataset] = []
    for info in infos:
        datasets.append(FileDataset(info.path, "raw", info.data_id, formatter=info.formatter))
        datasets += info.auxiliary
    try:
        refs = butler.ingest(
            *datasets, transfer=transfer, run=run, skip_existing=True, id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN
        )
    except ButlerError as err:
        if len(infos) == 1:
            report.failures.append(IngestFailure(infos[0].path, f"cannot ingest: {err}"))
            return
        _LOG.info("batch ingest failed (%s); retrying file by file", err)
        for info in infos:
            _ingest_batch(butler, [info], run, transfer, report)
        return
    for ref in refs:
        (report.refs if ref.dataset_type.name == "raw" else report.auxiliary_refs).append(ref)


def ingest_raws(
    butler: Butler,
    files: Iterable[str | Path],
    *,
    instrument: str | Instrument | None = None,
    run: str | None = None,
    transfer: str = "auto",
    processes: int = 1,
    batch_size: int = 200,
    check_data: bool = True,
    progress: bool = False,
) -> IngestReport:
    """Ingest raw files (and the auxiliary files their instrument finds beside them) into a repository.

    For each file: read the header, identify the instrument (or use ``instrument``), register the
    instrument and its dataset types if needed, sync the ``day_obs`` and ``exposure`` records, then
    ingest the raw with its instrument's raw formatter.  Each batch of files is one transaction.

    Parameters
    ----------
    butler : `butler.Butler`
        A writeable butler.
    files : iterable of `str` or `pathlib.Path`
        Raw files, or directories searched recursively for the instrument's raw file patterns
        (``fpC-*.fit.gz`` for SDSS).
    instrument : `str` or `Instrument`, optional
        The instrument of all files (short name, dotted path or instance); default: identified from
        each header among the known instruments.
    run : `str`, optional
        RUN collection (default ``<INSTRUMENT>/raw/all``, e.g. ``SDSS/raw/all``).
    transfer : `str`, optional
        ``auto`` (copy files from outside the repository), ``copy``, ``symlink``, ``hardlink``,
        ``direct`` (record the absolute path; the file stays where it is) or ``move``.
    processes : `int`, optional
        Worker processes that read headers (and check data) in parallel.
    batch_size : `int`, optional
        Files per transaction.
    check_data : `bool`, optional
        Read every file's data once, so truncated files fail here (not in a pipeline).
    progress : `bool`, optional
        Show a progress bar on stderr.

    Returns
    -------
    report : `IngestReport`
        Ingested refs, skipped files (already ingested), failures with reasons, warnings.

    Raises
    ------
    IngestError
        If a location does not exist, ``transfer`` is unknown, or ``instrument`` is unknown.
        Unreadable or untranslatable *files* do not raise: they are listed in ``report.failures``.
    """
    if transfer not in TRANSFER_CHOICES:
        raise IngestError(f"unknown transfer mode {transfer!r}; choose one of {', '.join(TRANSFER_CHOICES)}.")
    inst = get_instrument(instrument) if instrument is not None else None
    paths, searched = _expand(files, inst)
    report = IngestReport()
    if not paths:
        return report
    results = _inspect_all(paths, inst, processes)
    infos: list[RawFileInfo] = []
    seen: dict[tuple[str, int, int], Path] = {}
    for path, result in zip(paths, results):
        if isinstance(result, IngestFailure):
            if result.unrecognised and path in searched:  # found by a directory search: not a raw
                report.ignored.append(path)
            else:
                report.failures.append(result)
            continue
        key = (result.instrument, result.exposure_id, result.detector)
        if key in seen:
            report.failures.append(
                IngestFailure(result.path, f"same exposure {key[1]} and detector {key[2]} as {seen[key]}; not ingested")
            )
            continue
        seen[key] = result.path
        report.warnings += result.warnings
        infos.append(result)
    by_instrument: dict[str, list[RawFileInfo]] = {}
    for info in infos:
        by_instrument.setdefault(info.instrument, []).append(info)
    for name, group in by_instrument.items():
        instrument_obj = inst if inst is not None and inst.name == name else get_instrument(name)
        _ingest_instrument(butler, instrument_obj, group, run or default_raw_run(name), transfer, batch_size,
                           progress, report, processes if check_data else 0)
    for failure in report.failures:
        _LOG.info("not ingested: %s", failure)
    return report


def _ingest_instrument(
    butler: Butler,
    instrument: Instrument,
    infos: list[RawFileInfo],
    run: str,
    transfer: str,
    batch_size: int,
    progress: bool,
    report: IngestReport,
    check_processes: int,
) -> None:
    """Ingest one instrument's files; ``check_processes`` = 0 skips reading the data first."""
    instrument.register(butler.registry)
    instrument.register_dataset_types(butler)
    butler.registry.register_run(run)
    if run not in report.runs:
        report.runs.append(run)
    # Skip raws already in the run (re-ingest is a no-op), in one query.
    raw_type = butler.registry.get_dataset_type("raw")
    data_ids = [
        DataCoordinate.standardize(i.data_id, universe=butler.dimensions, dimensions=raw_type.dimensions) for i in infos
    ]
    existing = butler.registry.find_datasets("raw", data_ids, collections=[run]) if data_ids else {}
    todo = []
    for info, data_id in zip(infos, data_ids):
        if data_id in existing:
            report.skipped.append(info.path)
        else:
            todo.append(info)
    if todo and check_processes:  # only files not ingested yet: a re-run does not read data again
        problems = _check_all(todo, instrument, check_processes)
        report.failures += [IngestFailure(i.path, p) for i, p in zip(todo, problems) if p is not None]
        todo = [i for i, p in zip(todo, problems) if p is None]
    if not todo:
        return
    inserted, conflicts = _sync_exposures(butler, todo)
    report.exposures += inserted
    ready = []
    for info in todo:
        if info.exposure_id in conflicts:
            report.failures.append(IngestFailure(info.path, conflicts[info.exposure_id]))
        else:
            ready.append(info)
    batches = [ready[i : i + batch_size] for i in range(0, len(ready), batch_size)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ready), unit="file", desc=f"ingest {instrument.name}", leave=False)
    for batch in batches:
        _ingest_batch(butler, batch, run, transfer, report)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()


def _expand(files: Iterable[str | Path], instrument: Instrument | None) -> tuple[list[Path], set[Path]]:
    """Files as given; directories searched recursively with the raw patterns of the (known) instruments.

    Returns the files and the subset found by searching directories.
    """
    locations = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    found: list[Path] = []
    searched: set[Path] = set()
    for loc in locations:
        if loc.is_dir():
            finders = [instrument] if instrument is not None else [cls() for cls in _candidates(None)]
            for finder in finders:
                matches = finder.find_raws([loc])
                found += matches
                searched.update(matches)
        elif loc.exists():
            found.append(loc)
        else:
            raise IngestError(f"cannot ingest {loc}: no such file or directory.")
    return list(dict.fromkeys(found)), searched
