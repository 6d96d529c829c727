"""Pipeline YAML: every key, fragments, imports, parameters, overrides, contracts and their errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import toy_tasks

from graph.errors import ConfigOverrideError, PipelineDefinitionError
from graph.pipeline import Pipeline, TaskDef

TOY = """
description: Toy processing.
instrument: tasks.instruments.SimCam
parameters:
  offset: 2.5
tasks:
  addOne:
    class: toy_tasks.AddOneTask
    config:
      value: parameters.offset
  sumDetectors: toy_tasks.SumDetectorsTask
  stats:
    class: toy_tasks.StatsTask
    config:
      - doWriteMask: false
      - file: stats.yaml
subsets:
  perDetector: [addOne, stats]
  perVisit:
    subset: [sumDetectors]
    description: Visit-level work.
contracts:
  - contract: "addOne.value > 0"
    msg: "the offset must be positive"
  - "len(stats.connections.stats) > 0"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def toy_file(tmp_path: Path) -> Path:
    write(tmp_path, "stats.yaml", "connections.stats: my_stats\n")
    return write(tmp_path, "toy.yaml", TOY)


def test_every_top_level_key_is_read(toy_file: Path):
    pipeline = Pipeline.from_file(toy_file)
    assert pipeline.description == "Toy processing."
    assert pipeline.instrument == "tasks.instruments.SimCam"
    assert pipeline.parameters == {"offset": 2.5}
    assert pipeline.task_labels() == ["addOne", "sumDetectors", "stats"]
    assert pipeline.tasks["sumDetectors"] == TaskDef("sumDetectors", "toy_tasks.SumDetectorsTask", [])
    assert pipeline.tasks["addOne"].config_overrides == [("dict", {"value": "parameters.offset"})]
    assert pipeline.tasks["stats"].config_overrides == [
        ("dict", {"doWriteMask": False}),
        ("file", str(toy_file.parent / "stats.yaml")),  # relative to the pipeline file
    ]
    assert pipeline.subsets == {"perDetector": {"addOne", "stats"}, "perVisit": {"sumDetectors"}}
    assert pipeline.subset_descriptions == {"perVisit": "Visit-level work."}
    assert [(c.expression, c.msg) for c in pipeline.contracts] == [
        ("addOne.value > 0", "the offset must be positive"),
        ("len(stats.connections.stats) > 0", None),
    ]


def test_configs_get_parameters_dicts_and_files_in_order(toy_file: Path):
    graph = Pipeline.from_file(toy_file).to_graph()
    assert graph.tasks["addOne"].config.value == 2.5
    stats = graph.tasks["stats"]
    assert stats.config.doWriteMask is False and stats.config.frozen
    assert set(graph.outputs_of("stats")) == {"stats"}  # the mask connection was removed by the config
    assert graph.outputs_of("stats")["stats"][1].name == "my_stats"  # from the config file


@pytest.mark.parametrize(
    "fragment, labels",
    [("addOne", ["addOne"]), ("perDetector", ["addOne", "stats"]), ("perVisit, addOne", ["addOne", "sumDetectors"])],
)
def test_fragment_selects_labels_and_subsets(toy_file: Path, fragment: str, labels: list[str]):
    pipeline = Pipeline.from_file(f"{toy_file}#{fragment}")
    assert pipeline.task_labels() == labels
    assert all(sub <= set(labels) for sub in pipeline.subsets.values())


def test_fragment_with_unknown_name_names_file_and_suggests(toy_file: Path):
    with pytest.raises(PipelineDefinitionError, match=r"toy\.yaml#adOne.*'adOne'.*Did you mean 'addOne'"):
        Pipeline.from_file(f"{toy_file}#adOne")


def test_subset_drops_contracts_on_removed_labels(toy_file: Path):
    pipeline = Pipeline.from_file(toy_file).subset(["addOne"])
    assert [c.expression for c in pipeline.contracts] == ["addOne.value > 0"]
    assert pipeline.subsets == {"perDetector": {"addOne"}}


# Imports --------------------------------------------------------------------------------------------------


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    write(tmp_path, "stats.yaml", "doWriteMask: false\n")
    write(tmp_path, "base.yaml", TOY)
    return tmp_path


@pytest.mark.parametrize(
    "spec, labels",
    [
        ("- base.yaml", ["addOne", "sumDetectors", "stats"]),
        ("- {location: base.yaml, include: [addOne]}", ["addOne"]),
        ("- {location: base.yaml, include: [perDetector]}", ["addOne", "stats"]),
        ("- {location: base.yaml, exclude: [perDetector]}", ["sumDetectors"]),
    ],
)
def test_imports_with_include_and_exclude(base_dir: Path, spec: str, labels: list[str]):
    path = write(base_dir, "top.yaml", f"description: top\nimports:\n  {spec}\n")
    assert Pipeline.from_file(path).task_labels() == labels


def test_importing_file_extends_imported_tasks_and_overrides_parameters(base_dir: Path):
    path = write(
        base_dir,
        "top.yaml",
        """
        description: top
        parameters: {offset: 7.0}
        imports: [base.yaml]
        tasks:
          addOne:
            config: {scale: 3.0}
          flatten: toy_tasks.FlattenTask
        """,
    )
    pipeline = Pipeline.from_file(path)
    assert pipeline.task_labels() == ["addOne", "sumDetectors", "stats", "flatten"]
    assert pipeline.instrument == "tasks.instruments.SimCam"
    config = pipeline.to_graph().tasks["addOne"].config
    assert (config.value, config.scale) == (7.0, 3.0)


def test_import_cycle_is_named(tmp_path: Path):
    write(tmp_path, "a.yaml", "description: a\nimports: [b.yaml]\n")
    write(tmp_path, "b.yaml", "description: b\nimports: [a.yaml]\n")
    with pytest.raises(PipelineDefinitionError, match=r"cycle: a\.yaml -> b\.yaml -> a\.yaml"):
        Pipeline.from_file(tmp_path / "a.yaml")


def test_label_defined_differently_by_two_imports_is_an_error(base_dir: Path):
    write(base_dir, "other.yaml", "description: o\ntasks:\n  addOne: toy_tasks.StatsTask\n")
    write(base_dir, "same.yaml", TOY.replace("stats.yaml", str(base_dir / "stats.yaml")))
    ok = write(base_dir, "ok.yaml", "description: t\nimports: [base.yaml, same.yaml]\n")
    assert Pipeline.from_file(ok).task_labels() == ["addOne", "sumDetectors", "stats"]
    bad = write(base_dir, "bad.yaml", "description: t\nimports: [base.yaml, other.yaml]\n")
    with pytest.raises(PipelineDefinitionError, match=r"bad\.yaml.*'addOne'.*AddOneTask.*StatsTask"):
        Pipeline.from_file(bad)


def test_import_of_unknown_label_or_missing_file(base_dir: Path):
    path = write(base_dir, "top.yaml", "description: t\nimports:\n  - {location: base.yaml, exclude: [isr]}\n")
    with pytest.raises(PipelineDefinitionError, match=r"top\.yaml: import of 'base\.yaml'.*'isr'"):
        Pipeline.from_file(path)
    path = write(base_dir, "top.yaml", "description: t\nimports: [nowhere.yaml]\n")
    with pytest.raises(PipelineDefinitionError, match=r"nowhere\.yaml \(imported by .*top\.yaml\)"):
        Pipeline.from_file(path)


# Overrides -----------------------------------------------------------------------------------------------


def toy_pipeline() -> Pipeline:
    return Pipeline.from_string("description: t\ntasks:\n  addOne: toy_tasks.AddOneTask\n  stats: toy_tasks.StatsTask\n")


def test_command_line_overrides_parse_strings_and_apply_last():
    pipeline = toy_pipeline()
    pipeline.add_config_override("addOne", "value", "3.5")
    pipeline.add_config_override("stats", "doWriteMask", "false")
    graph = pipeline.to_graph()
    assert graph.tasks["addOne"].config.value == 3.5
    assert "mask" not in graph.outputs_of("stats")


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("value", "many", r"^addOne: .*'value'.*valid number"),
        ("scale", "-1", r"^addOne: .*'scale'.*greater than 0"),
        ("valeu", "1", r"^addOne: .*Did you mean 'value'"),
        ("value", "nan", r"^addOne: the config is invalid: value must be a finite number"),
    ],
)
def test_bad_override_names_label_and_field(key: str, value: str, pattern: str):
    pipeline = toy_pipeline()
    pipeline.add_config_override("addOne", key, value)
    with pytest.raises(ConfigOverrideError, match=pattern):
        pipeline.to_graph()


def test_override_of_unknown_label_suggests():
    with pytest.raises(PipelineDefinitionError, match="Did you mean 'addOne'"):
        toy_pipeline().add_config_override("addOn", "value", "1")


def test_config_file_override(tmp_path: Path):
    path = write(tmp_path, "over.yaml", "value: 9\nconnections:\n  out: renamed\n")
    pipeline = toy_pipeline()
    pipeline.add_config_file("addOne", path)
    node = pipeline.to_graph().tasks["addOne"]
    assert node.config.value == 9.0 and node.connections.output.name == "renamed"


def test_undefined_parameter_is_named():
    pipeline = Pipeline.from_string(
        "description: t\nparameters: {offset: 1}\ntasks:\n  a:\n    class: toy_tasks.AddOneTask\n    config: {value: parameters.ofset}\n"
    )
    with pytest.raises(PipelineDefinitionError, match=r"task 'a'.*parameters\.ofset.*Did you mean 'offset'"):
        pipeline.to_graph()


def test_add_task_programmatically_with_class_and_config():
    pipeline = Pipeline("programmatic")
    pipeline.add_task(toy_tasks.AddOneTask, "addOne", {"value": 4})
    pipeline.add_task("toy_tasks.SumDetectorsTask", "sum")
    graph = pipeline.to_graph()
    assert list(graph.tasks) == ["addOne", "sum"] and graph.tasks["addOne"].config.value == 4.0
    with pytest.raises(PipelineDefinitionError, match="already has"):
        pipeline.add_task(toy_tasks.AddOneTask, "addOne")
    with pytest.raises(PipelineDefinitionError, match="invalid"):
        pipeline.add_task(toy_tasks.AddOneTask, "bad label")


def test_unimportable_class_names_label_and_path():
    pipeline = Pipeline.from_string("description: t\ntasks:\n  isr: toy_tasks.IsrTask\n")
    with pytest.raises(PipelineDefinitionError, match=r"task 'isr'.*'toy_tasks\.IsrTask'"):
        pipeline.to_graph()
    pipeline = Pipeline.from_string("description: t\ntasks:\n  isr: no_such_package.IsrTask\n")
    with pytest.raises(PipelineDefinitionError, match=r"task 'isr'.*no_such_package"):
        pipeline.to_graph()
    pipeline = Pipeline.from_string("description: t\ntasks:\n  np: numpy.ndarray\n")
    with pytest.raises(PipelineDefinitionError, match="not a PipelineTask"):
        pipeline.to_graph()


def test_to_yaml_round_trips(toy_file: Path):
    pipeline = Pipeline.from_file(toy_file)
    pipeline.add_config_override("addOne", "scale", "2")
    text = pipeline.to_yaml()
    again = Pipeline.from_string(text)
    assert again.to_yaml() == text
    assert again.task_labels() == pipeline.task_labels() and again.subsets == pipeline.subsets
    configs = {label: node.config.to_dict() for label, node in pipeline.to_graph().tasks.items()}
    assert {label: node.config.to_dict() for label, node in again.to_graph().tasks.items()} == configs


# Errors in the file -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("description: t\ntask:\n  a: toy_tasks.AddOneTask\n", r"unknown key 'task' in the pipeline.*Did you mean 'tasks'"),
        ("description: t\ntasks:\n  a: {class: toy_tasks.AddOneTask, confg: {}}\n", r"unknown key 'confg' in task 'a'.*'config'"),
        ("tasks:\n  a: toy_tasks.AddOneTask\n", r"missing `description"),
        ("description: t\n", r"missing `tasks"),
        ("description: t\ntasks: [a, b]\n", r"`tasks` must be a mapping"),
        ("description: t\ntasks:\n  a: {class: toy_tasks.AddOneTask, config: value=2}\n", r"task 'a' `config` must be a mapping"),
        ("description: t\ntasks:\n  a: {config: {value: 2}}\n", r"task 'a' has no `class`"),
        ("description: t\ntasks:\n  a: toy_tasks.AddOneTask\nsubsets:\n  s: [a, b]\n", r"subset 's' names 'b'"),
        ("description: t\ntasks:\n  a: toy_tasks.AddOneTask\nsubsets:\n  a: [a]\n", r"subset 'a' has the name of a task"),
        ("description: t\ntasks:\n  a: toy_tasks.AddOneTask\n  a: toy_tasks.StatsTask\n", r"line 4.*duplicate key 'a'"),
        ("description: t\ntasks:\n  a: toy_tasks.AddOneTask\n   b: x\n", r"not valid YAML at line 4"),
        ("description: t\ntasks:\n  a:\n    class: toy_tasks.AddOneTask\n    config: {python: 'import os'}\n", r"`python` block"),
        ("description: t\ntasks:\n  a-b: toy_tasks.AddOneTask\n", r"label 'a-b' is invalid"),
        ("description: t\nimports:\n  - {location: x.yaml, include: [a], exclude: [b]}\n", r"both `include` and `exclude`"),
        ("description: t\ntasks:\n  a: toy_tasks.AddOneTask\ncontracts:\n  - {contract: 'b.value > 1'}\n", r"refers to 'b'.*not a task label"),
    ],
)
def test_malformed_pipeline_is_rejected_with_the_file_name(text: str, pattern: str):
    with pytest.raises(PipelineDefinitionError, match=r"<string>: .*" + pattern):
        Pipeline.from_string(text)


def test_file_errors_name_the_file(tmp_path: Path):
    path = write(tmp_path, "broken.yaml", "description: t\ntasks: [\n")
    with pytest.raises(PipelineDefinitionError, match=r"broken\.yaml: not valid YAML at line"):
        Pipeline.from_file(path)
    with pytest.raises(PipelineDefinitionError, match=r"cannot read pipeline file .*missing\.yaml"):
        Pipeline.from_file(tmp_path / "missing.yaml")


# Contracts ------------------------------------------------------------------------------------------------------


def contract_pipeline(contract: str, msg: str | None = None) -> Pipeline:
    entry = {"contract": contract, **({"msg": msg} if msg else {})}
    import yaml

    return Pipeline.from_string(
        yaml.safe_dump(
            {
                "description": "t",
                "tasks": {"addOne": {"class": "toy_tasks.AddOneTask", "config": {"value": 3}}, "stats": "toy_tasks.StatsTask"},
                "contracts": [entry],
            }
        )
    )


@pytest.mark.parametrize(
    "contract",
    [
        "addOne.value == 3",
        "addOne.value > addOne.scale and not stats.doWriteMask == False",
        "addOne.value * 2 - 1 >= 5 or addOne.value < 0",
        "len(addOne.connections.out) == 10 and addOne.connections.out in ('toy_output', 'other')",
        "1 < addOne.value <= 3",
    ],
)
def test_contract_that_holds_lets_the_pipeline_build(contract: str):
    assert list(contract_pipeline(contract).to_graph().tasks) == ["addOne", "stats"]


def test_failing_contract_names_expression_and_message():
    pipeline = contract_pipeline("addOne.value < stats.doWriteMask", "value must stay small")
    with pytest.raises(PipelineDefinitionError, match=r"contract 'addOne\.value < stats\.doWriteMask'.*failed: value must stay small"):
        pipeline.to_graph()


@pytest.mark.parametrize(
    "contract, pattern",
    [
        ("__import__('os').system('touch {marker}')", "not allowed"),
        ("open('{marker}', 'w')", "a call other than len"),
        ("addOne.__class__.__init__", "private attribute"),
        ("(lambda: open('{marker}', 'w'))()", "not allowed"),
        ("[x for x in ('{marker}',)]", "not allowed"),
        ("addOne.value if True else 1", "IfExp"),
        ("2 ** 1000000", "Pow"),
        ("addOne.value >", "not a valid expression"),
    ],
)
def test_unsafe_or_invalid_contract_is_rejected_without_running(tmp_path: Path, contract: str, pattern: str):
    marker = tmp_path / "executed"
    with pytest.raises(PipelineDefinitionError, match=pattern):
        contract_pipeline(contract.format(marker=marker)).to_graph()
    assert not marker.exists()


@pytest.mark.parametrize(
    "contract, pattern",
    [
        ("addOne.valu > 1", r"no field 'valu'.*Did you mean 'value'"),
        ("addOne.model_fields", "no field 'model_fields'"),
        ("len(addOne.value) > 1", r"len\(\) of a float"),
        ("addOne.connections.out * 1000000000 == 'x'", "only allowed on numbers"),
        ("addOne.value / 0 > 1", "could not be evaluated"),
    ],
)
def test_contract_evaluation_errors_are_explained(contract: str, pattern: str):
    with pytest.raises(PipelineDefinitionError, match=pattern):
        contract_pipeline(contract).to_graph()
