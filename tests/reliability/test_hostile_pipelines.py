"""Hostile pipeline YAML: unknown keys, values of the wrong type, import cycles, Python object tags,
alias bombs and deep nesting are clear `PipelineError`s, raised quickly and before any task runs."""

from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import make_pipeline

from graph.errors import PipelineDefinitionError, PipelineError
from graph.pipeline import Pipeline

pytestmark = pytest.mark.reliability

TASK = "toy_tasks.AddOneTask"
_LAUGHS = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n" for i in range(9))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"description: x\ntasks:\n  a: {TASK}\nbogus: 1\n", "unknown key 'bogus' in the pipeline"),
        (f"description: x\ntasks:\n  a:\n    class: {TASK}\n    confg: {{value: 1}}\n", "Did you mean 'config'"),
        ("description: x\ntasks: [1, 2]\n", "`tasks` must be a mapping"),
        ("description: x\ntasks:\n  a:\n    class: 5\n", "`class` must be a dotted class path"),
        (f"description: x\ntasks:\n  a:\n    class: {TASK}\n    config: {{value: [1, 2]}}\n", "Input should be a valid number"),
        (f"description: x\ntasks:\n  a:\n    class: {TASK}\n    config: {{valeu: 1}}\n", "Did you mean 'value'"),
        ("description: x\ntasks:\n  a: os.system\n", "'os.system' is not a PipelineTask subclass"),
        ("description: x\ntasks:\n  a: !!python/object/apply:os.system ['echo pwned']\n", "could not determine a constructor"),
        ("- a\n- b\n", "must be a mapping with `description` and `tasks`"),
        ("\x00\x01", "not valid YAML"),
        (f"description: x\ntasks:\n  a: {TASK}\n  a: {TASK}\n", "duplicate key 'a'"),
        (f"description: x\nparameters:\n{_LAUGHS}tasks:\n  a:\n    class: {TASK}\n    config: {{value: *l8}}\n", "expands to more than"),
        ("description: x\ntasks: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        (f"description: x\ntasks:\n  a: {TASK}\ncontracts: [\"__import__('os').system('echo pwned')\"]\n", "uses a call other than"),
        (
            f"description: x\ntasks:\n  a:\n    class: {TASK}\n    config: {{connections: {{input: x1, out: x2}}}}\n"
            f"  b:\n    class: {TASK}\n    config: {{connections: {{input: x2, out: x1}}}}\n",
            "the pipeline has a cycle",
        ),
    ],
    ids=[
        "unknown-key", "misspelt-task-key", "tasks-as-list", "class-as-int", "config-wrong-type", "unknown-config-field",
        "not-a-task-class", "python-tag", "not-a-mapping", "binary", "duplicate-label", "billion-laughs", "deep-nesting",
        "contract-with-calls", "dataflow-cycle",
    ],
)  # fmt: skip
def test_hostile_pipeline_is_a_clear_pipeline_error(tmp_path, universe, text, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    start = time.monotonic()
    with pytest.raises(PipelineError, match=message):
        Pipeline.from_file(str(path)).to_graph(universe)
    assert time.monotonic() - start < 5


def test_import_cycles_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text(f"description: a\nimports: [b.yaml]\ntasks:\n  a: {TASK}\n")
    (tmp_path / "b.yaml").write_text("description: b\nimports: [c.yaml]\ntasks: {}\n")
    (tmp_path / "c.yaml").write_text("description: c\nimports: [a.yaml]\ntasks: {}\n")
    with pytest.raises(PipelineDefinitionError, match=r"imports form a cycle: a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml"):
        Pipeline.from_file(str(tmp_path / "a.yaml"))


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6)


def _mutations(document: dict) -> st.SearchStrategy[dict]:
    """A valid pipeline document with one value replaced or one key added, at any depth."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, child in node.items():
                paths.append((*path, key))
                walk(child, (*path, key))

    walk(document, ())

    def apply(args):
        path, new_key, value = args
        changed = yaml.safe_load(yaml.safe_dump(document))
        parent = changed
        for key in path[:-1]:
            parent = parent[key]
        if new_key is None:
            parent[path[-1]] = value
        elif isinstance(parent.get(path[-1]), dict):
            parent[path[-1]][new_key] = value
        return changed

    return st.tuples(st.sampled_from(paths), st.none() | st.text(max_size=10), _values).map(apply)


_DOCUMENT = yaml.safe_load(make_pipeline({"sleep": 0.0}).to_yaml())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_mutations(_DOCUMENT))
def test_mutated_pipelines_load_or_raise_only_pipeline_errors(tmp_path, universe, document):
    path = tmp_path / "mutated.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        Pipeline.from_file(str(path)).to_graph(universe)
    except PipelineError:
        pass
