"""The registry: SQL tables of dimension records, collections, dataset types and datasets."""

from ._calibrations import DatasetAssociation
from ._collections import CollectionRecord
from ._registry import Registry
from .schema import CollectionType

__all__ = ["CollectionRecord", "CollectionType", "DatasetAssociation", "Registry"]
