"""The ``butler`` command line: create, query, ingest into and repair a data repository.

Every command takes the repository root (``REPO``) as its first argument, as in the LSST stack::

    butler create repo
    butler register-dataset-type repo calexp ExposureF instrument visit detector
    butler ingest-files repo raw u/me/raw files.ecsv --data-id instrument=SimCam
    butler query-datasets repo calexp -c u/me/run -d "visit IN (1..10) AND band = 'r'" --show-uri
    butler query-data-ids repo visit detector -d "band = 'r'" --format json
    butler query-provenance repo 5c0f...e2 --format json        # how a dataset was made
    butler certify-calibrations repo u/me/skyFrames SimCam/calib skyFrame --begin-date 2024-01-01T00:00:00

Query results are printed as astropy tables, or with ``--format json`` as one JSON list of row
objects (UUIDs and times as strings) and nothing else on standard output.  Errors the user can act on
(`butler.errors.ButlerError`) print ``Error: <message>`` on standard error and exit with code 1; a
query that finds nothing prints ``No results.`` and the reasons on standard error and exits with 0;
bad command-line usage exits with 2.  ``--log-level DEBUG`` adds the tracebacks.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
from astropy.table import Table

from ._butler import Butler, FileDataset, VerifyReport
from .cli_utils import (
    ErrorHandlingCommand,
    ErrorHandlingGroup,
    configure_logging,
    format_table,
    log_level_option,
    output,
    parse_key_values,
    say,
    split_commas,
)
from .datasets import DatasetIdGenEnum, DatasetType
from .datastore import StoredFileInfo
from .dimensions import DimensionUniverse
from .errors import ButlerError, EmptyQueryResultError
from .registry import CollectionType, DatasetAssociation, Registry
from .timespan import Timespan

__all__ = ["cli", "main"]

_GLOB_CHARS = frozenset("*?[")
_TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv"}


def _repo_argument(f: Callable) -> Callable:
    return click.argument("repo", type=click.Path(file_okay=False, path_type=str))(f)


def _format_option(f: Callable) -> Callable:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"], case_sensitive=False),
        default="table",
        show_default=True,
        help="Print an astropy table, or one JSON list of row objects for scripts.",
    )(f)


def _collections_option(help: str) -> Callable:
    return click.option("--collections", "-c", multiple=True, callback=split_commas, help=help)


_where_option = click.option(
    "--where", "-d", default="", help="A where-expression, e.g. \"visit IN (1..10) AND band = 'r'\"."
)
_bind_option = click.option(
    "--bind",
    multiple=True,
    callback=parse_key_values,
    metavar="NAME=VALUE",
    help="Value of a bind identifier in --where (repeatable); ints and floats are converted.",
)
_order_by_option = click.option(
    "--order-by",
    multiple=True,
    callback=split_commas,
    help="Sort by dimensions or record fields (visit, -detector, visit.exposure_time).",
)
_limit_option = click.option("--limit", type=click.IntRange(min=0), default=None, help="Return at most N rows.")


@contextmanager
def _open(repo: str, *, writeable: bool = False) -> Iterator[Butler]:
    butler = Butler(repo, writeable=writeable)
    try:
        yield butler
    finally:
        butler.close()


# The command group -----------------------------------------------------------------------------------


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@log_level_option
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """Create, query and manage a Butler Pipelines data repository (REPO is its root directory)."""
    configure_logging(ctx, log_level)


def main() -> None:
    """Entry point of the ``butler`` console script."""
    cli(prog_name="butler")


@cli.command()
@_repo_argument
@click.option("--db", default=None, help="SQLAlchemy URL of the registry database (default: SQLite in REPO).")
def create(repo: str, db: str | None) -> None:
    """Create an empty repository at REPO."""
    butler = Butler.create(repo, db=db)
    root = butler.config.root
    butler.close()
    click.echo(f"Created an empty butler repository at {root}.")


# Queries ------------------------------------------------------------------------------------------------


def _chain_tree(registry: Registry, name: str, depth: int, rows: list[dict[str, Any]]) -> None:
    ctype = registry.get_collection_type(name)
    rows.append({"Name": name, "Type": ctype.name, "Depth": depth})
    if ctype is CollectionType.CHAINED:
        for child in registry.get_collection_chain(name):
            _chain_tree(registry, child, depth + 1, rows)


@cli.command("query-collections")
@_repo_argument
@click.argument("glob", nargs=-1)
@click.option(
    "--collection-type",
    multiple=True,
    type=click.Choice([t.name for t in CollectionType], case_sensitive=False),
    help="Only collections of this type (repeatable).",
)
@click.option(
    "--chains",
    type=click.Choice(["table", "tree", "flatten"], case_sensitive=False),
    default="table",
    show_default=True,
    help="table: list a chain's children; tree: show them indented, recursively; flatten: replace "
    "chains by the collections they search.",
)
@_format_option
def query_collections(
    repo: str, glob: tuple[str, ...], collection_type: tuple[str, ...], chains: str, fmt: str
) -> None:
    """List the collections whose names match GLOB patterns (default: all)."""
    chains = chains.lower()
    types = [CollectionType[t.upper()] for t in collection_type] or None
    with _open(repo) as butler:
        registry = butler.registry
        records = registry.query_collections(list(glob) or "*", types=types, flatten_chains=(chains == "flatten"))
        rows: list[dict[str, Any]] = []
        if chains == "tree":
            for record in records:
                _chain_tree(registry, record.name, 0, rows)
            if fmt != "json":
                rows = [{"Name": "  " * r["Depth"] + r["Name"], "Type": r["Type"]} for r in rows]
        elif chains == "flatten":
            rows = [{"Name": r.name, "Type": r.type.name} for r in records]
        else:
            rows = [
                {
                    "Name": r.name,
                    "Type": r.type.name,
                    "Children": list(registry.get_collection_chain(r.name)) if r.type is CollectionType.CHAINED else [],
                }
                for r in records
            ]
    output(fmt, rows, empty="No collections match.")


@cli.command("query-dataset-types")
@_repo_argument
@click.argument("glob", nargs=-1)
@click.option("--verbose", "-v", is_flag=True, help="Also show dimensions and storage classes.")
@_format_option
def query_dataset_types(repo: str, glob: tuple[str, ...], verbose: bool, fmt: str) -> None:
    """List the registered dataset types whose names match GLOB patterns (default: all)."""
    with _open(repo) as butler:
        types = butler.registry.query_dataset_types(list(glob) or "*")
    rows = [
        {"name": t.name}
        | (
            {
                "dimensions": list(t.dimensions.required),
                "storage_class": t.storage_class,
                "is_calibration": t.is_calibration,
            }
            if verbose
            else {}
        )
        for t in types
    ]
    output(fmt, rows, empty="No dataset types match.")


@cli.command("query-data-ids")
@_repo_argument
@click.argument("dimensions", nargs=-1, required=True)
@_collections_option("Collections to search for --datasets (repeatable or comma-separated).")
@click.option(
    "--datasets", multiple=True, callback=split_commas, help="Dataset types that must exist for each data ID."
)
@_where_option
@_bind_option
@_order_by_option
@_limit_option
@_format_option
def query_data_ids(
    repo: str,
    dimensions: tuple[str, ...],
    collections: tuple[str, ...],
    datasets: tuple[str, ...],
    where: str,
    bind: dict[str, Any],
    order_by: tuple[str, ...],
    limit: int | None,
    fmt: str,
) -> None:
    """List the data IDs over DIMENSION... that satisfy the constraints (one column per dimension)."""
    with _open(repo) as butler:
        data_ids = butler.query_data_ids(
            list(dimensions),
            where=where,
            bind=bind,
            datasets=list(datasets) or None,
            collections=list(collections) or None,
            order_by=list(order_by),
            limit=limit,
        )
    rows = [{k: data_id[k] for k in data_id.dimensions.data_coordinate_keys} for data_id in data_ids]
    output(fmt, rows, empty="No results.")


def _resolve_dataset_types(registry: Registry, names: Sequence[str]) -> list[DatasetType]:
    """Registered dataset types for names and glob patterns (all of them for none); unknown names raise."""
    if not names:
        return registry.query_dataset_types("*")
    out: dict[str, DatasetType] = {}
    for name in names:
        if _GLOB_CHARS & set(name):
            out.update((t.name, t) for t in registry.query_dataset_types(name))
        else:
            dt = registry.get_dataset_type(name)
            out[dt.name] = dt
    return list(out.values())


def _validity_rows(
    row: dict[str, Any], certifications: Sequence[DatasetAssociation]
) -> list[dict[str, Any]]:
    """One row per certification of a dataset (or one row with empty validity columns if it has none)."""
    if not certifications:
        return [row | {"calibration": None, "valid_from": None, "valid_until": None}]
    return [
        row | {"calibration": a.collection, "valid_from": a.timespan.begin, "valid_until": a.timespan.end}
        for a in certifications
        if a.timespan is not None
    ]


@cli.command("query-datasets")
@_repo_argument
@click.argument("dataset_type", nargs=-1)
@_collections_option("Collections to search (repeatable, comma-separated or glob patterns; default: all).")
@_where_option
@_bind_option
@click.option(
    "--find-first/--no-find-first",
    default=False,
    show_default=True,
    help="Per data ID, only the dataset of the first collection (in --collections order) that has one.",
)
@_order_by_option
@_limit_option
@click.option("--show-uri", is_flag=True, help="Add the absolute path of each dataset's file.")
@_format_option
def query_datasets(
    repo: str,
    dataset_type: tuple[str, ...],
    collections: tuple[str, ...],
    where: str,
    bind: dict[str, Any],
    find_first: bool,
    order_by: tuple[str, ...],
    limit: int | None,
    show_uri: bool,
    fmt: str,
) -> None:
    """List datasets of the DATASET_TYPEs (names or globs; default: all), one table per dataset type.

    A calibration dataset type searched in CALIBRATION collections gets one row per certification,
    with the collection and its validity range (``valid_from`` inclusive, ``valid_until`` exclusive,
    TAI; empty when unbounded).
    """
    if find_first and not collections:
        raise click.UsageError("--find-first needs --collections in search order (no glob patterns).")
    tables: list[list[dict[str, Any]]] = []
    reasons: list[str] = []
    with _open(repo) as butler:
        types = _resolve_dataset_types(butler.registry, dataset_type)
        if not types:
            output(fmt, empty="No dataset types match." if dataset_type else "No dataset types are registered.")
            return
        for dt in types:
            try:
                refs = butler.query_datasets(
                    dt.name,
                    list(collections) or ["*"],
                    find_first=find_first,
                    where=where,
                    bind=bind,
                    order_by=list(order_by),
                    limit=limit,
                )
            except EmptyQueryResultError as err:
                reasons += [f"{dt.name}: {r}" for r in err.reasons]
                continue
            records = butler.registry.get_datastore_records([r.id for r in refs]) if show_uri else {}
            certified: dict[Any, list[DatasetAssociation]] | None = None
            if dt.is_calibration:
                certified = {}
                for association in butler.registry.query_dataset_associations(
                    dt.name, list(collections) or ["*"], collection_types=[CollectionType.CALIBRATION],
                    where=where, bind=bind,
                ):
                    certified.setdefault(association.ref.id, []).append(association)
            rows = []
            for ref in refs:
                row: dict[str, Any] = {"type": dt.name, "run": ref.run, "id": ref.id, **ref.data_id.required}
                if show_uri:
                    record = records.get(ref.id)
                    row["URI"] = butler.datastore.abspath(StoredFileInfo(**record)) if record else None
                if certified:
                    rows += _validity_rows(row, certified.get(ref.id, []))
                else:
                    rows.append(row)
            tables.append(rows)
    if not tables:
        raise EmptyQueryResultError(reasons)
    output(fmt, *tables)


@cli.command("query-dimension-records")
@_repo_argument
@click.argument("element")
@_where_option
@_bind_option
@_order_by_option
@_limit_option
@_format_option
def query_dimension_records(
    repo: str, element: str, where: str, bind: dict[str, Any], order_by: tuple[str, ...], limit: int | None, fmt: str
) -> None:
    """List the records of a dimension ELEMENT (times in ISO TAI, regions summarised)."""
    with _open(repo) as butler:
        records = butler.query_dimension_records(element, where=where, bind=bind, order_by=list(order_by), limit=limit)
    rows = [record.to_dict() for record in records]
    output(fmt, rows, empty="No results.")


@cli.command("query-provenance")
@_repo_argument
@click.argument("dataset_id")
@click.option("--depth", default=None, type=click.IntRange(min=0), help="Follow at most this many quanta back.")
@_format_option
def query_provenance(repo: str, dataset_id: str, depth: int | None, fmt: str) -> None:
    """Print how the dataset DATASET_ID was made, back to the raws: per level, the dataset (type, data ID,
    run, ID) and the quantum that wrote it (task label and class, config / code / package hashes, host,
    start and end, status).  ``--format json`` prints the chain as one nested object."""
    import json
    import uuid

    from .provenance import provenance_chain

    try:
        key = uuid.UUID(dataset_id)
    except ValueError:
        raise click.BadParameter(f"{dataset_id!r} is not a dataset ID (a UUID).", param_hint="DATASET_ID") from None
    with _open(repo) as butler:
        chain = provenance_chain(butler.registry, key, max_depth=depth)
    if fmt == "json":
        click.echo(json.dumps(chain.to_simple(), indent=2))
    else:
        click.echo("\n".join(chain.format()))


# Writes -------------------------------------------------------------------------------------------------


@cli.command("register-dataset-type")
@_repo_argument
@click.argument("name")
@click.argument("storage_class")
@click.argument("dimensions", nargs=-1)
@click.option("--is-calibration", is_flag=True, help="The dataset type may be certified into CALIBRATION collections.")
def register_dataset_type(
    repo: str, name: str, storage_class: str, dimensions: tuple[str, ...], is_calibration: bool
) -> None:
    """Register dataset type NAME with a STORAGE_CLASS and DIMENSION... (none for a global dataset)."""
    with _open(repo, writeable=True) as butler:
        new = butler.register_dataset_type(name, list(dimensions), storage_class, is_calibration=is_calibration)
        dt = butler.get_dataset_type(name)
    shown = f"dimensions {{{', '.join(dt.dimensions.required)}}}, storage class {dt.storage_class}"
    if new:
        click.echo(f"Registered dataset type {name!r} ({shown}).")
    else:
        click.echo(f"Dataset type {name!r} was already registered with this definition ({shown}).")


def _read_file_table(path: Path) -> Table:
    fmt = _TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise click.BadParameter(
            f"{path.name}: the table must be ECSV (.ecsv) or CSV (.csv).", param_hint="'TABLE_FILE'"
        )
    try:
        return Table.read(path, format=fmt)
    except OSError:
        raise
    except Exception as err:  # astropy raises several types for malformed tables
        raise ButlerError(f"cannot read {path} as {fmt}: {err}") from None


def _data_id_value(universe: DimensionUniverse, key: str, value: Any) -> Any:
    """A table cell or option value as the Python type of dimension ``key`` (left alone if unknown)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    spec = universe.dimensions[key].key if key in universe.dimensions else None
    if spec is None:
        return value
    try:
        return int(value) if spec.type == "int" else str(value) if spec.type == "string" else value
    except (TypeError, ValueError):
        return value  # the butler reports the bad value with the dimension's name


@cli.command("ingest-files")
@_repo_argument
@click.argument("dataset_type")
@click.argument("run")
@click.argument("table_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data-id",
    multiple=True,
    callback=parse_key_values,
    metavar="KEY=VALUE",
    help="Data ID values shared by every file (repeatable or comma-separated).",
)
@click.option(
    "--prefix",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory that relative file paths are relative to (default: the table's directory).",
)
@click.option(
    "--transfer",
    type=click.Choice(["auto", "copy", "move", "hardlink", "symlink", "direct"], case_sensitive=False),
    default="auto",
    show_default=True,
)
@click.option("--formatter", default=None, help="Dotted path of the formatter that reads the files.")
@click.option(
    "--id-generation-mode",
    type=click.Choice([m.name for m in DatasetIdGenEnum], case_sensitive=False),
    default="UNIQUE",
    show_default=True,
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Leave out files whose dataset type and data ID are already in RUN (to finish an interrupted ingest).",
)
def ingest_files(
    repo: str,
    dataset_type: str,
    run: str,
    table_file: Path,
    data_id: dict[str, Any],
    prefix: Path | None,
    transfer: str,
    formatter: str | None,
    id_generation_mode: str,
    skip_existing: bool,
) -> None:
    """Ingest the files listed in TABLE_FILE as DATASET_TYPE datasets of RUN, in one transaction.

    TABLE_FILE is an ECSV or CSV table whose first column is the file path and whose other columns are
    data ID values.
    """
    table = _read_file_table(table_file)
    if len(table) == 0 or not table.colnames:
        raise ButlerError(f"{table_file} lists no files; nothing was ingested.")
    base = prefix if prefix is not None else table_file.parent
    path_column, *id_columns = table.colnames
    clash = sorted(set(data_id) & set(id_columns))
    if clash:
        raise click.BadParameter(f"{', '.join(clash)} given both here and as table columns.", param_hint="'--data-id'")
    with _open(repo, writeable=True) as butler:
        universe = butler.dimensions
        common = {k: _data_id_value(universe, k, v) for k, v in data_id.items()}
        datasets = []
        for row in table:
            values = dict(common)
            for name in id_columns:
                if not np.ma.is_masked(row[name]):
                    values[name] = _data_id_value(universe, name, row[name])
            path = Path(str(row[path_column])).expanduser()
            datasets.append(FileDataset(path if path.is_absolute() else base / path, dataset_type, values, formatter))
        refs = butler.ingest(
            *datasets,
            transfer=transfer.lower(),
            run=run,
            id_generation_mode=DatasetIdGenEnum[id_generation_mode.upper()],
            skip_existing=skip_existing,
        )
    click.echo(f"Ingested {len(refs)} {dataset_type!r} dataset(s) into run {run!r}.")


@cli.command("collection-chain")
@_repo_argument
@click.argument("parent")
@click.argument("children", nargs=-1, callback=split_commas)
@click.option(
    "--mode",
    type=click.Choice(["redefine", "extend", "prepend", "remove", "pop"], case_sensitive=False),
    default="redefine",
    show_default=True,
    help="redefine: set the children; extend/prepend: add at the end/start; remove: take out; pop: take "
    "out the children at these 0-based positions (default 0).",
)
@click.option("--flatten", is_flag=True, help="Store the flattened search path of the children.")
def collection_chain(repo: str, parent: str, children: tuple[str, ...], mode: str, flatten: bool) -> None:
    """Create or modify the CHAINED collection PARENT; CHILDREN may also be comma-separated."""
    mode = mode.lower()
    if not children and mode != "pop":
        raise click.UsageError(f"--mode {mode} needs at least one child collection.")
    if mode == "pop":
        bad = [c for c in children if not c.lstrip("-").isdigit()]
        if bad:
            raise click.BadParameter(
                f"--mode pop takes 0-based positions, got {', '.join(bad)}.", param_hint="CHILDREN"
            )
    with _open(repo, writeable=True) as butler:
        chain = butler.collection_chain(parent, list(children), mode=mode, flatten=flatten)
    click.echo(f"[{', '.join(chain)}]")


def _parent_chains(registry: Registry) -> dict[str, list[str]]:
    """Child collection name -> names of the CHAINED collections that list it directly."""
    parents: dict[str, list[str]] = {}
    for record in registry.query_collections("*", types=[CollectionType.CHAINED]):
        for child in registry.get_collection_chain(record.name):
            parents.setdefault(child, []).append(record.name)
    return parents


@cli.command("certify-calibrations")
@_repo_argument
@click.argument("input_run")
@click.argument("output_collection")
@click.argument("dataset_type")
@click.option(
    "--begin-date",
    default=None,
    help="Start of the validity range, ISO 8601 in TAI (e.g. 2024-01-01T00:00:00); default: unbounded.",
)
@click.option(
    "--end-date", default=None, help="End of the validity range (exclusive), ISO 8601 in TAI; default: unbounded."
)
@click.option(
    "--search-all-inputs",
    is_flag=True,
    help="When INPUT_RUN is a CHAINED collection, take the datasets from its whole search path (first match per "
    "data ID) instead of only from its first child.",
)
def certify_calibrations(
    repo: str, input_run: str, output_collection: str, dataset_type: str, begin_date: str | None,
    end_date: str | None, search_all_inputs: bool,
) -> None:
    """Certify the DATASET_TYPE calibrations of INPUT_RUN into the CALIBRATION collection OUTPUT_COLLECTION.

    OUTPUT_COLLECTION is created if needed.  The datasets become valid from --begin-date until
    --end-date (TAI); a lookup at a time in that range (e.g. a quantum's visit) finds them.  Validity
    ranges of one data ID may not overlap within OUTPUT_COLLECTION.
    """
    timespan = Timespan(begin_date, end_date)
    with _open(repo, writeable=True) as butler:
        registry = butler.registry
        source = input_run
        if not search_all_inputs and registry.get_collection_type(input_run) is CollectionType.CHAINED:
            children = registry.get_collection_chain(input_run)
            if not children:
                raise ButlerError(f"chained collection {input_run!r} is empty; nothing was certified.")
            source = children[0]
        # The datasets to certify come from RUN/TAGGED collections; certified ones would need a time to be found.
        search = [c.name for c in registry.resolve_collections(source) if c.type is not CollectionType.CALIBRATION]
        refs = butler.query_datasets(dataset_type, search, find_first=True, explain=False) if search else []
        if not refs:
            raise ButlerError(
                f"there are no {dataset_type!r} datasets in {source!r}; nothing was certified. Check the input "
                "collection (`butler query-datasets`)"
                + ("" if search_all_inputs else ", or pass --search-all-inputs to search a whole chain")
                + "."
            )
        with registry.transaction():
            registry.register_collection(output_collection, CollectionType.CALIBRATION)
            n = registry.certify(output_collection, refs, timespan)
    click.echo(
        f"Certified {n} {dataset_type!r} dataset(s) from {source!r} into CALIBRATION collection "
        f"{output_collection!r}, valid {timespan}."
    )


@cli.command("remove-collection")
@_repo_argument
@click.argument("name")
@click.option("--no-confirm", is_flag=True, help="Remove without asking.")
def remove_collection(repo: str, name: str, no_confirm: bool) -> None:
    """Remove the TAGGED, CALIBRATION or CHAINED collection NAME (its datasets stay in their runs).

    Use remove-runs for RUN collections.
    """
    with _open(repo, writeable=True) as butler:
        registry = butler.registry
        ctype = registry.get_collection_type(name)
        if ctype is CollectionType.RUN:
            raise ButlerError(f"{name!r} is a RUN collection; remove it with `butler remove-runs` (which deletes its datasets).")
        if not no_confirm and not click.confirm(f"Remove {ctype.name} collection {name!r}?", default=False):
            click.echo("Aborted; nothing was removed.")
            return
        registry.remove_collection(name)
    click.echo(f"Removed {ctype.name} collection {name!r}.")


@cli.command("remove-runs")
@_repo_argument
@click.argument("glob", nargs=-1, required=True)
@click.option("--no-confirm", is_flag=True, help="Remove without asking.")
def remove_runs(repo: str, glob: tuple[str, ...], no_confirm: bool) -> None:
    """Remove the RUN collections matching GLOB patterns with their datasets and files.

    The runs are also taken out of the chains that list them.
    """
    with _open(repo, writeable=True) as butler:
        registry = butler.registry
        matched = registry.query_collections(list(glob))
        runs = [r.name for r in matched if r.type is CollectionType.RUN]
        others = [f"{r.name} ({r.type.name})" for r in matched if r.type is not CollectionType.RUN]
        if others:
            click.echo(f"Not removed (not RUN collections): {', '.join(others)}.")
        if not runs:
            click.echo(f"No RUN collections match {' '.join(glob)}; nothing to remove.")
            return
        parents = _parent_chains(registry)
        rows = [
            {"Run": name, "Datasets": len(registry.refs_in_runs([name])), "Removed from chains": parents.get(name, [])}
            for name in runs
        ]
        click.echo("\n".join(format_table(rows)))
        if not no_confirm and not click.confirm(
            f"Remove these {len(runs)} run(s) and their datasets' files?", default=False
        ):
            click.echo("Aborted; nothing was removed.")
            return
        n = butler.remove_runs(runs)
    click.echo(f"Removed {len(runs)} run(s) and {n} dataset(s).")


# Transfers ----------------------------------------------------------------------------------------------


@cli.command("export")
@_repo_argument
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_collections_option("Collections whose datasets are exported (repeatable, comma-separated or globs).")
@click.option("--dataset-type", multiple=True, callback=split_commas, help="Dataset types to export (default: all).")
@_where_option
@_bind_option
def export(
    repo: str,
    directory: Path,
    collections: tuple[str, ...],
    dataset_type: tuple[str, ...],
    where: str,
    bind: dict[str, Any],
) -> None:
    """Export datasets, their files, dimension records and collections to DIRECTORY."""
    with _open(repo) as butler:
        n = butler.export(
            directory,
            collections=list(collections) or None,
            dataset_types=list(dataset_type) or None,
            where=where,
            bind=bind,
        )
    click.echo(f"Exported {n} dataset(s) to {directory}.")


@cli.command("import")
@_repo_argument
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--transfer",
    type=click.Choice(["copy", "move", "hardlink", "symlink", "direct"], case_sensitive=False),
    default="copy",
    show_default=True,
)
def import_(repo: str, directory: Path, transfer: str) -> None:
    """Import a DIRECTORY written by `butler export` into REPO."""
    with _open(repo, writeable=True) as butler:
        n = butler.import_(directory, transfer=transfer.lower())
    click.echo(f"Imported {n} dataset(s) from {directory}.")


# Consistency ---------------------------------------------------------------------------------------------


def _verify_rows(report: VerifyReport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(problem: str, dataset_id: str | None, path: str | None, detail: str) -> None:
        rows.append({"problem": problem, "dataset_id": dataset_id, "path": path, "detail": detail})

    for dataset_id, path in report.missing_files:
        add("missing file", dataset_id, path, "registered dataset whose file is gone")
    for dataset_id, path, reason in report.corrupt_files:
        add("corrupt file", dataset_id, path, reason)
    for path in report.orphan_files:
        add("orphan file", None, path, "file no dataset refers to")
    for path in report.temp_files:
        add("temporary file", None, path, "left by an interrupted write")
    for dataset_id in report.datasets_without_records:
        add("no file record", dataset_id, None, "dataset with no datastore record")
    return rows


@cli.command("verify")
@_repo_argument
@click.option("--checksums", is_flag=True, help="Also re-hash every file (reads all the data).")
@click.option(
    "--fix",
    is_flag=True,
    help="Delete temporary files, move orphan files to REPO/.quarantine/ and unregister datasets whose "
    "file is missing.",
)
@_format_option
def verify(repo: str, checksums: bool, fix: bool, fmt: str) -> None:
    """Check that the registry and the files of REPO agree; exit with 1 if problems remain."""
    with _open(repo, writeable=fix) as butler:
        report = butler.verify(checksums=checksums, fix=fix)
    rows = _verify_rows(report)
    output(fmt, rows)
    counts = (
        f"{len(report.missing_files)} missing, {len(report.corrupt_files)} corrupt, "
        f"{len(report.orphan_files)} orphan and {len(report.temp_files)} temporary file(s); "
        f"{len(report.datasets_without_records)} dataset(s) without a file record"
    )
    if report.ok:
        say(fmt, "No problems found: the registry and the files agree.")
        return
    say(fmt, f"Found {counts}.")
    remaining = report.corrupt_files if report.fixed else rows
    if report.fixed:
        say(
            fmt,
            "Fixed: temporary files deleted, orphan files moved to .quarantine/, datasets with missing "
            "files or without records unregistered.",
        )
        if remaining:
            say(fmt, f"{len(remaining)} corrupt file(s) remain; remove their runs or re-ingest them.")
    else:
        say(fmt, "Rerun with --fix to repair.")
    if remaining:
        click.get_current_context().exit(1)


def _add_plugin_commands() -> None:
    """Add the commands other packages publish in the ``butler.cli`` entry-point group.

    Each entry point names a list of click commands (``tasks.cli:commands`` adds ``register-instrument``,
    ``ingest-raws``...); each must be an `ErrorHandlingCommand`.  A plugin that fails to import is
    reported on the log and left out, so the core commands keep working.
    """
    for entry in importlib.metadata.entry_points(group="butler.cli"):
        try:
            plugin_commands = entry.load()
        except Exception as err:  # a broken plugin must not take the core commands down
            logging.getLogger("butler.cli").warning("cannot load butler commands from %s: %s", entry.value, err)
            continue
        for command in plugin_commands:
            if not isinstance(command, ErrorHandlingCommand):
                logging.getLogger("butler.cli").warning(
                    "butler command %r from %s is left out: declare it with cls=butler.cli_utils.ErrorHandlingCommand "
                    "so that its errors are reported like the other commands'.",
                    command.name,
                    entry.value,
                )
                continue
            cli.add_command(command)


_add_plugin_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
