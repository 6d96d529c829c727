"""The exception hierarchy of the Data Butler.

Every error the butler raises on bad input derives from `ButlerError`, so a caller (and the
``butler`` CLI) can catch one class.  Each message names the thing that was wrong, where, the valid
choices when there are few, and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ButlerError",
    "CalibrationLookupError",
    "CollectionCycleError",
    "CollectionError",
    "CollectionTypeError",
    "ConfigError",
    "ConflictingDefinitionError",
    "CorruptDatasetError",
    "DataIdError",
    "DataIdValueError",
    "DatasetNotFoundError",
    "DatasetTypeError",
    "DatastoreError",
    "DimensionNameError",
    "DuplicateDatasetError",
    "EmptyQueryResultError",
    "ExpressionSyntaxError",
    "FileTemplateError",
    "FormatterError",
    "InvalidQueryError",
    "MissingCollectionError",
    "MissingDatasetTypeError",
    "QueryError",
    "ReadOnlyRepositoryError",
    "RepositoryNotFoundError",
    "RunLockedError",
    "StorageClassError",
    "TimespanError",
    "did_you_mean",
]


def did_you_mean(name: str, choices: Iterable[str], *, limit: int = 12) -> str:
    """Return a hint naming the closest valid choices for a misspelt name.

    Parameters
    ----------
    name : `str`
        The name the user gave.
    choices : iterable of `str`
        The valid names.
    limit : `int`, optional
        Most valid names to list; more are summarised by their count.

    Returns
    -------
    hint : `str`
        ``"Did you mean 'x'? Valid: a, b, c."``, or ``"Valid: a, b."``, or ``"None are defined."``.
    """
    valid = sorted(set(choices))
    if not valid:
        return "None are defined."
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    listed = ", ".join(valid[:limit]) + (f" (and {len(valid) - limit} more)" if len(valid) > limit else "")
    prefix = f"Did you mean {close[0]!r}? " if close else ""
    return f"{prefix}Valid: {listed}."


class ButlerError(Exception):
    """Base class of every error the Data Butler raises on bad input or a bad repository."""


class RepositoryNotFoundError(ButlerError):
    """A path or URL does not hold a butler repository (no ``butler.yaml``)."""


class ReadOnlyRepositoryError(ButlerError):
    """A write was attempted through a Butler opened with ``writeable=False``; nothing was written."""


class RunLockedError(ButlerError):
    """Another process is writing the RUN collection (see `butler.locks.run_lock`)."""


class ConfigError(ButlerError):
    """A repository or dimension configuration file is missing, malformed or inconsistent."""


class DimensionNameError(ButlerError, KeyError):
    """A dimension or dimension element name is not in the universe."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataIdError(ButlerError, ValueError):
    """A data ID has missing or extra keys, or values of the wrong type."""


class DataIdValueError(DataIdError):
    """A data ID value is well-formed but no dimension record with that value exists."""


class DatasetTypeError(ButlerError):
    """A dataset type is malformed or inconsistent with its registered definition."""


class MissingDatasetTypeError(DatasetTypeError, KeyError):
    """A dataset type name is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConflictingDefinitionError(ButlerError):
    """A definition (dataset type, collection, dimension record) conflicts with the existing one."""


class CollectionError(ButlerError):
    """Base class of collection errors."""


class MissingCollectionError(CollectionError, KeyError):
    """A collection name is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CollectionTypeError(CollectionError):
    """An operation needs another type of collection (e.g. a put into a CHAINED collection)."""


class CollectionCycleError(CollectionError):
    """A CHAINED collection definition would contain itself."""


class DatasetNotFoundError(ButlerError, LookupError):
    """No dataset matches the dataset type, data ID and collections given."""


class CalibrationLookupError(ButlerError, LookupError):
    """A calibration lookup through a CALIBRATION collection cannot give one answer.

    Either no timespan is known (the data ID has no exposure or visit and none was given), or several
    datasets of one data ID are valid at the requested time in one collection.
    """


class TimespanError(ButlerError, ValueError):
    """A timespan is malformed: a bound that is not a time, or an end before the begin."""


class DuplicateDatasetError(ConflictingDefinitionError):
    """A dataset with the same dataset type and data ID already exists in the collection."""


class QueryError(ButlerError):
    """Base class of errors in a registry query."""


class ExpressionSyntaxError(QueryError):
    """A ``where`` expression cannot be parsed.

    Parameters
    ----------
    message : `str`
        What is wrong.
    expression : `str`
        The whole expression.
    column : `int`
        1-based column of the offending token.
    """

    def __init__(self, message: str, expression: str, column: int):
        self.expression = expression
        self.column = column
        pointer = " " * (column - 1) + "^"
        # Characters without a UTF-8 encoding (lone surrogates) are escaped so the message can be printed.
        shown = expression.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(f"{message} at column {column} of the where-expression:\n  {shown}\n  {pointer}")


class EmptyQueryResultError(QueryError):
    """A query found nothing; ``reasons`` says which constraints removed every row.

    Parameters
    ----------
    reasons : `list` [`str`]
        One sentence per constraint that, on its own, leaves nothing.
    """

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("the query found nothing:\n" + "\n".join(f"  - {r}" for r in reasons))


class InvalidQueryError(QueryError):
    """A query is well-formed but refers to unknown names or compares values of the wrong type."""


class DatastoreError(ButlerError):
    """Base class of datastore errors."""


class FileTemplateError(DatastoreError):
    """A file template is invalid, or a rendered path would be ambiguous or leave the repository root."""


class FormatterError(DatastoreError):
    """A formatter cannot write or read an object of this storage class."""


class CorruptDatasetError(DatastoreError):
    """A dataset's file is missing, truncated, or its checksum does not match the recorded one."""


class StorageClassError(ButlerError):
    """A storage class is unknown or an object does not match its dataset type's storage class."""
