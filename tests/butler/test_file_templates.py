"""Tests of butler/file_templates.py: parsing, rendering, sanitising and validating file templates."""

from __future__ import annotations

import pytest

from butler.datasets import DatasetRef, DatasetType
from butler.dimensions import DataCoordinate, DimensionRecord, DimensionUniverse
from butler.errors import FileTemplateError
from butler.file_templates import FileTemplate, FileTemplates

DEFAULT = (
    "{run}/{datasetType}/{band:?}/{day_obs:?}/{datasetType}_{instrument:?}_{exposure:?}_{visit:?}_{detector:?}"
    "_{skymap:?}_{tract:?}_{patch:?}_{run}"
)


@pytest.fixture(scope="module")
def universe() -> DimensionUniverse:
    return DimensionUniverse.default()


@pytest.fixture(scope="module")
def calexp(universe) -> DatasetType:
    return DatasetType("calexp", ["visit", "detector"], "ArrowAstropy", universe=universe)


def full_data_id(universe, *, instrument="HSC", band="r", physical_filter="HSC-R", day_obs=20240101):
    """A visit+detector data ID that knows its implied values (band, physical_filter, day_obs)."""
    group = universe.conform(["visit", "detector"])
    assert group.data_coordinate_keys == ("instrument", "detector", "visit", "band", "physical_filter", "day_obs")
    return DataCoordinate.from_full_values(group, (instrument, 7, 42, band, physical_filter, day_obs))


def test_fields_and_required_fields_are_parsed():
    template = FileTemplate("{run}/{datasetType}/{band:?}/{visit.name}_{detector}")
    assert template.fields == {"run", "datasetType", "band", "visit.name", "detector"}
    assert template.required_fields == {"run", "datasetType", "visit.name", "detector"}


@pytest.mark.parametrize(
    "text",
    ["{run", "run}/x", "{run}/{}", "{run}/{vi sit}", "{run}/{visit:x}", "{run}/{{visit}}", "/abs/{run}", "{run}//x", "{run}/../x"],
)
def test_malformed_templates_are_rejected(text):
    with pytest.raises(FileTemplateError):
        FileTemplate(text)


def test_optional_fields_without_values_are_dropped_with_one_separator(universe, calexp):
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    path = FileTemplate(DEFAULT).format(DatasetRef(calexp, data_id, run="run1"))
    # band and day_obs are implied values this data ID does not know: their segments vanish.
    assert path == "run1/calexp/calexp_HSC_42_7_run1"


def test_implied_values_are_used_when_the_data_id_is_full(universe, calexp):
    path = FileTemplate(DEFAULT).format(DatasetRef(calexp, full_data_id(universe), run="run1"))
    assert path == "run1/calexp/r/20240101/calexp_HSC_42_7_run1"


def test_leading_optional_field_drops_the_separator_after_it(universe, calexp):
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    ref = DatasetRef(calexp, data_id, run="run1")
    assert FileTemplate("{run}/{band:?}_{visit}_{detector}").format(ref) == "run1/42_7"
    assert FileTemplate("{run}/{visit}_{detector}_{band:?}").format(ref) == "run1/42_7"
    assert FileTemplate("{run}/{band:?}_{day_obs:?}_{visit}").format(ref) == "run1/42"


def test_record_fields_are_substituted(universe, calexp):
    data_id = full_data_id(universe)
    visit = DimensionRecord(
        universe["visit"],
        {"instrument": "HSC", "id": 42, "physical_filter": "HSC-R", "day_obs": 20240101, "name": "v42"},
    )
    expanded = data_id.expanded({"visit": visit})
    ref = DatasetRef(calexp, expanded, run="run1")
    assert FileTemplate("{run}/{visit.name}/{detector}").format(ref) == "run1/v42/7"
    # A record field that is None (target_name was not given) is unknown: optional drops, required fails.
    assert FileTemplate("{run}/{visit.target_name:?}/{detector}").format(ref) == "run1/7"
    with pytest.raises(FileTemplateError, match="visit.target_name"):
        FileTemplate("{run}/{visit.target_name}/{detector}").format(ref)


def test_component_and_parent_name(universe):
    component = DatasetType("calexp.wcs", ["visit", "detector"], "ArrowAstropy", universe=universe)
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    ref = DatasetRef(component, data_id, run="run1")
    assert FileTemplate("{run}/{datasetType}_{component:?}_{visit}").format(ref) == "run1/calexp_wcs_42"


def test_required_field_without_value_names_field_and_data_id(universe, calexp):
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    with pytest.raises(FileTemplateError, match=r"\{band\}.*detector: 7"):
        FileTemplate("{run}/{band}/{visit}_{detector}").format(DatasetRef(calexp, data_id, run="run1"))


@pytest.mark.parametrize("bad", ["../../x", "..", "a/b", "a\\b", "nul\x00byte", "tab\there", "", "x" * 201])
def test_unsafe_values_are_rejected(universe, calexp, bad):
    ref = DatasetRef(calexp, full_data_id(universe, physical_filter=bad), run="run1")
    with pytest.raises(FileTemplateError, match="physical_filter"):
        FileTemplate("{run}/{physical_filter}/{visit}_{detector}").format(ref)


def test_unsafe_run_name_is_rejected(universe, calexp):
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    with pytest.raises(FileTemplateError, match=r"\{run\}"):
        FileTemplate(DEFAULT).format(DatasetRef(calexp, data_id, run=".."))


def test_value_of_200_characters_is_accepted(universe, calexp):
    ref = DatasetRef(calexp, full_data_id(universe, physical_filter="f" * 200), run="run1")
    assert FileTemplate("{run}/{physical_filter}/{visit}_{detector}").format(ref) == f"run1/{'f' * 200}/42_7"


def test_empty_file_name_is_an_error(universe, calexp):
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    with pytest.raises(FileTemplateError, match="no file name"):
        FileTemplate("{run}/{visit}_{detector}/{band:?}").format(DatasetRef(calexp, data_id, run="run1"))


def test_validate_accepts_the_default_template(calexp):
    FileTemplate(DEFAULT).validate(calexp)


def test_validate_rejects_template_missing_a_dimension(calexp):
    with pytest.raises(FileTemplateError, match=r"calexp.*\{detector\}.*butler.yaml"):
        FileTemplate("{run}/{datasetType}_{visit}").validate(calexp)


def test_validate_rejects_template_without_run(calexp):
    with pytest.raises(FileTemplateError, match=r"\{run\}"):
        FileTemplate("{datasetType}/{visit}_{detector}").validate(calexp)


def test_validate_rejects_optional_run(calexp):
    with pytest.raises(FileTemplateError, match=r"\{run\}"):
        FileTemplate("{run:?}/{datasetType}/{visit}_{detector}").validate(calexp)


def test_validate_accepts_a_record_field_for_a_dimension(calexp):
    FileTemplate("{run}/{instrument}/{visit.name}_{detector}").validate(calexp)


def test_validate_rejects_unknown_field(calexp):
    with pytest.raises(FileTemplateError, match="vist"):
        FileTemplate("{run}/{vist}_{visit}_{detector}").validate(calexp)


def test_lookup_by_name_then_storage_class_then_default(universe, calexp):
    templates = FileTemplates(
        {"default": "{run}/default/{datasetType}", "calexp": "{run}/by_name", "NumpyArray": "{run}/by_class"}
    )
    array = DatasetType("flat", ["detector"], "NumpyArray", universe=universe)
    other = DatasetType("src", ["visit", "detector"], "ArrowAstropy", universe=universe)
    component = DatasetType("calexp.wcs", ["visit", "detector"], "NumpyArray", universe=universe)
    assert templates.get(calexp).template == "{run}/by_name"
    assert templates.get(array).template == "{run}/by_class"
    assert templates.get(other).template == "{run}/default/{datasetType}"
    assert templates.get(component).template == "{run}/by_name"


def test_templates_need_a_default():
    with pytest.raises(FileTemplateError, match="default"):
        FileTemplates({"calexp": "{run}/{visit}"})


def test_malformed_configured_template_names_its_key():
    with pytest.raises(FileTemplateError, match="calexp"):
        FileTemplates({"default": "{run}/x", "calexp": "{run}/{visit"})


def test_nested_run_name_nests_directories_but_not_the_file_name(universe):
    dt = DatasetType("calexp", ["visit", "detector"], "ArrowAstropy", universe=universe)
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    ref = DatasetRef(dt, data_id, run="u/someone/run1")
    path = FileTemplate("{run}/{datasetType}/{datasetType}_{visit}_{detector}_{run}").format(ref)
    assert path == "u/someone/run1/calexp/calexp_42_7_u_someone_run1"


@pytest.mark.parametrize("run", ["u/../x", "u//x", "/abs", "u/x/", "u/.", "u/x\x00"])
def test_nested_run_name_segments_are_checked(universe, run):
    dt = DatasetType("calexp", ["visit", "detector"], "ArrowAstropy", universe=universe)
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    with pytest.raises(FileTemplateError):
        FileTemplate("{run}/{datasetType}_{visit}_{detector}").format(DatasetRef(dt, data_id, run=run))
