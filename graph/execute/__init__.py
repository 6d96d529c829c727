"""Execution of quantum graphs: one quantum (`SingleQuantumExecutor`), whole graphs (`execute_graph`).

Workers never write the registry: a quantum reads its inputs through datastore records, writes its
files, and returns a `QuantumResult`; the main process registers each result in one transaction
(`register_quantum_result`).  Graphs run serially, in a local process pool, or with Parsl on the
site a `SiteConfig` (a site file, `load_site`) describes.
"""

from ._parsl import ParslNotInstalledError, require_parsl
from ._site import (
    ClusteringConfig,
    LocalProviderConfig,
    ResourceRequest,
    SiteConfig,
    SiteConfigError,
    SlurmProviderConfig,
    load_site,
)
from .executors import EXECUTORS, execute_graph
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
    "EXECUTORS",
    "STATUSES",
    "ClusteringConfig",
    "ConfigMismatchError",
    "ExecutionReport",
    "FailedQuantum",
    "LocalProviderConfig",
    "ParslNotInstalledError",
    "QuantumContext",
    "QuantumDeferredHandle",
    "QuantumResult",
    "ResourceRequest",
    "SingleQuantumExecutor",
    "SiteConfig",
    "SiteConfigError",
    "SlurmProviderConfig",
    "execute_graph",
    "load_site",
    "package_versions",
    "register_quantum_result",
    "report_from_registry",
    "require_parsl",
    "write_run_provenance",
]
