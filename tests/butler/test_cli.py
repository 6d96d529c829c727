"""Tests of the ``butler`` command line (`butler.cli`), run in-process with click's `CliRunner`."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time
from click.testing import CliRunner, Result

from butler import Butler, DatasetRef
from butler.cli import cli

TRANSFERS_MISSING = importlib.util.find_spec("butler.transfers") is None


def run(*args: Any, input: str | None = None) -> Result:
    """Invoke ``butler ARGS...`` and return the result (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def run_json(*args: Any) -> Any:
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit code 1, ``Error: ...`` on stderr naming every fragment, no traceback anywhere."""
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@dataclass
class Repo:
    root: Path
    refs: list[DatasetRef]  # the 8 "meta" datasets of run1 (4 visits x 2 detectors)

    def butler(self, **kwargs: Any) -> Butler:
        return Butler(self.root, **kwargs)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A repository made with ``butler create``: instrument Cam, visits 1-4 (odd g, even r), detectors
    0-1, and a StructuredDataDict dataset type ``meta`` with one dataset per (visit, detector) in run1
    and the visit-1 ones again in run2."""
    root = tmp_path / "repo"
    result = run("create", root)
    assert result.exit_code == 0, result.output
    with Butler(root) as butler:
        reg = butler.registry
        reg.insert_dimension_data("instrument", {"name": "Cam", "detector_max": 2})
        reg.insert_dimension_data("band", {"name": "g"}, {"name": "r"})
        reg.insert_dimension_data(
            "physical_filter",
            {"instrument": "Cam", "name": "Cam-g", "band": "g"},
            {"instrument": "Cam", "name": "Cam-r", "band": "r"},
        )
        reg.insert_dimension_data("day_obs", {"instrument": "Cam", "id": 20240101})
        reg.insert_dimension_data("detector", *({"instrument": "Cam", "id": i, "full_name": f"S{i}"} for i in (0, 1)))
        reg.insert_dimension_data(
            "visit",
            *(
                {
                    "instrument": "Cam",
                    "id": v,
                    "physical_filter": "Cam-g" if v % 2 else "Cam-r",
                    "day_obs": 20240101,
                    "exposure_time": 15.0 * v,
                    "datetime_begin": Time(f"2024-01-01T0{v}:00:00", scale="tai"),
                }
                for v in (1, 2, 3, 4)
            ),
        )
        butler.register_dataset_type("meta", ["visit", "detector"], "StructuredDataDict")
        refs = [
            butler.put({"visit": v, "detector": d}, "meta", instrument="Cam", visit=v, detector=d, run="run1")
            for v in (1, 2, 3, 4)
            for d in (0, 1)
        ]
        for d in (0, 1):
            butler.put(
                {"visit": 1, "detector": d, "rerun": True}, "meta", instrument="Cam", visit=1, detector=d, run="run2"
            )
    return Repo(root, refs)


# create and global behaviour ------------------------------------------------------------------------------


def test_create_prints_location_and_refuses_an_existing_repository(tmp_path: Path) -> None:
    result = run("create", tmp_path / "new")
    assert result.exit_code == 0
    assert str((tmp_path / "new").resolve()) in result.stdout
    assert (tmp_path / "new" / "butler.yaml").is_file()
    assert_user_error(run("create", tmp_path / "new"), "already holds a repository")


def test_missing_repository_is_a_user_error(tmp_path: Path) -> None:
    assert_user_error(run("query-collections", tmp_path / "nowhere"), "not a butler repository", "butler create")


def test_usage_errors_exit_with_2(repo: Repo) -> None:
    assert run("query-data-ids", repo.root).exit_code == 2  # no DIMENSION
    assert run("query-data-ids", repo.root, "visit", "--limit", "-1").exit_code == 2
    result = run("query-data-ids", repo.root, "visit", "-d", "visit = v", "--bind", "v3")
    assert result.exit_code == 2
    assert "NAME=VALUE" in result.stderr
    assert run("query-datasets", repo.root, "--format", "xml").exit_code == 2


def test_bad_where_expression_exits_1_pointing_at_the_column(repo: Repo) -> None:
    result = run("query-data-ids", repo.root, "visit", "-d", "visit = = 3")
    assert_user_error(result, "column 9", "visit = = 3")


def test_debug_log_level_shows_the_traceback(repo: Repo) -> None:
    result = run("--log-level", "DEBUG", "query-data-ids", repo.root, "visit", "-d", "visit = = 3")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "ExpressionSyntaxError" in result.stderr
    assert "Error: unexpected '='" in result.stderr


# query-data-ids -------------------------------------------------------------------------------------------


def test_query_data_ids_where_returns_exactly_the_matching_rows(repo: Repo) -> None:
    rows = run_json("query-data-ids", repo.root, "visit", "-d", "band = 'g' AND visit > 1")
    assert rows == [{"instrument": "Cam", "visit": 3, "band": "g", "physical_filter": "Cam-g", "day_obs": 20240101}]


def test_query_data_ids_bind_order_by_and_limit(repo: Repo) -> None:
    rows = run_json(
        "query-data-ids", repo.root, "visit", "detector",
        "-d", "visit >= v AND detector = det", "--bind", "v=2", "--bind", "det=1", "--order-by", "-visit",
    )
    assert [(r["visit"], r["detector"]) for r in rows] == [(4, 1), (3, 1), (2, 1)]
    rows = run_json("query-data-ids", repo.root, "visit", "--order-by", "visit", "--limit", "2")
    assert [r["visit"] for r in rows] == [1, 2]


def test_query_data_ids_table_has_one_column_per_dimension_required_first(repo: Repo) -> None:
    result = run("query-data-ids", repo.root, "visit", "detector", "-d", "visit = 2 AND detector = 0")
    assert result.exit_code == 0, result.output
    header, rule, *lines = result.stdout.splitlines()
    assert header.split() == ["instrument", "detector", "visit", "band", "physical_filter", "day_obs"]
    assert set(rule) <= {"-", " "}
    assert [line.split() for line in lines] == [["Cam", "0", "2", "r", "Cam-r", "20240101"]]


def test_query_data_ids_with_datasets_constraint(repo: Repo) -> None:
    rows = run_json("query-data-ids", repo.root, "visit", "--datasets", "meta", "-c", "run2")
    assert [r["visit"] for r in rows] == [1]


def test_empty_query_prints_reasons_and_exits_0(repo: Repo) -> None:
    result = run("query-data-ids", repo.root, "visit", "-d", "band = 'i'", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert result.stderr.startswith("No results.")
    assert "band = 'i'" in result.stderr
    table = run("query-data-ids", repo.root, "visit", "-d", "band = 'i'")
    assert table.exit_code == 0
    assert table.stdout == ""
    assert "No results." in table.stderr


# query-datasets --------------------------------------------------------------------------------------------


def test_query_datasets_json_rows(repo: Repo) -> None:
    rows = run_json("query-datasets", repo.root, "meta", "-c", "run1", "-d", "visit = 2")
    expected = {str(r.id): r for r in repo.refs if r.data_id["visit"] == 2}
    assert len(rows) == 2
    for row in rows:
        ref = expected.pop(row["id"])
        assert row == {
            "type": "meta", "run": "run1", "id": str(ref.id),
            "instrument": "Cam", "detector": ref.data_id["detector"], "visit": 2,
        }
    assert not expected


def test_query_datasets_defaults_to_all_collections_and_types(repo: Repo) -> None:
    rows = run_json("query-datasets", repo.root)
    assert len(rows) == 10
    assert sorted({r["run"] for r in rows}) == ["run1", "run2"]


def test_query_datasets_find_first_takes_the_first_collection(repo: Repo) -> None:
    rows = run_json("query-datasets", repo.root, "meta", "-c", "run2,run1", "--find-first", "-d", "detector = 0")
    assert sorted((r["visit"], r["run"]) for r in rows) == [(1, "run2"), (2, "run1"), (3, "run1"), (4, "run1")]


def test_query_datasets_find_first_rejects_collection_globs(repo: Repo) -> None:
    assert_user_error(run("query-datasets", repo.root, "meta", "-c", "run*", "--find-first"), "pattern 'run*'")
    assert run("query-datasets", repo.root, "meta", "--find-first").exit_code == 2


def test_query_datasets_show_uri_gives_the_existing_files(repo: Repo) -> None:
    rows = run_json("query-datasets", repo.root, "meta", "-c", "run1", "--show-uri")
    assert len(rows) == 8
    for row in rows:
        path = Path(row["URI"])
        assert path.is_absolute() and path.is_file()
        assert path.is_relative_to(repo.root.resolve())


def test_query_datasets_unknown_type_suggests_the_closest(repo: Repo) -> None:
    assert_user_error(run("query-datasets", repo.root, "mta", "-c", "run1"), "'mta'", "Did you mean 'meta'?")


def test_query_datasets_table_output(repo: Repo) -> None:
    result = run("query-datasets", repo.root, "meta", "-c", "run2")
    assert result.exit_code == 0
    header, _, *lines = result.stdout.splitlines()
    assert header.split() == ["type", "run", "id", "instrument", "detector", "visit"]
    assert len(lines) == 2 and all(line.split()[:2] == ["meta", "run2"] for line in lines)


# query-collections, query-dataset-types, query-dimension-records ----------------------------------------------


def test_query_collections_types_and_children(repo: Repo) -> None:
    assert run("collection-chain", repo.root, "chain", "run2,run1").exit_code == 0
    rows = run_json("query-collections", repo.root)
    assert rows == [
        {"Name": "chain", "Type": "CHAINED", "Children": ["run2", "run1"]},
        {"Name": "run1", "Type": "RUN", "Children": []},
        {"Name": "run2", "Type": "RUN", "Children": []},
    ]
    rows = run_json("query-collections", repo.root, "run*", "--collection-type", "RUN")
    assert [r["Name"] for r in rows] == ["run1", "run2"]
    assert run_json("query-collections", repo.root, "--collection-type", "TAGGED") == []


def test_query_collections_tree_indents_children(repo: Repo) -> None:
    run("collection-chain", repo.root, "inner", "run1")
    run("collection-chain", repo.root, "outer", "run2", "inner")
    result = run("query-collections", repo.root, "outer", "--chains", "tree")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()[2:]
    assert [(len(line) - len(line.lstrip()), line.split()) for line in lines] == [
        (0, ["outer", "CHAINED"]),
        (2, ["run2", "RUN"]),
        (2, ["inner", "CHAINED"]),
        (4, ["run1", "RUN"]),
    ]
    flat = run_json("query-collections", repo.root, "outer", "--chains", "flatten")
    assert flat == [{"Name": "run2", "Type": "RUN"}, {"Name": "run1", "Type": "RUN"}]


def test_register_dataset_type_then_query_dataset_types_verbose(repo: Repo) -> None:
    result = run("register-dataset-type", repo.root, "cal_meta", "StructuredDataDict", "visit", "detector")
    assert result.exit_code == 0
    assert "Registered dataset type 'cal_meta'" in result.stdout
    again = run("register-dataset-type", repo.root, "cal_meta", "StructuredDataDict", "visit", "detector")
    assert again.exit_code == 0 and "already registered" in again.stdout
    rows = run_json("query-dataset-types", repo.root, "cal*", "-v")
    assert rows == [
        {
            "name": "cal_meta",
            "dimensions": ["instrument", "detector", "visit"],
            "storage_class": "StructuredDataDict",
            "is_calibration": False,
        }
    ]
    table = run("query-dataset-types", repo.root, "--verbose")
    assert "cal_meta" in table.stdout and "StructuredDataDict" in table.stdout and "meta" in table.stdout
    assert run_json("query-dataset-types", repo.root) == [{"name": "cal_meta"}, {"name": "meta"}]


def test_register_dataset_type_with_unknown_storage_class_fails(repo: Repo) -> None:
    result = run("register-dataset-type", repo.root, "x", "StructuredDict", "visit")
    assert_user_error(result, "StructuredDict", "Did you mean 'StructuredDataDict'?")


def test_query_dimension_records_prints_times_in_iso_tai(repo: Repo) -> None:
    rows = run_json("query-dimension-records", repo.root, "visit", "-d", "visit > 2", "--order-by", "visit")
    assert [(r["id"], r["exposure_time"], r["datetime_begin"]) for r in rows] == [
        (3, 45.0, "2024-01-01T03:00:00.000"),
        (4, 60.0, "2024-01-01T04:00:00.000"),
    ]
    assert rows[0]["physical_filter"] == "Cam-g" and rows[0]["region"] is None
    result = run("query-dimension-records", repo.root, "detector")
    assert result.exit_code == 0
    assert [line.split()[:3] for line in result.stdout.splitlines()[2:]] == [["Cam", "0", "S0"], ["Cam", "1", "S1"]]


def test_query_dimension_records_summarises_regions(repo: Repo) -> None:
    from butler.regions import polygon_from_radec

    with repo.butler() as butler:
        butler.registry.insert_dimension_data(
            "visit",
            {"instrument": "Cam", "id": 9, "physical_filter": "Cam-g", "day_obs": 20240101,
             "region": polygon_from_radec([10, 11, 11, 10], [0, 0, 1, 1])},
        )
    (row,) = run_json("query-dimension-records", repo.root, "visit", "-d", "visit = 9")
    assert row["region"] == "ConvexPolygon(4 vertices, centre ra=10.5000 dec=0.5000)"


def test_cli_logging_is_undone_after_the_command(repo: Repo) -> None:
    import logging

    logger = logging.getLogger("butler")
    before = (logger.level, list(logger.handlers))
    assert run("--log-level", "debug", "query-collections", repo.root).exit_code == 0
    assert (logger.level, list(logger.handlers)) == before


# ingest-files ---------------------------------------------------------------------------------------------


def _register_arrays(repo: Repo) -> None:
    result = run("register-dataset-type", repo.root, "arr", "NumpyArray", "visit", "detector")
    assert result.exit_code == 0, result.output


def test_ingest_files_from_ecsv_table(repo: Repo, tmp_path: Path) -> None:
    _register_arrays(repo)
    src = tmp_path / "src"
    src.mkdir()
    arrays = {(v, 0): np.arange(5, dtype=np.float32) * v for v in (1, 2, 3)}
    for (v, d), a in arrays.items():
        np.save(src / f"a{v}.npy", a)
    table = Table({"file": [str(src / f"a{v}.npy") for v, _ in arrays], "visit": [1, 2, 3], "detector": [0, 0, 0]})
    table.write(tmp_path / "files.ecsv", format="ascii.ecsv")
    result = run("ingest-files", repo.root, "arr", "ingested", tmp_path / "files.ecsv", "--data-id", "instrument=Cam")
    assert result.exit_code == 0, result.output
    assert "Ingested 3 'arr' dataset(s) into run 'ingested'" in result.stdout
    rows = run_json("query-datasets", repo.root, "arr", "-c", "ingested")
    assert sorted(r["visit"] for r in rows) == [1, 2, 3]
    with repo.butler(collections="ingested") as butler:
        for (v, d), a in arrays.items():
            np.testing.assert_array_equal(butler.get("arr", instrument="Cam", visit=v, detector=d), a)
    assert all((src / f"a{v}.npy").is_file() for v in (1, 2, 3))  # auto = copy from outside the repo


def test_ingest_files_csv_paths_relative_to_prefix(repo: Repo, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for v in (1, 2):
        (data / f"m{v}.yaml").write_text(f"visit: {v}\nsource: csv\n")
    (tmp_path / "files.csv").write_text("path,instrument,visit,detector\nm1.yaml,Cam,1,1\nm2.yaml,Cam,2,1\n")
    result = run(
        "ingest-files", repo.root, "meta", "csvrun", tmp_path / "files.csv", "--prefix", data, "--transfer", "move"
    )
    assert result.exit_code == 0, result.output
    assert not (data / "m1.yaml").exists()  # moved
    with repo.butler(collections="csvrun") as butler:
        assert butler.get("meta", instrument="Cam", visit=2, detector=1) == {"visit": 2, "source": "csv"}


def test_ingest_files_with_a_missing_file_ingests_nothing(repo: Repo, tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("a: 1\n")
    (tmp_path / "files.csv").write_text("path,visit,detector\nok.yaml,1,0\ngone.yaml,2,0\n")
    result = run("ingest-files", repo.root, "meta", "failed", tmp_path / "files.csv", "--data-id", "instrument=Cam")
    assert_user_error(result, "gone.yaml", "does not exist")
    with repo.butler() as butler:  # not even the new run is left behind
        assert butler.registry.query_collections("failed") == []
    assert _files_under(repo.root / "failed") == []


def test_ingest_files_rejects_other_table_formats(repo: Repo, tmp_path: Path) -> None:
    (tmp_path / "files.txt").write_text("path visit\n")
    result = run("ingest-files", repo.root, "meta", "r", tmp_path / "files.txt")
    assert result.exit_code == 2
    assert "ECSV" in result.stderr


# collection-chain --------------------------------------------------------------------------------------------


def test_collection_chain_create_extend_remove(repo: Repo) -> None:
    result = run("collection-chain", repo.root, "chain", "run1")
    assert (result.exit_code, result.stdout) == (0, "[run1]\n")
    assert run("collection-chain", repo.root, "chain", "run2", "--mode", "extend").stdout == "[run1, run2]\n"
    assert run("collection-chain", repo.root, "chain", "run2", "--mode", "prepend").stdout == "[run2, run1]\n"
    assert run("collection-chain", repo.root, "chain", "run2", "--mode", "remove").stdout == "[run1]\n"
    assert run("collection-chain", repo.root, "chain", "run1,run2").stdout == "[run1, run2]\n"
    assert run("collection-chain", repo.root, "chain", "--mode", "pop").stdout == "[run2]\n"
    with repo.butler() as butler:
        assert butler.registry.get_collection_chain("chain") == ("run2",)


def test_collection_chain_cycle_exits_1(repo: Repo) -> None:
    assert run("collection-chain", repo.root, "a", "run1").exit_code == 0
    assert run("collection-chain", repo.root, "b", "a").exit_code == 0
    assert_user_error(run("collection-chain", repo.root, "a", "b", "--mode", "extend"), "contain itself")
    with repo.butler() as butler:
        assert butler.registry.get_collection_chain("a") == ("run1",)


def test_collection_chain_unknown_child_suggests(repo: Repo) -> None:
    assert_user_error(run("collection-chain", repo.root, "chain", "rn1"), "'rn1'", "Did you mean 'run1'?")


# remove-runs ---------------------------------------------------------------------------------------------------


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_remove_runs_no_confirm_removes_the_run_and_its_files(repo: Repo) -> None:
    run("collection-chain", repo.root, "chain", "run1,run2")
    assert len(_files_under(repo.root / "run1")) == 8
    result = run("remove-runs", repo.root, "run1", "--no-confirm")
    assert result.exit_code == 0, result.output
    assert "Removed 1 run(s) and 8 dataset(s)" in result.stdout
    assert "run1" in result.stdout and "chain" in result.stdout  # listed with its count and parent chain
    assert _files_under(repo.root / "run1") == []
    assert len(_files_under(repo.root / "run2")) == 2
    assert [r["Name"] for r in run_json("query-collections", repo.root)] == ["chain", "run2"]
    assert run_json("query-collections", repo.root, "chain")[0]["Children"] == ["run2"]


def test_remove_runs_asks_for_confirmation(repo: Repo) -> None:
    result = run("remove-runs", repo.root, "run*", input="n\n")
    assert result.exit_code == 0
    assert "Aborted" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["run1", "8"] for line in lines)
    assert any(line.split()[:2] == ["run2", "2"] for line in lines)
    assert len(_files_under(repo.root / "run1")) == 8
    result = run("remove-runs", repo.root, "run2", input="y\n")
    assert result.exit_code == 0 and "Removed 1 run(s) and 2 dataset(s)" in result.stdout


def test_remove_runs_with_no_match_or_non_runs_removes_nothing(repo: Repo) -> None:
    result = run("remove-runs", repo.root, "nothing*", "--no-confirm")
    assert result.exit_code == 0 and "nothing to remove" in result.stdout
    run("collection-chain", repo.root, "chain", "run1")
    result = run("remove-runs", repo.root, "chain", "--no-confirm")
    assert result.exit_code == 0
    assert "chain (CHAINED)" in result.stdout
    assert len(_files_under(repo.root / "run1")) == 8


# verify -------------------------------------------------------------------------------------------------------


def test_verify_finds_a_deleted_file_and_fix_repairs_it(repo: Repo) -> None:
    result = run("verify", repo.root)
    assert result.exit_code == 0 and "No problems found" in result.stdout
    rows = run_json("query-datasets", repo.root, "meta", "-c", "run1", "-d", "visit = 3 AND detector = 1", "--show-uri")
    Path(rows[0]["URI"]).unlink()
    result = run("verify", repo.root)
    assert result.exit_code == 1
    assert "missing file" in result.stdout and rows[0]["id"] in result.stdout
    assert "1 missing" in result.stdout
    report = json.loads(run("verify", repo.root, "--format", "json").stdout)
    assert [(r["problem"], r["dataset_id"]) for r in report] == [("missing file", rows[0]["id"])]
    fixed = run("verify", repo.root, "--fix")
    assert fixed.exit_code == 0 and "Fixed" in fixed.stdout
    assert run("verify", repo.root).exit_code == 0
    assert len(run_json("query-datasets", repo.root, "meta", "-c", "run1")) == 7


def test_verify_reports_orphan_files(repo: Repo) -> None:
    (repo.root / "run1" / "stray.txt").write_text("?")
    result = run("verify", repo.root, "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [
        {"problem": "orphan file", "dataset_id": None, "path": "run1/stray.txt", "detail": "file no dataset refers to"}
    ]
    assert "1 orphan" in result.stderr  # the summary stays off stdout with --format json
    assert run("verify", repo.root, "--fix").exit_code == 0
    assert (repo.root / ".quarantine" / "run1" / "stray.txt").is_file()
    assert run("verify", repo.root).exit_code == 0


# export / import ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(TRANSFERS_MISSING, reason="transfers not implemented yet")
def test_export_then_import_into_a_new_repository(repo: Repo, tmp_path: Path) -> None:
    result = run(
        "export", repo.root, tmp_path / "exported",
        "-c", "run1", "--dataset-type", "meta", "-d", "visit < v", "--bind", "v=3",
    )
    assert result.exit_code == 0, result.output
    assert "Exported 4 dataset(s)" in result.stdout
    assert run("create", tmp_path / "other").exit_code == 0
    result = run("import", tmp_path / "other", tmp_path / "exported")
    assert result.exit_code == 0, result.output
    assert "Imported 4 dataset(s)" in result.stdout
    rows = run_json("query-datasets", tmp_path / "other", "meta", "-c", "run1")
    assert sorted({str(r.id) for r in repo.refs if r.data_id["visit"] < 3}) == sorted(r["id"] for r in rows)
    with Butler(tmp_path / "other", collections="run1") as butler:
        assert butler.get("meta", instrument="Cam", visit=2, detector=1) == {"visit": 2, "detector": 1}


# JSON output is one document --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("query-collections",),
        ("query-dataset-types", "-v"),
        ("query-data-ids", "visit", "detector"),
        ("query-datasets", "--show-uri"),
        ("query-dimension-records", "visit"),
        ("verify",),
    ],
)
def test_json_output_is_a_list_of_row_objects(repo: Repo, args: tuple[str, ...]) -> None:
    rows = run_json(args[0], repo.root, *args[1:])
    assert isinstance(rows, list)
    assert all(isinstance(row, dict) for row in rows)
