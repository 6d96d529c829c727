"""Tiny real PipelineTasks over the default universe, for pipeline, graph and execution tests.

Import as ``toy_tasks`` (``tests/graph`` is on ``sys.path`` when pytest collects this directory).
Pipelines name them ``toy_tasks.AddOneTask`` etc.  Every ``run`` does real (trivial) numpy work:

========================  ============================  ==================================================
task                      quantum dimensions            reads -> writes
========================  ============================  ==================================================
`AddOneTask`              instrument, visit, detector   ``toy_input`` -> ``{out}`` (= input + value)
`SumDetectorsTask`        instrument, visit             all ``toy_output`` of a visit -> ``toy_visit_sum``
`CombineFlatTask`         instrument, detector          ``toy_input`` of all visits -> ``toy_flat`` (mean)
`FlattenTask`             instrument, visit, detector   ``toy_input`` / prerequisite ``toy_flat``
`StatsTask`               instrument, visit, detector   ``toy_output`` -> ``toy_stats`` (+ ``toy_mask``)
========================  ============================  ==================================================
"""

from __future__ import annotations

import numpy as np

from graph import (
    Field,
    InitOutput,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    PrerequisiteInput,
    Struct,
)

VISIT_DETECTOR = ("instrument", "visit", "detector")


class AddOneConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR, defaultTemplates={"out": "toy_output"}):
    input = Input(name="toy_input", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="An image.")
    output = Output(name="{out}", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="The image plus `value`.")


class AddOneConfig(PipelineTaskConfig, pipelineConnections=AddOneConnections):
    value: float = Field(1.0, description="Number added to every pixel.")
    scale: float = Field(1.0, gt=0, description="Factor applied before adding (must be > 0).")

    def validate(self) -> None:
        super().validate()
        if not np.isfinite(self.value):
            raise ValueError(f"value must be a finite number, not {self.value}.")


class AddOneTask(PipelineTask):
    """Add ``config.value`` to an array (after multiplying it by ``config.scale``)."""

    ConfigClass = AddOneConfig
    _DefaultName = "addOne"

    def run(self, input: np.ndarray) -> Struct:  # noqa: A002 - the connection name
        return Struct(output=np.asarray(input, dtype=np.float64) * self.config.scale + self.config.value)


class SumDetectorsConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    images = Input(
        name="toy_output", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, multiple=True,
        doc="The images of every detector of the visit.",
    )
    sum = Output(name="toy_visit_sum", storageClass="NumpyArray", dimensions=("instrument", "visit"), doc="Their sum.")


class SumDetectorsConfig(PipelineTaskConfig, pipelineConnections=SumDetectorsConnections):
    pass


class SumDetectorsTask(PipelineTask):
    """Sum the arrays of all detectors of a visit, element by element."""

    ConfigClass = SumDetectorsConfig
    _DefaultName = "sumDetectors"

    def run(self, images: list[np.ndarray]) -> Struct:
        return Struct(sum=np.sum(np.stack([np.asarray(a, dtype=np.float64) for a in images]), axis=0))


class CombineFlatConnections(PipelineTaskConnections, dimensions=("instrument", "detector")):
    images = Input(
        name="toy_input", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, multiple=True,
        doc="The images of every visit of the detector.",
    )
    flat = Output(name="toy_flat", storageClass="NumpyArray", dimensions=("instrument", "detector"), doc="Their mean.")


class CombineFlatConfig(PipelineTaskConfig, pipelineConnections=CombineFlatConnections):
    pass


class CombineFlatTask(PipelineTask):
    """Average the images of one detector over visits into a flat."""

    ConfigClass = CombineFlatConfig
    _DefaultName = "combineFlat"

    def run(self, images: list[np.ndarray]) -> Struct:
        return Struct(flat=np.mean(np.stack([np.asarray(a, dtype=np.float64) for a in images]), axis=0))


class FlattenConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    input = Input(name="toy_input", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="An image.")
    flat = PrerequisiteInput(
        name="toy_flat", storageClass="NumpyArray", dimensions=("instrument", "detector"), doc="The detector's flat."
    )
    output = Output(name="toy_flattened", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="input / flat.")


class FlattenConfig(PipelineTaskConfig, pipelineConnections=FlattenConnections):
    pass


class FlattenTask(PipelineTask):
    """Divide an image by its detector's flat (a prerequisite input)."""

    ConfigClass = FlattenConfig
    _DefaultName = "flatten"

    def run(self, input: np.ndarray, flat: np.ndarray) -> Struct:  # noqa: A002
        return Struct(output=np.asarray(input, dtype=np.float64) / np.asarray(flat, dtype=np.float64))


class StatsConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    image = Input(name="toy_output", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="An image.")
    stats = Output(name="toy_stats", storageClass="StructuredDataDict", dimensions=VISIT_DETECTOR, doc="mean, std, n.")
    mask = Output(name="toy_mask", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="Pixels above the mean.")
    statsSchema = InitOutput(name="toy_stats_schema", storageClass="StructuredDataDict", doc="The keys of the stats.")

    def __init__(self, *, config: StatsConfig):
        super().__init__(config=config)
        if not config.doWriteMask:
            del self.mask


class StatsConfig(PipelineTaskConfig, pipelineConnections=StatsConnections):
    doWriteMask: bool = Field(True, description="Also write the mask of pixels above the mean.")


class StatsTask(PipelineTask):
    """Summary statistics of an image; the ``mask`` output is removed when ``doWriteMask`` is false."""

    ConfigClass = StatsConfig
    _DefaultName = "stats"

    def getInitOutputDatasets(self) -> dict[str, dict[str, list[str]]]:  # noqa: N802
        return {"statsSchema": {"keys": ["mean", "std", "n"]}}

    def run(self, image: np.ndarray) -> Struct:
        image = np.asarray(image, dtype=np.float64)
        stats = {"mean": float(image.mean()), "std": float(image.std()), "n": int(image.size)}
        if self.config.doWriteMask:
            return Struct(stats=stats, mask=image > stats["mean"])
        return Struct(stats=stats)
