"""Task, PipelineTask, configs, connections, metadata and Struct: the API every task is written against."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graph import (
    Config,
    ConfigurableField,
    Field,
    Input,
    NoWorkFound,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    PrerequisiteInput,
    Struct,
    Task,
    TaskMetadata,
    timeMethod,
)
from graph.errors import ConfigOverrideError, ConnectionError, FrozenConfigError


class DetectConfig(Config):
    threshold: float = Field(5.0, gt=0, description="Detection threshold in sigma.")
    minPixels: int = Field(1, ge=1)


class DetectTask(Task):
    ConfigClass = DetectConfig
    _DefaultName = "detect"

    @timeMethod
    def run(self, image: np.ndarray) -> int:
        n = int((image > self.config.threshold).sum())
        self.metadata["nDetected"] = n
        return n


class LooseDetectTask(DetectTask):
    """A retarget that halves the threshold."""

    def run(self, image: np.ndarray) -> int:
        return super().run(image * 2)


class CalConnections(PipelineTaskConnections, dimensions=("instrument", "visit", "detector"), defaultTemplates={"prefix": ""}):
    exposure = Input(name="postISRCCD", storageClass="NumpyArray", dimensions=("instrument", "exposure", "detector"))
    refcat = PrerequisiteInput(name="refcat", storageClass="ArrowAstropy", dimensions=())
    calexp = Output(name="{prefix}calexp", storageClass="NumpyArray", dimensions=("instrument", "visit", "detector"))
    background = Output(name="{prefix}calexpBackground", storageClass="NumpyArray", dimensions=("instrument", "visit", "detector"))

    def __init__(self, *, config):
        super().__init__(config=config)
        if not config.doWriteBackground:
            del self.background


class CalConfig(PipelineTaskConfig, pipelineConnections=CalConnections):
    doWriteBackground: bool = True
    detection: DetectConfig = ConfigurableField(target=DetectTask, doc="Source detection.")
    iterations: int = Field(2, ge=1)

    def setDefaults(self) -> None:
        super().setDefaults()
        self.detection.threshold = 3.0


class CalTask(PipelineTask):
    ConfigClass = CalConfig
    _DefaultName = "calibrate"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.makeSubtask("detection")

    def run(self, exposure: np.ndarray) -> Struct:
        return Struct(calexp=exposure, nSources=self.detection.run(exposure))


def test_set_defaults_and_overrides_with_types():
    config = CalConfig()
    assert config.detection.threshold == 3.0  # setDefaults ran
    config.override("detection.threshold", "4.5")
    config.apply({"iterations": "3", "detection": {"minPixels": 2}})
    assert (config.detection.threshold, config.iterations, config.detection.minPixels) == (4.5, 3, 2)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("iterations", "many", "valid integer"),
        ("iterations", "0", "greater than or equal to 1"),
        ("detection.threshold", "-1", "greater than 0"),
        ("detection.treshold", "1", "Did you mean 'threshold'"),
        ("iterations.x", "1", "not a sub-config"),
    ],
)
def test_bad_override_names_field_and_type(key, value, message):
    with pytest.raises(ConfigOverrideError, match=message):
        CalConfig().override(key, value)


def test_frozen_config_refuses_changes_everywhere():
    config = CalConfig()
    config.freeze()
    with pytest.raises(FrozenConfigError):
        config.iterations = 5
    with pytest.raises(FrozenConfigError):
        config.detection.threshold = 1.0
    with pytest.raises(FrozenConfigError):
        config.override("iterations", "4")


def test_config_digest_and_differences():
    a, b = CalConfig(), CalConfig()
    assert a.digest() == b.digest()
    b.override("detection.minPixels", 4)
    assert a.digest() != b.digest()
    assert a.differences(b) == ["detection.minPixels"]


def test_subtask_names_metadata_and_retarget():
    config = CalConfig()
    task = CalTask(config=config)
    assert task.getFullName() == "calibrate" and task.detection.getFullName() == "calibrate.detection"
    assert set(task.getTaskDict()) == {"calibrate", "calibrate.detection"}
    image = np.array([0.0, 2.0, 4.0, 6.0])
    assert task.run(exposure=image).nSources == 2  # threshold 3
    full = task.getFullMetadata()
    assert full["calibrate:detection.nDetected"] == 2
    start, end = full["calibrate:detection.runStartCpuTime"], full["calibrate:detection.runEndCpuTime"]
    assert end >= start and math.isfinite(end)
    task.emptyMetadata()
    assert "calibrate:detection.nDetected" not in task.getFullMetadata()

    retargeted = CalConfig()
    retargeted.detection.retarget(LooseDetectTask)
    assert CalTask(config=retargeted).run(exposure=image).nSources == 3  # threshold effectively 1.5


def test_connections_templates_and_removal():
    config = CalConfig()
    config.override("connections.prefix", "deep_")
    config.override("doWriteBackground", "false")
    connections = CalConnections(config=config)
    assert connections.inputs == {"exposure"} and connections.prerequisiteInputs == {"refcat"}
    assert connections.outputs == {"calexp"}
    assert connections.calexp.name == "deep_calexp"
    assert connections.dimensions == {"instrument", "visit", "detector"}
    config2 = CalConfig()
    config2.override("connections.calexp", "myCalexp")
    assert CalConnections(config=config2).allConnections["calexp"].name == "myCalexp"


def test_connection_class_errors():
    with pytest.raises(ConnectionError, match="template"):
        class Bad(PipelineTaskConnections, dimensions=("visit",)):  # noqa: F841
            out = Output(name="{missing}x", storageClass="NumpyArray", dimensions=("visit",))
    with pytest.raises(ConnectionError, match="tuple"):
        Output(name="x", storageClass="NumpyArray", dimensions="visit")


def test_adjust_quantum_enforces_minimum():
    connections = CalConnections(config=CalConfig())
    inputs = {"exposure": (connections.exposure, [])}
    with pytest.raises(NoWorkFound, match="at least 1"):
        connections.adjustQuantum(inputs, {}, "calibrate", {"visit": 1})
    with pytest.raises(FileNotFoundError):
        connections.adjustQuantum({"refcat": (connections.refcat, [])}, {}, "calibrate", {"visit": 1})


def test_pipeline_task_without_connections_is_rejected():
    class NoConnTask(PipelineTask):
        ConfigClass = PipelineTaskConfig
        _DefaultName = "x"

    with pytest.raises(ConnectionError, match="pipelineConnections"):
        NoConnTask()


def test_task_metadata_hierarchy_and_json_round_trip():
    md = TaskMetadata()
    md["psf.fwhm"] = np.float64(3.25)
    md.add("psf.rejected", 1)
    md.add("psf.rejected", 4)
    md["flags"] = {"edge": True}
    again = TaskMetadata.model_validate_json(md.model_dump_json())
    assert again["psf.fwhm"] == 3.25 and again["psf.rejected"] == [1, 4] and again["flags.edge"] is True
    assert again.names() == ["flags.edge", "psf.fwhm", "psf.rejected"]
    with pytest.raises(TypeError):
        md["bad"] = object()


def test_struct():
    s = Struct(a=1, b=[2])
    assert s.getDict() == {"a": 1, "b": [2]} and len(s) == 2
    with pytest.raises(ValueError):
        Struct(_hidden=1)


def test_reserved_connection_names_are_rejected():
    with pytest.raises(ConnectionError, match="reserved"):
        class Clash(PipelineTaskConnections, dimensions=("visit",)):  # noqa: F841
            inputs = Input(name="x", storageClass="NumpyArray", dimensions=("visit",))
