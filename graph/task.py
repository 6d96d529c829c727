"""`Task` and `PipelineTask`: configured units of work with logs, metadata, timing and subtasks."""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .config import Config, ConfigurableField, PipelineTaskConfig
from .errors import ConnectionError
from .struct import Struct
from .task_metadata import TaskMetadata

if TYPE_CHECKING:
    from .connections import InputQuantizedConnection, OutputQuantizedConnection

__all__ = ["PipelineTask", "Task", "timeMethod"]

F = TypeVar("F", bound=Callable[..., Any])


def _record_resources(metadata: TaskMetadata, prefix: str) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metadata[f"{prefix}CpuTime"] = usage.ru_utime + usage.ru_stime
    metadata[f"{prefix}WallTime"] = time.perf_counter()
    metadata[f"{prefix}Utc"] = datetime.now(timezone.utc).isoformat()
    metadata[f"{prefix}MaxResidentSetSize"] = usage.ru_maxrss * 1024


class Task:
    """A configurable unit of work, possibly with subtasks.

    Parameters
    ----------
    config : `Config`, optional
        The configuration; a default ``ConfigClass()`` when not given (top-level tasks only).
    name : `str`, optional
        Name of the task; ``_DefaultName`` for a top-level task.
    parentTask : `Task`, optional
        The parent, for a subtask (then ``name`` is required and ``config`` defaults to the
        parent's config field of that name).
    log : `logging.Logger`, optional
        Logger; by default one named by the task's full name.

    Attributes
    ----------
    config, log, metadata
    """

    ConfigClass: ClassVar[type[Config]] = Config
    _DefaultName: ClassVar[str | None] = None

    def __init__(
        self,
        config: Config | None = None,
        *,
        name: str | None = None,
        parentTask: Task | None = None,  # noqa: N803
        log: logging.Logger | None = None,
    ):
        self.metadata = TaskMetadata()
        self._parent_task = parentTask
        if parentTask is not None:
            if name is None:
                raise RuntimeError("a subtask needs a name")
            self._name = name
            self._full_name = f"{parentTask._full_name}.{name}"
            if config is None:
                config = getattr(parentTask.config, name)
            self._task_dict = parentTask._task_dict
        else:
            name = name or self._DefaultName
            if name is None:
                raise RuntimeError(f"{type(self).__name__} needs a name: set _DefaultName or pass name=...")
            self._name = name
            self._full_name = name
            if config is None:
                config = self.ConfigClass()
            self._task_dict: dict[str, weakref.ReferenceType[Task]] = {}
        self.config = config
        self.log = log.getChild(name) if (log is not None and parentTask is not None) else (log or logging.getLogger(self._full_name))
        self._task_dict[self._full_name] = weakref.ref(self)

    # Names ------------------------------------------------------------------------------------------

    def getName(self) -> str:  # noqa: N802
        """The name of the task (not including its parents')."""
        return self._name

    def getFullName(self) -> str:  # noqa: N802
        """The hierarchical name: ``top.sub.subsub``."""
        return self._full_name

    def getTaskDict(self) -> dict[str, weakref.ReferenceType[Task]]:  # noqa: N802
        """Full task name -> weak reference, for this task's whole tree (a shallow copy)."""
        return dict(self._task_dict)

    # Subtasks ---------------------------------------------------------------------------------------

    def makeSubtask(self, name: str, **keyArgs: Any) -> None:  # noqa: N802,N803
        """Create the subtask configured by the config field ``name`` as attribute ``self.name``.

        Raises
        ------
        RuntimeError
            If ``self.config.name`` is not a subtask config (`ConfigurableField`).
        """
        sub_config = getattr(self.config, name, None)
        target = getattr(sub_config, "target", None)
        if target is None:
            raise RuntimeError(
                f"{type(self).__name__}.config.{name} is not a subtask config; declare it with ConfigurableField."
            )
        for reserved in ("config", "parentTask"):
            if reserved in keyArgs:
                raise RuntimeError(f"makeSubtask sets {reserved!r} itself")
        setattr(self, name, target(config=sub_config, name=name, parentTask=self, **keyArgs))

    @classmethod
    def makeField(cls, doc: str) -> Any:  # noqa: N802
        """A `ConfigurableField` with this task as target (for a parent task's config)."""
        return ConfigurableField(target=cls, doc=doc)

    # Metadata and timing --------------------------------------------------------------------------------

    def getFullMetadata(self) -> TaskMetadata:  # noqa: N802
        """Metadata of this task and all its subtasks, keyed by full name with ``.`` -> ``:``."""
        full = TaskMetadata()
        for full_name, ref in self.getTaskDict().items():
            task = ref()
            if task is not None and (full_name == self._full_name or full_name.startswith(self._full_name + ".")):
                full.metadata[full_name.replace(".", ":")] = task.metadata
        return full

    def emptyMetadata(self) -> None:  # noqa: N802
        """Clear the metadata of this task and its subtasks."""
        for ref in self.getTaskDict().values():
            task = ref()
            if task is not None:
                task.metadata = TaskMetadata()

    @contextlib.contextmanager
    def timer(self, name: str, logLevel: int = logging.DEBUG) -> Iterator[None]:  # noqa: N803
        """Record start/end CPU and wall time of a block in metadata (``{name}StartCpuTime`` ...)."""
        _record_resources(self.metadata, f"{name}Start")
        try:
            yield
        finally:
            _record_resources(self.metadata, f"{name}End")
            elapsed = self.metadata[f"{name}EndWallTime"] - self.metadata[f"{name}StartWallTime"]
            self.log.log(logLevel, "%s took %.3f s", name, elapsed)


def timeMethod(func: F) -> F:  # noqa: N802 - the LSST stack's name
    """Decorator: record the method's start/end CPU and wall time in the task's metadata."""

    @functools.wraps(func)
    def wrapper(self: Task, *args: Any, **kwargs: Any) -> Any:
        with self.timer(func.__name__):
            return func(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class PipelineTask(Task):
    """A task that a pipeline runs on quanta: reads inputs from a butler, ``run``s, writes outputs.

    Subclasses set ``ConfigClass`` (a `PipelineTaskConfig` with ``pipelineConnections=...``) and
    ``_DefaultName``, and implement ``run(**inputs) -> Struct`` whose argument and result names are
    the connection names.  Override `runQuantum` for custom I/O.

    Parameters
    ----------
    config : `PipelineTaskConfig`, optional
    initInputs : `dict`, optional
        Objects of the ``InitInput`` connections, by connection name.
    **kwargs
        Passed to `Task`.
    """

    ConfigClass: ClassVar[type[Config]] = PipelineTaskConfig
    canMultiprocess: ClassVar[bool] = True

    def __init__(self, *, config: Config | None = None, initInputs: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(config=config, **kwargs)
        connections_class = getattr(type(self.config), "ConnectionsClass", None)
        if connections_class is None:
            raise ConnectionError(
                f"{type(self).__name__}.ConfigClass has no connections: declare it as "
                "`class MyConfig(PipelineTaskConfig, pipelineConnections=MyConnections)`."
            )

    def run(self, **kwargs: Any) -> Struct:
        """Do the work on in-memory objects; return a `Struct` with one attribute per output connection."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def runQuantum(  # noqa: N802
        self,
        butlerQC: Any,  # noqa: N803
        inputRefs: InputQuantizedConnection,  # noqa: N803
        outputRefs: OutputQuantizedConnection,  # noqa: N803
    ) -> None:
        """Read the inputs, call `run`, write the outputs (override for custom I/O).

        Parameters
        ----------
        butlerQC : `QuantumContext`
            Butler access limited to this quantum's inputs and outputs.
        inputRefs : `InputQuantizedConnection`
            Refs of the inputs by connection name.
        outputRefs : `OutputQuantizedConnection`
            Refs of the outputs by connection name.
        """
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    def getInitOutputDatasets(self) -> dict[str, Any]:  # noqa: N802
        """Objects of the ``InitOutput`` connections by connection name (default: none)."""
        return {}
