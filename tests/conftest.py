"""Shared fixtures: the real-data directory, and small butler repositories with known contents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from butler import Butler, DimensionUniverse
from butler.regions import polygon_from_radec

SHARED_DATA = Path(os.environ.get("BUTLER_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real telescope data in ``../shared/data``; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set BUTLER_SHARED_DATA)")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def universe() -> DimensionUniverse:
    return DimensionUniverse.default()


POSTGRES_URL = os.environ.get("BUTLER_TEST_POSTGRES_URL")  # e.g. postgresql+psycopg://postgres@127.0.0.1:5433/postgres


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Butler:
    """An empty repository, once with a SQLite registry and once with PostgreSQL when
    ``BUTLER_TEST_POSTGRES_URL`` names a server (a fresh database is made for each test)."""
    if request.param == "sqlite":
        butler = Butler.create(tmp_path / "repo")
        yield butler
        butler.close()
        return
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set BUTLER_TEST_POSTGRES_URL to run the registry tests on one")
    import uuid

    import sqlalchemy as sa

    name = f"butler_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    butler = Butler.create(tmp_path / "repo", db=url)
    yield butler
    butler.close()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


# The toy camera of the populated repository: 4 detectors, 10 visits (odd visits in r, even in g),
# each detector a 0.05 deg square, visits stepping 0.1 deg in RA; one tract with 10 patches of 0.3 deg
# whose edges (RA 9.01 + 0.3 k) never coincide with a detector edge.
N_VISITS = 10
N_DETECTORS = 4


def detector_corners(visit: int, detector: int) -> tuple[list[float], list[float]]:
    ra0 = 10 + visit * 0.1 + detector * 0.05
    return [ra0, ra0 + 0.05, ra0 + 0.05, ra0], [0.0, 0.0, 0.05, 0.05]


def patch_corners(patch: int) -> tuple[list[float], list[float]]:
    ra0 = 9.01 + patch * 0.3
    return [ra0, ra0 + 0.3, ra0 + 0.3, ra0], [-1.0, -1.0, 1.0, 1.0]


def populate(butler: Butler) -> None:
    """Insert the toy camera's dimension records (with regions) into a repository."""
    reg = butler.registry
    reg.insert_dimension_data("instrument", {"name": "Cam", "visit_max": 1000, "detector_max": N_DETECTORS})
    reg.insert_dimension_data("band", {"name": "r"}, {"name": "g"})
    reg.insert_dimension_data(
        "physical_filter",
        {"instrument": "Cam", "name": "r1", "band": "r"},
        {"instrument": "Cam", "name": "g1", "band": "g"},
    )
    reg.insert_dimension_data("day_obs", {"instrument": "Cam", "id": 20200101}, {"instrument": "Cam", "id": 20200102})
    reg.insert_dimension_data(
        "detector", *[{"instrument": "Cam", "id": i, "full_name": f"D{i}"} for i in range(N_DETECTORS)]
    )
    reg.insert_dimension_data(
        "visit",
        *[
            {
                "instrument": "Cam",
                "id": v,
                "physical_filter": "r1" if v % 2 else "g1",
                "day_obs": 20200101 if v < 5 else 20200102,
                "exposure_time": 30.0 + v,
                "datetime_begin": f"2020-01-0{1 if v < 5 else 2}T0{v % 5}:00:00",
                "region": polygon_from_radec([10 + v * 0.1, 10.2 + v * 0.1, 10.2 + v * 0.1, 10 + v * 0.1], [0, 0, 0.05, 0.05]),
            }
            for v in range(N_VISITS)
        ],
    )
    reg.insert_dimension_data(
        "visit_detector_region",
        *[
            {"instrument": "Cam", "visit": v, "detector": d, "region": polygon_from_radec(*detector_corners(v, d))}
            for v in range(N_VISITS)
            for d in range(N_DETECTORS)
        ],
    )
    reg.insert_dimension_data("skymap", {"name": "sm"})
    reg.insert_dimension_data("tract", {"skymap": "sm", "id": 0, "region": polygon_from_radec([9, 12, 12, 9], [-1, -1, 1, 1])})
    reg.insert_dimension_data(
        "patch",
        *[{"skymap": "sm", "tract": 0, "id": p, "cell_x": p, "cell_y": 0, "region": polygon_from_radec(*patch_corners(p))} for p in range(10)],
    )


def table_counts(butler: Butler) -> dict[str, int]:
    """Row count of every table of a repository's registry."""
    import sqlalchemy as sa

    with butler.registry.db.transaction() as conn:
        names = sorted(sa.inspect(conn).get_table_names())
        return {n: conn.execute(sa.select(sa.func.count()).select_from(sa.table(n))).scalar_one() for n in names}


@pytest.fixture
def populated(repo: Butler) -> Butler:
    """A repository with the toy camera's dimension records."""
    populate(repo)
    return repo
