"""Data sources and the versioned, sharded sample store."""

from unlearn.data.sources import SOURCES, SourceData, load_source
from unlearn.data.store import SampleStore, StoreError

__all__ = ["SOURCES", "SampleStore", "SourceData", "StoreError", "load_source"]
