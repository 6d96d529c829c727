"""Repository configuration: ``butler.yaml`` and its companion files in the repository root."""

from __future__ import annotations

import itertools
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .datasets import StorageClassFactory
from .dimensions import DimensionUniverse
from .errors import ConfigError, RepositoryNotFoundError

__all__ = ["CONFIG_FILES", "ButlerConfig"]

#: Files copied from ``repo_template`` into every new repository.
CONFIG_FILES = ("butler.yaml", "dimensions.yaml", "storage_classes.yaml", "formatters.yaml")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as stream:
            data = yaml.safe_load(stream)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}.") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at its top level.")
    return data


class ButlerConfig:
    """The configuration of one repository, read from its root.

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        The repository root (the directory holding ``butler.yaml``), or the ``butler.yaml`` file.

    Raises
    ------
    RepositoryNotFoundError
        If there is no ``butler.yaml`` there.
    ConfigError
        If a configuration file is unreadable or malformed.
    """

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if root.name == "butler.yaml":
            root = root.parent
        if not (root / "butler.yaml").is_file():
            raise RepositoryNotFoundError(
                f"{root} is not a butler repository (no butler.yaml there); create one with `butler create {root}`."
            )
        self.root = root.resolve()
        self.data = _read_yaml(self.root / "butler.yaml")
        registry = self.data.get("registry") or {}
        self.db_url = str(registry.get("db", "sqlite:///{root}/gen3.sqlite3")).replace("{root}", self.root.as_posix())
        self.busy_timeout = float(registry.get("busy_timeout", 30))
        self.datastore: dict[str, Any] = dict(self.data.get("datastore") or {})
        if "templates" not in self.datastore or "default" not in (self.datastore["templates"] or {}):
            raise ConfigError(f"{self.root / 'butler.yaml'} needs datastore.templates.default.")
        self.universe = DimensionUniverse.from_yaml(self.root / "dimensions.yaml")
        self.storage_classes = StorageClassFactory(_read_yaml(self.root / "storage_classes.yaml"))
        self.formatters: dict[str, str] = dict(_read_yaml(self.root / "formatters.yaml").get("formatters") or {})

    @staticmethod
    def write_new(root: Path, *, db: str | None = None) -> None:
        """Copy the ``repo_template`` configuration files into ``root`` (which must exist)."""
        template = resources.files("repo_template")
        for name in CONFIG_FILES:
            with resources.as_file(template / name) as src:
                shutil.copyfile(src, root / name)
        if db is not None:
            path = root / "butler.yaml"
            text = path.read_text()
            data = yaml.safe_load(text)
            data.setdefault("registry", {})["db"] = db
            header = "".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines(keepends=True)))
            path.write_text(header + yaml.safe_dump(data, sort_keys=False))
