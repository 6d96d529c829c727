"""Formatters of catalogues (astropy Tables): Parquet (through pyarrow) and FITS binary tables."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.table import Column, MaskedColumn, Table
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import FormatterError
from . import BytesFormatter, Formatter
from .structured import check_json_value

__all__ = ["FitsTableFormatter", "ParquetFormatter"]

# Key of the Parquet schema metadata holding the astropy-specific parts of a table (JSON).
_METADATA_KEY = b"butler_astropy"
# numpy dtype kinds the Parquet formatter stores: bool, signed/unsigned int, float, str, bytes.
_KINDS = "biufUS"
_UNITS: dict[str, u.UnitBase] = {}


def _unit(text: str | None) -> u.UnitBase | None:
    """Parse a unit string once (unit parsing costs up to ~0.1 ms per call)."""
    if not text:
        return None
    unit = _UNITS.get(text)
    if unit is None:
        unit = _UNITS[text] = u.Unit(text, parse_strict="silent")
    return unit


def _check_columns_parameter(columns: Any, available: list[str]) -> list[str]:
    """Return the ``columns`` read parameter as a list of existing column names.

    Raises
    ------
    FormatterError
        If it is not a string or a sequence of strings, or names a column the table lacks.
    """
    names = [columns] if isinstance(columns, str) else columns
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise FormatterError(f"the 'columns' read parameter must be a list of column names; got {columns!r}.")
    missing = [n for n in names if n not in available]
    if missing:
        raise FormatterError(
            f"the table has no column(s) {', '.join(map(repr, missing))}; its columns are: {', '.join(available)}."
        )
    return list(names)


def _to_numpy(array: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Return a writable numpy copy of a 1-D pyarrow array and its mask (None when nothing is null).

    Null values become 0, False, "" or b"" under the mask; strings come back as fixed-width
    ``str``/``bytes`` arrays.
    """
    mask = None
    kind = array.type
    if array.null_count:
        mask = array.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            fill: Any = ""
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            fill = b""
        else:
            fill = False if pa.types.is_boolean(kind) else 0
        array = pc.fill_null(array, pa.scalar(fill, kind))
    data = array.to_numpy(zero_copy_only=False, writable=True)
    if data.dtype == object:  # strings or bytes
        data = data.astype(str if isinstance(data[0] if len(data) else "", str) else bytes)
    return data, mask


class ParquetFormatter(BytesFormatter):
    """An astropy `Table` as a Parquet file, written and read with pyarrow (no pandas).

    Column dtypes (bool, integers, floats, fixed-width ``str`` and ``bytes``), multidimensional
    columns, masks, units, descriptions, formats and column ``meta`` are kept, as is ``table.meta``;
    these are stored as JSON in the Parquet schema metadata, so ``table.meta`` must hold only plain
    JSON values (see `check_json_value`).  Other Parquet tools see ordinary typed columns.

    Read parameters: ``columns`` (list of `str`): read only these columns, in this order.
    """

    extension = ".parq"
    supported_parameters = frozenset({"columns"})

    def to_bytes(self, obj: Any) -> bytes:
        """Serialise an astropy Table to Parquet.

        Raises
        ------
        FormatterError
            If a column is not a plain or masked column (or a Quantity) of a supported dtype, or
            ``table.meta`` is not plain JSON.
        """
        arrays: list[pa.Array] = []
        specs: dict[str, dict[str, Any]] = {}
        for name, col in obj.columns.items():
            array, specs[name] = self._column_to_arrow(name, col)
            arrays.append(array)
        meta = dict(obj.meta)
        check_json_value(meta, "table.meta")
        header = json.dumps({"version": 1, "meta": meta, "columns": specs})
        table = pa.Table.from_arrays(arrays, names=list(obj.colnames)).replace_schema_metadata({_METADATA_KEY: header})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        return sink.getvalue().to_pybytes()

    @staticmethod
    def _column_to_arrow(name: str, col: Any) -> tuple[pa.Array, dict[str, Any]]:
        """Return the pyarrow array of one column and the JSON description of what Parquet cannot keep."""
        if isinstance(col, u.Quantity):
            data, mask, unit = np.asarray(col.value), None, col.unit
        elif isinstance(col, MaskedColumn):
            data, mask, unit = np.asarray(col.data.data), np.ma.getmaskarray(col), col.unit
        elif isinstance(col, Column):
            data, mask, unit = col.view(np.ndarray), None, col.unit
        else:
            raise FormatterError(
                f"column {name!r} is a {type(col).__name__} (an astropy mixin column); the Parquet formatter "
                "stores plain, masked and Quantity columns only. Convert it (e.g. Time -> its .mjd values)."
            )
        if data.dtype.kind not in _KINDS:
            raise FormatterError(
                f"column {name!r} has dtype {data.dtype}; the Parquet formatter stores bool, integer, float, "
                "str and bytes columns only."
            )
        spec: dict[str, Any] = {"dtype": data.dtype.str}
        if not data.dtype.isnative:  # e.g. a table read from FITS; pyarrow needs native order
            data = data.astype(data.dtype.newbyteorder("="))
        if mask is not None:
            spec["masked"] = True
            mask = mask.reshape(-1) if mask.any() else None
        if data.ndim > 1:
            spec["shape"] = list(data.shape[1:])
            values = pa.array(data.reshape(-1), mask=mask)
            array: pa.Array = pa.FixedSizeListArray.from_arrays(values, int(np.prod(data.shape[1:])))
        else:
            array = pa.array(data, mask=mask)
        info = col.info
        if unit is not None:
            spec["unit"] = unit.to_string()
        if info.description:
            spec["description"] = info.description
        if isinstance(info.format, str):
            spec["format"] = info.format
        if info.meta:
            column_meta = dict(info.meta)
            check_json_value(column_meta, f"column {name!r} meta")
            spec["meta"] = column_meta
        return array, spec

    def read(
        self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Table:
        """Read the table, or only some of its columns (``parameters={"columns": [...]}``).

        Raises
        ------
        FormatterError
            If ``columns`` names a column the file does not have.
        """
        self.check_read_arguments(component, parameters)
        return self._read(path, parameters)

    def from_bytes(
        self, data: bytes, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Table:
        """Read a table (or some of its columns) from the bytes of a Parquet file."""
        self.check_read_arguments(component, parameters)
        return self._read(pa.BufferReader(data), parameters)

    def _read(self, source: Any, parameters: Mapping[str, Any] | None) -> Table:
        with pq.ParquetFile(source) as file:
            columns = None
            if parameters and parameters.get("columns") is not None:
                columns = _check_columns_parameter(parameters["columns"], file.schema_arrow.names)
            table = file.read(columns=columns, use_threads=False)
        raw = (table.schema.metadata or {}).get(_METADATA_KEY)
        header = json.loads(raw) if raw else {}
        specs = header.get("columns", {})
        cols = [
            self._column_from_arrow(name, table.column(i), specs.get(name, {}))
            for i, name in enumerate(table.column_names)
        ]
        return Table(cols, meta=header.get("meta"), copy=False)

    @staticmethod
    def _column_from_arrow(name: str, chunked: pa.ChunkedArray, spec: Mapping[str, Any]) -> Column:
        """Rebuild one astropy column from its pyarrow data and JSON description."""
        array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        shape = spec.get("shape")
        data, mask = _to_numpy(array.flatten() if shape else array)
        if shape:
            data = data.reshape(len(array), *shape)
            mask = mask.reshape(data.shape) if mask is not None else None
        if "dtype" in spec:
            dtype = np.dtype(spec["dtype"])
            if data.dtype != dtype:
                data = data.astype(dtype)
        kwargs = dict(
            name=name,
            unit=_unit(spec.get("unit")),
            description=spec.get("description"),
            format=spec.get("format"),
            meta=spec.get("meta"),
            copy=False,
        )
        if mask is not None or spec.get("masked"):
            return MaskedColumn(data=data, mask=mask if mask is not None else False, **kwargs)
        return Column(data=data, **kwargs)


class FitsTableFormatter(Formatter):
    """An astropy `Table` as a FITS binary table in HDU 1 (via `astropy.io.fits`).

    Units are kept (``TUNITn``), column descriptions as ``TCOMMn`` keywords, ``table.meta`` as header
    keywords (astropy's convention: keys come back upper-case).  Columns are returned in native byte
    order and strings as ``str``.

    Read parameters: ``columns`` (list of `str`): return only these columns, in this order.
    """

    extension = ".fits"
    supported_parameters = frozenset({"columns"})

    def write(self, obj: Any, path: Path) -> None:
        """Write an astropy Table.

        Raises
        ------
        FormatterError
            If astropy cannot convert the table to a FITS binary table, or would drop part of
            ``table.meta`` (values other than numbers, strings, None and lists of them).
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=fits.verify.VerifyWarning)  # HIERARCH cards are fine
            warnings.simplefilter("ignore", category=u.UnitsWarning)
            warnings.simplefilter("error", category=AstropyUserWarning)  # something would be dropped
            try:
                hdu = fits.table_to_hdu(obj, character_as_bytes=False)
            except (TypeError, ValueError, AstropyUserWarning) as err:
                raise FormatterError(
                    f"cannot write the table as a FITS binary table: {err}. FITS headers hold numbers, strings "
                    "and lists of them; use the ArrowAstropy (Parquet) storage class for richer table.meta."
                ) from None
        for i, col in enumerate(obj.columns.values(), start=1):
            if col.info.description:
                hdu.header[f"TCOMM{i}"] = col.info.description
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)

    def read(
        self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Table:
        """Read the table of HDU 1, or only some of its columns (``parameters={"columns": [...]}``).

        Raises
        ------
        FormatterError
            If ``columns`` names a column the file does not have.
        """
        self.check_read_arguments(component, parameters)
        table = Table.read(path, hdu=1, format="fits", character_as_bytes=False)
        for i, col in enumerate(table.columns.values(), start=1):
            description = table.meta.pop(f"TCOMM{i}", None)
            if description:
                col.info.description = description
        if parameters and parameters.get("columns") is not None:
            table = table[_check_columns_parameter(parameters["columns"], table.colnames)]
        for name in table.colnames:
            col = table[name]
            if col.dtype.byteorder not in ("=", "|"):
                table[name] = col.astype(col.dtype.newbyteorder("="))
        return table
