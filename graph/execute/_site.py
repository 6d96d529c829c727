"""Site files of the Parsl executor: where quanta run, with how many workers, retries and resources.

A site file is YAML (``repo_template/sites/local.yaml``, ``repo_template/sites/slurm.yaml``) read with
`yaml.safe_load` into a `SiteConfig`; unknown keys and values of the wrong type are errors that name
the key.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Hashable, Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from butler import DimensionUniverse
from butler.errors import ButlerError

from ..errors import PipelineError
from ..quantum_graph import QuantumGraph

__all__ = [
    "ClusteringConfig",
    "LocalProviderConfig",
    "ResourceRequest",
    "SiteConfig",
    "SiteConfigError",
    "SlurmProviderConfig",
    "cluster_quanta",
    "load_site",
]

_LOG = logging.getLogger("graph.execute")


class SiteConfigError(PipelineError):
    """A site file cannot be read, or does not fit the graph it should run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalProviderConfig(_Strict):
    """Workers on this machine (Parsl's ``LocalProvider``).

    Attributes
    ----------
    type : ``"local"``
    workerInit : `str`
        Shell commands run before the workers start (e.g. ``source .venv/bin/activate``).
    """

    type: Literal["local"]
    workerInit: str = ""  # noqa: N815 - site files use the LSST stack's camelCase


class SlurmProviderConfig(_Strict):
    """Workers in Slurm jobs ("blocks"; Parsl's ``SlurmProvider``), each job ``nodesPerBlock`` nodes.

    Attributes
    ----------
    type : ``"slurm"``
    partition, account, qos : `str` or `None`
        ``sbatch --partition/--account/--qos`` (`None`: the cluster's default).
    walltime : `str`
        Time limit of each job, ``HH:MM:SS``.
    nodesPerBlock : `int`
        Nodes per job.
    coresPerNode, memPerNode : `int` or `None`
        Cores and memory (GB) requested per node (`None`: the partition's default).
    initBlocks, minBlocks, maxBlocks : `int`
        Jobs submitted at the start, kept at least, and allowed at most.
    exclusive : `bool`
        Request whole nodes.
    schedulerOptions : `str`
        Extra ``#SBATCH`` lines.
    workerInit : `str`
        Shell commands run on each node before its workers start (activate the environment).
    """

    type: Literal["slurm"]
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: str = Field("01:00:00", pattern=r"^\d+:\d\d:\d\d$")
    nodesPerBlock: PositiveInt = 1  # noqa: N815
    coresPerNode: PositiveInt | None = None  # noqa: N815
    memPerNode: PositiveInt | None = None  # noqa: N815
    initBlocks: NonNegativeInt = 1  # noqa: N815
    minBlocks: NonNegativeInt = 0  # noqa: N815
    maxBlocks: PositiveInt = 1  # noqa: N815
    exclusive: bool = True
    schedulerOptions: str = ""  # noqa: N815
    workerInit: str = ""  # noqa: N815


class ClusteringConfig(_Strict):
    """How quanta are grouped into one Parsl app each.

    Attributes
    ----------
    dimensions : `list` [`str`]
        Quanta with equal values of these dimensions (and the ones they require) run together, in
        order, in one app; quanta lacking one of them run alone.
    equalDimensions : `dict` [`str`, `str`]
        Dimension -> another whose value stands in for it in quanta lacking it (``{visit: exposure}``
        puts an exposure-level quantum with the visit-level quanta of the same id).
    """

    dimensions: list[str] = Field(min_length=1)
    equalDimensions: dict[str, str] = Field(default_factory=dict)  # noqa: N815


class ResourceRequest(_Strict):
    """What one quantum of a task needs; apps with equal requests form a resource class.

    Attributes
    ----------
    cores : `int`
    memory : `int` or `None`
        Megabytes (`None`: no request).
    """

    cores: PositiveInt = 1
    memory: PositiveInt | None = None

    @property
    def label(self) -> str:
        """The name of the resource class of this request: ``default`` for 1 core and no memory request,
        else ``cores{cores}``, with ``_mem{memory}`` if memory is requested (``cores1_mem4000``)."""
        if self == ResourceRequest():
            return "default"
        return f"cores{self.cores}" + (f"_mem{self.memory}" if self.memory is not None else "")

    @classmethod
    def largest(cls, requests: Iterable[ResourceRequest]) -> ResourceRequest:
        """The smallest request that covers each of some requests: the most cores and memory of any."""
        requests = list(requests)
        memories = [r.memory for r in requests if r.memory is not None]
        return cls(cores=max((r.cores for r in requests), default=1), memory=max(memories, default=None))


class SiteConfig(_Strict):
    """A site: the Parsl provider and the execution settings of `execute_graph` with ``executor="parsl"``.

    Attributes
    ----------
    provider : `LocalProviderConfig` or `SlurmProviderConfig`
        Where workers run (``type: local`` or ``type: slurm``).
    workersPerNode : `int`
        ``pipetask run -j`` overrides it.  Local provider: the cores the workers of all resource classes
        use together (a worker of a class of 2 cores counts twice; `ResourceClasses.split_cores`).
        Slurm: worker processes of each resource class per node, fewer if ``coresPerNode`` or
        ``memPerNode`` hold fewer of the class's cores and memory.
    numberOfRetries : `int`
        Times an app is retried after its worker or node was lost; a task's exception is never retried.
    heartbeatPeriod, heartbeatThreshold : `int`
        Seconds between heartbeats of Parsl's workers, and without one before a node counts as lost;
        a dead worker process is noticed within one period.
    clustering : `ClusteringConfig` or `None`
        Group quanta into apps (default: one app per quantum).
    resources : `dict` [`str`, `ResourceRequest`]
        Task label -> cores and memory each of its quanta needs (default 1 core; labels the pipeline
        lacks are not used).  The apps asking for the same run on workers of their own size, in a
        Parsl executor of their own (see `graph.execute._resources`).
    """

    provider: Annotated[LocalProviderConfig | SlurmProviderConfig, Field(discriminator="type")]
    workersPerNode: PositiveInt = 1  # noqa: N815
    numberOfRetries: NonNegativeInt = 0  # noqa: N815
    heartbeatPeriod: PositiveInt = 30  # noqa: N815
    heartbeatThreshold: PositiveInt = 120  # noqa: N815
    clustering: ClusteringConfig | None = None
    resources: dict[str, ResourceRequest] = Field(default_factory=dict)

    def task_requests(self, qgraph: QuantumGraph) -> dict[str, ResourceRequest]:
        """The request of each task of a graph's pipeline (1 core for a task ``resources`` lacks).

        Entries of ``resources`` for tasks the graph's pipeline does not have are not used (one site
        file may serve several pipelines); they are logged.
        """
        labels = qgraph.pipeline_graph.tasks
        unused = sorted(set(self.resources) - set(labels))
        if unused:
            _LOG.info("Site resources of task(s) %s are not used: the pipeline has no such task.", ", ".join(unused))
        return {label: self.resources.get(label, ResourceRequest()) for label in labels}


def load_site(site: str | Path) -> SiteConfig:
    """Read a site file.

    Parameters
    ----------
    site : `str` or `pathlib.Path`
        A YAML file, or the name of a site shipped in ``repo_template/sites`` (``"local"``, ``"slurm"``).

    Returns
    -------
    config : `SiteConfig`

    Raises
    ------
    SiteConfigError
        If the file cannot be read, is not YAML, or has unknown keys or values of the wrong type (the
        message names each such key).
    """
    path = Path(site).expanduser()
    if not path.exists():
        shipped = resources.files("repo_template") / "sites" / f"{path.name.removesuffix('.yaml')}.yaml"
        if path.parent == Path(".") and shipped.is_file():
            path = Path(str(shipped))
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        shipped_names = sorted(p.name for p in (resources.files("repo_template") / "sites").iterdir())
        raise SiteConfigError(
            f"cannot read site file {path}: {err.strerror}. Give a YAML file, or one of the shipped sites: "
            f"{', '.join(shipped_names)}."
        ) from None
    except yaml.YAMLError as err:
        raise SiteConfigError(f"site file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SiteConfigError(f"site file {path} must hold a mapping (provider:, workersPerNode:, ...) at its top level.")
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_describe(error) for error in err.errors())
        raise SiteConfigError(f"site file {path}: {problems}.") from None


def _describe(error: Any) -> str:
    """One pydantic error as "key 'a.b': what is wrong" (the provider's type tag left out of the key)."""
    loc = [str(part) for part in error["loc"]]
    if len(loc) > 1 and loc[0] == "provider" and loc[1] in ("local", "slurm"):
        del loc[1]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if error["type"] == "missing":
        return f"key {key!r} is missing"
    if error["type"] == "union_tag_invalid":
        return f"key '{key}.type' must be 'local' or 'slurm', not {error['input'].get('type')!r}"
    if error["type"] == "union_tag_not_found":
        return f"key '{key}.type' is missing (local or slurm)"
    return f"key {key!r}: {error['msg']} (got {error['input']!r})"


def cluster_quanta(
    qgraph: QuantumGraph, clustering: ClusteringConfig, universe: DimensionUniverse
) -> dict[uuid.UUID, Hashable]:
    """Group the quanta of a graph by the values of some dimensions.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    clustering : `ClusteringConfig`
    universe : `DimensionUniverse`
        The repository's dimensions.

    Returns
    -------
    clusters : `dict` [`uuid.UUID`, `~collections.abc.Hashable`]
        Quantum ID -> cluster key (the quantum ID itself for a quantum lacking a dimension).

    Raises
    ------
    SiteConfigError
        If a dimension is unknown, or the clusters depend on each other in a cycle.
    """
    try:
        required = universe.conform(clustering.dimensions).required
        universe.conform([*clustering.equalDimensions, *clustering.equalDimensions.values()])
    except ButlerError as err:
        raise SiteConfigError(f"site file key 'clustering': {err}") from None
    clusters: dict[uuid.UUID, Hashable] = {}
    for qid, quantum in qgraph.quanta.items():
        data_id = quantum.data_id
        values = []
        for name in required:
            value = data_id.get(name)
            if value is None and name in clustering.equalDimensions:
                value = data_id.get(clustering.equalDimensions[name])
            values.append(value)
        clusters[qid] = qid if None in values else tuple(values)
    between = nx.DiGraph()
    between.add_nodes_from(set(clusters.values()))
    between.add_edges_from((clusters[a], clusters[b]) for a, b in qgraph.graph.edges if clusters[a] != clusters[b])
    if not nx.is_directed_acyclic_graph(between):
        cycle = [key for key, _ in nx.find_cycle(between)]

        def describe(key: Hashable) -> str:
            if isinstance(key, tuple):
                return f"cluster {dict(zip(required, key, strict=True))}"
            quantum = qgraph.quanta[key]
            return f"{quantum.task_label} {dict(quantum.data_id.required)}"

        shown = " -> ".join(describe(key) for key in [*cycle, cycle[0]])
        raise SiteConfigError(
            f"clustering by {clustering.dimensions} makes clusters that need each other ({shown}); cluster by more "
            "dimensions, or remove the site file's 'clustering'."
        )
    return clusters
