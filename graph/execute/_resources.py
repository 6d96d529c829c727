"""Resource classes of a Parsl execution: its apps grouped by the cores and memory they ask for.

Parsl's HighThroughputExecutor sizes all its workers alike and takes no per-app request, so the Parsl
executor starts one executor per resource class -- per distinct `ResourceRequest` among the apps to
run -- with workers of that size, and sends each app to the executor of its class (as the
multi-executor sites of ctrl_bps_parsl do).  An app of one quantum asks for its task's request (the
site's ``resources``); an app of a cluster of quanta for the largest of its tasks' requests.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from ..quantum import Quantum
from ._site import ResourceRequest, SiteConfigError

__all__ = ["ResourceClasses"]


class ResourceClasses:
    """The resource classes of the apps of an execution, and the class of each app.

    Parameters
    ----------
    task_requests : `dict` [`str`, `ResourceRequest`]
        Task label -> the request of each of its quanta (`SiteConfig.task_requests`).
    clusters : iterable of `list` [`Quantum`]
        The apps to run: each the quanta of one cluster (`Scheduler.clusters`).

    Attributes
    ----------
    requests : `dict` [`str`, `ResourceRequest`]
        Class label (`ResourceRequest.label`) -> its request, for the classes that have apps, by label.
    apps : `dict` [`str`, `int`]
        Class label -> number of apps of the class.
    tasks : `dict` [`str`, `list` [`str`]]
        Class label -> the task labels of its apps' quanta, sorted.
    """

    def __init__(self, task_requests: Mapping[str, ResourceRequest], clusters: Iterable[Sequence[Quantum]]):
        self._label_of: dict[uuid.UUID, str] = {}
        requests: dict[str, ResourceRequest] = {}
        apps: Counter[str] = Counter()
        tasks: dict[str, set[str]] = {}
        class_of_tasks: dict[frozenset[str], str] = {}  # the few distinct task sets of the clusters
        for cluster in clusters:
            labels = frozenset(quantum.task_label for quantum in cluster)
            name = class_of_tasks.get(labels)
            if name is None:
                request = ResourceRequest.largest(task_requests[label] for label in labels)
                name = class_of_tasks[labels] = request.label
                requests[name] = request
                tasks.setdefault(name, set()).update(labels)
            apps[name] += 1
            self._label_of.update((quantum.id, name) for quantum in cluster)
        self.requests = dict(sorted(requests.items()))
        self.apps = {name: apps[name] for name in self.requests}
        self.tasks = {name: sorted(tasks[name]) for name in self.requests}

    def label_of(self, cluster: Sequence[Quantum]) -> str:
        """The class of the app of a cluster, or of the quanta of it that may run (all go to its class)."""
        return self._label_of[cluster[0].id]

    def split_cores(self, budget: int) -> dict[str, int]:
        """Numbers of workers of each class that use at most ``budget`` cores together (one machine).

        Each class gets one worker; then, one at a time, a worker goes to the class with the most apps
        per worker among those that have more apps than workers and whose cores still fit in what is
        left of the budget.

        Parameters
        ----------
        budget : `int`
            Cores the workers of all classes may use (the site's ``workersPerNode``, or ``-j``).

        Returns
        -------
        workers : `dict` [`str`, `int`]
            Class label -> its number of workers (at least 1).

        Raises
        ------
        SiteConfigError
            If one worker of each class needs more cores than the budget.
        """
        workers = dict.fromkeys(self.requests, 1)
        free = budget - sum(request.cores for request in self.requests.values())
        if free < 0:
            needs = ", ".join(f"{name} ({', '.join(self.tasks[name])}): {r.cores}" for name, r in self.requests.items())
            raise SiteConfigError(
                f"one local worker of each resource class needs {budget - free} cores ({needs}), more than the "
                f"{budget} the site's workersPerNode (or -j) allows; give -j {budget - free} or more, or lower the "
                "cores of the site file's 'resources'."
            )
        while True:
            fitting = [name for name, r in self.requests.items() if r.cores <= free and workers[name] < self.apps[name]]
            if not fitting:
                return workers
            name = max(fitting, key=lambda n: self.apps[n] / workers[n])
            workers[name] += 1
            free -= self.requests[name].cores

    def require_fit(self, *, cores: int | None, memory: float | None, node: str) -> None:
        """Check that one worker of every class fits on a node (else Parsl would start none: a hang).

        Parameters
        ----------
        cores : `int` or `None`
            Cores of a node (`None`: unknown, not checked).
        memory : `float` or `None`
            Memory of a node in MB (`None`: unknown, not checked).
        node : `str`
            What a node is, for the message (``"this machine"``, ``"a node (coresPerNode, memPerNode)"``).

        Raises
        ------
        SiteConfigError
            Naming each class, with its tasks, that asks for more cores or memory than a node has.
        """
        too_big = [
            f"{name} ({', '.join(self.tasks[name])}: {r.cores} cores" + (f", {r.memory} MB)" if r.memory else ")")
            for name, r in self.requests.items()
            if (cores is not None and r.cores > cores) or (memory is not None and (r.memory or 0) > memory)
        ]
        if too_big:
            has = [f"{cores} cores"] if cores is not None else []
            has += [f"{memory:.0f} MB"] if memory is not None else []
            raise SiteConfigError(
                f"a worker of resource class(es) {'; '.join(too_big)} does not fit on {node}, which has "
                f"{' and '.join(has)}; lower the requests of those tasks in the site file's 'resources'."
            )
