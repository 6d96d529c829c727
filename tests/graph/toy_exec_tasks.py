"""PipelineTasks for execution tests: controllable failures, no-op and CPU-burning quanta.

Import as ``toy_exec_tasks`` (``tests/graph`` is on ``sys.path`` when pytest collects it).

=========================  ============================  ==============================================
task                       quantum dimensions            behaviour
=========================  ============================  ==============================================
`FlakyAddOneTask`          instrument, visit, detector   `AddOneTask`, but fails (RuntimeError), has no
                                                         work (NoWorkFound) or sleeps on chosen detectors
`NoOpTask`                 instrument, visit, detector   ``toy_input`` -> ``noop_output`` (a 1-element copy)
`BurnTask`                 instrument, visit, detector   burns ``millis`` ms of CPU, writes ``burn_output``
`SchemaUserTask`           instrument, visit, detector   init-input ``toy_stats_schema`` (of `StatsTask`):
                                                         writes the ``toy_stats`` values in schema order
=========================  ============================  ==============================================
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
from toy_tasks import VISIT_DETECTOR, AddOneConfig, AddOneTask

from graph import (
    Field,
    InitInput,
    Input,
    NoWorkFound,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
)


class FlakyAddOneConfig(AddOneConfig):
    failDetectors: list[int] = Field(default_factory=list, description="Detectors whose quanta raise RuntimeError.")
    failVisits: list[int] = Field(default_factory=list, description="If set, only these visits of failDetectors fail.")
    killDetectors: list[int] = Field(
        default_factory=list, description="Detectors whose quanta kill their worker process (SIGKILL); they fail in the main process."
    )
    noWorkDetectors: list[int] = Field(default_factory=list, description="Detectors whose quanta raise NoWorkFound.")
    sleep: float = Field(0.0, ge=0, description="Seconds every quantum sleeps before running.")
    failFlagFile: str = Field("", description="If this file exists, the quanta of failDetectors fail (else they run).")
    markerDir: str = Field(
        "", description="If set, every attempt of a quantum of killDetectors or failDetectors appends a line to "
        "<markerDir>/<visit>-<detector>, and a quantum of killDetectors kills its worker on its first attempt only.",
    )


class FlakyAddOneTask(AddOneTask):
    """`AddOneTask` that fails, finds no work, or is slow, as configured."""

    ConfigClass = FlakyAddOneConfig
    _DefaultName = "flakyAddOne"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):  # noqa: N802,N803
        detector, visit = butlerQC.dataId["detector"], butlerQC.dataId["visit"]
        attempts = 0
        if self.config.markerDir and detector in self.config.killDetectors + self.config.failDetectors:
            marker = os.path.join(self.config.markerDir, f"{visit}-{detector}")
            attempts = Path(marker).read_text().count("\n") if os.path.exists(marker) else 0
            with open(marker, "a") as stream:
                stream.write(f"attempt {attempts + 1} in process {os.getpid()}\n")
        if detector in self.config.killDetectors and not (self.config.markerDir and attempts):
            if multiprocessing.parent_process() is None:  # never kill the main (test) process
                raise RuntimeError("killDetectors only works in a worker process (jobs > 1)")
            os.kill(os.getpid(), signal.SIGKILL)
        if self.config.sleep:
            time.sleep(self.config.sleep)
        if detector in self.config.noWorkDetectors:
            raise NoWorkFound(f"nothing to do on detector {detector}")
        self.log.info("adding %s to detector %s", self.config.value, detector)
        flagged = not self.config.failFlagFile or os.path.exists(self.config.failFlagFile)
        chosen = detector in self.config.failDetectors and (not self.config.failVisits or visit in self.config.failVisits)
        if flagged and chosen:
            raise RuntimeError(f"detector {detector} is configured to fail")
        super().runQuantum(butlerQC, inputRefs, outputRefs)


class NoOpConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    input = Input(name="toy_input", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="Ignored but read.")
    output = Output(name="noop_output", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="One number.")


class NoOpConfig(PipelineTaskConfig, pipelineConnections=NoOpConnections):
    pass


class NoOpTask(PipelineTask):
    """Write the first element of the input: the least work a real quantum does."""

    ConfigClass = NoOpConfig
    _DefaultName = "noOp"

    def run(self, input: np.ndarray) -> Struct:  # noqa: A002
        return Struct(output=np.asarray(input).ravel()[:1].copy())


class BurnConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    input = Input(name="toy_input", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="Read.")
    output = Output(name="burn_output", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="Iterations done.")


class BurnConfig(PipelineTaskConfig, pipelineConnections=BurnConnections):
    millis: float = Field(50.0, ge=0, description="Milliseconds of CPU time each quantum burns.")


class BurnTask(PipelineTask):
    """Spin on the CPU for ``millis`` ms of process time (not sleep: it needs a core)."""

    ConfigClass = BurnConfig
    _DefaultName = "burn"

    def run(self, input: np.ndarray) -> Struct:  # noqa: A002
        end = time.process_time() + self.config.millis / 1000
        n = 0
        while time.process_time() < end:
            n += 1
        return Struct(output=np.array([n], dtype=np.int64))


class SchemaUserConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    statsSchema = InitInput(name="toy_stats_schema", storageClass="StructuredDataDict", doc="Keys of the stats.")
    stats = Input(name="toy_stats", storageClass="StructuredDataDict", dimensions=VISIT_DETECTOR, doc="Stats.")
    values = Output(name="toy_stats_values", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="In order.")


class SchemaUserConfig(PipelineTaskConfig, pipelineConnections=SchemaUserConnections):
    pass


class SchemaUserTask(PipelineTask):
    """Order the values of ``toy_stats`` by the keys of the schema it got at construction."""

    ConfigClass = SchemaUserConfig
    _DefaultName = "schemaUser"

    def __init__(self, *, initInputs: dict | None = None, **kwargs):  # noqa: N803
        super().__init__(**kwargs)
        if not initInputs or "statsSchema" not in initInputs:
            raise RuntimeError("SchemaUserTask needs its statsSchema init-input")
        self.keys = list(initInputs["statsSchema"]["keys"])

    def run(self, stats: dict) -> Struct:
        return Struct(values=np.array([stats[k] for k in self.keys], dtype=np.float64))
