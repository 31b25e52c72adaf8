"""Streaming the prepared stores into training: `StoreDataset` (a torch IterableDataset,
one sample per frame with all its cameras) and `StoreLoader` (its DataLoader, resumable
mid-epoch). See `dataset.py` for an example and `config.py` for the fields."""

from .config import FIELDS, LoaderConfig, LoaderConfigError, LoaderError
from .dataset import StoreDataset, StoreLoader

__all__ = ["FIELDS", "LoaderConfig", "LoaderConfigError", "LoaderError", "StoreDataset",
           "StoreLoader"]
