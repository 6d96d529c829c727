"""Pipelines: PipelineTasks, their configs and connections, pipelines, quantum graphs and execution."""

from .config import Config, ConfigurableField, Field, PipelineTaskConfig
from .connections import (
    InitInput,
    InitOutput,
    Input,
    InputQuantizedConnection,
    Output,
    OutputQuantizedConnection,
    PipelineTaskConnections,
    PrerequisiteInput,
)
from .errors import AlgorithmError, NoWorkFound
from .struct import Struct
from .task import PipelineTask, Task, timeMethod
from .task_metadata import TaskMetadata

__all__ = [
    "AlgorithmError",
    "Config",
    "ConfigurableField",
    "Field",
    "InitInput",
    "InitOutput",
    "Input",
    "InputQuantizedConnection",
    "NoWorkFound",
    "Output",
    "OutputQuantizedConnection",
    "PipelineTask",
    "PipelineTaskConfig",
    "PipelineTaskConnections",
    "PrerequisiteInput",
    "Struct",
    "Task",
    "TaskMetadata",
    "timeMethod",
]
