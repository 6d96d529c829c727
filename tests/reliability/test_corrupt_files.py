"""Damaged files: truncated and bit-flipped FITS files in a repository are caught on every read
(`CorruptDatasetError`) and by ``butler verify --checksums``; a damaged or tampered quantum-graph file is
refused (`GraphFileError`) unless the change left its content intact."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import populate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import make_pipeline, make_repo

from butler import Butler
from butler.errors import CorruptDatasetError
from graph.builder import build_quantum_graph
from graph.errors import GraphFileError
from graph.quantum_graph import QuantumGraph
from tasks.image import Exposure, MaskedImage

pytestmark = pytest.mark.reliability

N_DAMAGES = 25  # damaged copies of each file


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Butler]:
    """A repository with one small exposure (multi-extension FITS) and one FITS table."""
    butler = Butler.create(tmp_path_factory.mktemp("corrupt") / "repo")
    populate(butler)
    butler.register_dataset_type("calexp", ["instrument", "visit", "detector"], "ExposureF")
    butler.register_dataset_type("src", ["instrument", "visit", "detector"], "AstropyFitsTable")
    data_id = {"instrument": "Cam", "visit": 1, "detector": 2}
    image = np.arange(24 * 32, dtype=np.float32).reshape(24, 32)
    butler.put(Exposure(MaskedImage(image)), "calexp", data_id, run="run")
    butler.put(Table({"flux": np.linspace(1, 2, 50), "id": np.arange(50)}), "src", data_id, run="run")
    yield butler
    butler.close()


def _damages(size: int, seed: int) -> list[tuple[str, int, int]]:
    """(kind, offset, bit): truncations to random lengths, and single-bit flips at random places."""
    rng = random.Random(seed)
    cuts = [("truncate", rng.randrange(size), 0) for _ in range(N_DAMAGES // 2)]
    flips = [("flip", rng.randrange(size), 1 << rng.randrange(8)) for _ in range(N_DAMAGES - len(cuts))]
    return cuts + flips


@pytest.mark.parametrize(("name", "components"), [("calexp", ["wcs", "bbox", "psf"]), ("src", [])])
def test_truncated_and_bit_flipped_fits_files_are_corrupt_on_every_read(repo, name, components):
    ref = repo.find_dataset(name, instrument="Cam", visit=1, detector=2, collections="run")
    path = repo.datastore.abspath(repo._stored_info(ref))
    good = path.read_bytes()
    readers = [lambda: repo.get(ref)] + [
        lambda c=c: repo.get(f"{name}.{c}", ref.data_id, collections="run") for c in components
    ]
    detected = 0
    for kind, offset, bit in _damages(len(good), seed=len(name)):
        damaged = good[:offset] if kind == "truncate" else good[:offset] + bytes([good[offset] ^ bit]) + good[offset + 1 :]
        path.write_bytes(damaged)
        for read in readers:
            with pytest.raises(CorruptDatasetError, match="is damaged: expected"):
                read()
        problems = repo.verify(checksums=True).corrupt_files
        assert [p[0] for p in problems] == [str(ref.id)]
        detected += 1
    path.write_bytes(good)
    assert repo.verify(checksums=True).ok
    assert repo.get(ref) is not None
    print(f"\n{name} FITS file: {detected}/{N_DAMAGES} truncations and bit flips detected on get and by verify --checksums")


@pytest.fixture(scope="module")
def saved_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bytes, Butler]]:
    """A saved graph of the toy pipeline over 3 visits, its bytes, and the repository it was built for."""
    directory = tmp_path_factory.mktemp("graph")
    butler = make_repo(directory / "repo", n_visits=3)
    graph, _ = build_quantum_graph(
        make_pipeline(stats=False).to_graph(butler.dimensions), butler, input_collections=["inputs"], output_run="out"
    )
    path = directory / "g.qgraph"
    graph.save(path)
    yield path, path.read_bytes(), butler
    butler.close()


def _load_or_refuse(path: Path, original: bytes, butler: Butler, tmp_path: Path) -> bool:
    """Load a changed graph file: True if refused with `GraphFileError`; if it loads, it must be the
    original graph (saving it again gives the original bytes)."""
    try:
        graph = QuantumGraph.load(path, universe=butler.dimensions)
    except GraphFileError:
        return True
    graph.save(tmp_path / "again.qgraph")
    assert (tmp_path / "again.qgraph").read_bytes() == original
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), truncate=st.booleans())
def test_damaged_graph_file_is_refused_or_unchanged(saved_graph, tmp_path, where, bit, truncate):
    path, original, butler = saved_graph
    damaged = tmp_path / "damaged.qgraph"
    offset = int(where * len(original))
    damaged.write_bytes(original[:offset] if truncate else original[:offset] + bytes([original[offset] ^ (1 << bit)]) + original[offset + 1 :])
    _load_or_refuse(damaged, original, butler, tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), char=st.characters(codec="ascii"))
def test_edited_graph_content_is_refused(saved_graph, tmp_path, where, char):
    """A character of the JSON changed (and the file recompressed, as an editor would): a changed
    payload fails its checksum; only a change outside it (white space, key order...) may load."""
    path, original, butler = saved_graph
    text = gzip.decompress(original).decode()
    offset = int(where * len(text))
    edited = text[:offset] + char + text[offset + 1 :]
    tampered = tmp_path / "edited.qgraph"
    tampered.write_bytes(gzip.compress(edited.encode()))
    if _load_or_refuse(tampered, original, butler, tmp_path):
        return
    document = json.loads(edited)  # it loaded: the payload must be the original one
    body = json.dumps(document["payload"], sort_keys=True, separators=(",", ":")).encode()
    assert document["checksum"] == "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", 99, "newer version"),
        ("version", "1", "invalid format version"),
        ("format", "pickle", "not a saved quantum graph"),
        ("checksum", "sha256:" + "0" * 64, "damaged or modified"),
    ],
)
def test_format_version_and_checksum_are_checked(saved_graph, tmp_path, field, value, message):
    path, original, butler = saved_graph
    document = json.loads(gzip.decompress(original))
    document[field] = value
    tampered = tmp_path / "tampered.qgraph"
    tampered.write_bytes(gzip.compress(json.dumps(document).encode()))
    with pytest.raises(GraphFileError, match=message):
        QuantumGraph.load(tampered, universe=butler.dimensions)


@pytest.mark.parametrize("callable_path", ["os.abort", "builtins.exit", "os.getcwd"])
def test_a_re_checksummed_graph_cannot_make_the_loader_call_anything(saved_graph, tmp_path, callable_path):
    """The checksum guards against damage, not forgery: a forged file naming any callable as a task or
    config class is still refused before the callable is called."""
    path, original, butler = saved_graph
    for place in ("class", "config_class"):
        document = json.loads(gzip.decompress(original))
        task = document["payload"]["pipeline"]["tasks"][0]
        if place == "class":
            task["class"] = callable_path
        else:
            task["retargets"] = [{"field": "connections", "target": None, "config_class": callable_path}]
        body = json.dumps(document["payload"], sort_keys=True, separators=(",", ":")).encode()
        document["checksum"] = "sha256:" + hashlib.sha256(body).hexdigest()
        forged = tmp_path / "forged.qgraph"
        forged.write_bytes(gzip.compress(json.dumps(document).encode()))
        with pytest.raises(GraphFileError, match=f"{callable_path}' is not a"):
            QuantumGraph.load(forged, universe=butler.dimensions)
