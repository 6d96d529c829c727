"""Shared machinery of the ``butler`` and ``pipetask`` command lines.

Error handling (a user error prints ``Error: <message>`` and exits with 1; ``--log-level DEBUG`` shows
the traceback), logging to standard error, and printing rows as astropy tables or JSON.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import click
import numpy as np
from astropy.table import Table
from astropy.time import Time

from .errors import ButlerError, EmptyQueryResultError
from .registry import CollectionType

# Error handling and logging ---------------------------------------------------------------------------


def debug(ctx: click.Context) -> bool:
    return ctx.find_root().params.get("log_level") == "DEBUG"


def fail(ctx: click.Context, message: str) -> None:
    """Print ``Error: message`` (after the traceback with ``--log-level DEBUG``) and exit with 1."""
    if debug(ctx):
        click.echo(traceback.format_exc().rstrip(), err=True)
    click.echo(f"Error: {message}", err=True)
    ctx.exit(1)


class ErrorHandlingCommand(click.Command):
    """A command that turns library errors into messages and exit codes instead of tracebacks.

    ``handled_errors`` are the exception classes whose message is shown to the user as is.
    """

    handled_errors: ClassVar[tuple[type[BaseException], ...]] = (ButlerError,)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmptyQueryResultError as err:
            report_empty(err.reasons, ctx.params.get("fmt", "table"))
            return None
        except self.handled_errors as err:
            fail(ctx, str(err))
        except OSError as err:  # unreadable input files, full disks, permissions
            fail(ctx, str(err))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:  # a bug: say so, keep the traceback for DEBUG
            if debug(ctx):
                raise
            fail(
                ctx,
                f"unexpected {type(err).__name__}: {err}\n"
                "This is a bug; rerun with --log-level DEBUG for the traceback and report it.",
            )
        return None


class ErrorHandlingGroup(click.Group):
    command_class = ErrorHandlingCommand


class EchoHandler(logging.Handler):
    """Log to the *current* standard error (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(ctx: click.Context, level: str, logger: str = "butler") -> None:
    """Send the records of ``logger`` (and its children) at ``level`` to standard error until the
    command ends (``""`` is the root logger: every task's log)."""
    log = logging.getLogger(logger)
    handler = EchoHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(level)

    def restore() -> None:  # matters when the CLI runs inside another process (tests, notebooks)
        log.removeHandler(handler)
        log.setLevel(previous)

    ctx.call_on_close(restore)


# Output --------------------------------------------------------------------------------------------------


def region_summary(region: Any) -> str:
    from lsst.sphgeom import LonLat

    circle = region.getBoundingCircle()
    centre = LonLat(circle.getCenter())
    size = f"{len(region.getVertices())} vertices, " if hasattr(region, "getVertices") else ""
    return (
        f"{type(region).__name__}({size}centre ra={centre.getLon().asDegrees():.4f} "
        f"dec={centre.getLat().asDegrees():.4f})"
    )


def plain(value: Any) -> Any:
    """Return a JSON-safe form of a cell: UUIDs and paths as strings, times as ISO TAI, numpy as Python."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, CollectionType):
        return value.name
    if isinstance(value, uuid.UUID | Path):
        return str(value)
    if isinstance(value, Time):
        return value.tai.isot
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "getBoundingCircle"):  # an lsst.sphgeom region
        return region_summary(value)
    return str(value)


def table_cell(value: Any) -> Any:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return value


def format_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lay out rows (dicts with the same keys) as an astropy table; text columns are left-aligned."""
    columns: dict[str, list[Any]] = {name: [] for name in rows[0]}
    for row in rows:
        for name in columns:
            columns[name].append(table_cell(row.get(name)))
    table = Table()
    for name, values in columns.items():
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        table[name] = values if numeric else [str(v) for v in values]
        if not numeric:
            table[name].format = "<"
    return table.pformat(max_lines=-1, max_width=-1)


def output(fmt: str, *tables: Sequence[Mapping[str, Any]], empty: str | None = None) -> None:
    """Print query results: each table as an astropy table, or all rows as one JSON list.

    Parameters
    ----------
    fmt : `str`
        ``"table"`` or ``"json"``.
    *tables : sequence of `dict`
        Rows of each table (one table per dataset type in ``query-datasets``); the keys of a table's
        first row are its columns.
    empty : `str`, optional
        Message printed on standard error when there are no rows at all.
    """
    if fmt == "json":
        click.echo(json.dumps([{k: plain(v) for k, v in row.items()} for t in tables for row in t], indent=2))
        if empty and not any(tables):
            click.echo(empty, err=True)
        return
    printed = False
    for rows in tables:
        if not rows:
            continue
        if printed:
            click.echo("")
        click.echo("\n".join(format_table(rows)))
        printed = True
    if not printed and empty:
        click.echo(empty, err=True)


def report_empty(reasons: Iterable[str], fmt: str) -> None:
    click.echo("No results.", err=True)
    for reason in dict.fromkeys(reasons):
        click.echo(f"  - {reason}", err=True)
    if fmt == "json":
        click.echo("[]")


def say(fmt: str, message: str) -> None:
    """Print a human-readable message: on standard output, or standard error with ``--format json``."""
    click.echo(message, err=(fmt == "json"))


# Options and argument parsing --------------------------------------------------------------------------


def split_commas(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def parse_value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_key_values(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, Any]:
    """Parse repeated (or comma-separated) ``NAME=VALUE`` options; ints and floats are converted."""
    out: dict[str, Any] = {}
    for value in values:
        for item in value.split(",") if param.name == "data_id" else [value]:
            name, sep, text = item.partition("=")
            if not sep or not name.strip():
                raise click.BadParameter(f"{item!r} is not of the form NAME=VALUE.", ctx=ctx, param=param)
            out[name.strip()] = parse_value(text.strip())
    return out


LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

#: The ``--log-level`` option of both command groups.
log_level_option = click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    callback=lambda ctx, param, value: value.upper(),
    help="Logging level; DEBUG also prints the tracebacks of errors.",
)
