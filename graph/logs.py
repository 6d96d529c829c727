"""`ButlerLogRecords`: the log of one quantum, stored as the ``{label}_log`` dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydantic import BaseModel, Field

__all__ = ["ButlerLogRecord", "ButlerLogRecords", "LogCapture"]


class ButlerLogRecord(BaseModel):
    """One log record: when, which logger, what level, the message (and traceback if any)."""

    name: str
    levelname: str
    levelno: int
    message: str
    created: float = Field(description="Unix time in seconds.")
    exc_text: str | None = None

    @classmethod
    def from_record(cls, record: logging.LogRecord) -> ButlerLogRecord:
        exc_text = None
        if record.exc_info:
            exc_text = logging.Formatter().formatException(record.exc_info)
        return cls(
            name=record.name, levelname=record.levelname, levelno=record.levelno,
            message=record.getMessage(), created=record.created, exc_text=exc_text,
        )


class ButlerLogRecords(BaseModel):
    """The log records of one quantum, in order."""

    records: list[ButlerLogRecord] = Field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ButlerLogRecord]:  # type: ignore[override]
        return iter(self.records)

    def __str__(self) -> str:
        return "\n".join(f"{r.levelname} {r.name}: {r.message}" + (f"\n{r.exc_text}" if r.exc_text else "") for r in self.records)


class LogCapture(logging.Handler):
    """A logging handler collecting records into `ButlerLogRecords` while a quantum runs.

    Use as a context manager: attaches itself to the root logger and detaches on exit.
    """

    def __init__(self, level: int = logging.INFO):
        super().__init__(level)
        self.records = ButlerLogRecords()
        self._previous_level: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.records.append(ButlerLogRecord.from_record(record))

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        root.addHandler(self)
        if root.level > self.level:
            self._previous_level = root.level
            root.setLevel(self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        if self._previous_level is not None:
            root.setLevel(self._previous_level)
