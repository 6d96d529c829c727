"""Execution of quantum graphs: one quantum (`SingleQuantumExecutor`), whole graphs (`execute_graph`).

Workers never write the registry: a quantum reads its inputs through datastore records, writes its
files, and returns a `QuantumResult`; the main process registers each result in one transaction
(`register_quantum_result`).
"""

from .executors import execute_graph
from .quantum_context import QuantumContext, QuantumDeferredHandle
from .registration import (
    ConfigMismatchError,
    package_versions,
    register_quantum_result,
    write_run_provenance,
)
from .report import STATUSES, ExecutionReport, FailedQuantum, report_from_registry
from .single_quantum import QuantumResult, SingleQuantumExecutor

__all__ = [
    "STATUSES",
    "ConfigMismatchError",
    "ExecutionReport",
    "FailedQuantum",
    "QuantumContext",
    "QuantumDeferredHandle",
    "QuantumResult",
    "SingleQuantumExecutor",
    "execute_graph",
    "package_versions",
    "register_quantum_result",
    "report_from_registry",
    "write_run_provenance",
]
