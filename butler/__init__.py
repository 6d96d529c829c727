"""The Data Butler: a registry of datasets and a file datastore for astronomical data repositories.

Typical use::

    from butler import Butler
    butler = Butler.create("repo")                      # or Butler("repo", collections=[...])
    butler.register_dataset_type("src", ["visit", "detector"], "ArrowAstropy")
    ref = butler.put(table, "src", instrument="SimCam", visit=1, detector=0, run="u/me/run1")
    table = butler.get("src", instrument="SimCam", visit=1, detector=0, collections="u/me/run1")
"""

from ._butler import Butler, DeferredDatasetHandle, FileDataset, VerifyReport
from .datasets import DatasetIdGenEnum, DatasetRef, DatasetType, StorageClass
from .dimensions import DataCoordinate, DimensionGroup, DimensionRecord, DimensionUniverse
from .registry import CollectionType, DatasetAssociation, QuantumRecord, Registry
from .timespan import Timespan

__all__ = [
    "Butler",
    "CollectionType",
    "DataCoordinate",
    "DatasetAssociation",
    "DatasetIdGenEnum",
    "DatasetRef",
    "DatasetType",
    "DeferredDatasetHandle",
    "DimensionGroup",
    "DimensionRecord",
    "DimensionUniverse",
    "FileDataset",
    "QuantumRecord",
    "Registry",
    "StorageClass",
    "Timespan",
    "VerifyReport",
]
