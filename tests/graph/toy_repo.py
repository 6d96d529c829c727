"""A toy repository and pipeline for ``pipetask`` tests: `make_toy_repo`, `fill_toy_repo`, `TOY_PIPELINE`, `pipetask`.

Import as ``toy_repo`` (``tests/graph`` is on ``sys.path`` when pytest collects this directory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from conftest import populate

from butler import Butler
from graph.cli import cli

#: addOne (per visit+detector) -> stats (per visit+detector) and sum (per visit).
TOY_PIPELINE = """\
description: toy 3-task pipeline
tasks:
  addOne:
    class: toy_tasks.AddOneTask
    config:
      value: 2.0
  stats: toy_tasks.StatsTask
  sum: toy_tasks.SumDetectorsTask
subsets:
  perDetector: [addOne, stats]
"""
N_VISITS, N_DETECTORS = 3, 4


def pipetask(*args: object, app: object = cli) -> Result:
    """Invoke a command (``pipetask`` by default) with its arguments as strings."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def toy_value(visit: int, detector: int) -> np.ndarray:
    """The default ``toy_input`` of a data ID: distinct per visit and detector."""
    return np.full(3, 10.0 * visit + detector)


def make_toy_repo(
    tmp_path: Path, value: Callable[[int, int], np.ndarray] = toy_value, *, chain: str | None = None
) -> tuple[Path, Path]:
    """A repository of the toy camera with a ``toy_input`` per visit (3) and detector (4) in run ``raw``,
    and `TOY_PIPELINE` written to a file.

    Parameters
    ----------
    tmp_path : `pathlib.Path`
        Where to make ``repo/`` and ``pipe.yaml``.
    value : callable, optional
        (visit, detector) -> the input array.
    chain : `str`, optional
        A CHAINED collection to make holding ``raw``.

    Returns
    -------
    root, pipeline : `pathlib.Path`
    """
    root = tmp_path / "repo"
    with Butler.create(root) as butler:
        fill_toy_repo(butler, value, chain=chain)
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text(TOY_PIPELINE)
    return root, pipeline


def fill_toy_repo(
    butler: Butler, value: Callable[[int, int], np.ndarray] = toy_value, *, chain: str | None = None
) -> None:
    """Put the toy camera's records and inputs into an existing (SQLite or PostgreSQL) repository."""
    populate(butler)
    butler.register_dataset_type("toy_input", ["visit", "detector"], "NumpyArray")
    for v in range(N_VISITS):
        for d in range(N_DETECTORS):
            butler.put(value(v, d), "toy_input", instrument="Cam", visit=v, detector=d, run="raw")
    if chain is not None:
        butler.collection_chain(chain, ["raw"])
