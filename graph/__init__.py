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
from .pipeline import Pipeline, TaskDef
from .pipeline_graph import DatasetTypeNode, PipelineGraph, TaskNode
from .quantum import Quantum
from .quantum_graph import QuantumGraph
from .struct import Struct
from .task import PipelineTask, Task, timeMethod
from .task_metadata import TaskMetadata

__all__ = [
    "AlgorithmError",
    "Config",
    "DatasetTypeNode",
    "ConfigurableField",
    "Field",
    "InitInput",
    "InitOutput",
    "Input",
    "InputQuantizedConnection",
    "NoWorkFound",
    "Output",
    "OutputQuantizedConnection",
    "Pipeline",
    "PipelineGraph",
    "PipelineTask",
    "PipelineTaskConfig",
    "PipelineTaskConnections",
    "PrerequisiteInput",
    "Quantum",
    "QuantumGraph",
    "Struct",
    "Task",
    "TaskDef",
    "TaskNode",
    "TaskMetadata",
    "timeMethod",
]
