"""Tests of butler/formatters: round trips, read parameters and refusals of unrepresentable objects.

Run this file directly (``python tests/butler/test_formatters.py``) for a by-hand benchmark of the
Parquet formatter on a 10-row, 3-column table (target: write < 0.4 ms, read < 0.5 ms median).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydantic
import pytest
from astropy.table import MaskedColumn, Table

from butler.datasets import DatasetType, StorageClass, StorageClassFactory
from butler.dimensions import DimensionUniverse
from butler.errors import FormatterError
from butler.formatters import Formatter, FormatterFactory
from butler.formatters.numpy import NpyFormatter
from butler.formatters.structured import JsonFormatter, YamlFormatter
from butler.formatters.tables import FitsTableFormatter, ParquetFormatter

TABLE = StorageClass("ArrowAstropy", "astropy.table.Table")
FITS_TABLE = StorageClass("AstropyFitsTable", "astropy.table.Table")
DICT = StorageClass("StructuredDataDict", "builtins.dict")
ARRAY = StorageClass("NumpyArray", "numpy.ndarray")


class Metrics(pydantic.BaseModel):
    """A pydantic model stored by the JSON formatter in tests."""

    name: str
    values: list[float]
    when: datetime.datetime


MODEL = StorageClass("Metrics", f"{__name__}.Metrics")


def catalog() -> Table:
    """A table with int, float, str, bytes, bool and 2-D columns, units, descriptions and meta."""
    table = Table(
        {
            "id": np.array([1, 2, 3], dtype=np.int64),
            "flux": np.array([1.5, -2.25, 3e10], dtype=np.float32),
            "name": np.array(["a", "bb", "ccc"]),
            "tag": np.array([b"x", b"yy", b"zzz"]),
            "good": np.array([True, False, True]),
            "shape": np.arange(12, dtype=np.float64).reshape(3, 2, 2),
        }
    )
    table["flux"].unit = "nJy"
    table["flux"].description = "PSF flux"
    table["id"].description = "source ID"
    table["shape"].unit = "arcsec2"
    table.meta.update({"visit": 42, "filters": ["g", "r"], "nested": {"zp": 31.4, "ok": True, "none": None}})
    return table


def test_parquet_round_trip_keeps_dtypes_values_units_descriptions_and_meta(tmp_path):
    formatter = ParquetFormatter(TABLE)
    table = catalog()
    formatter.write(table, tmp_path / "t.parq")
    out = formatter.read(tmp_path / "t.parq")
    assert out.colnames == table.colnames
    for name in table.colnames:
        assert out[name].dtype == table[name].dtype, name
        assert out[name].shape == table[name].shape, name
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(table[name]))
        assert out[name].unit == table[name].unit, name
        assert out[name].description == table[name].description, name
    assert dict(out.meta) == dict(table.meta)


def test_parquet_keeps_big_endian_dtypes(tmp_path):
    table = Table({"x": np.array([1.5, 2.5], dtype=">f8"), "n": np.array([1, 2], dtype=">i4")})
    ParquetFormatter(TABLE).write(table, tmp_path / "t.parq")
    out = ParquetFormatter(TABLE).read(tmp_path / "t.parq")
    assert out["x"].dtype == np.dtype(">f8") and list(out["x"]) == [1.5, 2.5]
    assert out["n"].dtype == np.dtype(">i4") and list(out["n"]) == [1, 2]


def test_parquet_read_columns_are_writable(tmp_path):
    ParquetFormatter(TABLE).write(catalog(), tmp_path / "t.parq")
    out = ParquetFormatter(TABLE).read(tmp_path / "t.parq")
    out["id"][0] = 99
    assert out["id"][0] == 99


def test_parquet_keeps_masks(tmp_path):
    table = Table({"x": MaskedColumn([1.0, 2.0, 3.0], mask=[False, True, False], unit="mag")})
    table["s"] = MaskedColumn(["a", "b", "c"], mask=[True, False, False])
    ParquetFormatter(TABLE).write(table, tmp_path / "t.parq")
    out = ParquetFormatter(TABLE).read(tmp_path / "t.parq")
    assert list(out["x"].mask) == [False, True, False]
    assert list(out["s"].mask) == [True, False, False]
    assert out["x"][2] == 3.0 and out["s"][1] == "b"


def test_parquet_columns_parameter_reads_only_those_columns(tmp_path):
    ParquetFormatter(TABLE).write(catalog(), tmp_path / "t.parq")
    out = ParquetFormatter(TABLE).read(tmp_path / "t.parq", parameters={"columns": ["name", "flux"]})
    assert out.colnames == ["name", "flux"]
    assert out["flux"].unit == "nJy"
    assert list(out["name"]) == ["a", "bb", "ccc"]


def test_parquet_unknown_column_lists_the_columns(tmp_path):
    ParquetFormatter(TABLE).write(catalog(), tmp_path / "t.parq")
    with pytest.raises(FormatterError, match="'nope'.*id, flux, name"):
        ParquetFormatter(TABLE).read(tmp_path / "t.parq", parameters={"columns": ["nope"]})


def test_unsupported_parameter_lists_supported_ones(tmp_path):
    ParquetFormatter(TABLE).write(catalog(), tmp_path / "t.parq")
    with pytest.raises(FormatterError, match="'rows'.*columns"):
        ParquetFormatter(TABLE).read(tmp_path / "t.parq", parameters={"rows": 3})


def test_unsupported_component_is_refused(tmp_path):
    ParquetFormatter(TABLE).write(catalog(), tmp_path / "t.parq")
    with pytest.raises(FormatterError, match="component 'wcs'.*none"):
        ParquetFormatter(TABLE).read(tmp_path / "t.parq", component="wcs")


@pytest.mark.parametrize(
    "meta", [{"when": datetime.date(2024, 1, 1)}, {"pair": (1, 2)}, {1: "int key"}, {"x": np.int64(3)}]
)
def test_parquet_refuses_non_json_meta(tmp_path, meta):
    table = catalog()
    table.meta.update(meta)
    with pytest.raises(FormatterError, match="meta"):
        ParquetFormatter(TABLE).write(table, tmp_path / "t.parq")


def test_parquet_refuses_object_columns(tmp_path):
    table = Table({"x": np.array([{"a": 1}, None], dtype=object)})
    with pytest.raises(FormatterError, match="'x'.*object"):
        ParquetFormatter(TABLE).write(table, tmp_path / "t.parq")


def test_fits_table_round_trip_keeps_values_units_and_descriptions(tmp_path):
    table = catalog()
    del table["tag"]  # FITS has no bytes/str distinction: byte columns come back as str
    table.meta = {"VISIT": 42, "EXPTIME": 30.0}
    FitsTableFormatter(FITS_TABLE).write(table, tmp_path / "t.fits")
    out = FitsTableFormatter(FITS_TABLE).read(tmp_path / "t.fits")
    assert out.colnames == table.colnames
    for name in table.colnames:
        assert out[name].dtype == table[name].dtype, name
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(table[name]))
        assert out[name].unit == table[name].unit, name
        assert out[name].description == table[name].description, name
    assert dict(out.meta) == {"VISIT": 42, "EXPTIME": 30.0}


def test_fits_table_refuses_meta_it_would_drop(tmp_path):
    table = catalog()  # meta["nested"] is a dict: no FITS header keyword can hold it
    with pytest.raises(FormatterError, match="nested"):
        FitsTableFormatter(FITS_TABLE).write(table, tmp_path / "t.fits")


def test_fits_table_is_in_hdu_1(tmp_path):
    from astropy.io import fits

    table = catalog()
    table.meta = {}
    FitsTableFormatter(FITS_TABLE).write(table, tmp_path / "t.fits")
    with fits.open(tmp_path / "t.fits") as hdus:
        assert isinstance(hdus[1], fits.BinTableHDU)
        assert hdus[1].header["TUNIT2"] == "nJy"


def test_yaml_round_trip(tmp_path):
    data = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": datetime.date(2024, 1, 2)}, "ünï": "côdé"}
    YamlFormatter(DICT).write(data, tmp_path / "d.yaml")
    assert YamlFormatter(DICT).read(tmp_path / "d.yaml") == data


def test_yaml_refuses_python_objects(tmp_path):
    with pytest.raises(FormatterError, match="YAML"):
        YamlFormatter(DICT).write({"x": object()}, tmp_path / "d.yaml")
    assert not (tmp_path / "d.yaml").exists()


def test_yaml_reader_does_not_construct_python_objects(tmp_path):
    (tmp_path / "evil.yaml").write_text("x: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(Exception, match="python/object"):
        YamlFormatter(DICT).read(tmp_path / "evil.yaml")


def test_json_dict_round_trip(tmp_path):
    data = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": {"e": -3}}}
    JsonFormatter(DICT).write(data, tmp_path / "d.json")
    assert JsonFormatter(DICT).read(tmp_path / "d.json") == data


@pytest.mark.parametrize("bad", [{"t": (1, 2)}, {1: "a"}, {"s": {1, 2}}, {"d": datetime.date(2024, 1, 1)}])
def test_json_refuses_values_that_would_not_round_trip(tmp_path, bad):
    with pytest.raises(FormatterError):
        JsonFormatter(DICT).write(bad, tmp_path / "d.json")


def test_json_pydantic_model_round_trip(tmp_path):
    model = Metrics(name="m", values=[1.0, 2.5], when=datetime.datetime(2024, 1, 2, 3, 4, 5))
    JsonFormatter(MODEL).write(model, tmp_path / "m.json")
    out = JsonFormatter(MODEL).read(tmp_path / "m.json")
    assert isinstance(out, Metrics)
    assert out == model


def test_npy_round_trip_keeps_dtype_and_shape(tmp_path):
    array = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    NpyFormatter(ARRAY).write(array, tmp_path / "a.npy")
    out = NpyFormatter(ARRAY).read(tmp_path / "a.npy")
    assert out.dtype == array.dtype and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_npy_slice_parameter(tmp_path):
    array = np.arange(100.0).reshape(10, 10)
    NpyFormatter(ARRAY).write(array, tmp_path / "a.npy")
    out = NpyFormatter(ARRAY).read(tmp_path / "a.npy", parameters={"slice": (slice(2, 4), slice(None, None, 5))})
    np.testing.assert_array_equal(out, array[2:4, ::5])


def test_npy_refuses_object_arrays(tmp_path):
    with pytest.raises(FormatterError, match="object"):
        NpyFormatter(ARRAY).write(np.array([{"a": 1}, None], dtype=object), tmp_path / "a.npy")


def test_npy_writes_exactly_to_the_given_path(tmp_path):
    NpyFormatter(ARRAY).write(np.zeros(3), tmp_path / "x.tmp-abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tmp-abc"]


# FormatterFactory --------------------------------------------------------------------------------


@pytest.fixture()
def factory() -> FormatterFactory:
    import yaml

    import repo_template

    root = Path(repo_template.__file__).parent
    storage_classes = StorageClassFactory(yaml.safe_load((root / "storage_classes.yaml").read_text()))
    formatters = yaml.safe_load((root / "formatters.yaml").read_text())["formatters"]
    formatters["special_catalog"] = "butler.formatters.tables.FitsTableFormatter"
    return FormatterFactory(formatters, storage_classes)


def test_factory_prefers_dataset_type_name_over_storage_class(factory):
    universe = DimensionUniverse.default()
    special = DatasetType("special_catalog", ["visit"], "ArrowAstropy", universe=universe)
    plain = DatasetType("src", ["visit"], "ArrowAstropy", universe=universe)
    assert factory.get_class(special) is FitsTableFormatter
    assert factory.get_class(plain) is ParquetFormatter
    assert isinstance(factory.get(plain), ParquetFormatter)


def test_factory_dotted_name_round_trips(factory):
    dotted = FormatterFactory.dotted_name(ParquetFormatter)
    assert dotted == "butler.formatters.tables.ParquetFormatter"
    assert isinstance(factory.from_name(dotted, "ArrowAstropy"), ParquetFormatter)


def test_factory_errors_name_the_problem(factory):
    universe = DimensionUniverse.default()
    with pytest.raises(FormatterError, match="NoSuchClass"):
        factory.get_class(DatasetType("x", ["visit"], "NoSuchClass", universe=universe))
    with pytest.raises(FormatterError, match="cannot import"):
        factory.from_name("butler.formatters.tables.Nope", "ArrowAstropy")
    with pytest.raises(FormatterError, match="not a subclass"):
        factory.from_name("pathlib.Path", "ArrowAstropy")


def test_formatter_is_abstract():
    with pytest.raises(TypeError):
        Formatter(TABLE)  # type: ignore[abstract]


def _benchmark(n: int = 2000) -> None:  # pragma: no cover - run by hand
    """Print median write and read times of the Parquet formatter for a 10-row, 3-column table."""
    import statistics
    import tempfile
    import time

    table = Table({"a": np.arange(10), "b": np.linspace(0.0, 1.0, 10), "c": np.array([f"s{i}" for i in range(10)])})
    table["b"].unit = "nJy"
    table["b"].description = "flux"
    formatter = ParquetFormatter(TABLE)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"t{i}.parq" for i in range(n)]  # fresh names, as the datastore writes
        writes, reads = [], []
        for path in paths:
            start = time.perf_counter()
            formatter.write(table, path)
            writes.append(time.perf_counter() - start)
        for path in paths:
            start = time.perf_counter()
            formatter.read(path)
            reads.append(time.perf_counter() - start)
    print(f"ParquetFormatter, 10 rows x 3 columns, {n} runs: write median {statistics.median(writes) * 1e3:.3f} ms "
          f"(target < 0.4), read median {statistics.median(reads) * 1e3:.3f} ms (target < 0.5)")


if __name__ == "__main__":  # pragma: no cover
    _benchmark()
