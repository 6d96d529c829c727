"""Pipelines: the LSST pipeline YAML format, and the `Pipeline` object that becomes a `PipelineGraph`.

A pipeline file::

    description: Process CCDs.
    instrument: tasks.instruments.Sdss          # optional
    parameters: {binSize: 64}                   # "parameters.<name>" config values are substituted
    imports:                                    # other pipeline files, relative to this one
      - location: base.yaml
        exclude: [isr]                          # or include: [...]; labels or subset names
    tasks:
      isr: tasks.isr.IsrTask
      characterizeImage:
        class: tasks.characterize.CharacterizeImageTask
        config:                                 # a mapping, or a list of mappings / {file: f.yaml}
          psfIterations: 2
          background.binSize: parameters.binSize
    subsets:
      processCcd: [isr, characterizeImage]      # or {subset: [...], description: ...}
    contracts:
      - contract: "characterizeImage.psfIterations >= 1"
        msg: need at least one PSF iteration

``Pipeline.from_file("ccd.yaml#processCcd")`` reads it (the fragment selects labels and subsets),
``add_config_override`` and ``add_config_file`` add ``-c``/``-C`` overrides, and `Pipeline.to_graph`
imports the task classes, applies the overrides, checks the contracts and returns the validated
`PipelineGraph`.

Contracts are evaluated by a small interpreter over the parsed expression, never by ``eval``: only
comparisons, ``and``/``or``/``not``, arithmetic on numbers, constants, tuples/lists, task labels
(their configs), config field access and ``len()`` are allowed.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from butler.datasets import import_dotted
from butler.dimensions import DimensionUniverse
from butler.errors import did_you_mean

from .config import Config
from .errors import ConfigOverrideError, PipelineDefinitionError
from .pipeline_graph import PipelineGraph, TaskNode
from .task import PipelineTask

__all__ = ["Contract", "Pipeline", "TaskDef"]

_TOP_KEYS = ("description", "instrument", "parameters", "imports", "tasks", "subsets", "contracts")
_TASK_KEYS = ("class", "config")
_IMPORT_KEYS = ("location", "include", "exclude", "importContracts")
_SUBSET_KEYS = ("subset", "description")
_CONTRACT_KEYS = ("contract", "msg")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARAMETER_PREFIX = "parameters."


# Task definitions and contracts -----------------------------------------------------------------------


@dataclasses.dataclass
class TaskDef:
    """A task of a pipeline before its config is built.

    Attributes
    ----------
    label : `str`
    class_name : `str`
        Dotted path of the `PipelineTask` subclass.
    config_overrides : `list` [`tuple`]
        Applied in order: ``("dict", mapping)``, ``("file", path)`` or ``("key", key, value)``.
    task_class : `type` or `None`
        The class itself when it was given as a class (`Pipeline.add_task`); not compared.
    """

    label: str
    class_name: str
    config_overrides: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    task_class: type | None = dataclasses.field(default=None, compare=False, repr=False)

    def load_class(self) -> type[PipelineTask]:
        """Import the task class.

        Raises
        ------
        PipelineDefinitionError
            If it cannot be imported or is not a `PipelineTask` subclass.
        """
        cls = self.task_class
        if cls is None:
            try:
                cls = import_dotted(self.class_name)
            except ImportError as err:
                raise PipelineDefinitionError(
                    f"task {self.label!r}: cannot import class {self.class_name!r}: {err}. Check the dotted path "
                    "(package.module.Class) and that the package is installed."
                ) from None
        if not (isinstance(cls, type) and issubclass(cls, PipelineTask)):
            raise PipelineDefinitionError(
                f"task {self.label!r}: {self.class_name!r} is not a PipelineTask subclass."
            )
        return cls


@dataclasses.dataclass
class Contract:
    """A boolean expression over task configs that must hold for the pipeline to be built.

    Attributes
    ----------
    expression : `str`
        e.g. ``"calibrate.detection.threshold >= characterize.detection.threshold"``.
    msg : `str` or `None`
        What the user is told when it fails.
    source : `str`
        The file that defined it (for messages).
    """

    expression: str
    msg: str | None = None
    source: str = dataclasses.field(default="<string>", compare=False)
    tree: ast.Expression = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.tree = _parse_contract(self.expression, self.source)

    @property
    def names(self) -> set[str]:
        """The task labels the expression refers to."""
        return _contract_names(self.tree)

    def check(self, configs: Mapping[str, Config]) -> None:
        """Evaluate the contract against task configs by label.

        Raises
        ------
        PipelineDefinitionError
            If the contract fails or cannot be evaluated.
        """
        try:
            result = _ContractEvaluator(configs, self).visit(self.tree.body)
        except (ArithmeticError, TypeError, ValueError) as err:
            raise PipelineDefinitionError(
                f"contract {self.expression!r} ({self.source}) could not be evaluated: {err}"
            ) from None
        if not result:
            reason = f": {self.msg}" if self.msg else ""
            raise PipelineDefinitionError(
                f"contract {self.expression!r} ({self.source}) failed{reason}. Change the task configs so it holds."
            )


_COMPARE_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.BinOp, ast.Compare, ast.Constant, ast.Name,
    ast.Load, ast.Attribute, ast.Call, ast.Tuple, ast.List, *_COMPARE_OPS, *_BIN_OPS, *_UNARY_OPS,
)
_MAX_CONTRACT_LENGTH = 1000


def _parse_contract(expression: str, source: str) -> ast.Expression:
    """Parse a contract and check it uses only the allowed constructs (nothing is evaluated)."""
    if not isinstance(expression, str) or not expression.strip():
        raise PipelineDefinitionError(f"{source}: a contract must be a non-empty string expression, got {expression!r}.")
    if len(expression) > _MAX_CONTRACT_LENGTH:
        raise PipelineDefinitionError(f"{source}: contract is longer than {_MAX_CONTRACT_LENGTH} characters.")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise PipelineDefinitionError(f"{source}: contract {expression!r} is not a valid expression: {err.msg}.") from None
    allowed = (
        "comparisons, and/or/not, + - * / // % on numbers, constants, tuples and lists, task labels, "
        "config fields (label.field.subfield) and len()"
    )
    for node in ast.walk(tree):
        bad = None
        if not isinstance(node, _ALLOWED_NODES):
            bad = type(node).__name__
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "len" and len(node.args) == 1 and not node.keywords):
                bad = "a call other than len(x)"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            bad = f"the private attribute {node.attr!r}"
        elif isinstance(node, ast.Name) and node.id.startswith("_"):
            bad = f"the name {node.id!r}"
        if bad:
            raise PipelineDefinitionError(
                f"{source}: contract {expression!r} uses {bad}, which is not allowed. Contracts may use {allowed}."
            )
    return tree


def _contract_names(tree: ast.Expression) -> set[str]:
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in calls}


class _ContractEvaluator:
    """Evaluates a checked contract expression; names are task labels bound to their configs."""

    def __init__(self, configs: Mapping[str, Config], contract: Contract):
        self.configs = configs
        self.contract = contract

    def fail(self, message: str) -> PipelineDefinitionError:
        return PipelineDefinitionError(f"contract {self.contract.expression!r} ({self.contract.source}): {message}")

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self.visit(e) for e in node.elts)
        if isinstance(node, ast.Name):
            if node.id not in self.configs:
                raise self.fail(f"{node.id!r} is not a task label of the pipeline. {did_you_mean(node.id, self.configs)}")
            return self.configs[node.id]
        if isinstance(node, ast.Attribute):
            owner = self.visit(node.value)
            fields = type(owner).model_fields if isinstance(owner, Config) else None
            if fields is None:
                raise self.fail(f"cannot read {node.attr!r} of a {type(owner).__name__}: only config fields can be read.")
            if node.attr not in fields:
                raise self.fail(f"{type(owner).__name__} has no field {node.attr!r}. {did_you_mean(node.attr, fields)}")
            return getattr(owner, node.attr)
        if isinstance(node, ast.Call):  # only len(x), checked at parse time
            value = self.visit(node.args[0])
            if not isinstance(value, (str, tuple, list, dict, set, frozenset)):
                raise self.fail(f"len() of a {type(value).__name__} is not defined.")
            return len(value)
        if isinstance(node, ast.BoolOp):
            values = (self.visit(v) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if not isinstance(node.op, ast.Not):
                _require_number(operand, self)
            return _UNARY_OPS[type(node.op)](operand)
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            _require_number(left, self)
            _require_number(right, self)
            return _BIN_OPS[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = self.visit(comparator)
                if not _COMPARE_OPS[type(op)](left, right):
                    return False
                left = right
            return True
        raise self.fail(f"{type(node).__name__} is not allowed.")  # unreachable after _parse_contract


def _require_number(value: Any, evaluator: _ContractEvaluator) -> None:
    if not isinstance(value, (int, float)):
        raise evaluator.fail(f"arithmetic is only allowed on numbers, not on {type(value).__name__} {value!r}.")


# YAML reading --------------------------------------------------------------------------------------------

# Values a pipeline or config YAML document may hold once its aliases are expanded (shipped ones: < 100).
_MAX_YAML_VALUES = 100_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (no arbitrary objects) that rejects duplicate mapping keys such as a label given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (keys and task labels must be unique)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    """Read a YAML document of a pipeline or config file, refusing documents too deep or too large
    (YAML aliases can make a 1 kB file expand to billions of values: "billion laughs")."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        size = _expanded_size(document, {})
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PipelineDefinitionError(
            f"{source}: not valid YAML{where}: {err.problem or err.context}. Fix the syntax there."
        ) from None
    except yaml.YAMLError as err:
        raise PipelineDefinitionError(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise PipelineDefinitionError(f"{source}: its YAML is nested too deeply to be read.") from None
    if size > _MAX_YAML_VALUES:
        raise PipelineDefinitionError(
            f"{source}: the YAML expands to more than {_MAX_YAML_VALUES} values (through aliases, *name); a "
            "pipeline is far smaller. Write the values out instead of repeating aliases."
        )
    return document


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """Number of values in a loaded YAML document, counting every alias as a full copy.

    ``sizes`` memoises containers by identity, so shared (aliased) ones are counted in linear time.
    The recursion is as deep as the document (`RecursionError` beyond Python's limit).
    """
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        children = value
    else:
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def _check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], what: str, source: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise PipelineDefinitionError(f"{source}: unknown key {key!r} in {what}. {did_you_mean(str(key), allowed)}")


def _expect(value: Any, kind: type | tuple[type, ...], what: str, source: str, example: str) -> Any:
    if not isinstance(value, kind):
        raise PipelineDefinitionError(f"{source}: {what} must be {example}, not {type(value).__name__} {value!r}.")
    return value


def _string_list(value: Any, what: str, source: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    _expect(value, list, what, source, "a list of names")
    for item in value:
        _expect(item, str, f"an entry of {what}", source, "a string")
    return list(value)


# The pipeline -----------------------------------------------------------------------------------------------


class Pipeline:
    """A pipeline definition: labelled tasks with config overrides, subsets, parameters and contracts.

    Parameters
    ----------
    description : `str`
        What the pipeline does.
    instrument : `str`, optional
        Dotted path (or name) of the instrument the pipeline is for.
    parameters : `dict`, optional
        Values substituted for config values written ``parameters.<name>``.

    Attributes
    ----------
    description : `str`
    instrument : `str` or `None`
    parameters : `dict` [`str`, `object`]
    tasks : `dict` [`str`, `TaskDef`]
        Task definitions by label, in definition order.
    subsets : `dict` [`str`, `set` [`str`]]
        Named sets of labels.
    subset_descriptions : `dict` [`str`, `str`]
    contracts : `list` [`Contract`]
    """

    def __init__(self, description: str, *, instrument: str | None = None, parameters: Mapping[str, Any] | None = None):
        self.description = description
        self.instrument = instrument
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.tasks: dict[str, TaskDef] = {}
        self.subsets: dict[str, set[str]] = {}
        self.subset_descriptions: dict[str, str] = {}
        self.contracts: list[Contract] = []

    # Reading -------------------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, uri: str | Path) -> Pipeline:
        """Read a pipeline file; ``"file.yaml#label1,subsetA"`` keeps only those labels and subsets.

        Raises
        ------
        PipelineDefinitionError
            If the file cannot be read or is not a valid pipeline (the message names the file).
        """
        location, _, fragment = str(uri).partition("#")
        path = _resolve_path(location, Path.cwd())
        pipeline = _read_file(path, ())
        if fragment:
            names = [s.strip() for s in fragment.split(",") if s.strip()]
            pipeline = pipeline._keep(pipeline._expand(names, f"{path}#{fragment}"))
        return pipeline

    @classmethod
    def from_string(cls, text: str, *, base_dir: Path | None = None) -> Pipeline:
        """Read a pipeline from YAML text; imports and config files are relative to ``base_dir`` (default: cwd)."""
        return _parse(text, "<string>", Path(base_dir) if base_dir is not None else Path.cwd(), ())

    # Inspection ------------------------------------------------------------------------------------------

    def task_labels(self) -> list[str]:
        """Labels in definition order."""
        return list(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pipeline):
            return NotImplemented
        fields = ("description", "instrument", "parameters", "tasks", "subsets", "subset_descriptions", "contracts")
        return all(getattr(self, f) == getattr(other, f) for f in fields)

    def __repr__(self) -> str:
        return f"Pipeline({self.description!r}, tasks={self.task_labels()})"

    def _expand(self, names: Iterable[str], what: str) -> set[str]:
        """Labels named directly or through a subset."""
        labels: set[str] = set()
        for name in names:
            if name in self.tasks:
                labels.add(name)
            elif name in self.subsets:
                labels |= self.subsets[name]
            else:
                raise PipelineDefinitionError(
                    f"{what}: {name!r} is neither a task label nor a subset of the pipeline. "
                    f"{did_you_mean(name, list(self.tasks) + list(self.subsets))}"
                )
        return labels

    def _check_label(self, label: str) -> TaskDef:
        if label not in self.tasks:
            raise PipelineDefinitionError(f"the pipeline has no task {label!r}. {did_you_mean(label, self.tasks)}")
        return self.tasks[label]

    # Changing --------------------------------------------------------------------------------------------

    def subset(self, labels_or_subsets: Iterable[str]) -> Pipeline:
        """A copy keeping only some tasks.

        Parameters
        ----------
        labels_or_subsets : iterable of `str`
            Task labels and subset names (a subset stands for its labels).

        Returns
        -------
        pipeline : `Pipeline`
            Subsets are cut down to the kept labels (empty ones dropped); contracts naming a removed
            label are dropped.

        Raises
        ------
        PipelineDefinitionError
            If a name is neither a label nor a subset.
        """
        keep = self._expand(list(labels_or_subsets), "selecting tasks")
        return self._keep(keep)

    def _keep(self, keep: set[str]) -> Pipeline:
        removed = set(self.tasks) - keep
        new = copy.deepcopy(self)
        new.tasks = {label: task for label, task in new.tasks.items() if label in keep}
        new.subsets = {name: labels & keep for name, labels in new.subsets.items() if labels & keep}
        new.subset_descriptions = {k: v for k, v in new.subset_descriptions.items() if k in new.subsets}
        new.contracts = [c for c in new.contracts if not (c.names & removed)]
        return new

    def add_task(self, task_class: type | str, label: str, config: Mapping[str, Any] | None = None) -> None:
        """Add a task.

        Parameters
        ----------
        task_class : `type` or `str`
            A `PipelineTask` subclass or its dotted path.
        label : `str`
            A new label (letters, digits, underscores).
        config : `dict`, optional
            Config overrides (``{"field": value, "sub.field": value}``).

        Raises
        ------
        PipelineDefinitionError
            If the label is taken or malformed, or ``task_class`` is not a class or a string.
        """
        _validate_label(label, "add_task")
        if label in self.tasks or label in self.subsets:
            raise PipelineDefinitionError(f"the pipeline already has a task or subset {label!r}; choose another label.")
        if isinstance(task_class, str):
            task = TaskDef(label, task_class)
        elif isinstance(task_class, type):
            task = TaskDef(label, f"{task_class.__module__}.{task_class.__qualname__}", task_class=task_class)
        else:
            raise PipelineDefinitionError(f"add_task: task_class must be a class or a dotted path, not {task_class!r}.")
        if config:
            task.config_overrides.append(("dict", dict(config)))
        self.tasks[label] = task

    def add_config_override(self, label: str, key: str, value: Any) -> None:
        """Add an override ``label:key=value`` (a string value is parsed as YAML for non-string fields)."""
        self._check_label(label).config_overrides.append(("key", key, value))

    def add_config_file(self, label: str, path: str | Path) -> None:
        """Add a file of overrides (``key: value`` YAML) for a task."""
        self._check_label(label).config_overrides.append(("file", str(Path(path).expanduser().resolve())))

    # Building ----------------------------------------------------------------------------------------------

    def _substitute(self, value: Any, label: str) -> Any:
        if isinstance(value, str) and value.startswith(_PARAMETER_PREFIX):
            name = value[len(_PARAMETER_PREFIX):]
            if name not in self.parameters:
                raise PipelineDefinitionError(
                    f"task {label!r}: config value {value!r} names an undefined parameter. "
                    f"{did_you_mean(name, self.parameters)} Define it under `parameters:`."
                )
            return self.parameters[name]
        if isinstance(value, Mapping):
            return {k: self._substitute(v, label) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v, label) for v in value]
        return value

    def make_config(self, label: str) -> tuple[type[PipelineTask], Config]:
        """Import a task's class and build its config with every override applied (not frozen).

        Raises
        ------
        PipelineDefinitionError
            If the class cannot be imported or a parameter is undefined.
        ConfigOverrideError
            If an override or the config's validation fails; the message starts with the label.
        """
        task = self._check_label(label)
        task_class = task.load_class()
        try:
            config = task_class.ConfigClass()
            for override in task.config_overrides:
                kind = override[0]
                if kind == "dict":
                    config.apply(self._substitute(override[1], label))
                elif kind == "key":
                    config.override(override[1], self._substitute(override[2], label))
                elif kind == "file":
                    config.load(override[1])
                else:
                    raise PipelineDefinitionError(f"task {label!r}: unknown kind of config override {kind!r}.")
            config.validate()
        except ConfigOverrideError as err:
            raise ConfigOverrideError(f"{label}: {err}") from None
        except ValueError as err:
            raise ConfigOverrideError(f"{label}: the config is invalid: {err}") from None
        return task_class, config

    def to_graph(self, universe: DimensionUniverse | None = None) -> PipelineGraph:
        """Configure every task, check the contracts and build the validated `PipelineGraph`.

        Parameters
        ----------
        universe : `DimensionUniverse`, optional
            Default: the universe shipped in ``repo_template``.

        Raises
        ------
        PipelineDefinitionError
            If a class cannot be imported, a contract fails, or the graph is invalid.
        ConfigOverrideError
            If a config override is invalid (the message starts with the task label).
        """
        universe = universe or DimensionUniverse.default()
        if not self.tasks:
            raise PipelineDefinitionError("the pipeline has no tasks; add some under `tasks:`.")
        configured = {label: self.make_config(label) for label in self.tasks}
        configs = {label: config for label, (_, config) in configured.items()}
        for contract in self.contracts:
            contract.check(configs)
        nodes = []
        for label, (task_class, config) in configured.items():
            config.freeze()
            nodes.append(TaskNode.from_config(label, task_class, config, universe))
        return PipelineGraph(nodes, universe, description=self.description, instrument=self.instrument)

    # Writing ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The pipeline as plain data in the YAML layout (imports flattened)."""
        data: dict[str, Any] = {"description": self.description}
        if self.instrument:
            data["instrument"] = self.instrument
        if self.parameters:
            data["parameters"] = dict(self.parameters)
        tasks: dict[str, Any] = {}
        for label, task in self.tasks.items():
            overrides: list[dict[str, Any]] = []
            for override in task.config_overrides:
                if override[0] == "dict":
                    overrides.append(dict(override[1]))
                elif override[0] == "key":
                    overrides.append({override[1]: override[2]})
                else:
                    overrides.append({"file": override[1]})
            tasks[label] = {"class": task.class_name, "config": overrides} if overrides else task.class_name
        data["tasks"] = tasks
        if self.subsets:
            order = {label: i for i, label in enumerate(self.tasks)}
            data["subsets"] = {
                name: _subset_dict(sorted(labels, key=order.__getitem__), self.subset_descriptions.get(name))
                for name, labels in self.subsets.items()
            }
        if self.contracts:
            data["contracts"] = [{"contract": c.expression, **({"msg": c.msg} if c.msg else {})} for c in self.contracts]
        return data

    def to_yaml(self) -> str:
        """YAML text that `from_string` reads back into an equivalent pipeline (imports flattened).

        Raises
        ------
        PipelineDefinitionError
            If a config override holds a value YAML cannot represent (e.g. an object passed to `add_task`).
        """
        try:
            return yaml.safe_dump(self.to_dict(), sort_keys=False)
        except yaml.representer.RepresenterError as err:
            raise PipelineDefinitionError(f"the pipeline cannot be written as YAML: {err}") from None


def _subset_dict(labels: list[str], description: str | None) -> dict[str, Any] | list[str]:
    return {"subset": labels, "description": description} if description else labels


# Parsing ----------------------------------------------------------------------------------------------------


def _validate_label(label: Any, source: str) -> str:
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise PipelineDefinitionError(
            f"{source}: task label {label!r} is invalid: use letters, digits and underscores, starting with a letter."
        )
    return label


def _resolve_path(location: str, base_dir: Path) -> Path:
    path = Path(os.path.expandvars(location)).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def _read_file(path: Path, stack: tuple[Path, ...]) -> Pipeline:
    if path in stack:
        cycle = " -> ".join(p.name for p in (*stack[stack.index(path):], path))
        raise PipelineDefinitionError(f"{stack[-1]}: pipeline imports form a cycle: {cycle}. Remove one of the imports.")
    try:
        text = path.read_text()
    except OSError as err:
        where = f" (imported by {stack[-1]})" if stack else ""
        raise PipelineDefinitionError(f"cannot read pipeline file {path}{where}: {err.strerror}.") from None
    return _parse(text, str(path), path.parent, (*stack, path))


def _parse(text: str, source: str, base_dir: Path, stack: tuple[Path, ...]) -> Pipeline:
    data = _load_yaml(text, source)
    _expect(data, dict, "the pipeline document", source, "a mapping with `description` and `tasks`")
    _check_keys(data, _TOP_KEYS, "the pipeline", source)
    if "description" not in data:
        raise PipelineDefinitionError(f"{source}: missing `description:` (a sentence saying what the pipeline does).")
    if "tasks" not in data and "imports" not in data:
        raise PipelineDefinitionError(f"{source}: missing `tasks:` (a mapping of label: task class).")
    description = _expect(data["description"], str, "`description`", source, "a string")
    instrument = data.get("instrument")
    if instrument is not None:
        _expect(instrument, str, "`instrument`", source, "a dotted class path or name")
    parameters = _expect(data.get("parameters") or {}, dict, "`parameters`", source, "a mapping of name: value")
    pipeline = Pipeline(description)
    for item in _expect(data.get("imports") or [], list, "`imports`", source, "a list of files or {location: ...}"):
        _merge_import(pipeline, _read_import(item, source, base_dir, stack), source)
    pipeline.instrument = instrument or pipeline.instrument
    pipeline.parameters.update(parameters)
    tasks = _expect(data.get("tasks") or {}, dict, "`tasks`", source, "a mapping of label: class")
    for label, spec in tasks.items():
        _add_task_spec(pipeline, _validate_label(label, source), spec, source, base_dir)
    if not pipeline.tasks:
        raise PipelineDefinitionError(f"{source}: the pipeline defines no tasks; add some under `tasks:`.")
    subsets = _expect(data.get("subsets") or {}, dict, "`subsets`", source, "a mapping of name: [labels]")
    for name, spec in subsets.items():
        _add_subset(pipeline, str(name), spec, source)
    for name in pipeline.subsets:
        if name in pipeline.tasks:
            raise PipelineDefinitionError(f"{source}: subset {name!r} has the name of a task label; rename the subset.")
    contracts = _expect(data.get("contracts") or [], list, "`contracts`", source, "a list of {contract: ..., msg: ...}")
    for spec in contracts:
        pipeline.contracts.append(_make_contract(spec, source))
    for contract in pipeline.contracts:
        unknown = contract.names - set(pipeline.tasks)
        if unknown:
            name = sorted(unknown)[0]
            raise PipelineDefinitionError(
                f"{contract.source}: contract {contract.expression!r} refers to {name!r}, which is not a task label. "
                f"{did_you_mean(name, pipeline.tasks)}"
            )
    return pipeline


def _read_import(item: Any, source: str, base_dir: Path, stack: tuple[Path, ...]) -> Pipeline:
    if isinstance(item, str):
        item = {"location": item}
    _expect(item, dict, "an entry of `imports`", source, "a file name or {location: ..., include/exclude: [...]}")
    _check_keys(item, _IMPORT_KEYS, "an import", source)
    location = _expect(item.get("location"), str, "an import's `location`", source, "a file path")
    if "include" in item and "exclude" in item:
        raise PipelineDefinitionError(f"{source}: import of {location!r} has both `include` and `exclude`; use one.")
    imported = _read_file(_resolve_path(location, base_dir), stack)
    what = f"{source}: import of {location!r}"
    if "include" in item:
        imported = imported._keep(imported._expand(_string_list(item["include"], "`include`", source), what))
    elif "exclude" in item:
        drop = imported._expand(_string_list(item["exclude"], "`exclude`", source), what)
        imported = imported._keep(set(imported.tasks) - drop)
    if not _expect(item.get("importContracts", True), bool, "`importContracts`", source, "true or false"):
        imported.contracts = []
    return imported


def _merge_import(pipeline: Pipeline, imported: Pipeline, source: str) -> None:
    for label, task in imported.tasks.items():
        existing = pipeline.tasks.get(label)
        if existing is not None and existing != task:
            raise PipelineDefinitionError(
                f"{source}: task {label!r} is defined differently by two imports ({existing.class_name} and "
                f"{task.class_name}, or different configs). Exclude it from one import."
            )
        pipeline.tasks[label] = copy.deepcopy(task)
    for name, labels in imported.subsets.items():
        if name in pipeline.subsets and pipeline.subsets[name] != labels:
            raise PipelineDefinitionError(f"{source}: subset {name!r} is defined differently by two imports.")
        pipeline.subsets[name] = set(labels)
        if name in imported.subset_descriptions:
            pipeline.subset_descriptions[name] = imported.subset_descriptions[name]
    if imported.instrument and pipeline.instrument and imported.instrument != pipeline.instrument:
        raise PipelineDefinitionError(
            f"{source}: imports name different instruments ({pipeline.instrument}, {imported.instrument}); "
            "set `instrument:` in this file."
        )
    pipeline.instrument = pipeline.instrument or imported.instrument
    for key, value in imported.parameters.items():
        pipeline.parameters.setdefault(key, value)
    pipeline.contracts += [c for c in imported.contracts if c not in pipeline.contracts]


def _add_task_spec(pipeline: Pipeline, label: str, spec: Any, source: str, base_dir: Path) -> None:
    where = f"task {label!r}"
    if isinstance(spec, str):
        spec = {"class": spec}
    _expect(spec, dict, where, source, "a dotted class path or a mapping with `class` and `config`")
    _check_keys(spec, _TASK_KEYS, where, source)
    overrides = _config_overrides(spec.get("config"), f"{where} `config`", source, base_dir)
    class_name = spec.get("class")
    existing = pipeline.tasks.get(label)
    if existing is not None:  # extending an imported task
        if class_name is not None and class_name != existing.class_name:
            raise PipelineDefinitionError(
                f"{source}: {where} is imported as {existing.class_name} but redefined as {class_name}. "
                "Exclude it from the import to replace it, or drop `class` to add config overrides."
            )
        existing.config_overrides += overrides
        return
    if class_name is None:
        raise PipelineDefinitionError(f"{source}: {where} has no `class` (the dotted path of its PipelineTask).")
    _expect(class_name, str, f"{where} `class`", source, "a dotted class path")
    pipeline.tasks[label] = TaskDef(label, class_name, overrides)


def _config_overrides(config: Any, where: str, source: str, base_dir: Path) -> list[tuple[Any, ...]]:
    if config is None:
        return []
    blocks = config if isinstance(config, list) else [config]
    overrides: list[tuple[Any, ...]] = []
    for block in blocks:
        _expect(block, dict, where, source, "a mapping of field: value (or a list of them)")
        block = dict(block)
        if "python" in block:
            raise PipelineDefinitionError(
                f"{source}: {where} has a `python` block; Python config overrides are not supported (they would run "
                "arbitrary code). Use field: value pairs or `file:`."
            )
        files = block.pop("file", None)
        for name in _string_list(files, f"{where} `file`", source) if files is not None else []:
            overrides.append(("file", str(_resolve_path(name, base_dir))))
        if block:
            overrides.append(("dict", block))
    return overrides


def _add_subset(pipeline: Pipeline, name: str, spec: Any, source: str) -> None:
    description = ""
    if isinstance(spec, dict):
        _check_keys(spec, _SUBSET_KEYS, f"subset {name!r}", source)
        if "subset" not in spec:
            raise PipelineDefinitionError(f"{source}: subset {name!r} has no `subset:` list of labels.")
        description = _expect(spec.get("description", ""), str, f"subset {name!r} `description`", source, "a string")
        spec = spec["subset"]
    labels = _string_list(spec, f"subset {name!r}", source)
    for label in labels:
        if label not in pipeline.tasks:
            raise PipelineDefinitionError(
                f"{source}: subset {name!r} names {label!r}, which is not a task label. "
                f"{did_you_mean(label, pipeline.tasks)}"
            )
    pipeline.subsets[name] = set(labels)
    if description:
        pipeline.subset_descriptions[name] = description
    else:
        pipeline.subset_descriptions.pop(name, None)


def _make_contract(spec: Any, source: str) -> Contract:
    if isinstance(spec, str):
        spec = {"contract": spec}
    _expect(spec, dict, "a contract", source, "a string or {contract: ..., msg: ...}")
    _check_keys(spec, _CONTRACT_KEYS, "a contract", source)
    msg = spec.get("msg")
    if msg is not None:
        _expect(msg, str, "a contract's `msg`", source, "a string")
    return Contract(spec.get("contract"), msg, source)
