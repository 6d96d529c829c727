"""Comparing the datasets of two runs by checksum (``pipetask diff-runs``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .datasets import DatasetRef
from .errors import CollectionTypeError
from .registry import CollectionType, Registry

__all__ = ["DEFAULT_IGNORE", "RunDifference", "diff_runs"]

#: Dataset types left out of a comparison by default: task metadata and logs hold timings and host names.
DEFAULT_IGNORE = ("*_metadata", "*_log")

_Key = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class RunDifference:
    """One dataset that differs between two runs.

    Attributes
    ----------
    dataset_type : `str`
    data_id : `dict` [`str`, `int` or `str`]
        Its data ID (required dimensions).
    status : `str`
        ``"only-in-1"``, ``"only-in-2"`` or ``"differ"`` (both runs have it, with other checksums).
    checksum1, checksum2 : `str` or `None`
        Its checksum on each side (`None` where it is absent or was stored without one).
    """

    dataset_type: str
    data_id: dict[str, Any]
    status: str
    checksum1: str | None = None
    checksum2: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A row for tables and JSON."""
        return {
            "dataset_type": self.dataset_type,
            "data_id": ", ".join(f"{k}={v}" for k, v in self.data_id.items()),
            "status": self.status,
            "checksum1": self.checksum1,
            "checksum2": self.checksum2,
        }


def _refs(registry: Registry, collections: Sequence[str]) -> list[DatasetRef]:
    """The datasets a RUN collection owns, and the members of TAGGED collections (e.g. reused outputs)."""
    records = [registry.get_collection(name) for name in collections]
    wrong = [r.name for r in records if r.type not in (CollectionType.RUN, CollectionType.TAGGED)]
    if wrong:
        raise CollectionTypeError(
            f"{', '.join(map(repr, wrong))} are not RUN or TAGGED collections; diff-runs compares the datasets of runs."
        )
    refs = registry.refs_in_runs([r.name for r in records if r.type is CollectionType.RUN])
    tagged = [r.name for r in records if r.type is CollectionType.TAGGED]
    if tagged:
        for dataset_type in registry.query_dataset_types():
            refs += registry.query_datasets(dataset_type, tagged, find_first=False, explain=False)
    return refs


def _checksums(registry: Registry, collections: Sequence[str], ignore: Sequence[str]) -> dict[_Key, tuple[dict[str, Any], str | None]]:
    """(dataset type, data ID values) -> (data ID, checksum) of every dataset of one side not ignored."""
    refs = [
        ref for ref in _refs(registry, collections)
        if not any(fnmatch.fnmatchcase(ref.dataset_type.name, pattern) for pattern in ignore)
    ]
    records = registry.get_datastore_records([ref.id for ref in refs])
    return {
        (ref.dataset_type.name, ref.data_id.required_values): (
            dict(ref.data_id.required), records[ref.id]["checksum"] if ref.id in records else None
        )
        for ref in refs
    }


def diff_runs(
    registry: Registry,
    run1: str | Sequence[str],
    run2: str | Sequence[str],
    *,
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> list[RunDifference]:
    """The datasets in which two runs differ, by dataset type and data ID.

    Two datasets of the same type and data ID are equal when their datastore checksums (SHA-256 of the
    file, or of the registry-stored bytes) are equal; one without a checksum never is.

    Parameters
    ----------
    registry : `Registry`
    run1, run2 : `str` or sequence of `str`
        Each side: a RUN collection (its own datasets), or several RUN and TAGGED collections whose
        datasets are taken together (a run and the TAGGED collection of the outputs it reused).
    ignore : sequence of `str`, optional
        Glob patterns of dataset type names left out (default `DEFAULT_IGNORE`).

    Returns
    -------
    differences : `list` [`RunDifference`]
        Sorted by dataset type, then data ID; empty when both sides hold equal datasets.

    Raises
    ------
    MissingCollectionError, CollectionTypeError
        If a name is not an existing RUN or TAGGED collection.
    """
    first = _checksums(registry, [run1] if isinstance(run1, str) else run1, ignore)
    second = _checksums(registry, [run2] if isinstance(run2, str) else run2, ignore)
    out = []
    for key in sorted(first.keys() | second.keys(), key=lambda k: (k[0], tuple(map(str, k[1])))):
        a, b = first.get(key), second.get(key)
        if a is None:
            out.append(RunDifference(key[0], b[0], "only-in-2", None, b[1]))
        elif b is None:
            out.append(RunDifference(key[0], a[0], "only-in-1", a[1], None))
        elif a[1] is None or a[1] != b[1]:
            out.append(RunDifference(key[0], a[0], "differ", a[1], b[1]))
    return out
