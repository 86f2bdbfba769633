"""Datasets by name (``pbkit list datasets``) and detection datasets by their yaml."""

from pbkit.data.bundle import DataBundle
from pbkit.data.datasets import DATASETS, DEFAULT_ROOT, DatasetEntry, configured, load

__all__ = ["DATASETS", "DEFAULT_ROOT", "DataBundle", "DatasetEntry", "configured", "load"]
