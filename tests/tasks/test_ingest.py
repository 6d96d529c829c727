"""Raw ingest (tasks.instruments.ingest) and its command line, on the SDSS Stripe 82 frames."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from astropy.io import fits
from click.testing import CliRunner
from conftest import table_counts

from butler import Butler
from butler.cli import cli
from tasks.errors import IngestError
from tasks.instruments import ingest_raws

SDSS = "sdss_stripe82_lsst_demo"
EXPOSURES = {
    run * 100_000 + band * 10_000 + field
    for run, field in ((4192, 300), (6377, 399))
    for band in range(5)
}  # (run * 10 + filter_index) * 10000 + field


def _input(shared_data: Path) -> Path:
    return shared_data / SDSS / "input"


def _fpc(shared_data: Path, run: int = 4192, band: str = "r") -> Path:
    field = 300 if run == 4192 else 399
    return _input(shared_data) / f"{run}/40/corr/4/fpC-{run:06d}-{band}4-{field:04d}.fit.gz"


@pytest.fixture
def empty_repo(tmp_path: Path) -> Butler:
    butler = Butler.create(tmp_path / "repo")
    yield butler
    butler.close()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    """A repository with every SDSS frame ingested (symlinks) once, and the report."""
    butler = Butler.create(tmp_path_factory.mktemp("ingest") / "repo")
    report = ingest_raws(butler, [_input(shared_data)], transfer="symlink")
    yield butler, report
    butler.close()


def test_ingest_finds_every_frame_and_its_auxiliary_files(ingested):
    butler, report = ingested
    assert report.ok, report.failures
    assert len(report.refs) == 10 and len(report.auxiliary_refs) == 30
    assert report.exposures == 10
    assert {ref.data_id["exposure"] for ref in report.refs} == EXPOSURES
    assert report.runs == ["SDSS/raw/all"]
    found = butler.query_datasets("fpM", "SDSS/raw/all") + butler.query_datasets("tsField", "SDSS/raw/all")
    assert len(found) == 20


def test_reingest_is_a_noop(ingested, shared_data):
    butler, _ = ingested
    before = table_counts(butler)
    report = ingest_raws(butler, [_input(shared_data)], transfer="symlink")
    assert report.summary().startswith("0 new raws")
    assert len(report.skipped) == 10 and report.ok
    assert table_counts(butler) == before


def test_corrupt_and_truncated_files_are_reported_and_the_others_ingested(empty_repo, shared_data, tmp_path):
    good = _fpc(shared_data)
    garbage = tmp_path / "fpC-004192-g4-0300.fit"
    garbage.write_bytes(b"this is not FITS" * 5000)
    truncated_gz = tmp_path / "fpC-004192-i4-0300.fit.gz"
    truncated_gz.write_bytes(_fpc(shared_data, band="i").read_bytes()[:1_000_000])
    truncated = tmp_path / "fpC-004192-u4-0300.fit"  # uncompressed, cut inside the pixel data
    truncated.write_bytes(gzip.decompress(_fpc(shared_data, band="u").read_bytes())[:3_000_000])

    report = ingest_raws(empty_repo, [good, garbage, truncated_gz, truncated], transfer="symlink")

    assert [ref.data_id["exposure"] for ref in report.refs] == [419220300]
    reasons = {f.path.name: f.reason for f in report.failures}
    assert set(reasons) == {garbage.name, truncated_gz.name, truncated.name}
    assert "not a readable FITS file" in reasons[garbage.name]
    assert "damaged gzip file" in reasons[truncated_gz.name]
    assert "truncated" in reasons[truncated.name] and "6108480" in reasons[truncated.name]
    assert all(str(f.path) in str(f) for f in report.failures)  # the message names the file


def test_a_file_of_no_known_instrument_is_reported(empty_repo, tmp_path):
    other = tmp_path / "image.fits"
    fits.PrimaryHDU(data=None, header=fits.Header({"TELESCOP": "other"})).writeto(other)
    report = ingest_raws(empty_repo, [other])
    assert not report.refs
    assert "no known instrument recognises" in report.failures[0].reason


def test_mislabelled_file_name_is_rejected(empty_repo, shared_data, tmp_path):
    renamed = tmp_path / "fpC-004192-r4-0301.fit.gz"  # header says field 300
    shutil.copy(_fpc(shared_data), renamed)
    report = ingest_raws(empty_repo, [renamed])
    assert "mislabelled" in report.failures[0].reason


def test_same_frame_twice_in_one_call_is_ingested_once(empty_repo, shared_data, tmp_path):
    copy = tmp_path / _fpc(shared_data).name
    shutil.copy(_fpc(shared_data), copy)
    report = ingest_raws(empty_repo, [_fpc(shared_data), copy], transfer="symlink")
    assert len(report.refs) == 1
    assert "same exposure 419220300 and detector 15" in report.failures[0].reason


def test_missing_location_and_bad_transfer_raise(empty_repo, shared_data, tmp_path):
    with pytest.raises(IngestError, match="no such file or directory"):
        ingest_raws(empty_repo, [tmp_path / "nope"])
    with pytest.raises(IngestError, match="unknown transfer mode 'teleport'"):
        ingest_raws(empty_repo, [_fpc(shared_data)], transfer="teleport")


def test_copy_transfer_and_custom_run(empty_repo, shared_data):
    report = ingest_raws(empty_repo, [_fpc(shared_data)], transfer="copy", run="SDSS/raw/mine")
    assert report.runs == ["SDSS/raw/mine"]
    record = empty_repo.registry.get_datastore_records([report.refs[0].id])[report.refs[0].id]
    stored = empty_repo.config.root / record["path"]
    assert stored.is_file() and not stored.is_symlink()
    assert stored.stat().st_size == _fpc(shared_data).stat().st_size


@pytest.mark.slow
def test_parallel_header_reading_gives_the_same_result(empty_repo, shared_data):
    report = ingest_raws(empty_repo, [_input(shared_data)], transfer="symlink", processes=2)
    assert report.ok and {r.data_id["exposure"] for r in report.refs} == EXPOSURES


def test_cli_ingest_reports_failures_on_stderr_and_exits_1(tmp_path, shared_data):
    repo = tmp_path / "repo"
    Butler.create(repo).close()
    bad = tmp_path / "fpC-004192-g4-0300.fit"
    bad.write_bytes(b"\0" * 100)
    runner = CliRunner()
    result = runner.invoke(cli, ["ingest-raws", str(repo), str(_fpc(shared_data)), str(bad), "-t", "symlink"])
    assert result.exit_code == 1, result.output
    assert "419220300" in result.stdout and "4192-r-0300" in result.stdout
    assert "Failed to ingest 1 file(s)" in result.stderr and str(bad) in result.stderr

    again = runner.invoke(cli, ["ingest-raws", str(repo), str(_fpc(shared_data)), "-t", "symlink"])
    assert again.exit_code == 0, again.output
    assert "0 new raws" in again.stdout and "1 already ingested" in again.stdout


def test_directory_search_ignores_files_of_no_instrument(empty_repo, shared_data, tmp_path):
    """A catalogue found next to the raws by a directory search is not a raw, and not a failure."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / _fpc(shared_data).name).symlink_to(_fpc(shared_data))
    fits.BinTableHDU.from_columns([fits.Column("ra", "D", array=[1.0])]).writeto(tmp_path / "data" / "stars.fits")
    report = ingest_raws(empty_repo, [tmp_path / "data"], transfer="symlink")
    assert report.ok and len(report.refs) == 1
    assert [p.name for p in report.ignored] == ["stars.fits"]
    assert "1 non-raw files ignored" in report.summary()
