"""The registry: SQL tables of dimension records, collections, dataset types and datasets."""

from ._calibrations import DatasetAssociation
from ._collections import CollectionRecord
from ._provenance import QUANTUM_STATUSES, QuantumRecord, canonical_data_id
from ._registry import Registry
from .schema import CollectionType

__all__ = ["QUANTUM_STATUSES", "CollectionRecord", "CollectionType", "DatasetAssociation", "QuantumRecord", "Registry", "canonical_data_id"]
