"""Data: the catalog, fetching and verifying, readers, long-tailed subsets, client partitions."""

from trustvision.data.cache import default_cache_dir
from trustvision.data.catalog import CATALOG, DatasetSpec, get_spec
from trustvision.data.dataset import ArraySplit, Dataset, dataset_summary, load_dataset
from trustvision.data.longtail import longtail_counts, longtail_indices
from trustvision.data.partition import class_counts, client_test_indices, dirichlet_partition
from trustvision.data.sources import fetch, verify_cache

__all__ = [
    "CATALOG",
    "ArraySplit",
    "Dataset",
    "DatasetSpec",
    "class_counts",
    "client_test_indices",
    "dataset_summary",
    "default_cache_dir",
    "dirichlet_partition",
    "fetch",
    "get_spec",
    "load_dataset",
    "longtail_counts",
    "longtail_indices",
    "verify_cache",
]
