"""Hostile names on the way to file paths: run names, data ID values and file templates with ``..``, ``/``,
NUL, control characters or thousands of characters give a clear `ButlerError`, and no file is ever
written outside the repository root (nor, on an error, inside it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from butler import Butler, DatasetType, FileDataset
from butler.errors import ButlerError, CollectionError, DataIdError, FileTemplateError

pytestmark = pytest.mark.reliability

HOSTILE = ["..", "../x", "a/../../b", "/abs", "a\\b", "a\x00b", "tab\tx", "new\nline", "\x7f", "x" * 5000, "é" * 150, "\ud800"]


def _files(directory: Path) -> set[str]:
    """Every file and link under a directory (the repository's database files left out)."""
    return {
        os.path.relpath(os.path.join(d, name), directory)
        for d, dirs, names in os.walk(directory)
        for name in names + [x for x in dirs if os.path.islink(os.path.join(d, x))]
        if "sqlite3" not in name
    }


def _outside_repo(directory: Path) -> set[str]:
    return {path for path in _files(directory) if not path.startswith("repo" + os.sep)}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Butler, Path]]:
    """A repository inside an otherwise empty directory (where escaped files would show up), with
    instrument ``Cam`` and a dataset type over ``instrument``."""
    sandbox = tmp_path_factory.mktemp("sandbox")
    butler = Butler.create(sandbox / "repo")
    butler.registry.insert_dimension_data("instrument", {"name": "Cam"})
    butler.register_dataset_type("toy", ["instrument"], "NumpyArray")
    yield butler, sandbox
    butler.close()


@pytest.mark.parametrize("run", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_run_names_are_refused_and_nothing_is_written(sandbox, run):
    butler, directory = sandbox
    before = _files(directory)
    with pytest.raises((CollectionError, FileTemplateError)) as info:
        butler.put(np.zeros(3), "toy", instrument="Cam", run=run)
    str(info.value).encode("utf-8")  # printable
    assert _files(directory) == before
    assert run not in {r.name for r in butler.registry.query_collections()}


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_data_id_values_are_refused_before_any_file_is_written(sandbox, name):
    butler, directory = sandbox
    before = _files(directory)
    with pytest.raises((DataIdError, FileTemplateError)):
        butler.registry.insert_dimension_data("instrument", {"name": name})
        butler.put(np.zeros(3), "toy", instrument=name, run="hostile")
    assert _files(directory) == before


@settings(max_examples=200, deadline=None)
@given(run=st.text(min_size=1, max_size=300), instrument=st.text(min_size=1, max_size=40))
def test_random_names_give_a_file_inside_the_root_or_a_butler_error(sandbox, run, instrument):
    butler, directory = sandbox
    outside = _outside_repo(directory)
    try:
        butler.registry.sync_dimension_data("instrument", {"name": instrument})
        ref = butler.put(np.zeros(3), "toy", instrument=instrument, run=run)
    except ButlerError:
        pass
    else:
        path = butler.datastore.abspath(butler._stored_info(ref))
        assert path.resolve().is_relative_to(butler.datastore.root) and path.is_file()
    assert _outside_repo(directory) == outside


def test_a_symbolic_link_out_of_the_root_is_not_followed(sandbox):
    butler, directory = sandbox
    (directory / "elsewhere").mkdir()
    (butler.datastore.root / "linked").symlink_to(directory / "elsewhere")
    with pytest.raises(FileTemplateError, match="outside the repository root"):
        butler.put(np.zeros(3), "toy", instrument="Cam", run="linked")
    assert not any((directory / "elsewhere").iterdir())


def _configure(root: Path, template: str) -> None:
    """Make a repository whose butler.yaml has ``template`` as its only file template."""
    Butler.create(root).close()
    config = yaml.safe_load((root / "butler.yaml").read_text())
    config["datastore"]["templates"] = {"default": template}
    (root / "butler.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("template", ["../{run}/{datasetType}_{instrument}", "{run}/../../{datasetType}_{instrument}"])
def test_templates_leaving_the_root_are_refused_when_the_repository_opens(tmp_path, template):
    _configure(tmp_path / "repo", template)
    with pytest.raises(FileTemplateError, match=r"datastore.templates\['default'\].*'\.\.' path segment"):
        Butler(tmp_path / "repo")


@pytest.mark.parametrize(
    ("template", "limit"),
    [
        ("{run}/{datasetType}_" + "x" * 5000 + "_{instrument}", "217"),
        ("{run}/" + "d" * 300 + "/{datasetType}_{instrument}", "255"),
        ("{run}/" + "/".join(["d" * 200] * 25) + "/{datasetType}_{instrument}", "4095"),
    ],
    ids=["5000-character-file-name", "300-character-directory", "5000-byte-path"],
)
def test_templates_too_long_for_the_file_system_write_nothing(tmp_path, template, limit):
    _configure(tmp_path / "repo", template)
    with Butler(tmp_path / "repo") as butler:
        butler.registry.insert_dimension_data("instrument", {"name": "Cam"})
        butler.registry.register_dataset_type(DatasetType("toy", ["instrument"], "NumpyArray", universe=butler.dimensions))
        source = tmp_path / "source.npy"
        np.save(source, np.zeros(3))
        before = _files(tmp_path)
        with pytest.raises(FileTemplateError, match=f"file systems allow {limit}"):
            butler.put(np.zeros(3), "toy", instrument="Cam", run="run1")
        with pytest.raises(FileTemplateError, match=f"file systems allow {limit}"):
            butler.ingest(FileDataset(source, "toy", {"instrument": "Cam"}), transfer="copy", run="run1")
        assert _files(tmp_path) == before
        assert butler.registry.query_collections() == []  # both transactions were rolled back
