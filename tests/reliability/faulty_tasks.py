"""PipelineTasks that misbehave on chosen detectors: hang, hang where signals cannot reach, run out of memory.

Import as ``faulty_tasks`` (``tests/reliability`` is on ``sys.path`` when pytest collects it).
"""

from __future__ import annotations

import signal
import time

import numpy as np
from toy_tasks import AddOneConfig, AddOneTask

from graph import Field


class FaultyAddOneConfig(AddOneConfig):
    hangDetectors: list[int] = Field(default_factory=list, description="Detectors whose quanta sleep hangSeconds.")
    hangSeconds: float = Field(30.0, ge=0, description="How long a hanging quantum sleeps.")
    blockAlarm: bool = Field(
        False, description="Hang with SIGALRM blocked, as native code that never returns to Python would."
    )
    swallowErrors: bool = Field(False, description="Catch an exception raised during the hang and hang again.")
    memoryDetectors: list[int] = Field(
        default_factory=list, description="Detectors whose quanta allocate an impossible array (MemoryError)."
    )


class FaultyAddOneTask(AddOneTask):
    """`AddOneTask` that hangs or runs out of memory on the configured detectors."""

    ConfigClass = FaultyAddOneConfig
    _DefaultName = "faultyAddOne"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):  # noqa: N802,N803
        detector = butlerQC.dataId["detector"]
        if detector in self.config.memoryDetectors:
            np.empty(2**62, dtype=np.uint8)  # numpy raises MemoryError: 4 EiB cannot be allocated
        if detector in self.config.hangDetectors:
            self._hang()
        super().runQuantum(butlerQC, inputRefs, outputRefs)

    def _hang(self) -> None:
        if self.config.blockAlarm:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            time.sleep(self.config.hangSeconds)
        except Exception as err:
            if not self.config.swallowErrors:
                raise
            self.log.warning("ignoring %s and going on", type(err).__name__)
            time.sleep(self.config.hangSeconds)
        finally:
            if self.config.blockAlarm:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
