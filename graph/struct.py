"""`Struct`: a simple attribute container, the return type of every task's ``run``."""

from __future__ import annotations

from typing import Any

__all__ = ["Struct"]


class Struct:
    """Named values, accessed as attributes (``result.exposure``).

    Parameters
    ----------
    **kwargs
        The values; names must not start with an underscore.
    """

    def __init__(self, **kwargs: Any):
        for name, value in kwargs.items():
            self._check(name)
            object.__setattr__(self, name, value)

    @staticmethod
    def _check(name: str) -> None:
        if name.startswith("_"):
            raise ValueError(f"Struct field names cannot start with an underscore: {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        self._check(name)
        object.__setattr__(self, name, value)

    def getDict(self) -> dict[str, Any]:  # noqa: N802 - the LSST stack's name
        """A shallow copy of the values as a dict."""
        return dict(self.__dict__)

    def mergeItems(self, struct: Struct, *names: str) -> None:  # noqa: N802
        """Copy the named values of another Struct into this one (refusing to overwrite)."""
        for name in names:
            if name in self.__dict__:
                raise RuntimeError(f"Struct already has a value {name!r}")
            setattr(self, name, getattr(struct, name))

    def copy(self) -> Struct:
        """A shallow copy."""
        return Struct(**self.getDict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Struct) and self.__dict__ == other.__dict__

    def __len__(self) -> int:
        return len(self.__dict__)

    def __repr__(self) -> str:
        return "Struct(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"
