"""The exception hierarchy of the pipeline framework (``graph``).

Errors from user input (a bad pipeline file, config override or query) derive from `PipelineError`
and say what was wrong and what to do.  `NoWorkFound` and `AlgorithmError` are raised by tasks.
"""

from __future__ import annotations

__all__ = [
    "AlgorithmError",
    "ConfigMismatchError",
    "ConfigOverrideError",
    "ConnectionError",
    "FrozenConfigError",
    "GraphBuildError",
    "GraphFileError",
    "NoWorkFound",
    "NothingToDoError",
    "PipelineDefinitionError",
    "PipelineError",
    "QuantumExecutionError",
    "QuantumTimeoutError",
]


class PipelineError(Exception):
    """Base class of the pipeline framework's errors about user input."""


class ConfigOverrideError(PipelineError, ValueError):
    """A config override names an unknown field or gives a value of the wrong type."""


class FrozenConfigError(PipelineError, AttributeError):
    """A config was changed after it was frozen for a run."""


class ConnectionError(PipelineError):  # noqa: A001 - the field's term
    """A task's connections are inconsistent (bad dimensions, names or templates)."""


class PipelineDefinitionError(PipelineError):
    """A pipeline YAML file or pipeline graph is invalid (unknown keys, cycles, two producers...)."""


class GraphBuildError(PipelineError):
    """A quantum graph cannot be built (bad query, missing collections...)."""


class NothingToDoError(GraphBuildError):
    """Every quantum of the graph already completed (a resumed run has nothing left to do)."""


class GraphFileError(PipelineError):
    """A saved quantum graph cannot be read (wrong format version, damaged or tampered file)."""


class QuantumExecutionError(PipelineError):
    """Running a quantum failed; the message names the task label and data ID."""


class QuantumTimeoutError(QuantumExecutionError):
    """A quantum ran longer than the execution's per-quantum time limit (``pipetask run --timeout``)."""


class ConfigMismatchError(QuantumExecutionError):
    """A re-run into an existing output run uses configs or packages that differ from the run's."""


class NoWorkFound(Exception):  # noqa: N818 - the LSST stack's name
    """Raised by a task when a quantum has nothing to do (e.g. no usable input).

    The quantum is recorded as succeeded with no outputs, and its descendants that need those
    outputs are skipped rather than failed.
    """


class AlgorithmError(RuntimeError):
    """Raised by a task when its algorithm fails on valid input (e.g. too few stars for a PSF).

    Subclasses may carry diagnostic ``metadata`` (a dict) that is recorded with the failure.
    """

    @property
    def metadata(self) -> dict:
        return {}
