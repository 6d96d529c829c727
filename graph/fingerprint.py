"""What identifies the code and configuration a quantum ran with: the provenance `--reuse-from` compares.

A `TaskFingerprint` holds, for one configured task:

- ``task_class``: the dotted path of the task class;
- ``config_hash``: SHA-256 of the config's canonical JSON (`Config.digest`: every field, subtask configs
  included, keys sorted) -- the values persisted as the ``{label}_config`` dataset;
- ``code_hash``: SHA-256 over the source files of the modules listed by `task_modules` (the task class
  and its bases, its config class, and recursively every subtask's class, bases and config class, outside
  the ``graph`` framework package), each preceded by its module name;
- ``packages_hash``: SHA-256 of the canonical JSON of the package versions (the run's ``packages`` dataset).

Other modules a task imports (e.g. the image model in ``tasks/image``) are not hashed; neither is the
framework itself: the ``butler-pipelines`` version in the package versions stands for them.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Config
from .task import Task

if TYPE_CHECKING:
    from .pipeline_graph import TaskNode

__all__ = ["TaskFingerprint", "code_hash", "module_source", "packages_hash", "task_fingerprint", "task_modules"]

_FRAMEWORK = ("graph", "butler")


@dataclass(frozen=True)
class TaskFingerprint:
    """The class, config and code a task runs with (see the module docstring for what each hash covers)."""

    task_class: str
    config_hash: str
    code_hash: str
    packages_hash: str | None = None


def _class_modules(cls: type) -> set[str]:
    """Modules of a task or config class and of its task or config bases, outside the framework packages."""
    return {
        c.__module__
        for c in inspect.getmro(cls)
        if issubclass(c, (Task, Config)) and c.__module__.partition(".")[0] not in _FRAMEWORK
    }


def task_modules(task_class: type, config: Config) -> list[str]:
    """The modules whose source makes up a configured task's code (sorted names).

    Parameters
    ----------
    task_class : `type`
        The task class.
    config : `Config`
        Its config; every subtask config (a `ConfigurableField`, possibly retargeted) adds the modules of
        its task class and config class, recursively.

    Returns
    -------
    modules : `list` [`str`]
        Module names, without those of the ``graph`` and ``butler`` framework packages.
    """
    names = _class_modules(task_class) | _class_modules(type(config))

    def walk(cfg: Config) -> None:
        for _, value in cfg:
            if isinstance(value, Config):
                names.update(_class_modules(type(value)))
                if value.target is not None:
                    names.update(_class_modules(value.target))
                walk(value)

    walk(config)
    return sorted(names)


def module_source(name: str) -> bytes:
    """The bytes of a module's source file (empty for a module without one, e.g. a built-in)."""
    module = sys.modules.get(name) or importlib.import_module(name)
    try:
        path = inspect.getsourcefile(module)
    except TypeError:
        path = None
    if path is None:
        return b""
    with open(path, "rb") as stream:
        return stream.read()


def code_hash(task_class: type, config: Config) -> str:
    """SHA-256 (hex) of the sources of `task_modules`, each as ``name NUL source NUL``, in name order."""
    digest = hashlib.sha256()
    for name in task_modules(task_class, config):
        digest.update(name.encode() + b"\0" + module_source(name) + b"\0")
    return digest.hexdigest()


def packages_hash(versions: Mapping[str, str]) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, no spaces) of package versions."""
    return hashlib.sha256(json.dumps(dict(versions), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def task_fingerprint(task_node: TaskNode, *, packages: Mapping[str, str] | None = None) -> TaskFingerprint:
    """The fingerprint of a configured task of a pipeline.

    Parameters
    ----------
    task_node : `TaskNode`
        The task (class and frozen config).
    packages : `dict` [`str`, `str`], optional
        Package versions to hash into ``packages_hash`` (left `None` without).
    """
    config: Any = task_node.config
    return TaskFingerprint(
        task_class=task_node.task_class_name,
        config_hash=config.digest(),
        code_hash=code_hash(task_node.task_class, config),
        packages_hash=packages_hash(packages) if packages is not None else None,
    )
